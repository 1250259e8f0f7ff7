"""User errors through the real scripts: one line on stderr, exit status 2, nothing damaged."""
import numpy as np
import pytest

from siamese import artifacts, model

TINY = ["--epochs", "1", "--batch-size", "20", "--per-class", "2", "--shots", "2", "--no-plots"]


def one_line_error(result, pattern):
    code, out, err = result
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    import re
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("script, flag, value", [
    ("Cifar-100.py", "--epochs", "0"), ("Cifar-100.py", "--batch-size", "-3"),
    ("Cifar-100.py", "--shots", "0"), ("Cifar-100.py", "--epochs", "many"),
    ("Cifar-100.py", "--lr", "-1"), ("Cifar-100.py", "--max-minutes", "0"),
    ("Test_Cifar-100.py", "--count", "0"), ("Test_Cifar-100.py", "--shots", "-1"),
])
def test_non_positive_flags(run_script, script, flag, value):
    one_line_error(run_script(script, flag, value), f"{flag}.*must be a positive")


@pytest.mark.parametrize("tf_config, flags, pattern", [
    (None, [], "needs TF_CONFIG set on every worker"),
    ("{not json", [], "TF_CONFIG is not a valid cluster"),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 1}}', [],
     "TF_CONFIG is not a valid cluster"),
    ('{"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 0}}',
     ["--max-minutes", "1"], "--max-minutes cannot be used with --strategy multiworker"),
])
def test_multiworker_configuration(run_script, monkeypatch, pickle_dir, tmp_path, tf_config, flags, pattern):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    one_line_error(run_script("Cifar-100.py", "--data-dir", pickle_dir, "--out", tmp_path,
                              "--strategy", "multiworker", *flags, *TINY), pattern)
    assert not (tmp_path / "checkpoint").exists()


def test_unknown_flag(run_script):
    one_line_error(run_script("Cifar-100.py", "--epoch", "3"), "unrecognized arguments")


def test_missing_data_path(run_script, tmp_path):
    one_line_error(run_script("Cifar-100.py", "--data-dir", tmp_path / "nope", "--out", tmp_path / "o"),
                   "does not exist")


def test_shots_larger_than_smallest_class(run_script, pickle_dir, tmp_path):
    one_line_error(run_script("Cifar-100.py", "--data-dir", pickle_dir, "--out", tmp_path, "--shots", "21"),
                   r"--shots 21 is more than the smallest class has \(20")


