"""Open-set recognition ("none of these classes"): the episodes, the numbers made from them, the
threshold training calibrates and saves beside the model, and --open / --reject through
Test_Cifar-100.py."""
import json
import re

import numpy as np
import pytest
from conftest import make_split
from test_cli_errors import model_dir, one_line_error  # noqa: F401  (model_dir is a fixture)
from test_exemplars import NEW_NAMES, folders, write_classes  # noqa: F401  (folders is a fixture)

from siamese import artifacts, evaluate, pairs


def test_open_episodes_draw_known_and_as_many_unknown_classes():
    labels = np.repeat([4, 8, 15, 16, 23, 42, 50, 61], 12)
    labels[-5:] = 99                              # a small class: 61 keeps 7 images, 99 has 5
    eps = list(pairs.open_episodes(labels, ways=3, shots=2, n=60, queries=7, seed=1))
    assert len(eps) == 60
    counts = []
    for support, known, unknown in eps:
        s_cls, s_counts = np.unique(labels[support], return_counts=True)
        k_cls, k_counts = np.unique(labels[known], return_counts=True)
        u_cls, u_counts = np.unique(labels[unknown], return_counts=True)
        assert len(s_cls) == 3 and (s_counts == 2).all() and list(k_cls) == list(s_cls)
        assert len(u_cls) == 3 and not set(u_cls) & set(s_cls)            # unknown: no support at all
        assert not set(support) & set(known)
        q = k_counts[0]                                                   # one query count per class
        assert (k_counts == q).all() and (u_counts == q).all()
        size = {c: np.sum(labels == c) for c in np.unique(labels)}
        assert q == min(7, *(size[c] - 2 for c in s_cls), *(size[c] for c in u_cls))
        counts.append(q)
    assert {3, 5, 7} <= set(counts)                                        # small classes took fewer
    again = list(pairs.open_episodes(labels, 3, 2, 60, queries=7, seed=1))
    assert all(all(np.array_equal(a, b) for a, b in zip(x, y)) for x, y in zip(eps, again))
    other = next(pairs.open_episodes(labels, 3, 2, 1, queries=7, seed=2))
    assert not np.array_equal(other[0], eps[0][0])
    with pytest.raises(ValueError, match="need 10 classes"):
        next(pairs.open_episodes(labels, ways=5, shots=1, n=1))


class PointScorer:
    """A stand-in with the scorer's interface on 1-D embeddings: the score of a query for a class
    is exp(-distance) to the class's nearest exemplar."""

    def class_scores(self, queries, exemplars, exemplar_labels, learned=None):
        classes = np.unique(exemplar_labels)
        d = np.abs(queries[:, None, 0] - exemplars[None, :, 0])
        return classes, np.stack([np.exp(-d[:, exemplar_labels == c].min(1)) for c in classes], 1)


