"""Listing runs (ganctl/runs.py, behind `ganctl runs`): each run's status, progress, losses, best
FID, size and last update, read without disturbing a run in training."""

import fcntl
import json
import os
import shutil
import signal
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from helpers import TINY, damage, invoke, nan_batches, rewrite, signal_at

from ganctl import fsutil, rundir, runs
from ganctl.config import Config
from ganctl.engine import loop
from ganctl.errors import RunError


def by_id(found: list[dict]) -> dict[str, dict]:
    return {run["id"]: run for run in found}


def copy_run(run_dir: Path, name: str) -> Path:
    return Path(shutil.copytree(run_dir, run_dir.parent / name, symlinks=True))


def last_record(run_dir: Path) -> dict:
    return [r for r in rundir.read_metrics(run_dir) if "event" not in r][-1]


# --- statuses --------------------------------------------------------------------------------------

def test_each_status_and_what_is_not_a_run(trained_run, monkeypatch):
    root = trained_run.parent
    signal_at(monkeypatch, 2, signal.SIGTERM)  # a real stop: checkpoint at step 2, exit 143
    assert invoke("train", *TINY, "--steps", "6", "--out", root / "0002-stopped").exit_code == 143
    new = rundir.create_run_dir(root / "0003-new", Config())  # died before its first checkpoint
    rundir.write_config(new, Config())
    (copy_run(trained_run, "0004-bad-config") / "config.json").write_text("{not json")
    for ckpt in rundir.list_checkpoints(copy_run(trained_run, "0005-bad-ckpts") / "checkpoints"):
        damage(ckpt, "huge header")
    training = copy_run(trained_run, "0006-training")
    (root / "0000-empty").mkdir()  # not runs: an empty folder, someone else's, a file, a link
    (root / "0007-foreign").mkdir()
    (root / "0007-foreign" / "config.json").write_text('{"steps": 4}')
    (root / "notes.txt").write_text("x")
    (root / "0008-link").symlink_to(trained_run)

    with rundir.locked(training):
        found = runs.list_runs()
    assert [(r["id"], r["status"], r["step"], r["steps"]) for r in found] == [
        ("0001-shapes-dcgan", "complete", 4, 4),
        ("0002-stopped", "stopped", 2, 6),
        ("0003-new", "new", None, Config().steps),
        ("0004-bad-config", "broken", 4, 4),
        ("0005-bad-ckpts", "broken", None, 4),
        ("0006-training", "running", 4, 4),
    ]
    assert all(tuple(run) == runs.FIELDS for run in found)
    found = by_id(found)
    assert "config.json is damaged" in found["0004-bad-config"]["problem"]
    assert found["0004-bad-config"]["dataset"] == "shapes"  # from the checkpoint's copy
    assert found["0005-bad-ckpts"]["problem"].startswith("no checkpoint is readable")
    assert found["0001-shapes-dcgan"]["problem"] is None
    assert found["0002-stopped"]["checkpoint"] == str(  # as relative as the runs root
        Path("runs", "0002-stopped", "checkpoints", "step-000000002.safetensors"))
    # once the trainer is gone, the run is what its checkpoints say
    assert by_id(runs.list_runs())["0006-training"]["status"] == "complete"


def test_a_run_that_cannot_be_read_is_listed_as_broken(trained_run, monkeypatch):
    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    # as a folder without read permission: runs.py lists through the package, latest_in_run in its module
    for where in (rundir, rundir.checkpoints):
        monkeypatch.setattr(where, "list_checkpoints", denied)
    (run,) = runs.list_runs()
    assert tuple(run) == runs.FIELDS
    assert (run["status"], run["problem"]) == (
        "broken", f"cannot read {Path('runs', '0001-shapes-dcgan', 'checkpoints')}: Permission denied")


def test_probing_the_lock_creates_nothing_and_never_turns_a_start_away(trained_run):
    (trained_run / rundir.LOCK).unlink()
    assert rundir.is_locked(trained_run) is False
    assert not (trained_run / rundir.LOCK).exists()  # no lock file: never trained here, not running
    (trained_run / rundir.LOCK).touch()
    # a listing holds a shared lock for a moment: a trainer starting then waits it out
    probe = os.open(trained_run / rundir.LOCK, os.O_RDONLY)
    fcntl.flock(probe, fcntl.LOCK_SH)
    seen = []

    def start() -> None:
        with rundir.locked(trained_run):  # a RunError here leaves `seen` empty
            seen.append(rundir.is_locked(trained_run))

    trainer = threading.Thread(target=start)
    trainer.start()
    time.sleep(0.1)
    os.close(probe)
    trainer.join()
    assert seen == [True] and rundir.is_locked(trained_run) is False


