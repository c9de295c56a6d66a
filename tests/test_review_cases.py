"""Cases found in review: each once lost a run, stalled it, or escaped as a traceback."""

import json
import os
import pickle
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from conftest import TINY, invoke
from datasets_on_disk import write_celeba, write_mnist
from test_robustness import ROOT, damage, rewrite, start, valid_steps, wait_for_step

from ganctl import checkpoint, testhooks
from ganctl.data.sources import read_cifar_pickle


def events(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()
            if '"event"' in x]


def test_two_rollbacks_to_the_same_checkpoint_recover(workdir, monkeypatch):
    monkeypatch.setattr(testhooks, "_fired", set())
    monkeypatch.setenv("GANCTL_TEST_NAN_AT", "3,4")  # step 3 breaks, then (after one) step 4
    result = invoke("train", *TINY, "--steps", "6", "--log-every", "1", "--out", "r")
    assert result.exit_code == 0, result.output
    assert [(e["step"], e["to_step"], e["lr_g"]) for e in events(workdir / "r")] == [
        (3, 2, 1e-4), (4, 2, 5e-5)]
    assert valid_steps(workdir / "r")[-1] == 6


def test_separate_spikes_each_recover(workdir, monkeypatch):
    monkeypatch.setattr(testhooks, "_fired", set())
    monkeypatch.setenv("GANCTL_TEST_NAN_AT", "3,5,7,9")  # four spikes, a checkpoint between each
    result = invoke("train", *TINY, "--steps", "10", "--log-every", "1", "--out", "r")
    assert result.exit_code == 0, result.output
    assert [e["to_step"] for e in events(workdir / "r")] == [2, 4, 6, 8]


def test_a_run_stopped_before_its_first_checkpoint_starts_again(workdir):
    assert invoke("train", *TINY, "--out", "r").exit_code == 0
    for path in (workdir / "r" / "checkpoints").iterdir():
        path.unlink()  # as if killed before the first checkpoint
    result = invoke("resume", "r")
    assert result.exit_code == 0, result.output
    assert "has no checkpoint yet" in result.stdout and valid_steps(workdir / "r") == [2, 4]
    for path in (workdir / "r" / "checkpoints").iterdir():
        path.unlink()
    assert invoke("train", *TINY, "--out", "r", "--resume").exit_code == 0
    assert valid_steps(workdir / "r") == [2, 4]


def test_resume_from_an_older_checkpoint_never_prunes_into_nothing(workdir):
    assert invoke("train", *TINY, "--steps", "6", "--out", "r").exit_code == 0
    ckpts = workdir / "r" / "checkpoints"
    damage(ckpts / "step-000000004.safetensors", "corrupted")
    damage(ckpts / "step-000000006.safetensors", "corrupted")
    result = invoke("resume", ckpts / "step-000000002.safetensors", "--steps", "3", "--keep", "2")
    assert result.exit_code == 0, result.output
    assert (ckpts / "latest").read_text().strip() == "step-000000003.safetensors"
    assert valid_steps_in(ckpts) == [2, 3]
    assert invoke("resume", "r", "--steps", "4").exit_code == 0  # the run goes on


def valid_steps_in(ckpt_dir):
    out = []
    for path in checkpoint.list_checkpoints(ckpt_dir):
        try:
            out.append(checkpoint.open_checkpoint(path).step)
        except Exception:
            pass
    return out


def test_noise_state_from_another_kind_of_device(trained_run, workdir):
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"
    moved = workdir / "moved.safetensors"
    rewrite(ckpt, moved, lambda t, m: t.update({"rng.noise": torch.zeros(16, dtype=torch.uint8)}))
    shutil.move(moved, ckpt)  # a CUDA generator's 16-byte state, as a GPU run would leave
    result = invoke("resume", trained_run, "--steps", "5")
    assert result.exit_code == 0, result.output
    assert "noise sequence restarts from (seed, step 4)" in result.stdout


