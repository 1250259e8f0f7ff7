"""Your own classes: exemplar folders whose class names training never saw, --image / --queries /
--json / --pair, and few-shot episodes over a folder, through Test_Cifar-100.py."""
import json
import re

import numpy as np
import pytest
from conftest import make_split
from PIL import Image
from test_cli_errors import model_dir, one_line_error  # noqa: F401  (model_dir is a fixture)

from siamese import artifacts, data, evaluate, pairs, predict

# The synthetic classes of the training data, under names the model never saw.
NEW_NAMES = ["éclair", "kind-1", "Kind_2", "k3", "k4", "k5", "k6", "k7", "k8", "zz9"]


def write_classes(root, images, labels, scale=1):
    """root/<new name>/<file>; scale > 1 saves enlarged copies (read back exactly by area averaging)."""
    ids = {c: k for k, c in enumerate(np.unique(labels))}
    for i, (im, y) in enumerate(zip(images, labels)):
        folder = root / NEW_NAMES[ids[y]]
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(im)
        if scale > 1:
            img = img.resize((32 * scale, 32 * scale), Image.Resampling.NEAREST)
        img.save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    exemplars = write_classes(root / "exemplars", *make_split(3, seed=5), scale=2)
    queries = write_classes(root / "queries", *make_split(4, seed=6))
    stranger = queries / "stranger"                     # a query class without exemplars
    stranger.mkdir()
    for i in range(2):
        Image.new("RGB", (32, 32), (i * 90, 30, 60)).save(stranger / f"s{i}.png")
    return exemplars, queries


def classifier(model_path, exemplars, shots=None):
    x, y, names, _ = data.load_classes(exemplars)
    if shots:
        idx, y = pairs.exemplar_indices(y, shots)
        x = x[idx]
    scorer = artifacts.load_scorer(model_path)
    return predict.ExemplarClassifier(scorer, scorer.embed(x), y, names), scorer


def test_queries_against_classes_training_never_saw(trained, folders, run_script):
    model_path, _ = trained
    exemplars, queries = folders
    code, out, err = run_script("Test_Cifar-100.py", "--model-dir", model_path, "--exemplars", exemplars,
                                "--queries", queries, "--no-plots")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == f"42 images of {queries}, each against 3 exemplar(s) of 10 classes from {exemplars}"
    assert lines[1].split() == ["index", "true", "predicted", "P(class)", "P(same)"]
    rows = [l.split(None, 6) for l in lines[2:-2]]
    assert len(rows) == 42 and [int(r[0]) for r in rows] == list(range(42))
    true, predicted = [r[1] for r in rows], [r[2] for r in rows]
    assert [r[5] for r in rows] == ["right" if t == p else "wrong" for t, p in zip(true, predicted)]
    assert set(predicted) <= set(NEW_NAMES)
    assert all(0 <= float(r[3]) <= 1 and 0 <= float(r[4]) <= 1 for r in rows)
    right = sum(r[5] == "right" for r in rows)
    assert lines[-2].startswith("retrieval among the 42 query images, each against the others")
    assert lines[-1] == f"accuracy: {right}/42 ({100 * right / 42:.1f}%)"
    # The class without exemplars is named, counted, and always wrong.
    assert "stranger" in err and "count as wrong" in err
    assert all(r[5] == "wrong" for r in rows if r[1] == "stranger") and true.count("stranger") == 2
    assert right / 40 > 0.3, out                     # chance is 0.1; the model learned these looks

    # The table is the reusable class's answer.
    clf, _ = classifier(model_path, exemplars)
    x, y, names, _ = data.load_classes(queries)
    assert [top[0][0] for top in clf.rank(x)] == predicted


def parse_json_lines(out):
    records = [json.loads(line) for line in out.splitlines()]       # every line, nothing else
    for r in records:
        assert set(r) == {"image", "true", "top5", "p_class"}   # the model has a temperature
        scores = [s for _, s in r["top5"]]
        assert r["p_class"] == sorted(r["p_class"], reverse=True) and 0 <= sum(r["p_class"]) <= 1 + 1e-5
        assert len(r["top5"]) == 5 and scores == sorted(scores, reverse=True)
        assert all(0 <= s <= 1 for s in scores) and {n for n, _ in r["top5"]} <= set(NEW_NAMES)
    return records


def test_json_for_images_files_and_folders(trained, folders, run_script, tmp_path):
    model_path, _ = trained
    exemplars, queries = folders
    odd = tmp_path / "odd.jpg"
    Image.new("L", (50, 37), 200).save(odd)
    code, out, err = run_script("Test_Cifar-100.py", "--model-dir", model_path, "--exemplars", exemplars,
                                "--image", queries / "k4", odd, "--json")
    assert code == 0, err
    records = parse_json_lines(out)
    assert [r["image"] for r in records] == [str(p) for p in sorted((queries / "k4").iterdir())] + [str(odd)]
    assert all(r["true"] is None for r in records)

    code, out, err = run_script("Test_Cifar-100.py", "--model-dir", model_path, "--exemplars", exemplars,
                                "--queries", queries, "--json", "--shots", "1")
    assert code == 0, err
    records = parse_json_lines(out)
    assert [r["true"] for r in records] == [n for n in sorted(NEW_NAMES + ["stranger"]) for _ in
                                            range(2 if n == "stranger" else 4)]
    # --shots 1: the first file of each exemplar folder, in sorted name order.
    clf, _ = classifier(model_path, exemplars, shots=1)
    x, _, _, _ = data.load_classes(queries)
    expected = clf.rank(x)
    for r, top in zip(records, expected):
        assert [n for n, _ in r["top5"]] == [n for n, _ in top]
        np.testing.assert_allclose([s for _, s in r["top5"]], [s for _, s in top], atol=2e-6)


