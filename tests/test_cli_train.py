"""`ganctl train`: the run directory it writes and what it says, --help, the checks of its command
line with suggestions for misspelt names, --print-config, the --out/--resume/--overwrite rules and
fine-tuning with --init-from."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers import (
    SWITCHES,
    TINY,
    assert_clean,
    assert_one_line_error,
    final_tensors,
    help_text,
    image_folder,
    invoke,
    option_blocks,
    read_json,
    valid_steps,
)
from PIL import Image

from ganctl import checkpoint, rundir, session
from ganctl.config import BOUNDS, FIELD_NAMES, Config
from ganctl.engine.loop import RunResult

# --- the run it writes, and what it says ----------------------------------------------------------

def test_train_writes_the_run_directory(workdir):
    result = invoke("train", *TINY)
    assert result.exit_code == 0, result.output
    run_dir = workdir / "runs" / "0001-shapes-dcgan"
    assert "device cpu" in result.stdout
    assert f"run {run_dir.relative_to(workdir)}" in result.stdout

    config = read_json(run_dir / "config.json")
    assert config["steps"] == 4 and config["batch_size"] == 8 and config["g_width"] == 8
    assert config["dataset"] == "shapes" and config["resolution"] == 32 and config["classes"] == [
        "circle", "square", "triangle"]
    Config.from_dict(config)  # a complete, valid config

    records = rundir.read_metrics(run_dir)
    assert [r["step"] for r in records] == [2, 4]
    for r in records:
        assert {"loss_D", "loss_G", "D_real", "D_fake", "img_per_s", "time"} <= set(r)
        assert 0 < r["D_real"] < 1 and 0 < r["D_fake"] < 1 and r["loss_D"] > 0

    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == [
        "step-000000002.png", "step-000000004.png"]
    ckpts = [p.name for p in rundir.list_checkpoints(run_dir / "checkpoints")]
    assert ckpts == ["step-000000002.safetensors", "step-000000004.safetensors"]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == ckpts[-1]
    assert not [p for p in run_dir.rglob(".*tmp*")]  # no temp files left behind


def fake_train(config, out, log, download, deadline, overwrite):
    """The engine's train as the CLI sees it: a note on the log, then a result."""
    log.info("run r: dcgan 32x32x3 on shapes (8192 images), device cpu")
    return RunResult(str(out), f"{out}/checkpoints/step-000000004.safetensors",
                     f"{out}/samples/step-000000004.png", 4, 4, "cpu", 0.5, {"step": 4})


