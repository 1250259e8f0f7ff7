"""The state of an unfinished run in --out/checkpoint, written so that no crash can tear it.

After each epoch, `Checkpointer` writes the trainer's weights and optimizer state (Keras' own
.weights.h5 of the PairTrainer) and then a small manifest: the epoch, the loss history so far,
what the run has spent (seconds of training and steps: a resumed --max-minutes run keeps its
budget and its place in the rate schedule), and the weights file's size and sha256. Each file
goes to a temporary name, is fsynced and renamed into place (`artifacts.write_files`), weights
first, so a manifest only ever describes a whole checkpoint. The last two epochs are kept: `restore` takes the newest checkpoint that verifies, so
one damaged later (a disk fault, a hand edit) falls back to the one before.

    checkpoint/config.json               the run's flags (--resume reuses them)
    checkpoint/epoch-00004.weights.h5    weights + optimizer after epoch 4
    checkpoint/epoch-00004.json          {"epoch": 4, "history": ..., "seconds": 61.3, "steps": 400,
                                          "learning_rate": ..., "weights": {name, bytes, sha256}}

Before these manifests, Keras' BackupAndRestore and CSVLogger kept the state (LEGACY); such a
folder is refused with one line rather than silently restarted from epoch 0.
"""
import hashlib
import json
import math
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from . import artifacts
from .errors import UserError

CONFIG = "config.json"
KEEP = 2                    # complete checkpoints on disk after each epoch
HISTORY_KEYS = ("loss", "accuracy")
KILL_AT = "SIAMESE_TEST_KILL_AT"   # tests only: "<stage>@<epoch>", see _test_kill
# What BackupAndRestore + CSVLogger left in checkpoint/ before commit aa0f11f; this code reads
# none of it, and the model has changed since, so --resume would silently start at epoch 0.
LEGACY = ("training_metadata.json", "latest.weights.h5", "history.csv")


@dataclass
class State:
    epoch: int = 0           # epochs finished
    history: dict = field(default_factory=lambda: {key: [] for key in HISTORY_KEYS})
    seconds: float = 0.0     # of training, by the schedule's clock
    steps: int = 0


class Damaged(Exception):
    pass


def write_config(ckpt, config):
    artifacts.write_file(Path(ckpt) / CONFIG, json.dumps(config).encode())


def read_config(ckpt):
    """The interrupted run's flags, or None if `ckpt` holds no run."""
    path = Path(ckpt) / CONFIG
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise UserError(f"checkpoint {ckpt} is damaged ({CONFIG}: {e}); delete {ckpt} to start over") from None
    _refuse_legacy(ckpt)
    return config


def _refuse_legacy(ckpt):
    found = [name for name in LEGACY if (Path(ckpt) / name).is_file()]
    if not found:
        return
    try:
        epoch = f", after epoch {int(json.loads((Path(ckpt) / LEGACY[0]).read_text())['epoch'])}"
    except (OSError, ValueError, KeyError, TypeError):
        epoch = ""
    raise UserError(f"checkpoint {ckpt} was saved by an older version of this program (Keras' BackupAndRestore "
                    f"files{epoch}), which cannot resume it; delete {ckpt} to start over")


def discard(ckpt):
    """Delete a checkpoint folder, config.json first: a kill halfway leaves no run to resume
    (a folder without it is leftovers, which a new run deletes)."""
    (Path(ckpt) / CONFIG).unlink(missing_ok=True)
    shutil.rmtree(ckpt, ignore_errors=True)


def size_estimate(trainer):
    """Bytes of one checkpoint: every variable of the trainer and its optimizer. Before fit
    builds it, Adam's two slots per trainable variable are counted instead."""
    optimizer = trainer.optimizer
    variables = list(trainer.weights)
    variables += list(optimizer.variables) if optimizer.built else 2 * list(trainer.trainable_variables)
    return sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables)


def check_room(out, ckpt, trainer):
    """Before training: room in --out for KEEP checkpoints (less those already there) and the
    saved model, with a margin for the manifests, metrics and figures."""
    one = size_estimate(trainer)
    # Twice: the model is saved as JSON + H5 and again as siamese.keras.
    model = 2 * sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize for v in trainer.siamese.weights)
    held = sum(p.stat().st_size for p in Path(ckpt).glob("epoch-*.weights.h5"))
    need = int(1.05 * (KEEP * one - held + model)) + (2 << 20)
    artifacts.check_room(out, need, f"{KEEP} checkpoints of {artifacts.megabytes(one)} while training, "
                                    f"{artifacts.megabytes(model)} for the model")


def _manifests(ckpt):
    """Manifest paths, newest epoch first."""
    found = []
    for path in Path(ckpt).glob("epoch-*.json"):
        try:
            found.append((int(path.name[len("epoch-"):-len(".json")]), path))
        except ValueError:
            pass
    return [path for _, path in sorted(found, reverse=True)]


def _weights_path(manifest):
    return manifest.with_name(manifest.name[:-len(".json")] + ".weights.h5")


