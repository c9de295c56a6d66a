"""ganctl.importers: NVlabs' network pickles read without running anything in them.

What a file holds comes back exactly (settings from the init arguments of every code base that
writes them, weights by their names, w_avg, augment p, the sha256); what a file must not do never
happens: a payload (os.system, eval, a process, a file written) anywhere in a snapshot, a
protocol trick or a find_class bypass is refused in one line naming it, and a marker file it
would write never appears. The files are made here (nvlabs_files.py); NVlabs' own fixtures in
../shared/models/nvlabs (skipped without them) are checked against the outputs their code
computed.
"""

from __future__ import annotations

import copyreg
import hashlib
import os
import pickle
import re
import struct
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from nvlabs_files import (
    NAMED,
    NO_SHARED,
    SHARED,
    Call,
    as_persistent,
    augment_pipe,
    call,
    config,
    d_kwargs,
    dumps,
    easydict,
    g_kwargs,
    legacy_storage,
    module_state,
    networks,
    persistent,
    snapshot,
    tensor_from,
    touch,
    write,
)

from ganctl.errors import CheckpointError
from ganctl.importers import unpickle
from ganctl.importers.convert import config_of, open_network
from ganctl.importers.nvlabs import read_snapshot
from ganctl.importers.unpickle import read

REFUSED = "refused without running anything"


@pytest.fixture(scope="module")
def made() -> tuple:
    """A tiny StyleGAN2's config, its networks and their snapshot's objects (made once)."""
    cfg = config()
    nets = networks(cfg)
    return cfg, nets, snapshot(cfg, nets)


def refused(path: Path, *fragments: str) -> str:
    """The one-line CheckpointError reading `path` gives, with each fragment in it."""
    with pytest.raises(CheckpointError) as caught:
        read_snapshot(path)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 600, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- what a file holds ----------------------------------------------------------------------

def test_a_snapshot_gives_its_networks_settings_and_provenance_exactly(made, tmp_path):
    cfg, nets, data = made
    path = write(tmp_path / "net.pkl", data)
    snap = read_snapshot(path)
    model = {k: getattr(cfg, k) for k in ("arch", "resolution", "channels", "z_dim", "w_dim",
                                          "mapping_layers", "channel_base", "g_width", "d_width",
                                          "reduced_res", "conv_clamp", "mbstd_group", "d_arch")}
    assert {k: snap.settings[k] for k in model} == model
    assert (snap.classes, snap.augment_p, snap.code, snap.held, snap.notes) == \
        (0, 0.25, "stylegan2-ada-pytorch", ("G", "D", "G_ema"), [])
    assert snap.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert snap.dataset["path"] == "~/datasets/made.zip" and snap.dataset["resolution"] == 32
    for key, net in nets.items():
        expected = net.state_dict()
        assert snap.networks[key].keys() == expected.keys()
        for name, tensor in expected.items():
            assert torch.equal(snap.networks[key][name], tensor), name
    assert torch.equal(snap.networks["G_ema"]["mapping.w_avg"], nets["G_ema"].mapping.w_avg)


def test_without_weights_the_tensors_are_shapes_and_no_storage_is_rebuilt(made, tmp_path,
                                                                          monkeypatch):
    cfg, nets, data = made
    path = write(tmp_path / "net.pkl", data)
    loads: list[int] = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(1) or real(*a, **k))
    snap = read_snapshot(path, weights=False)
    assert snap.augment_p == 0.25
    small = 1  # augment_pipe's p, and each tensor of at most unpickle.SMALL elements
    for key, net in nets.items():
        shapes = {k: (tuple(v.shape), v.dtype) for k, v in net.state_dict().items()}
        assert {k: (tuple(v.shape), v.dtype) for k, v in snap.networks[key].items()} == shapes
        for name, tensor in snap.networks[key].items():
            assert tensor.is_meta == (tensor.numel() > unpickle.SMALL), name
            small += tensor.numel() <= unpickle.SMALL
    assert len(loads) == small < 200  # the weights' storages stay bytes: never rebuilt


@pytest.mark.parametrize("form, fp16, clamp", [("sg3", 4, 256.0), ("sg3", 0, 0.0),
                                               ("tf", 0, 0.0), ("ada", 2, 256.0)])
def test_every_code_base_s_arguments_and_defaults(tmp_path, form, fp16, clamp):
    """stylegan3 leaves fp16 blocks and clamp to its defaults (4, 256) when its train.py did
    not set them; their TF converter writes every argument, training-only ones too."""
    cfg = config(reduced_res=fp16, conv_clamp=clamp)
    snap = read_snapshot(write(tmp_path / "net.pkl", snapshot(cfg, networks(cfg), form=form)))
    assert (snap.settings["reduced_res"], snap.settings["conv_clamp"]) == (fp16, clamp)
    assert snap.code == ("stylegan3" if form == "sg3" else "stylegan2-ada-pytorch")
    assert snap.notes == []


