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
