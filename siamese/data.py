"""The one loader: every script, test and benchmark gets its images through `load`.

Accepted sources, in the order `load` looks for them:
  --data-dir PATH, else $CIFAR100_DIR, else keras.datasets.cifar100 (download + cache).
PATH may be the official `cifar-100-python` folder (or a folder holding it or its tar.gz),
the official `cifar-100-python.tar.gz`, or a class-folder tree `train/<class>/*.png|jpg`
+ `test/<class>/*`. Labels are whatever ids the source uses: never assume 100 classes or
contiguous ids; `Dataset.classes` lists the ids that actually occur in training.
"""
import dataclasses
import io
import os
import pickle
import tarfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .errors import UserError

IMAGE_SHAPE = (32, 32, 3)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
LOCAL_COPY_HINT = (
    "pass --data-dir (or set CIFAR100_DIR) to a local copy: the official cifar-100-python "
    "folder, its .tar.gz, or a train/<class>/ + test/<class>/ image tree"
)

# The official pickles contain dicts, lists, bytes, ints and numpy arrays; rebuilding the
# arrays needs exactly these globals (numpy >= 2 spells multiarray `numpy._core`). Anything
# else (os.system, eval, ...) is refused before it can run.
_ALLOWED_GLOBALS = frozenset({
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
})


@dataclasses.dataclass
class Dataset:
    x_train: np.ndarray            # uint8 (N, 32, 32, 3)
    y_train: np.ndarray            # int64 (N,) fine label ids
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: dict              # label id -> name
    coarse_train: np.ndarray | None = None
    coarse_test: np.ndarray | None = None
    coarse_names: dict | None = None
    source: str = ""

    @property
    def classes(self):
        """Sorted label ids present in the training split."""
        return np.unique(self.y_train)


class _Refused(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise _Refused(f"{module}.{name}")


def _unpickle(stream, where):
    try:
        obj = _RestrictedUnpickler(stream, encoding="bytes").load()
    except _Refused as e:
        raise UserError(f"{where} asks to run `{e}`, which the official CIFAR files never do; "
                        "refused without running it. Replace it with an official copy") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, AttributeError, MemoryError,
            OSError, zlib.error) as e:  # truncated or garbage bytes
        raise UserError(f"{where} is truncated or corrupt ({type(e).__name__}: {e}); "
                        "re-download or re-extract it") from None
    if not isinstance(obj, dict):
        raise UserError(f"{where} does not hold a CIFAR dict; is this the official cifar-100-python file?")
    return obj


def _split_from_pickle(d, where, n_fine, n_coarse):
    data = d.get(b"data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"{where}: b'data' must be a uint8 array of shape (N, 3072), got {got}; "
                        "the file is not an official CIFAR-100 pickle")
    n = len(data)

    def labels(key, n_names, required):
        if key not in d:
            if required:
                raise UserError(f"{where} has no {key!r} entry; the file is not an official CIFAR-100 pickle")
            return None
        y = np.asarray(d[key])
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise UserError(f"{where}: {key!r} must be a list of integers")
        if len(y) != n:
            raise UserError(f"{where}: {len(y)} {key!r} for {n} images; the file is damaged")
        if len(y) and (y.min() < 0 or y.max() >= n_names):
            raise UserError(f"{where}: {key!r} has ids outside 0..{n_names - 1} (the names in meta); "
                            "the file is damaged or from another dataset")
        return y.astype(np.int64)

    # Stored as R plane, G plane, B plane, each 32x32 row-major.
    x = data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)
    return (np.ascontiguousarray(x), labels(b"fine_labels", n_fine, True),
            labels(b"coarse_labels", n_coarse, False))


def _names(meta, key, where):
    names = meta.get(key)
    if not isinstance(names, list) or not names:
        raise UserError(f"{where} has no {key!r} list; the file is not the official CIFAR-100 meta")
    return {i: (n.decode() if isinstance(n, bytes) else str(n)) for i, n in enumerate(names)}


def _from_pickles(read, where):
    """read(name) -> binary stream of the member `name` (train, test, meta)."""
    meta = _unpickle(read("meta"), f"{where}/meta")
    fine = _names(meta, b"fine_label_names", f"{where}/meta")
    coarse = _names(meta, b"coarse_label_names", f"{where}/meta") if b"coarse_label_names" in meta else {}
    x, y, c = _split_from_pickle(_unpickle(read("train"), f"{where}/train"), f"{where}/train", len(fine), len(coarse))
    xt, yt, ct = _split_from_pickle(_unpickle(read("test"), f"{where}/test"), f"{where}/test", len(fine), len(coarse))
    has_coarse = c is not None and ct is not None
    return Dataset(x, y, xt, yt, fine, c if has_coarse else None, ct if has_coarse else None,
                   coarse if has_coarse else None, source=where)


def _from_folder(folder):
    def read(name):
        path = folder / name
        if not path.is_file():
            raise UserError(f"{folder} has no '{name}' file; expected the official cifar-100-python "
                            "folder with train, test and meta")
        return io.BytesIO(path.read_bytes())
    return _from_pickles(read, str(folder))


