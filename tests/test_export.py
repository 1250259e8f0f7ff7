"""Embeddings out (--embed, --out-file) and the model as a TensorFlow SavedModel (--export), and
the bad requests around them: one line, exit 2, nothing written."""
import json
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


def test_the_savedmodel_loads_without_this_project_and_gives_the_same_numbers(trained, run_script, tmp_path):
    target = tmp_path / "served"
    code, out, err = run_script("Test_Cifar-100.py", "--model-dir", trained[0], "--export", target)
    assert code == 0, err
    probe = np.random.default_rng(0).integers(0, 256, size=(2, 5, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "probe.npy", probe)
    code = (
        "import json, sys, numpy as np, tensorflow as tf\n"
        "m = tf.saved_model.load('served')\n"
        "x = np.load('probe.npy')\n"
        "e = m.embed(tf.constant(x[0])).numpy()\n"
        "p = m.p_same(tf.constant(x[0]), tf.constant(x[1])).numpy()\n"
        "assert set(m.signatures) >= {'embed', 'p_same', 'serving_default'}, list(m.signatures)\n"
        "assert not any(k.split('.')[0] == 'siamese' for k in sys.modules), 'the project was imported'\n"
        "print(json.dumps({'e': e.tolist(), 'p': p.tolist()}))\n"
    )
    # -I: isolated mode, so neither the repository nor PYTHONPATH is on sys.path.
    r = run("-I", "-c", code, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    served = json.loads(r.stdout.strip().splitlines()[-1])
    siamese = artifacts.load_model(trained[0])
    branch = siamese.get_layer("branch")
    np.testing.assert_allclose(served["e"], branch.predict(probe[0], verbose=0), atol=1e-5)
    keras_p = siamese.predict({"left": probe[0], "right": probe[1]}, verbose=0)[:, 0]
    np.testing.assert_allclose(served["p"], keras_p, atol=1e-5)
    assert "Traceback" not in r.stderr


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
