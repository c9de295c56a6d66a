"""Issue 12's everyday use, the parts in the CLI and the session: help with defaults in panels,
--print-config with each value's source, "did you mean", dates in inspect, the run's length
before its first step, and fine-tuning with --init-from."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from helpers import TINY, assert_one_line_error, final_tensors, invoke
from PIL import Image

from ganctl import checkpoint, session
from ganctl.config import FIELD_NAMES

TINY_SMALL = ["--batch-size", "8", "--g-width", "8", "--d-width", "8", "--device", "cpu",
              "--sample-every", "1000", "--ckpt-every", "1000", "--log-every", "1000"]
PANELS = ("Data", "Model", "Loss and optimiser", "Schedule", "Output", "Runtime")
# options that are switches without a value of their own: nothing to show as a default
SWITCHES = {"--help", "--list-presets", "--print-config", "--resume", "--overwrite", "--json",
            "--debug", "--install-completion", "--show-completion"}


def help_text(*command: str) -> str:
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    return result.stdout


def option_blocks(text: str) -> dict[str, str]:
    """Each option of a rich help screen and the text of its row(s), by long name."""
    blocks: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        found = re.match(r"│ (--[a-z0-9-]+)\s", line)  # a row's first cell (wrapped text is indented)
        if found:
            name = found.group(1)
            blocks[name] = ""
        if name:
            blocks[name] += " " + line.strip("│ ").strip()
    return blocks


# --- help ------------------------------------------------------------------------------------------

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


def test_resume_help_shows_defaults_too(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    blocks = option_blocks(help_text("resume"))
    assert all("[default:" in block for name, block in blocks.items() if name not in SWITCHES
               and name not in ("--allow-data-change",))


def test_help_speaks_of_the_article_not_the_seed():
    text = help_text("train")
    assert "the article's" in text and "seed's" not in text and "seed article" not in text


def test_shell_completion_can_be_installed():
    assert "--install-completion" in help_text()


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


# --- --print-config ---------------------------------------------------------------------------------

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


# --- what train says before its first step, and inspect -----------------------------------------

def test_train_says_the_runs_length_before_the_first_step(workdir):
    result = invoke("train", *TINY, "--out", "r")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    length = next(i for i, line in enumerate(lines) if "steps of batch" in line)
    first_step = next(i for i, line in enumerate(lines) if line.startswith("step "))
    assert length < first_step
    assert lines[length].startswith("4 steps of batch 8: 32 images, under 0.1 passes")


def test_inspect_shows_times_as_dates(workdir):
    assert invoke("train", *TINY, "--out", "r").exit_code == 0
    result = invoke("inspect", "r")
    assert result.exit_code == 0, result.output
    created = re.search(r"created\s*│\s*(\S+ \S+)", result.stdout)
    logged = re.search(r"last logged\s*│\s*(\S+ \S+)", result.stdout)
    assert created and logged, result.stdout
    for found in (created, logged):
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", found.group(1))


# --- fine-tuning ----------------------------------------------------------------------------------

@pytest.fixture
def source(workdir) -> Path:
    assert invoke("train", *TINY, "--out", "src").exit_code == 0
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


# --- runs, plot and the cache from the command line -----------------------------------------------

def test_runs_lists_a_complete_run_as_json_and_as_a_table(workdir):
    assert invoke("train", *TINY).exit_code == 0
    result = invoke("runs", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    [run] = doc["runs"]
    assert (run["id"], run["status"], run["step"], run["steps"]) == ("0001-shapes-dcgan", "complete", 4, 4)
    table = invoke("runs").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "STATUS", "DATASET"]
    assert table[1].split()[:5] == ["0001-shapes-dcgan", "complete", "shapes", "dcgan", "32"]


def test_runs_under_an_empty_root_says_how_to_start_one(workdir):
    result = invoke("runs")
    assert result.exit_code == 0 and "start one with `ganctl train`" in result.stdout


def test_plot_writes_a_png_of_a_fixed_size(workdir):
    assert invoke("train", *TINY, "--out", "r").exit_code == 0
    result = invoke("plot", "r", "curves-copy.png", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["out"] == "curves-copy.png"
    with Image.open("curves-copy.png") as image:
        assert image.format == "PNG" and image.size == (1200, 800)
    assert_one_line_error(invoke("plot", "nowhere"), 1, "not a ganctl run directory")
    assert invoke("plot", "r", "x.jpg").exit_code == 2


def test_cache_clean_asks_unless_yes(workdir, monkeypatch):
    monkeypatch.setenv("GANCTL_CACHE_DIR", str(workdir / "cache"))
    folder = Path("imgs")
    folder.mkdir()
    for i in range(8):
        Image.new("RGB", (32, 32), (i * 30, 0, 0)).save(folder / f"{i}.png")
    assert invoke("data", "prepare", "--dataset", str(folder)).exit_code == 0
    listed = json.loads(invoke("data", "cache", "list", "--json").stdout)
    assert [c["kind"] for c in listed["caches"]] == ["decoded"] and listed["bytes"] > 0
    # no terminal to ask on: refused, nothing removed
    assert_one_line_error(invoke("data", "cache", "clean"), 1, "needs --yes")
    assert len(json.loads(invoke("data", "cache", "list", "--json").stdout)["caches"]) == 1
    result = invoke("data", "cache", "clean", "imgs", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["freed_bytes"] == listed["bytes"]
    assert json.loads(invoke("data", "cache", "list", "--json").stdout)["caches"] == []
    assert_one_line_error(invoke("data", "cache", "clean", "nope", "--yes"), 1, "no cache of 'nope'")


def test_overwrite_removes_the_watching_files_too(workdir):
    """curves.png, RUN/tensorboard/ and wandb_id.txt are ganctl's: --overwrite replaces them, so
    a new run never continues the old one's W&B run or TensorBoard curves."""
    pytest.importorskip("tensorboard")
    assert invoke("train", *TINY, "--curves", "--out", "r", "--tensorboard").exit_code == 0
    Path("r/wandb_id.txt").write_text("abcdef0123456789\n")
    Path("r/.curves.png.tmp-123").write_bytes(b"half")
    Path("r/notes.txt").write_text("mine")
    old_events = sorted(Path("r/tensorboard").iterdir())
    assert Path("r/curves.png").is_file() and old_events
    assert invoke("train", *TINY, "--curves", "--out", "r", "--overwrite").exit_code == 0
    assert not Path("r/wandb_id.txt").exists() and not Path("r/.curves.png.tmp-123").exists()
    assert not Path("r/tensorboard").exists()  # this run has no --tensorboard
    assert Path("r/curves.png").is_file() and Path("r/notes.txt").read_text() == "mine"