def test_pair_gives_p_same(trained, folders, run_script):
    model_path, _ = trained
    exemplars, _ = folders
    a, b = sorted((exemplars / "k5").iterdir())[:2]
    code, out, err = run_script("Test_Cifar-100.py", "--model-dir", model_path, "--pair", a, b)
    assert code == 0, err
    assert re.fullmatch(rf"P\(same class\) (0|1)\.\d{{3}}: {re.escape(str(a))} vs {re.escape(str(b))}\n", out)
    code, out, err = run_script("Test_Cifar-100.py", "--model-dir", model_path, "--pair", b, a, "--json")
    record = json.loads(out)
    assert set(record) == {"left", "right", "p_same"} and (record["left"], record["right"]) == (str(b), str(a))
    scorer = artifacts.load_scorer(model_path)
    p = predict.p_same(scorer, data.read_image(a), data.read_image(b))
    assert 0 <= p <= 1 and abs(record["p_same"] - p) < 1e-5
    assert f"{p:.3f}" in run_script("Test_Cifar-100.py", "--model-dir", model_path, "--pair", a, b)[1]


def test_episodes_over_a_folder(trained, run_script, tmp_path, monkeypatch):
    model_path, _ = trained
    root = write_classes(tmp_path / "pool", *make_split(6, seed=7))
    drawn = []
    real_episodes = pairs.episodes

    def recording(labels, ways, shots, n, queries=15, seed=0):
        for support, query in real_episodes(labels, ways, shots, n, queries=queries, seed=seed):
            drawn.append((labels[support], labels[query], support, query))
            yield support, query
    monkeypatch.setattr(pairs, "episodes", recording)

    args = ["Test_Cifar-100.py", "--model-dir", model_path, "--exemplars", root, "--episodes", "20",
            "--ways", "4", "--shots", "2", "--seed", "3"]
    code, out, err = run_script(*args)
    assert code == 0, err
    m = re.fullmatch(rf"4-way 2-shot on 10 classes of {re.escape(str(root))}, 20 episodes \(seed 3, up to 15 "
                     r"queries per class\): (\d+\.\d)% ± (\d+\.\d)% \(95% CI; chance 25\.0%\)\n", out)
    assert m, out
    assert len(drawn) == 20
    for s_labels, q_labels, support, query in drawn:
        assert not set(support) & set(query)
        classes, counts = np.unique(s_labels, return_counts=True)
        assert len(classes) == 4 and (counts == 2).all() and set(q_labels) == set(classes)
        assert (np.unique(q_labels, return_counts=True)[1] == 4).all()     # 6 images - 2 support

    code, again, _ = run_script(*args, "--json")
    r = json.loads(again)
    assert (r["ways"], r["shots"], r["episodes"], r["seed"]) == (4, 2, 20, 3)
    assert f"{100 * r['mean']:.1f}" == m[1] and f"{100 * r['ci95']:.1f}" == m[2]       # same seed, same answer
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(drawn[:20], drawn[20:]))


@pytest.fixture
def pool(tmp_path):
    return write_classes(tmp_path / "pool", *make_split(2, seed=8))


@pytest.mark.parametrize("flags, pattern", [
    (["--episodes", "5", "--ways", "11"], r"--ways 11 is more than the 10 classes in .*pool; lower --ways"),
    (["--episodes", "5", "--shots", "2"], r"class folder .*pool/\S+ has 2 image\(s\); 2-shot episodes need at least 3"),
    ([], r"--exemplars needs queries"),
])
def test_bad_exemplar_requests(run_script, model_dir, pool, flags, pattern):  # noqa: F811
    one_line_error(run_script("Test_Cifar-100.py", "--model-dir", model_dir, "--exemplars", pool, *flags),
                   pattern)


@pytest.mark.parametrize("damage, pattern", [
    (lambda p: [f.unlink() for f in sorted((p / "k6").iterdir())[1:]],
     r"class folder .*pool/k6 has 1 image\(s\); 1-shot episodes need at least 2"),
    (lambda p: (p / "empty").mkdir(), r"class folder .*pool/empty is empty"),
    (lambda p: (p / "k5" / "list.csv").write_text("a,b"), r"cannot read image .*k5/list\.csv: not an image"),
])
def test_bad_exemplar_folders(run_script, model_dir, pool, damage, pattern):  # noqa: F811
    damage(pool)
    one_line_error(run_script("Test_Cifar-100.py", "--model-dir", model_dir, "--exemplars", pool,
                              "--episodes", "3"), pattern)


def test_bad_query_arguments(run_script, model_dir, pool, tmp_path):  # noqa: F811
    base = ["Test_Cifar-100.py", "--model-dir", model_dir]
    one_line_error(run_script(*base, "--episodes", "3"), "--episodes draws its classes from --exemplars")
    one_line_error(run_script(*base, "--exemplars", pool, "--image", tmp_path / "nope.png"), "nope.png does not exist")
    one_line_error(run_script(*base, "--exemplars", pool, "--image", pool, "--queries", pool), "not allowed with")
    one_line_error(run_script(*base, "--pair", pool / "k4" / "x.png", tmp_path), "x.png does not exist")
    one_line_error(run_script(*base, "--pair", next((pool / "k4").iterdir()), tmp_path), "is a folder, not an image")
    (tmp_path / "empty").mkdir()
    one_line_error(run_script(*base, "--exemplars", pool, "--queries", tmp_path / "empty"), "has no class folders")
