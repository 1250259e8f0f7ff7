"""The gallery kept beside the model: a second identical call reads and embeds no exemplar, and
answers exactly as without it; anything that could make it stale, and any damage, rebuilds it."""
import json
import os
import shutil

import numpy as np
import pytest
from conftest import make_split
from test_exemplars import write_classes

from siamese import artifacts, data, evaluate, gallery, model


@pytest.fixture
def setup(trained, tmp_path, monkeypatch):
    """(model folder, exemplar folder, query folder, seen): a copy of the trained model, exemplars
    and queries of its classes, and a record of every image read or embedded."""
    models = tmp_path / "model"
    shutil.copytree(trained[0], models, ignore=shutil.ignore_patterns("gallery-*", "*.png"))
    exemplars = write_classes(tmp_path / "exemplars", *make_split(3, seed=5))
    queries = write_classes(tmp_path / "queries", *make_split(1, seed=6))
    seen = {"read": 0, "embedded": 0}
    real_read, real_embed = data.read_images, evaluate.Scorer.embed

    def read(files, progress=True, size=data.IMAGE_SIZE):
        seen["read"] += len(files)
        return real_read(files, progress, size)

    def embed(self, images):
        seen["embedded"] += len(images)
        return real_embed(self, images)
    monkeypatch.setattr(data, "read_images", read)
    monkeypatch.setattr(evaluate.Scorer, "embed", embed)
    return models, exemplars, queries, seen


def predict(run_script, setup, *flags):
    """(JSON records, images read, images embedded) of one --image call on the queries."""
    models, exemplars, queries, seen = setup
    seen.update(read=0, embedded=0)
    code, out, err = run_script("Test_Cifar-100.py", "--model-dir", models, "--exemplars", exemplars,
                                "--image", *sorted(queries.glob("*/*.png")), "--json", "--neighbours", 3, *flags)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()], seen["read"], seen["embedded"]


def galleries(models):
    return sorted(models.glob("gallery-*.npz"))


def test_a_second_call_reads_and_embeds_no_exemplar_and_answers_the_same(run_script, setup):
    models, exemplars, queries, _ = setup
    first, read, embedded = predict(run_script, setup)
    assert (read, embedded) == (30 + 10, 30 + 10)          # 30 exemplars, 10 queries
    assert len(galleries(models)) == 1
    second, read, embedded = predict(run_script, setup)
    assert (read, embedded) == (10, 10) and second == first
    assert first[0]["neighbours"][0][0].startswith(str(exemplars))    # the exemplar files, by name
    # Without any gallery (deleted): the same answer, to the bit.
    galleries(models)[0].unlink()
    assert predict(run_script, setup)[0] == first


def touch(path):
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


@pytest.mark.parametrize("change", ["touched", "rewritten", "added", "removed", "shots", "model"])
def test_anything_that_could_make_it_stale_rebuilds_it(run_script, setup, change):
    models, exemplars, queries, _ = setup
    flags = []
    predict(run_script, setup)
    one = sorted((exemplars / "k4").iterdir())[0]
    if change == "touched":
        touch(one)                                           # same bytes, but it may have changed
    elif change == "rewritten":
        from PIL import Image
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(one)
    elif change == "added":
        shutil.copy(one, exemplars / "k4" / "zz-new.png")
    elif change == "removed":
        one.unlink()
    elif change == "shots":
        flags = ["--shots", "2"]
    else:
        other = artifacts.load_model(models)
        other.get_layer("head").bias.assign(other.get_layer("head").bias + 0.5)
        artifacts.save(models, other, {})
    files = {"added": 31, "removed": 29}.get(change, 30)      # --shots 2: all are read, 2 of 3 kept
    after, read, embedded = predict(run_script, setup, *flags)
    assert (read, embedded) == (files + 10, (20 if change == "shots" else files) + 10)
    # ... and answers as a call that never had a gallery.
    for path in galleries(models):
        path.unlink()
    assert predict(run_script, setup, *flags)[0] == after
    assert len(galleries(models)) == 1


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign", "wrong width", "empty"])
def test_a_damaged_or_foreign_gallery_is_ignored_and_rebuilt(run_script, setup, damage, capsys):
    models, exemplars, _, _ = setup
    first, _, _ = predict(run_script, setup)
    path = galleries(models)[0]
    blob = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(blob[:len(blob) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(blob)))
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        with np.load(path) as f:
            arrays = dict(f)
        if damage == "foreign":
            arrays = {"x": np.arange(3)}
        else:   # the right key, arrays that do not fit the model: never trusted
            arrays["embeddings"] = arrays["embeddings"][:, :7]
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    again, read, embedded = predict(run_script, setup)
    assert (read, embedded) == (40, 40) and again == first
    assert predict(run_script, setup)[1:] == (10, 10)        # rebuilt whole
    assert [p.name for p in models.iterdir() if p.name.startswith(".tmp")] == []


def test_one_gallery_per_exemplar_set_and_a_new_model_removes_them(run_script, setup, tmp_path):
    models, exemplars, queries, _ = setup
    for _ in range(3):
        predict(run_script, setup)
        touch(sorted((exemplars / "k5").iterdir())[0])
    assert len(galleries(models)) == 1                                   # replaced, not added
    other = write_classes(tmp_path / "other", *make_split(2, seed=9))
    code, _, err = run_script("Test_Cifar-100.py", "--model-dir", models, "--exemplars", other, "--image",
                              sorted(queries.glob("*/*.png"))[0])
    assert code == 0 and len(galleries(models)) == 2, err
    artifacts.save(models, model.build_siamese(), {})                    # another model saved here
    assert galleries(models) == []


