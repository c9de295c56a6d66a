"""`ganctl inspect`, `ganctl eval`, `ganctl runs` and `ganctl plot`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ganctl import metrics as registry
from ganctl.cli.core import (
    _call,
    _console,
    _emit,
    _given,
    _json_text,
    _outcome_decided,
    _say,
    _shown,
    app,
)
from ganctl.cli.options import (
    Debug,
    Json,
    _setting_option,
)

# --- inspect --------------------------------------------------------------------------------------------

def _date(value: Any) -> str:
    """A time (ISO 8601 text or seconds since the epoch) as a local date and time."""
    from ganctl.text import date_time

    return date_time(value)


@app.command()
def inspect(
    target: Annotated[str | None, typer.Argument(
        metavar="CKPT|RUN_DIR", help="Checkpoint or run directory (default: the newest "
        "checkpoint under ./runs).", show_default=False)] = None,
    verify: Annotated[bool, typer.Option(
        "--verify/--no-verify", help="Check the data against its checksum (--no-verify reads the "
        "header alone).")] = True,
    json_mode: Json = False,
    debug: Debug = False,
) -> None:
    """Show a checkpoint's step, config, parameter counts and last losses (no tensors loaded).

    Example: ganctl inspect runs/0001-shapes-dcgan --json
    """
    from ganctl import api
    from ganctl.text import printable

    info = _call(debug, lambda: api.inspect(target, verify=verify, notes=_say))
    path = info["path"]
    _outcome_decided()
    if json_mode:
        typer.echo(_json_text(info))
        return
    console = Console(highlight=False)
    console.print(printable(f"checkpoint {path}"), markup=False, soft_wrap=True)
    table = Table(show_header=False)  # cells are Text: a config value is never read as markup
    table.add_column("key", style="bold")
    table.add_column("value")
    rows = [("version", f"{info['version']} (schema {info['schema']})"),
            ("step", info["step"]), ("created", _date(info["created"])),
            ("trained on", f"{info['device'] or '?'}" + (f", {info['processes']} processes"
                                                        if info["processes"] > 1 else "")),
            ("file size", f"{info['file_size'] / 1e6:.2f} MB"),
            ("params", f"G {info['params']['G']:,}  D {info['params']['D']:,}"),
            *((k, _shown(k, v)) for k, v in info["config"].items()),
            *((f"last {k}", v) for k, v in (info["metrics"] or {}).items()
              if k not in ("step", "time"))]
    if isinstance((info["metrics"] or {}).get("time"), (int, float)):
        rows.append(("last logged", _date(info["metrics"]["time"])))
    if (scored := info["eval"]) and isinstance(scored.get("fid"), (int, float)):
        rows.append(("FID", f"{scored['fid']:.3f} ({scored.get('num_fake')} fakes vs "
                            f"{scored.get('num_real')} reals)"))
    if (best := info["best"]) and best["fid"] is not None:
        where = f" ({Path(best['checkpoint']).name})" if best["checkpoint"] else ""
        rows.append(("best FID", f"{best['fid']:.3f} at step {best['step']}{where}"))
    for key, value in rows:
        if isinstance(value, (list, tuple)):  # class names
            value = ", ".join(map(str, value)) or "none"
        table.add_row(Text(printable(str(key))), Text(printable(str(value))))
    console.print(table)


# --- eval -------------------------------------------------------------------------------------------------

@app.command("eval")
def eval_(
    target: Annotated[str | None, typer.Argument(
        metavar="CKPT|RUN_DIR", help="Checkpoint or run directory, or latest / best (default: "
        "the newest checkpoint under ./runs).", show_default=False)] = None,
    metrics: Annotated[str, typer.Option(help=f"{registry.names_help()}, comma-separated.")] = "fid,kid",
    num: Annotated[int, typer.Option("--num", min=2, max=10_000_000, help="Fakes to score (G_ema, "
                                     "latent seeds 0..N-1); 50000 is NVlabs' fid50k_full.")] = 50000,
    num_real: Annotated[int | None, typer.Option(
        min=2, max=100_000_000, help="Real images, in a fixed random order (default: all of them).")] = None,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="Score against this dataset instead of the run's own (at the run's "
        "resolution, channels and crop).")] = None,
    split: Annotated[str | None, _setting_option("split", False, False, runs_own=True)] = None,
    data_dir: Annotated[str | None, _setting_option("data_dir", False, False, runs_own=True)] = None,
    max_file_mb: Annotated[int | None, _setting_option("max_file_mb", False, False,
                                                       runs_own=True)] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:K | mps.")] = "auto",
    inception: Annotated[str | None, _setting_option("inception", False, False)] = None,
    download: Annotated[bool, typer.Option(
        "--download/--no-download", help="Download the Inception file or a named dataset that "
        "is missing.")] = True,
    json_mode: Json = False,
    debug: Debug = False,
) -> None:
    """Score a checkpoint's G_ema with FID, KID and precision/recall against its training data.

    The TF Inception-v3 features GAN papers use, uint8 images resized to 299x299 (bilinear);
    real statistics are cached. The result is also appended to the run's metrics.jsonl.

    Example: ganctl eval runs/0001-shapes-dcgan --num 10000 --metrics fid,kid --json
    """
    from ganctl.api.scores import run_evaluation
    from ganctl.metrics import parse_metrics
    from ganctl.output.progress import RunLog
    from ganctl.scoring import EVAL_OPTIONS

    names = _call(debug, parse_metrics, metrics)
    data = _given(dataset=dataset, split=split, data_dir=data_dir, max_file_mb=max_file_mb)
    doc = _call(debug, lambda: run_evaluation(target, names, num, num_real, data, device, inception,
                                              download, RunLog(_console(json_mode)), EVAL_OPTIONS,
                                              _say))
    _outcome_decided()
    if json_mode:
        typer.echo(_json_text(doc))
        return
    _eval_table(doc)


def _eval_table(doc: dict[str, Any]) -> None:
    from ganctl.text import printable

    net = doc["feature_net"]
    console = Console(highlight=False)
    console.print(printable(f"{doc['checkpoint']} (step {doc['step']}) against {doc['dataset']}"
                            + (f" ({doc['split']})" if doc["split"] else "") + f"; Inception "
                            f"{net['sha256'][:12]} ({net['form']}), protocol "
                            f"v{doc['protocol']['version']}"), markup=False, soft_wrap=True)
    table = Table()
    for column in ("metric", "value", "real", "fake", "seconds"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    rows = registry.format_rows(doc["metrics"])
    for name, value in rows:
        table.add_row(Text(name), value, str(doc["num_real"]), str(doc["num_fake"]),
                      f"{doc['seconds']:.1f}")
    console.print(table)


# --- runs and plot -------------------------------------------------------------------------------

@app.command()
def runs(
    root: Annotated[Path | None, typer.Argument(
        metavar="DIR", help="Where the runs are (or one run).", show_default="./runs, or env "
        "GANCTL_RUNS")] = None,
    json_mode: Json = False,
    debug: Debug = False,
) -> None:
    """List the runs: status (running, stopped, complete, diverged, new, broken), step, last
    losses, best FID, last update and size.

    Example: ganctl runs --json
    """
    from ganctl import api
    from ganctl.rundir import runs_root
    from ganctl.runs import format_runs

    found = _call(debug, api.runs, root)
    _emit(json_mode, {"root": str(root or runs_root()), "runs": found}, format_runs(found, root))


@app.command()
def plot(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="A run directory.")],
    out: Annotated[Path | None, typer.Argument(
        metavar="OUT.png", help="Where to write the PNG.", show_default="RUN/curves.png")] = None,
    json_mode: Json = False,
    debug: Debug = False,
) -> None:
    """Draw a run's losses, D outputs, img/s and evaluation scores against step as a PNG
    (training refreshes RUN/curves.png at each sample step).

    Example: ganctl plot runs/0001-shapes-dcgan losses.png
    """
    from ganctl import api

    r = _call(debug, api.plot, run, out)
    _emit(json_mode, r, f"wrote {r['out']}")
