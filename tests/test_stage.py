"""The metric stage (issue 33): its episodic loss, when it switches on, resuming across it, its flags."""
import os
import pickle
import signal
import subprocess
import sys
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT

from siamese import artifacts, checkpoint, model, recipe, stage
from siamese.schedule import Clock, RateSchedule

TINY = ["--batch-size", "20", "--per-class", "2", "--shots", "2", "--no-plots"]


def reference_loss(emb, labels, kernel, bias):
    """The episode written out by hand: per class the first half of its images (at least one)
    in batch order are support, the rest queries; logits = head on |query - prototype|."""
    classes = list(dict.fromkeys(labels.tolist()))   # in order of first appearance
    protos, queries = [], []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        k = max(1, len(idx) // 2)
        protos.append(emb[idx[:k]].mean(0))
        queries += [(i, classes.index(c)) for i in idx[k:]]
    protos = np.array(protos)
    losses = []
    for i, target in queries:
        logits = stage.SCALE * (np.abs(emb[i] - protos) @ kernel + bias)
        logits -= logits.max()
        losses.append(np.log(np.exp(logits).sum()) - logits[target])
    return np.mean(losses)


class Head:
    def __init__(self, kernel, bias):
        self.kernel, self.bias = tf.constant(kernel[:, None], tf.float32), tf.constant([bias], tf.float32)


def test_episodic_loss_of_a_hand_made_batch():
    # Two classes of two images, queries closer to their own class: one number worked out by hand.
    emb = np.array([[0, 0], [1, 0], [4, 0], [4, 1]], np.float32)
    labels = np.array([7, 7, 3, 3])
    head = Head(np.array([-1.0, -1.0]) / stage.SCALE ** 0.5, 2.0 / stage.SCALE ** 0.5)
    # query 1: L1 to the prototypes (image 0, image 2) 1 and 3; query 3: 5 and 1
    # logits = SCALE * (2 - L1): a margin of 2 and of 4 between own and other class
    s = stage.SCALE
    expected = 0.5 * (np.log(1 + np.exp(-2.0 * s ** 0.5)) + np.log(1 + np.exp(-4.0 * s ** 0.5)))
    got = float(stage.episodic_loss(emb, labels, head))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_episodic_loss_matches_the_episode_for_any_order_and_class_size(seed):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat([5, 2, 9], [4, 3, 1]))   # 2+2, 1+2 and a support-only class
    emb = rng.normal(size=(len(labels), 6)).astype(np.float32)
    kernel, bias = -rng.random(6), rng.normal()
    got = float(stage.episodic_loss(emb, labels, Head(kernel, bias)))
    np.testing.assert_allclose(got, reference_loss(emb, labels, kernel, bias), rtol=1e-5)


