"""ganctl: train and sample GANs from the command line or from Python.

    import ganctl
    run = ganctl.train(steps=300, out="runs/quick")   # the built-in shapes dataset
    G = ganctl.load("runs/quick")                     # its newest checkpoint's G_ema
    G.grid(n=16).save("grid.png")

train, resume, load, evaluate, Generator and Run are ganctl.api's (see its docstrings), which
also has a function for each other command (sample_to_file, export_images, interpolate,
style_mix, export, import_network, inspect, runs, plot, describe_data, caches, remove_caches):
`ganctl.api.style_mix(...)` works after a plain `import ganctl`. They are
imported on first use: `import ganctl` stays cheap, as the command line imports it for
__version__ before it knows whether a command needs torch.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing's own constant, without importing typing (the console script's
# stop signals are held back only once this package has loaded: it stays small)

__version__ = "0.1.0"
__all__ = ["Generator", "Run", "__version__", "evaluate", "load", "resume", "train"]
_API = frozenset(__all__) - {"__version__"}

if TYPE_CHECKING:  # what type checkers and editors see; at run time, __getattr__ below
    from ganctl.api import Generator, Run, evaluate, load, resume, train


def __getattr__(name: str) -> object:
    """ganctl.train and the rest, from ganctl.api (imported with torch on the first access)."""
    if name in _API or name == "api":
        import importlib

        api = importlib.import_module("ganctl.api")
        return api if name == "api" else getattr(api, name)
    raise AttributeError(f"module 'ganctl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
