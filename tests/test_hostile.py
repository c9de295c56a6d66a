"""Hostile but fair input: dataset files that are huge, special or broken, trees that loop,
extreme numbers on every option, metadata of every JSON type, damaged run files, and the
CelebA download (requested files, layout, Google Drive's quota)."""

import json
import os
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    TINY,
    assert_one_line_error,
    image_folder,
    invoke,
    jpeg_bytes,
    rewrite,
    start,
    wait_for_step,
    write_mnist,
)
from PIL import Image

from ganctl import data as datasets
from ganctl import rundir
from ganctl.config import BOUNDS, Config
from ganctl.data import cache, datafile, folders, sources
from ganctl.errors import ConfigError, DataError

TRAIN2 = ["--steps", "2", "--batch-size", "4", "--g-width", "4", "--d-width", "4",
          "--log-every", "1", "--device", "cpu"]


def info(*args):
    result = invoke("data", "info", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_clean(result) -> None:
    """Refused as expected: exit 1 or 2, and no bug marker or traceback anywhere."""
    assert result.exit_code in (1, 2), result.output
    assert "unexpected" not in result.output.lower(), result.output
    assert "Traceback" not in result.output


# --- dataset reads are bounded ------------------------------------------------------------------

def test_a_64_gib_sparse_file_among_images_is_skipped_as_too_large_unread(workdir):
    folder = image_folder(workdir / "imgs", 4)
    with open(folder / "huge.png", "wb") as f:
        f.truncate(64 << 30)  # sparse: no disk used, but 64 GiB if anything read it
    doc = info("--dataset", "imgs")
    assert doc["count"] == 4 and doc["skipped_by_reason"] == {"too large": 1}


def test_the_file_size_limit_is_a_flag(workdir):
    folder = image_folder(workdir / "imgs", 4)
    noise = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "big.png")  # about 1.5 MB of incompressible PNG
    assert (folder / "big.png").stat().st_size > 1 << 20
    assert info("--dataset", "imgs", "--max-file-mb", "1")["skipped_by_reason"] == {"too large": 1}
    assert info("--dataset", "imgs")["count"] == 5  # 256 MB by default
    assert_clean(invoke("data", "info", "--dataset", "imgs", "--max-file-mb", "0"))


def test_zip_members_declared_larger_than_the_limit_are_skipped(workdir):
    folder = image_folder(workdir / "imgs", 4)
    noise = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "big.png")
    with zipfile.ZipFile(workdir / "z.zip", "w") as z:
        for p in sorted(folder.iterdir()):
            z.write(p, p.name)
    assert info("--dataset", "z.zip", "--max-file-mb", "1")["skipped_by_reason"] == {"too large": 1}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_and_sockets_in_a_dataset_are_skipped_never_opened(workdir):
    folder = image_folder(workdir / "imgs", 4)
    os.mkfifo(folder / "pipe.png")
    os.mkfifo(folder / "pipe.txt")
    doc = info("--dataset", "imgs")  # would hang for ever if the FIFO were opened
    assert doc["count"] == 4
    assert doc["skipped_by_reason"] == {"not a regular file": 2}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_in_place_of_an_mnist_file_is_refused_not_read(workdir):
    write_mnist(workdir / "data", gz=False)
    target = workdir / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    target.unlink()
    os.mkfifo(target)
    result = invoke("data", "info", "--dataset", "mnist", "--no-download")
    assert_clean(result)


