"""Faults of the machine, not of the user: kill -9 at any moment, two runs on one --out, a full
disk, the umask. Nothing here needs root or a mount: kills come from a test-only hook or from the
test itself, a full disk from an os.write that fails as the kernel's does."""
import errno
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT

from siamese import artifacts, checkpoint, model

TINY = ["--batch-size", "20", "--per-class", "2", "--shots", "2", "--no-plots"]
EPOCHS = 4
LOCK = ".train.lock"


def history(out):
    with open(out / artifacts.METRICS, "rb") as f:
        return pickle.load(f)["history"]


def train(pickle_dir, out, *extra, env=None, timeout=300):
    args = [sys.executable, "Cifar-100.py", "--data-dir", str(pickle_dir), "--out", str(out),
            "--epochs", str(EPOCHS), *TINY, *extra]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def resume(out, env=None, timeout=300):
    return subprocess.run([sys.executable, "Cifar-100.py", "--out", str(out), "--resume"], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ, **(env or {})))


def one_line_error(code, err, pattern):
    import re
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]


def files(folder):
    """Every file under folder with its bytes (lock files excluded: they come and go)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK}


@pytest.fixture(scope="module")
def straight(tmp_path_factory, pickle_dir):
    """An uninterrupted run: what every interrupted one must reach."""
    out = tmp_path_factory.mktemp("straight")
    r = train(pickle_dir, out)
    assert r.returncode == 0, r.stderr
    return history(out)


# --- kill -9 -----------------------------------------------------------------------------------

def test_kills_inside_checkpoint_writes_then_resume_matches_an_uninterrupted_run(run_script, pickle_dir, tmp_path,
                                                                                 straight):
    """SIGKILL halfway through epoch 1's weights file, between epoch 2's weights and its manifest,
    and halfway through epoch 3's manifest: each resume continues from the last whole epoch."""
    out = tmp_path / "out"
    ckpt = out / "checkpoint"
    # (where to die, the whole checkpoints left, a half-written file left): while epoch N is
    # written, only N-1 is kept, so a full disk never has to hold three.
    for kill_at, whole, torn in [("weights-half@1", [], True), ("weights@2", [1], False),
                                 ("manifest-half@3", [2], True)]:
        env = {checkpoint.KILL_AT: kill_at}
        r = train(pickle_dir, out, env=env) if kill_at.endswith("@1") else resume(out, env)
        assert r.returncode == -signal.SIGKILL, r.stderr
        assert sorted(int(p.name[6:11]) for p in ckpt.glob("epoch-*.json")) == whole
        assert any(p.name.startswith(artifacts.TEMP_PREFIX) for p in ckpt.iterdir()) == torn
    code, _, err = run_script("Cifar-100.py", "--out", out, "--resume")
    assert code == 0, err
    assert not (out / "checkpoint").exists() and not list(out.glob(artifacts.TEMP_PREFIX + "*"))
    np.testing.assert_allclose(history(out)["loss"], straight["loss"], rtol=1e-4)


def test_kills_at_random_moments(run_script, pickle_dir, tmp_path, straight):
    """kill -9 from outside at random moments once training has begun (inside an epoch, a
    checkpoint write, the evaluation or the save), twice; the run still ends as an uninterrupted
    one. The real check behind this (20 cycles) is in the README."""
    out = tmp_path / "out"
    rng = random.Random(18)
    saved = lambda: set((out / "checkpoint").glob("epoch-*.json"))
    for cycle in range(2):
        args = (["--out", str(out), "--resume"] if cycle else
                ["--data-dir", str(pickle_dir), "--out", str(out), "--epochs", str(EPOCHS), *TINY])
        before = saved()
        p = subprocess.Popen([sys.executable, "Cifar-100.py", *args], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while p.poll() is None and saved() <= before and time.time() < deadline:   # an epoch is done
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 1.0))
        p.kill()
        _, err = p.communicate(timeout=60)
        assert p.returncode in (0, -signal.SIGKILL), err
        if p.returncode == 0:
            break
    if (out / "checkpoint" / checkpoint.CONFIG).exists():
        code, _, err = run_script("Cifar-100.py", "--out", out, "--resume")
        assert code == 0, err
    np.testing.assert_allclose(history(out)["loss"], straight["loss"], rtol=1e-4)


