"""Zip and tar archives of image folders, read in place wherever a folder is accepted, and bad
archives refused in one line."""
import importlib.util
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import zipfile
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image
from test_cli_errors import TINY, model_dir, one_line_error  # noqa: F401  (model_dir is a fixture)
from test_folders import write_classes

from siamese import archive, data, gallery

FORMATS = ["zip", "zip-deflated", "tar", "tar.gz"]


def files_of(folder):
    """(name inside the archive, path) of every file and folder under `folder`, sorted."""
    folder = Path(folder)
    return [(p.relative_to(folder).as_posix(), p) for p in sorted(folder.rglob("*"))]


def write_archive(path, entries, fmt):
    """entries: (name, bytes, or a Path to copy, or None for a folder). As zip/tar tools write them."""
    path = Path(path)
    if fmt.startswith("zip"):
        method = zipfile.ZIP_DEFLATED if fmt == "zip-deflated" else zipfile.ZIP_STORED
        with zipfile.ZipFile(path, "w", method) as z:
            for name, content in entries:
                if isinstance(content, Path) and content.is_dir() or content is None:
                    z.writestr(zipfile.ZipInfo(name.rstrip("/") + "/"), b"")
                else:
                    z.writestr(zipfile.ZipInfo(name), content.read_bytes() if isinstance(content, Path) else content,
                               compress_type=method)
        return path
    with tarfile.open(path, "w:gz" if fmt == "tar.gz" else "w") as t:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if isinstance(content, Path) and content.is_dir() or content is None:
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            else:
                blob = content.read_bytes() if isinstance(content, Path) else content
                info.size = len(blob)
                t.addfile(info, io.BytesIO(blob))
    return path


def archive_of(folder, path, fmt, top=""):
    """An archive of everything in `folder`, names prefixed by `top` (e.g. "photos/")."""
    return write_archive(path, [(top + name, p) for name, p in files_of(folder)], fmt)


def same_dataset(a, b):
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.class_names == b.class_names


# ---- read in place, exactly as the folder ---------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("top", ["", "cifar-like/"])
def test_train_test_tree_in_an_archive_loads_as_the_folder(tmp_path, tree_dir, fmt, top):
    path = archive_of(tree_dir, tmp_path / f"tree.{fmt}", fmt, top)
    ds = data.load(path)
    same_dataset(ds, data.load(tree_dir))
    assert ds.source == str(path) + ("/cifar-like" if top else "")


@pytest.mark.parametrize("fmt", FORMATS)
def test_class_folders_in_an_archive_split_as_the_folder(tmp_path, fmt):
    root = write_classes(tmp_path / "photos", {"zebra": 10, "Apple": 5, "mango": 2, "kiwi": 7})
    path = archive_of(tmp_path, tmp_path / f"photos.{fmt}", fmt)      # one top folder: photos/
    same_dataset(data.load(path, test_fraction=0.3, seed=4), data.load(root, test_fraction=0.3, seed=4))
    x, y, names, paths = data.load_classes(path)
    fx, fy, fnames, fpaths = data.load_classes(root)
    np.testing.assert_array_equal(x, fx)
    np.testing.assert_array_equal(y, fy)
    assert names == fnames == {0: "Apple", 1: "kiwi", 2: "mango", 3: "zebra"}
    # The names shown to the user are the file's place in the archive.
    assert paths == [f"{path}/photos/{Path(p).relative_to(root).as_posix()}" for p in fpaths]


def test_os_clutter_is_skipped_and_the_top_folder_looked_through(tmp_path):
    root = write_classes(tmp_path / "novel", {"cat": 3, "dog": 4})
    entries = [("novel/" + name, p) for name, p in files_of(root)]
    entries += [("__MACOSX/novel/cat/._img000.png", b"\x00\x05\x16\x07 resource fork"),
                ("__MACOSX/novel/._cat", b"\x00"), (".DS_Store", b"\x00"), ("novel/Thumbs.db", b"\x00"),
                ("./novel/cat/.hidden.png", b"not an image either")]
    path = write_archive(tmp_path / "novel.zip", entries, "zip")
    x, y, names, _ = data.load_classes(path)
    assert names == {0: "cat", 1: "dog"} and np.bincount(y).tolist() == [3, 4]
    np.testing.assert_array_equal(x, data.load_classes(root)[0])