def test_a_huge_mnist_file_is_refused_in_one_line(workdir):
    write_mnist(workdir / "data", gz=False)
    with open(workdir / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte", "r+b") as f:
        f.truncate(64 << 30)
    result = invoke("data", "info", "--dataset", "mnist", "--no-download")
    assert_one_line_error(result, 1, "train-images-idx3-ubyte is too large")


def test_a_very_deep_tree_and_symlink_loops_are_walked(workdir):
    folder = image_folder(workdir / "imgs", 2)
    deep = str(folder)
    for _ in range(1100):  # deeper than Python's recursion limit (pathlib's mkdir recurses)
        deep += "/d"
        os.mkdir(deep)
    try:
        Image.new("RGB", (8, 8), (1, 2, 3)).save(Path(deep) / "bottom.png")
        (folder / "up").symlink_to(folder, target_is_directory=True)  # a loop
        (folder / "d" / "again").symlink_to(folder / "d", target_is_directory=True)
        (folder / "dangling.png").symlink_to(folder / "nowhere.png")
        files, passed = folders.walk_files(folder)
        names = [str(rel) for rel, _, _ in files]
        assert names.count("000.png") == 1 and len(names) == 3, names[:5]
        assert any(n.endswith("bottom.png") for n in names)
        assert ("dangling.png", "not a regular file") not in passed  # a broken link is no file
        doc = info("--dataset", "imgs")
        assert doc["count"] == 3
    finally:  # shutil.rmtree (pytest's clean-up) recurses too: take the tree down from below
        for made in (Path(deep) / "bottom.png", folder / "d" / "again"):
            made.unlink(missing_ok=True)
        while deep != str(folder):
            os.rmdir(deep)
            deep = os.path.dirname(deep)


def test_any_decoder_failure_is_a_counted_skip(workdir, monkeypatch):
    folder = image_folder(workdir / "imgs", 6)
    real_decode = cache.decode

    def flaky(raw, *args):
        image = real_decode(raw, *args)
        marker = int(image[0, 0, 0])  # each image has its own red value
        if marker == 25:
            raise MemoryError
        if marker == 50:
            raise ZeroDivisionError("a decoder's own bug")
        return image

    monkeypatch.setattr(cache, "decode", flaky)
    doc = info("--dataset", str(folder))
    assert doc["count"] == 4
    assert doc["skipped_by_reason"] == {"decoder error (ZeroDivisionError)": 1, "out of memory": 1}


def test_decode_threads_hold_a_bounded_number_of_raw_bytes(monkeypatch):
    size = 100_000
    held, peak, lock = [0], [0], threading.Lock()
    image = jpeg_bytes(Image.new("RGB", (8, 8), (9, 9, 9)))

    def read(i):
        with lock:
            held[0] += size
            peak[0] = max(peak[0], held[0])
        try:
            threading.Event().wait(0.002)
            return image
        finally:
            with lock:
                held[0] -= size

    n = 300
    source = sources.Source(name="x", origin="x", fingerprint="f", keys=[str(i) for i in range(n)],
                            labels=np.full(n, -1), classes=[], read=read, encoded=True,
                            sizes=np.full(n, size))
    monkeypatch.setattr(cache, "RAW_BUDGET", 3 * size)
    monkeypatch.setattr(cache, "CHUNK", 8)
    chunks = list(cache._decode_all(source, 8, 3, "center", workers=8))
    assert sum(len(c) for c in chunks) == n
    assert 0 < peak[0] <= 3 * size


def test_a_cache_of_the_wrong_shape_is_rebuilt(workdir):
    image_folder(workdir / "imgs", 5)
    first = info("--dataset", "imgs")
    images = Path(first["cache"])
    np.save(images, np.zeros((5, 3, 7, 7), dtype=np.uint8))  # the index lies about its contents
    again = info("--dataset", "imgs")
    assert again["count"] == 5 and again["fingerprint"] == first["fingerprint"]
    r = first["resolution"]
    assert np.load(images, mmap_mode="r").shape == (5, 3, r, r)
    np.save(images, np.zeros((5, 3, r, r), dtype=np.float32))
    assert info("--dataset", "imgs")["fingerprint"] == first["fingerprint"]
    Path(str(images).replace(".images.npy", ".json")).write_text("[1, 2]")
    assert info("--dataset", "imgs")["fingerprint"] == first["fingerprint"]


@pytest.mark.parametrize("where", ["/", "~"])
def test_the_root_or_the_home_directory_is_not_scanned(workdir, where):
    result = invoke("train", "--dataset", where, *TRAIN2)
    assert_one_line_error(result, 1, "not a folder of images")


def test_a_run_whose_dataset_moved_names_it_and_takes_the_new_place(workdir):
    image_folder(workdir / "imgs", 8)
    assert invoke("train", *TRAIN2, "--dataset", "imgs", "--ckpt-every", "1", "--out", "r").exit_code == 0
    (workdir / "imgs").rename(workdir / "moved")
    result = invoke("resume", "r", "--steps", "3")
    assert_one_line_error(result, 1, str(workdir / "imgs"), "does not exist",
                          "ganctl resume r --dataset PATH")
    assert invoke("resume", "r", "--steps", "3", "--dataset", "moved").exit_code == 0
    assert json.loads((workdir / "r" / "config.json").read_text())["dataset"] == str(workdir / "moved")
    image_folder(workdir / "other", 9)
    result = invoke("resume", "r", "--steps", "4", "--dataset", "other")
    assert_one_line_error(result, 1, "changed since this run started")


# --- numbers from the user never reach torch unchecked ------------------------------------------

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


def test_every_numeric_bound_is_enforced_for_files_too():
    for name, (low, high) in BOUNDS.items():
        kind = type(getattr(Config(), name))
        for bad in (high * 2 + 1, low - 1 if name != "batch_size" else -1):  # 0: auto
            with pytest.raises(ConfigError, match=name):
                Config(**{name: kind(bad)})
        Config(**{name: kind(high)})  # the bound itself is allowed


@pytest.mark.parametrize("args", [
    ["sample", "x.png", "-n", "1e30"], ["sample", "x.png", "-n", str(2**62)],
    ["sample", "x.png", "--seed", str(2**64)], ["sample", "x.png", "--seed", "nan"],
    ["eval", "--num", str(2**62)], ["eval", "--num-real", "-5"], ["eval", "--num", "nan"],
    ["resume", "--steps", str(2**62)], ["resume", "--keep", "-3"],
    ["data", "info", "--resolution", str(2**40)], ["data", "info", "--max-file-mb", str(2**60)],
])
def test_other_commands_refuse_extremes_cleanly(trained_run, args):
    assert_clean(invoke(*args))


def test_a_model_too_large_to_build_is_refused_before_anything_is_allocated(workdir):
    result = invoke("train", "--steps", "1", "--g-width", "4096", "--d-width", "4096",
                    "--resolution", "128", "--z-dim", "16384", "--device", "cpu")
    assert_one_line_error(result, 1, "G would have 62,814,347,264 parameters", "--g-width")


def test_a_model_that_does_not_fit_in_memory_is_one_line(workdir, monkeypatch):
    from ganctl.engine import state

    def no_memory(config):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 68719476736 bytes.")

    monkeypatch.setattr(state, "build_models", no_memory)
    result = invoke("train", *TINY, "--out", "r")
    assert_one_line_error(result, 1, "the model does not fit in cpu memory", "lower --g-width")
    assert not (workdir / "r").exists()


def test_gpus_with_batch_size_auto_is_refused_before_any_process_starts(workdir, monkeypatch):
    """auto measures one process: with --gpus N it is a bad command line at once, not an error
    from each of N processes after they loaded the data."""
    from ganctl import distributed

    def no_launch(*args: object) -> int:
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(distributed, "launch", no_launch)
    for auto in ("auto", "AUTO"):
        result = invoke("train", "--gpus", "2", "--batch-size", auto, "--device", "cpu")
        assert_one_line_error(result, 2, "auto finds a batch size for one process",
                              "divisible by 2")
        assert_clean(result)
    result = invoke("train", "--gpus", "2", "--batch-size", "lots", "--device", "cpu", "--json")
    assert_one_line_error(result, 2, "'lots' is not a whole number")
    assert json.loads(result.stdout)["exit_code"] == 2
    assert not Path("runs").exists()
    # what the processes would resolve is checked once, here: a config file's auto, a default
    # batch that does not divide among them, a bad value in the file
    Path("auto.toml").write_text('batch_size = "auto"\n')
    result = invoke("train", "--gpus", "2", "--config", "auto.toml", "--device", "cpu")
    assert_one_line_error(result, 2, "Invalid value for batch_size in auto.toml: auto finds a batch "
                                     "size for one process")
    result = invoke("train", "--gpus", "3", "--device", "cpu")  # shapes' batch 64
    assert_one_line_error(result, 2, "Invalid value for the default batch size: batch size 64 is "
                                     "the global batch", "multiple of 3 (--batch-size)")
    Path("bad.toml").write_text("lr_g = -1\n")
    assert_one_line_error(invoke("train", "--gpus", "2", "--config", "bad.toml"), 1, "lr_g")
    assert not Path("runs").exists()


# --- metadata and run files of every shape ------------------------------------------------------

JSON_VALUES = [None, [], {}, "64", 1e308, True, -1, [1, 2], {"a": 1}, 2**70]


@pytest.mark.parametrize("value", JSON_VALUES, ids=repr)
def test_checkpoint_config_values_of_any_json_type(trained_run, workdir, value):
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"

    def change(tensors, meta):
        config = json.loads(meta["ganctl.config"])
        config["g_width"] = value
        meta["ganctl.config"] = json.dumps(config)

    rewrite(ckpt, workdir / "forged.safetensors", change)
    for command in (["inspect", "forged.safetensors"], ["sample", "o.png", "--ckpt", "forged.safetensors"],
                    ["resume", "forged.safetensors"]):
        assert_clean(invoke(*command))


@pytest.mark.parametrize("value", JSON_VALUES + ["{", '"\\ud800"', "[" * 100000], ids=lambda v: repr(v)[:20])
def test_checkpoint_metadata_fields_of_any_json_type(trained_run, workdir, value):
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"

    def change(tensors, meta):
        meta["ganctl.config"] = value if isinstance(value, str) else json.dumps(value)

    rewrite(ckpt, workdir / "forged.safetensors", change)
    assert_clean(invoke("sample", "o.png", "--ckpt", "forged.safetensors"))
    result = invoke("inspect", "forged.safetensors")  # {} is a config: all defaults
    assert result.exit_code in (0, 1) and "unexpected" not in result.output
    assert "Traceback" not in result.output


def test_non_utf8_lines_in_metrics_are_dropped_on_resume_and_counted(trained_run):
    metrics = trained_run / "metrics.jsonl"
    good = metrics.read_bytes()
    metrics.write_bytes(good + b'{"step": 3, "bad": "\xff\xfe"}\n[1, 2]\n{"step": 4, "cut\n')
    result = invoke("resume", trained_run, "--steps", "6")
    assert result.exit_code == 0, result.output
    assert "dropped 3 damaged line(s)" in result.output
    text = metrics.read_bytes()
    text.decode("utf-8")  # valid UTF-8 again
    assert b"\\ufffd" not in text and b"cut" not in text


# --- CelebA's download ----------------------------------------------------------------------------

def _fake_celeba_files(folder: Path, filename: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{i:06d}.jpg" for i in range(1, 9)]
    if filename == "img_align_celeba.zip":
        with zipfile.ZipFile(folder / filename, "w") as z:
            for i, name in enumerate(names):
                z.writestr(f"img_align_celeba/{name}",
                           jpeg_bytes(Image.new("RGB", (178, 218), (i * 30, 80, 120))))
    else:
        (folder / filename).write_text("".join(f"{n} 0\n" for n in names))


def test_celeba_downloads_the_two_files_it_needs_into_its_layout(workdir, monkeypatch):
    import torchvision.datasets.utils as tvu
    requested = []

    def fake_drive(file_id, root, filename=None, md5=None):
        requested.append((file_id, Path(root), filename, md5))
        _fake_celeba_files(Path(root), filename)

    monkeypatch.setattr(tvu, "download_file_from_google_drive", fake_drive)
    result = invoke("train", "--dataset", "celeba", *TRAIN2, "--resolution", "32", "--out", "r")
    assert result.exit_code == 0, result.output
    folder = workdir / "data" / "celeba"
    assert [(r[1], r[2]) for r in requested] == [(folder, "img_align_celeba.zip"),
                                                 (folder, "list_eval_partition.txt")]
    assert requested[0][0] == "0B7EVK8r0v71pZjFTYXZWM3FlRnM" and len(requested[0][3]) == 32
    assert json.loads((workdir / "r" / "data_report.json").read_text())["count"] == 8


def test_a_google_drive_quota_refusal_is_one_line_with_the_manual_way(workdir, monkeypatch):
    import gdown.exceptions
    import torchvision.datasets.utils as tvu

    def refused(file_id, root, filename=None, md5=None):
        raise gdown.exceptions.FileURLRetrievalError(
            "Failed to retrieve file url:\n\n\tToo many users have viewed or downloaded this file "
            "recently. Please try accessing the file again later.\n\nYou may still be able to "
            f"access the file from the browser:\n\n\thttps://drive.google.com/uc?id={file_id}\n")

    monkeypatch.setattr(tvu, "download_file_from_google_drive", refused)
    result = invoke("train", "--dataset", "celeba")
    assert_one_line_error(result, 1, "Google Drive refused it", "quota", "img_align_celeba.zip",
                          "list_eval_partition.txt", str(workdir / "data" / "celeba"),
                          "mmlab.ie.cuhk.edu.hk")


def test_gdown_is_a_dependency():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    deps = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert '"gdown' in deps
    import gdown  # noqa: F401  installed with ganctl


def test_read_regular_refuses_what_is_not_a_plain_file(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 10)
    assert sources.read_regular(tmp_path / "f", 10) == b"x" * 10
    with pytest.raises(sources.Skip, match="too large"):
        sources.read_regular(tmp_path / "f", 9)
    with pytest.raises(sources.Skip, match="missing"):
        sources.read_regular(tmp_path / "nope", 9)
    with pytest.raises(sources.Skip, match="not a regular file"):
        sources.read_regular(tmp_path, 9)
    with pytest.raises(DataError, match="too large"):
        (tmp_path / "g.gz").write_bytes(__import__("gzip").compress(b"\0" * 3000))
        monkeypatch = pytest.MonkeyPatch()
        monkeypatch.setattr(datafile, "MAX_DATA_FILE", 1000)
        try:
            datafile.read_data_file(tmp_path / "g.gz", gunzip=True)  # a gzip bomb stops early
        finally:
            monkeypatch.undo()
    assert datasets.DATASETS["celeba"].download is not None


# --- reading a run while it is trained --------------------------------------------------------------

@pytest.mark.slow
def test_sample_and_inspect_in_a_loop_while_a_trainer_checkpoints_and_prunes_every_step(workdir):
    proc = start("train", "--steps", "100000", "--batch-size", "4", "--g-width", "4",
                 "--d-width", "4", "--ckpt-every", "1", "--keep", "1", "--log-every", "1",
                 "--sample-every", "100000", "--device", "cpu", "--no-curves", "--out", "r",
                 cwd=workdir)
    failures, steps = [], set()
    try:
        wait_for_step(proc.stdout, 3)
        for i in range(21):
            command = ["sample", "-n", "1", "o.png", "--ckpt", "r", "--device", "cpu", "--json"] \
                if i % 3 else ["inspect", "r", "--json"]
            result = invoke(*command)
            if result.exit_code != 0:
                failures.append(result.output)
            else:
                steps.add(json.loads(result.stdout)["step"])
    finally:
        proc.terminate()
        proc.communicate(timeout=120)
    assert failures == []
    assert len(steps) >= 5  # the trainer really moved on (and pruned) while we read


# --- nothing deleted before it is checked; only ganctl's own files --------------------------------

@pytest.mark.parametrize("text", ['{}', '{"steps": 5}',
                                  '{"batch_size": 8, "steps": 20, "g_width": 8, "d_width": 8}'])
def test_a_users_ganctl_shaped_config_json_does_not_make_a_run(workdir, text):
    folder = workdir / "u"
    folder.mkdir()
    (folder / "config.json").write_text(text)
    (folder / "metrics.jsonl").write_text('{"mine": 1}\n')
    for extra in ([], ["--overwrite"], ["--resume"]):
        assert_one_line_error(invoke("train", *TINY, "--out", folder, *extra), 1,
                              "not an empty directory (nor a ganctl run)")
    assert_one_line_error(invoke("resume", folder), 1, "not a ganctl run")
    assert (folder / "config.json").read_text() == text
    assert (folder / "metrics.jsonl").read_text() == '{"mine": 1}\n'


def test_resume_before_the_first_checkpoint_keeps_stray_files(workdir):
    proc = start("train", *TINY[:-4], "--steps", "100000", "--ckpt-every", "100000",
                 "--log-every", "1", "--device", "cpu", "--out", "r", cwd=workdir)
    wait_for_step(proc.stdout, 2)
    proc.kill()
    proc.communicate(timeout=60)
    ckpts = workdir / "r" / "checkpoints"
    for stray in (".DS_Store", ".nfs000000000001", "notes.txt"):
        (ckpts / stray).write_text("not ganctl's")
    result = invoke("resume", "r", "--steps", "2")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in ckpts.iterdir()) == [
        ".DS_Store", ".nfs000000000001", "latest", "notes.txt", "step-000000002.safetensors"]
    assert (workdir / "r" / "config.json").is_file() and (workdir / "r" / "metrics.jsonl").is_file()


def test_overwrite_leaves_foreign_files_even_named_like_ganctls(trained_run):
    mine = {"checkpoints/README.txt", "checkpoints/.DS_Store", "checkpoints/step-final.safetensors",
            "checkpoints/.notes.tmp-backup", "samples/step-best.png", "samples/mine.png", "notes.txt"}
    for rel in mine:
        (trained_run / rel).write_text("mine")
    result = invoke("train", *TINY, "--out", trained_run, "--overwrite")
    assert result.exit_code == 0, result.output
    for rel in mine:
        assert (trained_run / rel).read_text() == "mine", rel
    assert rundir.is_run_dir(trained_run) and rundir.list_checkpoints(trained_run / "checkpoints")


def test_overwrite_that_cannot_remove_a_file_deletes_nothing(trained_run, monkeypatch):
    before = sorted(str(p.relative_to(trained_run)) for p in trained_run.rglob("*"))
    real_rename = Path.rename

    def refuse_one(self, target):
        if self.name == "step-000000004.safetensors":
            raise PermissionError(1, "Operation not permitted", str(self))
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", refuse_one)
    result = invoke("train", *TINY, "--out", trained_run, "--overwrite")
    assert_one_line_error(result, 1, "step-000000004.safetensors (Operation not permitted)",
                          "nothing was deleted")
    assert sorted(str(p.relative_to(trained_run)) for p in trained_run.rglob("*")) == before
    monkeypatch.undo()
    assert invoke("resume", trained_run, "--steps", "5").exit_code == 0


# --- checkpoints: headers against bytes, regular files only ----------------------------------------

def _forge(src: Path, dst: Path, edit) -> None:
    """Rewrite a checkpoint's header (dict) with `edit`, keeping its data bytes."""
    import struct
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    data = edit(header, data) or data
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    dst.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _checksum_again(header, data):
    from ganctl.checkpoint.write import _checksum
    header["__metadata__"]["ganctl.checksum"] = _checksum(data, header["__metadata__"])


def _in_bounds_giant(header, data):
    """A config of widths 3000 (within the bounds) with every tensor's shape scaled to match,
    the offsets left alone, and the checksum recomputed: a 1 MB file that claims gigabytes."""
    from ganctl.config import Config
    from ganctl.models import build_models
    meta = header["__metadata__"]
    config = json.loads(meta["ganctl.config"])
    config.update(g_width=3000, d_width=3000)
    meta["ganctl.config"] = json.dumps(config)
    import torch
    with torch.device("meta"):
        G, D = build_models(Config.from_dict(config))
    for prefix, net in (("G", G), ("D", D), ("G_ema", G)):
        for k, v in net.state_dict().items():
            header[f"{prefix}.{k}"]["shape"] = list(v.shape)
    _checksum_again(header, data)


def _shared_span(header, data):
    names = sorted(k for k in header if k != "__metadata__")
    header[names[1]]["data_offsets"] = header[names[0]]["data_offsets"]


def _dtype_changed(header, data):
    name = next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    header[name]["dtype"] = "F16"


def _gap(header, data):
    name = min((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    start, stop = header[name]["data_offsets"]
    header[name]["data_offsets"] = [start + 8, stop + 8]


def _trailing(header, data):
    _checksum_again(header, data + b"\0" * 8)
    return data + b"\0" * 8


@pytest.mark.parametrize("edit, message", [
    (_in_bounds_giant, "declares F32"), (_shared_span, "is corrupted"),
    (_dtype_changed, "declares F16"), (_gap, "gaps"), (_trailing, "8 bytes past its data"),
])
def test_headers_that_disagree_with_their_bytes_are_refused_before_anything_is_built(
        trained_run, workdir, edit, message):
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"
    _forge(ckpt, workdir / "f.safetensors", edit)
    for command in (["inspect", "f.safetensors"], ["inspect", "f.safetensors", "--no-verify"],
                    ["sample", "o.png", "--ckpt", "f.safetensors"], ["resume", "f.safetensors"],
                    ["eval", "f.safetensors", "--num", "2"]):
        result = invoke(*command)
        assert_one_line_error(result, 1, message)


def _config_edit(**changes):
    def edit(header, data):
        meta = header["__metadata__"]
        meta["ganctl.config"] = json.dumps({**json.loads(meta["ganctl.config"]), **changes})
        _checksum_again(header, data)
    return edit


@pytest.mark.parametrize("changes, message", [
    ({"arch": "resnet"}, "does not match its config's model"),
    ({"z_dim": 50}, "the config's model needs"),
    ({"conditional": True}, "does not match its config's model"),
    ({"resolution": 64}, "does not match its config's model"),
    ({"arch": "biggan"}, "unknown arch 'biggan'"), ({"loss": "foo"}, "unknown loss 'foo'"),
    ({"augment": "diffaug:foo"}, "unknown policy 'foo'"),
    ({"classes": [str(i) for i in range(200_000)]}, "at most 100000 class names"),
])
def test_a_config_edited_out_of_step_with_its_tensors_is_refused_by_every_command(
        trained_run, workdir, changes, message):
    run = workdir / "run"
    shutil.copytree(trained_run, run)
    ckpt = run / "checkpoints" / "step-000000004.safetensors"
    _forge(ckpt, ckpt, _config_edit(**changes))
    for command in (["inspect", ckpt], ["sample", "o.png", "--ckpt", ckpt], ["resume", ckpt]):
        result = invoke(*command)
        assert_one_line_error(result, 1, "step-000000004.safetensors", message)
    assert not (workdir / "o.png").exists()


def test_a_bad_resume_flag_is_the_users_error_not_the_checkpoints(trained_run):
    result = invoke("resume", trained_run, "--steps", "8", "--eval-metrics", "bogus")
    assert_one_line_error(result, 1, "unknown metric 'bogus'")
    assert "holds a config" not in result.stderr


def test_inspect_cuts_a_long_class_list_short(trained_run, workdir):
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"
    # classes the data does not have: inspect reads the header alone, so it shows them
    _forge(ckpt, workdir / "f.safetensors", _config_edit(classes=[f"c{i}" for i in range(5000)]))
    result = invoke("inspect", "f.safetensors")
    assert result.exit_code == 0, result.output
    assert "c19 ... (5000 classes)" in result.stdout and "c20" not in result.stdout
    assert len(result.stdout) < 6000  # every config key, the classes cut to 20


def test_a_checkpoint_without_a_checksum_is_not_trusted(trained_run, workdir):
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"

    def drop(header, data):
        del header["__metadata__"]["ganctl.checksum"]
        header["__metadata__"]["ganctl.schema"] = "1"

    _forge(ckpt, workdir / "f.safetensors", drop)
    for command in (["inspect", "f.safetensors"], ["sample", "o.png", "--ckpt", "f.safetensors"],
                    ["resume", "f.safetensors"]):
        assert_one_line_error(invoke(*command), 1, "has no checksum", "--no-verify")
    assert invoke("inspect", "f.safetensors", "--no-verify").exit_code == 0


def test_a_huge_file_is_refused_by_its_header_not_read(trained_run):
    ckpt = trained_run / "checkpoints" / "step-000000009.safetensors"
    with open(ckpt, "wb") as f:
        f.write((trained_run / "checkpoints" / "step-000000004.safetensors").read_bytes())
        f.truncate(10 << 30)  # sparse: 10 GB of holes after a valid checkpoint's bytes
    result = invoke("inspect", ckpt)
    assert_one_line_error(result, 1, "bytes past its data")
    result = invoke("sample", "o.png", "--ckpt", trained_run, "--json")  # falls back to step 4
    assert result.exit_code == 0 and json.loads(result.stdout)["step"] == 4


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("where", ["latest", "newest", "latest names it"])
def test_fifos_in_checkpoints_are_never_opened(trained_run, where):
    ckpts = trained_run / "checkpoints"
    fifo = ckpts / ("latest" if where == "latest" else "step-000000999.safetensors")
    if where == "latest":
        fifo.unlink()
    os.mkfifo(fifo)
    if where == "latest names it":
        (ckpts / "latest").write_text(fifo.name + "\n")
    elif where == "newest":
        (ckpts / "latest").unlink()
    for command in (["inspect", trained_run, "--json"], ["inspect", "--json"],
                    ["sample", "o.png", "--ckpt", trained_run, "--json"]):
        result = invoke(*command)  # a hang here is the bug
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["step"] == 4
    assert invoke("resume", trained_run, "--steps", "5").exit_code == 0
    if where != "latest":
        assert_one_line_error(invoke("inspect", fifo), 1, "not a regular file")


# --- found by the second review ----------------------------------------------------------------------

def test_resume_of_a_checkpoint_outside_a_run_writes_nothing(trained_run, workdir):
    victim = workdir / "victim"
    (victim / "checkpoints").mkdir(parents=True)
    files = {"config.json": '{"mine": 1}', "metrics.jsonl": "my notes\nmore notes\n",
             "data_report.json": "mine"}
    for name, text in files.items():
        (victim / name).write_text(text)
    ckpt = victim / "checkpoints" / "step-000000004.safetensors"
    ckpt.write_bytes((trained_run / "checkpoints" / "step-000000004.safetensors").read_bytes())
    before = sorted(p.name for p in victim.rglob("*"))
    assert_one_line_error(invoke("resume", ckpt, "--steps", "6"), 1, "is not in a ganctl run")
    assert sorted(p.name for p in victim.rglob("*")) == before
    for name, text in files.items():
        assert (victim / name).read_text() == text


def test_overwrite_with_a_dangling_checkpoints_link_deletes_nothing(trained_run):
    import shutil
    shutil.rmtree(trained_run / "checkpoints")
    (trained_run / "checkpoints").symlink_to(trained_run / "unmounted-scratch")
    before = sorted(p.name for p in trained_run.iterdir())
    assert_one_line_error(invoke("train", *TINY, "--out", trained_run, "--overwrite"), 1,
                          "is not what ganctl wrote there")
    assert sorted(p.name for p in trained_run.iterdir()) == before


@pytest.mark.parametrize("event", ['{"a": 1}', "[1, 2]", "null", "7"])
def test_a_metrics_line_with_an_odd_event_does_not_block_resume(trained_run, event):
    with open(trained_run / "metrics.jsonl", "a") as f:
        f.write(f'{{"event": {event}}}\n')
    assert invoke("resume", trained_run, "--steps", "5").exit_code == 0


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_as_run_files_or_config_files_never_hang(trained_run, workdir):
    os.mkfifo(workdir / "c.toml")
    assert_one_line_error(invoke("train", "--config", "c.toml"), 1, "not a regular file")
    (trained_run / "metrics.jsonl").unlink()
    os.mkfifo(trained_run / "metrics.jsonl")
    assert_one_line_error(invoke("resume", trained_run, "--steps", "5"), 1, "not a regular file")
    (trained_run / "metrics.jsonl").unlink()
    (trained_run / "config.json").unlink()
    os.mkfifo(trained_run / "config.json")
    for ckpt in (trained_run / "checkpoints").glob("step-*"):
        ckpt.unlink()
    assert_clean(invoke("resume", trained_run, "--steps", "5"))


def test_a_huge_file_size_limit_does_not_reserve_memory(workdir):
    image_folder(workdir / "imgs", 4)
    assert info("--dataset", "imgs", "--max-file-mb", str(1 << 20))["count"] == 4


def test_a_symlink_to_an_enclosing_folder_is_not_followed(workdir):
    folder = image_folder(workdir / "imgs", 3)
    (folder / "up").symlink_to(workdir, target_is_directory=True)
    (folder / "root").symlink_to("/", target_is_directory=True)
    files, passed = folders.walk_files(folder)
    assert len(files) == 3
    assert sorted(f for f, why in passed if why == "link to an enclosing folder") == ["root", "up"]
    assert_one_line_error(invoke("data", "info", "--dataset", "/proc/self"), 1, "system folder")


# --- OUT of sample and export: names the file system refuses, folders, read-only files ----------

LONG_NAME = "x" * 300


@pytest.mark.parametrize("command", [["sample", "-n", "2", f"{LONG_NAME}.png", "--ckpt", "RUN"],
                                     ["export", "RUN", f"{LONG_NAME}.pt"]])
def test_an_out_name_too_long_for_the_file_system_is_one_line(trained_run, command):
    args = [str(trained_run) if a == "RUN" else a for a in command]
    result = invoke(*args, "--json")
    assert_one_line_error(result, 1, "File name too long", "use a shorter path")
    assert json.loads(result.stdout)["exit_code"] == 1 and len(result.stderr) < 400


def test_an_out_that_names_a_folder_is_a_bad_command_line(trained_run):
    for command in (["sample", "new/", "--ckpt", trained_run], ["export", trained_run, "new/"]):
        result = invoke(*command)
        assert result.exit_code == 2 and "new/ names a folder; give a file's name" in result.stderr
    assert not Path("new").exists()


def test_a_read_only_out_is_left_as_the_user_made_it(trained_run):
    for command, out in ((["sample", "-n", "1", "g.png", "--ckpt", trained_run], "g.png"),
                         (["export", trained_run, "g.pt"], "g.pt")):
        assert invoke(*command).exit_code == 0
        Path(out).chmod(0o444)
        before = Path(out).read_bytes()
        assert_one_line_error(invoke(*command), 1, f"{out} is read-only; make it writable")
        assert Path(out).read_bytes() == before and Path(out).stat().st_mode & 0o777 == 0o444


def test_json_output_is_strict_json_whatever_numbers_a_checkpoint_holds(trained_run):
    """A run's last record may hold NaN or infinite losses (the step before the divergence guard
    acted): --json writes them as text, never as NaN/Infinity, which JSON readers refuse."""
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"
    rewrite(ckpt, ckpt, lambda tensors, meta: meta.update(
        {"ganctl.metrics": '{"step": 4, "loss_D": NaN, "loss_G": Infinity}'}))
    result = invoke("inspect", ckpt, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"{name} in --json"))
    assert (doc["metrics"]["loss_D"], doc["metrics"]["loss_G"]) == ("nan", "inf")