def test_damaged_checkpoint_falls_back_then_refuses(run_script, pickle_dir, tmp_path):
    out = tmp_path / "out"
    r = train(pickle_dir, out, env={checkpoint.KILL_AT: "manifest@3"})   # checkpoints 2 and 3 kept
    assert r.returncode == -signal.SIGKILL, r.stderr
    ckpt = out / "checkpoint"
    newest = ckpt / "epoch-00003.weights.h5"
    blob = bytearray(newest.read_bytes())
    blob[len(blob) // 2] ^= 0xFF   # one flipped byte, as a disk fault would leave
    newest.write_bytes(blob)

    older = (ckpt / "epoch-00002.json").read_bytes()
    (ckpt / "epoch-00002.json").write_text("{")   # and the older one damaged too: nothing to fall back to
    code, _, err = run_script("Cifar-100.py", "--out", out, "--resume")
    one_line_error(code, err, rf"checkpoint {ckpt} is damaged \(epoch-00003.weights.h5 does not match its "
                              rf"sha256\); delete {ckpt} to start over")
    assert newest.exists()   # nothing deleted on the way out

    (ckpt / "epoch-00002.json").write_bytes(older)   # epoch 2 whole again: the fallback
    code, out_text, err = run_script("Cifar-100.py", "--out", out, "--resume")
    assert code == 0, err
    assert "checkpoint of epoch 3 is damaged (epoch-00003.weights.h5 does not match its sha256); " \
           "resuming from epoch 2" in out_text
    assert len(history(out)["loss"]) == EPOCHS


# --- one run per --out -------------------------------------------------------------------------

HOLD = ("import sys; from siamese.lock import RunLock\n"
        "with RunLock(sys.argv[1]):\n"
        "    print('locked', flush=True); sys.stdin.read()\n")


def test_a_second_run_on_a_busy_out_refuses_and_touches_nothing(run_script, pickle_dir, tmp_path):
    out = tmp_path / "out"
    artifacts.save(out, model.build_siamese(), {"test": {}})
    (out / "checkpoint").mkdir()
    checkpoint.write_config(out / "checkpoint", {"epochs": 1})   # (made by hand) there is something to resume
    before = files(out)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        for flags in (["--data-dir", pickle_dir, *TINY], ["--resume"]):
            code, _, err = run_script("Cifar-100.py", "--out", out, *flags)
            one_line_error(code, err, rf"^error: {out} is in use by another training run \(pid {holder.pid}\); "
                                      "wait for it or pass another --out$")
        assert files(out) == before
    finally:
        holder.kill()   # SIGKILL: the kernel releases the lock with the process
        holder.wait()
    (out / "checkpoint" / checkpoint.CONFIG).unlink()
    code, _, err = run_script("Cifar-100.py", "--out", out, "--resume")   # the lock is free again
    one_line_error(code, err, "nothing to resume")
    assert not (out / LOCK).exists()


def pid_in(path):
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def test_two_real_runs_on_one_out(run_script, pickle_dir, tmp_path, straight):
    """A second run started beside a live one is refused; the first trains on, unaffected."""
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "Cifar-100.py", "--data-dir", str(pickle_dir), "--out", str(out),
                              "--epochs", str(EPOCHS), *TINY], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120   # the lock is taken (then the pid written) before the data is loaded
        while not pid_in(out / LOCK) and first.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        code, _, err = run_script("Cifar-100.py", "--data-dir", pickle_dir, "--out", out, *TINY)
        _, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
    one_line_error(code, err, rf"in use by another training run \(pid {first.pid}\)")
    assert first.returncode == 0, stderr
    np.testing.assert_allclose(history(out)["loss"], straight["loss"], rtol=1e-4)


