"""Zip and tar archives of image folders, read in place: nothing is ever extracted to disk.

`open(path)` lists an archive once into a tree of `Folder`s and `Member`s that answer the few
questions the loader (data.py) asks of a real folder (`/`, is_dir, is_file, read_bytes, str),
so a class folder inside an archive goes through the same code as one on disk: the same
sorting, hidden-file rules, class ids, split and errors.

Reading: a member stored uncompressed (the usual zip of JPEGs, a plain .tar) lies as-is at a
known offset of the file, so any thread reads it with one `os.pread` (no shared file position,
no lock). Compressed members go through zipfile/tarfile, whose objects are not safe to share
between threads, and a .tar.gz read out of order decompresses again from its start for every
step back: `contents` reads those in the archive's own order, in the calling thread.

An archive is refused whole, before any image is read, if an entry is named outside it (`..`, an
absolute path), is a link or device, or declares an absurd size, alone or with the others (a
zip bomb). Reading a member never reads more than one byte past its declared size, and a
member whose bytes are not exactly that size (or fail the zip's CRC) is refused: so the bytes
actually read are capped too, whatever the headers say.
"""
import contextlib
import os
import stat
import struct
import tarfile
import threading
import zipfile
import zlib
from pathlib import Path

from .errors import UserError

# No image file is this big: Pillow refuses images over 179 M pixels (its decompression-bomb
# limit), and a photo of that size is a fraction of it. The total is 300 times the 55,000
# Tiny ImageNet JPEGs; far more than a 32x32 training set can hold in memory.
MAX_MEMBER_BYTES = 256 << 20
MAX_TOTAL_BYTES = 32 << 30
_READ_ERRORS = (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError, ValueError,
                RuntimeError, NotImplementedError)   # RuntimeError: encrypted; NotImplementedError: method


def _size(n):
    return f"{n >> 30} GiB" if n >= 1 << 30 and not n % (1 << 30) else f"{n / (1 << 20):g} MiB"


class Folder:
    """A folder inside an archive, as far as the loader asks about folders."""
    __slots__ = ("path", "children")

    def __init__(self, path):
        self.path = path
        self.children = {}

    def __str__(self):
        return self.path

    def __truediv__(self, name):
        return self.children.get(name) or _Absent(f"{self.path}/{name}")

    def is_dir(self):
        return True

    def is_file(self):
        return False

    def exists(self):
        return True

    def entries(self):
        """(name, is_dir, node) of every entry, sorted by name (as data._visible lists a folder)."""
        # Names are unique within a folder, so the sort never compares the nodes themselves.
        return sorted((name, isinstance(node, Folder), node) for name, node in self.children.items())


class Member:
    """A file inside an archive."""
    __slots__ = ("path", "archive", "info", "size", "offset")

    def __init__(self, path, archive, info, size, offset):
        self.path, self.archive, self.info, self.size, self.offset = path, archive, info, size, offset

    def __str__(self):
        return self.path

    def is_dir(self):
        return False

    def is_file(self):
        return True

    def exists(self):
        return True

    def read_bytes(self):
        """The member's bytes; safe from any thread (compressed members take turns)."""
        return self.archive.read(self)


class _Absent:
    """`folder / name` where the archive has no such entry."""
    __slots__ = ("path",)

    def __init__(self, path):
        self.path = path

    def __str__(self):
        return self.path

    def is_dir(self):
        return False

    is_file = exists = is_dir


def _kind(path):
    """'.zip', '.tar', '.tar.gz', ... told from the first bytes, never from the file's name (a
    .tar.gz of the official pickles and one of image folders differ only inside)."""
    with Path(path).open("rb") as f:
        head = f.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return ".zip"
    for magic, kind in ((b"\x1f\x8b", ".tar.gz"), (b"BZh", ".tar.bz2"), (b"\xfd7zXZ\x00", ".tar.xz")):
        if head.startswith(magic):
            return kind
    if head[257:262] == b"ustar" or tarfile.is_tarfile(path):
        return ".tar"
    raise UserError(f"{path} is not a readable .tar.gz, .tar or .zip archive (nor a folder); pass a folder "
                    "of class folders, a train/ + test/ tree, an archive of one, or the official "
                    "cifar-100-python.tar.gz")


def is_archive(path):
    """Whether the file at `path` is a zip or tar archive (of any compression), by its bytes."""
    try:
        _kind(path)
    except (UserError, OSError):
        return False
    return True


