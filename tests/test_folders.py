"""Any image folder: every size and mode read as 32x32 RGB, and single-level class folders split
per class by --test-fraction."""
import os
import pickle

import numpy as np
import pytest
from PIL import Image
from test_cli_errors import TINY, one_line_error

from siamese import data
from siamese.errors import UserError


def save(im, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


# ---- read_image: one reader for every size and mode ------------------------------------------

def test_one_bit_character_is_averaged_to_grey_not_aliased(tmp_path):
    rng = np.random.default_rng(0)
    bits = rng.random((96, 96)) < 0.3                       # 96 = 3 x 32: each output pixel is a 3x3 block
    out = data.read_image(save(Image.fromarray(bits).convert("1"), tmp_path / "c.png"))
    assert out.dtype == np.uint8 and out.shape == (32, 32, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    block_mean = bits.reshape(32, 3, 32, 3).mean((1, 3)) * 255
    np.testing.assert_allclose(out[..., 0], block_mean, atol=1)
    assert len(np.unique(out)) > 2                          # grey levels, not bits


def test_omniglot_sized_one_bit_image(tmp_path):
    bits = np.ones((105, 105), bool)
    bits[20:85, 50:52] = False          # a stroke thinner than one output pixel (105/32 = 3.3)
    out = data.read_image(save(Image.fromarray(bits).convert("1"), tmp_path / "c.png"))
    assert out.shape == (32, 32, 3)
    assert abs(out.mean() - bits.mean() * 255) < 2          # area averaging keeps the ink
    assert 0 < out.min() < 255 and out.max() == 255    # grey, never a lost or solid-black stroke


@pytest.mark.parametrize("size", [(105, 105), (50, 37), (20, 20), (500, 375), (32, 32)])
def test_any_size_becomes_32x32(tmp_path, size):
    im = Image.new("RGB", size, (10, 120, 230))
    out = data.read_image(save(im, tmp_path / "x.png"))
    assert out.shape == (32, 32, 3)
    assert (out == (10, 120, 230)).all()


def test_non_square_image_is_squashed_whole_not_cropped(tmp_path):
    a = np.zeros((37, 50, 3), np.uint8)
    a[:, :25] = (255, 0, 0)                                 # left half red, right half blue
    a[:, 25:] = (0, 0, 255)
    out = data.read_image(save(Image.fromarray(a), tmp_path / "wide.png"))
    assert (out[:, :16] == (255, 0, 0)).all() and (out[:, 16:] == (0, 0, 255)).all()


def test_modes(tmp_path):
    palette = Image.new("P", (40, 40), 1)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    assert (data.read_image(save(palette, tmp_path / "p.png")) == (200, 10, 10)).all()

    assert (data.read_image(save(Image.new("L", (64, 64), 77), tmp_path / "l.png")) == 77).all()

    cmyk = Image.new("CMYK", (40, 40), (0, 255, 255, 0))    # pure red ink
    assert (data.read_image(save(cmyk, tmp_path / "k.jpg")).astype(int) - (255, 0, 0) < 8).all()

    deep = Image.fromarray(np.full((40, 40), 65535, np.uint16))   # 16-bit grey: full scale is white
    assert deep.mode.startswith("I")
    assert (data.read_image(save(deep, tmp_path / "d.png")) == 255).all()
    half = Image.fromarray(np.full((40, 40), 32896, np.uint16))
    assert (data.read_image(save(half, tmp_path / "h.png")) == 128).all()


def test_transparency_is_white_paper(tmp_path):
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[:, :20] = (0, 0, 0, 255)                           # opaque black left, transparent right
    out = data.read_image(save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png"))
    assert (out[:, :16] == 0).all() and (out[:, 16:] == 255).all()

    la = Image.fromarray(np.zeros((40, 40, 2), np.uint8), "LA")   # all transparent
    assert (data.read_image(save(la, tmp_path / "la.png")) == 255).all()

    p = Image.new("P", (40, 40), 0)
    p.putpalette([0, 0, 0] * 256)
    p.info["transparency"] = 0
    assert (data.read_image(save(p, tmp_path / "pt.png")) == 255).all()


def test_not_an_image_names_the_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match=r"cannot read image .*notes\.txt: not an image"):
        data.read_image(tmp_path / "notes.txt")


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = save(Image.new("L", (300, 300)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(UserError, match="big.png.*smaller image"):
        data.read_image(path)


# ---- single level of class folders ------------------------------------------------------------

def unique_image(i, size, mode):
    """Image number i: a colour nobody else has, in the given size and mode."""
    rgb = Image.new("RGB", size, (i % 251, (i * 7) % 253, 100 + i % 97))
    return rgb.convert(mode) if mode != "RGB" else rgb


FORMATS = [((32, 32), "RGB", "png"), ((105, 105), "1", "png"), ((50, 37), "L", "jpg"),
           ((64, 48), "P", "gif"), ((40, 40), "RGBA", "png")]


def write_classes(root, counts):
    """root/<class>/<files>, the classes' images in many sizes and modes; plus hidden clutter."""
    i = 0
    for name, n in counts.items():
        for k in range(n):
            size, mode, ext = FORMATS[i % len(FORMATS)]
            save(unique_image(i, size, mode), root / name / f"img{k:03d}.{ext}")
            i += 1
    (root / counts.__iter__().__next__() / ".DS_Store").write_bytes(b"\x00\x01 not an image")
    (root / ".DS_Store").write_bytes(b"\x00")
    save(Image.new("RGB", (8, 8)), root / ".hidden_class" / "x.png")
    (root / "README.txt").write_text("loose files next to the class folders are ignored")
    return root


COUNTS = {"zebra": 10, "Apple": 5, "mango": 2, "kiwi": 7}


def test_load_classes_ids_are_sorted_folder_names(tmp_path):
    root = write_classes(tmp_path, COUNTS)
    x, y, names, paths = data.load_classes(root)
    assert names == {0: "Apple", 1: "kiwi", 2: "mango", 3: "zebra"}
    assert x.dtype == np.uint8 and x.shape == (24, 32, 32, 3) and y.dtype == np.int64
    assert np.bincount(y).tolist() == [5, 7, 2, 10]
    assert all(os.path.basename(os.path.dirname(p)) == names[c] for p, c in zip(paths, y))
    assert paths == sorted(paths, key=lambda p: (names[y[paths.index(p)]], p))
    assert not any("/." in p for p in paths)


def test_single_level_tree_splits_each_class(tmp_path):
    root = write_classes(tmp_path, COUNTS)
    ds = data.load(root, test_fraction=0.2, seed=0)
    assert ds.class_names == {0: "Apple", 1: "kiwi", 2: "mango", 3: "zebra"}
    # round(0.2 n), at least 1 and at most n - 1 per class
    assert np.bincount(ds.y_test).tolist() == [1, 1, 1, 2]
    assert np.bincount(ds.y_train).tolist() == [4, 6, 1, 8]
    # Every image is unique: train and test are disjoint and together the whole folder.
    key = lambda x: {im.tobytes() for im in x}
    assert not key(ds.x_train) & key(ds.x_test)
    assert len(key(ds.x_train) | key(ds.x_test)) == 24


def test_split_is_seeded_and_independent_of_listing_order(tmp_path, monkeypatch):
    root = write_classes(tmp_path, {"a": 20, "b": 15})
    first = data.load(root, test_fraction=0.3, seed=5)
    real_scandir = os.scandir

    class Reversed:                        # the same folder, listed backwards by the OS
        def __init__(self, path):
            self.it = real_scandir(path)

        def __enter__(self):
            return reversed(list(self.it))

        def __exit__(self, *exc):
            self.it.close()

    monkeypatch.setattr(data.os, "scandir", Reversed)
    again = data.load(root, test_fraction=0.3, seed=5)
    np.testing.assert_array_equal(first.x_test, again.x_test)
    np.testing.assert_array_equal(first.y_train, again.y_train)
    other = data.load(root, test_fraction=0.3, seed=6)
    assert not np.array_equal(first.x_test, other.x_test)
    assert np.bincount(other.y_test).tolist() == [6, 4]


def test_a_class_split_does_not_depend_on_the_other_classes(tmp_path):
    y = np.repeat([0, 1], 10)
    _, test = data.split_classes(y, {0: "cat", 1: "dog"}, 0.3, seed=1)
    _, alone = data.split_classes(np.zeros(10, np.int64), {0: "cat"}, 0.3, seed=1)
    np.testing.assert_array_equal(test[test < 10], alone)


def test_large_loads_show_progress_on_stderr(tmp_path, monkeypatch, capsys):
    root = write_classes(tmp_path, {"a": 6, "b": 6})
    monkeypatch.setattr(data, "PROGRESS_FROM", 10)
    data.load_classes(root)
    out, err = capsys.readouterr()
    assert out == "" and "reading 12 images" in err and "12/12" in err
    data.load_classes(root, progress=False)
    assert capsys.readouterr() == ("", "")


def test_train_and_test_trees_take_any_size_too(tmp_path):
    for split, n in (("train", 4), ("test", 2)):
        write_classes(tmp_path / split, {"cat": n, "dog": n})
    ds = data.load(tmp_path)
    assert ds.x_train.shape == (8, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3)
    assert ds.class_names == {0: "cat", 1: "dog"}


def test_training_on_a_folder_of_class_folders(run_script, tmp_path):
    root = write_classes(tmp_path / "data", {"ant": 10, "bee": 10, "cow": 10})
    code, out, err = run_script("Cifar-100.py", "--data-dir", root, "--out", tmp_path / "m",
                                "--test-fraction", "0.3", *TINY)
    assert code == 0, err
    with open(tmp_path / "m" / "metrics.pkl", "rb") as f:
        m = pickle.load(f)
    assert m["config"]["test_fraction"] == 0.3
    assert m["test"]["test_images"] == 9 and m["test"]["classes"] == 3
    assert "21 training images, 3 classes" in out


@pytest.mark.parametrize("damage, pattern", [
    (lambda r: [p.unlink() for p in list((r / "mango").iterdir())[1:]],
     r"class folder .*mango has 1 image\(s\), fewer than the 2 a class needs"),
    (lambda r: (r / "empty").mkdir(), r"class folder .*empty is empty"),
    (lambda r: (r / "kiwi" / "notes.txt").write_text("x"), r"cannot read image .*kiwi/notes\.txt: not an image"),
    (lambda r: save(Image.new("RGB", (9, 9)), r / "kiwi" / "more" / "x.png"),
     r"kiwi/more is a folder inside .*kiwi, which should hold image files only"),
])
def test_bad_class_folders(run_script, tmp_path, damage, pattern):
    root = write_classes(tmp_path / "data", COUNTS)
    damage(root)
    one_line_error(run_script("Cifar-100.py", "--data-dir", root, "--out", tmp_path / "m", *TINY), pattern)
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


@pytest.mark.parametrize("value", ["0", "1", "-0.1", "x"])
def test_test_fraction_must_be_inside_0_1(run_script, value):
    one_line_error(run_script("Cifar-100.py", "--test-fraction", value), "--test-fraction.*between 0 and 1")
