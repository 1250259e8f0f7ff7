"""The one loader: every script, test and benchmark gets its images through `load`.

Accepted sources, in the order `load` looks for them:
  --data-dir PATH, else $CIFAR100_DIR, else keras.datasets.cifar100 (download + cache).
PATH may be the official `cifar-100-python` folder (or a folder holding it or its tar.gz),
the official `cifar-100-python.tar.gz`, a class-folder tree `train/<class>/*` + `test/<class>/*`,
or a single level of class folders `<class>/*`, split per class by `test_fraction`; or a .zip,
.tar or .tar.gz of any of these, read in place (`archive.py`; an archive holding one folder is
read as that folder), told apart from the official tar.gz by what is inside.
Images in trees may have any size and mode (`read_image` makes them S x S RGB, S = `size`,
IMAGE_SIZE unless a caller says otherwise; the official pickles' 32x32 are resized alike); hidden files
are skipped. Labels are whatever ids the source uses: never assume 100 classes or contiguous
ids; `Dataset.classes` lists the ids that actually occur in training.
`load(..., split="test", limit=N)` reads only the first N test images, the same arrays the whole
load gives, from every kind of source: the rest is listed (names, sizes, the split) but never
decoded or unpickled (Test_Cifar-100.py's 32 test images, the gallery standing for the rest).
"""
import collections
import contextlib
import dataclasses
import io
import os
import pickle
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from . import archive
from .errors import UserError

IMAGE_SIZE = 32          # pixels a side, the default of --image-size: CIFAR's own. The one place it is said
SIZES = (8, 512)          # --image-size's bounds: below 8 the branch's pooling leaves nothing


def image_shape(size=IMAGE_SIZE):
    return (size, size, 3)

TEST_FRACTION = 0.2       # of each class, when a folder of class folders is split
LOCAL_COPY_HINT = (
    "pass --data-dir (or set CIFAR100_DIR) to a local copy: the official cifar-100-python "
    "folder, its .tar.gz, a train/<class>/ + test/<class>/ image tree, or a folder of class folders "
    "(or a .zip/.tar/.tar.gz of one)"
)

# The official pickles contain dicts, lists, bytes, ints and numpy arrays; rebuilding the
# arrays needs exactly these globals (numpy >= 2 spells multiarray `numpy._core`). Python 3
# writes bytes at protocols 0-2 as `_codecs.encode(text, 'latin1')`, which only builds bytes
# (PyTorch's weights-only unpickler allows it too): a subset re-saved with protocol=2 needs
# it. Anything else (os.system, eval, ...) is refused before it can run.
_ALLOWED_GLOBALS = frozenset({
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
})


SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class Part:
    """Which images of a source a load reads: the splits named (the others are left empty), the
    first `limit` of each (None: all) in the order the whole load gives them, `size` x `size`."""
    splits: tuple = SPLITS
    limit: int | None = None
    size: int = IMAGE_SIZE

    def take(self, split, items):
        """The share of a split's items (a list or an array, in load order) this load reads."""
        return items[:self.limit] if split in self.splits else items[:0]


@dataclasses.dataclass
class Dataset:
    x_train: np.ndarray            # uint8 (N, S, S, 3)
    y_train: np.ndarray            # int64 (N,) fine label ids
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: dict              # label id -> name
    coarse_train: np.ndarray | None = None
    coarse_test: np.ndarray | None = None
    coarse_names: dict | None = None
    source: str = ""
    train_paths: list | None = None   # each training image's file, where it has one (image folders)

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