def _parts(name, where):
    """The path components of an entry's name; a name reaching outside the archive is refused."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UserError(f"{where} holds an entry with an absolute path ({name!r}); an archive of "
                        "image folders names its entries relative to itself: re-create it")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UserError(f"{where} holds an entry named with '..' ({name!r}), pointing outside the "
                        "archive; re-create the archive from the folder itself")
    return parts


class Archive:
    """An open archive: its tree (`root`) and its reader. Use through `open`."""

    def __init__(self, path):
        self.path = str(path)
        self.root = Folder(self.path)
        self.total = 0
        self._lock = threading.Lock()       # the zipfile/tarfile object, for compressed members
        self._zip = self._tar = None
        try:
            self.kind = _kind(path)
            self._fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise UserError(f"cannot read {path} ({e.strerror}); check its permissions") from None
        try:
            if self.kind == ".zip":
                self._zip = zipfile.ZipFile(path)
                self._list_zip()
            else:
                self._tar = tarfile.open(path, "r:*")
                self._list_tar()
        except _READ_ERRORS as e:
            self.close()
            raise self._damaged(self.path, e) from None
        except UserError:
            self.close()
            raise

    def _damaged(self, what, e):
        return UserError(f"{what} is not a readable {self.kind} (truncated or damaged? {type(e).__name__}: "
                         f"{e}); re-download or re-create the archive")

    def close(self):
        for handle in (self._zip, self._tar):
            if handle is not None:
                handle.close()
        os.close(self._fd)

    def _add(self, name, is_dir, info=None, size=0, offset=0):
        parts = _parts(name, self.path)
        if not parts:           # the archive's own root, "./"
            return
        if not is_dir:
            if size > MAX_MEMBER_BYTES:
                raise UserError(f"{self.path}: entry {name!r} declares {size:,} bytes, more than any image "
                                f"file ({_size(MAX_MEMBER_BYTES)}); refused as a likely zip bomb")
            self.total += size
            if self.total > MAX_TOTAL_BYTES:
                raise UserError(f"{self.path} declares more than {_size(MAX_TOTAL_BYTES)} of files; "
                                "refused as a likely zip bomb (split it, or pass the extracted folder)")
        folder = self.root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            node = folder.children.get(part)
            if last and not is_dir:
                if node is not None:
                    raise UserError(f"{self.path} holds {name!r} twice, or both as a file and as a folder; "
                                    "re-create the archive")
                folder.children[part] = Member(f"{folder.path}/{part}", self, info, size, offset)
                return
            if node is None:
                node = folder.children[part] = Folder(f"{folder.path}/{part}")
            elif not isinstance(node, Folder):
                raise UserError(f"{self.path} holds {'/'.join(parts[:i + 1])!r} twice, or both as a file and "
                                "as a folder; re-create the archive")
            folder = node

    def _list_zip(self):
        for info in self._zip.infolist():
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise UserError(f"{self.path}: entry {info.filename!r} is a symbolic link; archive the "
                                "image files themselves (zip without --symlinks)")
            self._add(info.filename, info.is_dir(), info, info.file_size, info.header_offset)

    def _list_tar(self):
        for m in self._tar:     # checked one by one: a bomb is refused before tarfile skips over it
            if not (m.isfile() or m.isdir()):
                raise UserError(f"{self.path}: entry {m.name!r} is a link or special file; archive the "
                                "image files themselves (tar --dereference --hard-dereference)")
            self._add(m.name, m.isdir(), m, m.size, m.offset_data)

    def stored(self, member):
        """Whether the member's bytes lie as they are in the file (readable by os.pread)."""
        if self.kind == ".zip":
            info = member.info
            return (info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1      # not encrypted
                    and info.compress_size == info.file_size)
        return self.kind == ".tar"

    def read(self, member):
        """The member's bytes: exactly as many as it declares, or a UserError."""
        try:
            if self.stored(member):
                blob = self._pread(member)
            else:
                with self._lock:
                    if self.kind == ".zip":
                        with self._zip.open(member.info) as f:
                            blob = f.read(member.size + 1)
                    else:
                        blob = self._tar.extractfile(member.info).read(member.size + 1)
        except _READ_ERRORS as e:
            raise self._damaged(f"{self.path} (at {member.path})", e) from None
        if len(blob) != member.size:
            more = "more than" if len(blob) > member.size else "only"
            raise UserError(f"{member} holds {more} {len(blob):,} bytes where the archive declares "
                            f"{member.size:,}; {self.path} is truncated or damaged: re-download or re-create it")
        return blob

    def _pread(self, member):
        if self.kind != ".zip":
            return os.pread(self._fd, member.size, member.offset)
        # A zip entry: its local header (30 bytes, then name and extra field of lengths given
        # there, which may differ from the central directory's), then the data. One read
        # usually covers all three.
        head = os.pread(self._fd, 30 + 300 + member.size, member.offset)
        if head[:4] != b"PK\x03\x04" or len(head) < 30:
            raise zipfile.BadZipFile(f"no local header at offset {member.offset}")
        start = 30 + sum(struct.unpack("<HH", head[26:30]))
        blob = head[start:start + member.size]
        if len(blob) < member.size:
            blob = os.pread(self._fd, member.size, member.offset + start)
        if len(blob) == member.size and zlib.crc32(blob) != member.info.CRC:
            raise zipfile.BadZipFile("Bad CRC-32")
        return blob


def contents(members):
    """(position in `members`, source, name) of each member of one archive, in the archive's
    order: a stored member as itself (whichever thread decodes it reads it, `read_bytes`),
    a compressed one as its bytes, read here."""
    for i in sorted(range(len(members)), key=lambda i: members[i].offset):
        member = members[i]
        stored = member.archive.stored(member)
        yield i, member if stored else member.archive.read(member), member.path


@contextlib.contextmanager
def open(path):
    """The archive at `path` as its root `Folder`, readable until the block ends."""
    archive = Archive(path)
    try:
        yield archive.root
    finally:
        archive.close()
