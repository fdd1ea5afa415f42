"""ObjectStore contract: S3ObjectStore (moto), FsObjectStore and the MemoryStore double behave the same."""

from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path

import pytest

from nacelle.local.adapters.objectstore import FsObjectStore
from shared.errors import ConfigurationError, Conflict, ObjectNotFound
from shared.ports import ObjectInfo, ObjectStore

from .conftest import BUCKET


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_round_trip_and_overwrite(object_store: ObjectStore) -> None:
    object_store.put("raw/T01/2024-01-01.csv", b"a,b\n1,2\n", "text/csv")
    assert object_store.get("raw/T01/2024-01-01.csv") == b"a,b\n1,2\n"
    assert object_store.exists("raw/T01/2024-01-01.csv")
    object_store.put("raw/T01/2024-01-01.csv", b"replaced")
    assert object_store.get("raw/T01/2024-01-01.csv") == b"replaced"


@pytest.mark.parametrize("data", [b"", bytes(range(256)) * 64], ids=["empty", "binary"])
def test_binary_and_empty_content(object_store: ObjectStore, data: bytes) -> None:
    object_store.put("blobs/x.bin", data)
    assert object_store.get("blobs/x.bin") == data
    assert object_store.list("blobs/") == [ObjectInfo("blobs/x.bin", len(data), md5(data))]


def test_unicode_key(object_store: ObjectStore) -> None:
    object_store.put("specs/größe/ünïcode file.yaml", b"x")
    assert object_store.get("specs/größe/ünïcode file.yaml") == b"x"
    assert [i.key for i in object_store.list("specs/")] == ["specs/größe/ünïcode file.yaml"]


def test_missing_object(object_store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound, match=re.escape("models/none/model.tar.gz")):
        object_store.get("models/none/model.tar.gz")
    with pytest.raises(ObjectNotFound, match=re.escape("models/none/model.tar.gz")):
        object_store.size("models/none/model.tar.gz")
    assert not object_store.exists("models/none/model.tar.gz")


@pytest.mark.parametrize("data", [b"", b"a,b\n1,2\n", bytes(range(256)) * 64], ids=["empty", "text", "binary"])
def test_size_without_reading(object_store: ObjectStore, data: bytes) -> None:
    object_store.put("raw/T01/day.csv", data)
    assert object_store.size("raw/T01/day.csv") == len(data)


def test_a_prefix_is_not_an_object(object_store: ObjectStore) -> None:
    object_store.put("dir/file", b"x")
    assert not object_store.exists("dir")
    with pytest.raises(ObjectNotFound):
        object_store.get("dir")
    with pytest.raises(ObjectNotFound):
        object_store.size("dir")
    with pytest.raises(ObjectNotFound):
        object_store.get("dir/file/deeper")


def test_put_if_absent_writes_once(object_store: ObjectStore) -> None:
    assert object_store.put_if_absent("datasets/g/abc.json", b"first", "application/json") is True
    assert object_store.put_if_absent("datasets/g/abc.json", b"second") is False
    assert object_store.get("datasets/g/abc.json") == b"first"


def test_put_if_absent_same_key_and_content_twice(object_store: ObjectStore) -> None:
    assert object_store.put_if_absent("k", b"same") is True
    assert object_store.put_if_absent("k", b"same") is False
    assert object_store.get("k") == b"same"


def test_put_if_absent_after_plain_put(object_store: ObjectStore) -> None:
    object_store.put("k", b"plain")
    assert object_store.put_if_absent("k", b"other") is False
    assert object_store.get("k") == b"plain"


def test_list_is_sorted_filtered_by_prefix_and_carries_size_and_etag(object_store: ObjectStore) -> None:
    contents = {"b/2": b"bb", "a/2": b"a2", "a/10": b"a10", "a/1": b"1", "ab/x": b"abx", "c": b""}
    for key, data in contents.items():
        object_store.put(key, data)

    assert [i.key for i in object_store.list("")] == ["a/1", "a/10", "a/2", "ab/x", "b/2", "c"]
    assert [i.key for i in object_store.list("a/")] == ["a/1", "a/10", "a/2"]
    assert [i.key for i in object_store.list("a")] == ["a/1", "a/10", "a/2", "ab/x"]  # not a segment boundary
    assert [i.key for i in object_store.list("a/1")] == ["a/1", "a/10"]
    assert object_store.list("nothing/") == []
    for info in object_store.list(""):
        assert info.size == len(contents[info.key])
        assert info.etag == md5(contents[info.key])  # hex, no quotes