@pytest.mark.parametrize("step_s,told", [(200.0, True), (2.0, False)])
def test_a_long_run_says_how_long_it_has_to_go_once_its_speed_is_known(workdir, monkeypatch,
                                                                         step_s, told):
    """20 steps of 200 s (a big model on a CPU): 10 s in, the user is told about an hour is
    left; 20 steps of 2 s are not worth a word."""
    from test_watch import SlowClock  # noqa: PLC0415

    clock = SlowClock(monkeypatch, step_s, step_s)
    result = invoke("train", *TINY_SMALL, "--steps", "20", "--out", "r")
    assert result.exit_code == 0, result.output
    said = [(t, line) for t, line in clock.lines if "to go at its speed so far" in line]
    assert len(said) == (1 if told else 0), result.stdout
    if told:
        seconds, line = said[0]
        assert seconds == 2 * step_s  # the first line by time: step 2 ended 400 s in
        assert "about 1h00m00s to go" in line and "--max-time" in line  # 18 steps of 200 s


@pytest.mark.parametrize("sub", ["tensorboard", "checkpoints", "samples"])
def test_overwrite_never_empties_a_linked_folder(workdir, sub):
    """RUN/tensorboard linked to a shared log folder (or checkpoints/ to a bigger disk): its files
    are not the run's to delete; --overwrite refuses, and nothing is removed anywhere."""
    assert invoke("train", *TINY, "--out", "r").exit_code == 0
    shared = Path("shared")
    if Path("r", sub).exists():
        Path("r", sub).rename(shared)
    else:
        shared.mkdir()
    names = {"tensorboard": "events.out.tfevents.1.other.1.0", "checkpoints": "step-000000001.safetensors",
             "samples": "step-000000001.png"}
    (shared / names[sub]).write_bytes(b"someone else's")
    before = sorted(p.name for p in shared.iterdir())
    Path("r", sub).symlink_to(shared.absolute())
    result = invoke("train", *TINY, "--out", "r", "--overwrite")
    assert_one_line_error(result, 1, f"r/{sub} is not what ganctl wrote there")
    assert sorted(p.name for p in shared.iterdir()) == before
    assert Path("r/config.json").is_file()  # the run is still there too


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


def test_a_run_stopped_by_max_time_logs_its_last_step_and_draws_its_curves(workdir):
    result = invoke("train", *TINY, "--curves", "--steps", "1000000", "--log-every", "100000",
                    "--max-time", "3s", "--out", "r", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["stopped"] == "max-time"
    from ganctl.rundir import read_metrics  # noqa: PLC0415
    assert [r["step"] for r in read_metrics(Path("r"))] == [doc["step"]]
    assert Path("r/curves.png").is_file()


def test_runs_of_a_folder_that_does_not_exist_is_an_error(workdir):
    assert_one_line_error(invoke("runs", "nowhere"), 1, "nowhere does not exist")


def test_load_of_something_that_is_no_path_is_a_ganctl_error(workdir):
    import ganctl  # noqa: PLC0415
    from ganctl.errors import ConfigError  # noqa: PLC0415
    with pytest.raises(ConfigError, match="got int 5"):
        ganctl.load(5)


def test_the_api_says_how_to_continue_a_run_in_python_terms(workdir):
    import ganctl  # noqa: PLC0415
    from ganctl.errors import RunError  # noqa: PLC0415
    settings = {"steps": 2, "batch_size": 8, "g_width": 8, "d_width": 8, "device": "cpu",
                "quiet": True}
    ganctl.train(out="r", **settings)
    with pytest.raises(RunError, match=r"ganctl.train\(out='r', resume=True\), replace it with "
                                       r"overwrite=True"):
        ganctl.train(out="r", **settings)


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


def test_print_config_shows_batch_size_auto_as_auto(workdir):
    result = invoke("train", "--batch-size", "auto", "--print-config")
    assert result.exit_code == 0, result.output
    assert re.search(r"batch_size +auto +flag", result.stdout), result.stdout


def test_the_length_line_counts_one_step_as_one():
    from ganctl.config import Config
    from ganctl.session import length_line

    assert length_line(Config(steps=1, batch_size=8), 16).startswith("1 step of batch 8: 8 images")


def test_a_run_folder_whose_name_is_not_utf8_gets_its_curves_drawn(workdir):
    """Its name reaches matplotlib as surrogates, which it refused (a note 'cannot refresh
    curves.png: set_text(): incompatible function arguments' and no curves)."""
    import os

    out = os.fsdecode(b"r_\xff")
    result = invoke("train", *TINY, "--curves", "--out", out)
    assert result.exit_code == 0, result.output
    assert "cannot refresh" not in result.stdout and (workdir / out / "curves.png").is_file()
