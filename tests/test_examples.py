"""The files in examples/: the configs are valid, and the shell scripts (train and sample; the loop
that restarts a run until it is done) run as a user would run them."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, valid_steps
from PIL import Image

from ganctl.configfile import load_config_file
from ganctl.settings import resolve_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.toml")))
def test_example_configs_are_valid(name):
    values = load_config_file(EXAMPLES / name)
    config = resolve_config({**values, "dataset": "shapes"})  # the model part, on built-in data
    assert config.resolution == values.get("resolution", 32)


def test_train_and_sample_script(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run = tmp_path / "run"
    proc = subprocess.run(
        ["bash", str(EXAMPLES / "train_and_sample.sh"), str(EXAMPLES / "shapes_quick.toml"),
         str(run), "--steps", "2", "--batch-size", "8", "--device", "cpu", "--no-curves"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(run / "grid.png").size == (274, 274)
    assert (run / "inspect.json").read_text().startswith("{")


def test_train_and_sample_script_stops_at_a_failed_train(tmp_path):
    fake = tmp_path / "bin" / "ganctl"  # train fails the way ganctl fails: exit 1, one line
    fake.parent.mkdir()
    fake.write_text('#!/usr/bin/env bash\necho "error: r already holds a run" >&2\n'
                    '[ "$1" = train ] && exit 1\necho sampled > "$SAMPLED"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}",
           "SAMPLED": str(tmp_path / "sampled")}
    failed = subprocess.run(["bash", str(EXAMPLES / "train_and_sample.sh"), "c.toml", "r"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1  # train refuses, the script stops there
    assert "already holds a run" in failed.stderr
    assert "training failed with exit code 1" in failed.stderr
    assert not (tmp_path / "sampled").exists()


# --- the wrapper loop (examples/train_until_done.sh) ----------------------------------------------

FAKE_GANCTL = """#!/usr/bin/env bash
# train exits ${FIRST:-143} (preempted), then 0 at the end of a time slice, then 0 with the run done;
# inspect reports the step the run has reached
n=$(cat "$COUNT" 2>/dev/null || echo 0); echo $((n+1)) > "$COUNT"
if [ "$1" = inspect ]; then
  [ -f "$DONE" ] && step=9 || step=5
  echo "{\\"step\\": $step, \\"config\\": {\\"steps\\": 9}}"; exit 0
fi
[ -n "${EXIT:-}" ] && exit "$EXIT"
case $n in 0) exit "${FIRST:-143}" ;; 1) exit 0 ;; *) touch "$DONE"; exit 0 ;; esac
"""


def run_wrapper(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "ganctl"
    fake.write_text(FAKE_GANCTL)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    for name in ("count", "done"):
        (tmp_path / name).unlink(missing_ok=True)
    full_env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                "COUNT": str(tmp_path / "count"), "DONE": str(tmp_path / "done"), **env}
    script = str(ROOT / "examples" / "train_until_done.sh")
    return subprocess.run(["bash", script, "c.toml", "r"], env=full_env, capture_output=True,
                          text=True, timeout=60)


def test_wrapper_loops_until_done_and_stops_on_ctrl_c_or_errors(tmp_path):
    for first in ("143", "138", "140", "129", "152"):  # every stop after a checkpoint goes on
        done = run_wrapper(tmp_path, FIRST=first)
        assert done.returncode == 0 and "run complete: r" in done.stdout
        assert done.stderr.count(f"stopped by signal {int(first) - 128}") == 1
        assert done.stderr.count("time slice over") == 1
        assert (tmp_path / "count").read_text().strip() == "5"  # train, train, inspect, train, inspect
    stopped = run_wrapper(tmp_path, EXIT="130")
    assert stopped.returncode == 130 and (tmp_path / "count").read_text().strip() == "1"
    failed = run_wrapper(tmp_path, EXIT="1")
    assert failed.returncode == 1 and "not retrying" in failed.stderr


def test_train_until_done_example_with_the_real_ganctl(workdir):
    (workdir / "c.toml").write_text('steps = 2\nbatch_size = 8\ng_width = 8\nd_width = 8\n'
                                    'device = "cpu"\nlog_every = 1\ncurves = false\n')
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    script = ROOT / "examples" / "train_until_done.sh"
    done = subprocess.run(["bash", str(script), "c.toml", "r"], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "run complete: r" in done.stdout and valid_steps(workdir / "r") == [2]
