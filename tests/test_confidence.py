"""The class confidence: P(class | image) with a temperature fitted at training on held-out test
images, its expected calibration error, and where it is shown (--image, --json, the table)."""
import json
import pickle
import re

import numpy as np
import pytest
from test_exemplars import folders  # noqa: F401  (a fixture)

from siamese import artifacts, evaluate


def drawn(temperature, n=4000, classes=6, seed=0):
    """Logits and classes drawn from softmax(logits / temperature): data that temperature calibrates."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, classes))
    p = evaluate.class_probabilities(logits, temperature)
    truth = np.array([rng.choice(classes, p=row) for row in p])
    return logits, truth


@pytest.mark.parametrize("temperature", [0.3, 1.0, 4.0])
def test_the_fitted_temperature_is_the_one_the_classes_were_drawn_with(temperature):
    logits, truth = drawn(temperature)
    assert evaluate.fit_temperature(logits, truth) == pytest.approx(temperature, rel=0.1)


def test_expected_calibration_error_by_hand():
    # Two bins used of 10: [0.2, 0.3) holds 0.25 x 2, one right -> |0.5 - 0.25| = 0.25, weight 2/6;
    # [0.9, 1.0] holds 0.95 x 4, all right -> 0.05, weight 4/6.
    confidence = [0.25, 0.25, 0.95, 0.95, 0.95, 1.0]
    ece, table = evaluate.reliability(confidence, [1, 0, 1, 1, 1, 1], bins=10)
    assert ece == pytest.approx(2 / 6 * 0.25 + 4 / 6 * abs(1 - (0.95 * 3 + 1.0) / 4))
    assert [(round(lo, 3), n) for lo, _, _, n in table] == [(0.2, 2), (0.9, 4)]


def test_calibration_is_checked_on_images_it_was_not_fitted_on():
    logits, truth = drawn(2.0, n=4000)
    classes = np.array([3, 7, 12, 20, 33, 41])                        # ids, not positions
    saved, tables = evaluate.calibrate_confidence(classes, logits, classes[truth])
    assert (saved["fitted_on"], saved["checked_on"], saved["classes"]) == (2000, 2000, 6)
    assert saved["temperature"] == pytest.approx(2.0, rel=0.2)
    assert saved["ece"] < 0.04 < 0.1 < saved["ece_p_same"]               # P(same) read as a confidence is not one
    assert set(tables) == {"P(class)", "P(same) of the best class"}
    assert evaluate.calibrate_confidence(classes[:1], logits[:, :1], classes[truth * 0]) == (None, None)
    stranger = np.where(truth == 5, 99, classes[truth])                    # a class without exemplars
    assert evaluate.calibrate_confidence(classes[:5], logits[:, :5], stranger) == (None, None)


def test_training_saves_the_temperature_beside_the_plain_model(trained):
    out, stdout = trained
    saved = json.loads((out / artifacts.CONFIDENCE).read_text())
    assert artifacts.load_temperature(out) == saved["temperature"] > 0
    assert saved["fitted_on"] + saved["checked_on"] == 100 and 0 <= saved["ece"] <= 1
    with open(out / "metrics.pkl", "rb") as f:
        assert pickle.load(f)["confidence"] == saved
    assert re.search(rf"temperature {saved['temperature']:.4g} fitted on 50 test images; expected calibration "
                     rf"error on the other 50: {saved['ece']:.3f}", stdout)
    assert "temperature" not in (out / artifacts.JSON).read_text()     # the Keras files are as before
    assert (out / "reliability.png").stat().st_size > 1000


def test_image_json_and_table_show_the_class_confidence_first(trained, folders, run_script):  # noqa: F811
    out, _ = trained
    exemplars, queries = folders
    base = ["Test_Cifar-100.py", "--model-dir", out, "--exemplars", exemplars]
    code, text, err = run_script(*base, "--image", queries / "k4")
    assert code == 0, err
    code, lines, err = run_script(*base, "--image", queries / "k4", "--json")
    for line, record in zip(text.splitlines(), map(json.loads, lines.splitlines())):
        p_class, top = record["p_class"], record["top5"]
        # All classes' P(class) sum to 1 (here 10), so the best five's to at most 1; same order as P(same).
        assert 0 < sum(p_class) <= 1 + 1e-5 and p_class == sorted(p_class, reverse=True)
        shown = ", ".join(f"{n} {100 * c:.0f}% ({'P(same) ' if i == 0 else ''}{s:.3f})"
                          for i, ((n, s), c) in enumerate(zip(top, p_class)))
        assert line == f"{record['image']}: {shown}"


def test_a_model_without_a_temperature_shows_p_same_alone(trained, folders, run_script, tmp_path):  # noqa: F811
    import shutil
    exemplars, queries = folders
    old = tmp_path / "old"
    shutil.copytree(trained[0], old)
    (old / artifacts.CONFIDENCE).unlink()
    code, out, err = run_script("Test_Cifar-100.py", "--model-dir", old, "--exemplars", exemplars,
                                "--image", queries / "k4", "--json")
    assert code == 0 and all("p_class" not in json.loads(l) for l in out.splitlines()), err
    (old / artifacts.CONFIDENCE).write_text('{"temperature": -1}')
    code, out, err = run_script("Test_Cifar-100.py", "--model-dir", old, "--exemplars", exemplars,
                                "--image", queries / "k4")
    assert code == 2 and err.startswith("error: ") and "not a readable class confidence" in err
