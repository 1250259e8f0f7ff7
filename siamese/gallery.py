"""The exemplars a query is compared with, and their embeddings kept beside the model.

Reading and embedding the exemplars is nearly all of a prediction's time (55,000 JPEGs of the
Tiny ImageNet zip: ~50 s on a 2-core CPU), so their embeddings are written to
`<model>/gallery-<which>.npz` and the next identical call reads them instead of a single image.
The file holds a key, and is used only when the key is the one this call would write: the
model's bytes (JSON + weights), the exemplars' source and every file in it by path, size and
modification time (an archive: the archive itself), --shots and the format below. Another model,
a changed, added or removed exemplar file or other --shots give another key, and the gallery is
rebuilt and replaced: one file per exemplar source and --shots, all removed when a model is
saved over this one. A file that is damaged, or not one of ours, is ignored (never trusted: it
is only read with NumPy's pickle-free loader and checked against the model) and rebuilt. Written
atomically, as every file beside the model.
"""
import dataclasses
import hashlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np

from . import artifacts, data, pairs
from .errors import UserError

# Bump when what a gallery holds, or how an image becomes an embedding (the reader), changes:
# older galleries then stop matching and are rebuilt.
FORMAT = 1
PREFIX = "gallery-"

# Exemplars per class taken from the training data when there is no --exemplars: all of them
# (None). A class is scored through the mean of its exemplars' embeddings, and on 100 classes of
# photos every training image as an exemplar scored 6 points above the first 10
# (docs/benchmarks.md, "100 classes of photos").
DATA_SHOTS = None


@dataclasses.dataclass
class Gallery:
    embeddings: np.ndarray     # float32 (N, D), one per exemplar
    labels: np.ndarray         # int64 (N,)
    class_names: dict          # label id -> name
    paths: list                # each exemplar's file, or "training image i" for pickled data
    where: str                 # where the exemplars come from, in words
    images: np.ndarray | None = None   # uint8 (N, S, S, 3) when they were read, not cached


def load_exemplars(args, ds=None, size=data.IMAGE_SIZE):
    """(images, labels, class names, where they come from, the Dataset or None, paths): every
    image of --exemplars DIR (or its first --shots per class folder), else the first --shots
    training images of each class of --data-dir (`ds`, if already loaded), read size x size (the
    model's). The one place the scripts and the demo take them from."""
    if args.exemplars:
        x, y, names, paths = data.load_classes(args.exemplars, size=size)
        if not args.shots:
            return x, y, names, f"every image in {args.exemplars}", None, paths
        idx, y = pairs.exemplar_indices(y, args.shots)   # files are in sorted name order
        return (x[idx], y, names, f"the first {args.shots} images of each class folder in {args.exemplars}", None,
                [paths[i] for i in idx])
    ds = ds or data.load(args.data_dir, size=size)
    shots = args.shots or DATA_SHOTS
    pairs.require_shots(ds.y_train, shots)
    idx, labels = pairs.exemplar_indices(ds.y_train, shots)
    which = f"the first {shots} training images" if shots else "every training image"
    paths = [ds.train_paths[i] for i in idx] if ds.train_paths else [f"training image {i}" for i in idx]
    return ds.x_train[idx], labels, ds.class_names, f"{which} of each class in {ds.source}", ds, paths


def exemplars(args, scorer, model_dir, test_images=0, loaded=None):
    """(Gallery, the Dataset or None): the exemplars' embeddings from the gallery beside the model
    when it matches, else embedded now (from `loaded`, load_exemplars' answer, if given) and
    kept. `test_images`: the first N test images of --data-dir are wanted too, in the Dataset;
    with the gallery in place they are all that is read of it (the training images it stands
    for are not: 32 test images of the Tiny ImageNet zip, not its 55,000 files)."""
    wanted = bool(test_images) and not args.exemplars
    ds = None
    source = _source(args)
    if source is None and wanted:     # the download makes the source: fetch it first
        ds = data.load(args.data_dir, size=scorer.size)
        source = _source(args)
    if source is not None and not source.exists():
        source = None                 # no gallery: the loader below says what is missing, in one line
    path = key = None
    if source is not None:
        path = Path(model_dir) / f"{PREFIX}{_digest([str(source), args.shots])[:16]}.npz"
        key = json.dumps({"format": FORMAT, "model": _model_digest(model_dir), "source": str(source),
                          "shots": args.shots, "flip": bool(scorer.flip), "shifts": bool(scorer.shifts),
                          "size": scorer.size, "files": _digest(_files(source, Path(model_dir)))})
        cached = _read(path, key, _width(scorer))
        if cached is not None:
            if wanted and ds is None:
                ds = data.load(args.data_dir, split="test", limit=test_images, size=scorer.size)
            return cached, ds
    if wanted and ds is None:
        ds = data.load(args.data_dir, size=scorer.size)
    x, y, names, where, ds, paths = loaded or load_exemplars(args, ds, scorer.size)
    gallery = Gallery(scorer.embed(x), np.asarray(y, np.int64), dict(names), list(paths), where, x)
    if path is not None:
        _write(path, key, gallery)
    return gallery, ds


