"""The training recipe (siamese.recipe): every part reachable from a flag, the softmax peer given
exactly ours, and a run with every part on resumes after kill -9 where an uninterrupted one ends."""
import dataclasses
import os
import pickle
import runpy
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from siamese import artifacts, checkpoint, data, evaluate, model, pipeline, recipe, train

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench  # noqa: E402
import softmax_peer  # noqa: E402

parse_args = runpy.run_path(str(ROOT / "Cifar-100.py"))["parse_args"]
# Every part on, whatever its default (which ones are on by default is the recipes' business).
EVERY_PART = ["--optimizer", "sgd", "--label-smoothing", "0.1", "--ema", "0.9", "--alternate-flips",
              "--test-shifts", "--identity-init", "--bias-rate", "8", "--progressive", "0.6"]
TINY = ["--batch-size", "20", "--per-class", "2", "--shots", "2", "--no-plots"]


def flipped(flags):
    """The flags that set each recipe part to the other value than `flags` gives it."""
    plan = recipe.from_args(parse_args(flags))
    other = []
    other += ["--optimizer", "adam" if plan.optimizer == "sgd" else "sgd"]
    other += ["--label-smoothing", "0" if plan.label_smoothing else "0.1"]
    other += ["--weight-decay", "0" if plan.weight_decay else "0.05"]
    other += ["--ema", "0" if plan.ema else "0.9"]
    other += ["--no-xla"] if plan.xla else ["--xla"]
    other += ["--no-alternate-flips"] if plan.alternate_flips else ["--alternate-flips"]
    other += ["--no-test-shifts"] if plan.test_shifts else ["--test-shifts"]
    other += ["--no-identity-init"] if plan.identity_init else ["--identity-init"]
    other += ["--bias-rate", "1" if plan.bias_rate != 1 else "8"]
    other += ["--progressive", "0" if plan.progressive else "0.25"]
    return other


def test_every_part_of_the_recipe_has_a_flag_and_the_peer_gets_it():
    default = recipe.from_args(parse_args([]))
    changed = recipe.from_args(parse_args(flipped([])))
    # A new field of Recipe that no flag sets would stay equal here.
    assert all(getattr(default, f.name) != getattr(changed, f.name) for f in dataclasses.fields(recipe.Recipe))
    for flags in ([], flipped([]), ["--recipe", "characters"], ["--depth", "3"]):
        peer = bench.peer_recipe(flags)
        ours = parse_args(flags)
        assert peer["plan"] == recipe.from_args(ours) and peer["flip"] == ours.flip and peer["depth"] == ours.depth
    # The photos' six test-time views and identity init are measured to pay (docs/benchmarks.md); characters' are not.
    characters = recipe.from_args(parse_args(["--recipe", "characters"]))
    assert default.test_shifts and not characters.test_shifts
    assert default.identity_init and not characters.identity_init   # measured on photos only


@pytest.fixture
def calls(monkeypatch):
    """What ours' and the peer's training were given: the recipe each compiled with, the label
    smoothing of each softmax loss, the pipeline's alternating flips and smaller first images, the
    test-time shifts."""
    seen = {"compile": [], "smoothing": [], "alternate": [], "shifts": [], "init": [], "small": []}
    compile_, loss, pipe, embed = recipe.Recipe.compile, recipe.identity_loss, pipeline.pipeline, evaluate.embed
    init = recipe.Recipe.init_

    def record_init(self, branch):
        seen["init"].append(self)
        return init(self, branch)

    def record_compile(self, m, **kw):
        seen["compile"].append((type(m).__name__, self))
        return compile_(self, m, **kw)

    def record_loss(labels, logits, smoothing=0.0):
        seen["smoothing"].append(smoothing)
        return loss(labels, logits, smoothing)

    def record_pipeline(*a, alternate=False, small=None, **kw):
        seen["alternate"].append(alternate)
        seen["small"].append(small and small.fraction)
        return pipe(*a, alternate=alternate, small=small, **kw)

    def record_embed(branch, images, batch_size=200, flip=False, shifts=False):
        seen["shifts"].append((flip, shifts))
        return embed(branch, images, batch_size, flip, shifts)

    monkeypatch.setattr(recipe.Recipe, "compile", record_compile)
    monkeypatch.setattr(recipe.Recipe, "init_", record_init)
    monkeypatch.setattr(recipe, "identity_loss", record_loss)
    monkeypatch.setattr(model, "identity_loss", record_loss)
    for module in (train, softmax_peer):
        monkeypatch.setattr(module, "pipeline", record_pipeline)
    monkeypatch.setattr(evaluate, "embed", record_embed)
    return seen


