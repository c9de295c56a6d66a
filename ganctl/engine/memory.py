"""GPU memory: `--batch-size auto` (the largest power of two whose training step fits), and the
one-line error an out-of-memory becomes.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import numpy as np
import torch

from ganctl.config import Config
from ganctl.data.batches import fits_on
from ganctl.errors import ConfigError, first_line

AUTO_MIN = 8  # smallest batch tried: below it BatchNorm statistics are noise
AUTO_MAX = 2048  # largest: beyond the batches GANs are trained with (BigGAN's 2048)
CPU_BATCH = 64  # what auto means where memory is not probed (CPU, MPS)
Images = np.ndarray | torch.Tensor  # (N, C, H, W) uint8
HEADROOM = 0.9  # of the GPU's memory a probe may use at its peak (fragmentation, eval, grids)


def is_out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower()[:300])


def out_of_memory_error(e: BaseException, config: Config, step: int) -> ConfigError:
    return ConfigError(f"out of memory at batch size {config.batch_size}, step {step} "
                       f"({first_line(e, 160)}); "
                       "start with a lower --batch-size, or --batch-size auto to find the largest "
                       "that fits (checkpoints already written are intact)")


def largest_fitting(fits: Callable[[int], bool], low: int, high: int) -> int | None:
    """The largest power of two b in [low, high] with fits(b), trying upwards from low and
    stopping at the first that does not fit (memory grows with the batch); None if low fails."""
    best, b = None, low
    while b <= high and fits(b):
        best, b = b, b * 2
    return best


def probe(config: Config, device: torch.device, images: Images, labels: np.ndarray | None,
          budget: int) -> bool:
    """Whether one training step (every phase, the lazy ones included) at config.batch_size
    stays within `budget` bytes of the device at its peak; uncompiled, on a throwaway state."""
    from ganctl.engine.state import init_state  # noqa: PLC0415 (state imports this module)
    from ganctl.engine.step import draw, run_phase  # noqa: PLC0415

    n = config.batch_size
    sub_labels = None if labels is None else labels[:n]
    state = None
    torch.cuda.reset_peak_memory_stats(device)
    try:
        state = init_state(config.replace(compile="off"), device, images[:n], sub_labels)
        for phase in state.loss.phases():
            run_phase(state, phase, draw(state, keep_graph=phase.module == "G"))
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) <= budget
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        return False
    finally:
        if state is not None:
            state.batches.close()
        del state
        gc.collect()
        torch.cuda.empty_cache()


def find_batch_size(config: Config, device: torch.device, images: Images,
                    labels: np.ndarray | None, say: Callable[[str], None]) -> int:
    """--batch-size auto: the largest power of two from AUTO_MIN to AUTO_MAX (and at most the
    number of images) whose training step fits in the GPU beside the resident dataset."""
    high = min(AUTO_MAX, 1 << (len(images).bit_length() - 1))
    if device.type != "cuda":
        default = min(CPU_BATCH, high)
        say(f"--batch-size auto: {default} (memory is measured on CUDA GPUs only; on "
            f"{device.type} auto means the default)")
        return default
    free, total = torch.cuda.mem_get_info(device)
    dataset = images.nbytes if fits_on(device, images.nbytes) else 0  # resident beside the step
    budget = int(min(free, HEADROOM * total)) - dataset
    low = min(AUTO_MIN, high)
    batch = largest_fitting(lambda b: probe(config.replace(batch_size=b), device, images, labels,
                                            budget), low, high)
    if batch is None:
        raise ConfigError(f"even batch size {low} does not fit in {device}'s free memory "
                          f"({free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB); lower "
                          "--g-width/--d-width or free the GPU")
    say(f"--batch-size auto: {batch}, the largest power of two up to {high} whose step fits in "
        f"{budget / 2**30:.1f} GiB of {device} (measured)")
    return batch