def test_cosine_scoring_is_meta_baselines_scaled_cosine_to_the_prototypes():
    rng = np.random.default_rng(3)
    labels = rng.permutation(np.repeat([4, 1, 6], [2, 3, 4]))
    emb = rng.normal(size=(len(labels), 5)).astype(np.float32)
    classes = list(dict.fromkeys(labels.tolist()))
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
    protos, losses = [], []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        protos.append(emb[idx[:max(1, len(idx) // 2)]].mean(0))
    for c in classes:
        idx = np.flatnonzero(labels == c)
        for i in idx[max(1, len(idx) // 2):]:
            logits = stage.COSINE_SCALE * unit(np.array(protos)) @ unit(emb[i])
            losses.append(np.log(np.exp(logits).sum()) - logits[classes.index(c)])
    head = Head(-np.ones(5), 0.0)   # not read by the cosine
    got = float(stage.episodic_loss(emb, labels, head, score="cosine"))
    np.testing.assert_allclose(got, np.mean(losses), rtol=1e-5)
    assert abs(got - float(stage.episodic_loss(emb, labels, head))) > 1e-3


def test_the_stage_switches_at_its_fraction_of_steps_and_of_the_budget():
    clock = Clock(None)
    schedule = RateSchedule(1.0, 100, clock, warmup_steps=1)
    callback = stage.MetricStage(schedule, 0.25, lr_scale=0.5)
    iterations, rate = tf.Variable(0, dtype=tf.int64), tf.Variable(1.0)
    trainer = SimpleNamespace(stage=stage.switch(),
                              optimizer=SimpleNamespace(iterations=iterations, learning_rate=rate))
    callback.set_model(trainer)
    seen = []
    for step in range(100):
        iterations.assign(step)
        rate.assign(1.0)
        callback.on_train_batch_begin(0)
        seen.append((float(trainer.stage.numpy()), float(rate.numpy())))
    assert seen[74] == (0.0, 1.0) and seen[75] == (1.0, 0.5) and seen[99] == (1.0, 0.5)
    assert sum(on for on, _ in seen) == 25
    # With --max-minutes, time counts as in the rate schedule: 80% of the budget spent is in the stage.
    clock = Clock(100.0)
    clock.seconds = 80.0
    callback = stage.MetricStage(RateSchedule(1.0, 1000, clock), 0.25)
    callback.set_model(trainer)
    iterations.assign(10)
    callback.on_train_batch_begin(0)
    assert float(trainer.stage.numpy()) == 1.0
    assert not stage.in_stage(0.99, 0.0)


def test_the_stage_trains_the_episodes_and_saves_no_layer(tmp_path):
    """With the switch on, the episodes' loss joins the pair loss and the identification softmax;
    the switch is in no weights file and the saved model is unchanged."""
    keras.utils.set_random_seed(0)
    siamese = model.build_siamese(model.build_branch(width=0.25))
    trainer = model.PairTrainer(siamese, classes=4, id_weight=1.0, head="tied", episodes=True)
    trainer.compile(optimizer=keras.optimizers.Adam(0.0), jit_compile=True)   # as train.py compiles it
    x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)).astype(np.float32)
    y = np.repeat(np.arange(4), 2)
    trainer(x[:2])
    names = [w.path for w in trainer.weights]
    before = trainer.train_on_batch(x, y, return_dict=True)["loss"]   # rate 0: the same weights after
    trainer.stage.assign(1.0)
    during = trainer.train_on_batch(x, y, return_dict=True)["loss"]   # the compiled step reads the switch
    out = trainer(x, training=True)
    pairs = float(model.pair_loss(out["pairs"], y))
    episodes = float(stage.episodic_loss(out["embeddings"], y, siamese.get_layer("head")))
    np.testing.assert_allclose(during, before + episodes, rtol=1e-3)
    assert episodes > 1e-2 and pairs < before
    assert [w.path for w in trainer.weights] == names and not any("stage" in n for n in names)
    assert "stage" not in siamese.to_json()


@pytest.mark.parametrize("score", ["head", "cosine"])
def test_pair_loss_in_the_stage_only_leaves_the_softmax_alone_before_it(score):
    """--pair-loss stage: before the stage the loss is the identification softmax alone (the peer's),
    in it the pair loss and the episodes (scored as --stage-score says) join it."""
    keras.utils.set_random_seed(0)
    siamese = model.build_siamese(model.build_branch(width=0.25))
    trainer = model.PairTrainer(siamese, classes=4, id_weight=1.0, head="tied", episodes=True,
                                stage_score=score, pair_loss="stage")
    trainer.compile(optimizer=keras.optimizers.Adam(0.0))
    x = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3)).astype(np.float32)
    y = np.repeat(np.arange(4), 2)
    trainer(x[:2])
    before = trainer.train_on_batch(x, y, return_dict=True)["loss"]
    trainer.stage.assign(1.0)
    during = trainer.train_on_batch(x, y, return_dict=True)["loss"]
    out = trainer(x, training=True)
    softmax = float(recipe.identity_loss(y, out["classes"]))
    pairs = float(model.pair_loss(out["pairs"], y))
    episodes = float(stage.episodic_loss(out["embeddings"], y, siamese.get_layer("head"), score))
    np.testing.assert_allclose(before, softmax, rtol=1e-3)
    np.testing.assert_allclose(during, softmax + pairs + episodes, rtol=1e-3)


def test_pair_loss_in_the_stage_needs_a_stage(run_script):
    code, out, err = run_script("Cifar-100.py", "--pair-loss", "stage")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--metric-stage" in lines[0], err


def history(out):
    with open(out / artifacts.METRICS, "rb") as f:
        return pickle.load(f)["history"]


def train(pickle_dir, out, *extra, env=None):
    args = [sys.executable, "Cifar-100.py", "--data-dir", str(pickle_dir), "--out", str(out), "--epochs", "4",
            *TINY, *extra]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **(env or {})))