def test_unwritable_out(run_script, pickle_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    one_line_error(run_script("Cifar-100.py", "--data-dir", pickle_dir, "--out", tmp_path / "file" / "sub"),
                   "cannot write to output folder")


@pytest.fixture
def model_dir(tmp_path):
    artifacts.save(tmp_path / "m", model.build_siamese(), {"test": {}})
    return tmp_path / "m"


def test_missing_model(run_script, tmp_path, pickle_dir):
    one_line_error(run_script("Test_Cifar-100.py", "--data-dir", pickle_dir, "--model-dir", tmp_path),
                   r"run `python Cifar-100.py` first")


def test_json_that_is_not_json(run_script, model_dir, pickle_dir):
    (model_dir / "siamese.json").write_text("{ not json")
    one_line_error(run_script("Test_Cifar-100.py", "--data-dir", pickle_dir, "--model-dir", model_dir),
                   "not valid JSON")


@pytest.mark.parametrize("text", ['{"class_name": "Nothing", "config": {}}', '[1, 2, 3]'])
def test_json_that_is_not_a_keras_model(run_script, model_dir, pickle_dir, text):
    (model_dir / "siamese.json").write_text(text)
    one_line_error(run_script("Test_Cifar-100.py", "--data-dir", pickle_dir, "--model-dir", model_dir),
                   "not a Keras model|not this project's")


def test_weights_that_do_not_match(run_script, model_dir, pickle_dir, tmp_path):
    other = model.build_siamese(model.build_branch(width=0.125, embed_dim=16))
    other.save_weights(model_dir / "siamese.weights.h5")
    one_line_error(run_script("Test_Cifar-100.py", "--data-dir", pickle_dir, "--model-dir", model_dir),
                   "does not match")


def test_unreadable_image(run_script, model_dir, pickle_dir, tmp_path):
    (tmp_path / "cat.jpg").write_bytes(b"\x00" * 100)
    one_line_error(run_script("Test_Cifar-100.py", "--data-dir", pickle_dir, "--model-dir", model_dir,
                              "--image", tmp_path / "cat.jpg"), "cannot read image")


def test_failed_run_leaves_previous_model_untouched(run_script, model_dir, pickle_dir):
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    one_line_error(run_script("Cifar-100.py", "--data-dir", pickle_dir, "--out", model_dir, "--shots", "99"),
                   "--shots 99")
    # A NaN loss (absurd learning rate) stops training and saves nothing.
    one_line_error(run_script("Cifar-100.py", "--data-dir", pickle_dir, "--out", model_dir, *TINY,
                              "--epochs", "3", "--lr", "1e30"), "NaN")
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before


def test_weights_file_that_is_not_h5(run_script, model_dir, pickle_dir):
    blob = (model_dir / "siamese.weights.h5").read_bytes()
    (model_dir / "siamese.weights.h5").write_bytes(blob[: len(blob) // 3])   # a truncated copy
    one_line_error(run_script("Test_Cifar-100.py", "--data-dir", pickle_dir, "--model-dir", model_dir),
                   "does not match.*retrain")


@pytest.mark.parametrize("flags, pattern", [
    (["--rotate-classes", "--hard-negatives", "0.5"], "--rotate-classes and --hard-negatives cannot be combined"),
    (["--id-weight", "-1"], "--id-weight: must be a number >= 0"),
    (["--distort", "2"], "--distort: must be a number from 0 to 1"),
    (["--head", "loose"], "--head: invalid choice"),
    (["--id-weight", "0"], r"--head tied \(the default\) trains only with the identification softmax .*; "
                           "keep --id-weight above 0 or pass --head free"),
    (["--recipe", "fonts"], "--recipe: invalid choice: 'fonts'"),
    (["--image-size", "7"], "--image-size: must be a whole number of pixels from 8 to 512, got '7'"),
    (["--image-size", "513"], "--image-size: must be a whole number of pixels from 8 to 512"),
    (["--image-size", "48.5"], "--image-size: must be a whole number of pixels from 8 to 512"),
    (["--image-size", "big"], "--image-size: must be a whole number of pixels from 8 to 512"),
])
def test_training_recipe_flags(run_script, pickle_dir, tmp_path, flags, pattern):
    one_line_error(run_script("Cifar-100.py", "--data-dir", pickle_dir, "--out", tmp_path / "o", *flags, *TINY),
                   pattern)
    assert not (tmp_path / "o" / "siamese.json").exists()


@pytest.mark.parametrize("script, flags", [
    ("Cifar-100.py", ["--image-size", "7"]), ("Cifar-100.py", ["--optimizer", "sgd", "--epochs", "0"]),
    ("Test_Cifar-100.py", ["--count", "0"]),
])
def test_bad_flag_is_reported_before_tensorflow_loads(tmp_path, script, flags):
    # As a user runs it, in a fresh process: the one line comes at once, not after TensorFlow's
    # seconds of start-up and its log lines.
    from conftest import ROOT, run
    probe = tmp_path / "probe.py"
    probe.write_text("import runpy, sys\n"
                     f"sys.path.insert(0, {str(ROOT)!r})\n"   # as `python SCRIPT` puts the script's folder first
                     f"sys.argv = [{script!r}, *{flags!r}]\n"
                     f"try:\n    runpy.run_path({str(ROOT / script)!r}, run_name='__main__')\n"
                     "except SystemExit as e:\n    code = e.code\n"
                     "print(code, 'tensorflow' in sys.modules, 'keras' in sys.modules)\n")
    result = run(probe)
    assert result.stdout.split() == ["2", "False", "False"], (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
