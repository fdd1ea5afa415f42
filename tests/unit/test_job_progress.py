"""Following a job's log: new lines as they come, progress notes from them, and the demo's printing of them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from nacelle.demo import JobWatch
from nacelle.job_progress import MAX_NOTE, LogFollower, Progress, follow, job_log

LOG = """train channel: 10 object(s) from datasets/g/abc.json
loaded 467987 samples of 3 turbine(s), 26 labelled fault episode(s)
pca split 1/1: 22114 train, 1049 held-out normal windows
candidate pca: threshold 1.577 (gumbel); validation event_f1=1, point_f1=0.983, false_alarms_per_turbine_day=0
conv1d split 1/2: 22114 train, 1049 held-out normal windows
epoch 1/35 train_loss=0.61856; val_loss=0.51660; 1.12s
epoch 10/35 train_loss=0.27845; val_loss=0.29144; 1.10s
refit conv1d on all 30000 normal windows
epoch 5/12 train_loss=0.2; val_loss=nan; 1.00s
event_f1=0.941176
"""


def test_progress_notes_name_the_candidate_split_and_epoch() -> None:
    progress = Progress()
    notes = [n for n in map(progress.note, LOG.splitlines()) if n is not None]
    assert notes[0] == "loaded 467987 samples of 3 turbine(s), 26 labelled fault episode(s)"
    assert "pca split 1/1: fitting" in notes and notes[-1] == "refit conv1d: epoch 5/12, loss 0.2 (validation nan)"
    assert "conv1d split 1/2: epoch 10/35, loss 0.2784 (validation 0.2914)" in notes
    assert all(len(n) <= MAX_NOTE for n in notes)
    assert not any(n.startswith(("train channel", "event_f1")) for n in notes)  # figures are not progress


def test_the_follower_returns_complete_lines_once(tmp_path: Path) -> None:
    path = tmp_path / "runner.log"
    follower = LogFollower(path)
    assert follower.lines() == []  # no log yet
    path.write_text("one\ntw")
    assert follower.lines() == ["one"]
    with path.open("a") as fh:
        fh.write("o\nthree")
    assert follower.lines() == ["two"] and follower.lines(final=True) == ["three"] and follower.lines() == []


def test_follow_reads_to_the_end_once_the_job_stops(tmp_path: Path) -> None:
    path = tmp_path / "runner.log"
    path.write_text("a\n")
    answers = iter([True, False])

    def sleep(_: float) -> None:
        path.write_text("a\nb\nlast")  # written while the job ran, before it was seen to end

    assert list(follow(path, lambda: next(answers), sleep=sleep)) == ["a", "b", "last"]


def test_the_demo_prints_a_training_jobs_progress_as_it_is_written(tmp_path: Path, capsys) -> None:
    job = SimpleNamespace(name="nacelle-abc-1", kind="training", status="InProgress", job_dir=tmp_path)
    assert job_log(job) == tmp_path / "runner.log"
    lines = LOG.splitlines(keepends=True)
    (tmp_path / "runner.log").write_text("".join(lines[:6]))
    watch = JobWatch()
    watch.poll([job, SimpleNamespace(name="c", kind="compile", status="InProgress", job_dir=tmp_path / "c")])
    first = capsys.readouterr().out.splitlines()
    assert first[-1] == "     training: conv1d split 1/2: epoch 1/35, loss 0.6186 (validation 0.5166)"
    with (tmp_path / "runner.log").open("a") as fh:
        fh.write("".join(lines[6:]))
    job.status = "Completed"
    watch.poll([job])
    watch.poll([job])  # an ended job is read to its end once
    later = capsys.readouterr().out.splitlines()
    assert later == ["     training: conv1d split 1/2: epoch 10/35, loss 0.2784 (validation 0.2914)",
                     "     training: refit conv1d on all 30000 normal windows",
                     "     training: refit conv1d: epoch 5/12, loss 0.2 (validation nan)"]
