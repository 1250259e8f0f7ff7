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
              "--test-shifts"]
TINY = ["--batch-size", "20", "--per-class", "2", "--shots", "2", "--no-plots"]


def flipped(flags):
    """The flags that set each recipe part to the other value than `flags` gives it."""
    plan = recipe.from_args(parse_args(flags))
    other = []
    other += ["--optimizer", "adam" if plan.optimizer == "sgd" else "sgd"]
    other += ["--label-smoothing", "0" if plan.label_smoothing else "0.1"]
    other += ["--ema", "0" if plan.ema else "0.9"]
    other += ["--no-xla"] if plan.xla else ["--xla"]
    other += ["--no-alternate-flips"] if plan.alternate_flips else ["--alternate-flips"]
    other += ["--no-test-shifts"] if plan.test_shifts else ["--test-shifts"]
    return other


def test_every_part_of_the_recipe_has_a_flag_and_the_peer_gets_it():
    default = recipe.from_args(parse_args([]))
    changed = recipe.from_args(parse_args(flipped([])))
    # A new field of Recipe that no flag sets would stay equal here.
    assert all(getattr(default, f.name) != getattr(changed, f.name) for f in dataclasses.fields(recipe.Recipe))
    for flags in ([], flipped([]), ["--recipe", "characters"]):
        peer = bench.peer_recipe(flags)
        ours = parse_args(flags)
        assert peer["plan"] == recipe.from_args(ours) and peer["flip"] == ours.flip
    # The photos' six test-time views are measured to pay (docs/benchmarks.md); characters' are not.
    assert default.test_shifts and not recipe.from_args(parse_args(["--recipe", "characters"])).test_shifts


@pytest.fixture
def calls(monkeypatch):
    """What ours' and the peer's training were given: the recipe each compiled with, the label
    smoothing of each softmax loss, the pipeline's alternating flips, the test-time shifts."""
    seen = {"compile": [], "smoothing": [], "alternate": [], "shifts": []}
    compile_, loss, pipe, embed = recipe.Recipe.compile, recipe.identity_loss, pipeline.pipeline, evaluate.embed

    def record_compile(self, m, **kw):
        seen["compile"].append((type(m).__name__, self))
        return compile_(self, m, **kw)

    def record_loss(labels, logits, smoothing=0.0):
        seen["smoothing"].append(smoothing)
        return loss(labels, logits, smoothing)

    def record_pipeline(*a, alternate=False, **kw):
        seen["alternate"].append(alternate)
        return pipe(*a, alternate=alternate, **kw)

    def record_embed(branch, images, batch_size=200, flip=False, shifts=False):
        seen["shifts"].append((flip, shifts))
        return embed(branch, images, batch_size, flip, shifts)

    monkeypatch.setattr(recipe.Recipe, "compile", record_compile)
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
    assert set(ours["smoothing"]) == set(peer["smoothing"]) == {plan.label_smoothing}
    assert ours["alternate"] == peer["alternate"] == [plan.alternate_flips]
    assert set(ours["shifts"]) == set(peer["shifts"]) == {(args.flip, plan.test_shifts)}


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
