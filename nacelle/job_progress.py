"""Following a local job's log while it runs: the lines written since the last look, and the few of them
that say how far the job is (data loaded, which candidate and split, epoch k/n with its loss, the choice).

`nacelle jobs logs JOB --follow` and `nacelle demo` read the runner's log (it holds the training's own
output too); nothing here changes the job.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

EPOCH = re.compile(r"^epoch (?P<k>\d+)/(?P<n>\d+) train_loss=(?P<loss>[^;\s]+); val_loss=(?P<val>[^;\s]+)")
SPLIT = re.compile(r"^(?P<family>\w+) split (?P<k>\d+)/(?P<n>\d+):")
REFIT = re.compile(r"^refit (?P<family>\w+) ")
# lines shown as they are (cut to MAX_NOTE characters)
MILESTONES = ("loaded ", "pca: ", "early stop ", "candidate ", "chosen: ", "equivalence on ", "edge bundle written",
              "training diverged")
MAX_NOTE = 86  # a note fits a 100-column line after a short label


def job_log(job: Any) -> Path:
    """The log of a local job (a nacelle.local.adapters.jobs.JobRecord): the runner's, which also holds the
    training's output; a job from before runner logs existed has only output/train.log."""
    runner = Path(job.job_dir) / "runner.log"
    train = Path(job.job_dir) / "output" / "train.log"
    return train if not runner.is_file() and train.is_file() else runner


class LogFollower:
    """The complete lines appended to a file since the previous call (the file may not exist yet)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self._partial = b""

    def lines(self, final: bool = False) -> list[str]:
        """New complete lines; with `final`, the unfinished last one too (the writer has stopped)."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            chunk = b""
        self.offset += len(chunk)
        data = self._partial + chunk
        cut = data.rfind(b"\n") + 1
        complete, self._partial = data[:cut], data[cut:]
        out = complete.decode("utf-8", errors="replace").splitlines()
        if final and self._partial:
            out.append(self._partial.decode("utf-8", errors="replace"))
            self._partial = b""
        return out


def follow(path: Path, running: Callable[[], bool], poll_s: float = 0.5,
           sleep: Callable[[float], None] = time.sleep) -> Iterator[str]:
    """Every line of `path`, then the new ones while `running()`, then whatever was written before it stopped."""
    follower = LogFollower(path)
    while True:
        active = running()  # asked before reading: lines written before the end are never missed
        yield from follower.lines(final=not active)
        if not active:
            return
        sleep(poll_s)


class Progress:
    """Turns log lines into short progress notes; an epoch line names the candidate and split it belongs to."""

    def __init__(self) -> None:
        self.context = ""

    def note(self, line: str) -> str | None:
        text = line.strip()
        if m := EPOCH.match(text):
            where = f"{self.context}: " if self.context else ""
            return f"{where}epoch {m['k']}/{m['n']}, loss {_short(m['loss'])} (validation {_short(m['val'])})"
        if m := SPLIT.match(text):
            self.context = f"{m['family']} split {m['k']}/{m['n']}"
            return f"{self.context}: fitting"
        if m := REFIT.match(text):
            self.context = f"refit {m['family']}"
            return text[:MAX_NOTE]
        if text.startswith(MILESTONES):
            return text if len(text) <= MAX_NOTE else text[:MAX_NOTE - 3] + "..."
        return None


def _short(number: str) -> str:
    try:
        return f"{float(number):.4g}"
    except ValueError:
        return number
