"""`ganctl import`, and NVlabs network files (.pkl) given to sample, inspect, export, eval and
train --init-from: what each writes and shows, what they refuse, and a fine-tune of an imported
network followed by resume, sample and export, all from the command line."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, image_folder, invoke
from nvlabs_files import (
    NAMED,
    NO_SHARED,
    SHARED,
    as_persistent,
    config,
    d_kwargs,
    networks,
    snapshot,
    touch,
    write,
)
from PIL import Image

from ganctl import checkpoint
from ganctl.importers import unpickle
from ganctl.importers.convert import IMPORTED
from ganctl.stored import stored_config


@pytest.fixture(scope="module")
def _made(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny StyleGAN2 in NVlabs' format (made once) and its networks' state dicts."""
    cfg = config()
    nets = networks(cfg)
    path = write(tmp_path_factory.mktemp("nvlabs") / "net.pkl", snapshot(cfg, nets))
    return path, {k: v.state_dict() for k, v in nets.items()}


@pytest.fixture
def made(_made, workdir) -> tuple[Path, dict]:
    """The made network copied to ./net.pkl."""
    target = workdir / "net.pkl"
    target.write_bytes(_made[0].read_bytes())
    return Path("net.pkl"), _made[1]


def ok(*args: object) -> dict:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --- ganctl import ---------------------------------------------------------------------------

def test_import_writes_a_checkpoint_with_provenance(made):
    pkl, states = made
    doc = ok("import", pkl, "out/net.safetensors")
    sha = hashlib.sha256(pkl.read_bytes()).hexdigest()
    assert {k: doc[k] for k in ("out", "source", "sha256", "code", "networks", "imported",
                                "resolution", "z_dim", "classes", "augment_p", "notes")} == {
        "out": "out/net.safetensors", "source": "net.pkl", "sha256": sha,
        "code": "stylegan2-ada-pytorch", "networks": ["G", "D", "G_ema"],
        "imported": ["G", "D", "G_ema"], "resolution": 32, "z_dim": 8, "classes": [],
        "augment_p": 0.25, "notes": []}
    with checkpoint.open_checkpoint(Path(doc["out"])) as header:  # verified against its checksum
        tensors = checkpoint.load_tensors(header)
        source = json.loads(header.metadata[IMPORTED])
        config_ = stored_config(header)
    assert (header.step, doc["bytes"]) == (0, Path(doc["out"]).stat().st_size)
    assert {k: source[k] for k in ("source", "sha256", "augment_p", "networks")} == {
        "source": "net.pkl", "sha256": sha, "augment_p": 0.25, "networks": ["G", "D", "G_ema"]}
    assert source["dataset"]["path"] == "~/datasets/made.zip"
    assert (config_.arch, config_.resolution, config_.z_dim, config_.g_width, config_.mapping_layers,
            config_.channel_base) == ("stylegan2", 32, 8, 16, 2, 512)
    assert set(tensors) == {f"{k}.{name}" for k, sd in states.items() for name in sd}
    for key, sd in states.items():
        for name, value in sd.items():
            assert torch.equal(tensors[f"{key}.{name}"], value), name
    assert torch.equal(tensors["G_ema.mapping.w_avg"], states["G_ema"]["mapping.w_avg"])
    assert not list(Path("out").glob(".*"))  # no temporary file left


def test_import_says_what_it_wrote_and_defaults_out_beside_the_file(made):
    result = invoke("import", made[0])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("wrote net.safetensors (")
    assert "G, D, G_ema of net.pkl (stylegan2-ada-pytorch, 32x32x3, z 8) in " in result.stdout
    assert result.stdout.rstrip().endswith("try: ganctl sample -n 16 grid.png --ckpt "
                                           "net.safetensors")
    assert Path("net.safetensors").is_file()


def test_import_replaces_only_an_earlier_import(made, run):
    pkl, _ = made
    ok("import", pkl, "a.safetensors")
    ok("import", pkl, "a.safetensors")  # the same import again
    Path("notes.safetensors").write_text("mine")
    ckpt = run / "checkpoints" / "step-000000004.safetensors"
    before = ckpt.read_bytes()
    for target, kept in (("notes.safetensors", b"mine"), (ckpt, before)):
        assert_one_line_error(invoke("import", pkl, target), 1, "exists and is not a checkpoint "
                              "ganctl imported; ganctl import replaces only its own imports")
        assert Path(target).read_bytes() == kept


