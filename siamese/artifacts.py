"""What lands in saved_models/: siamese.json, siamese.weights.h5 (the seed's artifact, what
prediction reads), siamese.keras (the same model in Keras 3's own format), metrics.pkl,
threshold.json, confidence.json, directions.npz, and the galleries prediction keeps there
(gallery.py).

Every file is written whole to a temporary name in the same folder, fsynced and renamed into
place, so a crash, a kill or a full disk never leaves a half-written file and never damages the
previous one. Files are created as any new file is (0666 less the umask).
"""
import errno
import io
import json
import os
import pickle
import secrets
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .errors import UserError

JSON, WEIGHTS, METRICS = "siamese.json", "siamese.weights.h5", "metrics.pkl"
KERAS = "siamese.keras"        # the same model for `keras.saving.load_model`, a Keras 3 user's first try
THRESHOLD = "threshold.json"   # the calibrated rejection threshold, beside the plain-Keras model
CONFIDENCE = "confidence.json"   # the temperature of P(class | query), beside it too
DIRECTIONS = "directions.npz"    # the training classes' learned directions, by name (load_directions)
GALLERIES = "gallery-*.npz"      # exemplar embeddings of one model (gallery.py)
TEMP_PREFIX = ".tmp-"   # every temporary file this package writes; a dead run's are removed
CHUNK = 1 << 20
NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


def check_writable(out):
    """Fail now, not after an hour of training, if `out` cannot hold the model."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=TEMP_PREFIX):
            pass
    except OSError as e:
        raise UserError(f"cannot write to output folder {out} ({e.strerror or e}); "
                        "pass a writable --out") from None
    return out


def megabytes(n):
    return f"{n / 1e6:.1f} MB"


def check_room(folder, need, detail):
    """Fail before training, not at its first checkpoint, if `folder` cannot hold `need` bytes."""
    free = shutil.disk_usage(folder).free
    if free < need:
        raise UserError(f"{folder} has {megabytes(free)} free but this run needs about {megabytes(need)} "
                        f"({detail}); free some space or pass another --out")


def remove_stale_temps(folder):
    """Temporary files a killed run left behind. Only call while holding the folder's run lock."""
    for path in Path(folder).glob(TEMP_PREFIX + "*"):
        try:
            path.unlink()
        except OSError:
            pass


def weights_bytes(model):
    """`model.save_weights`' .weights.h5 file, built in memory.

    h5py writing straight to a full disk raises, then crashes the process at exit (SIGSEGV in
    its cleanup of the failed file); writing the finished bytes ourselves turns ENOSPC into an
    ordinary OSError. Keras' H5IOStore takes an io.BytesIO; `save_weights` only takes a path."""
    from keras.src.saving import saving_lib
    buffer = io.BytesIO()
    store = saving_lib.H5IOStore(buffer, mode="w")
    try:
        saving_lib._save_state(model, weights_store=store, assets_store=None, inner_path="",
                               visited_saveables=set())
    finally:
        store.close()
    return buffer.getvalue()


def keras_bytes(model):
    """`model.save`'s .keras file (config, weights and metadata in one zip), built in memory so
    that it is written as every other file is; `model.save` only takes a path. Keras' own
    `save_model` takes a file object."""
    from keras.src.saving import saving_lib
    buffer = io.BytesIO()
    saving_lib.save_model(model, buffer)
    return buffer.getvalue()


def _write_all(fd, view):
    while len(view):
        view = view[os.write(fd, view[:CHUNK]):]


def _fsync_dir(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)   # makes the rename itself durable
    finally:
        os.close(fd)


def _problem(e, folder):
    text = e.strerror or str(e)
    if e.errno in NO_ROOM:
        try:
            text += f", {megabytes(shutil.disk_usage(folder).free)} free"
        except OSError:
            pass
    return text