def _from_tar(path):
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            blobs = {}
            for name in ("train", "test", "meta"):
                if name not in members:
                    raise UserError(f"{path} has no '{name}' member; expected the official "
                                    "cifar-100-python.tar.gz")
                blobs[name] = tar.extractfile(members[name]).read()  # read, never extract to disk
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise UserError(f"{path} is not a readable .tar.gz ({type(e).__name__}: {e}); "
                        "re-download it or pass the extracted folder") from None
    return _from_pickles(lambda name: io.BytesIO(blobs[name]), str(path))


def _read_image(path):
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"cannot read image {path} ({type(e).__name__}); delete or replace it") from None
    if arr.shape != IMAGE_SHAPE:
        raise UserError(f"image {path} is {arr.shape[1]}x{arr.shape[0]}, expected 32x32; "
                        "resize the tree or remove the file")
    return arr


def read_image(path):
    """Any image Pillow can read, any size or mode, as uint8 32x32 RGB (area-averaged down)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize(IMAGE_SHAPE[:2], Image.Resampling.BOX))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {path} ({type(e).__name__}); pass a PNG/JPEG/... file") from None


def load_classes(folder, progress=True):
    """A folder of class folders, every image in one an exemplar of that class.

    Returns (x uint8 (N, 32, 32, 3), y int64 (N,), class_names id -> name, paths)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"exemplar folder {folder} does not exist; pass a folder of class folders")
    names = sorted(p.name for p in folder.iterdir() if p.is_dir())
    paths, labels = [], []
    for i, name in enumerate(names):
        found = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += found
        labels += [i] * len(found)
    if not paths:
        raise UserError(f"{folder} holds no class folders with .png/.jpg images; expected {folder}/<class>/*.png")
    x = np.stack([read_image(p) for p in paths])
    return x, np.asarray(labels, np.int64), dict(enumerate(names)), [str(p) for p in paths]


def _tree_split(root, class_names):
    ids = {name: i for i, name in enumerate(class_names)}
    files, labels = [], []
    for name in sorted(p.name for p in root.iterdir() if p.is_dir()):
        if name not in ids:
            raise UserError(f"{root / name} is a class that train/ does not have; "
                            "train/ and test/ must use the same class folders")
        found = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [ids[name]] * len(found)
    if not files:
        raise UserError(f"{root} holds no .png/.jpg images in class folders")
    x = np.empty((len(files), *IMAGE_SHAPE), np.uint8)   # filled in place: no list of copies
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for i, image in enumerate(pool.map(_read_image, files, chunksize=256)):
            x[i] = image
    return x, np.asarray(labels, dtype=np.int64)


def _from_tree(root):
    if not (root / "test").is_dir():
        raise UserError(f"{root} has train/ but no test/ folder; the image tree needs both")
    class_names = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not class_names:
        raise UserError(f"{root / 'train'} has no class folders; expected train/<class>/*.png|jpg")
    x, y = _tree_split(root / "train", class_names)
    xt, yt = _tree_split(root / "test", class_names)
    return Dataset(x, y, xt, yt, dict(enumerate(class_names)), source=str(root))


def _download():
    import keras
    try:
        keras.datasets.cifar100.load_data(label_mode="fine")
    except Exception as e:  # no network, refused, interrupted download...
        raise UserError(f"no data given and downloading CIFAR-100 failed ({type(e).__name__}); "
                        f"{LOCAL_COPY_HINT}") from None
    # Keras (>= 3.6) keeps the extracted official folder in its cache: read it with the same
    # loader, which also gives class names and coarse labels.
    cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"
    for folder in (cache / "cifar-100-python-target" / "cifar-100-python", cache / "cifar-100-python"):
        if (folder / "meta").is_file():
            return _from_folder(folder)
    raise UserError(f"CIFAR-100 downloaded but its folder was not found under {cache}; {LOCAL_COPY_HINT}")


def resolve(data_dir=None):
    """The data path the user asked for (flag, then $CIFAR100_DIR), or None for download."""
    return data_dir or os.environ.get("CIFAR100_DIR") or None


def load(data_dir=None):
    """Load a Dataset from --data-dir, $CIFAR100_DIR, or the Keras download."""
    data_dir = resolve(data_dir)
    if data_dir is None:
        return _download()
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise UserError(f"data path {path} does not exist; {LOCAL_COPY_HINT}")
    if path.is_file():
        return _from_tar(path)
    if (path / "train").is_dir():
        return _from_tree(path)
    if (path / "train").is_file() or (path / "meta").is_file():
        return _from_folder(path)
    if (path / "cifar-100-python").is_dir():
        return _from_folder(path / "cifar-100-python")
    if (path / "cifar-100-python.tar.gz").is_file():
        return _from_tar(path / "cifar-100-python.tar.gz")
    raise UserError(f"{path} holds no CIFAR data (no train/test/meta pickles, no "
                    f"cifar-100-python.tar.gz, no train/<class>/ images); {LOCAL_COPY_HINT}")