def _from_pickles(read, where, part=Part()):
    """read(name) -> binary stream of the member `name` (train, test, meta); a split `part`
    does not read is never unpickled (the train pickle is five times the test one)."""
    meta = _unpickle(read("meta"), f"{where}/meta")
    fine = _names(meta, b"fine_label_names", f"{where}/meta")
    coarse = _names(meta, b"coarse_label_names", f"{where}/meta") if b"coarse_label_names" in meta else {}
    found = {}
    for split in SPLITS:
        if split in part.splits:
            x, y, c = _split_from_pickle(_unpickle(read(split), f"{where}/{split}"), f"{where}/{split}",
                                         len(fine), len(coarse))
            found[split] = (part.take(split, x), part.take(split, y), None if c is None else part.take(split, c))
        else:
            found[split] = (np.zeros((0, *image_shape(part.size)), np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64))
    (x, y, c), (xt, yt, ct) = found["train"], found["test"]
    has_coarse = c is not None and ct is not None
    x, xt = resize(x, part.size), resize(xt, part.size)
    return Dataset(x, y, xt, yt, fine, c if has_coarse else None, ct if has_coarse else None,
                   coarse if has_coarse else None, source=where)


def _from_folder(folder, part=Part()):
    """The official pickles in `folder`, a real one or one inside an archive (the official tar.gz)."""
    def read(name):
        path = folder / name
        if not path.is_file():
            raise UserError(f"{folder} has no '{name}' file; expected the official cifar-100-python "
                            "folder with train, test and meta")
        return io.BytesIO(path.read_bytes())
    return _from_pickles(read, str(folder), part)


# Files an operating system leaves in folders; never images, so skipped like dotfiles.
OS_FILES = frozenset({"Thumbs.db", "desktop.ini", "Icon\r", "__MACOSX"})
PROGRESS_FROM = 2000      # loading more files than this shows a progress bar


def _to_rgb(im):
    """Any Pillow mode as RGB, before resizing: a 1-bit character must be averaged as grey, not
    resized as bits. Transparent pixels become white (the paper behind a drawing or logo)."""
    from PIL import Image
    if im.mode.startswith("I") or im.mode == "F":
        # 16/32-bit grey and float: Pillow's own conversion clips at 255 instead of scaling.
        a = np.asarray(im, dtype=np.float64)
        peak = a.max(initial=0)
        scale = 255 / 65535 if im.mode.startswith("I;16") or peak > 255 else (255 if peak <= 1 and im.mode == "F" else 1)
        return Image.fromarray(np.clip(a * scale, 0, 255).round().astype(np.uint8), "L").convert("RGB")
    if im.has_transparency_data:
        paper = Image.new("RGBA", im.size, (255, 255, 255, 255))
        paper.alpha_composite(im.convert("RGBA"))
        return paper.convert("RGB")
    return im.convert("RGB")


def _fit(im, size):
    """A Pillow RGB image squashed to size x size (aspect ratio not kept, nothing cropped): area
    averaging when shrinking, bilinear when a side is shorter."""
    from PIL import Image
    if im.size == (size, size):
        return im
    shrink = im.width >= size and im.height >= size
    return im.resize((size, size), Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR)


def resize(x, size):
    """uint8 (N, H, W, 3) images as (N, size, size, 3), each as `read_image` resizes a file: the
    official pickles' 32x32 read at another --image-size. No copy when they are that size."""
    if x.shape[1:3] == (size, size):
        return x
    from PIL import Image
    out = np.empty((len(x), *image_shape(size)), np.uint8)
    for i, image in enumerate(x):
        out[i] = np.asarray(_fit(Image.fromarray(image), size))
    return out


