"""StyleGAN2 from the command line: sampling in w (truncation, noise modes, the style-mixing
figure, interpolation), bulk export, eval, export with the mapping inside, resume and inspect."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY, assert_one_line_error, invoke, rewrite
from PIL import Image

from ganctl import rundir, sample
from ganctl.checkpoint import read_header

SG2 = ["--arch", "stylegan2", "--z-dim", "8", "--w-dim", "8", "--channel-base", "256",
       "--mapping-layers", "2", "--r1-every", "2", "--pl-every", "2"]


@pytest.fixture(scope="module")
def _sg2_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("sg2") / "run"
    result = invoke("train", *TINY, *SG2, "--out", run_dir)
    assert result.exit_code == 0, result.output
    # noise strengths as a longer run leaves them (a 4-step run's are still almost 0): the
    # noise modes then differ visibly
    ckpt = rundir.latest_in_run(run_dir)
    assert ckpt is not None

    def stronger(tensors, meta):
        for name in tensors:
            if name.startswith("G_ema.") and name.endswith("noise_strength"):
                tensors[name] = torch.full_like(tensors[name], 0.5)

    rewrite(ckpt, ckpt, stronger)
    return run_dir


@pytest.fixture
def sg2(_sg2_run: Path, workdir: Path) -> Path:
    shutil.copytree(_sg2_run, workdir / "sg2")
    return Path("sg2")


def pixels(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_noise_modes_and_truncation(sg2):
    for name, extra in (("c1", []), ("c2", []), ("r1", ["--noise-mode", "random"]),
                        ("r2", ["--noise-mode", "random"]), ("n", ["--noise-mode", "none"]),
                        ("t0", ["--truncation", "0"])):
        result = invoke("sample", "-n", "4", f"{name}.png", "--ckpt", sg2, *extra)
        assert result.exit_code == 0, result.output
    assert np.array_equal(pixels("c1.png"), pixels("c2.png"))  # const: a seed's image is fixed
    assert not np.array_equal(pixels("r1.png"), pixels("r2.png"))
    assert not np.array_equal(pixels("n.png"), pixels("c1.png"))
    grid = pixels("t0.png")  # truncation 0: w_avg's image for every seed
    tiles = [grid[2 + r * 34:2 + r * 34 + 32, 2 + c * 34:2 + c * 34 + 32] for r in (0, 1) for c in (0, 1)]
    assert all(np.array_equal(tiles[0], t) for t in tiles[1:])


def test_style_mixing_figure(sg2):
    result = invoke("sample", "--style-mix", "0-2", "10,11", "mix.png", "--ckpt", sg2,
                    "--styles", "0-3", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["rows"], doc["columns"], doc["styles"]) == ("0-2", "10-11", [0, 1, 2, 3])
    figure = pixels("mix.png")
    assert figure.shape == (2 + 4 * 34, 2 + 3 * 34, 3)  # a row per row seed and one on top
    tile = lambda r, c: figure[2 + r * 34:2 + r * 34 + 32, 2 + c * 34:2 + c * 34 + 32]  # noqa: E731
    assert not tile(0, 0).any()  # the empty corner
    invoke("sample", "--seeds", "0,10", "own.png", "--ckpt", sg2, "--nrow", "2")
    own = pixels("own.png")
    assert np.array_equal(tile(1, 0), own[2:34, 2:34])  # the row seed's own image on the left
    assert np.array_equal(tile(0, 1), own[2:34, 36:68])  # the column seed's on top
    assert not np.array_equal(tile(1, 1), tile(1, 0))  # a mixed cell differs from both
    assert not np.array_equal(tile(1, 1), tile(0, 1))


@pytest.mark.parametrize("args, option, says", [
    (["--style-mix", "0-2", "10", "m.png", "-n", "4"], "--style-mix", "leave out -n"),
    (["--style-mix", "0-2", "10", "m.png", "--styles", "0-99"], "--styles", "layers 0 to 7"),
    (["--style-mix", "0-2", "10", "m.png", "--styles", "a-b"], "--styles", "are not layers"),
    (["--style-mix", "0-2", "10"], "OUT", "give the figure's file"),
    (["--style-mix", "0-2", "x", "m.png"], "--style-mix", "x"),
    (["-n", "2", "m.png", "--styles", "0-2"], "--styles", "--styles is for --style-mix"),
    (["-n", "2", "m.png", "--noise-mode", "fresh"], "--noise-mode", "const, random, none"),
])
def test_style_mixing_and_noise_errors(sg2, args, option, says):
    result = invoke("sample", *args, "--ckpt", sg2)
    assert result.exit_code == 2 and option in result.output and says in result.output, result.output
    assert not Path("m.png").exists()


def test_style_mixing_needs_a_mapping_network(run):
    result = invoke("sample", "--style-mix", "0", "1", "m.png", "--ckpt", run)
    assert_one_line_error(result, 1, "dcgan has no mapping network")


def test_bulk_export_interpolation_and_export(sg2):
    result = invoke("sample", "-n", "3", "--out-dir", "many", "--ckpt", sg2)
    assert result.exit_code == 0, result.output
    loaded = sample.load_generator(read_header(rundir.latest_in_run(sg2)), torch.device("cpu"))
    want = sample.generate(loaded.G, sample.latents_from_seeds([2], 8), torch.device("cpu"))
    assert np.array_equal(pixels("many/seed0000000002.png"), want[0].permute(1, 2, 0).numpy())
    result = invoke("sample", "--interpolate", "--seeds", "0,1", "--frames", "4", "walk.png",
                    "--ckpt", sg2)
    assert result.exit_code == 0, result.output
    result = invoke("export", sg2, "G.pt", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["max_abs_diff"] <= 1e-4


def test_eval_resume_and_inspect(sg2, fake_net):
    result = invoke("eval", sg2, "--num", "20", "--num-real", "20", "--metrics", "fid", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metrics"]["fid"] > 0
    result = invoke("resume", sg2, "--steps", "6")
    assert result.exit_code == 0, result.output
    assert "done: step 6/6" in result.stdout
    result = invoke("inspect", sg2, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["config"]["arch"] == "stylegan2" and doc["config"]["mapping_layers"] == 2


def test_a_bulk_export_keeps_its_noise_mode(sg2):
    """The manifest records the noise mode: a rerun with another would mix two kinds of image
    in one folder, so it is refused, naming the change."""
    result = invoke("sample", "-n", "2", "--out-dir", "many", "--ckpt", sg2)
    assert result.exit_code == 0, result.output
    assert json.loads(Path("many/manifest.json").read_text())["noise_mode"] == "const"
    result = invoke("sample", "-n", "4", "--out-dir", "many", "--ckpt", sg2, "--noise-mode", "random")
    assert_one_line_error(result, 1, "other settings (noise_mode 'const' -> 'random')")
    assert sorted(p.name for p in Path("many").glob("*.png")) == [
        "seed0000000000.png", "seed0000000001.png"]


def test_the_python_api_takes_styles_as_a_list_and_the_noise_mode(sg2):
    import ganctl  # ganctl.api is reached from the package alone

    r = ganctl.api.style_mix(sg2, "mix.png", [0, 1], range(10, 12), styles=[0, 1, 2, 3])
    assert r["styles"] == [0, 1, 2, 3] and r["num_ws"] == 8
    G = ganctl.load(sg2)
    assert G.noise_mode == "const"
    assert torch.equal(G.sample(seeds=[3]), G.sample(seeds=[3]))
    G.noise_mode = "random"
    assert not torch.equal(G.sample(seeds=[3]), G.sample(seeds=[3]))
    assert ganctl.load(sg2, noise_mode="none").noise_mode == "none"
    with pytest.raises(ganctl.errors.UsageError, match="noise mode 'fresh' is not one of"):
        G.noise_mode = "fresh"


def test_settings_that_change_nothing_are_pointed_out(workdir, run):
    result = invoke("train", *TINY, "--steps", "1", "--style-mixing", "0.5", "--w-dim", "8",
                    "--ema-rampup", "0.05", "--out", "dc")
    assert result.exit_code == 0, result.output
    assert "--w-dim, --style-mixing are StyleGAN2's; with --arch dcgan they do nothing" in result.stdout
    assert "--ema-rampup ramps up --ema-kimg's half-life; without --ema-kimg it does nothing" \
        in result.stdout
    result = invoke("train", *TINY, *SG2, "--steps", "1", "--pl-weight", "0", "--pl-every", "3",
                    "--ema-decay", "0.9", "--out", "sg")
    assert result.exit_code == 0, result.output
    assert "--pl-every shapes path-length regularisation; with --pl-weight 0 it is off, so it does " \
        "nothing" in result.stdout
    assert "--ema-decay is a decay per step; with --ema-kimg" in result.stdout
    result = invoke("sample", "-n", "2", "x.png", "--ckpt", run, "--noise-mode", "random")
    assert result.exit_code == 0, result.output
    assert "--noise-mode is a StyleGAN2's per-pixel noise; dcgan's G takes none" in result.output


def test_networks_too_large_for_a_cpu_are_pointed_out():
    from ganctl.config import Config
    from ganctl.models import cpu_note

    note = cpu_note(Config(arch="stylegan2", resolution=256, z_dim=512, w_dim=512, g_width=512,
                           d_width=512, channel_base=16384))
    assert note is not None and note.startswith("G and D have ") and "M parameters, a GPU's work" in note
    assert "lower --g-width and --d-width (32, say) and --z-dim and --w-dim" in note
    assert cpu_note(Config(arch="stylegan2", g_width=16, d_width=16, z_dim=16, channel_base=256)) is None
    assert cpu_note(Config()) is None  # the article's DCGAN


def test_a_folder_of_photos_trains_at_their_size_with_stylegan2(workdir):
    from helpers import image_folder

    image_folder(workdir / "photos", 4, size=(256, 256))
    sizes = {}
    for arch in ("stylegan2", "dcgan"):
        result = invoke("train", "--dataset", "photos", "--arch", arch, "--print-config", "--json")
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        sizes[arch] = (doc["config"]["resolution"], doc["sources"]["resolution"])
    assert sizes == {"stylegan2": (256, "dataset photos"), "dcgan": (64, "dataset photos")}
    doc = json.loads(invoke("train", "--dataset", "photos", "--arch", "stylegan2", "--print-config",
                            "--json").stdout)
    assert doc["config"]["batch_size"] == 16 and doc["config"]["r1"] == pytest.approx(0.8192)


def test_a_figure_too_big_for_one_file_is_refused_before_drawing(sg2):
    result = invoke("sample", "--style-mix", "0-63", "100-163", "m.png", "--ckpt", sg2,
                    "--scale", "64")
    assert_one_line_error(result, 1, "GB of pixels, more than one file holds", "give fewer row or "
                          "column seeds, or a lower --scale")
    assert not Path("m.png").exists()
    result = invoke("sample", "--style-mix", "0-63", "100-163", "m.webp", "--ckpt", sg2,
                    "--scale", "8")
    assert_one_line_error(result, 1, "m.webp:")


def test_init_from_keeps_the_g_ema_it_starts_from(sg2):
    """No EMA ramp-up when fine-tuning: at step 1 it would make G_ema a copy of G, dropping the
    network tuned from (NVlabs turn ramp-up off when they resume from a network, too)."""
    doc = json.loads(invoke("train", "--init-from", sg2, "--print-config", "--json").stdout)
    assert doc["config"]["ema_rampup"] == 0.0 and doc["sources"]["ema_rampup"].startswith("init-from")
    doc = json.loads(invoke("train", "--init-from", sg2, "--ema-rampup", "0.05", "--print-config",
                            "--json").stdout)
    assert doc["config"]["ema_rampup"] == 0.05  # a flag still says otherwise
