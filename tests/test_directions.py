"""The training classes' learned directions (the cosine identification softmax's weights): saved
beside the model by name, and the prototypes those classes are scored by, in training's test
classification and in Test_Cifar-100.py, when every training image would be an exemplar."""
import pickle
import re

import numpy as np
import pytest
from conftest import FINE_NAMES, LABEL_IDS, run
from test_cli_errors import one_line_error

from siamese import artifacts, evaluate, model, predict

ROW = re.compile(r"^\s*\d+\s+class_\d\d\s+class_\d\d\s+\d\.\d{3}\s+\d\.\d{3}\s+(right|wrong)$")


@pytest.fixture(scope="module")
def learned(tmp_path_factory, pickle_dir):
    """A small model trained with the default exemplars (every training image): (folder, stdout)."""
    out = tmp_path_factory.mktemp("directions") / "models"
    r = run("Cifar-100.py", "--data-dir", pickle_dir, "--out", out, "--epochs", "6", "--batch-size", "40",
            "--per-class", "4", "--lr", "3e-3", "--no-plots")
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def test_training_saves_each_class_direction_by_name_and_scores_its_classes_by_them(learned):
    out, stdout = learned
    scorer = artifacts.load_scorer(out)
    width = int(scorer.branch.output.shape[-1])
    directions = artifacts.load_directions(out, width)
    assert sorted(directions) == sorted(FINE_NAMES[c] for c in LABEL_IDS)
    assert all(v.shape == (width,) and np.linalg.norm(v) > 0 for v in directions.values())
    with open(out / artifacts.METRICS, "rb") as f:
        t = pickle.load(f)["test"]
    assert t["learned_classes"] == 10 and 0 <= t["top1_exemplars"] <= 1
    assert (f"top-1 {t['top1']:.3f}" in stdout and "by the learned class directions" in stdout
            and f"by all training images as exemplars: top-1 {t['top1_exemplars']:.3f}" in stdout)
    assert artifacts.DIRECTIONS in stdout.splitlines()[-1]


def test_prediction_scores_the_training_classes_by_their_directions_unless_told_otherwise(learned, pickle_dir):
    out, _ = learned

    def predict_rows(*flags):
        r = run("Test_Cifar-100.py", "--data-dir", pickle_dir, "--model-dir", out, "--no-plots", *flags)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.strip().splitlines()
        assert len([l for l in lines if ROW.match(l)]) == 32
        return lines

    by_default = predict_rows()
    assert "each against the learned directions of 10 classes" in by_default[0]
    for flags in (["--prototypes", "exemplars"], ["--shots", "5"]):
        assert "exemplar(s) of 10 classes" in predict_rows(*flags)[0], flags


def test_the_classifier_scores_as_training_did(learned, pickle_dir):
    """Test_Cifar-100's classifier, given the saved directions, ranks the test images as training's
    test metrics did (the same scorer, the same prototypes)."""
    from siamese import data
    out, _ = learned
    scorer = artifacts.load_scorer(out)
    ds = data.load(str(pickle_dir))
    directions = artifacts.load_directions(out, int(scorer.branch.output.shape[-1]))
    classifier = predict.ExemplarClassifier(scorer, scorer.embed(ds.x_train), ds.y_train, ds.class_names,
                                            learned=directions)
    assert sorted(classifier.learned) == sorted(int(c) for c in LABEL_IDS)
    names = {v: k for k, v in ds.class_names.items()}
    top = [names[t[0][0]] for t in classifier.top(scorer.embed(ds.x_test), k=1)]
    with open(out / artifacts.METRICS, "rb") as f:
        assert np.mean(np.array(top) == ds.y_test) == pytest.approx(pickle.load(f)["test"]["top1"])
    plain = predict.ExemplarClassifier(scorer, scorer.embed(ds.x_train), ds.y_train, ds.class_names)
    assert plain.learned is None


def test_a_model_saved_without_directions_removes_the_old_ones(tmp_path):
    siamese = model.build_siamese(model.build_branch(width=0.25))
    width = int(siamese.get_layer("branch").output.shape[-1])
    artifacts.save(tmp_path, siamese, {"test": {}}, directions={"cat": np.ones(width, np.float32)})
    np.testing.assert_array_equal(artifacts.load_directions(tmp_path, width)["cat"], np.ones(width))
    artifacts.save(tmp_path, siamese, {"test": {}})   # e.g. a free embedding: no cosine softmax
    assert not (tmp_path / artifacts.DIRECTIONS).exists() and artifacts.load_directions(tmp_path, width) is None


@pytest.mark.parametrize("damage", [b"not an npz", "width", "names"])
def test_damaged_directions_are_one_line(run_script, tmp_path, pickle_dir, damage):
    siamese = model.build_siamese(model.build_branch(width=0.25))
    width = int(siamese.get_layer("branch").output.shape[-1])
    artifacts.save(tmp_path, siamese, {"test": {}})
    path = tmp_path / artifacts.DIRECTIONS
    if damage == "width":
        path.write_bytes(artifacts.directions_bytes({"cat": np.ones(width + 1, np.float32)}))
    elif damage == "names":
        with path.open("wb") as f:
            np.savez(f, names=np.array('"cat"'), vectors=np.ones((1, width), np.float32))
    else:
        path.write_bytes(damage)
    one_line_error(run_script("Test_Cifar-100.py", "--data-dir", pickle_dir, "--model-dir", tmp_path),
                   rf"{artifacts.DIRECTIONS} is not readable class directions.*--prototypes exemplars")
    code, out, err = run_script("Test_Cifar-100.py", "--data-dir", pickle_dir, "--model-dir", tmp_path,
                                "--prototypes", "exemplars", "--no-plots")
    assert code == 0, err


def test_prototypes_flag_is_checked(run_script):
    one_line_error(run_script("Test_Cifar-100.py", "--prototypes", "mean"), "--prototypes.*invalid choice")


def test_class_prototypes_take_directions_only_for_classes_they_have():
    emb = np.eye(4, dtype=np.float32) * 2
    ids, protos = evaluate.class_prototypes(emb, np.array([5, 5, 8, 8]), {8: np.array([0, 0, 0, 3], np.float32)})
    np.testing.assert_array_equal(ids, [5, 8])
    np.testing.assert_allclose(protos[0], np.array([1, 1, 0, 0]) * np.sqrt(2))   # the mean, at length 2
    np.testing.assert_allclose(protos[1], [0, 0, 0, 2])                         # the direction, at length 2


def test_a_threshold_is_calibrated_for_the_learned_directions_too(learned, pickle_dir):
    """--reject on the training classes uses the threshold calibrated on their directions' scores;
    on exemplar classes (and episodes) the exemplars' one, as before."""
    import json
    out, stdout = learned
    saved = json.loads((out / artifacts.THRESHOLD).read_text())
    assert 0 < saved["learned"]["threshold"] < 1 and saved["learned"]["known_accepted"] >= 0.9
    assert artifacts.load_threshold(out) == saved["threshold"]
    assert artifacts.load_threshold(out, learned=True) == saved["learned"]["threshold"]
    assert f"{saved['learned']['threshold']:.3f} where they are scored by their learned directions" in stdout
    for flags, which in (([], saved["learned"]["threshold"]), (["--prototypes", "exemplars"], saved["threshold"])):
        r = run("Test_Cifar-100.py", "--data-dir", pickle_dir, "--model-dir", out, "--no-plots", "--json",
                "--reject", "--count", "4", *flags)
        assert r.returncode == 0, r.stderr
        assert {json.loads(l)["threshold"] for l in r.stdout.splitlines()} == {round(which, 6)}, flags
