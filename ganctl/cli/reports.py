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
        metavar="CKPT|RUN_DIR|PKL", help="Checkpoint or run directory, or an NVlabs network "
        ".pkl (read without building its weights; default: the newest checkpoint under ./runs).",
        show_default=False)] = None,
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
    if "format" in info:  # an NVlabs network file
        return _print_rows(console, f"{info['format']} {path}", _network_rows(info))
    console.print(printable(f"checkpoint {path}"), markup=False, soft_wrap=True)
    params = "  ".join(f"{k} {v:,}" for k, v in info["params"].items())
    rows = [("version", f"{info['version']} (schema {info['schema']})"),
            ("step", info["step"]), ("created", _date(info["created"])),
            *([("augment p", f"{info['augment_p']:.4g}")] if info["augment_p"] is not None else []),
            ("trained on", f"{info['device'] or '?'}" + (f", {info['processes']} processes"
                                                        if info["processes"] > 1 else "")),
            *_imported_rows(info["imported"]),
            ("file size", f"{info['file_size'] / 1e6:.2f} MB"),
            ("params", params),
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
    _print_rows(console, None, rows)


def _print_rows(console: Console, title: str | None, rows: list[tuple[str, Any]]) -> None:
    from ganctl.text import printable

    if title is not None:
        console.print(printable(title), markup=False, soft_wrap=True)
    table = Table(show_header=False)  # cells are Text: a config value is never read as markup
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in rows:
        if isinstance(value, (list, tuple)):  # class names
            value = ", ".join(map(str, value)) or "none"
        table.add_row(Text(printable(str(key))), Text(printable(str(value))))
    console.print(table)


def _imported_rows(source: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """An imported checkpoint's provenance: the NVlabs file and its sha256."""
    if source is None:
        return []
    return [("imported from", f"{source.get('source')} ({source.get('code')})"),
            ("sha256", source.get("sha256")), *(("note", n) for n in source.get("notes") or ())]


def _network_rows(info: dict[str, Any]) -> list[tuple[str, Any]]:
    """`ganctl inspect FILE.pkl`: what the NVlabs file holds (api.inspect's keys)."""
    classes = info["classes"]
    rows: list[tuple[str, Any]] = [
        ("written by", info["code"]), ("sha256", info["sha256"]),
        ("file size", f"{info['file_size'] / 1e6:.2f} MB"),
        ("networks", ", ".join(info["networks"]) + ("" if info["imported"] == ["G", "D", "G_ema"]
                                                    else f" (ganctl imports {', '.join(info['imported'])})")),
        ("params", "  ".join(f"{k} {v:,}" for k, v in info["params"].items())),
        ("resolution", f"{info['resolution']}x{info['resolution']}x{info['channels']}"),
        ("z, w", f"{info['z_dim']}, {info['w_dim']}"),
        ("classes", f"{classes} (named {info['class_names'][0]}..{info['class_names'][-1]})"
                    if classes else "none (unconditional)"),
        ("mapping layers", info["mapping_layers"]), ("channel base", info["channel_base"]),
        ("widths", f"G {info['g_width']}, D {info['d_width'] or '-'}"),
        ("fp16 blocks", info["reduced_res"]), ("conv clamp", info["conv_clamp"] or "none"),
        ("augment p", "none saved" if info["augment_p"] is None else f"{info['augment_p']:.4g}")]
    if info["d_arch"]:
        rows.append(("D", f"{info['d_arch']}, minibatch-stddev group {info['mbstd_group']}"))
    if (trained := info["dataset"].get("path")) is not None:
        rows.append(("trained on", trained))
    return rows + [("note", note) for note in info["notes"]]


# --- eval -------------------------------------------------------------------------------------------------

@app.command("eval")
def eval_(
    target: Annotated[str | None, typer.Argument(
        metavar="CKPT|RUN_DIR|PKL", help="Checkpoint or run directory, latest / best, or an "
        "NVlabs network .pkl (then --dataset is needed; default: the newest checkpoint under "
        "./runs).", show_default=False)] = None,
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
    """Draw a run's losses, D outputs, augmentation p, img/s and evaluation scores against step as a PNG
    (training refreshes RUN/curves.png at each sample step).

    Example: ganctl plot runs/0001-shapes-dcgan losses.png
    """
    from ganctl import api

    r = _call(debug, api.plot, run, out)
    _emit(json_mode, r, f"wrote {r['out']}")