# --- a full disk -------------------------------------------------------------------------------

@pytest.fixture
def full_disk(monkeypatch):
    """`fail(name)`: from now on, writes to a file whose name ends in `name` fail with
    ENOSPC as on a full disk (after taking a few bytes, as the kernel's partial writes do)."""
    real = os.write
    targets = []

    def write(fd, data):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if any(name.endswith(t) for t in targets):
            if len(data) > 4096:
                return real(fd, memoryview(data)[:4096])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    return targets.append


@pytest.fixture
def previous_model(tmp_path):
    out = tmp_path / "out"
    artifacts.save(out, model.build_siamese(), {"test": {}}, threshold={"threshold": 0.3})
    return out, files(out)


def test_full_disk_in_the_final_save(run_script, pickle_dir, full_disk, previous_model):
    out, before = previous_model
    full_disk(artifacts.WEIGHTS)
    code, _, err = run_script("Cifar-100.py", "--data-dir", pickle_dir, "--out", out, "--epochs", "2", *TINY)
    one_line_error(code, err, rf"could not write {out / artifacts.WEIGHTS} \(No space left on device, [0-9.]+ MB "
                              rf"free\); the model was not saved and {out} is as it was; the trained weights are "
                              rf"kept: free some space and continue with `python Cifar-100.py --out {out} --resume`")
    assert {k: v for k, v in files(out).items() if not k.startswith("checkpoint")} == before   # no temp files


@pytest.mark.parametrize("name", [artifacts.JSON, artifacts.WEIGHTS, artifacts.KERAS, artifacts.METRICS,
                                  artifacts.THRESHOLD, artifacts.CONFIDENCE])
def test_full_disk_at_each_file_of_a_save(full_disk, previous_model, name):
    out, before = previous_model
    full_disk(name)
    with pytest.raises(artifacts.UserError, match=f"could not write {out / name}"):
        artifacts.save(out, model.build_siamese(), {"test": {"other": 1}}, threshold={"threshold": 0.6},
                       confidence={"temperature": 0.05})
    assert files(out) == before


def test_full_disk_in_a_checkpoint_then_resume(run_script, pickle_dir, monkeypatch, previous_model, straight):
    out, before = previous_model
    real = os.write

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("epoch-00002.weights.h5"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    code, _, err = run_script("Cifar-100.py", "--data-dir", pickle_dir, "--out", out, "--epochs", str(EPOCHS), *TINY)
    ckpt = out / "checkpoint"
    one_line_error(code, err, rf"could not write {ckpt / 'epoch-00002.weights.h5'} \(No space left on device, "
                              rf"[0-9.]+ MB free\); training stopped \(epoch 1 is saved\); free some space and "
                              rf"continue with `python Cifar-100.py --out {out} --resume`")
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "epoch-00001.json", "epoch-00001.weights.h5"]
    assert {k: v for k, v in files(out).items() if not k.startswith("checkpoint")} == before
    monkeypatch.setattr(os, "write", real)
    code, _, err = run_script("Cifar-100.py", "--out", out, "--resume")
    assert code == 0, err
    np.testing.assert_allclose(history(out)["loss"], straight["loss"], rtol=1e-4)