def test_a_conditional_network_and_a_d_ganctl_cannot_build(tmp_path):
    cfg = config(conditional=True)
    nets = networks(cfg)
    snap = read_snapshot(write(tmp_path / "c.pkl", snapshot(cfg, nets)))
    assert snap.classes == 10 and snap.settings["conditional"] is True and snap.has_D
    assert config_of(snap).classes == tuple("0123456789")
    # their TF converter's conditional D: a class mapping of 0 layers, which ganctl does not build
    data = snapshot(cfg, nets, D=as_persistent(nets["D"], d_kwargs(cfg, "tf")))
    snap = read_snapshot(write(tmp_path / "tf.pkl", data))
    assert not snap.has_D and list(snap.networks) == ["G", "G_ema"]
    assert snap.notes == ["D left out (D's class mapping has 0 layers (features None); ganctl "
                          "builds 8 of 16): sample, eval and export work, fine-tuning needs a D"]


def test_a_minibatch_group_of_none_and_a_file_without_g(made, tmp_path):
    cfg, nets, _ = made
    data = snapshot(cfg, nets, D=as_persistent(nets["D"], d_kwargs(cfg, mbstd=None)), G=None)
    snap = read_snapshot(write(tmp_path / "net.pkl", data))
    assert snap.settings["mbstd_group"] == 4
    assert snap.notes == ["D's minibatch-stddev group is None (the whole batch); ganctl uses 4, "
                          "as NVlabs' train.py does when it fine-tunes",
                          "the file holds no G: G is G_ema"]
    assert snap.held == ("D", "G_ema")
    assert all(torch.equal(snap.networks["G"][k], v) for k, v in nets["G_ema"].state_dict().items())


@pytest.mark.parametrize("where, value, message", [
    ("synthesis", {"architecture": "orig"}, "G's synthesis arguments: architecture is 'orig', "
                                            "where ganctl builds skip"),
    ("synthesis", {"resample_filter": [1, 2, 1]}, "resample_filter is [1, 2, 1], where ganctl "
                                                  "builds [1, 3, 3, 1]"),
    ("synthesis", {"magnitude_ema_beta": 0.9}, "G's synthesis arguments include "
                                               "'magnitude_ema_beta', which ganctl's StyleGAN2 "
                                               "does not build"),
    ("mapping", {"lr_multiplier": 0.1}, "G's mapping_kwargs: lr_multiplier is 0.1, where "
                                        "ganctl builds 0.01"),
    ("mapping", {"layer_features": 32}, "G's mapping layer_features is 32, not w_dim 8"),
    ("top", {"img_resolution": 48}, "its resolution 48 is no power of two"),
])
def test_arguments_ganctl_does_not_build_are_named(tmp_path, where, value, message):
    cfg = config()
    kwargs = g_kwargs(cfg)
    if where == "top":
        kwargs.update(value)
    else:
        part = kwargs[f"{where}_kwargs"].args[0]  # the EasyDict's values
        part.update(value)
    nets = networks(cfg)
    data = snapshot(cfg, nets, G_ema=as_persistent(nets["G_ema"], kwargs))
    refused(write(tmp_path / "net.pkl", data), message, "ganctl cannot import it")


def test_damaged_arguments_and_weights_are_named(made, tmp_path):
    cfg, nets, _ = made
    for z_dim, shown in (("eight", "'eight'"), (10**5000, "an integer of 16610 bits"),
                         ([10**5000], "a list"), (-1, "-1")):
        kwargs = {**g_kwargs(cfg), "z_dim": z_dim}
        data = snapshot(cfg, nets, G_ema=as_persistent(nets["G_ema"], kwargs))
        refused(write(tmp_path / "a.pkl", data), f"G's z_dim is {shown}, not a whole number")
    state = module_state(nets["G_ema"], g_kwargs(cfg))
    state["_buffers"] = OrderedDict(state["_buffers"], extra=torch.zeros(2))
    data = snapshot(cfg, nets, G_ema=persistent("Generator", state))
    with pytest.raises(CheckpointError, match="its G_ema has extra, which ganctl's StyleGAN2"):
        open_network(write(tmp_path / "b.pkl", data))  # the shapes: against what ganctl builds
    bad = {**nets["D"].state_dict()}
    bad["b4.fc.weight"] = torch.full_like(bad["b4.fc.weight"], float("nan"))
    D = networks(cfg)["D"]
    D.load_state_dict(bad)
    data = snapshot(cfg, {**nets, "D": D})
    with pytest.raises(CheckpointError, match=r"D.b4.fc.weight holds NaN or inf"):
        open_network(write(tmp_path / "c.pkl", data))


