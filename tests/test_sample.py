"""Generation (ganctl/sample.py): latents that depend on the seed alone, and running out of memory
while generating."""

from __future__ import annotations

import pytest
import torch
from helpers import CPU

from ganctl.errors import ConfigError
from ganctl.sample import generate, latents_from_seeds


def test_latents_depend_on_seed_only():
    a = latents_from_seeds([3, 4, 5], 8)
    assert torch.equal(a[2], latents_from_seeds([5], 8)[0])
    assert not torch.equal(a[0], a[1])


def test_running_out_of_memory_while_generating_says_to_lower_the_batch_size():
    class Hungry(torch.nn.Module):
        def forward(self, z, c):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore lines")

    G = Hungry().train()
    with pytest.raises(ConfigError) as e:
        generate(G, torch.zeros(5, 8), CPU, batch_size=4)
    assert str(e.value).startswith("out of memory on cpu generating 4 images at a time; lower the "
                                   "batch size (--batch-size, batch_size=)")
    assert G.training  # its mode is given back
