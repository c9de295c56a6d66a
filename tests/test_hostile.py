"""Hostile but fair input: dataset files that are huge, special or broken, trees that loop,
extreme numbers on every option, metadata of every JSON type, damaged run files, and the
CelebA download (requested files, layout, Google Drive's quota)."""

import json
import os
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
from ganctl.config import BOUNDS, Config
from ganctl.data import cache, sources
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
        files, passed = sources.walk_files(folder)
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
        for bad in (high * 2 + 1, low - 1):
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
        monkeypatch.setattr(sources, "MAX_DATA_FILE", 1000)
        try:
            sources.read_data_file(tmp_path / "g.gz", gunzip=True)  # a gzip bomb stops early
        finally:
            monkeypatch.undo()
    assert datasets.DATASETS["celeba"].download is not None


# --- reading a run while it is trained --------------------------------------------------------------

@pytest.mark.slow
def test_sample_and_inspect_in_a_loop_while_a_trainer_checkpoints_and_prunes_every_step(workdir):
    proc = start("train", "--steps", "100000", "--batch-size", "4", "--g-width", "4",
                 "--d-width", "4", "--ckpt-every", "1", "--keep", "1", "--log-every", "1",
                 "--sample-every", "100000", "--device", "cpu", "--out", "r", cwd=workdir)
    failures, steps = [], set()
    try:
        wait_for_step(proc.stdout, 3)
        for i in range(60):
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
    assert len(steps) >= 10  # the trainer really moved on (and pruned) while we read
