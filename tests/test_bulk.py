"""Bulk export (ganctl.bulk.export_images): files per seed, labels, manifest, resume, refusal."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import CPU, TINY, invoke
from PIL import Image

import ganctl
from ganctl import bulk, rundir
from ganctl.errors import ConfigError
from ganctl.imagefiles import GRID_PADDING, make_grid, png_bytes
from ganctl.sample import LoadedGenerator, generate, labels_for_seeds, latents_from_seeds, load_generator

KW = {"batch_size": 8, "g_width": 8, "d_width": 8, "log_every": 1, "sample_every": 100,
      "ckpt_every": 2, "device": "cpu", "quiet": True, "steps": 2}


def _load(run_dir: Path, ema: bool = True) -> LoadedGenerator:
    return load_generator(rundir.locate(str(run_dir), lambda _: None), CPU, ema=ema)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ganctl.train(**KW, out=tmp_path_factory.mktemp("bulk") / "plain").run_dir


@pytest.fixture(scope="module")
def cond(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Conditional on the shapes: classes circle, square, triangle."""
    return ganctl.train(**KW, conditional=True, out=tmp_path_factory.mktemp("bulk") / "cond").run_dir


def export(loaded: LoadedGenerator, seeds, out: Path, fmt: str = "png", **kw) -> dict:
    return bulk.export_images(loaded, list(seeds), out, fmt, device=CPU, batch_size=kw.pop(
        "batch_size", 4), workers=kw.pop("workers", 2), **kw)