def _source(args):
    """The file or folder the exemplars are read from; None where there is none yet (a
    download still to come)."""
    found = args.exemplars or data.resolve(args.data_dir) or data.downloaded()
    return Path(found).expanduser().resolve() if found else None


def _files(source, model_dir):
    """[relative path, size, mtime in ns] of the source, or of every file under it (links followed,
    as the loader follows them), but those of the model folder, should it lie inside: its own
    gallery would otherwise change the key it is filed under."""
    if not source.is_dir():
        st = source.stat()
        return [["", st.st_size, st.st_mtime_ns]]
    found = []
    model_dir = model_dir.resolve()
    for folder, dirs, names in os.walk(source, followlinks=True):
        dirs[:] = sorted(d for d in dirs if Path(folder, d).resolve() != model_dir)
        for name in sorted(names):
            path = os.path.join(folder, name)
            try:
                st = os.stat(path)
            except OSError:   # a dangling link: the loader will say so, if it reads it
                continue
            found.append([os.path.relpath(path, source), st.st_size, st.st_mtime_ns])
    return found


def _digest(value):
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()


def _model_digest(model_dir):
    h = hashlib.sha256()
    for name in (artifacts.JSON, artifacts.WEIGHTS):
        h.update((Path(model_dir) / name).read_bytes())
    return h.hexdigest()


def _width(scorer):
    return int(scorer.branch.output.shape[-1])


def _read(path, key, width):
    """The gallery in `path` if it is whole, ours and made under `key`; else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"][()]) != key:
                return None          # another model, exemplar set or --shots: rebuilt, silently
            emb, labels = f["embeddings"], f["labels"]
            names = {int(k): v for k, v in json.loads(str(f["class_names"][()])).items()}
            paths, where = json.loads(f["paths"].tobytes().decode()), str(f["where"][()])
        ok = (emb.dtype == np.float32 and emb.ndim == 2 and emb.shape[1] == width and labels.dtype == np.int64
              and labels.shape == (len(emb),) and isinstance(paths, list) and len(paths) == len(emb) and len(emb) > 0
              and all(isinstance(p, str) for p in paths)
              and np.isfinite(emb).all() and set(np.unique(labels).tolist()) <= set(names)
              and all(isinstance(n, str) for n in names.values()))
        if not ok:
            raise ValueError("inconsistent arrays")
    except Exception as e:   # whatever a damaged or foreign file raises: it is not trusted
        print(f"note: {path} is not a readable gallery ({type(e).__name__}); embedding the exemplars again",
              file=sys.stderr)
        return None
    return Gallery(emb, labels, names, paths, where)


def _write(path, key, gallery):
    """Keep the gallery beside the model; a model folder that cannot take it costs the next call
    time, not this call's answer (one note on stderr)."""
    buffer = io.BytesIO()
    np.savez(buffer, key=np.array(key), embeddings=gallery.embeddings, labels=gallery.labels,
             class_names=np.array(json.dumps({str(k): v for k, v in gallery.class_names.items()})),
             paths=np.frombuffer(json.dumps(gallery.paths).encode(), np.uint8),   # UTF-8: a quarter of NumPy's text
             where=np.array(gallery.where))
    try:
        artifacts.write_file(path, buffer.getvalue(), fix="the exemplars will be embedded again next time")
    except UserError as e:
        print(f"note: {e}", file=sys.stderr)
