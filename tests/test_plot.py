"""A run's curves (ganctl/plot.py): a panel for each kind of number, what is left out, the scale
and titles, and the curves.png that training refreshes (the command: test_cli_plot.py)."""

from __future__ import annotations

import io
import json
import warnings

import pytest
from helpers import TINY, invoke
from PIL import Image

from ganctl import plot
from ganctl.errors import RunError
from ganctl.rundir import METRICS, read_metrics

# --- panels and figures ---------------------------------------------------------------------------

def test_plot_draws_a_panel_for_each_kind_of_number_the_run_holds(trained_run, tmp_path):
    records = read_metrics(trained_run)
    series = plot.Series()
    series.add(records)
    assert [p.title for p in series.panels()] == ["losses", "D outputs", "images/s"]
    losses = series.panels()[0].curves
    assert list(losses) == ["loss_D", "loss_G"]
    assert list(losses["loss_D"].steps) == [2, 4]
    assert list(losses["loss_D"].values) == [r["loss_D"] for r in records]

    assert sorted(series.logged) == ["D_fake", "D_real", "img_per_s", "loss_D", "loss_G"]
    with open(trained_run / METRICS, "a") as f:  # an evaluation, then one of an older checkpoint
        for step, fid in ((4, 12.5), (2, 30.0)):
            f.write(json.dumps({"step": step, "event": "eval", "fid": fid, "precision": 0.5,
                                "recall": "nan"}) + "\n")
        f.write(json.dumps({"step": 3, "event": "rollback", "loss": "loss_D", "to_step": 2}) + "\n")
    (tmp_path / "out").mkdir()
    out = plot.plot_run(trained_run, tmp_path / "out" / "curves.png")
    assert out == tmp_path / "out" / "curves.png"
    with Image.open(out) as png:
        assert png.size == (1200, 800)
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]  # no temp file left
    series = plot.Series()
    series.add(read_metrics(trained_run))
    panels = {p.title: p for p in series.panels()}
    assert list(panels) == ["losses", "D outputs", "images/s", "FID", "precision / recall"]
    assert [a.tolist() for a in panels["FID"].curves["fid"].arrays()] == [[2, 4], [30.0, 12.5]]
    assert list(panels["precision / recall"].curves) == ["precision"]  # a nan recall: no curve
    assert series.marks == {3}  # a dotted line where training rolled back


