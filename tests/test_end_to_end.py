"""Both scripts as a user runs them: subprocesses on synthetic data, then the artifacts."""
import json
import pickle
import re
import sys

import numpy as np
from conftest import EPOCHS, ROOT, run


def test_training_writes_the_artifacts_and_prints_metrics(trained):
    out, stdout = trained
    # Other tests' predictions add their figures and galleries to this folder: training's files.
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith(("gallery-", "predictions", "confusion",
                                                                           "queries_map")))
    assert names == ["confidence.json", "directions.npz", "embedding_map.png", "metrics.pkl", "reliability.png", "roc.png",
                     "siamese.json", "siamese.keras", "siamese.weights.h5", "threshold.json", "training_curves.png"]
    with open(out / "metrics.pkl", "rb") as f:
        m = pickle.load(f)
    assert len(m["history"]["loss"]) == len(m["history"]["accuracy"]) == EPOCHS
    assert m["shots"] == 3 and m["train_seconds"] > 0 and m["config"]["epochs"] == EPOCHS
    t = m["test"]
    assert set(t) >= {"verification_accuracy", "roc_auc", "top1", "top5"}
    assert t["classes"] == 10 and t["test_images"] == 100
    assert t["top1"] > 0.3, t          # chance is 0.1: the colour+stripe classes are learnable
    assert f"top-1 {t['top1']:.3f}" in stdout and f"ROC AUC {t['roc_auc']:.3f}" in stdout
    assert m["history"]["loss"][-1] < m["history"]["loss"][0]


def test_prediction_scores_with_the_test_time_augmentation_training_used(trained, tmp_path):
    """Photos flip in training, so their scoring merges each image with its mirror image, and a
    reloaded model is scored the same way; a model saved without the record is scored plainly."""
    from siamese import artifacts
    out, _ = trained
    with open(out / "metrics.pkl", "rb") as f:
        assert pickle.load(f)["test_time_flip"] is True
    assert artifacts.load_scorer(out).flip is True
    for name in ("siamese.json", "siamese.weights.h5"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    assert artifacts.load_scorer(tmp_path).flip is False


def test_json_and_weights_and_the_keras_file_load_in_a_process_that_never_imports_the_project(trained):
    out, _ = trained
    probe = np.random.default_rng(0).integers(0, 256, size=(2, 4, 32, 32, 3)).astype(np.float32)
    np.save(out.parent / "probe.npy", probe)
    code = (
        "import json, sys, numpy as np, keras\n"
        "m = keras.models.model_from_json(open('models/siamese.json').read())\n"
        "m.load_weights('models/siamese.weights.h5')\n"
        "x = np.load('probe.npy')\n"
        "k = keras.saving.load_model('models/siamese.keras')\n"      # Keras 3's own format, plain Keras
        "print(json.dumps([n.predict({'left': x[0], 'right': x[1]}, verbose=0).tolist() for n in (m, k)]))\n"
        "assert not any(k.startswith('siamese') for k in sys.modules), 'project was imported'\n"
    )
    # -I: isolated mode, so neither the repo nor PYTHONPATH is on sys.path.
    r = run("-I", "-c", code, cwd=out.parent)
    assert r.returncode == 0, r.stderr
    portable, native = np.array(json.loads(r.stdout.strip().splitlines()[-1]))
    np.testing.assert_array_equal(native, portable)       # the .keras file is the JSON + H5 model
    sys.path.insert(0, str(ROOT))
    from siamese import artifacts
    ours = artifacts.load_model(out).predict({"left": probe[0], "right": probe[1]}, verbose=0)
    np.testing.assert_allclose(portable, ours, rtol=1e-6)


def test_prediction_script_prints_32_rows_and_accuracy(trained, pickle_dir):
    out, _ = trained
    r = run("Test_Cifar-100.py", "--data-dir", pickle_dir, "--model-dir", out, "--shots", "3")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    rows = [l for l in lines if re.match(r"^\s*\d+\s+class_\d\d\s+class_\d\d\s+\d\.\d{3}\s+\d\.\d{3}\s+(right|wrong)$", l)]
    assert [int(l.split()[0]) for l in rows] == list(range(32))
    right = sum(l.endswith("right") for l in rows)
    assert lines[-1] == f"accuracy: {right}/32 ({100 * right / 32:.1f}%)"
    assert (out / "predictions.png").stat().st_size > 1000


def test_image_tree_and_tarball_train_too(tmp_path, tree_dir, tar_path):
    for data in (tree_dir, tar_path):
        out = tmp_path / data.name
        r = run("Cifar-100.py", "--data-dir", data, "--out", out, "--epochs", "1", "--batch-size", "20",
                "--per-class", "2", "--shots", "2", "--no-plots")
        assert r.returncode == 0, r.stderr
        assert sorted(p.name for p in out.iterdir()) == ["confidence.json", "directions.npz", "metrics.pkl",
                                                         "siamese.json", "siamese.keras", "siamese.weights.h5",
                                                         "threshold.json"]