def test_kill_9_then_resume_across_the_stage_boundary_ends_as_an_uninterrupted_run(pickle_dir, tmp_path):
    # 4 epochs, the last 60% the stage: it begins inside epoch 2, after the kill at epoch 1's end.
    flags = ("--metric-stage", "0.6", "--stage-lr", "0.5")
    r = train(pickle_dir, tmp_path / "straight", *flags)
    assert r.returncode == 0, r.stderr
    r = train(pickle_dir, tmp_path / "none", "--metric-stage", "0")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "killed"
    r = train(pickle_dir, out, *flags, env={checkpoint.KILL_AT: "manifest@1"})
    assert r.returncode == -signal.SIGKILL, r.stderr
    r = subprocess.run([sys.executable, "Cifar-100.py", "--out", str(out), "--resume"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    straight, none, resumed = (history(tmp_path / n)["loss"] for n in ("straight", "none", "killed"))
    np.testing.assert_allclose(resumed, straight, rtol=1e-4)
    # The stage did change training: the same until it began, different after.
    np.testing.assert_allclose(straight[0], none[0], rtol=1e-5)
    assert all(abs(a - b) > 1e-3 for a, b in zip(straight[2:], none[2:]))
    a, b = artifacts.load_model(out).get_weights(), artifacts.load_model(tmp_path / "straight").get_weights()
    assert all(np.allclose(x, y, rtol=1e-3, atol=1e-5) for x, y in zip(a, b))


def test_a_checkpoint_from_before_the_stage_resumes_without_it(pickle_dir, tmp_path):
    """An interrupted run saved before the flags existed has none: it resumes stage-free, as it began."""
    import json
    out = tmp_path / "old"
    r = train(pickle_dir, out, "--metric-stage", "0", env={checkpoint.KILL_AT: "manifest@3"})
    assert r.returncode == -signal.SIGKILL, r.stderr
    config = out / "checkpoint" / checkpoint.CONFIG
    saved = json.loads(config.read_text())
    del saved["metric_stage"], saved["stage_lr"]
    config.write_text(json.dumps(saved))
    r = subprocess.run([sys.executable, "Cifar-100.py", "--out", str(out), "--resume"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    with open(out / artifacts.METRICS, "rb") as f:
        config = pickle.load(f)["config"]
    assert config["metric_stage"] == 0.0 and config["stage_lr"] == 1.0


@pytest.mark.parametrize("flag, value, pattern", [
    ("--metric-stage", "1.5", "--metric-stage.*from 0 to 1"), ("--metric-stage", "-0.1", "from 0 to 1"),
    ("--metric-stage", "nan", "from 0 to 1"), ("--stage-lr", "0", "--stage-lr.*must be a positive"),
    ("--stage-lr", "fast", "must be a positive"),
])
def test_bad_stage_flags_are_one_line(run_script, flag, value, pattern):
    import re
    code, out, err = run_script("Cifar-100.py", flag, value)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]


def test_recipes_choose_the_stage():
    import runpy
    parse = runpy.run_path(str(ROOT / "Cifar-100.py"))["parse_args"]
    # Off by default until a share wins on held-out classes (docs/benchmarks.md, "Metric stage").
    assert parse([]).metric_stage == 0.0 and parse(["--recipe", "characters"]).metric_stage == 0.0
    assert parse(["--metric-stage", "0.25"]).metric_stage == 0.25