def test_json_output_is_one_document(workdir, monkeypatch):
    monkeypatch.setattr(session, "train", fake_train)
    result = invoke("train", *TINY, "--out", "r", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc == {"run_dir": "r", "checkpoint": "r/checkpoints/step-000000004.safetensors",
                   "samples": "r/samples/step-000000004.png", "step": 4, "steps": 4,
                   "device": "cpu", "seconds": 0.5, "metrics": {"step": 4}, "stopped": None,
                   "batch_size": None, "precision": None, "compiled": None,
                   "compile_seconds": None}
    assert "device cpu" in result.stderr  # human lines went to stderr


def test_printed_commands_are_shell_quoted(workdir, monkeypatch):
    real_train = session.train
    monkeypatch.setattr(session, "train", fake_train)
    result = invoke("train", *TINY, "--out", "my run")
    assert "next: ganctl sample -n 64 out.png --ckpt 'my run'" in result.stdout
    monkeypatch.setattr(session, "train", real_train)
    (workdir / "my run").mkdir()
    (workdir / "my run" / "config.json").write_text(Config().to_json())
    (workdir / "my run" / ".ganctl-run").write_text("a ganctl run\n")
    again = invoke("train", *TINY, "--out", "my run")
    assert "ganctl resume 'my run'" in again.stderr


def test_train_at_64_grayscale(workdir):
    result = invoke("train", *TINY, "--steps", "1", "--resolution", "64", "--channels", "1",
                    "--out", "r")
    assert result.exit_code == 0, result.output
    config = read_json(workdir / "r" / "config.json")
    assert config["resolution"] == 64 and config["channels"] == 1
    assert valid_steps(workdir / "r") == [1]


def test_train_says_the_runs_length_before_the_first_step(workdir):
    result = invoke("train", *TINY, "--out", "r")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    length = next(i for i, line in enumerate(lines) if "steps of batch" in line)
    first_step = next(i for i, line in enumerate(lines) if line.startswith("step "))
    assert length < first_step
    assert lines[length].startswith("4 steps of batch 8: 32 images, under 0.1 passes")


def test_the_length_line_counts_one_step_as_one():
    from ganctl.config import Config
    from ganctl.session import length_line

    assert length_line(Config(steps=1, batch_size=8), 16).startswith("1 step of batch 8: 8 images")


# --- --help ---------------------------------------------------------------------------------------

PANELS = ("Data", "Model", "Loss and optimiser", "Schedule", "Output", "Runtime")


def test_train_help_groups_options_in_panels_and_shows_every_default(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one row per option
    text = help_text("train")
    for panel in PANELS:
        assert f"─ {panel} ─" in text, panel
    blocks = option_blocks(text)
    config_options = {"--" + name.replace("_", "-") for name in FIELD_NAMES} - {"--classes"}
    assert config_options <= blocks.keys()  # every config key is a flag of train
    missing = [name for name, block in blocks.items()
               if name not in SWITCHES and "[default:" not in block]
    assert missing == []
    assert "20000 on real datasets" in blocks["--steps"]  # the real datasets' length is written
    assert "(dcgan)" in blocks["--arch"] and "0.0005 on shapes, 0.0002 on real datasets" in blocks["--lr-g"]


def test_help_speaks_of_the_article_not_the_seed():
    text = help_text("train")
    assert "the article's" in text and "seed's" not in text and "seed article" not in text


# --- a bad command line ---------------------------------------------------------------------------

@pytest.mark.parametrize("args, code, fragments", [
    (["--steps", "0"], 2, ["--steps"]),
    (["--batch-size", "0"], 2, ["--batch-size"]),
    (["--resolution", "48"], 1, ["dcgan does not support resolution 48", "32, 64, 128"]),
    (["--resolution", "16"], 1, ["dcgan does not support resolution 16"]),
    (["--channels", "2"], 1, ["channels must be 1 or 3"]),
    (["--dataset", "nope"], 1, ["unknown dataset 'nope'", "shapes"]),
    (["--arch", "stylegan9"], 1, ["unknown arch 'stylegan9'", "dcgan"]),
    (["--loss", "nope"], 1, ["unknown loss 'nope'", "bce"]),
    (["--lr-g", "-1"], 1, ["lr_g must be a number above 0.0 and at most 10.0, got -1.0"]),
    (["--lr-d", "inf"], 1, ["lr_d must be a number above 0.0 and at most 10.0, got inf"]),
    (["--split", "test"], 1, ["shapes has no split"]),
    (["--device", "tpu"], 1, ["device 'tpu'"]),
    (["--batch-size", "9000"], 1, ["fewer than batch_size 9000"]),
    (["--config", "missing.toml"], 1, ["missing.toml does not exist"]),
    (["--d-steps", "0"], 2, ["--d-steps"]),
    (["--d-steps", "1000000"], 2, ["--d-steps"]),
    (["--steps"], 2, ["--steps"]),
    (["--bogus"], 2, ["--bogus"]),
])
def test_bad_train_input(workdir, args, code, fragments):
    result = invoke("train", *args)
    assert_one_line_error(result, code, *fragments)
    assert not (workdir / "runs").exists() or not any((workdir / "runs").iterdir())


@pytest.mark.parametrize("args, code, fragment", [
    (["--dataset", ""], 1, "dataset is empty"),
    (["--dataset", "  "], 1, "dataset is empty"),
    (["--seed", str(2**32)], 2, "--seed"),
    (["--z-dim", "100000000"], 1, "z_dim must be a whole number from 1 to 16384"),
])
def test_more_bad_train_input(workdir, args, code, fragment):
    result = invoke("train", *TINY, *args, "--out", "r")
    assert result.exit_code == code and fragment in result.output, result.output
    assert "Traceback" not in result.output and not (workdir / "r").exists()


EXTREMES = ["-1", "1e30", "nan", "inf", "-inf", str(2**31), str(2**62), str(2**64), "99999999999999999999999"]
TRAIN_NUMERIC = sorted(name.replace("_", "-") for name in BOUNDS)


@pytest.mark.parametrize("option", TRAIN_NUMERIC)
def test_every_numeric_train_option_refuses_extremes_cleanly(workdir, option):
    low, high = BOUNDS[option.replace("-", "_")]
    for value in EXTREMES:
        if value.lstrip("-").isdigit() and low <= int(value) <= high:
            continue  # in range (a seed of 2**31): not an extreme for this option
        result = invoke("train", "--steps", "1", f"--{option}", value)
        assert_clean(result)
        assert not (workdir / "runs").exists() or not any((workdir / "runs").iterdir()), option


LONG = "a" * 3000


@pytest.mark.parametrize("args, fragments", [
    (["--init-from", "x\ny"], ["x\\ny does not exist"]),  # a line break in a value: shown as \n
    (["--config", "odd\r.toml"], ["odd\\r.toml does not exist"]),
    (["--arch", LONG], ["unknown arch 'aaaa", "... (3002 characters)"]),
    (["--loss", LONG], ["unknown loss 'aaaa", "... (3002 characters)"]),
    (["--preset", LONG], ["(3002 characters)"]),
    (["--eval-metrics", LONG], ["unknown metric 'aaaa", "(3002 characters)"]),
    (["--augment", LONG], ["augment 'aaaa", "(3002 characters)"]),
    (["--dataset", LONG], ["File name too long", "use a shorter path"]),
])
def test_a_value_quoted_in_an_error_keeps_it_one_short_line(workdir, args, fragments):
    for json_mode in ([], ["--json"]):
        result = invoke("train", *args, "--print-config", *json_mode)
        assert_one_line_error(result, 1, *fragments)
        assert len(result.stderr) < 400, result.stderr
        if json_mode:
            assert "\n" not in json.loads(result.stdout)["error"]


# --- did you mean ---------------------------------------------------------------------------------

@pytest.mark.parametrize("flags,suggestion", [
    (["--arch", "dcgn"], "did you mean 'dcgan'?"),
    (["--loss", "hinj"], "did you mean 'hinge'?"),
    (["--preset", "sngan"], "did you mean 'sngan-cifar10'?"),
    (["--dataset", "cifar1"], "did you mean 'cifar10'?"),
])
def test_unknown_names_get_a_suggestion(workdir, flags, suggestion):
    assert_one_line_error(invoke("train", *flags, *TINY), 1, suggestion)
    assert not Path("runs").exists()


def test_an_unknown_config_key_gets_a_suggestion(workdir):
    Path("c.toml").write_text("stpes = 3\n")
    assert_one_line_error(invoke("train", "--config", "c.toml", *TINY), 1,
                          "unknown config key 'stpes'", "did you mean 'steps'?")


def test_a_misspelt_flag_gets_the_close_ones(workdir):
    result = invoke("train", "--stpes", "3")
    assert result.exit_code == 2 and "--steps" in result.stderr


# --- --print-config -------------------------------------------------------------------------------

def test_print_config_names_the_source_of_every_value(workdir):
    assert invoke("train", *TINY, "--out", "base").exit_code == 0
    Path("c.toml").write_text("lr_d = 1e-4\nsteps = 300\n")
    result = invoke("train", "--print-config", "--json", "--dataset", "mnist", "--preset",
                    "mlp-mnist", "--config", "c.toml", "--init-from", "base", "--steps", "7")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    config, sources = doc["config"], doc["sources"]
    assert sources.keys() == set(FIELD_NAMES)
    assert (config["steps"], sources["steps"]) == (7, "flag")  # the flag beats the file
    assert (config["lr_d"], sources["lr_d"]) == (1e-4, "config file c.toml")
    assert (config["loss"], sources["loss"]) == ("bce", "preset mlp-mnist")
    assert (config["log_every"], sources["log_every"]) == (100, "dataset mnist")
    assert (config["seed"], sources["seed"]) == (0, "default")
    # a fine-tuned model is its checkpoint's: they beat the preset's mlp at 28x28x1
    assert (config["arch"], config["resolution"], config["channels"], config["g_width"]) == \
        ("dcgan", 32, 3, 8)
    assert sources["arch"] == sources["g_width"] == "init-from base"
    assert not Path("runs").exists()  # nothing trained, nothing written


def test_print_config_as_a_table(workdir):
    result = invoke("train", "--print-config", "--steps", "9", "--dataset", "mnist")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.strip()}
    assert rows["steps"] == ["9", "flag"]
    assert rows["channels"] == ["1", "dataset", "mnist"]
    assert rows["arch"] == ["dcgan", "default"]


def test_print_config_reports_bad_settings_like_train(workdir):
    assert_one_line_error(invoke("train", "--print-config", "--arch", "nope"), 1, "unknown arch")


def test_print_config_shows_batch_size_auto_as_auto(workdir):
    result = invoke("train", "--batch-size", "auto", "--print-config")
    assert result.exit_code == 0, result.output
    assert re.search(r"batch_size +auto +flag", result.stdout), result.stdout


# --- an existing --out ----------------------------------------------------------------------------

def test_out_into_existing_run_is_refused_and_untouched(trained_run, workdir):
    before = {p: p.stat().st_mtime_ns for p in trained_run.rglob("*")}
    assert_one_line_error(invoke("train", *TINY, "--out", "runs/0001-shapes-dcgan"), 1,
                          "already holds a run", "ganctl resume runs/0001-shapes-dcgan")
    assert {p: p.stat().st_mtime_ns for p in trained_run.rglob("*")} == before


def test_out_into_nonempty_directory_is_refused(workdir):
    (workdir / "r").mkdir()
    (workdir / "r" / "notes.txt").write_text("mine")
    assert_one_line_error(invoke("train", *TINY, "--out", "r"), 1, "not an empty directory")
    assert (workdir / "r" / "notes.txt").read_text() == "mine"


def test_unwritable_out_is_an_error(workdir):
    (workdir / "file").write_text("x")
    assert_one_line_error(invoke("train", *TINY, "--out", "file/run"), 1, "cannot create")


def test_train_resume_and_overwrite_flags(workdir):
    assert invoke("train", *TINY, "--steps", "2", "--out", "r").exit_code == 0
    result = invoke("train", *TINY, "--out", "r", "--resume")
    assert result.exit_code == 0, result.output
    assert valid_steps(workdir / "r")[-1] == 4
    refused = invoke("train", *TINY, "--batch-size", "4", "--out", "r", "--resume")
    assert refused.exit_code == 1 and "started with batch_size = 8" in refused.stderr
    (workdir / "r" / "mine.txt").write_text("keep me")
    result = invoke("train", *TINY, "--steps", "2", "--out", "r", "--overwrite")
    assert result.exit_code == 0, result.output
    assert valid_steps(workdir / "r") == [2] and (workdir / "r" / "mine.txt").read_text() == "keep me"
    assert invoke("train", "--out", "r", "--resume", "--overwrite").exit_code == 2
    fresh = invoke("train", *TINY, "--steps", "2", "--out", "new", "--resume")  # nothing to resume
    assert fresh.exit_code == 0 and valid_steps(workdir / "new") == [2]


def test_resume_needs_out(workdir):
    result = invoke("train", "--resume")
    assert result.exit_code == 2 and "needs --out" in result.output


def test_train_resume_with_a_relative_folder_dataset(workdir):
    image_folder(workdir / "pics", 8)
    args = [*TINY, "--dataset", "pics/", "--resolution", "32", "--out", "r"]
    assert invoke("train", *args, "--steps", "2").exit_code == 0
    result = invoke("train", *args, "--steps", "3", "--resume")
    assert result.exit_code == 0, result.output
    assert valid_steps(workdir / "r")[-1] == 3


# --- fine-tuning (--init-from) --------------------------------------------------------------------

@pytest.fixture
def source(_trained: Path, workdir: Path) -> Path:
    """The 4-step tiny run at ./src, to fine-tune from."""
    shutil.copytree(_trained, workdir / "src")
    return Path("src")


def test_init_from_starts_from_the_checkpoints_weights_exactly(source, monkeypatch):
    seen = {}
    real_fit = session.fit

    def spy(state, *args, **kwargs):
        seen["step"] = state.step
        seen["opt"] = len(state.opt_G.state) + len(state.opt_D.state)
        seen["tensors"] = {f"{name}.{k}": v.detach().clone() for name in ("G", "D", "G_ema")
                           for k, v in getattr(state, name).state_dict().items()}
        return real_fit(state, *args, **kwargs)

    monkeypatch.setattr(session, "fit", spy)
    result = invoke("train", "--init-from", str(source), "--dataset", "shapes", "--resolution",
                    "32", "--steps", "2", "--batch-size", "8", "--device", "cpu", "--out", "ft",
                    "--json")
    assert result.exit_code == 0, result.output
    _, tensors = final_tensors(source)
    assert seen["step"] == 0 and seen["opt"] == 0  # step 0, fresh optimisers
    assert seen["tensors"].keys() == {k for k in tensors if k.split(".")[0] in ("G", "D", "G_ema")}
    for name, value in seen["tensors"].items():
        assert torch.equal(value, tensors[name].to(value.dtype)), name
    stored = json.loads(Path("ft/config.json").read_text())
    assert stored["init_from"] == str((source / "checkpoints" / "step-000000004.safetensors").absolute())
    assert stored["g_width"] == 8  # the model came from the checkpoint, not the defaults
    header = checkpoint.read_header(Path(json.loads(result.stdout)["checkpoint"]))
    assert header.step == 2


@pytest.mark.parametrize("flags,differs", [
    (["--arch", "resnet"], "arch dcgan"),
    (["--g-width", "16"], "g_width 8"),
    (["--resolution", "64"], "resolution 32"),
])
def test_init_from_refuses_another_model(source, flags, differs):
    result = invoke("train", "--init-from", str(source), *TINY, *flags, "--out", "ft")
    assert_one_line_error(result, 1, differs, "fine-tuning needs the same model")
    assert not Path("ft").exists()


def test_init_from_a_conditional_model_needs_as_many_classes(workdir):
    assert invoke("train", *TINY, "--conditional", "--out", "cond").exit_code == 0
    folder = Path("two")
    for i, name in enumerate(["a", "b"] * 8):  # 2 classes (shapes has 4)
        (folder / name).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (i * 15, 0, 0)).save(folder / name / f"{i}.png")
    result = invoke("train", "--init-from", "cond", "--dataset", str(folder), *TINY, "--out", "ft")
    assert_one_line_error(result, 1, "conditional on", "classes")
    assert not Path("ft").exists()


def test_init_from_what_is_not_a_checkpoint(workdir):
    assert_one_line_error(invoke("train", "--init-from", "nowhere", *TINY), 1, "nowhere")


def test_init_from_and_resume_exclude_each_other(source):
    result = invoke("train", "--init-from", str(source), "--resume", "--out", "src", *TINY)
    assert result.exit_code == 2 and "--init-from" in result.stderr


@pytest.mark.parametrize("flags,cause", [(["--r1", "1"], "R1/R2: dcgan's D is built without BatchNorm"),
                                         (["--loss", "wgan-gp"], "wgan-gp: dcgan's D"),
                                         (["--preset", "small-data"], "R1/R2")])
def test_init_from_refuses_a_loss_that_changes_the_networks_before_reading_data(source, flags, cause):
    """Not only the model's own settings shape it: a gradient penalty drops dcgan's D
    BatchNorm. Said as such, before any data is decoded or file written."""
    result = invoke("train", "--init-from", str(source), *TINY, *flags, "--out", "ft")
    assert_one_line_error(result, 1, "this run's networks differ from the checkpoint's", cause,
                          "fine-tune with the loss and penalties the model was trained with")
    assert "decoding" not in result.stdout and not Path("ft").exists()