def test_list_goes_past_one_page(object_store: ObjectStore) -> None:
    keys = [f"many/{i:05d}" for i in range(1005)]  # ListObjectsV2 pages hold 1000
    for key in reversed(keys):
        object_store.put(key, b"")
    assert [i.key for i in object_store.list("many/")] == keys


def test_uri_speaks_s3(object_store: ObjectStore) -> None:
    assert object_store.bucket == BUCKET
    assert object_store.uri("jobs/j1/output/model.tar.gz") == f"s3://{BUCKET}/jobs/j1/output/model.tar.gz"


# --- local only -------------------------------------------------------------------------------------------------

UNSAFE_KEYS = ["", "/etc/passwd", "../escape", "a/../../escape", "a/..", "..", "a\\b", "a//b", "a/", ".", "a/./b",
               "nul\x00byte", ".nacelle-tmp-x", "d/.nacelle-tmp-y"]


@pytest.fixture
def fs_store(tmp_path: Path) -> FsObjectStore:
    return FsObjectStore(tmp_path / "root", BUCKET)


@pytest.mark.parametrize("key", UNSAFE_KEYS)
def test_unsafe_keys_are_refused(fs_store: FsObjectStore, tmp_path: Path, key: str) -> None:
    before = sorted(tmp_path.rglob("*"))
    for call in (lambda: fs_store.put(key, b"x"), lambda: fs_store.put_if_absent(key, b"x"),
                 lambda: fs_store.get(key), lambda: fs_store.exists(key), lambda: fs_store.uri(key),
                 lambda: fs_store.path(key)):
        with pytest.raises(ConfigurationError) as excinfo:
            call()
        assert repr(key) in str(excinfo.value)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written anywhere


@pytest.mark.parametrize("bucket", ["", "..", "a/b", "a\\b"])
def test_unsafe_bucket_is_refused(tmp_path: Path, bucket: str) -> None:
    with pytest.raises(ConfigurationError):
        FsObjectStore(tmp_path, bucket)


def test_symlink_out_of_the_root_is_refused(fs_store: FsObjectStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    fs_store.put("placeholder", b"")
    (tmp_path / "root" / BUCKET / "link").symlink_to(outside)
    with pytest.raises(ConfigurationError, match="link/secret"):
        fs_store.get("link/secret")
    with pytest.raises(ConfigurationError):
        fs_store.put("link/new", b"x")
    assert not (outside / "new").exists()
    assert [i.key for i in fs_store.list("")] == ["placeholder"]


def test_files_live_under_root_and_bucket(fs_store: FsObjectStore, tmp_path: Path) -> None:
    fs_store.put("raw/T01/f.csv", b"x")
    assert fs_store.path("raw/T01/f.csv") == (tmp_path / "root" / BUCKET / "raw" / "T01" / "f.csv").resolve()
    assert fs_store.path("raw/T01/f.csv").read_bytes() == b"x"


def test_list_ignores_temp_files(fs_store: FsObjectStore, tmp_path: Path) -> None:
    fs_store.put("d/real", b"x")
    (tmp_path / "root" / BUCKET / "d" / ".nacelle-tmp-abc123").write_bytes(b"partial")
    assert [i.key for i in fs_store.list("")] == ["d/real"]


def test_no_temp_files_left_behind(fs_store: FsObjectStore, tmp_path: Path) -> None:
    fs_store.put("a/b", b"1")
    fs_store.put_if_absent("a/b", b"2")
    fs_store.put_if_absent("a/c", b"3")
    assert sorted(p.name for p in (tmp_path / "root" / BUCKET / "a").iterdir()) == ["b", "c"]


def test_object_and_prefix_of_the_same_name_conflict(fs_store: FsObjectStore) -> None:
    # S3 allows both "a" and "a/b"; a filesystem cannot: refused loudly rather than silently lost.
    fs_store.put("a/b", b"x")
    with pytest.raises(Conflict):
        fs_store.put("a", b"y")
    with pytest.raises(Conflict):
        fs_store.put_if_absent("a", b"y")
    fs_store.put("f", b"x")
    with pytest.raises(Conflict):
        fs_store.put("f/g", b"y")


def test_put_if_absent_has_one_winner_across_threads(fs_store: FsObjectStore) -> None:
    results: dict[int, bool] = {}
    barrier = threading.Barrier(8)

    def race(i: int) -> None:
        barrier.wait()
        results[i] = fs_store.put_if_absent("contended", f"writer-{i}".encode() * 1000)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, won in results.items() if won]
    assert len(winners) == 1
    assert fs_store.get("contended") == f"writer-{winners[0]}".encode() * 1000