def test_a_stylegan3_network_is_refused_saying_so(made, tmp_path):
    cfg, nets, _ = made
    state = module_state(nets["G_ema"], g_kwargs(cfg))
    state["_modules"]["synthesis"].args[0]["state"]["_modules"]["input"] = persistent(
        "SynthesisInput", {"_parameters": {}, "_buffers": {}, "_modules": {}})
    data = snapshot(cfg, nets, G_ema=persistent("Generator", state))
    refused(write(tmp_path / "sg3t.pkl", data), "sg3t.pkl holds a StyleGAN3 (-t/-r) network, "
            "which ganctl does not build yet; its StyleGAN2 networks (stylegan2-ada-pytorch, or "
            "stylegan3's --cfg=stylegan2) import")


@pytest.mark.parametrize("obj", [{"a": 1}, [1, 2], torch.ones(2), {"G_ema": 3}])
def test_a_pickle_that_is_not_a_snapshot(tmp_path, obj):
    refused(write(tmp_path / "x.pkl", obj), "x.pkl is a pickle but no NVlabs network snapshot")


def test_a_tensorflow_era_pickle_names_the_converter(tmp_path):
    stub = call("dnnlib.tflib.network", "Network")
    path = write(tmp_path / "tf.pkl", (stub, stub, stub), protocol=2)
    message = refused(path, "tf.pkl is a TensorFlow-era NVlabs pickle "
                      "(dnnlib.tflib.network.Network); convert it with NVlabs' "
                      "stylegan2-ada-pytorch first (python legacy.py --source=OLD.pkl "
                      "--dest=NEW.pkl), then give NEW.pkl")
    assert REFUSED not in message


def test_module_trees_that_are_not_trees(made, tmp_path):
    """A module inside itself (a memo reference to an ancestor) and modules nested past any
    network's depth are refused, not followed until the stack runs out."""
    cfg, nets, _ = made
    deep = persistent("Leaf", {"_parameters": {}, "_buffers": {}, "_modules": {}})
    for _ in range(40):
        deep = persistent("Node", {"_parameters": {}, "_buffers": {}, "_modules": {"m": deep}})
    state = module_state(nets["G_ema"], g_kwargs(cfg))
    state["_modules"]["deep"] = deep
    data = snapshot(cfg, nets, G_ema=persistent("Generator", state))
    refused(write(tmp_path / "deep.pkl", data), "its G_ema's modules are not a tree")
    # G_ema put into its own _modules once made: its state's dict is memoised, then set again
    loop = (b"\x80\x04}\x94" + _su("G_ema") + b"\x94" + _su("torch_utils.persistence") + b"\x94"
            + _su("_reconstruct_persistent_obj") + b"\x94\x93\x94}\x94(" + _su("type")
            + _su("class") + _su("class_name") + _su("Generator") + _su("state") + b"}\x94("
            + _su("_modules") + b"}\x94" + _su("_init_kwargs") + b"}uu\x85R\x94sh\x07"
            + _su("again") + b"h\x08s0.")
    refused(_raw(tmp_path, loop, "loop.pkl"), "loop.pkl: its G_ema's modules are not a tree")


# --- files too large, cut short, or not pickles ---------------------------------------------

class Counting:
    """open_regular's file, counting the bytes read from it."""

    read_bytes = 0

    def __init__(self, f):
        self.f = f

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def read(self, n=-1):
        data = self.f.read(n)
        Counting.read_bytes += len(data)
        return data

    def readline(self, n=-1):
        data = self.f.readline(n)
        Counting.read_bytes += len(data)
        return data


@pytest.fixture
def counted(monkeypatch):
    Counting.read_bytes = 0
    real = unpickle.open_regular
    monkeypatch.setattr(unpickle, "open_regular", lambda p: Counting(real(p)))
    return Counting


@pytest.mark.parametrize("head, message", [
    (b"", "is not a pickle of the kind NVlabs write (protocol 2 to 5)"),
    (b"\x80\x04", "a pickle that is cut short or malformed"),
    (b"\x80\x04\x95" + struct.pack("<Q", 2**60), "a pickle that is cut short or malformed"),
    (b"\x80\x04\x8e" + struct.pack("<Q", 2**60), "a pickle that is cut short or malformed")])
def test_a_1gb_file_fails_in_one_line_without_being_read(tmp_path, counted, head, message):
    """Zeros after a head: no head at all, a pickle's head, a frame and a bytes object that
    declare 2**60 bytes; a sparse file (no disk)."""
    path = tmp_path / "zeros.pkl"
    with path.open("wb") as f:
        f.write(head)
        f.truncate(2**30)
    started = time.perf_counter()
    refused(path, "zeros.pkl", message)
    assert counted.read_bytes < 2**20 and time.perf_counter() - started < 5


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path, counted):
    path = tmp_path / "huge.pkl"
    with path.open("wb") as f:
        f.write(b"\x80\x04")
        f.truncate(5 * 2**30)
    refused(path, "huge.pkl is 5.0 GiB, more than any NVlabs network file (4 GiB); refused unread")
    assert counted.read_bytes == 0


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_a_truncated_file_fails_in_one_line(made, tmp_path, keep):
    data = dumps(made[2])
    path = tmp_path / "cut.pkl"
    path.write_bytes(data[:int(len(data) * keep)])
    refused(path, "cut.pkl holds a pickle that is cut short or malformed", "truncated or damaged")