def _rows(out: Path) -> list[dict]:
    with open(out / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def _files(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def test_one_png_per_seed_with_labels_and_manifest(plain, tmp_path):
    loaded = _load(plain)
    r = export(loaded, range(10, 30), tmp_path / "out")
    out = tmp_path / "out"
    names = [f"seed{s:010d}.png" for s in range(10, 30)]
    assert _files(out) == sorted([*names, "labels.csv", "manifest.json"])
    assert (r["count"], r["written"], r["skipped"], r["format"]) == (20, 20, 0, "png")
    assert r["step"] == 2 and r["checkpoint"] == str(loaded.header.path)
    for name in names:
        assert Image.open(out / name).size == (32, 32)
    assert _rows(out)[0] == {"file": names[0], "seed": "10", "class_index": "", "class_name": ""}
    assert [row["seed"] for row in _rows(out)] == [str(s) for s in range(10, 30)]
    m = json.loads((out / "manifest.json").read_text())
    assert (m["status"], m["seeds"], m["count"], m["format"], m["truncation"]) == (
        "complete", "10-29", 20, "png", None)
    assert m["checkpoint_sha256"] == hashlib.sha256(loaded.header.path.read_bytes()).hexdigest()
    assert m["step"] == 2 and m["network"]["arch"] == "dcgan" and m["ganctl_version"]

    before = {n: (out / n).stat().st_mtime_ns for n in names}
    again = export(loaded, range(10, 30), out)
    assert (again["written"], again["skipped"]) == (0, 20)
    assert before == {n: (out / n).stat().st_mtime_ns for n in names}  # none rewritten


def test_an_image_is_byte_identical_to_its_grid_cell(plain, tmp_path):
    loaded = _load(plain)
    export(loaded, [5, 3, 11], tmp_path / "out", batch_size=2, truncation=0.8)
    images = generate(loaded.G, latents_from_seeds(range(16), 100, 0.8), CPU)  # a 4x4 grid
    grid = make_grid(images)
    for seed in (5, 3, 11):
        row, col = divmod(seed, 4)
        y, x = GRID_PADDING + row * 34, GRID_PADDING + col * 34
        cell = grid[y:y + 32, x:x + 32]
        assert (tmp_path / "out" / f"seed{seed:010d}.png").read_bytes() == png_bytes(cell)


def test_interrupted_then_rerun_gives_exactly_every_image(plain, tmp_path):
    loaded, out = _load(plain), tmp_path / "out"
    calls = []

    def interrupt(n: int) -> None:
        calls.append(n)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export(loaded, range(40), out, progress=interrupt, batch_size=4, workers=2)
    assert json.loads((out / "manifest.json").read_text())["status"] == "incomplete"
    done = [p for p in out.glob("seed*.png")]
    assert 0 < len(done) < 40 and not list(out.glob(".*"))  # whole files only, no temp file
    for p in done:
        Image.open(p).load()  # each decodes
    (out / ".seed0000000039.png.tmp-999999999").write_bytes(b"half")  # a killed export's

    seen = []
    r = export(loaded, range(40), out, progress=seen.append)
    assert r["skipped"] == len(done) and r["written"] == 40 - len(done) and sum(seen) == 40
    assert _files(out) == sorted([f"seed{s:010d}.png" for s in range(40)]
                                 + ["labels.csv", "manifest.json"])
    fresh = tmp_path / "fresh"
    export(loaded, range(40), fresh)
    for s in range(40):  # the resumed folder is the one written in one go
        name = f"seed{s:010d}.png"
        assert (out / name).read_bytes() == (fresh / name).read_bytes()


def test_conditional_class_folders_train_as_a_dataset(cond, tmp_path, workdir):
    loaded, out = _load(cond), tmp_path / "out"
    assert loaded.config.classes == ("circle", "square", "triangle")
    export(loaded, range(24), out)
    for k, name in enumerate(loaded.config.classes):
        assert sorted(p.name for p in (out / name).iterdir()) == [
            f"seed{s:010d}.png" for s in range(24) if s % 3 == k]
    rows = _rows(out)
    assert rows[4] == {"file": "square/seed0000000004.png", "seed": "4", "class_index": "1",
                       "class_name": "square"}
    # pixels of the class each seed was drawn for
    c = labels_for_seeds([4], loaded.config)
    x = generate(loaded.G, latents_from_seeds([4], 100), CPU, c)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(Image.open(out / rows[4]["file"])), x)

    result = invoke("train", *TINY, "--steps", "2", "--dataset", out, "--conditional",
                    "--out", "again")
    assert result.exit_code == 0, result.output
    config = json.loads((workdir / "again" / "config.json").read_text())
    assert config["classes"] == ["circle", "square", "triangle"]

    one = tmp_path / "one"
    export(loaded, range(6), one, class_="triangle")
    assert _files(one) == sorted([f"triangle/seed{s:010d}.png" for s in range(6)]
                                 + ["labels.csv", "manifest.json"])
    assert {row["class_name"] for row in _rows(one)} == {"triangle"}


def test_unconditional_export_trains_as_a_dataset(plain, tmp_path, workdir):
    export(_load(plain), range(16), tmp_path / "out", "jpg")
    result = invoke("train", *TINY, "--steps", "2", "--dataset", tmp_path / "out", "--out", "r")
    assert result.exit_code == 0, result.output


def test_other_settings_into_the_same_folder_are_refused(plain, cond, tmp_path):
    loaded, out = _load(plain), tmp_path / "out"
    export(loaded, range(8), out)
    for what, kwargs in (("truncation", {"truncation": 0.7}), ("format", {"fmt": "jpg"}),
                         ("generator_sha256", {"loaded": _load(plain, ema=False)}),
                         ("checkpoint_sha256", {"loaded": _load(cond)})):
        args = {"loaded": loaded, "fmt": "png", **kwargs}
        with pytest.raises(ConfigError, match=what) as e:
            export(args.pop("loaded"), range(8), out, args.pop("fmt"), **args)
        assert len(str(e.value).splitlines()) == 1
    assert _files(out) == sorted([f"seed{s:010d}.png" for s in range(8)]
                                 + ["labels.csv", "manifest.json"])
    # the same settings may add seeds: the folder then holds them all
    r = export(loaded, range(4, 12), out)
    assert (r["count"], r["written"], r["skipped"]) == (12, 4, 8)
    assert json.loads((out / "manifest.json").read_text())["seeds"] == "0-11"
    assert len(_rows(out)) == 12

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        export(loaded, range(2), tmp_path / "other")
    with pytest.raises(ConfigError, match="unknown image format"):
        export(loaded, range(2), tmp_path / "gif", "gif")
    with pytest.raises(ConfigError, match="unconditional"):
        export(loaded, range(2), tmp_path / "cls", class_=1)


def test_npz_shards_load_back_and_resume_per_shard(plain, tmp_path, monkeypatch):
    monkeypatch.setattr(bulk.manifest, "MAX_SHARD", 4)  # manifest_for sizes the shards
    loaded, out = _load(plain), tmp_path / "out"

    def interrupt(n: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export(loaded, range(38), out, "npz", progress=interrupt, workers=1)
    done = sorted(p.name for p in out.glob("images-*.npz"))
    assert 0 < len(done) < 10 and not list(out.glob(".*"))
    r = export(loaded, range(38), out, "npz")
    assert (r["skipped"], r["written"]) == (4 * len(done), 38 - 4 * len(done))
    assert _files(out) == [*(f"images-{i:06d}.npz" for i in range(10)), "labels.csv",
                           "manifest.json"]
    shards = [np.load(out / f"images-{i:06d}.npz") for i in range(10)]
    images = np.concatenate([s["images"] for s in shards])
    assert images.dtype == np.uint8 and images.shape == (38, 32, 32, 3)
    assert np.concatenate([s["seeds"] for s in shards]).tolist() == list(range(38))
    assert np.concatenate([s["labels"] for s in shards]).tolist() == [-1] * 38
    expected = generate(loaded.G, latents_from_seeds(range(38), 100), CPU).permute(0, 2, 3, 1)
    assert np.array_equal(images, expected.numpy())
    assert _rows(out)[5]["file"] == "images-000001.npz"
    with pytest.raises(ConfigError, match="same seeds"):
        export(loaded, range(40), out, "npz")


def test_lossy_formats_decode(plain, tmp_path):
    loaded = _load(plain)
    for fmt, pil in (("jpg", "JPEG"), ("webp", "WEBP")):
        export(loaded, range(3), tmp_path / fmt, fmt, quality=80)
        image = Image.open(tmp_path / fmt / f"seed0000000001.{fmt}")
        assert (image.format, image.size) == (pil, (32, 32))


def test_out_dir_is_made_with_its_parents_and_a_file_in_the_way_is_an_error(plain, tmp_path):
    loaded = _load(plain)
    export(loaded, range(3), tmp_path / "a" / "b" / "c")
    assert len(list((tmp_path / "a" / "b" / "c").glob("seed*.png"))) == 3
    (tmp_path / "f").write_text("a file")
    for out, where in ((tmp_path / "f", "the output folder"),
                       (tmp_path / "f" / "sub", f"a parent of {tmp_path / 'f' / 'sub'}")):
        with pytest.raises(ConfigError, match=f"{tmp_path / 'f'} is not a folder \\({where}\\)"):
            export(loaded, range(3), out)
    assert (tmp_path / "f").read_text() == "a file"


def test_a_second_export_into_a_folder_being_written_is_refused(plain, tmp_path):
    import fcntl  # noqa: PLC0415
    import os  # noqa: PLC0415

    loaded, out = _load(plain), tmp_path / "out"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running export holds it
        with pytest.raises(ConfigError, match="another ganctl sample is writing into"):
            export(loaded, range(3), out)
        assert list(out.iterdir()) == []  # nothing written, not even a manifest
    finally:
        os.close(fd)
    export(loaded, range(3), out)  # free again: the lock went with its holder
    assert len(list(out.glob("seed*.png"))) == 3


def test_start_counts_the_folders_images_when_a_rerun_adds_seeds(plain, tmp_path):
    loaded, out = _load(plain), tmp_path / "out"
    export(loaded, range(5), out)
    started, seen = [], []
    r = export(loaded, range(3, 8), out, start=started.append, progress=seen.append)
    assert started == [8] and sum(seen) == 8  # seeds 0-4 kept, 5-7 new: the bar ends at 8 of 8
    assert (r["count"], r["skipped"], r["written"]) == (8, 5, 3)


def test_bad_truncation_is_refused_before_anything_is_written(plain, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="truncation must be a finite number from 0 up"):
        export(_load(plain), range(3), out, truncation=-0.5)
    assert not out.exists()


def test_a_truncation_past_any_float_is_recorded_as_the_psi_it_draws_with(plain, tmp_path):
    """From Python, 10**400 is a valid psi (nothing is cut from about 8.3 on): the manifest holds
    the psi the latents were drawn with, not an OverflowError from float()."""
    r = export(_load(plain), range(2), tmp_path / "out", truncation=10**400)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert r["count"] == 2 and manifest["truncation"] == 10.0


def test_links_and_things_in_the_way_are_refused_before_the_manifest_changes(cond, tmp_path):
    loaded, out = _load(cond), tmp_path / "out"
    export(loaded, range(6), out)
    status = json.loads((out / "manifest.json").read_text())["status"]
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in [f.name for f in (out / "square").iterdir()]:
        (out / "square" / name).unlink()
    (out / "square").rmdir()
    (out / "square").symlink_to(outside)  # a class folder that is a link: nothing written through it
    with pytest.raises(ConfigError, match="square is in the way: the class folder there must be a real"):
        export(loaded, range(6), out)
    assert list(outside.iterdir()) == []
    (out / "square").unlink()
    (out / "labels.csv").unlink()
    (out / "labels.csv").mkdir()  # a folder where labels.csv goes
    with pytest.raises(ConfigError, match="labels.csv is in the way"):
        export(loaded, range(6), out)
    assert json.loads((out / "manifest.json").read_text())["status"] == status  # untouched
    link = tmp_path / "link"
    link.symlink_to(out)
    with pytest.raises(ConfigError, match="is a symbolic link; give --out-dir the folder it points to"):
        export(loaded, range(6), link)


@pytest.mark.parametrize("seeds", ["abc", [1, 2], "0-99999999999", "5-2"])
def test_a_damaged_manifest_is_named_not_expanded(plain, tmp_path, seeds):
    loaded, out = _load(plain), tmp_path / "out"
    export(loaded, range(3), out)
    doc = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**doc, "seeds": seeds}))
    with pytest.raises(ConfigError, match="manifest.json is damaged"):
        export(loaded, range(3), out)


def test_a_file_that_only_ends_like_an_image_is_redone(plain, tmp_path):
    loaded, out = _load(plain), tmp_path / "out"
    export(loaded, range(3), out)
    good = (out / "seed0000000001.png").read_bytes()
    (out / "seed0000000001.png").write_bytes(b"garbage" + good[-12:])  # IEND at the end, no header
    r = export(loaded, range(3), out)
    assert (r["written"], r["skipped"]) == (1, 2)
    assert (out / "seed0000000001.png").read_bytes() == good
