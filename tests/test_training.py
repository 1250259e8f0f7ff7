"""Training behaviour: reproducibility, interruption + resume, tf.distribute, held-out classes."""
import json
import math
import os
import pickle
import re
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from conftest import ROOT

from siamese import artifacts

TINY = ["--batch-size", "20", "--per-class", "2", "--shots", "2", "--no-plots"]


@pytest.mark.parametrize("given, expected", [(None, "1"), ("0", "0")])
def test_package_turns_onednn_on_unless_the_user_set_it(given, expected):
    """TensorFlow reads TF_ENABLE_ONEDNN_OPTS at import, so importing the package must set it
    first, and a user's own value must win."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if given is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = given
    code = "import os, sys, siamese; print(os.environ['TF_ENABLE_ONEDNN_OPTS'], 'tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [expected, "False"]


def metrics(out):
    with open(out / "metrics.pkl", "rb") as f:
        return pickle.load(f)


def test_same_seed_same_result(run_script, pickle_dir, tmp_path):
    for name in ("a", "b"):
        code, _, err = run_script("Cifar-100.py", "--data-dir", pickle_dir, "--out", tmp_path / name,
                                  "--epochs", "2", "--seed", "7", *TINY)
        assert code == 0, err
    a, b = (artifacts.load_model(tmp_path / n).get_weights() for n in "ab")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert metrics(tmp_path / "a")["history"] == metrics(tmp_path / "b")["history"]


def test_interrupt_then_resume_matches_an_uninterrupted_run(pickle_dir, tmp_path):
    args = [sys.executable, "Cifar-100.py", "--data-dir", str(pickle_dir), "--epochs", "12", *TINY]
    subprocess.run(args + ["--out", str(tmp_path / "straight")], cwd=ROOT, check=True, capture_output=True)

    out = tmp_path / "interrupted"
    p = subprocess.Popen(args + ["--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    state = out / "checkpoint" / "epoch-00003.json"   # written once epoch 3's checkpoint is whole
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if state.exists():
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert err.strip().splitlines()[-1].endswith(f"--out {out} --resume`")
    assert not (out / "siamese.json").exists()

    r = subprocess.run([sys.executable, "Cifar-100.py", "--out", str(out), "--resume"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not (out / "checkpoint").exists()
    resumed, straight = metrics(out), metrics(tmp_path / "straight")
    assert len(resumed["history"]["loss"]) == 12
    np.testing.assert_allclose(resumed["history"]["loss"], straight["history"]["loss"], rtol=1e-4)
    a, b = artifacts.load_model(out).get_weights(), artifacts.load_model(tmp_path / "straight").get_weights()
    assert all(np.allclose(x, y, rtol=1e-3, atol=1e-5) for x, y in zip(a, b))


def test_max_minutes_alone_has_no_epoch_cap(run_script, pickle_dir, tmp_path):
    """--max-minutes without --epochs trains until the clock stops it, not for a default 30
    epochs: one step per epoch here, so 30 epochs take a few seconds of the 20-second budget."""
    code, out, err = run_script("Cifar-100.py", "--data-dir", pickle_dir, "--out", tmp_path,
                                "--max-minutes", "0.33", "--batch-size", "200", "--per-class", "20",
                                "--shots", "2", "--no-plots")
    assert code == 0, err
    m = metrics(tmp_path)
    assert m["config"]["epochs"] is None
    assert "stopped after 0.33 minutes (--max-minutes)" in out
    assert m["train_seconds"] >= 19.8
    # The epoch line shows the budget, not the epoch count fit was given so that it never ends.
    assert "/1000000" not in out
    assert re.search(r"^Epoch 2 \(0\.\d of 0\.33 minutes\)$", out, re.M), out


@pytest.mark.parametrize("cap, line", [(None, "Epoch 3 (1.2 of 5 minutes)"), (30, "Epoch 3/30 (1.2 of 5 minutes)")])
def test_epoch_line_on_a_terminal_shows_the_budget(capsys, cap, line):
    """On a TTY fit runs with verbose=1 (a progress bar); the header line is the same as in logs."""
    from siamese.schedule import Clock, EpochLine
    progress = EpochLine(Clock(300, spent=72), cap)
    progress.set_params({"verbose": 1, "epochs": cap or 10**6, "steps": 5})
    progress.on_epoch_begin(2)
    assert capsys.readouterr().out == line + "\n"


def manifests(ckpt):
    """The checkpoint manifests in `ckpt`, oldest first (skipping one deleted while listing)."""
    found = []
    for path in sorted(ckpt.glob("epoch-*.json")):
        try:
            found.append(json.loads(path.read_text()))
        except (FileNotFoundError, ValueError):
            pass
    return found


def rates(logs, epoch):
    """The learning rates TensorBoard logged for `epoch` (0-based), from every event file."""
    import tensorflow as tf
    found = []
    for events in logs.glob("train/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            found += [float(tf.make_ndarray(v.tensor)) for v in event.summary.value
                      if v.tag == "epoch_learning_rate" and event.step == epoch]
    return found


def test_resumed_budget_keeps_its_minutes_and_its_place_in_the_schedule(pickle_dir, tmp_path):
    """A --max-minutes run stopped past half its budget and resumed with --resume alone stops at
    the budget it was given, not at a fresh one, and its rate goes on down the cosine instead of
    starting it again."""
    minutes, lr = 0.5, 3e-3
    budget = 60 * minutes
    out, logs = tmp_path / "out", tmp_path / "tb"
    p = subprocess.Popen([sys.executable, "Cifar-100.py", "--data-dir", str(pickle_dir), "--out", str(out),
                          "--max-minutes", str(minutes), "--lr", str(lr), "--tensorboard", str(logs), *TINY],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while p.poll() is None and time.time() < deadline:
        if any(m["seconds"] >= budget / 2 for m in manifests(out / "checkpoint")):
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    spent = manifests(out / "checkpoint")[-1]   # what --resume continues from
    assert budget / 2 <= spent["seconds"] < budget

    # A copy given a budget it has already spent (as if killed while evaluating) trains no more.
    shutil.copytree(out, tmp_path / "copy")
    r = subprocess.run([sys.executable, "Cifar-100.py", "--out", str(tmp_path / "copy"), "--resume",
                        "--max-minutes", "0.01"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "the run has trained its 0.01 minutes (--max-minutes) already; evaluating it" in r.stdout
    assert metrics(tmp_path / "copy")["history"] == {k: spent["history"][k] for k in ("loss", "accuracy")}
    assert "Epoch" not in r.stdout

    r = subprocess.run([sys.executable, "Cifar-100.py", "--out", str(out), "--resume"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"continuing from epoch {spent['epoch']}, {spent['seconds'] / 60:.1f} of {minutes:g} minutes trained" \
        in r.stdout
    m = metrics(out)
    # A fresh budget would train `budget` more seconds; the clock stops within a step of the old one.
    assert budget <= m["train_seconds"] < spent["seconds"] + budget
    assert m["train_steps"] > spent["steps"] and len(m["history"]["loss"]) > spent["epoch"]

    # The first resumed epoch's rate is at most the cosine at the time already spent (warm-up and
    # all): a schedule started again would be back near the peak.
    (rate,) = rates(logs, spent["epoch"])
    steps_per_epoch = 10   # 200 training images, batches of 20
    warmup = min(1.0, (spent["steps"] + steps_per_epoch) / 100)
    cosine = 0.5 * (1 + math.cos(math.pi * spent["seconds"] / budget))
    assert 0 < rate <= lr * warmup * (0.02 + 0.98 * cosine) * 1.0001, (rate, spent)


def test_resume_without_checkpoint_and_rerun_over_checkpoint(run_script, pickle_dir, tmp_path):
    code, _, err = run_script("Cifar-100.py", "--out", tmp_path, "--resume")
    assert code == 2 and "nothing to resume" in err
    (tmp_path / "checkpoint").mkdir()   # a run killed before it saved its flags: nothing to resume
    code, _, err = run_script("Cifar-100.py", "--out", tmp_path, "--resume")
    assert code == 2 and "nothing to resume" in err
    (tmp_path / "checkpoint" / "config.json").write_text('{"epochs": 3}')
    code, _, err = run_script("Cifar-100.py", "--data-dir", pickle_dir, "--out", tmp_path)
    assert code == 2 and "--resume" in err and len(err.strip().splitlines()) == 1


def test_a_checkpoint_of_the_old_backup_and_restore_format_is_refused(run_script, pickle_dir, tmp_path):
    """Before the verified checkpoints, checkpoint/ held Keras' BackupAndRestore files (and a
    CSVLogger history), which nothing reads now: --resume silently started again at epoch 0."""
    parse_args = runpy.run_path(str(ROOT / "Cifar-100.py"))["parse_args"]
    flags = vars(parse_args(["--data-dir", str(pickle_dir), "--out", str(tmp_path), "--epochs", "2", *TINY]))
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(flags))
    (ckpt / "training_metadata.json").write_text('{"epoch": 1, "batch": -1}')
    (ckpt / "latest.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    (ckpt / "history.csv").write_text("epoch,accuracy,loss\n0,0.5,0.7\n")
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    for extra in (["--resume"], ["--data-dir", pickle_dir, *TINY]):
        code, out, err = run_script("Cifar-100.py", "--out", tmp_path, *extra)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err
        assert lines[0] == (f"error: checkpoint {ckpt} was saved by an older version of this program (Keras' "
                            f"BackupAndRestore files, after epoch 1), which cannot resume it; delete {ckpt} to start over")
        assert "Epoch" not in out
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_mirrored_strategy_on_two_logical_cpus(pickle_dir, tmp_path):
    code = (
        "import runpy, sys, tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
        f"sys.argv = ['Cifar-100.py', '--data-dir', {str(pickle_dir)!r}, '--out', {str(tmp_path)!r},\n"
        "            '--strategy', 'mirrored', '--devices', '/cpu:0,/cpu:1', '--epochs', '2', '--batch-size', '20',\n"
        "            '--per-class', '2', '--shots', '2', '--no-plots']\n"
        "runpy.run_path('Cifar-100.py', run_name='__main__')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "mirrored: 2 replicas" in r.stdout, r.stdout
    m = metrics(tmp_path)
    assert m["config"]["strategy"] == "mirrored" and len(m["history"]["loss"]) == 2
    assert np.isfinite(m["history"]["loss"]).all()
    artifacts.load_model(tmp_path)



def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_multiworker_strategy_on_two_local_workers(pickle_dir, tmp_path):
    """Two worker processes on loopback ports sharing one --out, as on a shared file system:
    only the chief (worker 0) writes the model there."""
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    out = tmp_path / "out"
    workers = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        workers.append(subprocess.Popen(
            [sys.executable, "Cifar-100.py", "--data-dir", str(pickle_dir), "--out", str(out),
             "--strategy", "multiworker", "--epochs", "2", *TINY],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deadline = time.time() + 180
    try:   # a hang (one worker waiting for the other forever) fails the test instead of blocking CI
        logs = [w.communicate(timeout=max(1, deadline - time.time())) for w in workers]
    finally:
        for w in workers:
            w.kill()
    for w, (stdout, stderr) in zip(workers, logs):
        assert w.returncode == 0, stderr
        assert "multiworker: 2 replicas, 10 images each per step" in stdout, stdout
    assert "saved siamese.json" in logs[0][0] and "saved" not in logs[1][0], logs[1][0]
    assert sorted(p.name for p in out.iterdir()) == ["confidence.json", "directions.npz", "metrics.pkl", "siamese.json",
                                                     "siamese.keras", "siamese.weights.h5", "threshold.json"]
    m = metrics(out)
    assert m["config"]["strategy"] == "multiworker" and len(m["history"]["loss"]) == 2
    assert np.isfinite(m["history"]["loss"]).all()
    artifacts.load_model(out)


def test_tensorboard_logs_loss_accuracy_and_rate_per_epoch(run_script, pickle_dir, tmp_path):
    import tensorflow as tf
    logs = tmp_path / "tb"
    code, _, err = run_script("Cifar-100.py", "--data-dir", pickle_dir, "--out", tmp_path / "out",
                              "--epochs", "2", "--tensorboard", logs, *TINY)
    assert code == 0, err
    events = list(logs.glob("train/events.out.tfevents.*"))
    assert events, list(logs.rglob("*"))
    seen = {}
    for event in tf.compat.v1.train.summary_iterator(str(events[0])):
        for v in event.summary.value:
            seen.setdefault(v.tag, []).append(float(tf.make_ndarray(v.tensor)))
    for tag in ("epoch_loss", "epoch_accuracy", "epoch_learning_rate"):
        assert len(seen.get(tag, [])) == 2, seen.keys()
    np.testing.assert_allclose(seen["epoch_loss"], metrics(tmp_path / "out")["history"]["loss"], rtol=1e-5)
    assert 0 < seen["epoch_learning_rate"][1] <= 2e-3


def test_tensorboard_dir_that_cannot_be_written(run_script, pickle_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    code, _, err = run_script("Cifar-100.py", "--data-dir", pickle_dir, "--out", tmp_path / "out",
                              "--tensorboard", tmp_path / "file" / "tb", *TINY)
    assert code == 2 and "pass a writable --tensorboard DIR" in err


def test_training_warns_nothing_but_what_pytest_ini_filters(run_script, pickle_dir, tmp_path, request):
    """The suite's output should show failures, not noise: a training run (in this process, as
    most tests run it) may only raise the dependencies' warnings that pytest.ini names."""
    ignored = [line.split(":")[1] for line in request.config.getini("filterwarnings")
               if line.startswith("ignore:")]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        code, _, err = run_script("Cifar-100.py", "--data-dir", pickle_dir, "--out", tmp_path, "--epochs", "1", *TINY)
    assert code == 0, err
    left = {f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in seen
            if not any(str(w.message).startswith(message) for message in ignored)}
    assert not left, left
