"""The recipes (photos, characters) behind Cifar-100.py's defaults, the embedding on a sphere,
and every training image as an exemplar by default."""
import pickle
import runpy

import numpy as np
from conftest import ROOT, run

from siamese import artifacts, model

parse_args = runpy.run_path(str(ROOT / "Cifar-100.py"))["parse_args"]


def test_photos_is_the_default_recipe():
    a = parse_args([])
    assert (a.recipe, a.embedding, a.flip, a.rotate_classes, a.distort, a.lr, a.per_class) == \
        ("photos", "sphere", True, False, 0.0, 2e-3, 2)
    assert (a.head, a.id_weight, a.shots) == ("tied", 1.0, None)   # None: every training image
    # Photos train airbench94's width, which is also what build_branch() builds with no arguments.
    assert a.width == model.WIDTH == 1.0 and model.build_branch().count_params() == \
        model.build_branch(width=1.0).count_params()


def test_each_recipe_has_its_own_width_and_epochs(tmp_path, pickle_dir):
    """Photos: width 1 for 10 epochs (about the time of 20 at width 0.5); characters: width 0.5
    for 20. A --width or --epochs given wins; --max-minutes alone sets no epoch cap."""
    from siamese import train
    assert train.EPOCHS == {"photos": 10, "characters": 20}
    assert parse_args(["--recipe", "characters"]).width == 0.5
    assert parse_args(["--recipe", "characters", "--width", "2"]).width == 2.0
    r = run("Cifar-100.py", "--data-dir", pickle_dir, "--out", tmp_path / "c", "--recipe", "characters",
            "--batch-size", "20", "--per-class", "4", "--no-plots", "--shots", "2", "--max-minutes", "0.05")
    assert r.returncode == 0, r.stderr
    config = pickle.loads((tmp_path / "c" / artifacts.METRICS).read_bytes())["config"]
    assert (config["width"], config["epochs"]) == (0.5, None)


def test_characters_recipe_replaces_the_flags_and_a_flag_given_wins():
    a = parse_args(["--recipe", "characters"])
    assert (a.embedding, a.flip, a.rotate_classes, a.distort, a.lr, a.per_class) == \
        ("free", False, True, 1.0, 4e-3, 8)
    a = parse_args(["--recipe", "characters", "--lr", "1e-3", "--per-class", "4", "--distort", "0",
                    "--embedding", "sphere"])
    assert (a.lr, a.per_class, a.distort, a.embedding, a.flip, a.rotate_classes) == \
        (1e-3, 4, 0.0, "sphere", False, True)
    a = parse_args(["--no-flip", "--rotate-classes", "--shots", "7"])
    assert (a.recipe, a.flip, a.rotate_classes, a.shots) == ("photos", False, True, 7)


def test_both_embeddings_train_and_save_plain_keras(tmp_path, pickle_dir):
    x = np.random.default_rng(0).integers(0, 256, size=(6, 32, 32, 3)).astype(np.float32)
    for embedding in ("sphere", "free"):
        out = tmp_path / embedding
        r = run("Cifar-100.py", "--data-dir", pickle_dir, "--out", out, "--embedding", embedding,
                "--epochs", "1", "--batch-size", "20", "--no-plots")
        assert r.returncode == 0, r.stderr
        assert ("UnitNormalization" in (out / "siamese.json").read_text()) == (embedding == "sphere")
        lengths = np.linalg.norm(artifacts.load_model(out).get_layer("branch")(x).numpy(), axis=1)
        if embedding == "sphere":
            np.testing.assert_allclose(lengths, np.sqrt(model.EMBED_DIM), rtol=1e-5)
        else:
            assert lengths.std() > 1e-3
        # The test classification scored the sphere's learned class directions (every training image
        # of each class, 20 here, as exemplars beside them); the free embedding learns none.
        how = ("by the learned class directions; by all training images as exemplars: top-1 " if embedding == "sphere"
               else "all training images per class as exemplars, 100 images)")
        assert f"(10-way, {how}" in r.stdout
        assert (out / "directions.npz").exists() == (embedding == "sphere")
        with open(out / "metrics.pkl", "rb") as f:
            m = pickle.load(f)
        assert m["shots"] is None and m["config"]["embedding"] == embedding and m["config"]["per_class"] == 2


def test_prediction_takes_the_learned_directions_by_default_and_every_training_image_on_request(trained, pickle_dir):
    out, _ = trained
    r = run("Test_Cifar-100.py", "--data-dir", pickle_dir, "--model-dir", out, "--no-plots")
    assert r.returncode == 0, r.stderr
    assert "32 test images, each against the learned directions of 10 classes" in r.stdout
    r = run("Test_Cifar-100.py", "--data-dir", pickle_dir, "--model-dir", out, "--no-plots",
            "--prototypes", "exemplars")
    assert "32 test images, each against 20 exemplar(s) of 10 classes" in r.stdout   # 20 per class
    r = run("Test_Cifar-100.py", "--data-dir", pickle_dir, "--model-dir", out, "--no-plots", "--shots", "3")
    assert "32 test images, each against 3 exemplar(s) of 10 classes" in r.stdout