def test_a_diverged_run_until_it_is_resumed(workdir, monkeypatch):
    healthy = loop.train_step
    nan_batches(monkeypatch, start_at=3)
    assert invoke("train", *TINY, "--steps", "6", "--log-every", "1", "--out", "runs/r").exit_code == 1
    run_dir = workdir / "runs" / "r"
    run = runs.list_runs()[0]
    assert (run["status"], run["step"], run["steps"], run["logged_step"]) == ("diverged", 2, 6, 2)
    # a `ganctl eval` after it is no training: still diverged
    with open(run_dir / rundir.METRICS, "a") as f:
        f.write(json.dumps({"step": 2, "event": "eval", "fid": 80.0, "checkpoint": "x"}) + "\n")
    assert runs.list_runs()[0]["status"] == "diverged"
    # resumed, and stopped before it logged a record: its newer checkpoint says it went on
    ckpt = run_dir / "checkpoints" / "step-000000002.safetensors"
    later = datetime.fromtimestamp(time.time() + 3600).astimezone().isoformat(timespec="seconds")
    rewrite(ckpt, ckpt, lambda tensors, meta: meta.update({"ganctl.created": later}))
    assert runs.list_runs()[0]["status"] == "stopped"
    # resumed to the end: training records follow the event
    monkeypatch.setattr(loop, "train_step", healthy)
    assert invoke("resume", run_dir).exit_code == 0
    run = runs.list_runs()[0]
    assert (run["status"], run["step"], run["logged_step"]) == ("complete", 6, 6)
    assert run["losses"] == {k: v for k, v in last_record(run_dir).items() if k.startswith("loss")}


# --- what a run shows --------------------------------------------------------------------------------

def test_best_fid_from_the_best_checkpoint_else_from_eval_events(trained_run):
    ckpts = trained_run / "checkpoints"
    evaluated = ckpts / "step-000000002.safetensors"
    rewrite(evaluated, evaluated, lambda tensors, meta: meta.update(
        {"ganctl.eval": json.dumps({"step": 2, "event": "eval", "fid": 12.5})}))
    rundir.set_pointer(trained_run, rundir.BEST, evaluated)
    other = copy_run(trained_run, "0002-evaluated")
    (other / "checkpoints" / "best").unlink()
    with open(other / rundir.METRICS, "a") as f:  # as `ganctl eval` appends them
        for step, fid in ((2, 30.0), (4, 20.0), (4, "nan")):
            f.write(json.dumps({"step": step, "event": "eval", "fid": fid, "checkpoint": "c"}) + "\n")
    found = by_id(runs.list_runs())
    assert (found["0001-shapes-dcgan"]["best_fid"], found["0001-shapes-dcgan"]["best_step"]) == (12.5, 2)
    assert (found["0002-evaluated"]["best_fid"], found["0002-evaluated"]["best_step"]) == (20.0, 4)
    assert found["0002-evaluated"]["status"] == "complete"
    # inspect says what runs says (one function answers both)
    for run_id, run_dir in (("0001-shapes-dcgan", trained_run), ("0002-evaluated", other)):
        result = invoke("inspect", run_dir, "--json")
        assert result.exit_code == 0, result.output
        best = json.loads(result.stdout)["best"]
        assert (best["fid"], best["step"]) == (found[run_id]["best_fid"], found[run_id]["best_step"])
    assert best["checkpoint"] is None  # from the evaluations: no checkpoint is `best`
    shown = [line for line in invoke("inspect", other).stdout.splitlines() if "best FID" in line]
    assert len(shown) == 1 and "20.000 at step 4" in shown[0] and ".safetensors" not in shown[0]