def test_bytes_after_the_pickle_and_files_that_are_not_files(made, tmp_path):
    path = tmp_path / "tail.pkl"
    path.write_bytes(dumps(made[2]) + dumps(made[2]))
    refused(path, "bytes after the pickle's end, which no NVlabs file has")
    refused(tmp_path / "none.pkl", "none.pkl does not exist; give an NVlabs network .pkl")
    (tmp_path / "dir.pkl").mkdir()
    refused(tmp_path / "dir.pkl", "is not a regular file")
    os.mkfifo(tmp_path / "fifo.pkl")
    refused(tmp_path / "fifo.pkl", "is not a regular file")  # not waited on


# --- payloads: nothing runs, wherever they are ----------------------------------------------

def _place(data: dict, where: str, payload: Call, cfg, nets) -> dict:
    """The snapshot with `payload` at `where`."""
    data = dict(data)
    if where == "top-level value":
        data["evil"] = payload
    elif where == "first entry":  # unpickled before any network
        data = {"evil": payload, **data}
    elif where == "persistent state":
        state = module_state(nets["G"], g_kwargs(cfg))
        state["__setstate__"] = payload
        data["G"] = persistent("Generator", state)
    elif where == "init kwargs":
        data["G_ema"] = as_persistent(nets["G_ema"], {**g_kwargs(cfg), "evil": payload})
    elif where == "training_set_kwargs":
        data["training_set_kwargs"] = easydict(path="x.zip", evil=payload)
    elif where == "OrderedDict item":
        state = module_state(nets["D"], d_kwargs(cfg))
        state["_parameters"] = OrderedDict(state["_parameters"], evil=payload)
        data["D"] = persistent("Discriminator", state)
    elif where == "tensor argument":
        data["augment_pipe"] = persistent("AugmentPipe", {"_buffers": OrderedDict(p=call(
            "torch._utils", "_rebuild_tensor_v2", payload, 0, (1,), (1,), False, OrderedDict()))})
    elif where == "persistent meta":
        data["G"] = call("torch_utils.persistence", "_reconstruct_persistent_obj",
                         {"type": "class", "class_name": "Generator", "module_src": payload,
                          "state": {}})
    return data


WHERE = ["top-level value", "first entry", "persistent state", "init kwargs",
         "training_set_kwargs", "OrderedDict item", "tensor argument", "persistent meta"]


@pytest.mark.parametrize("kind", list(NAMED))
def test_each_payload_is_live(tmp_path, kind):
    """The control: the payload's bytes, given to pickle.loads, do write the marker."""
    marker = tmp_path / "ran"
    pickle.loads(dumps(touch(marker)[kind]))
    if kind == "subprocess.Popen":
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert marker.exists()


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("kind", list(NAMED))
def test_a_payload_anywhere_never_runs_and_is_named(made, tmp_path, where, kind):
    cfg, nets, data = made
    marker = tmp_path / "ran"
    path = write(tmp_path / "evil.pkl", _place(data, where, touch(marker)[kind], cfg, nets))
    refused(path, f"evil.pkl holds global {NAMED[kind]}, which is no part of an NVlabs network "
            f"file; {REFUSED}")
    time.sleep(0.05 if kind == "subprocess.Popen" else 0)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 5])
def test_payloads_in_other_protocols(made, tmp_path, protocol):
    cfg, nets, data = made
    marker = tmp_path / "ran"
    evil = _place(data, "first entry", touch(marker)["os.system"], cfg, nets)
    refused(write(tmp_path / "evil.pkl", evil, protocol), f"global {NAMED['os.system']}")
    assert not marker.exists()


def test_a_payload_is_refused_before_anything_is_built(made, tmp_path, monkeypatch):
    """The scan names the global before the unpickler makes a single object: not one
    persistent object, tensor or storage of the networks before it is built."""
    cfg, nets, data = made
    built: list[str] = []
    for key in (unpickle.PERSISTENT, ("torch._utils", "_rebuild_tensor_v2"),
                ("dnnlib.util", "EasyDict")):
        monkeypatch.setitem(unpickle.ALLOWED, key, lambda *a, key=key: built.append(key))
    marker = tmp_path / "ran"
    refused(write(tmp_path / "evil.pkl", _place(data, "top-level value",
                                                touch(marker)["os.system"], cfg, nets)))
    assert built == [] and not marker.exists()