def read_image(source, name=None, size=IMAGE_SIZE):
    """The one image reader: any file Pillow opens, any size and mode, as uint8 (size, size, 3) RGB.

    `source` is a path, an `archive.Member` (read here: any thread may), or a file's bytes with
    `name` to tell the user.
    Converted to RGB first, then the whole image is squashed to size x size (`_fit`).
    Multi-frame files (GIF, TIFF) give their first frame; EXIF rotation is applied."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    path = source if name is None else name
    if isinstance(source, archive.Member):
        source = source.read_bytes()
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            im.draft("RGB", (size, size))    # a large JPEG decodes at 1/2..1/8 scale: much faster
            im = _to_rgb(ImageOps.exif_transpose(im))
    except FileNotFoundError:
        raise UserError(f"image {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not an image file; pass an image file") from None
    except Image.DecompressionBombError as e:
        raise UserError(f"cannot read image {path}: {e}; use a smaller image") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, TypeError) as e:
        raise UserError(f"cannot read image {path}: not an image file Pillow can open ({type(e).__name__}); "
                        "remove or replace it") from None
    return np.asarray(_fit(im, size))


def _visible(folder):
    """(name, is_dir, path) of the entries of folder (a real one or an `archive.Folder`, whose
    paths are its nodes), sorted by name, without hidden files: dotfiles (.DS_Store, ._x,
    .ipynb_checkpoints) and OS_FILES."""
    if isinstance(folder, archive.Folder):
        entries = folder.entries()
    else:
        try:
            with os.scandir(folder) as it:
                entries = [(e.name, e.is_dir(), e.path) for e in it]
        except (NotADirectoryError, FileNotFoundError):
            raise UserError(f"{folder} is not a folder; pass a folder of class folders") from None
    return sorted(e for e in entries if not e[0].startswith(".") and e[0] not in OS_FILES)


READ_AHEAD = 256, 64 << 20    # images, bytes read from an archive and not yet decoded, at most


def _sources(files):
    """(position, what read_image opens, its name) of each file, in the order to read them:
    paths as they are, archive members as `archive.contents` gives them."""
    if files and isinstance(files[0], archive.Member):
        return archive.contents(files)
    return ((i, path, None) for i, path in enumerate(files))


def read_images(files, progress=True, size=IMAGE_SIZE):
    """uint8 (N, 32, 32, 3) of the files (paths, or members of one archive), decoded by a thread
    pool (Pillow decodes without the GIL)."""
    x = np.empty((len(files), *image_shape(size)), np.uint8)   # filled in place: no list of copies
    bar = None
    if progress and len(files) > PROGRESS_FROM:
        import keras
        with contextlib.redirect_stdout(sys.stderr):   # stdout may be a --json stream
            print(f"reading {len(files)} images")
            # Redrawn in place on a terminal; a log file gets one line at the end, not 60 redraws.
            bar = keras.utils.Progbar(len(files), verbose=1 if sys.stderr.isatty() else 2, unit_name="image")
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2)
    pending, done = collections.deque(), 0
    held = 0       # bytes in flight

    def collect():
        nonlocal done, held
        i, nbytes, future = pending.popleft()
        x[i] = future.result()
        held -= nbytes
        done += 1
        if bar is not None and (done % 1000 == 0 or done == len(files)):
            with contextlib.redirect_stdout(sys.stderr):
                bar.update(done)

    try:
        for i, source, name in _sources(files):
            nbytes = len(source) if isinstance(source, bytes) else 0
            pending.append((i, nbytes, pool.submit(read_image, source, name, size)))
            held += nbytes
            # Wait for the oldest while too much is in flight: memory stays bounded however
            # large the archive, and a bad file stops the load soon after it is met.
            while len(pending) > READ_AHEAD[0] or held > READ_AHEAD[1]:
                collect()
        while pending:
            collect()
    finally:
        pool.shutdown(cancel_futures=True)    # a bad file stops the load now, not after every file
    return x


def image_files(folder):
    """The visible files of a folder of images, sorted by name; a folder inside is an error."""
    entries = _visible(folder)
    inner = [path for _, is_dir, path in entries if is_dir]
    if inner:
        raise UserError(f"{inner[0]} is a folder inside {folder}, which should hold image files only "
                        "(DIR/<class>/<images>): move its images up or remove it")
    return [path for _, _, path in entries]


def _class_files(folder, min_images=1, why=""):
    """Class names (sorted folder names) and each class's image paths (sorted file names)."""
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; pass a folder of class folders (DIR/<class>/<images>)")
    classes = [(name, path) for name, is_dir, path in _visible(folder) if is_dir]
    if not classes:
        raise UserError(f"{folder} has no class folders; expected {folder}/<class>/<image files>")
    files = []
    for name, path in classes:
        found = image_files(path)
        if not found:
            raise UserError(f"class folder {path} is empty; add images to it or remove it")
        if len(found) < min_images:
            raise UserError(f"class folder {path} has {len(found)} image(s), fewer than the {min_images}"
                            f"{why}; add images to it or remove it")
        files.append(found)
    return [name for name, _ in classes], files