@pytest.mark.parametrize("flags", [[], EVERY_PART], ids=["defaults", "every-part"])
def test_ours_and_the_peer_train_and_score_with_one_recipe(pickle_dir, tmp_path, calls, flags):
    args = parse_args(["--data-dir", str(pickle_dir), "--out", str(tmp_path), "--epochs", "1", *TINY, *flags])
    train.main(args)
    ours = {k: list(v) for k, v in calls.items()}
    for v in calls.values():
        v.clear()
    softmax_peer.run(data.load(str(pickle_dir)), 0, 2, epochs=1, batch_size=20, **bench.peer_recipe(flags))
    peer = calls

    plan = recipe.from_args(args)
    assert [r for name, r in ours["compile"] if name == "PairTrainer"] == [plan]
    assert [r for name, r in peer["compile"]] == [plan]
    assert ours["init"] == peer["init"] == [plan]
    assert set(ours["smoothing"]) == set(peer["smoothing"]) == {plan.label_smoothing}
    assert ours["alternate"] == peer["alternate"] == [plan.alternate_flips]
    assert ours["small"] == peer["small"] == [plan.progressive or None]
    assert set(ours["shifts"]) == set(peer["shifts"]) == {(args.flip, plan.test_shifts)}


def test_identity_init_passes_each_input_channel_through():
    branch = model.build_branch(width=0.25)
    recipe.identity_init(branch)
    convs = [l for l in branch.layers if type(l).__name__ == "Conv2D" and l.trainable]
    assert len(convs) == 6
    rng = np.random.default_rng(0)
    for conv in convs:
        c_in, c_out = conv.kernel.shape[2], conv.kernel.shape[3]
        x = rng.normal(size=(2, 6, 6, c_in)).astype("float32")
        y = np.asarray(conv(x))
        n = min(c_in, c_out)
        np.testing.assert_allclose(y[..., :n], x[..., :n], atol=1e-6)
        if c_out > c_in:
            assert np.abs(np.asarray(conv.kernel)[..., n:]).min() > 0   # the other filters stay random
    assert model.build_branch(width=0.25).get_layer("whiten") is not None   # building alone: no identity
    fresh = [l for l in model.build_branch(width=0.25).layers if type(l).__name__ == "Conv2D" and l.trainable]
    assert not np.allclose(np.asarray(fresh[1].kernel)[1, 1], np.eye(fresh[1].kernel.shape[2]))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_bias_rate_steps_batchnorm_biases_only_that_much_further(optimizer):
    import keras

    def one_step(rate):
        keras.utils.set_random_seed(0)
        net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                                keras.layers.BatchNormalization(scale=False), keras.layers.Dense(1)])
        before = [np.array(v) for v in net.trainable_variables]
        opt = recipe.Recipe(optimizer=optimizer, lr=0.01, bias_rate=rate).optimizer_()
        x = np.random.default_rng(1).normal(size=(8, 4)).astype("float32")
        with __import__("tensorflow").GradientTape() as tape:
            loss = keras.ops.mean(net(x, training=True) ** 2)
        opt.apply(tape.gradient(loss, net.trainable_variables), net.trainable_variables)
        return [(v.name, np.array(v) - b) for v, b in zip(net.trainable_variables, before)]

    plain, fast = one_step(1.0), one_step(8.0)
    assert [name for name, _ in plain].count("beta") == 1
    for (name, step), (_, faster) in zip(plain, fast):
        assert np.abs(step).sum() > 0
        np.testing.assert_allclose(faster, (8 if name == "beta" else 1) * step, rtol=1e-4, atol=1e-9)


def test_every_part_on_resumes_after_kill_9_where_an_uninterrupted_run_ends(pickle_dir, tmp_path):
    """The weight average and the optimizer's state are in the checkpoint: a run killed while
    writing epoch 2's manifest and resumed ends with the uninterrupted run's weights."""
    def run(out, *extra, env=None):
        cmd = [sys.executable, "Cifar-100.py", "--out", str(out), *extra]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, **(env or {})))
    flags = ["--data-dir", str(pickle_dir), "--epochs", "4", *TINY, *EVERY_PART]
    assert run(tmp_path / "straight", *flags).returncode == 0
    out = tmp_path / "killed"
    r = run(out, *flags, env={checkpoint.KILL_AT: "manifest@2"})
    assert r.returncode == -signal.SIGKILL, r.stderr
    r = run(out, "--resume")
    assert r.returncode == 0, r.stderr
    with open(out / artifacts.METRICS, "rb") as f, open(tmp_path / "straight" / artifacts.METRICS, "rb") as g:
        resumed, straight = pickle.load(f), pickle.load(g)
    np.testing.assert_allclose(resumed["history"]["loss"], straight["history"]["loss"], rtol=1e-4)
    a = artifacts.load_model(out).get_weights()
    b = artifacts.load_model(tmp_path / "straight").get_weights()
    assert all(np.allclose(x, y, rtol=1e-3, atol=1e-5) for x, y in zip(a, b))
    assert resumed["config"]["ema"] == 0.9 and resumed["test_time_shifts"] is True
    assert resumed["config"]["progressive"] == 0.6   # the switch falls after the kill: the resumed run makes it


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_weight_decay_shrinks_each_weight_by_its_share_of_the_rate(optimizer):
    import keras
    w = keras.Variable(np.ones(3, "float32"), name="kernel")
    opt = recipe.Recipe(optimizer=optimizer, lr=0.1, weight_decay=0.5).optimizer_()
    opt.apply_gradients([(np.zeros(3, "float32"), w)])
    np.testing.assert_allclose(np.asarray(w), 1 - 0.1 * 0.5, rtol=1e-6)   # no gradient: the decay alone
    assert recipe.Recipe(optimizer="adam", weight_decay=0.0).optimizer_().weight_decay is None