def test_an_archive_of_one_class_folder_is_that_class_not_looked_through(tmp_path):
    path = write_archive(tmp_path / "cat.tar", [(f"cat/{i}.png", png()) for i in range(2)], "tar")
    x, y, names, _ = data.load_classes(path)
    assert names == {0: "cat"} and len(x) == 2


def test_read_ahead_limits_do_not_change_the_result(tmp_path, monkeypatch):
    root = write_classes(tmp_path / "photos", {"a": 9, "b": 8})
    want = data.load_classes(root)[0]
    for fmt in ("zip-deflated", "tar.gz"):                    # bytes read in the calling thread
        path = archive_of(root, tmp_path / f"p.{fmt}", fmt)
        monkeypatch.setattr(data, "READ_AHEAD", (2, 1))
        np.testing.assert_array_equal(data.load_classes(path)[0], want)
        monkeypatch.undo()


def test_official_pickles_in_a_zip_are_told_apart_by_content(tmp_path, pickle_dir, splits):
    path = archive_of(pickle_dir.parent, tmp_path / "copy.zip", "zip-deflated")   # cifar-100-python/...
    ds = data.load(path)
    np.testing.assert_array_equal(ds.x_train, splits[0][0])
    np.testing.assert_array_equal(ds.y_test, splits[1][1])
    assert ds.coarse_train is not None


def test_nothing_is_written_while_reading(tmp_path, tree_dir, monkeypatch):
    import tempfile
    (tmp_path / "a").mkdir()
    path = archive_of(tree_dir, tmp_path / "a" / "tree.tar.gz", "tar.gz")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)        # a temporary extraction would land in scratch
    data.load(path)
    assert os.listdir(tmp_path / "a") == ["tree.tar.gz"] and not os.listdir(scratch)


# ---- every entry point takes one -----------------------------------------------------------

def test_training_on_a_zip(run_script, tmp_path, tree_dir):
    path = archive_of(tree_dir, tmp_path / "tree.zip", "zip")
    code, out, err = run_script("Cifar-100.py", "--data-dir", path, "--out", tmp_path / "m", *TINY)
    assert code == 0, err
    assert "200 training images, 10 classes" in out


def test_exemplars_and_queries_from_archives_answer_as_folders(run_script, tmp_path, model_dir):
    exemplars = write_classes(tmp_path / "ex", {"ant": 3, "bee": 3, "cow": 3})
    queries = write_classes(tmp_path / "q", {"ant": 2, "bee": 2, "cow": 2})
    as_folders = run_script("Test_Cifar-100.py", "--model-dir", model_dir, "--exemplars", exemplars,
                            "--queries", queries, "--json")
    ex_zip = archive_of(exemplars, tmp_path / "ex.zip", "zip")
    q_tar = archive_of(queries, tmp_path / "q.tar.gz", "tar.gz")
    as_archives = run_script("Test_Cifar-100.py", "--model-dir", model_dir, "--exemplars", ex_zip,
                             "--queries", q_tar, "--json")
    assert as_folders[0] == as_archives[0] == 0, as_archives[2]
    assert as_archives[1].replace(str(q_tar), str(queries)) == as_folders[1]
    code, out, err = run_script("Test_Cifar-100.py", "--model-dir", model_dir, "--exemplars", ex_zip,
                                "--episodes", "3", "--ways", "2")
    assert code == 0 and "2-way 1-shot on 3 classes of" in out, err