def test_full_disk_in_the_tensorboard_logs_then_resume(run_script, pickle_dir, tmp_path, monkeypatch,
                                                       previous_model, straight):
    """TensorFlow writes its event files in C++, out of os.write's reach: its summary op fails here
    as it did on a real full disk (a full tmpfs), from epoch 2's logs on."""
    import tensorflow as tf
    out, before = previous_model
    logs = tmp_path / "tb"
    real = tf.summary.write

    def write(name, tensor, step=None, **kwargs):
        if name.startswith("epoch_") and int(step) >= 1:   # batch_* ones are not recorded (update_freq)
            raise tf.errors.ResourceExhaustedError(
                None, None, "{{function_node __wrapped__WriteSummary_device_/job:localhost/replica:0/task:0/device:CPU:0}} "
                f"{logs}/train/events.out.tfevents.1.vm.1.0.v2; No space left on device\n\tFailed to flush 3 events "
                f"to {logs}/train/events.out.tfevents.1.vm.1.0.v2\n\tCould not flush events file. [Op:WriteSummary]")
        return real(name, tensor, step=step, **kwargs)

    monkeypatch.setattr(tf.summary, "write", write)
    code, _, err = run_script("Cifar-100.py", "--data-dir", pickle_dir, "--out", out, "--epochs", str(EPOCHS),
                              "--tensorboard", logs, *TINY)
    one_line_error(code, err, rf"^error: could not write TensorBoard logs to {logs} \(No space left on device, [0-9.]+ "
                              rf"MB free\); training stopped, its checkpoint is whole and no model was saved; free "
                              rf"some space and continue with `python Cifar-100.py --out {out} --resume`$")
    assert {k: v for k, v in files(out).items() if not k.startswith("checkpoint")} == before
    ckpt = out / "checkpoint"   # epoch 2's checkpoint was written before its logs
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "epoch-00001.json", "epoch-00001.weights.h5",
                                                      "epoch-00002.json", "epoch-00002.weights.h5"]
    monkeypatch.setattr(tf.summary, "write", real)
    code, _, err = run_script("Cifar-100.py", "--out", out, "--resume")
    assert code == 0, err
    np.testing.assert_allclose(history(out)["loss"], straight["loss"], rtol=1e-4)


def test_full_disk_in_a_figure(run_script, tmp_path, pickle_dir, full_disk, previous_model):
    out, _ = previous_model
    full_disk("predictions.png")
    code, _, err = run_script("Test_Cifar-100.py", "--data-dir", pickle_dir, "--model-dir", out,
                              "--shots", "2", "--count", "4")
    one_line_error(code, err, rf"could not write {out / 'predictions.png'} \(No space left on device.*\); "
                              "free some space, or pass --no-plots")
    assert not list(out.glob("*.png")) and not list(out.glob(artifacts.TEMP_PREFIX + "*"))


def test_no_room_for_a_checkpoint_is_refused_before_training(run_script, pickle_dir, tmp_path, monkeypatch):
    import shutil
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=12_000_000))
    code, out, err = run_script("Cifar-100.py", "--data-dir", pickle_dir, "--out", tmp_path / "o", *TINY)
    one_line_error(code, err, r"has 12.0 MB free but this run needs about [0-9.]+ MB \(2 checkpoints of [0-9.]+ MB "
                              r"while training, [0-9.]+ MB for the model\); free some space or pass another --out")
    assert "Epoch" not in out


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO, errno.EDQUOT])
def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch, error):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def write(fd, data):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(artifacts.UserError, match=rf"could not write {path} \({os.strerror(error)}"):
        artifacts.write_file(path, b"new" * 1000)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


# --- permissions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_files_follow_the_umask(tmp_path, umask, mode):
    from siamese import plots
    old = os.umask(umask)
    try:
        artifacts.save(tmp_path, model.build_siamese(), {"test": {}}, threshold={"threshold": 0.5})
        plots.training_curves({"loss": [1.0, 0.5], "accuracy": [0.5, 0.7]}, tmp_path / "training_curves.png")
        checkpoint.write_config(tmp_path, {"epochs": 1})
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys([artifacts.JSON, artifacts.WEIGHTS, artifacts.KERAS, artifacts.METRICS,
                                   artifacts.THRESHOLD, "training_curves.png", checkpoint.CONFIG], mode)


def test_weights_built_in_memory_are_keras_own_file(tmp_path):
    """artifacts.weights_bytes (used because h5py crashes on a full disk) must stay what
    `save_weights` writes: a file `load_weights` reads back exactly."""
    a, b = model.build_siamese(), model.build_siamese()
    (tmp_path / "a.weights.h5").write_bytes(artifacts.weights_bytes(a))
    b.load_weights(tmp_path / "a.weights.h5")
    assert all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))