# --- storages: the nested pickles inside a tensor's bytes -------------------------------------

def _with_storage(data: dict, storage: bytes) -> dict:
    return {**data, "augment_pipe": persistent("AugmentPipe", {
        "_buffers": OrderedDict(p=tensor_from(storage, (4,)))})}


def test_a_storage_made_here_is_read_as_torch_reads_it(made, tmp_path):
    values = torch.tensor([0.5, -1.0, 2.0, 3.0])
    snap = read_snapshot(write(tmp_path / "ok.pkl", {**made[2], "augment_pipe": persistent(
        "AugmentPipe", {"_buffers": OrderedDict(p=tensor_from(legacy_storage(values[:1]), (1,)))})}))
    assert snap.augment_p == 0.5


def test_a_payload_in_a_storage_s_nested_pickle_never_runs(made, tmp_path):
    marker = tmp_path / "ran"
    evil = b"\x80\x02cposix\nsystem\nX" + struct.pack("<I", len(f"touch {marker}")) \
        + f"touch {marker}".encode() + b"\x85R."
    storage = legacy_storage(torch.zeros(4), object_pickle=evil)
    refused(write(tmp_path / "evil.pkl", _with_storage(made[2], storage)),
            "evil.pkl holds a storage whose nested pickle names posix.system, which no torch "
            f"storage needs; {REFUSED}")
    assert not marker.exists()


@pytest.mark.parametrize("storage, message", [
    (lambda marker: dumps(touch(marker)["os.system"]), "a storage that is not in torch's storage "
                                                        "format"),
    (lambda marker: legacy_storage(torch.zeros(4), object_pickle=b"\x80\x02ctorch\nFloatStorage\n"
                                   b")R."), "pickle opcode REDUCE, which no NVlabs network file "
                                            "needs"),
    (lambda marker: legacy_storage(torch.zeros(4), numel=2**40), "a storage of 1099511627776 "
                                                                 "elements over 16 bytes"),
    (lambda marker: legacy_storage(torch.zeros(4), object_pickle=b"\x80\x02ctorch\nFloatStorage"
                                   b"\nctorch\nLongStorage\n\x86."), "name 2 storage types"),
    (lambda marker: _zip_storage(), "a storage that is not in torch's storage format"),
])
def test_storages_in_any_other_form_are_refused(made, tmp_path, storage, message):
    marker = tmp_path / "ran"
    refused(write(tmp_path / "s.pkl", _with_storage(made[2], storage(marker))), message)
    assert not marker.exists()


def _zip_storage() -> bytes:
    buffer = __import__("io").BytesIO()
    torch.save(torch.zeros(4).untyped_storage(), buffer)  # torch's zip format
    return buffer.getvalue()


# --- protocol tricks and find_class bypasses ------------------------------------------------

CMD = b"touch MARKER"


def _raw(tmp_path: Path, data: bytes, name: str = "trick.pkl") -> Path:
    path = tmp_path / name
    path.write_bytes(data.replace(b"MARKER", str(tmp_path / "ran").encode()))
    return path


