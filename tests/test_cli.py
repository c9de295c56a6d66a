"""What every command shares (ganctl/cli/core.py, ganctl/__main__.py): exit codes, one-line errors
and --json error documents, --help, the entry points, and stop signals and closed pipes outside
training."""

from __future__ import annotations

import errno
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import LAUNCH, ROOT, TINY, assert_clean, help_text, invoke, valid_steps

from ganctl import __version__, checkpoint, rundir
from ganctl.cli import _terminate
from ganctl.errors import STOP_SIGNALS

# --- exit codes, one-line errors and --json -------------------------------------------------------

def test_debug_shows_the_traceback(workdir):
    result = invoke("train", "--dataset", "nope", "--debug")
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and "DataError" in result.stderr


@pytest.mark.parametrize("args, code, fragment", [
    (["train", "--lr-g", "-1", "--json"], 1, "lr_g must be a number above 0.0 and at most 10.0"),
    (["train", "--steps", "0", "--json"], 2, "--steps"),
    (["train", "--json", "--bogus"], 2, "--bogus"),
    (["inspect", "nowhere", "--json"], 1, "nowhere does not exist"),
    (["eval", "--metrics", "is", "--json"], 1, "unknown metric 'is'"),
])
def test_json_mode_reports_errors_as_one_document(workdir, args, code, fragment):
    result = invoke(*args)
    assert result.exit_code == code, result.output
    doc = json.loads(result.stdout)
    assert doc["exit_code"] == code and fragment in doc["error"]
    assert fragment in result.stderr  # the human line as well


def test_os_errors_are_one_line(capsys):
    from ganctl.cli import _call

    def full():
        raise OSError(28, "No space left on device", "runs/x/metrics.jsonl")

    with pytest.raises(BaseException) as stop:
        _call(False, full)
    assert getattr(stop.value, "exit_code", None) == 1
    assert capsys.readouterr().err == ("error: No space left on device (runs/x/metrics.jsonl); "
                                       "free some space\n")


@pytest.mark.parametrize("errno_, what, hint", [
    (errno.ENAMETOOLONG, "File name too long", "use a shorter path"),
    (errno.EROFS, "Read-only file system", "the file system is read-only: choose a writable place"),
    (errno.EACCES, "Permission denied", "check the permissions"),
    (errno.EIO, "Input/output error", "check free space and permissions"),  # no better advice
])
def test_an_os_errors_advice_follows_its_errno(capsys, errno_, what, hint):
    from ganctl.cli import _call

    def failing():
        raise OSError(errno_, what, "x" * 500)

    with pytest.raises(BaseException) as stop:
        _call(False, failing)
    assert getattr(stop.value, "exit_code", None) == 1
    assert capsys.readouterr().err == f"error: {what} ({'x' * 200}...); {hint}\n"


@pytest.mark.parametrize("args", [
    ["sample", "x.png", "-n", "1e30"], ["sample", "x.png", "-n", str(2**62)],
    ["sample", "x.png", "--seed", str(2**64)], ["sample", "x.png", "--seed", "nan"],
    ["eval", "--num", str(2**62)], ["eval", "--num-real", "-5"], ["eval", "--num", "nan"],
    ["resume", "--steps", str(2**62)], ["resume", "--keep", "-3"],
    ["data", "info", "--resolution", str(2**40)], ["data", "info", "--max-file-mb", str(2**60)],
])
def test_other_commands_refuse_extremes_cleanly(trained_run, args):
    assert_clean(invoke(*args))


# --- help and the entry points --------------------------------------------------------------------

def test_every_command_has_help_with_an_example():
    for command in ("train", "resume", "sample", "inspect"):
        result = invoke(command, "--help")
        assert result.exit_code == 0
        assert "Example: ganctl " + command in result.stdout


