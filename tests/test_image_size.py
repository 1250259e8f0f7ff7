"""--image-size S: reading, augmentation, the model and every prediction mode at S x S, the size
taken from the model itself; a model saved before the flag (32x32, no size in its metrics) still
predicts."""
import json
import pickle
import shutil

import numpy as np
import pytest
from conftest import run, write_tree
from PIL import Image

from siamese import artifacts, data, model, pipeline

SIZE = 40      # not a power of two: nothing may assume one
TINY = ["--epochs", "2", "--batch-size", "20", "--per-class", "2", "--shots", "2", "--no-plots"]


def test_every_source_is_read_at_the_size_asked(pickle_dir, tree_dir, tmp_path):
    for source in (pickle_dir, tree_dir):
        ds = data.load(source, size=SIZE)
        assert ds.x_train.shape[1:] == (SIZE, SIZE, 3) and ds.x_test.shape[1:] == (SIZE, SIZE, 3)
        assert ds.x_train.dtype == np.uint8
    # The pickles' 32x32 resized as a file of them would be read: one reader's resampling.
    small = data.load(pickle_dir)
    Image.fromarray(small.x_train[0]).save(tmp_path / "first.png")
    np.testing.assert_array_equal(data.load(pickle_dir, size=SIZE).x_train[0],
                                  data.read_image(tmp_path / "first.png", size=SIZE))
    assert data.load(pickle_dir, size=32).x_train.shape[1:] == (32, 32, 3)


def test_a_file_of_any_shape_is_read_at_any_size(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 30, 3), np.uint8)).save(tmp_path / "tall.png")
    for size in (8, 17, 64, 128):
        assert data.read_image(tmp_path / "tall.png", size=size).shape == (size, size, 3)
    # Shrinking averages areas: a 2x2 block of one colour each is one pixel of that colour.
    blocks = np.kron(rng.integers(0, 256, (16, 16, 3), np.uint8), np.ones((2, 2, 1), np.uint8))
    Image.fromarray(blocks).save(tmp_path / "blocks.png")
    np.testing.assert_array_equal(data.read_image(tmp_path / "blocks.png", size=16), blocks[::2, ::2])


def test_the_shift_grows_with_the_size():
    assert pipeline.pad(32) == pipeline.PAD and pipeline.pad(64) == 2 * pipeline.PAD and pipeline.pad(8) == 1
    x = np.random.default_rng(0).integers(0, 256, (6, SIZE, SIZE, 3), np.uint8)
    assert np.asarray(pipeline.augment(x, [1, 2])).shape == x.shape
    assert np.asarray(pipeline.distort(x, [1, 2], 1.0)).shape == x.shape
    branch = model.build_branch(width=0.25, size=SIZE)
    assert model.image_size(branch) == model.image_size(model.build_siamese(branch)) == SIZE
    assert model.image_size(model.build_siamese()) == data.IMAGE_SIZE


@pytest.fixture(scope="module")
def sized(tmp_path_factory, splits):
    """A model trained at SIZE on a tree of 48x48 and 24x24 files (neither is SIZE)."""
    (x, y), (xt, yt) = splits
    big = np.stack([np.asarray(Image.fromarray(im).resize((48, 48))) for im in x])
    small = np.stack([np.asarray(Image.fromarray(im).resize((24, 24))) for im in xt])
    root = write_tree(tmp_path_factory.mktemp("sized"), (big, y), (small, yt))
    out = tmp_path_factory.mktemp("sized-model") / "m"
    r = run("Cifar-100.py", "--data-dir", root, "--out", out, "--image-size", str(SIZE), *TINY)
    assert r.returncode == 0, r.stderr
    return root, out


def test_the_saved_model_takes_the_size_and_every_mode_reads_it_from_there(sized, tmp_path):
    root, out = sized
    loaded = artifacts.load_model(out)   # plain JSON + H5
    assert model.image_size(loaded) == SIZE
    shape = json.loads((out / artifacts.JSON).read_text())["config"]["layers"][0]["config"]["batch_shape"]
    assert shape == [None, SIZE, SIZE, 3]
    with open(out / artifacts.METRICS, "rb") as f:
        assert pickle.load(f)["image_size"] == SIZE
    query = next((root / "test").rglob("*.png"))          # 24x24: resized to SIZE, never an error
    odd = tmp_path / "odd.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (70, 130, 3), np.uint8)).save(odd)
    r = run("Test_Cifar-100.py", "--model-dir", out, "--data-dir", root)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("accuracy: ")
    r = run("Test_Cifar-100.py", "--model-dir", out, "--exemplars", root / "train", "--image", query, odd)
    assert r.returncode == 0, r.stderr
    r = run("Test_Cifar-100.py", "--model-dir", out, "--pair", query, odd)
    assert r.returncode == 0, r.stderr
    r = run("Test_Cifar-100.py", "--model-dir", out, "--embed", query, odd, "--out-file", tmp_path / "e.npy")
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "e.npy").shape[0] == 2
    r = run("Test_Cifar-100.py", "--model-dir", out, "--export", tmp_path / "served")
    assert r.returncode == 0, r.stderr
    assert f"(N, {SIZE}, {SIZE}, 3)" in r.stdout


def test_a_model_saved_before_the_flag_still_predicts(trained, pickle_dir):
    """The metrics of a model saved before --image-size have no size: it is the JSON's, 32, and
    the model predicts as it did."""
    out, _ = trained
    old = out.parent / "before-image-size"
    shutil.copytree(out, old, ignore=shutil.ignore_patterns("gallery-*"))
    with open(old / artifacts.METRICS, "rb") as f:
        metrics = pickle.load(f)
    del metrics["image_size"]
    (old / artifacts.METRICS).write_bytes(pickle.dumps(metrics))
    assert model.image_size(artifacts.load_model(old)) == data.IMAGE_SIZE
    now, before = (run("Test_Cifar-100.py", "--data-dir", pickle_dir, "--model-dir", m, "--shots", "3",
                       "--no-plots") for m in (out, old))
    assert now.returncode == before.returncode == 0, before.stderr
    assert before.stdout.replace(str(old), str(out)) == now.stdout