@pytest.mark.parametrize("args, code, message", [
    (["net.pkl", "net.pt"], 2, "net.pt: a checkpoint's name ends in .safetensors"),
    (["a.safetensors"], 2, "a.safetensors is a checkpoint already; ganctl import reads NVlabs "
                           "network .pkl files"),
    (["gone.pkl"], 1, "gone.pkl does not exist; give an NVlabs network .pkl"),
    (["notes.pkl"], 1, "notes.pkl is not a pickle of the kind NVlabs write (protocol 2 to 5)"),
    (["net.pkl", "d/"], 2, "d/ names a folder; give a file's name, like d/net.safetensors"),
])
def test_import_refuses_in_one_line(made, args, code, message):
    Path("notes.pkl").write_text("not a pickle")
    Path("a.safetensors").write_bytes(b"")
    assert_one_line_error(invoke("import", *args), code, message)
    assert not Path("net.safetensors").exists() and not Path("gone.safetensors").exists()


def test_a_failed_write_leaves_no_file_and_an_earlier_import_as_it_was(made, monkeypatch):
    import errno

    from ganctl import fsutil

    ok("import", made[0], "a.safetensors")
    before = Path("a.safetensors").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsutil.os, "fsync", full)
    for out in ("a.safetensors", "b.safetensors"):
        assert_one_line_error(invoke("import", made[0], out), 1, f"cannot write checkpoint {out}: "
                              "No space left on device; check free space and permissions")
    assert Path("a.safetensors").read_bytes() == before and not Path("b.safetensors").exists()
    assert sorted(p.name for p in Path(".").iterdir()) == ["a.safetensors", "net.pkl"]


def test_resume_of_a_pkl_points_to_fine_tuning(made):
    assert_one_line_error(invoke("resume", made[0]), 1, "net.pkl is an NVlabs network, not a "
                          "ganctl run; resume continues a run: fine-tune from it with ganctl "
                          "train --init-from net.pkl")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_import_into_a_read_only_folder_asks_for_out(made):
    folder = Path("ro")
    folder.mkdir()
    (folder / "net.pkl").write_bytes(made[0].read_bytes())
    folder.chmod(0o555)
    try:
        assert_one_line_error(invoke("import", folder / "net.pkl"), 1, "is read-only); give OUT: "
                              "ganctl import ro/net.pkl OUT.safetensors")
    finally:
        folder.chmod(0o755)


def test_import_from_python_reports_what_was_set_aside(workdir):
    from ganctl import api
    from ganctl.errors import ConfigError

    cfg = config(conditional=True)
    nets = networks(cfg)
    data = snapshot(cfg, nets, D=as_persistent(nets["D"], d_kwargs(cfg, "tf")))
    pkl = write(Path("cond.pkl"), data)
    heard: list[str] = []
    doc = api.import_network(pkl, notes=heard.append)
    assert doc["imported"] == ["G", "G_ema"] and doc["classes"] == [str(i) for i in range(10)]
    assert heard == doc["notes"] and heard[0].startswith("D left out (D's class mapping has 0 "
                                                          "layers")
    with pytest.raises(ConfigError, match="a checkpoint's name ends in .safetensors"):
        api.import_network(pkl, "cond.onnx")
    info = ok("inspect", doc["out"])  # a checkpoint without D: G and G_ema counted
    assert list(info["params"]) == ["G"] and info["imported"]["imported"] == ["G", "G_ema"]
    assert_one_line_error(invoke("train", "--init-from", pkl, "--dataset", "shapes", "--steps", "1"), 1,
                          "--init-from cond.pkl: no D to fine-tune (D left out")


# --- the other commands take a .pkl -------------------------------------------------------------