def test_help_wraps_each_command_summary_where_the_terminal_ends(monkeypatch):
    """A docstring's line breaks are the source's, not the screen's: on a wide terminal every
    command's summary is one line, its sentences unbroken (`resume` read "... on any number" /
    "of processes" before)."""
    monkeypatch.setenv("COLUMNS", "300")
    for command in ((), ("data",), ("data", "cache")):
        rows = [line for line in help_text(*command).splitlines() if line.startswith("│ ")]
        commands = rows[[i for i, line in enumerate(rows) if "--help" in line][-1] + 1:]
        assert commands and all(re.match(r"│ [a-z]+ +\S", line) for line in commands), commands
    resume = " ".join(help_text("resume").split())
    assert "on any number of processes" in resume


def test_shell_completion_can_be_installed():
    assert "--install-completion" in help_text()


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "ganctl", "--version"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"ganctl {__version__}"


# --- the output went away -------------------------------------------------------------------------

# a run that goes on until it is stopped, logging every step
ENDLESS = ["train", "--steps", "100000", "--batch-size", "4", "--g-width", "4", "--d-width", "4",
           "--log-every", "1", "--ckpt-every", "1000", "--sample-every", "100000", "--device",
           "cpu", "--no-curves", "--out", "r"]


def launch(*args: object, cwd: Path, **streams) -> subprocess.Popen:
    """ganctl as a process (its console-script entry point, through tests/launch.py)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(LAUNCH), *map(str, args)], cwd=cwd, env=env,
                            **streams)


def stop(proc: subprocess.Popen, signum: int) -> int:
    proc.send_signal(signum)
    try:
        return proc.wait(timeout=60)
    finally:
        proc.kill()


def assert_stopped_cleanly(workdir: Path) -> None:
    """A verifying checkpoint that `latest` names, and resume continues from it."""
    latest = rundir.latest_in_run(workdir / "r")
    assert latest is not None
    step = checkpoint.open_checkpoint(latest).step
    assert step >= 3 and valid_steps(workdir / "r") == [step]
    result = invoke("resume", "r", "--steps", step + 1, "--ckpt-every", "1000")
    assert result.exit_code == 0, result.output
    assert valid_steps(workdir / "r") == [step, step + 1]


@pytest.mark.slow
def test_sighup_after_the_pipe_reader_exited_is_a_clean_stop(workdir):
    """`ganctl train 2>&1 | tee log` and tee dies: training goes on (a closed pipe is no reason
    to stop), then progress, the stop message and the interpreter's flush at exit all meet a
    broken pipe; still exit 129 with a checkpoint."""
    proc = launch(*ENDLESS, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(b"step 3/"):
            break
    proc.stdout.close()  # the reader exits
    deadline = time.monotonic() + 60
    while len(rundir.read_metrics(workdir / "r")) < 10 and time.monotonic() < deadline:
        time.sleep(0.1)  # more steps log into the closed pipe
    assert len(rundir.read_metrics(workdir / "r")) >= 10 and proc.poll() is None
    assert stop(proc, signal.SIGHUP) == 129
    assert_stopped_cleanly(workdir)


def read_until_step(master: int, step: int, timeout: float = 60) -> None:
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([master], [], [], 1)[0]:
            seen += os.read(master, 1 << 16)
            if any(int(n) >= step for n in re.findall(rb"step (\d+)/", seen)):
                return
    raise AssertionError(f"no step {step} on the terminal: {seen[-500:]!r}")


@pytest.mark.slow
def test_sighup_after_the_terminal_closed_is_a_clean_stop(workdir):
    """A dropped ssh session: the terminal's other end closes (writes now fail with EIO, also
    those of the progress bar as it stops) and SIGHUP arrives; still exit 129 with a checkpoint."""
    master, slave = pty.openpty()
    try:
        proc = launch(*ENDLESS, cwd=workdir, stdin=slave, stdout=slave, stderr=slave)
    finally:
        os.close(slave)
    try:
        read_until_step(master, 3)  # the progress bar, drawn on the terminal
    finally:
        os.close(master)  # the terminal goes away
    time.sleep(0.5)  # the progress bar redraws into it
    assert stop(proc, signal.SIGHUP) == 129
    assert_stopped_cleanly(workdir)


@pytest.mark.slow
@pytest.mark.parametrize("args, code", [(["--steps", "2"], 0), (["--dataset", "nope"], 1)])
def test_a_closed_stdout_changes_no_exit_code_and_prints_no_noise(workdir, args, code):
    """stdout's reader is gone from the start: the JSON document cannot be written, and the
    exit code is still the command's, with no 'Exception ignored ... BrokenPipeError' at exit."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = launch(*ENDLESS, *args, "--json", cwd=workdir, stdout=write_end,
                      stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write_end)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    for noise in ("Exception ignored", "BrokenPipeError", "Traceback", "Errno"):
        assert noise not in err, err
    if code == 0:
        assert valid_steps(workdir / "r") == [2]
    else:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: unknown dataset 'nope'"), err


