"""Embeddings out (--embed, --out-file) and the model as a TensorFlow SavedModel (--export), and
the bad requests around them: one line, exit 2, nothing written."""
import json
import pickle
import shutil
import zipfile

import numpy as np
import pytest
from conftest import make_split, run
from PIL import Image
from test_cli_errors import model_dir, one_line_error  # noqa: F401  (model_dir is a fixture)
from test_exemplars import write_classes

from siamese import artifacts, data, evaluate


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of class folders, a loose image and a zip of another folder."""
    root = tmp_path_factory.mktemp("embed")
    tree = write_classes(root / "tree", *make_split(2, seed=11))
    loose = root / "one.jpg"
    Image.new("RGB", (50, 40), (200, 30, 30)).save(loose)
    packed = root / "packed.zip"
    with zipfile.ZipFile(packed, "w") as z:
        for path in sorted((tree / "k4").iterdir()):
            z.write(path, f"inner/{path.name}")
    return tree, loose, packed


def expected(model_dir, paths):
    scorer = artifacts.load_scorer(model_dir)
    return scorer.embed(data.read_images(paths))


def test_embed_prints_one_json_line_per_image(trained, images, run_script):
    tree, loose, packed = images
    code, out, err = run_script("Test_Cifar-100.py", "--model-dir", trained[0], "--embed", tree, loose, packed)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    files = sorted(str(p) for p in tree.glob("*/*.png"))
    inner = [f"{packed}/inner/{p.name}" for p in sorted((tree / "k4").iterdir())]
    assert [r["image"] for r in records] == files + [str(loose)] + inner
    got = np.array([r["embedding"] for r in records], np.float32)
    want = expected(trained[0], files + [loose] + sorted((tree / "k4").iterdir()))
    np.testing.assert_array_equal(got, want)      # float32 through JSON and back: exact


def test_embed_to_an_npy_file(trained, images, run_script, tmp_path):
    tree, loose, _ = images
    target = tmp_path / "e.npy"
    code, out, err = run_script("Test_Cifar-100.py", "--model-dir", trained[0], "--embed", loose, tree / "k5",
                                "--out-file", target)
    assert code == 0, err
    lines = out.splitlines()
    files = [str(loose)] + sorted(str(p) for p in (tree / "k5").iterdir())
    assert lines[0].startswith(f"wrote {target}: 3 embeddings of ") and lines[1:] == files
    np.testing.assert_array_equal(np.load(target), expected(trained[0], files))


@pytest.fixture(params=["flip", "flip+shifts", "plain"])
def views_model(request, trained, tmp_path):
    """A copy of the trained model saved as scored with the given test-time views (metrics.pkl
    says which; the trained one is flipped, training's default)."""
    models = tmp_path / "model"
    shutil.copytree(trained[0], models, ignore=shutil.ignore_patterns("gallery-*", "*.png"))
    metrics = artifacts.load_metrics(models)
    metrics.update(test_time_flip="flip" in request.param, test_time_shifts="shifts" in request.param)
    (models / artifacts.METRICS).write_bytes(pickle.dumps(metrics))
    return models, request.param


def test_the_savedmodel_serves_what_the_tool_scores_with_and_loads_without_this_project(
        views_model, images, run_script, tmp_path):
    models, which = views_model
    target = tmp_path / "served"
    code, out, err = run_script("Test_Cifar-100.py", "--model-dir", models, "--export", target)
    assert code == 0, err
    assert ("its mirror image" in out) == ("flip" in which) and ("pixel shifts" in out) == ("shifts" in which)
    tree, loose, _ = images
    files = [loose, *sorted(tree.glob("*/*.png"))[:5]]
    code, out, err = run_script("Test_Cifar-100.py", "--model-dir", models, "--embed", *files, "--json")
    assert code == 0, err
    tool_e = np.array([json.loads(line)["embedding"] for line in out.splitlines()], np.float32)
    tool_p = []
    for a, b in zip(files, files[1:] + files[:1]):
        code, out, err = run_script("Test_Cifar-100.py", "--model-dir", models, "--pair", a, b, "--json")
        assert code == 0, err
        tool_p.append(json.loads(out)["p_same"])
    # The images as the tool reads them (its reader is the project's), handed over as an array.
    x = data.read_images(files).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = (
        "import json, sys, numpy as np, tensorflow as tf\n"
        "m = tf.saved_model.load('served')\n"
        "x = tf.constant(np.load('x.npy'))\n"
        "e = m.embed(x).numpy()\n"
        "p = m.p_same(x, tf.roll(x, -1, 0)).numpy()\n"
        "assert set(m.signatures) >= {'embed', 'p_same', 'serving_default'}, list(m.signatures)\n"
        "assert not any(k.split('.')[0] == 'siamese' for k in sys.modules), 'the project was imported'\n"
        "print(json.dumps({'e': e.tolist(), 'p': p.tolist()}))\n"
    )
    # -I: isolated mode, so neither the repository nor PYTHONPATH is on sys.path; cwd: not the repository.
    r = run("-I", "-c", code, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    served = json.loads(r.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(served["e"], tool_e, atol=1e-5)
    np.testing.assert_allclose(served["p"], tool_p, atol=1e-5)      # --json rounds to 6 places
    if which != "plain":      # the views matter: one branch pass is another embedding
        one_pass = artifacts.load_model(models).get_layer("branch").predict(x, verbose=0)
        assert np.abs(np.asarray(served["e"]) - one_pass).max() > 1e-3


@pytest.mark.parametrize("flags, pattern", [
    (["--neighbours", "0", "--image", "x.png"], r"argument --neighbours: must be a positive integer, got '0'"),
    (["--neighbours", "3"], r"--neighbours lists the exemplars nearest to --image or --queries images"),
    (["--out-file", "e.npy"], r"--out-file holds the embeddings of --embed; add --embed"),
    (["--embed", "IMAGE", "--out-file", "e.txt"], r"--out-file e.txt must end in \.npy"),
    (["--embed", "IMAGE", "--export", "new"], r"argument --export: not allowed with argument --embed"),
    (["--embed", "IMAGE", "--reject"], r"--reject answers `unknown` for .*not --embed; drop --reject"),
])
def test_bad_requests(run_script, model_dir, tmp_path, monkeypatch, flags, pattern):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (32, 32)).save(tmp_path / "i.png")
    flags = [str(tmp_path / "i.png") if f == "IMAGE" else f for f in flags]
    before = sorted(p.name for p in tmp_path.iterdir())
    one_line_error(run_script("Test_Cifar-100.py", "--model-dir", model_dir, *flags), pattern)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_embed_of_a_non_image_writes_nothing(run_script, model_dir, tmp_path):  # noqa: F811
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "a.png")
    (folder / "notes.txt").write_text("not an image")
    one_line_error(run_script("Test_Cifar-100.py", "--model-dir", model_dir, "--embed", folder,
                              "--out-file", tmp_path / "e.npy"), r"cannot read image .*notes\.txt: not an image")
    assert not (tmp_path / "e.npy").exists()
    one_line_error(run_script("Test_Cifar-100.py", "--model-dir", model_dir, "--embed", tmp_path / "nope"),
                   r"nope does not exist")


def test_export_never_writes_over_a_folder_that_holds_something(run_script, model_dir, tmp_path):  # noqa: F811
    target = tmp_path / "served"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    one_line_error(run_script("Test_Cifar-100.py", "--model-dir", model_dir, "--export", target),
                   r"--export .*served exists and is not an empty folder; pass a new folder")
    assert [p.name for p in target.iterdir()] == ["keep.txt"] and (target / "keep.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    one_line_error(run_script("Test_Cifar-100.py", "--model-dir", model_dir, "--export", tmp_path / "file"),
                   r"exists and is not an empty folder")
    (target / "keep.txt").unlink()                    # an empty folder is fine
    code, out, err = run_script("Test_Cifar-100.py", "--model-dir", model_dir, "--export", target)
    assert code == 0 and (target / "saved_model.pb").is_file(), err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