def _remove(manifest):
    """Manifest first: a weights file without its manifest is ignored, never half-trusted."""
    for path in (manifest, _weights_path(manifest)):
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _verify(manifest):
    """(State, weights path) of a manifest whose weights file is whole, else raise Damaged."""
    try:
        record = json.loads(manifest.read_text())
        epoch, history, info = int(record["epoch"]), record["history"], record["weights"]
        history = {key: [float(v) for v in history[key]] for key in HISTORY_KEYS}
        size, digest = int(info["bytes"]), info["sha256"]
        # A manifest written before these were recorded: the clock starts again from zero.
        seconds, steps = float(record.get("seconds", 0.0)), int(record.get("steps", 0))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise Damaged(f"{manifest.name} is unreadable: {type(e).__name__}") from None
    weights = _weights_path(manifest)
    try:
        data = weights.read_bytes()
    except OSError as e:
        raise Damaged(f"{weights.name}: {e.strerror}") from None
    if len(data) != size:
        raise Damaged(f"{weights.name} has {len(data)} bytes, not {size}")
    if hashlib.sha256(data).hexdigest() != digest:
        raise Damaged(f"{weights.name} does not match its sha256")
    if any(len(v) != epoch for v in history.values()):
        raise Damaged(f"{manifest.name} holds {len(history['loss'])} epochs of history, not {epoch}")
    return State(epoch, history, seconds, steps), weights


def restore(trainer, ckpt):
    """Load the newest checkpoint in `ckpt` that verifies into `trainer` (built, compiled) and
    return its State; State() if no epoch was finished. Damaged newer checkpoints are reported
    and deleted; if every one is damaged: UserError."""
    artifacts.remove_stale_temps(ckpt)
    manifests = _manifests(ckpt)
    for weights in set(Path(ckpt).glob("epoch-*.weights.h5")) - {_weights_path(m) for m in manifests}:
        weights.unlink()   # renamed into place, but killed before its manifest was
    damaged = []
    for manifest in manifests:
        try:
            state, weights = _verify(manifest)
            if not trainer.optimizer.built:   # its variables must exist before they are loaded
                trainer.optimizer.build(trainer.trainable_variables)
            try:
                trainer.load_weights(weights)
            except Exception as e:   # h5py and Keras raise many types for a file that is not theirs
                raise Damaged(f"{weights.name} does not load: {type(e).__name__}") from None
        except Damaged as e:
            damaged.append((manifest, str(e)))
            continue
        for bad, reason in damaged:
            print(f"checkpoint of epoch {bad.name[6:-5].lstrip('0')} is damaged ({reason}); "
                  f"resuming from epoch {state.epoch}")
            _remove(bad)
        return state
    if damaged:
        raise UserError(f"checkpoint {ckpt} is damaged ({damaged[0][1]}); delete {ckpt} to start over")
    return State()


def _test_kill(stage, epoch):
    """SIGKILL this process at a named moment of a checkpoint write: the fault tests' hook.
    Stages: weights-half, weights (renamed into place), manifest-half, manifest."""
    if os.environ.get(KILL_AT) == f"{stage}@{epoch}":
        os.kill(os.getpid(), signal.SIGKILL)


def _killer(stage, epoch):
    """`midway` for artifacts.write_file when a test asked for a kill there, else None."""
    return (lambda path: _test_kill(stage, epoch)) if os.environ.get(KILL_AT) == f"{stage}@{epoch}" else None


class Checkpointer(keras.callbacks.Callback):
    """Writes a checkpoint after every epoch whose loss is finite, and keeps the history.

    `clock` (schedule.Clock) says what the run has spent; `again` is the command that continues
    the run, for the message of a failed write."""

    def __init__(self, ckpt, state, again, clock):
        super().__init__()
        self.ckpt, self.again, self.clock = Path(ckpt), again, clock
        self.history = {key: list(values) for key, values in state.history.items()}

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        for key in HISTORY_KEYS:
            self.history[key].append(float(logs[key]))
        if all(math.isfinite(self.history[key][-1]) for key in HISTORY_KEYS):
            self.save(epoch + 1)

    def save(self, epoch):
        for old in _manifests(self.ckpt)[KEEP - 1:]:   # room for the new one; the newest stays
            _remove(old)
        name = f"epoch-{epoch:05d}"
        data = artifacts.weights_bytes(self.model)
        record = {"epoch": epoch, "history": self.history, "seconds": self.clock.seconds, "steps": self.clock.steps,
                  "learning_rate": float(np.asarray(self.model.optimizer.learning_rate)),
                  "weights": {"name": f"{name}.weights.h5", "bytes": len(data),
                              "sha256": hashlib.sha256(data).hexdigest()}}
        saved = f"epoch {epoch - 1} is saved" if _manifests(self.ckpt) else "no epoch is saved yet"
        fix = f"training stopped ({saved}); free some space and continue with {self.again}"
        artifacts.write_file(self.ckpt / f"{name}.weights.h5", data, fix, midway=_killer("weights-half", epoch))
        _test_kill("weights", epoch)
        artifacts.write_file(self.ckpt / f"{name}.json", json.dumps(record).encode(), fix,
                             midway=_killer("manifest-half", epoch))
        _test_kill("manifest", epoch)
