import gzip
import os
import pickle

import numpy as np
import pytest
from conftest import FINE_NAMES, LABEL_IDS, make_split, pickle_split, write_pickle_folder, write_tree

from siamese import data
from siamese.errors import UserError


def check(ds, splits):
    (x, y), (xt, yt) = splits
    assert ds.x_train.dtype == np.uint8 and ds.x_train.shape == (len(y), 32, 32, 3)
    assert ds.x_test.shape == (len(yt), 32, 32, 3)
    np.testing.assert_array_equal(ds.classes, LABEL_IDS)
    for label in LABEL_IDS:
        assert ds.class_names[int(label)] == FINE_NAMES[label]
    return ds


def sort_by_label(x, y):
    order = np.lexsort((x.reshape(len(x), -1).sum(1), y))
    return x[order], y[order]


@pytest.mark.parametrize("form", ["folder", "parent", "tar", "tar-parent"])
def test_official_pickles_load_exactly(form, pickle_dir, tar_path, splits):
    path = {"folder": pickle_dir, "parent": pickle_dir.parent, "tar": tar_path,
            "tar-parent": tar_path.parent}[form]
    ds = check(data.load(path), splits)
    (x, y), (xt, yt) = splits
    np.testing.assert_array_equal(ds.x_train, x)        # R, G, B planes put back in place
    np.testing.assert_array_equal(ds.y_train, y)
    np.testing.assert_array_equal(ds.y_test, yt)
    assert ds.coarse_train is not None and ds.coarse_names[int(ds.coarse_train[0])]


def test_image_tree_loads_same_images(tree_dir, splits):
    ds = data.load(tree_dir)
    assert ds.coarse_train is None
    (x, _), _ = splits
    # Tree labels are positions in the sorted folder names; images are the same set.
    names = sorted({FINE_NAMES[i] for i in LABEL_IDS})
    assert list(ds.class_names.values()) == names
    a = sort_by_label(ds.x_train, np.array([FINE_NAMES.index(ds.class_names[i]) for i in ds.y_train]))
    b = sort_by_label(x, splits[0][1])
    np.testing.assert_array_equal(a[0], b[0])


def test_env_variable_is_used(monkeypatch, pickle_dir):
    monkeypatch.setenv("CIFAR100_DIR", str(pickle_dir))
    assert len(data.load(None).y_train) == 200