def test_inspect_shows_what_a_file_holds_without_rebuilding_its_weights(made, monkeypatch):
    loads: list[int] = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(1) or real(*a, **k))
    doc = ok("inspect", made[0])
    assert len(loads) < 200  # small tensors alone (unpickle.SMALL elements): no weight matrix
    assert {k: doc[k] for k in ("format", "networks", "resolution", "channels", "z_dim", "w_dim",
                                "classes", "mapping_layers", "g_width", "d_width", "augment_p",
                                "sha256")} == {
        "format": "NVlabs network pickle", "networks": ["G", "D", "G_ema"], "resolution": 32,
        "channels": 3, "z_dim": 8, "w_dim": 8, "classes": 0, "mapping_layers": 2, "g_width": 16,
        "d_width": 16, "augment_p": 0.25,
        "sha256": hashlib.sha256(made[0].read_bytes()).hexdigest()}
    assert doc["params"] == {name: sum(v.numel() for k, v in made[1][name].items()
                                       if k in dict(networks(config())[name].named_parameters()))
                             for name in ("G", "D")}
    result = invoke("inspect", made[0])
    assert result.exit_code == 0, result.output
    for row in ("NVlabs network pickle net.pkl", "stylegan2-ada-pytorch", "G, D, G_ema",
                "32x32x3", "none (unconditional)", "0.25", "resnet, minibatch-stddev group 4",
                "~/datasets/made.zip"):
        assert row in result.stdout, row
    ok("import", made[0], "i.safetensors")
    result = invoke("inspect", "i.safetensors")
    assert "imported from" in result.stdout and "net.pkl (stylegan2-ada-pytorch)" in result.stdout


def test_sample_and_export_from_a_pkl_match_its_import(made):
    ok("import", made[0], "i.safetensors")
    ok("sample", "-n", "4", "a.png", "--ckpt", made[0])
    ok("sample", "-n", "4", "b.png", "--ckpt", "i.safetensors")
    assert np.array_equal(np.asarray(Image.open("a.png")), np.asarray(Image.open("b.png")))
    doc = ok("export", made[0], "g.pt")
    assert doc["max_abs_diff"] <= 1e-4 and doc["z_dim"] == 8
    loaded = torch.jit.load("g.pt")
    assert tuple(loaded(torch.zeros(2, 8)).shape) == (2, 3, 32, 32)
    pytest.importorskip("onnxruntime")
    assert ok("export", made[0], "g.onnx")["max_abs_diff"] <= 1e-4


def test_eval_of_a_pkl_asks_for_data_then_scores_it(made, fake_net):
    assert_one_line_error(invoke("eval", made[0], "--num", "10"), 1, "net.pkl is an NVlabs network, "
                          "trained on data ganctl does not have (~/datasets/made.zip): score it "
                          "against yours with --dataset")
    doc = ok("eval", made[0], "--dataset", "shapes", "--num", "10", "--num-real", "20",
             "--metrics", "fid")
    assert (doc["checkpoint"], doc["dataset"], doc["num_fake"]) == ("net.pkl", "shapes", 10)
    assert doc["metrics"]["fid"] > 0


@NO_SHARED
@pytest.mark.parametrize("name", ["stylegan2-tiny-32", "stylegan2-tiny-cond-64"])
@pytest.mark.parametrize("psi", ["1", "05"])
def test_nvlabs_seeds_give_their_images(workdir, name, psi):
    """`sample --nvlabs-seeds` from their .pkl: the uint8 images their generate.py wrote for
    seeds 0-3 (const noise; their formula rounds down, ganctl's to nearest: one level)."""
    from safetensors.torch import load_file

    expected = load_file(SHARED / f"{name}.expected.safetensors")[f"u8_psi{psi}"]
    truncation = ["--truncation", "0.5"] if psi == "05" else []
    ok("sample", "--seeds", "0-3", "--nvlabs-seeds", "--out-dir", "out", "--ckpt",
       SHARED / f"{name}.pkl", *truncation)
    files = sorted(Path("out").rglob("*.png"))
    assert len(files) == 4
    for i, file in enumerate(sorted(files, key=lambda f: int(f.stem.removeprefix("seed")))):
        image = np.asarray(Image.open(file)).astype(int)
        assert np.abs(image - expected[i].numpy().astype(int)).max() <= 1
    ok("sample", "--seeds", "0-3", "--out-dir", "theirs-not", "--ckpt", SHARED / f"{name}.pkl")
    assert not np.array_equal(np.asarray(Image.open(sorted(Path("theirs-not").rglob("*.png"))[0])),
                              np.asarray(Image.open(files[0])))  # ganctl's seeds are other z