# --- a stop outside training: during start-up, and before other commands --------------------------

def test_sigterm_outside_training_unwinds_with_143():
    from ganctl.cli import _terminate
    with pytest.raises(SystemExit) as stop:
        _terminate(signal.SIGTERM, None)
    assert stop.value.code == 143


def blocked_signals(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    return 0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_a_stop_during_start_up_exits_cleanly_before_any_work(workdir):
    """A signal that lands while torch is being imported waits for the import to finish (an
    exception inside it breaks numpy, or is swallowed), then stops the command: 143, no
    traceback, no run directory."""
    proc = subprocess.Popen([sys.executable, "-m", "ganctl", "train", *TINY, "--out", "r"],
                            cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 60
    while not blocked_signals(proc.pid) & (1 << (signal.SIGTERM - 1)) and time.time() < deadline:
        time.sleep(0.005)  # until start-up holds the stop signals back
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and not (workdir / "r").exists()


NAMES = {s: signal.Signals(s).name for s in STOP_SIGNALS}


@pytest.fixture
def stops_unwind():
    """The stop signals as `ganctl` (run()) handles them outside training."""
    previous = {s: signal.signal(s, _terminate) for s in STOP_SIGNALS}
    yield
    for s, handler in previous.items():
        signal.signal(s, handler)


def signal_during(monkeypatch, target: str, signum: int) -> None:
    """`module.function` sends this process `signum` as it starts (a stop during start-up)."""
    module, name = target.rsplit(".", 1)
    real = getattr(sys.modules[module], name)

    def stopped(*args, **kwargs):
        os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(sys.modules[module], name, stopped)


def assert_one_json_stop(result, signum: int, before: str) -> None:
    name, code = NAMES[signum], 128 + signum
    assert result.exit_code == code, result.output
    message = f"stopped by {name} before {before}"
    assert json.loads(result.stdout) == {"stopped": name, "error": message, "exit_code": code}
    assert result.stderr == message + "\n"


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=NAMES.get)
def test_a_stop_during_start_up_is_one_json_document(workdir, monkeypatch, stops_unwind, signum):
    import ganctl.settings  # noqa: F401  (the module whose function the signal interrupts)

    signal_during(monkeypatch, "ganctl.settings.resolve_config", signum)
    result = invoke("train", "--steps", "4", "--device", "cpu", "--out", "r", "--json")
    assert_one_json_stop(result, signum, "training started; no checkpoint was written")
    assert not (workdir / "r").exists()


def test_ctrl_c_under_pythons_own_handler_is_reported_the_same(workdir, monkeypatch):
    """Embedded (no run()), Ctrl-C is a KeyboardInterrupt: the same report, exit 130."""
    import ganctl.settings

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(ganctl.settings, "deadline_from", interrupted)
    result = invoke("train", "--out", "r", "--json")
    assert_one_json_stop(result, signal.SIGINT, "training started; no checkpoint was written")


def test_a_stop_before_other_commands_names_them(workdir, monkeypatch, stops_unwind):
    import ganctl.metrics
    import ganctl.settings  # noqa: F401

    signal_during(monkeypatch, "ganctl.metrics.parse_metrics", signal.SIGTERM)
    assert_one_json_stop(invoke("eval", "--json"), signal.SIGTERM, "ganctl eval finished")
    signal_during(monkeypatch, "ganctl.settings.resolve_config", signal.SIGUSR1)
    assert_one_json_stop(invoke("data", "info", "--json"), signal.SIGUSR1,
                         "ganctl data info finished")


def blocked(pid: int, signum: int) -> bool:
    return bool(blocked_signals(pid) & (1 << (signum - 1)))


def stop_once_held(proc: subprocess.Popen, signum: int, later: float) -> None:
    """Send `signum` `later` seconds after the process holds it back (at once for 0)."""
    deadline = time.monotonic() + 60
    while not blocked(proc.pid, signum) and time.monotonic() < deadline:
        time.sleep(0.005 if later else 0)
    time.sleep(later)
    proc.send_signal(signum)


def assert_one_json_stop_of(proc: subprocess.Popen, signum: int, before: str) -> None:
    out, err = proc.communicate(timeout=60)
    name, code = NAMES[signum], 128 + signum
    assert proc.returncode == code, err
    message = f"stopped by {name} before {before}"
    assert json.loads(out) == {"stopped": name, "error": message, "exit_code": code}
    assert err == message + "\n"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=NAMES.get)