def points(spread, n_classes=8, per_class=20, seed=0):
    """Classes at 0, 10, 20, ... with their images `spread` around them."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes) * 3 + 1, per_class)
    return (labels // 3 * 10 + rng.uniform(-spread, spread, len(labels)))[:, None], labels


def test_open_set_accuracy_and_auroc():
    emb, labels = points(spread=1)               # tight classes far apart: every query told right
    r = evaluate.open_set(PointScorer(), emb, labels, ways=3, shots=1, episodes=40, seed=5)
    assert (r["mean"], r["ci95"], r["auroc"], r["auroc_pooled"]) == (1.0, 0.0, 1.0, 1.0)
    assert (r["ways"], r["shots"], r["episodes"]) == (3, 1, 40)
    emb, labels = points(spread=9)               # classes that overlap: neither is perfect
    r = evaluate.open_set(PointScorer(), emb, labels, ways=3, shots=1, episodes=40, seed=5, threshold=0.5)
    assert 0.3 < r["mean"] < 1 and r["ci95"] > 0 and 0.5 < r["auroc"] < 1
    known, unknown = [], []
    for _, k, u in evaluate.open_scores(PointScorer(), emb, labels, 3, 1, 40, seed=5):
        known.append(k), unknown.append(u)
    known, unknown = np.concatenate(known), np.concatenate(unknown)
    assert r["known_accepted"] == np.mean(known >= 0.5) and r["unknown_rejected"] == np.mean(unknown < 0.5)
    assert 0 < r["known_accepted"] < 1 and 0 < r["unknown_rejected"] < 1


def test_calibrated_threshold_keeps_its_promise():
    emb, labels = points(spread=9)
    t = evaluate.calibrate(PointScorer(), emb, labels, shots=2, accept=0.8, episodes=50)
    assert (t["ways"], t["shots"], t["episodes"], t["classes"]) == (4, 2, 50, 8)
    assert abs(t["known_accepted"] - 0.8) < 0.02 and 0 < t["unknown_rejected"] < 1 and 0 < t["threshold"] < 1
    assert t["promise"] == "accepts 80% of known queries"
    # Few or small classes: fewer ways and shots, or no threshold at all.
    assert evaluate.calibrate(PointScorer(), *points(9, n_classes=3, per_class=3), shots=5)["shots"] == 2
    assert evaluate.calibrate(PointScorer(), *points(9, n_classes=3, per_class=3), shots=5)["ways"] == 1
    assert evaluate.calibrate(PointScorer(), *points(9, n_classes=1), shots=1) is None
    assert evaluate.calibrate(PointScorer(), *points(9, per_class=1), shots=1) is None


def test_training_saves_a_threshold_beside_the_plain_model(trained):
    model_path, stdout = trained
    saved = json.loads((model_path / artifacts.THRESHOLD).read_text())
    assert 0 < saved["threshold"] < 1 and saved["promise"] == "accepts 90% of known queries"
    assert saved["known_accepted"] >= 0.9 and saved["classes"] == 10
    assert artifacts.load_threshold(model_path) == saved["threshold"]
    assert re.search(rf"rejection threshold: P\(same\) {saved['threshold']:.3f} \(accepts 90% of known", stdout)
    assert "known_accepted" not in (model_path / artifacts.JSON).read_text()    # the Keras JSON is as before


def test_saving_without_a_threshold_removes_a_previous_models(tmp_path):
    from siamese import model
    siamese = model.build_siamese()
    artifacts.save(tmp_path, siamese, {}, threshold={"threshold": 0.4})
    assert artifacts.load_threshold(tmp_path) == 0.4
    artifacts.save(tmp_path, siamese, {})
    assert not (tmp_path / artifacts.THRESHOLD).exists()


def test_open_episodes_over_a_folder(trained, run_script, tmp_path):
    model_path, _ = trained
    root = write_classes(tmp_path / "pool", *make_split(6, seed=7))
    args = ["Test_Cifar-100.py", "--model-dir", model_path, "--exemplars", root, "--episodes", "30",
            "--ways", "3", "--shots", "2", "--seed", "4", "--open"]
    code, out, err = run_script(*args)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"open-set 3-way 2-shot on 10 classes of {root}, 30 episodes (seed 4;")
    acc = re.fullmatch(r"closed accuracy on the known queries: (\d+\.\d)% ± (\d+\.\d)% \(95% CI; chance 33\.3%\)",
                       lines[1])
    auroc = re.fullmatch(r"AUROC known vs unknown by the best class score: (\d\.\d{3}) ± \d\.\d{3} .*", lines[2])
    assert acc and auroc and len(lines) == 3, out
    code, out, err = run_script(*args, "--json")
    r = json.loads(out)
    assert {"mean", "ci95", "auroc", "ways", "shots", "episodes"} <= set(r)
    assert (r["ways"], r["shots"], r["episodes"], r["seed"]) == (3, 2, 30, 4)
    assert f"{100 * r['mean']:.1f}" == acc[1] and f"{r['auroc']:.3f}" == auroc[1]   # seeded
    assert r["auroc"] > 0.6 and r["mean"] > 0.5, r     # chance: 0.5 and 0.33; the model learned these looks

    # --reject: the shares the threshold accepts and rejects.
    code, out, err = run_script(*args, "--reject", "0.5")
    assert code == 0, err
    assert re.fullmatch(r"at P\(same\) 0\.500: \d+\.\d% of known queries accepted, \d+\.\d% of unknown rejected",
                        out.strip().splitlines()[-1]), out


def test_reject_answers_unknown_below_the_threshold(trained, folders, run_script):  # noqa: F811
    model_path, _ = trained
    exemplars, queries = folders
    base = ["Test_Cifar-100.py", "--model-dir", model_path, "--exemplars", exemplars]
    code, plain, err = run_script(*base, "--image", queries / "k4", "--json")
    code, out, err = run_script(*base, "--image", queries / "k4", "--json", "--reject")
    assert code == 0, err
    threshold = artifacts.load_threshold(model_path)
    records = [json.loads(line) for line in out.splitlines()]
    assert ([{k: r[k] for k in ("image", "true", "top5", "p_class")} for r in records]
            == [json.loads(l) for l in plain.splitlines()])
    for r in records:
        assert set(r) == {"image", "true", "top5", "p_class", "answer", "threshold"} and len(r["top5"]) == 5
        assert r["threshold"] == round(threshold, 6)
        assert r["answer"] == ("unknown" if r["top5"][0][1] < threshold else r["top5"][0][0])

    # By hand: above every score, everything is unknown; below every score, nothing is.
    code, out, err = run_script(*base, "--image", queries / "k4", "--reject", "0.999999")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 4, err
    assert all(re.fullmatch(r".*\.png: unknown \(best score below 1\.000\); \S+ \d+% \(P\(same\) \d\.\d{3}\)"
                            r"(, \S+ \d+% \(\d\.\d{3}\)){4}", l) for l in lines), lines
    code, out, err = run_script(*base, "--image", queries / "k4", "--reject", "0.000001")
    assert "unknown" not in out and len(out.strip().splitlines()) == 4

    # The table: a class without exemplars is right when answered unknown.
    code, out, err = run_script(*base, "--queries", queries, "--no-plots", "--reject", "0.999999")
    assert code == 0, err
    rows = [l.split(None, 6) for l in out.strip().splitlines()[2:-3]]
    assert len(rows) == 42 and all(r[2] == "unknown" for r in rows)
    assert [r[5] for r in rows] == ["right" if r[1] == "stranger" else "wrong" for r in rows]
    assert out.strip().splitlines()[-2:] == ["answered unknown: 42/42 (best score below 1.000)",
                                             "accuracy: 2/42 (4.8%)"]
    assert "stranger" in err and "right when answered unknown" in err


def test_reject_on_the_training_datas_test_images(trained, pickle_dir, run_script):
    model_path, _ = trained
    code, out, err = run_script("Test_Cifar-100.py", "--model-dir", model_path, "--data-dir", pickle_dir,
                                "--shots", "3", "--count", "12", "--no-plots", "--json", "--reject", "0.999999")
    assert code == 0, err
    assert [json.loads(l)["answer"] for l in out.splitlines()] == ["unknown"] * 12


@pytest.fixture
def pool(tmp_path):
    return write_classes(tmp_path / "pool", *make_split(3, seed=8))


@pytest.mark.parametrize("flags, pattern", [
    (["--open", "--image", "x.png"], r"--open runs open-set episodes; add --episodes N"),
    (["--open", "--episodes", "5", "--ways", "6"],
     r"--open --ways 6 needs 12 classes \(6 known \+ 6 unknown per episode\) but .*pool has 10; lower --ways to 5"),
    (["--episodes", "5", "--ways", "11", "--open"], r"--ways 11 is more than the 10 classes"),
    (["--episodes", "5", "--reject"], r"--reject answers `unknown` for .*not closed --episodes; drop --reject"),
    (["--open", "--episodes", "5", "--reject", "0"], r"argument --reject: must be a number between 0 and 1"),
    (["--image", "x.png", "--reject", "1"], r"argument --reject: must be a number between 0 and 1"),
    (["--image", "x.png", "--reject", "-0.2"], r"argument --reject: expected one argument|must be a number"),
    (["--image", "x.png", "--reject", "nan"], r"argument --reject: must be a number between 0 and 1"),
])
def test_bad_open_set_requests(run_script, model_dir, pool, flags, pattern):  # noqa: F811
    one_line_error(run_script("Test_Cifar-100.py", "--model-dir", model_dir, "--exemplars", pool, *flags), pattern)


def test_a_model_saved_without_a_threshold(run_script, model_dir, pool, tmp_path):  # noqa: F811
    image = next((pool / NEW_NAMES[0]).iterdir())
    base = ["Test_Cifar-100.py", "--model-dir", model_dir, "--exemplars", pool, "--image", image]
    one_line_error(run_script(*base, "--reject"),
                   r"has no rejection threshold .*; retrain with `python Cifar-100.py` .*or set one by hand "
                   r"with --reject P \(0 < P < 1\)")
    code, out, err = run_script(*base, "--reject", "0.5")            # by hand it works
    assert code == 0, err
    (model_dir / artifacts.THRESHOLD).write_text('{"threshold": 7}')
    one_line_error(run_script(*base, "--reject"), r"threshold.json is not a readable threshold")
    code, out, err = run_script(*base)                                  # without --reject: as always
    assert code == 0 and "unknown" not in out, err
