"""ObjectStore on the local filesystem: the object `key` of `bucket` is the file `root/<bucket>/<key>`."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from stat import S_ISREG

from shared.errors import AdapterError, ConfigurationError, Conflict, ObjectNotFound
from shared.ports import ObjectInfo

# Temp files live next to their target (os.replace/os.link stay within one filesystem); keys may not use the prefix.
TMP_PREFIX = ".nacelle-tmp-"
TEMP_MIN_AGE_S = 5.0  # sweep_temp_files leaves younger temp files alone


def key_problem(key: str) -> str | None:
    """Why `key` cannot name an object here, else None."""
    if not key:
        return "empty"
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not UTF-8 (surrogate escapes)
        return "is not valid UTF-8"
    if "\\" in key:
        return "contains a backslash"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        return "contains a control character"
    for segment in key.split("/"):  # also catches a leading '/', a trailing '/' and '//'
        if segment in ("", ".", ".."):
            return "has an empty, '.' or '..' segment"
        if segment.startswith(TMP_PREFIX):
            return f"has a segment starting with the reserved {TMP_PREFIX!r}"
    return None


def remove_if_abandoned(tmp: Path, min_age_s: float = TEMP_MIN_AGE_S) -> bool:
    """Remove a temp file whose writer died: a live writer holds a lock on its temp file until it is
    gone, a dead one's lock went with its process (a file younger than `min_age_s` is left: its writer
    may not have taken the lock yet). True when removed."""
    try:
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:  # gone meanwhile, or not a plain file
        return False
    try:
        if time.time() - os.fstat(fd).st_mtime < min_age_s:
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a writer is at work
    finally:
        os.close(fd)
    tmp.unlink(missing_ok=True)
    return True


def _etag(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()  # what S3 reports for a single-part upload


class FsObjectStore:
    """Writes are atomic (a temp file renamed into place); `put_if_absent` hard-links the finished temp file, so
    it is atomic too and never shows a partial object. Content types are not kept.

    Unlike S3, a key cannot be both an object and a "folder" (`a` and `a/b`): that write raises Conflict.
    """

    def __init__(self, root: Path, bucket: str) -> None:
        if key_problem(bucket) or "/" in bucket:
            raise ConfigurationError(f"unsafe bucket name {bucket!r}")
        self.root = root
        self.bucket = bucket
        self._base = (root / bucket).resolve()

    def path(self, key: str) -> Path:
        """The file of `key`; raises ConfigurationError for a key that could leave the bucket directory."""
        if problem := key_problem(key):
            raise ConfigurationError(f"unsafe object key {key!r}: {problem}")
        path = self._base.joinpath(*key.split("/"))
        if not path.resolve().is_relative_to(self._base):  # a symlink inside the tree pointing out
            raise ConfigurationError(f"unsafe object key {key!r}: resolves outside {self._base}")
        return path

    def uri(self, key: str) -> str:
        self.path(key)
        return f"s3://{self.bucket}/{key}"

    def get(self, key: str) -> bytes:
        path = self.path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
            raise ObjectNotFound(f"no object {self.uri(key)}") from e
        except OSError as e:
            raise AdapterError(f"cannot read {path}: {e}") from e

    def size(self, key: str) -> int:
        path = self.path(key)
        try:
            stat = path.stat()
        except (FileNotFoundError, NotADirectoryError) as e:
            raise ObjectNotFound(f"no object {self.uri(key)}") from e
        except OSError as e:
            raise AdapterError(f"cannot read {path}: {e}") from e
        if not S_ISREG(stat.st_mode):  # a prefix of other objects
            raise ObjectNotFound(f"no object {self.uri(key)}")
        return stat.st_size

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self.path(key)
        with self._temp(key, path, data) as tmp:
            try:
                tmp.replace(path)
            except IsADirectoryError as e:
                raise Conflict(f"cannot write {self.uri(key)}: the key is a prefix of other objects") from e
            except OSError as e:
                raise AdapterError(f"cannot write {path}: {e}") from e

    def put_if_absent(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> bool:
        path = self.path(key)
        with self._temp(key, path, data) as tmp:
            try:
                os.link(tmp, path)  # fails with FileExistsError if the name exists: check-and-create in one step
                return True
            except FileExistsError as e:
                if path.is_dir():
                    raise Conflict(f"cannot write {self.uri(key)}: the key is a prefix of other objects") from e
                return False
            except OSError as e:  # e.g. a filesystem without hard links
                raise AdapterError(f"cannot write {path}: {e}") from e

    def sweep_temp_files(self, prefix: str = "", min_age_s: float = TEMP_MIN_AGE_S) -> list[Path]:
        """Remove the temp files of writers that died (kill -9 mid-write) under the folder `prefix`
        (remove_if_abandoned); returns what was removed."""
        start = self.path(prefix.rstrip("/")) if prefix.strip("/") else self._base
        return [tmp for directory, _dirnames, filenames in os.walk(start) for name in filenames
                if name.startswith(TMP_PREFIX) and remove_if_abandoned(tmp := Path(directory, name), min_age_s)]

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list(self, prefix: str) -> list[ObjectInfo]:
        # Start at the deepest directory the prefix names in full; an invalid one contains no valid key.
        head = prefix.rpartition("/")[0]
        if head and key_problem(head):
            return []
        start = self.path(head) if head else self._base
        infos = []
        for directory, dirnames, filenames in os.walk(start):  # does not follow directory symlinks
            dirnames.sort()
            for name in filenames:
                file = Path(directory, name)
                key = file.relative_to(self._base).as_posix()
                if not key.startswith(prefix) or key_problem(key) or file.is_symlink():
                    continue  # temp files fail key_problem
                try:
                    data = file.read_bytes()
                except FileNotFoundError:  # deleted while listing
                    continue
                infos.append(ObjectInfo(key=key, size=len(data), etag=_etag(data)))
        return sorted(infos, key=lambda info: info.key)

    @contextlib.contextmanager
    def _temp(self, key: str, path: Path, data: bytes) -> Iterator[Path]:
        """A finished temp file of `data` beside `path`, locked (sweep_temp_files) until it is removed."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as e:
            raise Conflict(f"cannot write {self.uri(key)}: a prefix of the key is an object") from e
        fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
        tmp = Path(name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.fchmod(fd, 0o644)  # mkstemp makes 0600; objects are ordinary files
            with open(fd, "wb", closefd=False) as f:
                f.write(data)
            yield tmp
        finally:
            tmp.unlink(missing_ok=True)
            os.close(fd)