def _su(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE


TRICKS = {
    "protocol 0 text pickle": (b"cos\nsystem\n(S'touch MARKER'\ntR.",
                               "is not a pickle of the kind NVlabs write (protocol 2 to 5)"),
    "protocol 1 pickle": (b"cos\nsystem\nq\x00(X\x0c\x00\x00\x00touch MARKERtR.",
                          "is not a pickle of the kind NVlabs write"),
    "text GLOBAL in protocol 4": (b"\x80\x04cposix\nsystem\n(S'touch MARKER'\ntR.",
                                  "holds global posix.system"),
    "a second PROTO": (b"\x80\x04\x80\x00cposix\nsystem\n(S'touch MARKER'\ntR.",
                       "holds global posix.system"),
    "INST": (b"\x80\x02(S'touch MARKER'\nios\nsystem\n.", "pickle opcode INST"),
    "INST of an allowed global": (b"\x80\x02(icollections\nOrderedDict\n.",
                                  "pickle opcode INST, which no NVlabs network file needs"),
    "OBJ": (b"\x80\x02(ccollections\nOrderedDict\no.", "pickle opcode OBJ"),
    "PERSID": (b"\x80\x02Pposix.system\n.", "pickle opcode PERSID"),
    "BINPERSID": (b"\x80\x02X\x03\x00\x00\x00abcQ.", "pickle opcode BINPERSID"),
    "EXT1": (b"\x80\x02\x82\x7f)R.", "pickle opcode EXT1"),
    "EXT2": (b"\x80\x02\x83\x7f\x00)R.", "pickle opcode EXT2"),
    "EXT4": (b"\x80\x02\x84\x7f\x00\x00\x00)R.", "pickle opcode EXT4"),
    "NEXT_BUFFER": (b"\x80\x05\x97.", "pickle opcode NEXT_BUFFER"),
    "READONLY_BUFFER": (b"\x80\x05C\x01a\x98.", "pickle opcode READONLY_BUFFER"),
    "NEWOBJ_EX": (b"\x80\x04" + _su("dnnlib.util") + _su("EasyDict") + b"\x93)}\x92.",
                  "pickle opcode NEWOBJ_EX"),
    "STACK_GLOBAL after DUP": (b"\x80\x04" + _su("posix") + _su("system") + b"2\x93.",
                               "a global named by values made while unpickling"),
    "STACK_GLOBAL from a memo set after POP": (
        b"\x80\x04" + _su("posix") + _su("x") + b"0\x940h\x00" + _su("system") + b"\x93.",
        "a global named by values made while unpickling"),
    "STACK_GLOBAL from the memo": (b"\x80\x04" + _su("posix") + b"\x94" + _su("system")
                                   + b"\x94h\x00h\x01\x93.", "holds global posix.system"),
    "an attribute path": (b"\x80\x04" + _su("torch._utils") + _su("_rebuild_tensor_v2.__globals__")
                          + b"\x93.", "holds global torch._utils._rebuild_tensor_v2.__globals__"),
    "builtins.getattr": (b"\x80\x04" + _su("builtins") + _su("getattr") + b"\x93.",
                         "holds global builtins.getattr"),
    "copyreg._reconstructor": (b"\x80\x02ccopyreg\n_reconstructor\n.",
                               "holds global copyreg._reconstructor"),
    "a name with a newline": (b"\x80\x04" + _su("posix\nsystem") + _su("x") + b"\x93.",
                              "holds global 'posix\\nsystem.x'"),
    "a name with a terminal escape": (b"\x80\x04" + _su("\x1b[2Jos") + _su("system") + b"\x93.",
                                      "holds global '\\x1b[2Jos.system'"),
    "REDUCE of a dict": (b"\x80\x04})R.", "a call of dict, which the reader did not make"),
    "NEWOBJ of an allowed function": (b"\x80\x04" + _su("collections") + _su("OrderedDict")
                                      + b"\x93)\x81.", "an object made by NEWOBJ that is not "
                                                       "a dnnlib EasyDict"),
    "OrderedDict with arguments": (b"\x80\x04" + _su("collections") + _su("OrderedDict")
                                   + b"\x93]\x85R.", "an OrderedDict made from arguments"),
    "BUILD of a persistent object": (
        b"\x80\x04" + _su("torch_utils.persistence") + _su("_reconstruct_persistent_obj") + b"\x93}("
        + _su("type") + _su("class") + _su("class_name") + _su("Generator") + _su("state")
        + b"}u\x85R}" + _su("children") + b"Nsb.", "a BUILD of Persistent"),
    "BUILD of a numpy dtype, big-endian": (
        b"\x80\x04" + _su("numpy") + _su("dtype") + b"\x93" + _su("f8") + b"\x89\x88\x87R(K\x03"
        + _su(">") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb.",
        "a BUILD of Float64DType, which only a numpy dtype of this machine's byte order may have"),
    "a numpy object dtype": (b"\x80\x04" + _su("numpy") + _su("dtype") + b"\x93" + _su("O8")
                             + b"\x89\x88\x87R.", "numpy dtype 'O8'"),
    "a numpy record dtype": (b"\x80\x04" + _su("numpy") + _su("dtype") + b"\x93" + _su("f8,i4")
                             + b"\x89\x88\x87R.", "numpy dtype 'f8,i4'"),
    "SETITEM into a list": (b"\x80\x04]K\x00K\x01s.", "SETITEM into a list"),
    "APPENDS into a dict": (b"\x80\x04}(K\x01e.", "APPENDS into a dict"),
}


@pytest.mark.parametrize("trick", list(TRICKS))
def test_protocol_tricks_and_find_class_bypasses_are_refused(tmp_path, trick):
    data, message = TRICKS[trick]
    refused(_raw(tmp_path, data), "trick.pkl", message)
    assert not (tmp_path / "ran").exists()


def test_an_extension_registered_in_this_process_is_refused(tmp_path):
    """EXT1 names a global by copyreg's registry: with os.system registered, pickle writes it
    that way; the reader refuses the opcode instead of looking it up."""
    copyreg.add_extension("posix", "system", 0x7E)
    try:
        evil = pickle.dumps(os.system, protocol=2)
        assert b"\x82\x7e" in evil  # EXT1 0x7e
        path = tmp_path / "ext.pkl"
        path.write_bytes(evil)
        refused(path, "pickle opcode EXT1")
    finally:
        copyreg.remove_extension("posix", "system", 0x7E)


def test_tensors_must_lie_inside_their_storage(made, tmp_path):
    storage = call("torch.storage", "_load_from_bytes", legacy_storage(torch.zeros(4)))
    for size, stride, message in (((10**9, 10**9), (0, 0), "outside its storage of 4 elements"),
                                  ((8,), (1,), "outside its storage"),
                                  ((2,), (-1,), "a tensor of malformed shape")):
        tensor = call("torch._utils", "_rebuild_tensor_v2", storage, 0, size, stride, False,
                      OrderedDict())
        data = {**made[2], "augment_pipe": persistent("AugmentPipe", {"_buffers": {"p": tensor}})}
        refused(write(tmp_path / "t.pkl", data), message)
    hooks = OrderedDict(h=1)
    tensor = call("torch._utils", "_rebuild_tensor_v2", storage, 0, (4,), (1,), False, hooks)
    data = {**made[2], "augment_pipe": persistent("AugmentPipe", {"_buffers": {"p": tensor}})}
    refused(write(tmp_path / "h.pkl", data), "a tensor with backward hooks or metadata")


def test_deep_structures_do_not_exhaust_the_stack(tmp_path):
    """100,000 nested lists unpickle without recursion (the reader is iterative), then are
    refused as no snapshot."""
    path = tmp_path / "deep.pkl"
    path.write_bytes(b"\x80\x04" + b"]" * 100_000 + b"a" * 99_999 + b".")
    refused(path, "is a pickle but no NVlabs network snapshot")


def test_the_reader_never_imports_the_modules_a_file_names(made, tmp_path):
    """Not even an allowed one: torch_utils and dnnlib do not exist here, and reading a
    snapshot that names them leaves them unimported."""
    import sys

    read(write(tmp_path / "net.pkl", made[2]))
    assert not {"torch_utils", "dnnlib", "torch_utils.persistence"} & set(sys.modules)


# --- NVlabs' own fixtures --------------------------------------------------------------------

FIXTURES = {"stylegan2-tiny-32": dict(resolution=32, z_dim=64, w_dim=64, mapping_layers=2,
                                      channel_base=2048, g_width=64, d_width=64, reduced_res=0,
                                      conv_clamp=0.0, classes=0),
            "stylegan2-tiny-cond-64": dict(resolution=64, z_dim=64, w_dim=64, mapping_layers=8,
                                           channel_base=4096, g_width=64, d_width=64,
                                           reduced_res=2, conv_clamp=256.0, classes=10)}


@NO_SHARED
@pytest.mark.parametrize("name", list(FIXTURES))
def test_the_fixtures_settings_are_their_readme_s(name):
    path = SHARED / f"{name}.pkl"
    started = time.perf_counter()
    snap = read_snapshot(path)
    seconds = time.perf_counter() - started
    expected = dict(FIXTURES[name])
    assert snap.classes == expected.pop("classes")
    assert {k: snap.settings[k] for k in expected} == expected
    assert (snap.augment_p, snap.settings["mbstd_group"], snap.held) == (0.25, 4,
                                                                         ("G", "D", "G_ema"))
    assert snap.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert seconds < 30  # (about 0.5 s on an idle core)


@NO_SHARED
@pytest.mark.parametrize("name", list(FIXTURES))
def test_the_imported_fixtures_give_their_outputs(name):
    """Through the import ganctl's commands use (a temporary checkpoint, verified, loaded as any
    checkpoint's): the same w (psi 1 and 0.5), images within 1e-4 with constant noise, the uint8
    images of their generate.py within one level from their seeds, and D's logits."""
    from safetensors.torch import load_file

    from ganctl import checkpoint
    from ganctl.models import get_arch
    from ganctl.models.generator import truncated_ws
    from ganctl.sample import load_generator, nvlabs_latents, to_uint8
    from ganctl.stored import stored_config

    exp = load_file(SHARED / f"{name}.expected.safetensors")
    header = open_network(SHARED / f"{name}.pkl")
    tensors = checkpoint.load_tensors(header, ("D.",))
    loaded = load_generator(header, torch.device("cpu"), nvlabs_seeds=True)
    G = loaded.G
    z = nvlabs_latents(range(4), G.z_dim)
    assert torch.equal(z, exp["z"].float())
    c = exp["c"].argmax(1) if exp["c"].numel() else None
    with torch.no_grad():
        w = G.mapping(z, c)
        for psi, key in ((1.0, "psi1"), (0.5, "psi05")):
            ws = truncated_ws(G, w, psi)
            assert (ws - exp[f"ws_{key}"]).abs().max() <= 1e-5
            img = G.synthesis(ws)
            assert (img - exp[f"img_{key}"]).abs().max() <= 1e-4
            u8 = to_uint8(img).permute(0, 2, 3, 1)
            assert (u8.int() - exp[f"u8_{key}"].int()).abs().max() <= 1
        D = get_arch("stylegan2").build_discriminator(stored_config(header)).eval()
        checkpoint.load_module(D, tensors, "D")
        logits = D(exp["img_psi1"], c)
    assert (logits - exp["d_logits"][:, 0]).abs().max() <= 1e-4


@NO_SHARED
@pytest.mark.parametrize("keep", [0.25, 0.999])
def test_a_truncated_fixture_fails_in_one_line(tmp_path, keep):
    data = (SHARED / "stylegan2-tiny-32.pkl").read_bytes()
    path = tmp_path / "stylegan2-tiny-32.pkl"
    path.write_bytes(data[:int(len(data) * keep)])
    refused(path, "stylegan2-tiny-32.pkl holds a pickle that is cut short or malformed",
            "truncated or damaged")


def test_nvlabs_latents_are_numpy_s_random_state():
    from ganctl.errors import ConfigError
    from ganctl.sample import latents_from_seeds, nvlabs_latents

    z = nvlabs_latents([0, 7, 2**32 - 1], 5)
    expected = np.stack([np.random.RandomState(s).randn(1, 5)[0] for s in (0, 7, 2**32 - 1)])
    assert z.dtype == torch.float32 and torch.equal(z, torch.from_numpy(expected).float())
    assert torch.equal(latents_from_seeds([7], 5, nvlabs=True), z[1:2])
    with pytest.raises(ConfigError, match="seed 4294967296 is past NVlabs' seeds"):
        nvlabs_latents([2**32], 5)
    with pytest.raises(ConfigError, match="truncation with --nvlabs-seeds needs a generator with "
                                          "a mapping network"):
        latents_from_seeds([1], 5, 0.5, nvlabs=True)


def test_augment_pipe_p_out_of_range_is_not_taken(made, tmp_path):
    data = {**made[2], "augment_pipe": augment_pipe(p=7.0)}
    assert read_snapshot(write(tmp_path / "p.pkl", data)).augment_p is None


# --- found by a hostile review: crashes and memory bombs in small files ----------------------------

@pytest.mark.parametrize("body, opcode", [
    (b"}" + b")" + b"\x85" * 300_000 + b"K\x01s", "SETITEM"),  # a dict keyed by a deep tuple
    (b"\x8f(" + b")" + b"\x85" * 300_000 + b"\x90", "ADDITEMS"),  # a set holding one
    (b"(" + b")" + b"\x85" * 300_000 + b"K\x01d", "DICT"),
    (b"(" + b")" + b"\x85" * 300_000 + b"\x91", "FROZENSET"),
])
def test_a_deep_key_is_refused_before_python_hashes_it(tmp_path, body, opcode):
    """Python hashes a nested tuple recursively in C: 300,000 levels would overflow the C stack
    (a segfault, no error), so a dict key or set item must be a plain value."""
    path = tmp_path / "deep.pkl"
    path.write_bytes(b"\x80\x04" + body + b".")
    with pytest.raises(CheckpointError, match=f"a tuple as a dict key or set item \\({opcode}\\)"):
        read(path)


def test_one_storage_named_many_times_is_not_copied_many_times(tmp_path):
    """A file naming one storage 300 times would take 300 copies of it (a few MB of file, GBs of copies)."""
    cfg = config()
    nets = networks(cfg)
    storage = call("torch.storage", "_load_from_bytes", legacy_storage(torch.zeros(60_000)))
    shared = {f"w{i}": call("torch._utils", "_rebuild_tensor_v2", storage, 0, (60_000,), (1,),
                            False, OrderedDict()) for i in range(300)}
    state = module_state(nets["G_ema"], g_kwargs(cfg))
    state["_parameters"] = OrderedDict({**state["_parameters"], **shared})
    path = write(tmp_path / "bomb.pkl", snapshot(cfg, nets, G=None,
                                                 G_ema=persistent("Generator", state)))
    assert path.stat().st_size < 10 * 2**20
    with pytest.raises(CheckpointError, match="tensors claim more bytes than the file holds"):
        read_snapshot(path)


@pytest.mark.parametrize("change, says", [
    ({"c_dim": 2**31 - 1}, "G's c_dim is 2147483647, more classes than ganctl holds (100000)"),
    ({7: 8}, "the file is damaged or not NVlabs'"),  # a key that is no name
    ({"c_dim": torch.zeros(2)}, "the file is damaged or not NVlabs'"),
])
def test_absurd_init_arguments_are_one_line_refusals(tmp_path, change, says):
    cfg = config()
    nets = networks(cfg)
    data = snapshot(cfg, nets, G=None, G_ema=as_persistent(nets["G_ema"], {**g_kwargs(cfg), **change}))
    with pytest.raises(CheckpointError, match=re.escape(says)):
        read_snapshot(write(tmp_path / "odd.pkl", data), weights=False)