@NO_SHARED
def test_load_from_python_takes_a_pkl_and_their_seeds():
    from safetensors.torch import load_file

    import ganctl

    name = "stylegan2-tiny-cond-64"
    expected = load_file(SHARED / f"{name}.expected.safetensors")["u8_psi05"]
    G = ganctl.load(SHARED / f"{name}.pkl", device="cpu", nvlabs_seeds=True)
    assert (G.step, G.classes, str(G.checkpoint)) == (0, tuple("0123456789"),
                                                     str(SHARED / f"{name}.pkl"))
    x = G.sample(seeds=range(4), truncation=0.5).permute(0, 2, 3, 1)  # seed i: class i mod 10
    assert (x.int() - expected.int()).abs().max() <= 1


def test_nvlabs_seeds_are_checked(made, run):
    assert_one_line_error(invoke("sample", "x.png", "--nvlabs-seeds", "--seed", str(2**32 - 1),
                                 "-n", "2", "--ckpt", made[0]), 2, "seed 4294967296 is past "
                          "NVlabs' seeds (0 to 2**32 - 1")
    assert_one_line_error(invoke("sample", "x.png", "--nvlabs-seeds", "--truncation", "0.5",
                                 "--ckpt", run), 1, "truncation with --nvlabs-seeds needs a "
                          "generator with a mapping network")
    assert not Path("x.png").exists()


# --- fine-tuning from an imported network ----------------------------------------------------

FAST = ["--dataset", "shapes", "--steps", "2", "--batch-size", "4", "--no-compile", "--no-curves",
        "--log-every", "1"]


@pytest.mark.parametrize("source", ["made", pytest.param("stylegan2-tiny-32", marks=NO_SHARED)])
def test_fine_tune_an_imported_network_then_resume_sample_and_export(made, source):
    """train --init-from FILE.pkl starts from their G, D and G_ema with fresh optimisers at the
    network's resolution, with the small-data preset's augmentation; resume, sample and export
    of that run work."""
    pkl = made[0] if source == "made" else SHARED / f"{source}.pkl"
    ok("import", pkl, "start.safetensors")
    with checkpoint.open_checkpoint(Path("start.safetensors")) as header:
        start = checkpoint.load_tensors(header, ("D.",))
    result = invoke("train", "--init-from", pkl, *FAST, "--out", "ft")
    assert result.exit_code == 0, result.output
    assert f"weights of G, D and G_ema from {Path(pkl).absolute()} (fine-tuning from step 0)" \
        in result.output
    run_config = json.loads(Path("ft/config.json").read_text())
    assert {k: run_config[k] for k in ("arch", "resolution", "augment", "init_from")} == {
        "arch": "stylegan2", "resolution": 32, "augment": "ada",
        "init_from": str(Path(pkl).absolute())}
    with checkpoint.open_checkpoint(Path("ft/checkpoints/step-000000002.safetensors")) as header:
        after = checkpoint.load_tensors(header, ("D.", "opt_D.", "loss.augment.p"))
    saved = ok("inspect", pkl)["augment_p"]  # ADA goes on from the p their file was saved with
    assert abs(float(after.pop("loss.augment.p")) - (saved or 0.0)) <= 2 * 4 / 500_000 + 1e-6
    moved = max((after[k] - v).abs().max().item() for k, v in start.items()
                if v.is_floating_point())
    assert 0 < moved < 0.1  # two Adam steps from their D (a fresh D would differ by ~1)
    assert {k for k in after if k.startswith("opt_D.state.") and k.endswith(".step")}
    assert all(after[k].item() <= 2 for k in after if k.startswith("opt_D.state.")
               and k.endswith(".step"))  # a fresh optimiser: two steps at most, none of theirs
    result = invoke("resume", "ft", "--steps", "4")
    assert result.exit_code == 0, result.output
    assert Path("ft/checkpoints/step-000000004.safetensors").is_file()
    assert ok("sample", "-n", "4", "s.png", "--ckpt", "ft")["step"] == 4
    assert ok("export", "ft", "g.pt")["max_abs_diff"] <= 1e-4