def test_plot_of_a_run_with_nothing_to_draw_says_so(workdir, trained_run, tmp_path):
    (trained_run / METRICS).write_text("")
    with pytest.raises(RunError, match=r"has no metrics to plot yet \(metrics.jsonl holds no "
                                       r"step records\); plot it again once"):
        plot.plot_run(trained_run, tmp_path / "c.png")
    with pytest.raises(RunError, match="is not a ganctl run directory"):
        plot.plot_run(tmp_path, tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


def curves_of(lines: list[str], run: str = "0003-cifar10-dcgan") -> plot.Series:
    series = plot.Series(run=run)
    series.add(json.loads(line) for line in lines)
    return series


ABSURD = ['{"step": 1, "loss_D": 0.5, "loss_G": 1e308}',
          '{"step": 2, "loss_D": -Infinity, "loss_G": 0.7}',
          '{"step": 3, "loss_D": NaN, "loss_G": 1' + "0" * 400 + '}',
          '{"step": -5, "loss_D": 9.0, "loss_G": 9.0}',
          '{"step": -1, "event": "rollback", "to_step": 0}',
          '{"step": 4, "loss_D": 0.6, "loss_G": 0.8}']


def test_plot_leaves_out_non_finite_values_and_negative_steps_and_holds_absurd_ones(
        trained_run, tmp_path, recwarn, capfd):
    series = curves_of(ABSURD)
    losses = series.panels()[0].curves
    assert [a.tolist() for a in losses["loss_D"].arrays()] == [[1, 4], [0.5, 0.6]]  # gaps
    assert [a.tolist() for a in losses["loss_G"].arrays()] == [[1, 2, 4], [plot.CLIP, 0.7, 0.8]]
    assert series.marks == set() and series.last == 4
    with warnings.catch_warnings():  # the axes themselves stay sane, nothing silenced
        warnings.simplefilter("error")
        plot.figure(series).savefig(io.BytesIO(), format="png")

    (trained_run / METRICS).write_text("\n".join(ABSURD) + "\n")
    with Image.open(plot.plot_run(trained_run, tmp_path / "c.png")) as png:
        assert png.size == (1200, 800)
    assert [str(w.message) for w in recwarn] == []  # nothing reaches the user
    assert capfd.readouterr().err == ""


def axes_by_title(fig) -> dict:
    return {ax.get_title(): ax for ax in fig.axes}


def test_plot_scale_is_logarithmic_when_a_loss_diverges():
    assert plot.y_scale([0.5, 0.7, 1.2, -0.3]) == ("linear", {})
    assert plot.y_scale([0.0, 0.0, 0.1]) == ("linear", {})  # zeros span nothing
    assert plot.y_scale([0.5, 0.7, 2e37]) == ("log", {})
    assert plot.y_scale([-0.5, 0.7, 2e37]) == ("symlog", {"linthresh": 0.7})
    series = curves_of([json.dumps({"step": s, "loss_D": -0.5 + s / 10, "loss_G": 0.7,
                                    "loss_GP": 2e37 * s, "D_real": 0.6, "D_fake": 0.4})
                        for s in (1, 2, 3)])
    panels = axes_by_title(plot.figure(series))
    assert panels["losses"].get_yscale() == "symlog"  # loss_D and loss_G stay readable
    assert panels["D outputs"].get_yscale() == "linear"


def test_plot_titles_the_run_and_its_last_step_ticks_whole_steps_and_names_rollbacks():
    one = curves_of(['{"step": 10, "loss_D": 0.5, "loss_G": 0.7, "img_per_s": 100.0}',
                     '{"step": 10, "event": "eval", "fid": 30.0, "kid": 0.01}'])
    fig = plot.figure(one)
    assert fig.get_suptitle() == "0003-cifar10-dcgan — step 10"
    assert [ax.get_title() for ax in fig.axes] == ["losses", "images/s", "FID", "KID"]
    for ax in fig.axes:  # one point: whole steps around it, never 9.45 .. 10.55
        low, high = ax.get_xlim()
        assert (low, high) == (9, 11)
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks == [9, 10, 11]

    rolled = curves_of([json.dumps({"step": s, "loss_D": 0.5, "loss_G": 0.7, "img_per_s": 9.0})
                        for s in range(1000, 12001, 1000)]
                       + ['{"step": 5000, "event": "rollback", "loss": "loss_D", "to_step": 4000}',
                          '{"step": 7000, "event": "diverged", "loss": "loss_D"}'])
    fig = plot.figure(rolled)
    assert fig.get_suptitle() == "0003-cifar10-dcgan — step 12,000"
    for ax in fig.axes:  # the two dotted lines named once, in each panel they cross
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels.count("rollback") == 1
        assert all(t == round(t) for t in ax.get_xticks())
    assert [t.get_text() for t in axes_by_title(fig)["images/s"].get_legend().get_texts()] == [
        "img_per_s", "rollback"]


# --- curves.png while training --------------------------------------------------------------------

@pytest.mark.parametrize("max_share", [1e9, 1e-9], ids=["cheap", "costly"])
def test_training_refreshes_curves_png_at_sample_steps(workdir, monkeypatch, max_share):
    """At each sample step, unless the last draw was too recent for its cost (MAX_SHARE of the
    time: a draw is cheap here, or dear); the last step is always drawn."""
    drawn = []
    real_draw = plot.draw

    def spy(series, out):
        drawn.append(max(series.logged["loss_D"].steps))
        return real_draw(series, out)

    monkeypatch.setattr(plot, "draw", spy)
    monkeypatch.setattr(plot, "MAX_SHARE", max_share)
    result = invoke("train", *TINY, "--curves", "--steps", "6", "--out", "r")
    assert result.exit_code == 0, result.output
    assert drawn == ([2, 4, 6] if max_share > 1 else [6])
    with Image.open(workdir / "r" / "curves.png") as png:
        assert png.size == (1200, 800)


def test_no_curves_draws_none_and_resume_may_switch_them_on(workdir, monkeypatch):
    drawn = []
    monkeypatch.setattr(plot, "draw", lambda series, out: drawn.append(series.last))
    result = invoke("train", *TINY, "--no-curves", "--out", "r")
    assert result.exit_code == 0, result.output
    assert drawn == [] and json.loads((workdir / "r" / "config.json").read_text())["curves"] is False
    result = invoke("resume", "r", "--steps", "6", "--curves")
    assert result.exit_code == 0, result.output
    assert drawn == [6]


def test_a_run_folder_whose_name_is_not_utf8_gets_its_curves_drawn(workdir):
    """Its name reaches matplotlib as surrogates, which it refused (a note 'cannot refresh
    curves.png: set_text(): incompatible function arguments' and no curves)."""
    import os

    out = os.fsdecode(b"r_\xff")
    result = invoke("train", *TINY, "--curves", "--out", out)
    assert result.exit_code == 0, result.output
    assert "cannot refresh" not in result.stdout and (workdir / out / "curves.png").is_file()