def write_files(files, fix="free some space or pass another --out", midway=None):
    """Write {path: bytes} atomically: every file to a temporary name (fsynced) first, then each
    renamed into place in order (and the folder fsynced), so either the new files or the old ones
    are there. Any OSError (ENOSPC, EIO, EDQUOT, ...) becomes one UserError ending in `fix`, with
    the temporary files removed and the old files untouched. `midway(path)`, if given, is called
    when half of a file is written (tests kill the process there)."""
    temps = {}
    path = None
    try:
        for path, data in files.items():
            path = Path(path)
            temps[path] = tmp = path.with_name(f"{TEMP_PREFIX}{secrets.token_hex(4)}-{path.name}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)   # the umask applies
            try:
                view = memoryview(data)
                _write_all(fd, view[:len(view) // 2])
                if midway:
                    os.fsync(fd)
                    midway(path)
                _write_all(fd, view[len(view) // 2:])
                os.fsync(fd)
            finally:
                os.close(fd)
        for path, tmp in temps.items():
            os.replace(tmp, path)
            _fsync_dir(path.parent)
    except OSError as e:
        raise UserError(f"could not write {path} ({_problem(e, path.parent)}); {fix}") from None
    finally:
        for tmp in temps.values():
            if os.path.lexists(tmp):
                try:
                    os.remove(tmp)
                except OSError:
                    pass


def write_file(path, data, fix="free some space or pass another --out", midway=None):
    write_files({path: data}, fix, midway)


def save(out, siamese, metrics, fix="free some space or pass another --out", threshold=None, confidence=None,
         directions=None):
    """Write all the files to temporary names, then rename them into place. `threshold` (a dict
    with "threshold") and `confidence` (with "temperature") go to their own small JSON files, and
    `directions` ({class name: (D,) vector}) to an .npz, so the Keras JSON + H5 stay plain;
    without one, a previous model's is removed, since it would describe another model, as are the
    previous model's galleries."""
    out = check_writable(out)
    files = {   # renamed into place in this order: the seed's JSON + H5 first
        out / JSON: siamese.to_json(indent=1).encode(),
        out / WEIGHTS: weights_bytes(siamese),
        out / KERAS: keras_bytes(siamese),
        out / METRICS: pickle.dumps(metrics, protocol=pickle.HIGHEST_PROTOCOL),
    }
    as_json = lambda value: (json.dumps(value, indent=1) + "\n").encode()   # noqa: E731
    extras = {THRESHOLD: (threshold, as_json), CONFIDENCE: (confidence, as_json),
              DIRECTIONS: (directions, directions_bytes)}
    for name, (value, encode) in extras.items():
        if value is not None:
            files[out / name] = encode(value)
    write_files(files, fix=f"the model was not saved and {out} is as it was; {fix}")
    stale = [out / name for name, (value, _) in extras.items() if value is None] + list(out.glob(GALLERIES))
    for path in stale:
        if path.exists():
            os.remove(path)


def directions_bytes(directions):
    """The .npz of {class name: vector}: the names as one JSON string, the vectors as one float32
    array, in the names' order (read back with NumPy's pickle-free loader)."""
    names = list(directions)
    buffer = io.BytesIO()
    np.savez(buffer, names=np.array(json.dumps(names)),
             vectors=np.stack([np.asarray(directions[n], np.float32) for n in names]))
    return buffer.getvalue()


def load_directions(model_dir, width):
    """{class name: (D,) vector} of the classes the model in `model_dir` learned directions for
    (evaluate.class_prototypes scores those classes by them), or None for a model saved without
    (a free embedding, or saved before there were any: its classes are scored by exemplars)."""
    path = Path(model_dir) / DIRECTIONS
    if not path.is_file():
        return None
    how = ("retrain with `python Cifar-100.py`, or pass --prototypes exemplars to score every class "
           "by its exemplars")
    try:
        with np.load(path, allow_pickle=False) as f:
            names, vectors = json.loads(str(f["names"][()])), f["vectors"]
        ok = (isinstance(names, list) and all(isinstance(n, str) for n in names) and len(set(names)) == len(names)
              and vectors.dtype == np.float32 and vectors.shape == (len(names), width)
              and np.isfinite(vectors).all())
        if not ok:
            raise ValueError("inconsistent arrays")
    except Exception as e:   # whatever a damaged or foreign file raises: it is not trusted
        raise UserError(f"{path} is not readable class directions of this model ({type(e).__name__}); {how}") \
            from None
    return dict(zip(names, vectors))


def load_model(model_dir):
    """Reload siamese.json + siamese.weights.h5 exactly as any Keras user would."""
    import keras
    model_dir = Path(model_dir)
    json_path, weights_path = model_dir / JSON, model_dir / WEIGHTS
    for path in (json_path, weights_path):
        if not path.is_file():
            raise UserError(f"no trained model: {path} is missing; run `python Cifar-100.py` first "
                            "(or pass --model-dir where it saved)")
    try:
        text = json_path.read_text()
        json.loads(text)
    except (ValueError, OSError) as e:
        raise UserError(f"{json_path} is not valid JSON ({e}); retrain with `python Cifar-100.py`") from None
    try:
        model = keras.models.model_from_json(text)
    except Exception as e:  # Keras raises many types for a JSON that is not a model
        raise UserError(f"{json_path} is not a Keras model ({type(e).__name__}); "
                        "retrain with `python Cifar-100.py`") from None
    if not isinstance(model, keras.Model) or {"branch", "head"} - {l.name for l in model.layers}:
        raise UserError(f"{json_path} is a Keras model but not this project's siamese network; "
                        "retrain with `python Cifar-100.py`")
    mismatch = f"{weights_path} does not match {json_path}"
    fix = "they must come from the same training run: retrain with `python Cifar-100.py`"
    # Keras only warns for some mismatches (and keeps fresh weights in the layers it skips):
    # compare the arrays in the file with the model's before loading.
    if _weight_shapes(weights_path, mismatch, fix) != sorted(tuple(w.shape) for w in model.weights):
        raise UserError(f"{mismatch} (different weight arrays); {fix}")
    try:
        model.load_weights(weights_path)
    except Exception as e:
        raise UserError(f"{mismatch} ({type(e).__name__}); {fix}") from None
    return model


def load_scorer(model_dir, model=None):
    """The saved model's evaluate.Scorer (of `model`, the one loaded from `model_dir`, if given),
    with the test-time augmentation its training scored with (metrics.pkl says; a model saved
    without that is scored plainly, as it was)."""
    from . import evaluate
    model = model or load_model(model_dir)
    metrics = load_metrics(model_dir) or {}
    return evaluate.Scorer(model, flip=bool(metrics.get("test_time_flip", False)),
                           shifts=bool(metrics.get("test_time_shifts", False)))


def _weight_shapes(path, mismatch, fix):
    import h5py
    shapes = []
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: shapes.append(obj.shape) if isinstance(obj, h5py.Dataset) else None)
    except OSError as e:
        raise UserError(f"{mismatch}: not a readable weights file ({e}); {fix}") from None
    return sorted(shapes)


def load_threshold(model_dir, learned=False):
    """The rejection threshold training calibrated for the model in `model_dir` (a float); with
    `learned`, the one for classes scored by their learned directions, where it has one."""
    path = Path(model_dir) / THRESHOLD
    how = ("retrain with `python Cifar-100.py` (training calibrates one), or set one by hand "
           "with --reject P (0 < P < 1)")
    if not path.is_file():
        raise UserError(f"{model_dir} has no rejection threshold ({THRESHOLD}: models saved before "
                        f"open-set calibration have none); {how}")
    try:
        saved = json.loads(path.read_text())
        value = (saved["learned"] if learned and saved.get("learned") else saved)["threshold"]
        if not 0 < value < 1:
            raise ValueError(value)
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise UserError(f"{path} is not a readable threshold ({type(e).__name__}); {how}") from None
    return float(value)


def load_temperature(model_dir):
    """The temperature of P(class | query) training fitted for the model in `model_dir`, or None
    for a model saved before there was one (prediction then shows P(same) alone, as it did)."""
    path = Path(model_dir) / CONFIDENCE
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())["temperature"]
        if not 0 < value < float("inf"):
            raise ValueError(value)
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise UserError(f"{path} is not a readable class confidence ({type(e).__name__}); retrain with "
                        f"`python Cifar-100.py`, or delete it to see P(same) alone") from None
    return float(value)


def write_folder(target, fill, fix="free some space or pass another target"):
    """Make the folder `target` whole or not at all: `fill(path)` writes into a temporary folder
    beside it, which is fsynced and renamed into place (onto nothing, or an empty folder)."""
    target = Path(target)
    tmp = target.with_name(f"{TEMP_PREFIX}{secrets.token_hex(4)}-{target.name}")
    try:
        fill(tmp)
        for folder, _, names in os.walk(tmp):
            for name in names:
                fd = os.open(os.path.join(folder, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as e:
        raise UserError(f"could not write {target} ({_problem(e, target.parent)}); {fix}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_metrics(model_dir):
    path = Path(model_dir) / METRICS
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        return pickle.load(f)  # our own plain dict, written by save()
