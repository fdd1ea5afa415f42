"""`nacelle data put` and the raw-folder watcher under kill -9, hostile names and links: nothing stored is
left without its event, nothing half-written survives, one bad entry never stops the rest."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nacelle.cli import main
from nacelle.local.adapters.objectstore import TEMP_MIN_AGE_S
from nacelle.local.adapters.paths import BUCKET
from nacelle.local.runtime.s3events import NotifiedKeys, RawWatcher
from nacelle.local.runtime.stack import Stack
from tests.integration.conftest import write_config

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
FILES = 80


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    write_config(home)
    return home


def announced_keys(stack: Stack) -> set[str]:
    """Object keys with an Object Created event on the bus."""
    ids = {d.event_id for d in stack.bus.deliveries()}
    events = [stack.bus.event(i) for i in ids]
    return {e["detail"]["object"]["key"] for e in events if e.get("detail-type") == "Object Created"}


def stored(stack: Stack, prefix: str = "raw/") -> tuple[set[str], list[Path]]:
    root = stack.paths.bucket_dir
    files = [p for p in root.rglob("*") if p.is_file()]
    temps = [p for p in files if p.name.startswith(".nacelle-tmp-")]
    keys = {p.relative_to(root).as_posix() for p in files if p not in temps}
    return {k for k in keys if k.startswith(prefix)}, temps


def put_process(home: Path, src: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "nacelle.cli", "--data-dir", str(home), "data", "put", str(src)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def test_kill_9_during_put_then_a_rerun_loses_nothing(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "upload" / "wt-01"
    src.mkdir(parents=True)
    for i in range(FILES):
        (src / f"part{i:02d}.csv").write_bytes(os.urandom(300_000))  # large enough to kill mid-write
    rng = random.Random(5)
    raw = home / "objects" / BUCKET / "raw"

    def count() -> int:
        return sum(1 for p in raw.rglob("part*.csv")) if raw.is_dir() else 0

    interrupted = 0
    for _ in range(5):
        before = count()
        proc = put_process(home, src)
        deadline = time.monotonic() + 30
        while count() == before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)  # until this put stores its first file
        time.sleep(rng.uniform(0.0, 0.03))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        interrupted += count() < FILES
    assert interrupted >= 3  # the kills landed mid-put
    _, left = stored(Stack(home))
    past = time.time() - TEMP_MIN_AGE_S - 1  # older than a writer could be before it locks its temp file
    for tmp in left:
        os.utime(tmp, (past, past))
    assert main(["--data-dir", str(home), "data", "put", str(src)]) == 0
    stack = Stack(home)
    keys, temps = stored(stack)
    assert keys == {f"raw/wt-01/part{i:02d}.csv" for i in range(FILES)}
    assert temps == []  # the killed puts' temp files were swept
    assert keys <= announced_keys(stack)  # every stored file has its event


def test_a_file_stored_without_its_event_is_announced_by_the_next_put(home: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "upload" / "wt-02"
    src.mkdir(parents=True)
    (src / "a.csv").write_text("t,x\n1,2\n")
    stack = Stack(home)
    stack.store.inner.put_if_absent("raw/wt-02/a.csv", b"t,x\n1,2\n")  # the put was killed right here
    assert "raw/wt-02/a.csv" not in announced_keys(stack)
    assert main(["--data-dir", str(home), "data", "put", str(src)]) == 0
    assert "announced raw/wt-02/a.csv" in capsys.readouterr().out
    assert "raw/wt-02/a.csv" in announced_keys(stack)
    assert main(["--data-dir", str(home), "data", "put", str(src)]) == 0  # and only once
    assert "1 already present (identical; 0 of them announced now)" in capsys.readouterr().out


def test_the_watcher_announces_what_a_killed_writer_left_unannounced(home: Path) -> None:
    stack = Stack(home)
    stack.store.inner.put_if_absent("raw/wt-03/b.csv", b"t,x\n1,2\n")
    watcher = RawWatcher(stack.paths.bucket_dir, BUCKET, stack.bus.put, NotifiedKeys(home / "s3events.db"))
    assert watcher.scan() == [] and watcher.scan() == ["raw/wt-03/b.csv"]
    assert "raw/wt-03/b.csv" in announced_keys(stack)


def test_hostile_names_and_links_are_refused_one_by_one(home: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "upload" / "wt-04"
    src.mkdir(parents=True)
    (src / "good.csv").write_text("t,x\n1,2\n")
    (src / "back\\slash.csv").write_text("t,x\n")
    (src / "bell\x07.csv").write_text("t,x\n")
    Path(os.fsdecode(bytes(src) + b"/latin1-\xe9.csv")).write_text("t,x\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the object store")
    (src / "link.csv").symlink_to(secret)
    (src / "linked-dir").symlink_to(tmp_path, target_is_directory=True)
    assert main(["--data-dir", str(home), "data", "put", str(src)]) == 1
    out, err = capsys.readouterr()
    assert "uploaded raw/wt-04/good.csv" in out and "1 uploaded" in out and "5 refused" in out
    for reason in ("backslash", "control character", "not valid UTF-8", "symbolic link"):
        assert reason in err
    stack = Stack(home)
    assert stored(stack)[0] == {"raw/wt-04/good.csv"}
    assert announced_keys(stack) == {"raw/wt-04/good.csv"}


def test_the_watcher_survives_bad_entries_and_announces_the_rest(home: Path, tmp_path: Path) -> None:
    stack = Stack(home)
    raw = stack.paths.raw_dir / "wt-05"
    raw.mkdir(parents=True)
    Path(os.fsdecode(bytes(raw) + b"/\xff.csv")).write_text("t,x\n")
    (raw / "link.csv").symlink_to(tmp_path / "elsewhere.csv")
    (raw / "ok.csv").write_text("t,x\n1,2\n")
    abandoned = raw / ".nacelle-tmp-killed"  # a writer died mid-write
    abandoned.write_bytes(b"half")
    os.utime(abandoned, (0, 0))
    watcher = RawWatcher(stack.paths.bucket_dir, BUCKET, stack.bus.put, NotifiedKeys(home / "s3events.db"))
    for _ in range(3):
        watcher.scan()
    assert announced_keys(stack) == {"raw/wt-05/ok.csv"} and not abandoned.exists()


def test_a_live_writers_temp_file_is_never_swept(home: Path) -> None:
    store = Stack(home).store.inner
    path = store.path("raw/wt-06/x.csv")
    with store._temp("raw/wt-06/x.csv", path, b"data") as tmp:
        os.utime(tmp, (0, 0))  # old enough, but its writer holds the lock
        assert store.sweep_temp_files("raw/", min_age_s=0) == []
        assert tmp.exists()
    stray = path.parent / ".nacelle-tmp-dead"
    stray.write_bytes(b"half")
    os.utime(stray, (0, 0))
    assert store.sweep_temp_files("raw/") == [stray] and not stray.exists()  # nobody holds its lock
