"""Writes bce_reference.safetensors: 20 BCE steps of the step as it was before losses owned
their phases. It imports that code, so it runs in a checkout of commit 98894cd:
    git worktree add ../old 98894cd && cp tests/data/make_bce_reference.py ../old/
    (cd ../old && PYTHONPATH=. python make_bce_reference.py ../main/ganctl/data/shapes.py)
    mv ../old/bce_reference.safetensors tests/data/
The images are drawn by the shapes module given (today's, so the test's data are the same).
tests/test_step.py checks the new step against the file bit for bit where the CPU kind and torch
version are the file's, and against the old step's code (re-written in the test) everywhere.
"""

import importlib.util
import sys

import torch
from ganctl.train import init_state, state_tensors, train_step, update_ema
from safetensors.torch import save_file

from ganctl.config import Config
from ganctl.losses import bce_d_loss, bce_g_loss

spec = importlib.util.spec_from_file_location("shapes_now", sys.argv[1])
shapes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shapes)

torch.set_num_threads(1)
config = Config(batch_size=8, g_width=8, d_width=8, z_dim=16, device="cpu", mirror=True)
state = init_state(config, torch.device("cpu"), shapes.render(32, 3, n=64))
stats = []
for _ in range(20):
    real = state.batches.next()
    z = torch.randn(config.batch_size, config.z_dim, generator=state.noise)
    stats.append(train_step(state, real, z, bce_d_loss, bce_g_loss))
    state.step += 1
    update_ema(state.G_ema, state.G, state.step, config.ema_decay)
tensors = {k: v.contiguous() for k, v in state_tensors(state).items()}
tensors["stats"] = torch.stack(stats)
save_file(tensors, "bce_reference.safetensors",
          metadata={"cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
                    "config": config.to_json()})
print(len(tensors), tensors["stats"][-1])
