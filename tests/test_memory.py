"""`--batch-size auto` and out-of-memory errors (ganctl/engine/memory.py): the largest batch that
fits, the values --batch-size and a config file take, and one-line errors when memory runs out."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import TINY, TINY_NO_STEPS, assert_one_line_error, invoke, tiny_config

from ganctl.engine import memory
from ganctl.errors import ConfigError

# --- --batch-size auto ----------------------------------------------------------------------------

def test_largest_fitting_power_of_two():
    assert memory.largest_fitting(lambda b: b <= 300, 8, 2048) == 256
    assert memory.largest_fitting(lambda b: True, 8, 2048) == 2048
    assert memory.largest_fitting(lambda b: False, 8, 2048) is None
    assert memory.largest_fitting(lambda b: True, 8, 16) == 16


def test_auto_batch_on_cuda_takes_the_largest_that_fits(monkeypatch):
    tried = []

    def probe(config, device, images, labels, budget):
        tried.append(config.batch_size)
        return config.batch_size <= 200

    monkeypatch.setattr(memory, "probe", probe)
    monkeypatch.setattr(memory.torch.cuda, "mem_get_info", lambda d: (40 << 30, 80 << 30))
    said = []
    images = np.zeros((5000, 3, 8, 8), np.uint8)
    batch = memory.find_batch_size(tiny_config(), torch.device("cuda", 0), images, None, said.append)
    assert batch == 128 and tried == [8, 16, 32, 64, 128, 256]
    assert "--batch-size auto: 128" in said[0] and "up to 2048" in said[0]
    tried.clear()  # never more than the dataset holds
    assert memory.find_batch_size(tiny_config(), torch.device("cuda", 0), images[:100], None,
                                  said.append) == 64


def test_auto_batch_when_nothing_fits_is_an_error(monkeypatch):
    monkeypatch.setattr(memory, "probe", lambda *a: False)
    monkeypatch.setattr(memory.torch.cuda, "mem_get_info", lambda d: (1 << 30, 80 << 30))
    with pytest.raises(ConfigError, match="even batch size 8 does not fit"):
        memory.find_batch_size(tiny_config(), torch.device("cuda", 0),
                               np.zeros((64, 3, 8, 8), np.uint8), None, print)


def test_batch_size_auto_from_the_cli_and_a_config_file(workdir):
    result = invoke("train", *TINY_NO_STEPS, "--steps", "2", "--batch-size", "auto", "--out", "a")
    assert result.exit_code == 0, result.output
    assert "--batch-size auto: 64" in result.stdout
    assert json.loads((workdir / "a/config.json").read_text())["batch_size"] == 64
    (workdir / "c.toml").write_text('batch_size = "auto"\nsteps = 2\n')
    result = invoke("train", "--config", "c.toml", "--g-width", "8", "--d-width", "8", "--out", "b")
    assert result.exit_code == 0, result.output
    assert json.loads((workdir / "b/config.json").read_text())["batch_size"] == 64


@pytest.mark.parametrize("value", ["0", "-3", "lots", "1.5", "+8", "1_0", "\u0663"])
def test_bad_batch_size_is_a_usage_error(workdir, value):
    result = invoke("train", *TINY, "--batch-size", value)
    assert result.exit_code == 2
    assert "is not a whole number of 1 or more, nor auto" in result.output


def test_batch_size_0_in_a_config_file_is_refused(workdir):
    (workdir / "c.toml").write_text("batch_size = 0\n")
    result = invoke("train", "--steps", "2", "--g-width", "8", "--d-width", "8", "--config",
                    "c.toml")
    assert_one_line_error(result, 1, "batch_size must be a whole number from 1 to 65536, got 0, "
                          "or auto")


def test_train_resume_with_batch_size_auto_continues_the_run(workdir):
    args = [*TINY_NO_STEPS, "--batch-size", "auto", "--out", "r"]
    assert invoke("train", *args, "--steps", "2").exit_code == 0
    result = invoke("train", *args, "--steps", "4", "--resume")
    assert result.exit_code == 0, result.output
    assert json.loads((workdir / "r/config.json").read_text())["batch_size"] == 64


# --- out of memory --------------------------------------------------------------------------------

def test_out_of_memory_is_a_one_line_error_naming_the_batch_and_the_flag(workdir, monkeypatch):
    def oom(state, phases):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore")

    monkeypatch.setattr("ganctl.engine.loop.train_step", oom)
    result = invoke("train", *TINY, "--out", "r")
    assert_one_line_error(result, 1, "out of memory at batch size 8, step 0",
                          "Tried to allocate 2.00 GiB", "lower --batch-size", "--batch-size auto")


def test_a_model_that_does_not_fit_in_memory_is_one_line(workdir, monkeypatch):
    from ganctl.engine import state

    def no_memory(config):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 68719476736 bytes.")

    monkeypatch.setattr(state, "build_models", no_memory)
    result = invoke("train", *TINY, "--out", "r")
    assert_one_line_error(result, 1, "the model does not fit in cpu memory", "lower --g-width")
    assert not (workdir / "r").exists()