def test_the_demo_takes_its_exemplars_from_an_archive(tmp_path):
    # demo.py gets its classes from gallery.load_exemplars, as Test_Cifar-100.py does.
    exemplars = write_classes(tmp_path / "ex", {"ant": 3, "bee": 4})
    path = archive_of(exemplars, tmp_path / "ex.zip", "zip-deflated")
    x, y, names, where, _, paths = gallery.load_exemplars(Namespace(exemplars=str(path), shots=2, data_dir=None))
    assert names == {0: "ant", 1: "bee"} and np.bincount(y).tolist() == [2, 2] and str(path) in where


@pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="gradio is not installed")
def test_the_demo_refuses_a_bad_archive_in_one_line(run_script, tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    bad = tmp_path / "ex.zip"
    bad.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    one_line_error(run_script("demo.py", "--model-dir", model_dir, "--exemplars", bad, "--port", "7999"),
                   r"ex\.zip is not a readable \.zip")


# ---- bad archives: one line, exit 2, nothing written ---------------------------------------

def zip_bytes(entries, method=zipfile.ZIP_DEFLATED):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, blob in entries:
            z.writestr(zipfile.ZipInfo(name), blob, compress_type=method)
    return buf.getvalue()


def png(colour=(200, 10, 10)):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, "PNG")
    return buf.getvalue()


CLASSES = [(f"{c}/{i}.png", png((40 * k, 9 * i, 99))) for k, c in enumerate("abc") for i in range(3)]


def declared_size(blob, name, size):
    """The zip `blob` with `name`'s uncompressed size rewritten in both of its headers."""
    blob = bytearray(blob)
    for sig, at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (start := blob.find(sig, start)) >= 0:
            name_at = start + (30 if sig == b"PK\x03\x04" else 46)
            if blob[name_at:name_at + len(name)] == name.encode():
                blob[start + at:start + at + 4] = struct.pack("<I", size)
            start += 4
    return bytes(blob)


def tar_bytes(entries, mode="w"):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as t:
        for info, blob in entries:
            t.addfile(info, io.BytesIO(blob) if blob else None)
    return buf.getvalue()


def tar_entry(name, blob=b"", **fields):
    info = tarfile.TarInfo(name)
    info.size = len(blob)
    for k, v in fields.items():
        setattr(info, k, v)
    return info, blob


def bomb(_):
    return zip_bytes(CLASSES + [("c/bomb.png", b"\x00" * (3 << 20))])   # 3 MiB of zeros, 3 KB zipped