def test_fine_tuning_settings_and_a_folder_at_another_size(made):
    """The network's settings come from the file, the augmentation from the small-data preset
    (a flag overrides it); a folder of 48 px images trains at the network's 32 px; another
    resolution is refused with the fix."""
    doc = ok("train", "--init-from", made[0], "--dataset", "shapes", "--print-config")
    assert doc["config"]["augment"] == "ada"
    assert doc["sources"]["augment"] == doc["sources"]["resolution"] == "init-from net.pkl"
    doc = ok("train", "--init-from", made[0], "--dataset", "shapes", "--augment", "none",
             "--print-config")
    assert (doc["config"]["augment"], doc["sources"]["augment"]) == ("", "flag")
    image_folder(Path("photos"), 8, size=(48, 48))
    result = invoke("train", "--init-from", made[0], "--dataset", "photos", "--steps", "1",
                    "--batch-size", "4", "--no-compile", "--no-curves", "--out", "ft")
    assert result.exit_code == 0, result.output
    assert json.loads(Path("ft/config.json").read_text())["resolution"] == 32
    result = invoke("train", "--init-from", made[0], "--dataset", "shapes", "--resolution", "64",
                    "--steps", "1")
    assert_one_line_error(result, 1, "--init-from net.pkl was trained with resolution 32, this "
                          "run has resolution 64; fine-tuning needs the same model")


# --- nothing in a file runs, whichever command reads it ----------------------------------------

@pytest.mark.parametrize("command", [
    ["import", "evil.pkl"], ["inspect", "evil.pkl"], ["sample", "x.png", "--ckpt", "evil.pkl"],
    ["export", "evil.pkl", "g.pt"], ["eval", "evil.pkl", "--dataset", "shapes"],
    ["train", "--init-from", "evil.pkl", "--steps", "1"]])
def test_a_payload_never_runs_from_any_command(workdir, command):
    marker = workdir / "ran"
    data = snapshot(evil=touch(marker)["os.system"])
    write(workdir / "evil.pkl", data)
    result = invoke(*command)
    assert_one_line_error(result, 1, f"evil.pkl holds global {NAMED['os.system']}, which is no "
                          "part of an NVlabs network file; refused without running anything")
    assert not marker.exists()
    assert not [p for p in workdir.iterdir() if p.name not in ("evil.pkl", "data", "cache")]


def test_import_is_listed_and_documented():
    result = invoke("--help")
    names = re.findall(r"^│ ([a-z]+) ", result.stdout, re.MULTILINE)
    assert names[:5] == ["train", "resume", "sample", "export", "import"]
    assert names.index("import") == names.index("export") + 1
    help_text = " ".join(invoke("import", "--help").stdout.split())
    assert "Usage: ganctl import [OPTIONS] {FILE.pkl} [OUT.safetensors]" in help_text
    assert "Example: ganctl import ffhq.pkl ffhq.safetensors" in help_text
    assert "[default: (FILE.safetensors, beside FILE)]" in help_text
    assert unpickle.MAX_BYTES == 4 * 2**30


def test_fine_tuning_an_nvlabs_network_needs_the_data_to_tune_it_on(made):
    """Their network was trained on their images: without --dataset, ganctl's default (shapes)
    would tune FFHQ on coloured circles, so it asks (the .pkl and its import alike)."""
    ok("import", made[0], "net.safetensors")
    for source in (made[0], "net.safetensors"):
        result = invoke("train", "--init-from", source, "--steps", "1")
        assert result.exit_code == 2 and "--dataset" in result.output, result.output
        assert "is an NVlabs network trained on" in result.output
        assert "give the images to fine-tune it on" in result.output
    assert not Path("runs").exists()
