"""Networks and optimizers as a checkpoint's flat tensors (`G.*` from a module's state dict,
`opt_G.*` from Adam's state) and back, every tensor checked before torch takes it (names,
shapes, dtypes, finite numbers): torch's load_state_dict casts or accepts what then fails
mid-step or trains on garbage.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ganctl.checkpoint.header import Header, dtype_name, shown
from ganctl.errors import CheckpointError

DAMAGED = "; the file is damaged: use an earlier checkpoint"  # after a tensor loaded wrong
ADAM_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")  # each of its parameter's shape and dtype
SQUARED_MOMENTS = ("exp_avg_sq", "max_exp_avg_sq")  # never negative
ADAM_STEP = "step"  # a float count (torch keeps Adam's step as a float32 tensor)
MAX_INDEX_DIGITS = 9  # a parameter's index in a name: more digits are no model's


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    """`{prefix}.lr.{g}` per param group and `{prefix}.state.{i}.{key}` per parameter."""
    sd = opt.state_dict()
    out = {f"{prefix}.lr.{g}": torch.tensor(group["lr"], dtype=torch.float64)
           for g, group in enumerate(sd["param_groups"])}
    for index, entries in sd["state"].items():
        for key, value in entries.items():
            out[f"{prefix}.state.{index}.{key}"] = torch.as_tensor(value)
    return out


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                   prefix: str) -> None:
    """Put optimizer_tensors() back, each tensor checked first: torch's load_state_dict casts a
    moment of another dtype to its parameter's without a word (an I32 exp_avg becomes garbage
    floats) and takes one of another shape, which fails mid-step."""
    sd = opt.state_dict()
    params = [p for group in opt.param_groups for p in group["params"]]  # state_dict's numbering
    state: dict[int, dict[str, torch.Tensor]] = {}
    lead = f"{prefix}.state."
    rates = {f"{prefix}.lr.{g}" for g in range(len(sd["param_groups"]))}
    for name, value in tensors.items():
        if name.startswith(lead):
            index, key = _state_entry(name, lead, len(params))
            _check_optimizer_tensor(name, key, value, params[index])
            state.setdefault(index, {})[key] = value
        elif name.startswith(f"{prefix}.") and name not in rates:  # read by nothing: lost on the next save
            raise CheckpointError(f"checkpoint tensor {shown(name)} is not part of {prefix}'s state "
                                  f"(its learning rates and its parameters' Adam state){DAMAGED}")
    for g, group in enumerate(sd["param_groups"]):
        name = f"{prefix}.lr.{g}"
        lr = require(tensors, name)
        check_dtype(name, dtype_name(lr.dtype), torch.float64, "resume", DAMAGED)
        group["lr"] = check_number(name, lr, "a learning rate must be a positive number",
                                   lambda rate: rate > 0)
    sd["state"] = state
    try:
        opt.load_state_dict(sd)
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"optimizer state {prefix} does not fit the model: {e}") from None


def _state_entry(name: str, lead: str, count: int) -> tuple[int, str]:
    """(parameter index, key) of `{lead}{index}.{key}`, the index one of the optimizer's and the
    key one Adam keeps (another would ride along unread, or be read by a torch that means
    something else by it)."""
    index, _, key = name[len(lead):].partition(".")
    if not (index.isascii() and index.isdecimal() and len(index) <= MAX_INDEX_DIGITS
            and int(index) < count and key):
        raise CheckpointError(f"checkpoint tensor {shown(name)} is not the state of one of "
                              f"{lead[:-len('.state.')]}'s {count} parameters{DAMAGED}")
    if key not in (*ADAM_MOMENTS, ADAM_STEP):
        raise CheckpointError(f"checkpoint tensor {shown(name)} is not state that Adam keeps "
                              f"({ADAM_STEP}, {', '.join(ADAM_MOMENTS)}){DAMAGED}")
    return int(index), key


def _check_optimizer_tensor(name: str, key: str, value: torch.Tensor, param: torch.Tensor) -> None:
    if key in ADAM_MOMENTS:
        check_dtype(name, dtype_name(value.dtype), param.dtype, "the model", DAMAGED)
        if value.shape != param.shape:
            raise CheckpointError(f"checkpoint tensor {name} is {tuple(value.shape)}, its parameter "
                                  f"is {tuple(param.shape)}{DAMAGED}")
    elif key == ADAM_STEP:
        if value.dtype not in (torch.float32, torch.float64):
            check_dtype(name, dtype_name(value.dtype), torch.float32, "resume", DAMAGED)
        check_number(name, value, "Adam's step must be a whole number from 0 up",
                     lambda count: count >= 0 and float(count).is_integer())


def check_number(name: str, value: torch.Tensor, what: str,
                 valid: Callable[[Any], bool]) -> Any:
    """The one number a tensor of the training state holds (a Python int or float), finite and
    `valid`, else a CheckpointError saying `what` it must be: a negative step or a learning rate
    of 0 loads without a word and fails later as something else (a division by zero, a
    divergence blamed on the learning rates)."""
    check_scalar(name, value)
    number = value.item()
    if isinstance(number, float) and not math.isfinite(number) or not valid(number):
        raise CheckpointError(f"checkpoint tensor {name} is {_number_text(number)}: {what}{DAMAGED}")
    return number


def _number_text(number: Any) -> str:
    """A number for a one-line message: a huge one by its size, not its 4,000 digits."""
    text = str(number)
    return text if len(text) <= 24 else f"{text[:12]}... ({len(text)} digits)"


def check_scalar(name: str, value: torch.Tensor) -> None:
    if value.numel() != 1:
        raise CheckpointError(f"checkpoint tensor {name} holds {value.numel()} numbers where resume "
                              f"needs one{DAMAGED}")


def check_finite(path: Path, tensors: dict[str, torch.Tensor], prefix: str,
                 what: str = "weights") -> None:
    """The floating-point tensors `{prefix}.*` hold no NaN or inf: a checkpoint of a run that
    diverged (or a damaged file that passed as one) otherwise samples black images without a
    word, or resumes into a network that never recovers. One pass over each tensor; run after
    the dtypes are checked (a float8 tensor has no isfinite)."""
    lead = prefix + "."
    for name, value in tensors.items():
        if (name.startswith(lead) and value.is_floating_point() and value.dtype.itemsize > 1
                and not bool(torch.isfinite(value).all())):
            raise CheckpointError(f"{path}: {prefix} holds NaN or inf {what} ({shown(name)}): the "
                                  "run diverged or the file is damaged; use an earlier checkpoint")


def check_second_moments(path: Path, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    """Adam's running means of squared gradients are not negative: the update divides by their
    square root, which makes a negative one NaN, and the run would be said to diverge."""
    lead = f"{prefix}.state."
    for name, value in tensors.items():
        if (name.startswith(lead) and name.rpartition(".")[2] in SQUARED_MOMENTS
                and value.is_floating_point() and bool((value < 0).any())):
            raise CheckpointError(f"{path}: checkpoint tensor {shown(name)} holds negative numbers, "
                                  f"where Adam keeps means of squares{DAMAGED}")


def require(tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    try:
        return tensors[name]
    except KeyError:
        raise CheckpointError(f"checkpoint lacks tensor {name!r}; it is incomplete") from None


def module_tensors(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def check_dtype(name: str, stored: str, needed: torch.dtype, who: str, advice: str = "") -> None:
    """A tensor of the dtype `who` (the model, resume) needs: a same-size swap (F32 for I32)
    passes every size check and loads as garbage, or fails later inside torch. `advice` ends the
    message where the caller adds none."""
    if stored != dtype_name(needed):
        raise CheckpointError(f"checkpoint tensor {name} is {stored}, {who} needs "
                              f"{dtype_name(needed)}{advice}")


def check_shapes(module: torch.nn.Module, header: Header, prefix: str) -> None:
    """Compare a module's state dict (built on the meta device: no memory) with the header's
    tensors, before anything of the size the config asks for is allocated."""
    lead = prefix + "."
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    stored = {k[len(lead):]: tuple(v["shape"]) for k, v in header.tensors.items() if k.startswith(lead)}
    if expected.keys() != stored.keys():
        missing = sorted(expected.keys() - stored.keys())
        what = f"missing {lead}{missing[0]}" if missing else \
            f"unexpected {lead}{sorted(stored.keys() - expected.keys())[0]}"
        raise CheckpointError(f"checkpoint does not match its config's model ({what})")
    for k, shape in expected.items():
        if stored[k] != shape:
            raise CheckpointError(f"checkpoint tensor {lead}{k} is {stored[k]}, the config's model "
                                  f"needs {shape}")


def check_dtypes(module: torch.nn.Module, header: Header, prefix: str) -> None:
    """The header's tensors of a module (check_shapes: the same names) have the dtypes of the
    module's (built on the meta device, whose tensors carry their dtypes)."""
    lead = prefix + "."
    for k, tensor in module.state_dict().items():
        entry = header.tensors.get(lead + k)
        if entry is not None:
            check_dtype(lead + k, entry["dtype"], tensor.dtype, "the model")


def load_module(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    lead = prefix + "."
    sd = {k[len(lead):]: v for k, v in tensors.items() if k.startswith(lead)}
    expected = module.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        what = f"missing {lead}{missing[0]}" if missing else f"unexpected {lead}{unexpected[0]}"
        raise CheckpointError(f"checkpoint does not match its config's model ({what})")
    for k, v in sd.items():
        check_dtype(lead + k, dtype_name(v.dtype), expected[k].dtype, "the model", DAMAGED)
        if v.shape != expected[k].shape:
            raise CheckpointError(f"checkpoint tensor {lead}{k} is {tuple(v.shape)}, the model "
                                  f"needs {tuple(expected[k].shape)}")
    module.load_state_dict(sd)