def test_moved_data_and_another_working_directory(workdir, monkeypatch):
    write_mnist(workdir / "dA")
    assert invoke("train", *TINY, "--dataset", "mnist", "--data-dir", "dA", "--batch-size", "4",
                  "--out", "m").exit_code == 0
    shutil.copytree(workdir / "dA", workdir / "dB")  # new modification times, same content
    result = invoke("resume", "m", "--data-dir", "dB", "--steps", "5")
    assert result.exit_code == 0, result.output
    (workdir / "imgs").mkdir()
    from PIL import Image
    for i in range(4):
        Image.new("RGB", (32, 32), (i * 60, 9, 9)).save(workdir / "imgs" / f"{i}.png")
    assert invoke("train", *TINY, "--dataset", "imgs", "--resolution", "32", "--batch-size", "4",
                  "--out", "f").exit_code == 0
    (workdir / "elsewhere").mkdir()
    monkeypatch.chdir(workdir / "elsewhere")
    result = invoke("resume", workdir / "f", "--steps", "5")
    assert result.exit_code == 0, result.output
    assert json.loads((workdir / "f" / "config.json").read_text())["dataset"] == str(workdir / "imgs")


def test_bad_zip_members_are_skipped_not_fatal(workdir):
    from PIL import Image
    (workdir / "src").mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (i * 80, 0, 0)).save(workdir / "src" / f"{i}.png")
    with zipfile.ZipFile(workdir / "z.zip", "w") as z:
        for i in range(3):
            z.write(workdir / "src" / f"{i}.png", f"{i}.png")
    raw = bytearray((workdir / "z.zip").read_bytes())
    header = raw.find(b"PK\x03\x04")  # mark the first member encrypted (flag bit 0)
    raw[header + 6] |= 1
    central = raw.find(b"PK\x01\x02")
    raw[central + 8] |= 1
    (workdir / "z.zip").write_bytes(bytes(raw))
    result = invoke("data", "info", "--dataset", "z.zip", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["count"] == 2 and doc["skipped_by_reason"] == {"unreadable": 1}


def test_celeba_partition_naming_a_missing_image(workdir):
    folder = write_celeba(workdir / "data", zipped=True)
    with open(folder / "list_eval_partition.txt", "a") as f:
        f.write("999999.jpg 0\n")
    doc = json.loads(invoke("data", "info", "--dataset", "celeba", "--json").stdout)
    assert doc["count"] == 8 and doc["skipped_by_reason"] == {"missing": 1}
    (folder / "list_eval_partition.txt").write_text("000001.jpg zero\n")
    result = invoke("data", "info", "--dataset", "celeba")
    assert result.exit_code == 1 and "line 1 is not '<file> <0|1|2>'" in result.stderr


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_cifar_parser_reads_long_lists_at_every_protocol(tmp_path, protocol):
    labels = (np.arange(50000) % 100).tolist()
    batch = {"fine_labels": labels, "coarse_labels": [x // 5 for x in labels],
             "data": np.zeros((50000, 3072), dtype=np.uint8)}
    (tmp_path / "train").write_bytes(pickle.dumps(batch, protocol=protocol))
    out = read_cifar_pickle(tmp_path / "train")
    assert out["fine_labels"] == labels and len(out["data"][0]) == 50000 * 3072


@pytest.mark.parametrize("change, fragment", [
    (lambda t, m: m.update({"ganctl.metrics": "[1, 2]"}), None),
    (lambda t, m: m.update({"ganctl.metrics": "{bad"}), None),
    (lambda t, m: m.update({"ganctl.config": json.dumps({**json.loads(m["ganctl.config"]),
                                                         "g_width": 2 ** 20})}),
     "the config's model needs"),
])
def test_hostile_metadata(trained_run, workdir, change, fragment):
    bad = workdir / "bad.safetensors"
    rewrite(trained_run / "checkpoints" / "step-000000004.safetensors", bad, change)
    result = invoke("inspect", bad) if fragment is None else invoke("sample", "x.png", "--ckpt", bad)
    assert "Traceback" not in result.output
    if fragment is None:
        assert result.exit_code == 0 and "step" in result.stdout
    else:
        assert result.exit_code == 1 and fragment in result.stderr


def test_tampered_config_fails_the_checksum(trained_run):
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"
    raw = ckpt.read_bytes()
    ckpt.write_bytes(raw.replace(b'\\"seed\\": 0', b'\\"seed\\": 7', 1))
    assert raw != ckpt.read_bytes()
    result = invoke("inspect", ckpt)
    assert result.exit_code == 1 and "does not match its checksum" in result.stderr


def test_unreadable_pointers_and_headers_fall_back(trained_run):
    ckpts = trained_run / "checkpoints"
    (ckpts / "latest").write_bytes(b"\xff\xfe")
    deep = b"[" * 100000 + b"]" * 100000
    newest = ckpts / "step-000000004.safetensors"
    newest.write_bytes(len(deep).to_bytes(8, "little") + deep)
    result = invoke("resume", trained_run, "--steps", "5")
    assert result.exit_code == 0, result.output
    assert "skipping step-000000004.safetensors" in result.stdout and "(step 2 of 5)" in result.stdout


def test_wrapper_loops_on_sigterm_and_stops_on_ctrl_c(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ganctl"  # exits 143, 143, then 0 with the run complete
    fake.write_text('#!/usr/bin/env bash\nn=$(cat "$COUNT" 2>/dev/null || echo 0); '
                    'echo $((n+1)) > "$COUNT"\n'
                    'if [ "$1" = inspect ]; then echo \'{"step": 9, "config": {"steps": 9}}\'; exit 0; fi\n'
                    'if [ -n "${CTRL_C:-}" ]; then exit 130; fi\n'
                    '[ "$n" -ge 2 ] && exit 0 || exit 143\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "COUNT": str(tmp_path / "count")}
    script = str(ROOT / "examples" / "train_until_done.sh")
    done = subprocess.run(["bash", script, "c.toml", "r"], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "run complete: r" in done.stdout
    assert done.stderr.count("stopped by SIGTERM") == 2
    (tmp_path / "count").unlink()
    stopped = subprocess.run(["bash", script, "c.toml", "r"], env={**env, "CTRL_C": "1"},
                             capture_output=True, text=True)
    assert stopped.returncode == 130 and (tmp_path / "count").read_text().strip() == "1"


def test_a_run_in_use_is_refused_and_json_reports_a_stop(workdir):
    proc = start("train", *TINY[4:], "--steps", "100000", "--ckpt-every", "1000", "--log-every", "1",
                 "--out", "r", "--json", cwd=workdir)
    for line in proc.stderr:  # with --json, progress goes to stderr
        if line.startswith("step 2/"):
            break
    result = invoke("resume", "r", "--steps", "100001")
    assert result.exit_code == 1 and "being trained by another ganctl process" in result.stderr
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143
    doc = json.loads(out)
    assert doc["stopped"] == "SIGTERM" and doc["step"] >= 2 and doc["checkpoint"]


def test_os_errors_are_one_line(capsys):
    from ganctl.cli import _call

    def full():
        raise OSError(28, "No space left on device", "runs/x/metrics.jsonl")

    with pytest.raises(BaseException) as stop:
        _call(False, full)
    assert getattr(stop.value, "exit_code", None) == 1
    assert capsys.readouterr().err == ("error: No space left on device (runs/x/metrics.jsonl); "
                                       "check free space and permissions\n")


def test_resume_needs_out_and_flags_exclude(workdir):
    result = invoke("train", "--resume")
    assert result.exit_code == 2 and "needs --out" in result.output



# --- second review: the command line as a user drives it ------------------------------------------

def test_a_closed_stdout_pipe_does_not_stop_training(workdir):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        f"{shlex.quote(sys.executable)} -m ganctl train {' '.join(TINY)} --steps 200 "
        "--log-every 1 --ckpt-every 100 --out r | head -1",
        shell=True, cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
        executable="/bin/bash")
    assert proc.returncode == 0 and proc.stdout.startswith("run r:")
    assert valid_steps(workdir / "r") == [100, 200]


def test_overwrite_of_a_run_in_use_deletes_nothing(workdir):
    proc = start("train", *TINY[:-4], "--steps", "100000", "--ckpt-every", "2", "--keep", "0",
                 "--log-every", "1", "--device", "cpu", "--out", "r", cwd=workdir)
    wait_for_step(proc, 3)
    before = {p.name for p in (workdir / "r" / "checkpoints").glob("step-*")}
    result = invoke("train", *TINY, "--out", "r", "--overwrite")
    assert result.exit_code == 1 and "being trained by another ganctl process" in result.stderr
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert before and before <= {p.name for p in (workdir / "r" / "checkpoints").glob("step-*")}
    assert (workdir / "r" / "config.json").is_file() and (workdir / "r" / "metrics.jsonl").is_file()


def test_train_resume_with_a_relative_folder_dataset(workdir):
    from PIL import Image
    (workdir / "pics").mkdir()
    for i in range(8):
        Image.new("RGB", (32, 32), (i * 30, 0, 0)).save(workdir / "pics" / f"{i}.png")
    args = [*TINY, "--dataset", "pics/", "--resolution", "32", "--out", "r"]
    assert invoke("train", *args).exit_code == 0
    result = invoke("train", *args, "--steps", "6", "--resume")
    assert result.exit_code == 0, result.output
    assert valid_steps(workdir / "r")[-1] == 6


@pytest.mark.parametrize("args, code, fragment", [
    (["--dataset", ""], 1, "dataset is empty"),
    (["--dataset", "  "], 1, "dataset is empty"),
    (["--seed", str(2**32)], 2, "--seed"),
    (["--z-dim", "100000000"], 1, "the model does not fit in cpu memory"),
])
def test_more_bad_train_input(workdir, args, code, fragment):
    result = invoke("train", *TINY, *args, "--out", "r")
    assert result.exit_code == code and fragment in result.output, result.output
    assert "Traceback" not in result.output and not (workdir / "r").exists()


def test_wrongly_typed_values_in_a_config_file(workdir):
    (workdir / "c.toml").write_text("dataset = 5\n")
    result = invoke("train", "--config", "c.toml")
    assert result.exit_code == 1 and "dataset must be a string, got 5" in result.stderr
    (workdir / "c.toml").write_text(f"seed = {2**40}\n")
    result = invoke("train", "--config", "c.toml")
    assert result.exit_code == 1 and "seed must be below 2**32" in result.stderr


def test_sample_seed_bounds(trained_run):
    assert invoke("sample", "x.png", "--seed", str(2**62 + 1)).exit_code == 2
    ok = invoke("sample", "-n", "2", "x.png", "--seed", str(2**62))
    assert ok.exit_code == 0, ok.output


def test_markup_in_user_strings_is_printed_as_text(workdir, monkeypatch):
    from PIL import Image
    monkeypatch.setenv("COLUMNS", "400")  # the whole path on one line of the table
    folder = workdir / "x[" / "b]"  # the path reads x[/b]: a closing markup tag
    folder.mkdir(parents=True)
    for i in range(8):
        Image.new("RGB", (32, 32), (i * 30, 0, 0)).save(folder / f"{i}.png")
    assert invoke("train", *TINY, "--dataset", str(folder), "--resolution", "32", "--out", "r").exit_code == 0
    result = invoke("inspect", "r")
    assert result.exit_code == 0 and "x[/b]" in result.stdout


def test_printed_commands_are_shell_quoted(workdir):
    result = invoke("train", *TINY, "--out", "my run")
    assert "next: ganctl sample -n 64 out.png --ckpt 'my run'" in result.stdout
    again = invoke("train", *TINY, "--out", "my run")
    assert "ganctl resume 'my run'" in again.stderr


def test_ckpt_may_name_the_latest_pointer_or_the_checkpoints_folder(trained_run):
    for target in (trained_run / "checkpoints" / "latest", trained_run / "checkpoints"):
        result = invoke("inspect", target, "--json")
        assert result.exit_code == 0 and json.loads(result.stdout)["step"] == 4


def test_data_dir_expands_the_home_directory(workdir, monkeypatch):
    monkeypatch.setenv("HOME", str(workdir / "home"))
    write_mnist(workdir / "home" / "dsets")
    result = invoke("data", "info", "--dataset", "mnist", "--data-dir", "~/dsets", "--no-download")
    assert result.exit_code == 0, result.output
