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