def test_a_stop_during_start_up_of_a_process_is_one_json_document(workdir, signum):
    proc = launch("train", "--steps", "4", "--device", "cpu", "--out", "r", "--json", cwd=workdir,
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop_once_held(proc, signum, 0.3)  # somewhere in start-up (the torch import ...)
    assert_one_json_stop_of(proc, signum, "training started; no checkpoint was written")


def test_the_entry_point_holds_stops_back_before_importing_the_command_line():
    """The console script's first act: every module it imports after ganctl.__main__ (typer,
    rich, ganctl.cli, torch) is imported with the stop signals already held back."""
    probe = ("import signal, sys\n"
             "class Watch:\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name in ('ganctl.errors', 'typer', 'rich', 'ganctl.cli', 'torch'):\n"
             "            held = signal.pthread_sigmask(signal.SIG_BLOCK, [])\n"
             "            print(name, sorted(int(s) for s in held), flush=True)\n"
             "sys.meta_path.insert(0, Watch())\n"
             "sys.argv = ['ganctl', '--version']\n"
             "from ganctl.__main__ import main\n"
             "main()\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    seen = dict(line.split(" ", 1) for line in done.stdout.splitlines() if not line.startswith("ganctl "))
    assert {"ganctl.errors", "ganctl.cli", "typer"} <= set(seen), done.stdout
    for name, held in seen.items():
        assert set(json.loads(held)) >= {int(s) for s in STOP_SIGNALS}, name


CONSOLE_SCRIPT = Path(sys.executable).with_name("ganctl")  # what `pip install` made of [project.scripts]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
@pytest.mark.skipif(not CONSOLE_SCRIPT.exists(), reason="the ganctl console script is not installed")
def test_ctrl_c_the_moment_the_console_script_holds_it_is_one_json_document(workdir):
    """The earliest a stop can be kept (the interpreter's own start-up comes before any code of
    ganctl's): Ctrl-C sent as soon as it shows as held is one JSON document, not a
    KeyboardInterrupt traceback."""
    proc = subprocess.Popen([str(CONSOLE_SCRIPT), "inspect", "--json", "missing.safetensors"],
                            cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop_once_held(proc, signal.SIGINT, 0)
    assert_one_json_stop_of(proc, signal.SIGINT, "ganctl inspect finished")
