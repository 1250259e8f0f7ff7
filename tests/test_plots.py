"""Figures: written whole, and the predictions grid stays small however many images are predicted."""
import numpy as np
from PIL import Image

from siamese import plots


def test_predictions_grid_draws_at_most_the_first_64(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=(600, 32, 32, 3), dtype=np.uint8)
    names = [f"c{i % 7}" for i in range(600)]
    assert plots.predictions(x, names, names[::-1], tmp_path / "many.png") == plots.MAX_DRAWN == 64
    assert plots.predictions(x[:64], names[:64], names[::-1][:64], tmp_path / "64.png") == 64
    assert plots.predictions(x[:5], names[:5], names[:5], tmp_path / "few.png") == 5
    with Image.open(tmp_path / "many.png") as a, Image.open(tmp_path / "64.png") as b:
        assert a.size == b.size            # the same 8 x 8 grid
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_an_unknown_answer_that_is_right_is_drawn_green(tmp_path, monkeypatch):
    from matplotlib.axes import Axes
    colours = []
    real = Axes.set_title
    monkeypatch.setattr(Axes, "set_title", lambda self, text, **kw: (colours.append(kw.get("color")),
                                                                       real(self, text, **kw))[1])
    x = np.zeros((3, 32, 32, 3), np.uint8)
    plots.predictions(x, ["unknown", "unknown", "cup"], ["stranger", "cup", "cup"], tmp_path / "p.png",
                      right=[True, False, True])
    assert colours == ["green", "red", "green"]
    colours.clear()
    plots.predictions(x, ["unknown", "cup", "cup"], ["stranger", "car", "cup"], tmp_path / "p.png")
    assert colours == ["red", "red", "green"]                   # without `right`: predicted == true


def test_confusion_draws_the_classes_of_the_most_confused_pairs(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    names = [f"c{i:02d}" for i in range(40)]
    true = [names[i % 40] for i in range(800)]
    predicted = list(true)
    for i in range(0, 800, 7):                   # scattered single mistakes
        predicted[i] = names[rng.integers(40)]
    predicted[:40:1] = ["c07"] * 40              # c00..c39's first image all taken for c07
    for i in range(40, 200, 40):
        predicted[i + 3] = "c31"                 # c03 -> c31, four times
    drawn = plots.confusion(true, predicted, tmp_path / "c.png")
    assert len(drawn) == plots.MAX_CONFUSED and {"c07", "c03", "c31"} <= set(drawn)
    assert (tmp_path / "c.png").stat().st_size > 1000
    columns = []
    from matplotlib.axes import Axes
    real = Axes.set_xticks
    monkeypatch.setattr(Axes, "set_xticks", lambda self, ticks, labels=None, **kw: (columns.append(list(labels)),
                                                                                   real(self, ticks, labels, **kw))[1])
    few = plots.confusion(["a", "b", "b", "c"], ["a", "unknown", "b", "a"], tmp_path / "u.png", unknown="unknown")
    assert few == ["a", "b", "c"] and columns == [["a", "b", "c", "unknown"]]   # every class, and "unknown"


def test_tsne_keeps_clusters_apart_and_is_seeded():
    from siamese import tsne
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 10, size=(5, 32))
    labels = np.repeat(np.arange(5), 30)
    x = centres[labels] + rng.normal(0, 1, size=(150, 32))
    y = tsne.tsne(x, steps=300)
    d = np.square(y[:, None] - y[None]).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert np.mean(labels[d.argmin(1)] == labels) > 0.95           # each point's neighbour is of its cluster
    np.testing.assert_array_equal(y, tsne.tsne(x, steps=300))
    keep = tsne.sample(np.repeat(np.arange(50), 100))
    assert len(keep) == tsne.MAX_POINTS and len(np.unique(np.repeat(np.arange(50), 100)[keep])) == tsne.MAX_CLASSES


def test_queries_write_a_confusion_and_a_map_beside_the_model(trained, run_script, tmp_path):
    import shutil
    from conftest import make_split
    from test_exemplars import write_classes
    models = tmp_path / "m"
    shutil.copytree(trained[0], models)
    queries = write_classes(tmp_path / "q", *make_split(4, seed=6))
    code, out, err = run_script("Test_Cifar-100.py", "--model-dir", models, "--exemplars", queries,
                                "--queries", queries)
    assert code == 0, err
    for name in ("confusion.png", "queries_map.png"):
        assert f"wrote {models / name}" in out and (models / name).stat().st_size > 1000
    assert "t-SNE of 40 of the 40 query images, 10 classes" in out
    assert (models / "embedding_map.png").read_bytes() == (trained[0] / "embedding_map.png").read_bytes()


def test_long_class_names_are_cut_to_a_cell_keeping_their_end():
    assert plots._fit("apple") == "apple"
    cut = plots._fit("n01629819_european_fire_salamander")
    assert len(cut) == 18 and cut.startswith("…") and cut.endswith("fire_salamander")