def test_a_model_folder_that_cannot_keep_it_still_answers(run_script, setup, monkeypatch):
    models, _, _, _ = setup
    first, _, _ = predict(run_script, setup)
    for path in galleries(models):
        path.unlink()

    def full(path, data, fix="", midway=None):
        raise gallery.UserError(f"could not write {path} (No space left on device); {fix}")
    monkeypatch.setattr(artifacts, "write_file", full)
    _, exemplars, queries, _ = setup
    code, out, err = run_script("Test_Cifar-100.py", "--model-dir", models, "--exemplars", exemplars,
                                "--image", *sorted(queries.glob("*/*.png")), "--json", "--neighbours", 3)
    assert code == 0 and [json.loads(l) for l in out.splitlines()] == first
    assert "note: could not write" in err and "embedded again next time" in err and galleries(models) == []


def test_the_training_data_gallery_needs_no_loading_the_second_time(run_script, trained, tree_dir, tmp_path,
                                                                    monkeypatch):
    models = tmp_path / "model"
    shutil.copytree(trained[0], models, ignore=shutil.ignore_patterns("gallery-*", "*.png"))
    query = sorted((tree_dir / "test").glob("*/*.png"))[0]
    args = ["Test_Cifar-100.py", "--model-dir", models, "--data-dir", tree_dir, "--image", query, "--neighbours", 2]
    code, first, err = run_script(*args)
    assert code == 0, err
    assert str(tree_dir / "train") in first                  # the neighbours are training files, by name

    def refuse(*a, **k):
        raise AssertionError("the training data was loaded again")
    monkeypatch.setattr(data, "load", refuse)
    code, second, err = run_script(*args)
    assert code == 0 and second == first, err


def test_a_model_folder_inside_the_data_is_not_part_of_the_key(run_script, trained, tree_dir, tmp_path,
                                                               monkeypatch):
    data_dir = tmp_path / "tree"
    shutil.copytree(tree_dir, data_dir)
    models = data_dir / "model"                       # train/ and test/ are read; this is not
    shutil.copytree(trained[0], models, ignore=shutil.ignore_patterns("gallery-*", "*.png"))
    args = ["Test_Cifar-100.py", "--model-dir", models, "--data-dir", data_dir, "--image",
            sorted((data_dir / "test").glob("*/*.png"))[0]]
    code, first, err = run_script(*args)
    assert code == 0, err
    monkeypatch.setattr(data, "load", lambda *a, **k: pytest.fail("the training data was loaded again"))
    code, second, err = run_script(*args)
    assert code == 0 and second == first, err


@pytest.mark.parametrize("source", ["pickles", "tree.zip"])
def test_the_default_call_reads_only_its_test_images_the_second_time(run_script, trained, pickle_dir, tree_dir,
                                                                     tmp_path, decoded, source):
    """`Test_Cifar-100.py --data-dir X` (the first --count test images against the training
    classes): with the gallery in place it decodes those images and no other, no train pickle,
    and answers as the call that read everything."""
    from test_archives import archive_of
    models = tmp_path / "model"
    shutil.copytree(trained[0], models, ignore=shutil.ignore_patterns("gallery-*", "*.png"))
    data_dir = pickle_dir if source == "pickles" else archive_of(tree_dir, tmp_path / "tree.zip", "zip")
    args = ["Test_Cifar-100.py", "--model-dir", models, "--data-dir", data_dir, "--count", 7, "--no-plots"]
    code, first, err = run_script(*args)
    assert code == 0, err
    assert len(galleries(models)) == 1 and "7 test images, each against" in first
    assert decoded == ({"images": 0, "pickles": ["meta", "train", "test"]} if source == "pickles"
                       else {"images": 300, "pickles": []})        # 200 training images, 100 test
    decoded.update(images=0, pickles=[])
    code, second, err = run_script(*args)
    assert code == 0 and second == first, err
    assert decoded == ({"images": 0, "pickles": ["meta", "test"]} if source == "pickles"
                       else {"images": 7, "pickles": []})


@pytest.mark.parametrize("flags, pattern", [
    (["--data-dir", "MISSING"], r"data path .*missing does not exist; pass --data-dir"),
    (["--data-dir", "MISSING", "--image", "IMAGE"], r"data path .*missing does not exist; pass --data-dir"),
    (["--exemplars", "MISSING", "--image", "IMAGE"], r"missing is not a folder; pass a folder of class folders"),
])
def test_a_missing_data_or_exemplar_path_is_one_line_and_writes_nothing(run_script, trained, tmp_path, flags, pattern):
    from PIL import Image
    from test_cli_errors import one_line_error
    models = tmp_path / "model"
    shutil.copytree(trained[0], models, ignore=shutil.ignore_patterns("gallery-*", "*.png"))
    Image.new("RGB", (32, 32)).save(tmp_path / "q.png")
    before = sorted(models.iterdir())
    flags = [{"MISSING": str(tmp_path / "missing"), "IMAGE": str(tmp_path / "q.png")}.get(f, f) for f in flags]
    one_line_error(run_script("Test_Cifar-100.py", "--model-dir", models, *flags), pattern)
    assert sorted(models.iterdir()) == before
