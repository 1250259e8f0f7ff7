"""What lands in saved_models/: siamese.json, siamese.weights.h5, metrics.pkl.

Every file is written to a temporary name in the same folder and renamed into place, so an
interrupted save never leaves a half-written model and never damages the previous one.
"""
import json
import os
import pickle
import tempfile
from pathlib import Path

from .errors import UserError

JSON, WEIGHTS, METRICS = "siamese.json", "siamese.weights.h5", "metrics.pkl"


def check_writable(out):
    """Fail now, not after an hour of training, if `out` cannot hold the model."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UserError(f"cannot write to output folder {out} ({e.strerror or e}); "
                        "pass a writable --out") from None
    return out


def _temp_path(out, suffix):
    fd, path = tempfile.mkstemp(dir=out, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    return path


def save(out, siamese, metrics):
    """Write all three files to temporary names, then rename them into place."""
    out = check_writable(out)
    temps = {}
    try:
        temps[JSON] = _temp_path(out, ".json")
        Path(temps[JSON]).write_text(siamese.to_json(indent=1))
        temps[WEIGHTS] = _temp_path(out, ".weights.h5")   # Keras insists on this suffix
        siamese.save_weights(temps[WEIGHTS], overwrite=True)
        temps[METRICS] = _temp_path(out, ".pkl")
        with open(temps[METRICS], "wb") as f:
            pickle.dump(metrics, f, protocol=pickle.HIGHEST_PROTOCOL)
        for name, tmp in temps.items():
            os.replace(tmp, out / name)
    except OSError as e:
        raise UserError(f"could not save the model to {out} ({e.strerror or e}); "
                        "free some space or pass another --out") from None
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.remove(tmp)


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


def _weight_shapes(path, mismatch, fix):
    import h5py
    shapes = []
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: shapes.append(obj.shape) if isinstance(obj, h5py.Dataset) else None)
    except OSError as e:
        raise UserError(f"{mismatch}: not a readable weights file ({e}); {fix}") from None
    return sorted(shapes)


def load_metrics(model_dir):
    path = Path(model_dir) / METRICS
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        return pickle.load(f)  # our own plain dict, written by save()