def test_no_data_and_no_network_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("CIFAR100_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):   # fail fast, even online
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    with pytest.raises(UserError, match="downloading CIFAR-100 failed.*--data-dir"):
        data.load(None)


def test_a_part_of_an_earlier_download_is_read_from_the_cache_alone(monkeypatch, tmp_path, splits, decoded):
    """Keras' load_data unpickles both splits: the test images of a download already made come
    from its cache folder, and a download still to make goes through Keras as the whole load does."""
    import keras
    monkeypatch.delenv("CIFAR100_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(keras.datasets.cifar100, "load_data", lambda **k: calls.append(k))
    with pytest.raises(UserError, match="CIFAR-100 downloaded but its folder was not found"):
        data.load(None, split="test", limit=3)
    assert len(calls) == 1
    write_pickle_folder(tmp_path / "datasets" / "cifar-100-python-target", *splits)
    part = data.load(None, split="test", limit=3)
    np.testing.assert_array_equal(part.y_test, splits[1][1][:3])
    assert len(calls) == 1 and decoded["pickles"] == ["meta", "test"]


# ---- the bad-input matrix: each is one clear UserError, never a traceback -------------------

def corrupt(tmp_path, splits, name, blob):
    folder = write_pickle_folder(tmp_path, *splits)
    (folder / name).write_bytes(blob)
    return folder


def test_missing_path(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        data.load(tmp_path / "nope")


def test_folder_without_expected_files(tmp_path):
    (tmp_path / "something.txt").write_text("hi")
    with pytest.raises(UserError, match="holds no CIFAR data"):
        data.load(tmp_path)


def test_folder_missing_one_pickle(tmp_path, splits):
    folder = write_pickle_folder(tmp_path, *splits)
    (folder / "test").unlink()
    with pytest.raises(UserError, match="has no 'test' file"):
        data.load(folder)


def test_truncated_pickle(tmp_path, splits, pickle_dir):
    blob = (pickle_dir / "train").read_bytes()
    with pytest.raises(UserError, match="truncated or corrupt"):
        data.load(corrupt(tmp_path, splits, "train", blob[: len(blob) // 2]))


def test_truncated_tar(tmp_path, tar_path):
    bad = tmp_path / "cifar-100-python.tar.gz"
    bad.write_bytes(tar_path.read_bytes()[:5000])
    with pytest.raises(UserError, match="not a readable .tar.gz"):
        data.load(bad)


def test_non_gzip_tar(tmp_path):
    bad = tmp_path / "cifar-100-python.tar.gz"
    bad.write_bytes(b"this is not gzip at all" * 100)
    with pytest.raises(UserError, match="not a readable .tar.gz"):
        data.load(bad)


def test_gzip_of_something_else(tmp_path):
    bad = tmp_path / "cifar-100-python.tar.gz"
    bad.write_bytes(gzip.compress(b"plain text, not a tar"))
    with pytest.raises(UserError, match="tar.gz"):
        data.load(bad)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update({b"data": d[b"data"].astype(np.float32)}), "uint8 array of shape"),
    (lambda d: d.update({b"data": d[b"data"][:, :1000]}), "uint8 array of shape"),
    (lambda d: d.update({b"data": "not an array"}), "uint8 array of shape"),
    (lambda d: d.update({b"fine_labels": d[b"fine_labels"][:-1]}), "for 200 images"),
    (lambda d: d.update({b"fine_labels": [500] + d[b"fine_labels"][1:]}), "outside 0..99"),
    (lambda d: d.update({b"fine_labels": [-1] + d[b"fine_labels"][1:]}), "outside 0..99"),
    (lambda d: d.pop(b"fine_labels"), "no b'fine_labels'"),
])
def test_wrong_arrays_in_pickle(tmp_path, splits, change, message):
    d = pickle_split(*splits[0])
    change(d)
    with pytest.raises(UserError, match=message):
        data.load(corrupt(tmp_path, splits, "train", pickle.dumps(d)))


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_is_refused_and_never_runs(tmp_path, splits):
    marker = tmp_path / "pwned"
    # Prove the payload works when unpickled the unsafe way...
    pickle.loads(pickle.dumps(Exploit(tmp_path / "control")))
    assert (tmp_path / "control").exists()
    # ...and that our loader refuses it without running it.
    d = pickle_split(*splits[0])
    d[b"extra"] = Exploit(marker)
    with pytest.raises(UserError, match="os.system|posix.system"):
        data.load(corrupt(tmp_path / "data", splits, "train", pickle.dumps(d)))
    assert not marker.exists()


def test_unreadable_image_in_tree(tmp_path, splits):
    root = write_tree(tmp_path, *splits)
    bad = next((root / "train").glob("*/*.png"))
    bad.write_bytes(b"not a png")
    with pytest.raises(UserError, match=f"cannot read image .*{bad.name}"):
        data.load(root)


def test_other_size_image_in_tree_is_resized(tmp_path, splits):
    from PIL import Image
    root = write_tree(tmp_path, *splits)
    odd = next((root / "test").glob("*/*.png"))
    Image.new("RGB", (40, 30), (9, 99, 199)).save(odd)
    ds = data.load(root)
    assert ds.x_test.shape == (len(splits[1][1]), 32, 32, 3)
    assert ((ds.x_test == (9, 99, 199)).all(axis=(1, 2, 3))).sum() == 1


def test_tree_with_unknown_test_class(tmp_path, splits):
    root = write_tree(tmp_path, *splits)
    (root / "test" / "zebra").mkdir()
    with pytest.raises(UserError, match="zebra"):
        data.load(root)


def test_few_classes_any_ids(tmp_path):
    train, test = make_split(5, 0, label_ids=np.array([42, 99])), make_split(3, 1, label_ids=np.array([42, 99]))
    ds = data.load(write_pickle_folder(tmp_path, train, test))
    np.testing.assert_array_equal(ds.classes, [42, 99])


def test_protocol_2_pickles_from_python_3_load(tmp_path, splits):
    """Python 3 writes bytes at protocols 0-2 through `_codecs.encode`: a subset re-saved with
    protocol=2 (the official files' protocol) loads; a payload at that protocol is still refused."""
    folder = write_pickle_folder(tmp_path / "p2", *splits)
    for name in ("train", "test", "meta"):
        obj = pickle.loads((folder / name).read_bytes())
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
    assert b"_codecs" in (folder / "train").read_bytes()
    ds = check(data.load(folder), splits)
    np.testing.assert_array_equal(ds.x_train, splits[0][0])
    marker = tmp_path / "pwned"
    d = pickle_split(*splits[0])
    d[b"extra"] = Exploit(marker)
    (folder / "train").write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(UserError, match="os.system|posix.system"):
        data.load(folder)
    assert not marker.exists()


@pytest.mark.parametrize("form", ["pickles", "tar.gz", "tree", "tree.zip", "classes", "classes.tar.gz"])
def test_the_first_test_images_alone_are_read_and_are_the_whole_loads(form, pickle_dir, tar_path, tree_dir, tmp_path,
                                                                       decoded):
    """load(split="test", limit=N): what Test_Cifar-100.py reads with its gallery in place. The
    same arrays as the first N of the whole load, and nothing else decoded: no training image,
    no train pickle, no test image past the N-th (the class folders' split needs only names)."""
    from test_archives import archive_of
    from test_folders import COUNTS, write_classes
    if form.startswith("classes"):
        classes = write_classes(tmp_path / "photos", COUNTS)      # 24 images; 6 of them test
        path = classes if form == "classes" else archive_of(tmp_path, tmp_path / "photos.tar.gz", "tar.gz")
    else:
        path = {"pickles": pickle_dir, "tar.gz": tar_path, "tree": tree_dir,
                "tree.zip": archive_of(tree_dir, tmp_path / "tree.zip", "zip")}[form]
    whole = data.load(path, test_fraction=0.25, seed=3)
    for n in (4, 1000):
        decoded.update(images=0, pickles=[])
        part = data.load(path, test_fraction=0.25, seed=3, split="test", limit=n)
        np.testing.assert_array_equal(part.x_test, whole.x_test[:n])
        np.testing.assert_array_equal(part.y_test, whole.y_test[:n])
        assert part.class_names == whole.class_names and part.source == whole.source
        assert part.x_train.shape == (0, 32, 32, 3) and part.y_train.shape == (0,)
        if form in ("pickles", "tar.gz"):
            np.testing.assert_array_equal(part.coarse_test, whole.coarse_test[:n])
            assert decoded == {"images": 0, "pickles": ["meta", "test"]}
        else:
            assert decoded == {"images": min(n, len(whole.y_test)), "pickles": []}
    decoded.update(images=0, pickles=[])
    train = data.load(path, test_fraction=0.25, seed=3, split="train", limit=5)
    np.testing.assert_array_equal(train.x_train, whole.x_train[:5])
    np.testing.assert_array_equal(train.y_train, whole.y_train[:5])
    assert len(train.y_test) == 0 and (train.train_paths or [None] * 5)[:5] == (whole.train_paths or [None] * 5)[:5]
    assert decoded["images"] == (0 if form in ("pickles", "tar.gz") else 5)


def test_a_part_of_a_bad_source_is_the_same_one_line(tmp_path, splits):
    """The checks of a listing hold for a part too: a test class train/ lacks, a missing pickle."""
    write_tree(tmp_path / "t", *splits)
    os.rename(tmp_path / "t" / "test" / FINE_NAMES[LABEL_IDS[0]], tmp_path / "t" / "test" / "stranger")
    with pytest.raises(UserError, match="is a class that train/ does not have"):
        data.load(tmp_path / "t", split="test", limit=3)
    folder = write_pickle_folder(tmp_path / "p", *splits)
    os.remove(folder / "test")
    with pytest.raises(UserError, match="has no 'test' file"):
        data.load(folder, split="test", limit=3)