def test_size_update_time_and_the_table(trained_run, tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x" * 5000)
    (trained_run / "samples" / "linked.bin").symlink_to(outside)  # not the run's: not counted
    files = [p for p in trained_run.rglob("*") if p.is_file() and not p.is_symlink()]
    size = sum(p.stat().st_size for p in files)
    when = datetime(2026, 11, 28, 7, 12, 30).timestamp()
    for p in files:
        os.utime(p, (when, when - 60 * (p.name != "metrics.jsonl")))  # metrics.jsonl is newest
    run = runs.list_runs()[0]
    assert run["bytes"] == size
    assert run["updated"] == datetime.fromtimestamp(when).astimezone().isoformat(timespec="seconds")
    (trained_run / "notes.txt").write_bytes(b"n" * 1000)
    os.utime(trained_run / "notes.txt", (when, when - 120))
    assert runs.list_runs()[0]["bytes"] == size + 1000

    losses = last_record(trained_run)
    table = runs.format_runs(runs.list_runs()).splitlines()
    assert table[0].split() == ["ID", "STATUS", "DATASET", "ARCH", "RES", "STEP", "LOSSES", "BEST",
                                "FID", "UPDATED", "SIZE"]
    assert table[1].split()[:8] == ["0001-shapes-dcgan", "complete", "shapes", "dcgan", "32", "4/4",
                                    "D", f"{losses['loss_D']:.4g}"]
    assert table[1].endswith(f"  -  2026-11-28 07:12  {runs.human_bytes(size + 1000)}")
    assert [runs.human_bytes(n) for n in (999, 1000, 12_345_678, 999_999, 1_500_000_000)] == [
        "999 B", "1.0 kB", "12.3 MB", "1.0 MB", "1.5 GB"]


def strict_json(text: str):
    """RFC 8259 JSON: NaN and Infinity, which Python's json.loads takes, are refused."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_a_run_whose_config_holds_bad_values_is_broken_and_the_others_listed(trained_run,
                                                                                 monkeypatch):
    config = json.loads((trained_run / rundir.CONFIG).read_text())
    bad = {"0002-list": [1, 2], "0003-resolution": {**config, "resolution": [1]},
           "0004-arch": {**config, "arch": None}, "0005-newer": {**config, "from_the_future": 1},
           "0006-number": 7}
    for name, value in bad.items():
        (copy_run(trained_run, name) / rundir.CONFIG).write_text(json.dumps(value))
    denied = copy_run(trained_run, "0007-denied")
    readable = fsutil.read_regular

    def read(path, limit=None):  # as config.json without read permission (tests may run as root)
        if Path(path).resolve() == denied / rundir.CONFIG:
            raise PermissionError(13, "Permission denied", str(path))
        return readable(path, limit)

    monkeypatch.setattr(fsutil, "read_regular", read)
    found = by_id(runs.list_runs())
    assert {i: r["status"] for i, r in found.items()} == {
        "0001-shapes-dcgan": "complete", **dict.fromkeys([*bad, "0007-denied"], "broken")}
    for name in bad:
        problem = found[name]["problem"]
        assert str(Path("runs", name, "config.json")) in problem, problem
        assert found[name]["dataset"] == "shapes"  # from the checkpoint's copy of the config
    assert "from_the_future" in found["0005-newer"]["problem"]
    assert "resolution" in found["0003-resolution"]["problem"]
    assert found["0007-denied"]["problem"] == (
        f"cannot read {Path('runs', '0007-denied', 'config.json')}: Permission denied")
    result = invoke("runs", "--json")
    assert result.exit_code == 0, result.output
    assert [r["status"] for r in strict_json(result.stdout)["runs"]] == ["complete"] + ["broken"] * 6
    # anything a run's files make a reader raise is that run's problem alone
    def unforeseen(run_dir):
        raise ValueError("odd\nvalue")

    monkeypatch.setattr(runs, "_usage", unforeseen)
    run = runs.describe(trained_run)
    assert (run["status"], run["problem"]) == ("broken", f"cannot read {trained_run}: odd value")


def test_non_finite_numbers_are_text_and_the_json_is_strict(trained_run):
    with open(trained_run / rundir.METRICS, "a") as f:  # Python's json.loads takes these
        f.write('{"step": 5, "time": 1.0, "loss_D": NaN, "loss_G": Infinity, "loss_r": -Infinity}\n')
        f.write('{"step": 5, "event": "eval", "fid": NaN, "checkpoint": "c"}\n')
    odd = copy_run(trained_run, "0002-odd-settings")
    (odd / rundir.CONFIG).write_text("{not json")  # its settings come from the checkpoints
    for ckpt in rundir.list_checkpoints(odd / "checkpoints"):
        def change(tensors, meta):
            meta["ganctl.config"] = json.dumps({**json.loads(meta["ganctl.config"]),
                                                "resolution": float("nan"), "arch": float("inf")})
            meta["ganctl.eval"] = json.dumps({"step": 4, "event": "eval", "fid": float("inf")})
        rewrite(ckpt, ckpt, change)
    rundir.set_pointer(odd, rundir.BEST, rundir.list_checkpoints(odd / "checkpoints")[-1])
    result = invoke("runs", "--json")
    assert result.exit_code == 0, result.output
    found = by_id(strict_json(result.stdout)["runs"])
    assert found["0001-shapes-dcgan"]["losses"] == {"loss_D": "nan", "loss_G": "inf", "loss_r": "-inf"}
    assert found["0001-shapes-dcgan"]["best_fid"] is None  # a NaN evaluation is no score
    assert (found["0002-odd-settings"]["resolution"], found["0002-odd-settings"]["arch"]) == (
        "nan", "inf")
    assert found["0002-odd-settings"]["best_fid"] is None
    assert "D nan G inf r -inf" in runs.format_runs(runs.list_runs())


def test_each_run_is_one_line_of_the_table_whatever_its_values(trained_run):
    copy_run(trained_run, "0002-new\nline\x1b[31m")
    copy_run(trained_run, "0003-" + "x" * 200)
    huge = copy_run(trained_run, "0004-huge")
    with open(huge / rundir.METRICS, "a") as f:
        f.write(json.dumps({"step": 5, "time": 1.0, "loss_D": 1.2e308, "loss_G": -1.8e20}) + "\n")
    bad = copy_run(trained_run, "0005-bad")
    (bad / rundir.CONFIG).write_text(json.dumps({"resolution": "a\nb"}))
    found = runs.list_runs()
    table = runs.format_runs(found).splitlines()
    problems = [r for r in found if r["problem"]]
    assert len(table) == 1 + len(found) + len(problems) and len(problems) == 1
    assert all(ch.isprintable() for line in table for ch in line)
    rows = {line.split()[0]: line for line in table[1:len(found) + 1]}
    assert "0002-new\\nline\\x1b[31m" in rows
    assert rows["0004-huge"].split()[6:10] == ["D", "1.2e+308", "G", "-1.8e+20"]
    (long_id,) = [i for i in rows if i.startswith("0003-")]
    assert len(long_id) == runs.WIDEST["ID"] and long_id.endswith("…")
    assert max(len(line) for line in table[:len(found) + 1]) < 200
    assert table[-1].startswith("0005-bad: ") and "\\n" in table[-1]


def test_a_run_whose_lock_cannot_be_probed_may_be_running(trained_run, tmp_path):
    (trained_run / rundir.LOCK).unlink()
    (trained_run / rundir.LOCK).symlink_to(tmp_path / "elsewhere")  # opened without following
    assert rundir.is_locked(trained_run) is None
    (run,) = runs.list_runs()
    assert run["status"] == "complete"
    assert run["problem"] == (f"cannot probe its lock {Path('runs', '0001-shapes-dcgan', rundir.LOCK)}"
                              ": it may be running")
    result = invoke("runs", "--json")
    assert strict_json(result.stdout)["runs"][0]["problem"] == run["problem"]
    table = runs.format_runs([run]).splitlines()
    assert table[1].split()[1] == "complete" and table[-1] == f"{run['id']}: {run['problem']}"


def test_the_last_record_of_a_long_metrics_file(trained_run):
    records = [{"step": s, "time": 1.0, "loss_D": s / 10, "img_per_s": 1.0} for s in range(1, 5001)]
    (trained_run / rundir.METRICS).write_text("".join(json.dumps(r) + "\n" for r in records)
                                              + '{"step": 5001, "loss')  # cut short by a crash
    assert (trained_run / rundir.METRICS).stat().st_size > 4 * runs.TAIL_BYTES
    run = runs.list_runs()[0]
    assert (run["logged_step"], run["losses"]) == (5000, {"loss_D": 500.0})


def test_where_runs_are_looked_for(trained_run, workdir, monkeypatch):
    assert runs.list_runs(workdir / "nowhere") == []
    assert runs.format_runs([], workdir / "nowhere") == (
        f"no runs under {workdir / 'nowhere'}/; start one with `ganctl train`")
    assert [r["id"] for r in runs.list_runs(trained_run)] == ["0001-shapes-dcgan"]  # one run
    monkeypatch.setenv("GANCTL_RUNS", str(workdir / "elsewhere"))
    assert runs.list_runs() == []
    (workdir / "elsewhere").mkdir()
    shutil.move(trained_run, workdir / "elsewhere" / "0009-moved")
    assert [r["path"] for r in runs.list_runs()] == [str(workdir / "elsewhere" / "0009-moved")]
    (workdir / "afile").write_text("x")
    with pytest.raises(RunError, match="afile is not a directory"):
        runs.list_runs(workdir / "afile")


# --- caches ------------------------------------------------------------------------------------------


def test_a_checkpoint_whose_metadata_inspect_refuses_is_one_runs_passes_over(trained_run):
    """runs reads a checkpoint's metadata with the check every other reader gets (a step of -1
    passed its int() before)."""
    run = copy_run(trained_run, "0002-odd-step")
    for ckpt in rundir.list_checkpoints(run / "checkpoints"):
        rewrite(ckpt, ckpt, lambda tensors, meta: meta.update({"ganctl.step": "-1"}))
    found = by_id(runs.list_runs())["0002-odd-step"]
    assert found["status"] == "broken" and found["problem"].startswith("no checkpoint is readable")
    assert "ganctl.step is '-1', not a whole number" in found["problem"]
    assert invoke("inspect", run).exit_code == 1
