import json

from conftest import TINY, invoke

from ganctl import checkpoint
from ganctl.config import Config


def test_train_writes_the_run_directory(workdir):
    result = invoke("train", *TINY)
    assert result.exit_code == 0, result.output
    run_dir = workdir / "runs" / "0001-shapes-dcgan"
    assert "device cpu" in result.stdout
    assert f"run {run_dir.relative_to(workdir)}" in result.stdout

    config = json.loads((run_dir / "config.json").read_text())
    assert config["steps"] == 4 and config["batch_size"] == 8 and config["g_width"] == 8
    assert config["dataset"] == "shapes" and config["resolution"] == 32
    Config.from_dict(config)  # a complete, valid config

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    for r in records:
        assert {"loss_D", "loss_G", "D_real", "D_fake", "img_per_s", "time"} <= set(r)
        assert 0 < r["D_real"] < 1 and 0 < r["D_fake"] < 1 and r["loss_D"] > 0

    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == [
        "step-000000002.png", "step-000000004.png"]
    ckpts = [p.name for p in checkpoint.list_checkpoints(run_dir / "checkpoints")]
    assert ckpts == ["step-000000002.safetensors", "step-000000004.safetensors"]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == ckpts[-1]
    assert not [p for p in run_dir.rglob(".*tmp*")]  # no temp files left behind


def test_runs_are_numbered_and_keep_prunes(workdir):
    assert invoke("train", *TINY, "--keep", "1").exit_code == 0
    assert invoke("train", *TINY).exit_code == 0
    first, second = sorted((workdir / "runs").iterdir())
    assert (first.name, second.name) == ("0001-shapes-dcgan", "0002-shapes-dcgan")
    assert [p.name for p in checkpoint.list_checkpoints(first / "checkpoints")] == [
        "step-000000004.safetensors"]
    assert len(checkpoint.list_checkpoints(second / "checkpoints")) == 2


def test_runs_root_moves_with_env(workdir, monkeypatch):
    monkeypatch.setenv("GANCTL_RUNS", str(workdir / "elsewhere"))
    assert invoke("train", *TINY).exit_code == 0
    assert (workdir / "elsewhere" / "0001-shapes-dcgan" / "config.json").is_file()


def test_json_output_is_one_document(workdir):
    result = invoke("train", *TINY, "--out", "r", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["step"] == 4 and doc["run_dir"] == "r"
    assert doc["checkpoint"] == "r/checkpoints/step-000000004.safetensors"
    assert "device cpu" in result.stderr  # human lines went to stderr


def test_config_file_then_flags_take_precedence(workdir):
    (workdir / "c.toml").write_text(
        'steps = 6\nbatch-size = 8\ng_width = 8\nd_width = 8\nz_dim = 16\nseed = 3\n'
        'ema_decay = 0.9\ndevice = "cpu"\nlog_every = 2\n')
    result = invoke("train", "--config", "c.toml", "--steps", "2", "--seed", "5", "--out", "r")
    assert result.exit_code == 0, result.output
    config = json.loads((workdir / "r" / "config.json").read_text())
    assert config["steps"] == 2 and config["seed"] == 5  # flags beat the file
    assert config["z_dim"] == 16 and config["batch_size"] == 8  # the file beats the defaults
    assert config["ema_decay"] == 0.9 and config["lr_g"] == 2e-4  # untouched defaults remain
    assert config["resolution"] == 32  # the dataset preset fills what nobody gave


def test_train_at_64_grayscale(workdir):
    result = invoke("train", *TINY, "--steps", "1", "--resolution", "64", "--channels", "1",
                    "--out", "r")
    assert result.exit_code == 0, result.output
    header = checkpoint.read_header(workdir / "r" / "checkpoints" / "step-000000001.safetensors")
    assert header.config["resolution"] == 64 and header.config["channels"] == 1