def _labelled(ids, files):
    """(paths, y) of class folders' files, in load order: ids[k] is the label of every file in files[k]."""
    return [p for fs in files for p in fs], np.repeat(np.asarray(ids, dtype=np.int64), [len(fs) for fs in files])


def _load_classes(folder, progress=True, min_images=1, why="", size=IMAGE_SIZE):
    names, files = _class_files(folder, min_images, why)
    paths, y = _labelled(range(len(names)), files)
    return read_images(paths, progress, size), y, dict(enumerate(names)), [str(p) for p in paths]


@contextlib.contextmanager
def _opened(path):
    """The folder at `path`; or, when `path` is a file, the archive's root folder while it is
    open. An archive holding a single folder (`zip -r x.zip photos/`) is read as that folder, unless
    that folder holds only files (then it is the one class folder of the archive) or is train/."""
    path = Path(path).expanduser()
    if not path.is_file():
        yield path
        return
    with archive.open(path) as root:
        entries = _visible(root)
        if len(entries) == 1 and entries[0][1] and entries[0][0] != "train":
            inner = entries[0][2]
            if any(is_dir for _, is_dir, _ in _visible(inner)):
                root = inner
        yield root


@contextlib.contextmanager
def files_under(path):
    """Every visible file a path names, in sorted order at every depth: the file itself, or each
    file in a folder or in a .zip/.tar/.tar.gz (read in place, while the block lasts)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path} does not exist; pass image files, folders or archives of images")
    if path.is_file() and not archive.is_archive(path):
        yield [str(path)]
        return

    def walk(folder):
        for _, is_dir, entry in _visible(folder):
            yield from walk(entry) if is_dir else [entry]
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(archive.open(path)) if path.is_file() else path
        found = list(walk(root))
        if not found:
            raise UserError(f"{path} holds no files; pass image files, folders or archives of images")
        yield found


def load_classes(folder, progress=True, size=IMAGE_SIZE):
    """A single level of class folders, DIR/<class>/<images>: every visible file must be an image.
    DIR may be a .zip/.tar/.tar.gz of one, read in place.

    Returns (x uint8 (N, size, size, 3), y int64 (N,), class_names {id: name}, paths), class ids being
    positions in the sorted folder names and files in sorted name order within each class."""
    with _opened(folder) as root:
        return _load_classes(root, progress, size=size)


def split_classes(y, class_names, test_fraction, seed):
    """(train indices, test indices): round(test_fraction * n) of each class's n images, at least
    one and at most n - 1, chosen by `seed` and the class name alone (so adding or renaming
    another class, or listing files in another order, changes nothing)."""
    test = []
    for c, name in class_names.items():
        ix = np.flatnonzero(y == c)
        n_test = min(max(1, round(test_fraction * len(ix))), len(ix) - 1)
        rng = np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(name.encode())])
        test.append(ix[rng.permutation(len(ix))[:n_test]])
    test = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(y)), test), test


def _from_classes(root, test_fraction, seed, part=Part()):
    names, files = _class_files(root, 2, " a class needs (one to train on, one to test with)")
    names = dict(enumerate(names))
    paths, y = _labelled(list(names), files)
    # The split needs only the labels: the files are listed, split, then only those `part` reads
    # are decoded, all in one pass (an archive is read once, in its own order).
    train, test = (part.take(split, idx) for split, idx in zip(SPLITS, split_classes(y, names, test_fraction, seed)))
    x = read_images([paths[i] for i in np.concatenate([train, test])], size=part.size)
    return Dataset(x[:len(train)], y[train], x[len(train):], y[test], names, source=str(root),
                   train_paths=[str(paths[i]) for i in train])


def _from_tree(root, part=Part()):
    if not (root / "test").is_dir():
        raise UserError(f"{root} has train/ but no test/ folder; the image tree needs both "
                        "(or pass a folder of class folders, split by --test-fraction)")
    class_names, train_files = _class_files(root / "train")
    ids = {name: i for i, name in enumerate(class_names)}
    test_names, test_files = _class_files(root / "test")
    unknown = [n for n in test_names if n not in ids]
    if unknown:
        raise UserError(f"{root / 'test' / unknown[0]} is a class that train/ does not have; "
                        "train/ and test/ must use the same class folders")
    read = {}
    for split, labels_of, files in (("train", range(len(class_names)), train_files),
                                    ("test", [ids[n] for n in test_names], test_files)):
        paths, y = (part.take(split, v) for v in _labelled(labels_of, files))
        read[split] = read_images(paths, size=part.size), y, [str(p) for p in paths]
    (x, y, paths), (xt, yt, _) = read["train"], read["test"]
    return Dataset(x, y, xt, yt, dict(enumerate(class_names)), source=str(root), train_paths=paths)


def _download(part=Part()):
    import keras
    # Keras' load_data unpickles both splits whole: a part of a download already made is read
    # from its cache folder alone.
    if part.splits == SPLITS and part.limit is None or downloaded() is None:
        try:
            keras.datasets.cifar100.load_data(label_mode="fine")
        except Exception as e:  # no network, refused, interrupted download...
            raise UserError(f"no data given and downloading CIFAR-100 failed ({type(e).__name__}); "
                            f"{LOCAL_COPY_HINT}") from None
    # Keras (>= 3.6) keeps the extracted official folder in its cache: read it with the same
    # loader, which also gives class names and coarse labels.
    folder = downloaded()
    if folder is None:
        raise UserError(f"CIFAR-100 downloaded but its folder was not found under {_keras_cache()}; "
                        f"{LOCAL_COPY_HINT}")
    return _from_folder(folder, part)


def _keras_cache():
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"


def downloaded():
    """The folder of the CIFAR-100 that Keras downloaded before, if there is one."""
    cache = _keras_cache()
    for folder in (cache / "cifar-100-python-target" / "cifar-100-python", cache / "cifar-100-python"):
        if (folder / "meta").is_file():
            return folder
    return None


def resolve(data_dir=None):
    """The data path the user asked for (flag, then $CIFAR100_DIR), or None for download."""
    return data_dir or os.environ.get("CIFAR100_DIR") or None


def load(data_dir=None, test_fraction=TEST_FRACTION, seed=0, split=None, limit=None, size=IMAGE_SIZE):
    """Load a Dataset from --data-dir, $CIFAR100_DIR, or the Keras download, its images `size` x
    `size`. A folder of class
    folders is split per class by `test_fraction` and `seed` (see `split_classes`).

    `split` ("train" or "test"): read that split alone, the other's arrays left empty; `limit`:
    only the first `limit` images of each split read. Either way the arrays are the same as the
    first ones of the whole load's, and everything is checked as it is listed; images and
    pickles outside the part are never decoded."""
    if split not in (None, *SPLITS) or (limit is not None and limit < 0):
        raise ValueError(f"split {split!r}, limit {limit!r}")   # a caller's bug, not the user's
    part = Part(SPLITS if split is None else (split,), limit, size)
    data_dir = resolve(data_dir)
    if data_dir is None:
        return _download(part)
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise UserError(f"data path {path} does not exist; {LOCAL_COPY_HINT}")
    with _opened(path) as root:
        return _from_root(root, test_fraction, seed, part)


def _from_root(path, test_fraction, seed, part):
    """The data in a folder, a real one or an archive's."""
    if (path / "train").is_dir():
        return _from_tree(path, part)
    if (path / "train").is_file() or (path / "meta").is_file():
        return _from_folder(path, part)
    if (path / "cifar-100-python").is_dir():
        return _from_folder(path / "cifar-100-python", part)
    if isinstance(path, Path) and (path / "cifar-100-python.tar.gz").is_file():   # not inside an archive
        with _opened(path / "cifar-100-python.tar.gz") as root:
            return _from_root(root, test_fraction, seed, part)
    if any(is_dir for _, is_dir, _ in _visible(path)):
        return _from_classes(path, test_fraction, seed, part)
    raise UserError(f"{path} holds no CIFAR data (no train/test/meta pickles, no "
                    f"cifar-100-python.tar.gz, no class folders of images); {LOCAL_COPY_HINT}")