BAD = {
    "truncated zip": (lambda t: zip_bytes(CLASSES)[:-200], r"x\.zip is not a readable \.zip \(truncated or damaged"),
    "truncated tar.gz": (lambda t: (gz := tar_bytes([tar_entry(n, b) for n, b in CLASSES], "w:gz"))[:len(gz) // 2],
                         r"x\.zip is not a readable \.tar\.gz \(truncated or damaged"),
    "truncated tar": (lambda t: tar_bytes([tar_entry(n, b) for n, b in CLASSES])[:2560 + 30],  # in a/2's data
                      r"x\.zip.*truncated"),
    "not an archive": (lambda t: b"just some text, no archive at all\n" * 40,
                       r"x\.zip is not a readable \.tar\.gz, \.tar or \.zip archive"),
    "an entry that is not an image": (lambda t: zip_bytes(CLASSES + [("b/notes.txt", b"hello")]),
                                      r"cannot read image .*x\.zip/b/notes\.txt: not an image"),
    "declared size absurd": (bomb, r"entry 'c/bomb\.png' declares 3,145,728 bytes, more than any image file "
                                   r"\(1 MiB\); refused as a likely zip bomb"),
    "total size absurd": (lambda t: zip_bytes(CLASSES + [(f"c/z{i}.png", b"\x00" * (800 << 10)) for i in range(4)]),
                          r"x\.zip declares more than 2 MiB of files; refused as a likely zip bomb"),
    "header lies about the size": (lambda t: declared_size(zip_bytes(CLASSES + [("c/lie.png", png() * 3000)]),
                                                           "c/lie.png", 100),
                                   r"x\.zip \(at .*x\.zip/c/lie\.png\) is not a readable \.zip .*CRC"),
    "stored entry lies about the size": (
        lambda t: declared_size(zip_bytes(CLASSES + [("c/lie.png", png() * 30)], zipfile.ZIP_STORED),
                                "c/lie.png", 100), r"x\.zip \(at .*c/lie\.png\) is not a readable \.zip"),
    "a name with ..": (lambda t: zip_bytes(CLASSES + [("a/../../evil.png", png())]),
                       r"x\.zip holds an entry named with '\.\.' \('a/\.\./\.\./evil\.png'\)"),
    "an absolute name": (lambda t: tar_bytes([tar_entry(n, b) for n, b in CLASSES] + [tar_entry("/etc/evil.png", png())]),
                         r"x\.zip holds an entry with an absolute path \('/etc/evil\.png'\)"),
    "a link": (lambda t: tar_bytes([tar_entry(n, b) for n, b in CLASSES]
                                   + [tar_entry("a/link.png", type=tarfile.SYMTYPE, linkname="/etc/passwd")]),
               r"entry 'a/link\.png' is a link or special file"),
    "no class folders": (lambda t: zip_bytes([("1.png", png()), ("2.png", png())]),
                         r"x\.zip (has no class folders; expected .*x\.zip/<class>/<image files>|holds no CIFAR data)"),
    "a file and a folder of one name": (lambda t: zip_bytes(CLASSES + [("a", png())]),
                                        r"holds 'a' twice, or both as a file and as a folder"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_archives_are_one_line(run_script, tmp_path, model_dir, monkeypatch, case):
    make, pattern = BAD[case]
    monkeypatch.setattr(archive, "MAX_MEMBER_BYTES", 1 << 20)
    monkeypatch.setattr(archive, "MAX_TOTAL_BYTES", 2 << 20)
    path = tmp_path / "x.zip"             # one name for all: the kind is told from the content
    path.write_bytes(make(tmp_path))
    out = tmp_path / "out"
    one_line_error(run_script("Cifar-100.py", "--data-dir", path, "--out", out, *TINY), pattern)
    assert not out.exists() or not any(out.iterdir())
    one_line_error(run_script("Test_Cifar-100.py", "--model-dir", model_dir, "--exemplars", path,
                              "--queries", path), pattern)


def members(root):
    return [m for _, _, folder in root.entries() for _, _, m in folder.entries()]


@pytest.mark.parametrize("fmt", ["zip", "tar"])
def test_a_member_shorter_than_declared_is_refused_when_read(tmp_path, fmt):
    path = write_archive(tmp_path / f"x.{fmt}", CLASSES, fmt)
    with archive.open(path) as root:
        found = members(root)
        header = 30 + len("c/2.png") if fmt == "zip" else 0     # a zip entry's local header
        os.truncate(path, found[-1].offset + header + 10)       # cut short after it was listed
        with pytest.raises(data.UserError, match=r"c/2\.png holds only 10 bytes where the archive declares \d+; "
                                                 r".*x\.(zip|tar) is truncated or damaged"):
            found[-1].read_bytes()


def test_the_load_benchmark_measures_an_archive_and_its_folder(tmp_path, tree_dir):
    path = archive_of(tree_dir, tmp_path / "tree.zip", "zip")
    r = subprocess.run([sys.executable, "benchmarks/load.py", path, tree_dir, "--repeats", "1"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    runs, summary = [json.loads(line) for line in r.stdout.splitlines()][:2], r.stdout.splitlines()[2:]
    assert [run["source"] for run in runs] == [str(path), str(tree_dir)]
    assert all(run["images"] == 300 and run["seconds"] > 0 and run["peak_rss_mb"] > 0 for run in runs)
    assert [json.loads(line)["source"] for line in summary] == [str(path), str(tree_dir)]
