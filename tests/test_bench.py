"""The benchmark's softmax peer (benchmarks/softmax_peer.py) and its line in benchmarks/bench.py."""
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import LABEL_IDS, ROOT

from siamese import data

sys.path.insert(0, str(ROOT / "benchmarks"))
import softmax_peer  # noqa: E402


def test_shuffled_batches_show_every_image_once_per_epoch():
    labels = np.repeat([41, 3, 77], [7, 5, 9])                # unsorted, non-contiguous ids
    sampler = softmax_peer.ShuffledBatches(labels, 4, seed=3)
    assert sampler.steps == 5 and list(sampler.classes) == [3, 41, 77]
    for epoch in range(2):
        idx = np.concatenate([sampler.batch(epoch, s)[0] for s in range(sampler.steps)])
        assert len(np.unique(idx)) == 20                      # 21 images, the tail of 1 dropped
        idx, y = sampler.batch(epoch, 0)
        assert np.array_equal(y, labels[idx])
        np.testing.assert_array_equal(idx, sampler.batch(epoch, 0)[0])   # stateless: same batch again
    assert not np.array_equal(sampler.batch(0, 0)[0], sampler.batch(1, 0)[0])


@pytest.fixture(scope="module")
def peer_result(splits):
    (x, y), (xt, yt) = splits
    ds = data.Dataset(x, y, xt, yt, {int(c): f"class_{c}" for c in LABEL_IDS})
    # 120 seen training images in batches of 32: 3 steps per epoch, 60 steps in all. Far fewer
    # and the closed-set top-1 stays at chance: BatchNorm's moving statistics lag behind.
    return softmax_peer.run(ds, None, shots=2, holdout="4", epochs=20, batch_size=32)


def test_peer_trains_on_the_seen_classes_and_learns(peer_result):
    r = peer_result
    assert r["classes"] == 6 and r["test_images"] == 60        # 4 of 10 classes held out
    assert r["epochs"] == 20 and r["train_steps"] == 60
    assert r["train_seconds"] > 0 and r["train_images_per_s"] > 0
    for key in ("top1", "top5", "embedding_top1"):
        assert 0 <= r[key] <= 1
    assert r["top1"] <= r["top5"]
    # Chance is 1/6 on these easy synthetic classes.
    assert r["top1"] >= 0.8 and r["embedding_top1"] >= 0.8


def test_peer_few_shot_on_held_out_classes_has_ours_keys(peer_result):
    few = peer_result["few_shot"]
    assert sorted(few) == ["4-way-1-shot", "4-way-5-shot"]     # N capped at the 4 unseen classes
    for r in few.values():
        assert r["episodes"] == 600 and 0 <= r["ci95"] < 0.1
        assert 0.5 <= r["mean"] <= 1                           # chance is 1/4
    # Open-set on the same classes, by the same code as ours: 2 known + 2 unknown of the 4.
    assert sorted(peer_result["open_set"]) == ["2-way-1-shot", "2-way-5-shot"]
    for r in peer_result["open_set"].values():
        assert r["episodes"] == 600 and 0 <= r["auroc"] <= 1 and 0 <= r["mean"] <= 1


def test_bench_lines_for_ours_and_the_peer_side_by_side_with_held_out_and_novel_classes(pickle_dir, tmp_path):
    # One bench run covers both protocols (each run costs two TensorFlow children and 600-episode
    # sets): held-out classes of the training data (--holdout) and new classes from elsewhere (--novel).
    from PIL import Image
    from conftest import make_split
    x, y = make_split(12, seed=5, label_ids=np.array([1, 2, 4, 5, 6, 8]))   # 6 classes nobody trains on
    for i, (im, label) in enumerate(zip(x, y)):
        folder = tmp_path / "novel" / f"new_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    out = subprocess.run([sys.executable, "benchmarks/bench.py", "--data-dir", str(pickle_dir),
                          "--novel", str(tmp_path / "novel"), "--minutes", "2", "--only", "softmax", "ours",
                          "--holdout", "4", "--together", "--", "--epochs", "2"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    ours, peer, comparison = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    assert ours["system"] == "ours" and ours["flags"] == "--holdout 4 --epochs 2" and ours["epochs"] == 2
    assert peer["system"] == "softmax" and peer["holdout"] == "4" and peer["classes"] == 6
    assert "embedding_top1" in peer and "verification_accuracy" not in peer
    for line in (ours, peer):
        assert line["together"] is True
        assert line["peak_rss_mb"] > 0 and line["train_steps"] > 0
        assert sorted(line["few_shot"]) == ["4-way-1-shot", "4-way-5-shot"]               # the held-out 4
        assert sorted(line["open_set"]) == ["2-way-1-shot", "2-way-5-shot"]
        assert sorted(line["novel"]) == ["5-way-1-shot", "5-way-5-shot", "6-way-1-shot"]   # 20-way capped at 6
        assert sorted(line["novel_open_set"]) == ["3-way-1-shot", "3-way-5-shot"]         # 3 known + 3 unknown
        for r in line["novel"].values():
            assert r["episodes"] == 600 and 1 / 6 <= r["mean"] <= 1
        for r in line["novel_open_set"].values():
            assert 0 <= r["auroc"] <= 1
    assert comparison["top1_points_vs_softmax"] == pytest.approx(100 * (ours["top1"] - peer["top1"]))
    assert comparison["novel_points_vs_softmax"] == pytest.approx(
        {k: 100 * (ours["novel"][k]["mean"] - peer["novel"][k]["mean"]) for k in ours["novel"]})


def test_no_benchmark_script_imports_one_that_imports_it_back():
    """benchmarks/*.py import each other by bare name (the folder is on sys.path): no circle, at
    any depth, counting imports inside functions too."""
    import ast
    folder = ROOT / "benchmarks"
    names = {p.stem for p in folder.glob("*.py")}
    imports = {}
    for name in names:
        tree = ast.parse((folder / f"{name}.py").read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
        imports[name] = found & names - {name}

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in imports[start])
    assert "episodes" in imports["bench"] and "episodes" in imports["softmax_peer"]
    assert [n for n in sorted(names) if reaches(n, n)] == []
