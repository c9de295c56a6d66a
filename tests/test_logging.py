"""What a run tells its user: metrics.jsonl, plain lines off a terminal, a bar on one."""

import io
import json
import subprocess
import sys

from rich.console import Console

from ganctl import __version__
from ganctl.output.progress import RunLog, format_duration, format_record
from ganctl.rundir import read_metrics

RECORD = {"step": 10, "time": 0.0, "loss_D": 1.25, "loss_G": 0.5, "D_real": 0.6, "D_fake": 0.4,
          "img_per_s": 321.0}


def test_plain_lines_when_not_a_terminal(tmp_path):
    buf = io.StringIO()
    log = RunLog(Console(file=buf, force_terminal=False, width=40))
    log.attach(tmp_path / "metrics.jsonl")
    log.start(0, 20)
    log.record(RECORD)
    log.close()
    line = buf.getvalue().strip()
    assert line.startswith("step 10/20  loss_D 1.250  loss_G 0.500  D(x) 0.60  D(G(z)) 0.40  "
                           "321 img/s  eta ")
    assert "\n" not in line  # one line even on a narrow console
    assert read_metrics(tmp_path) == [RECORD]


def test_progress_bar_on_a_terminal(tmp_path):
    buf = io.StringIO()
    log = RunLog(Console(file=buf, force_terminal=True, width=160))
    log.attach(tmp_path / "metrics.jsonl")
    log.start(0, 20)
    log.advance(5)
    log.record(RECORD)
    log.close()
    out = buf.getvalue()
    assert "step 10/20" in out and "loss_D 1.250" in out and "321 img/s" in out
    assert "━" in out  # the bar itself
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == RECORD


def test_read_metrics_skips_a_line_cut_short(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps(RECORD) + "\n{\"step\": 1")
    assert read_metrics(tmp_path) == [RECORD]


def test_format_duration():
    assert [format_duration(s) for s in (5, 65, 3725)] == ["0m05s", "1m05s", "1h02m05s"]


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "ganctl", "--version"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"ganctl {__version__}"


def test_task_progress_plain_and_terminal(monkeypatch):
    clock = iter(range(0, 1000, 30))  # 30 s for each advance: the time left from the rate so far
    monkeypatch.setattr("ganctl.output.progress.time.monotonic", lambda: float(next(clock)))
    buf = io.StringIO()
    advance = RunLog(Console(file=buf, force_terminal=False, width=100)).task("decoding x", 20)
    for _ in range(10):
        advance(2)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "decoding x: 20 items"
    assert lines[1] == "  2/20 (10%, about 4m30s left)" and lines[2] == "  4/20 (20%, about 4m00s left)"
    assert lines[-1] == "  20/20 (100%)" and len(lines) == 11
    buf = io.StringIO()
    advance = RunLog(Console(file=buf, force_terminal=True, width=100)).task("decoding x", 4)
    advance(4)
    assert "decoding x: 4 items" in buf.getvalue()


def test_records_show_whatever_statistics_the_loss_named():
    record = {"step": 3, "time": 0.0, "loss_D": 1.0, "loss_G": 2.0, "loss_R1": 0.25,
              "D_real": 0.75, "grad_norm": 3.5, "img_per_s": 10.0}
    assert format_record(record) == ("loss_D 1.000  loss_G 2.000  loss_R1 0.250  D(x) 0.75  "
                                     "grad_norm 3.50  10 img/s")
    assert format_record(record, losses_only=True) == "loss_D 1.00  loss_G 2.00  loss_R1 0.25  10 img/s"
