"""NVlabs' StyleGAN2 network files (stylegan2-ada-pytorch, and stylegan3's StyleGAN2 networks)
as ganctl's: the settings from their init arguments, the weights by their own names.

read_snapshot() gives a Snapshot: G, D and G_ema as flat state dicts (the names ganctl's
stylegan2 networks have), the model settings, the augmentation probability and what they
trained on. Nothing in the file runs (unpickle.py). A D that ganctl cannot build (another class
mapping, say) is left out with a note, so G_ema still samples; a file without G uses G_ema's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ganctl.errors import CheckpointError
from ganctl.importers.arguments import Unbuildable, discriminator_settings, generator_settings
from ganctl.importers.unpickle import Persistent, read

NETWORKS = ("G", "D", "G_ema")
STYLEGAN3_CLASSES = ("SynthesisInput",)  # only stylegan3's -t / -r generators have these
MAX_DEPTH = 12  # modules within modules (theirs: G.synthesis.b1024.conv1.affine, 5 deep)
PLAIN = (str, int, float, bool, type(None))  # what their training_set_kwargs' values may be


@dataclass
class Snapshot:
    """What ganctl takes from an NVlabs network file."""

    source: str  # the file's name
    sha256: str
    settings: dict[str, Any]  # ganctl model settings (Config keys)
    networks: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # G, D, G_ema
    classes: int = 0  # their c_dim (0: unconditional)
    augment_p: float | None = None  # the adaptive augmentation's probability when saved
    dataset: dict[str, Any] = field(default_factory=dict)  # their training_set_kwargs (plain)
    code: str = ""  # the code base that wrote it (arguments.ADA or SG3)
    held: tuple[str, ...] = ()  # the networks the file holds (of NETWORKS)
    notes: list[str] = field(default_factory=list)  # what was set aside, one line each

    @property
    def has_D(self) -> bool:
        return "d_width" in self.settings


def read_snapshot(path: Path, weights: bool = True) -> Snapshot:
    """The networks of the NVlabs file at `path` (a CheckpointError in one line if it is none,
    or one ganctl cannot build). weights=False: the tensors are on the meta device (shapes
    alone, no memory)."""
    data, sha256 = read(path, weights)
    try:
        return _snapshot(path, data, sha256, weights)
    except (TypeError, ValueError, AttributeError, RuntimeError, RecursionError, KeyError,
            IndexError) as e:  # values of a type no NVlabs file holds where settings should be
        raise CheckpointError(f"{path.name} holds values no NVlabs network file does "
                              f"({type(e).__name__}); the file is damaged or not NVlabs'") from None


def _snapshot(path: Path, data: Any, sha256: str, weights: bool) -> Snapshot:
    name = path.name
    if not isinstance(data, dict) or not isinstance(data.get("G_ema"), Persistent):
        raise CheckpointError(f"{name} is a pickle but no NVlabs network snapshot (a dict with "
                              "G_ema, and G and D from training); give their network .pkl")
    nets = {k: data[k] for k in NETWORKS if isinstance(data.get(k), Persistent)}
    for key, net in nets.items():
        _check_tree(net, key, name)
    try:
        settings, code = generator_settings(_kwargs(nets["G_ema"], name), name)
    except Unbuildable as e:
        raise CheckpointError(f"{name}: {e}; ganctl cannot import it") from None
    snapshot = Snapshot(name, sha256, settings, classes=settings.pop("c_dim"), code=code,
                        augment_p=_augment_p(data.get("augment_pipe")),
                        dataset=_plain(data.get("training_set_kwargs")), held=tuple(nets))
    if "D" in nets:
        try:
            d, notes = discriminator_settings(_kwargs(nets["D"], name), {**settings,
                                              "c_dim": snapshot.classes}, code, name)
            settings.update(d)
            snapshot.notes += notes
        except Unbuildable as e:
            snapshot.notes.append(f"D left out ({e}): sample, eval and export work, fine-tuning "
                                  "needs a D")
            del nets["D"]
    if "G" not in nets:
        snapshot.notes.append("the file holds no G: G is G_ema")
    sources = {"G": nets.get("G", nets["G_ema"]), "D": nets.get("D"), "G_ema": nets["G_ema"]}
    # bytes the copies may take: twice the file (G_ema stands for a missing G), never more
    budget = [2 * path.stat().st_size]
    snapshot.networks = {k: tensors(net, name, budget=budget) for k, net in sources.items()
                         if net is not None}
    return snapshot


def _check_tree(net: Persistent, key: str, name: str) -> None:
    """A network of NVlabs' StyleGAN2 (not StyleGAN3's), whose modules form a tree no deeper than
    MAX_DEPTH (a file can make a module its own child)."""
    seen: set[int] = set()
    found: set[str] = set()
    todo = [(net, 0)]
    while todo:
        node, depth = todo.pop()
        if id(node) in seen or depth > MAX_DEPTH:
            raise CheckpointError(f"{name}: its {key}'s modules are not a tree (a module inside "
                                  "itself, or nested deeper than any network); the file is damaged")
        seen.add(id(node))
        found.add(node.class_name)
        todo += [(child, depth + 1) for child in node.children().values()]
    if found & set(STYLEGAN3_CLASSES):
        raise CheckpointError(f"{name} holds a StyleGAN3 (-t/-r) network, which ganctl does not "
                              "build yet; its StyleGAN2 networks (stylegan2-ada-pytorch, or "
                              "stylegan3's --cfg=stylegan2) import")
    expected = "Discriminator" if key == "D" else "Generator"
    if net.class_name != expected:
        shown = net.class_name[:40] if net.class_name.isprintable() else repr(net.class_name[:40])
        raise CheckpointError(f"{name}: its {key} is a {shown or 'nameless class'}, not NVlabs' "
                              f"StyleGAN2 {expected}")


def tensors(net: Persistent, name: str, prefix: str = "", budget: list[int] | None = None
            ) -> dict[str, torch.Tensor]:
    """The network's parameters and persistent buffers by their state-dict names, each its own
    copy (a file can make two share one storage); on the meta device as they were read. The
    copies may take `budget[0]` bytes in all (the file's size: a file naming one storage a
    thousand times must not make a thousand copies of it)."""
    state = net.state
    out: dict[str, torch.Tensor] = {}
    skip = state.get("_non_persistent_buffers_set") or ()
    for group in ("_parameters", "_buffers"):
        table = state.get(group) or {}
        if not isinstance(table, dict):
            raise CheckpointError(f"{name}: {prefix or 'the network'} has {group} that are no "
                                  "table; the file is damaged")
        for key, value in table.items():
            if value is None or (isinstance(key, str) and key in skip):
                continue
            if not (isinstance(key, str) and key.isidentifier() and isinstance(value, torch.Tensor)):
                raise CheckpointError(f"{name}: {prefix}{str(key)[:40]} is no named tensor; the file "
                                      "is damaged")
            if not value.is_meta and budget is not None:
                budget[0] -= value.numel() * value.element_size()
                if budget[0] < 0:
                    raise CheckpointError(f"{name}: its tensors claim more bytes than the file "
                                          "holds (names sharing one storage); the file is "
                                          "damaged or hostile")
            out[prefix + key] = value if value.is_meta else value.detach().clone()
    for key, child in net.children().items():
        if not (isinstance(key, str) and key.isidentifier()):
            raise CheckpointError(f"{name}: a module of {prefix or 'the network'} is named "
                                  f"{str(key)[:40]!r}; the file is damaged")
        out.update(tensors(child, name, f"{prefix}{key}.", budget))
    return out


def _kwargs(net: Persistent, name: str) -> dict[str, Any]:
    kwargs = net.state.get("_init_kwargs")
    if not isinstance(kwargs, dict) or net.state.get("_init_args"):
        raise CheckpointError(f"{name}: its {net.class_name[:40]!r} has no init arguments ganctl "
                              "can read; the file is damaged or not NVlabs'")
    return kwargs


def _plain(kwargs: Any) -> dict[str, Any]:
    """Their training_set_kwargs as a record of what they trained on: plain values only."""
    if not isinstance(kwargs, dict):
        return {}
    return {k[:80]: (v[:1000] if isinstance(v, str) else v) for k, v in kwargs.items()
            if isinstance(k, str) and isinstance(v, PLAIN)
            and not (isinstance(v, float) and not math.isfinite(v))
            and not (isinstance(v, int) and abs(v) > 2**63)}


def _augment_p(pipe: Any) -> float | None:
    if not isinstance(pipe, Persistent):
        return None
    p = (pipe.state.get("_buffers") or {}).get("p")
    if not (isinstance(p, torch.Tensor) and p.numel() == 1 and not p.is_meta):
        return None
    value = float(p)
    return value if 0 <= value <= 1 else None
