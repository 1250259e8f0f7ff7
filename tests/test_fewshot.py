"""Held-out classes, few-shot episodes, predicting your own images, and the figures."""
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import FINE_NAMES, LABEL_IDS, ROOT

from siamese import data, pairs, splits
from siamese.errors import UserError


def test_random_holdout_is_seeded_and_disjoint(pickle_dir):
    ds = data.load(pickle_dir)
    seen, unseen, record = splits.holdout(ds, 4, seed=3)
    assert len(unseen) == 4 and len(seen) == 6
    assert not set(seen) & set(unseen) and set(seen) | set(unseen) == set(LABEL_IDS)
    assert record["unseen"] == [FINE_NAMES[c] for c in unseen]
    np.testing.assert_array_equal(unseen, splits.holdout(ds, 4, seed=3)[1])
    assert not np.array_equal(unseen, splits.holdout(ds, 4, seed=4)[1])


def test_fc100_splits_by_superclass(pickle_dir):
    ds = data.load(pickle_dir)
    seen, unseen, record = splits.holdout(ds, "fc100", seed=0)
    part = {name: p for p, names in splits.FC100.items() for name in names}
    superclass = lambda c: ds.coarse_names[int(ds.coarse_train[ds.y_train == c][0])]
    assert {part[superclass(c)] for c in seen} == {"train"}
    assert {part[superclass(c)] for c in unseen} == {"test"}
    assert not set(record["seen"]) & (set(record["unseen"]) | set(record["val"]))
    assert sum(map(len, splits.FC100.values())) == 20 and len(splits.FC100["train"]) == 12


def test_fc100_needs_superclasses(tree_dir):
    with pytest.raises(UserError, match="coarse"):
        splits.holdout(data.load(tree_dir), "fc100", seed=0)


@pytest.mark.parametrize("spec", ["0", "-2", "abc", "9"])
def test_bad_holdout_values(pickle_dir, spec):
    with pytest.raises(UserError, match="--holdout"):
        splits.holdout(data.load(pickle_dir), splits.parse(spec), seed=0)


def test_episodes_draw_disjoint_support_and_query():
    labels = np.repeat([4, 8, 15, 16, 23, 42], 25)
    eps = list(pairs.episodes(labels, ways=5, shots=2, n=50, queries=7, seed=1))
    assert len(eps) == 50
    for support, query in eps:
        assert len(support) == 10 and len(query) == 35 and not set(support) & set(query)
        s_cls, s_counts = np.unique(labels[support], return_counts=True)
        assert len(s_cls) == 5 and (s_counts == 2).all()
        assert set(labels[query]) == set(s_cls)
    again = list(pairs.episodes(labels, 5, 2, 50, queries=7, seed=1))
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(eps, again))
    # N is capped at the number of classes.
    support, _ = next(pairs.episodes(labels, ways=20, shots=1, n=1))
    assert len(support) == 6


def test_holdout_training_reports_few_shot_and_never_trains_on_unseen(pickle_dir, tmp_path):
    r = subprocess.run([sys.executable, "Cifar-100.py", "--data-dir", str(pickle_dir), "--out", str(tmp_path),
                        "--holdout", "4", "--epochs", "3", "--batch-size", "24", "--per-class", "4",
                        "--shots", "3"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "metrics.pkl", "rb") as f:
        m = pickle.load(f)
    split = m["config"]["split"]
    assert split["holdout"] == 4 and len(split["unseen"]) == 4 and len(split["seen"]) == 6
    assert m["config"]["classes"] == split["seen"]            # the classes training used
    assert m["test"]["classes"] == 6
    assert set(m["few_shot"]) == {"4-way-1-shot", "4-way-5-shot"}
    for name, res in m["few_shot"].items():
        assert res["episodes"] >= 600 and 0 <= res["mean"] <= 1 and res["ci95"] >= 0
        assert re.search(rf"few-shot {name} on unseen classes: \d+\.\d% ± \d+\.\d%", r.stdout)
    assert set(m["open_set"]) == {"2-way-1-shot", "2-way-5-shot"}     # 2 known + 2 unknown of the 4
    for name, res in m["open_set"].items():
        assert res["episodes"] == 600 and 0 <= res["mean"] <= 1 and 0 <= res["auroc"] <= 1
        assert f"open-set {name} on unseen classes (as many unknown): {100 * res['mean']:.1f}% ± " in r.stdout
        assert f"AUROC {res['auroc']:.3f}" in r.stdout
    # Figures: real PNGs with content.
    from PIL import Image
    for png in ("training_curves.png", "roc.png"):
        with Image.open(tmp_path / png) as im:
            assert im.format == "PNG" and im.size[0] > 300 and len(np.unique(np.asarray(im.convert("L")))) > 10

    # Predict your own images: any size or mode, top-5 classes with scores.
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 4), dtype=np.uint8), "RGBA").save(tmp_path / "a.png")
    Image.new("L", (20, 20), 128).save(tmp_path / "b.jpg")
    r = subprocess.run([sys.executable, "Test_Cifar-100.py", "--data-dir", str(pickle_dir), "--model-dir", str(tmp_path),
                        "--shots", "3", "--image", str(tmp_path / "a.png"), str(tmp_path / "b.jpg")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{tmp_path / 'a.png'}: ")
    # Each class with P(class) first and P(same) beside it (the model has a temperature).
    assert all(len(re.findall(r"class_\d\d \d+% \((P\(same\) )?\d\.\d{3}\)", l)) == 5 for l in lines), lines
