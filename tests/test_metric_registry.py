"""A metric is one file and one registry line: registered from outside (one line, as a metric's
file would add to ganctl.metrics.METRICS), a metric of the features and a metric of the generator
itself each reach `ganctl eval --json`, the eval table's rows, metrics.jsonl, TensorBoard/W&B's
scalars and `ganctl plot`'s panels, with nothing else changed."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from helpers import CKPT, ROOT, TINY, assert_one_line_error, invoke

import ganctl
from ganctl import metrics, plot, rundir
from ganctl.metrics import Column, Metric
from ganctl.output.sinks import eval_scalars
from ganctl.sample import labels_for_seeds, latents_from_seeds


def counts(real, fake, device):
    """A toy metric of the features: how many images each side's statistics are of."""
    return {"toy_real": real.count, "toy_fake": fake.count}


COUNTS = Metric(name="toy", title="Toy", protocol="the images counted",
                columns=(Column("toy_fake", "toy", "{:d}", row="toy ({toy_real} reals)", panel="toy panel"),),
                least_images=5, features=counts)


def pixel_mean(G, config, device, count):
    """A toy metric of the generator: the mean pixel of G's images of seeds 0..count-1."""
    seeds = range(count)
    with torch.no_grad():
        x = G(latents_from_seeds(seeds, config.z_dim).to(device), labels_for_seeds(seeds, config))
    return {"pixel_mean": x.double().mean().item(), "pixel_images": count}


PIXELS = Metric(name="pixels", title="mean pixel", protocol="G_ema's mean pixel, seeds 0..N-1",
                columns=(Column("pixel_mean", "pixel mean", "{:.4f}", panel="pixels"),),
                lower_is_better=False, generator=pixel_mean)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(metrics.METRICS, "toy", COUNTS)  # the one line a new metric adds


@pytest.fixture
def pixels(monkeypatch):
    """PIXELS registered, its calls recorded: (G.training, device, count) each."""
    calls = []

    def recorded(G, config, device, count):
        calls.append((G.training, device, count))
        return pixel_mean(G, config, device, count)

    monkeypatch.setitem(metrics.METRICS, "pixels", dataclasses.replace(PIXELS, generator=recorded))
    return calls


def test_the_built_in_registry_is_light_and_what_help_and_the_eval_table_show():
    """`ganctl --help` reads the registry: it imports neither torch nor numpy."""
    code = ("import sys, ganctl.metrics as m; print(m.names_help()); "
            "assert not {'torch', 'numpy'} & set(sys.modules), 'torch or numpy imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "fid, kid, pr\n", done.stderr
    scores = {"fid": 12.34567, "kid": 0.0123, "kid_std": 0.00056, "kid_subsets": 100, "kid_subset_size": 30,
              "precision": 0.5, "recall": 0.25, "pr_k": 3, "pr_real": 40, "pr_fake": 30}
    assert metrics.format_rows(scores) == [
        ("FID", "12.346"), ("KID (100 x 30)", "0.01230 ± 0.00056"), ("precision (k=3)", "0.500"),
        ("recall (k=3)", "0.250")]
    assert metrics.format_rows({"fid": "inf"}) == [("FID", "inf")]  # a non-finite score, as JSON has it
    assert metrics.summary(scores) == "FID 12.35  KID 0.0123  precision 0.5  recall 0.25"
    assert metrics.panels() == {"FID": ["fid"], "KID": ["kid"], "precision / recall": ["precision", "recall"]}
    assert eval_scalars({"step": 4, "event": "eval", **scores, "recall": "nan"}) == {
        "eval/fid": 12.34567, "eval/kid": 0.0123, "eval/precision": 0.5}
    assert (metrics.better(3.0, 4.0), metrics.better(4.0, 3.0)) == (True, False)  # FID: lower
    with pytest.raises(ValueError, match="give it features or generator, one of them"):
        Metric(name="both", title="both", columns=(), protocol="", features=counts, generator=pixel_mean)


def test_a_feature_metric_registered_in_one_line_is_scored_shown_logged_and_plotted(
        trained_run, workdir, fake_net, toy):
    assert metrics.names_help() == "fid, kid, pr, toy"
    result = invoke("eval", "--num", "30", "--num-real", "40", "--metrics", "toy,fid", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    scores = doc["metrics"]
    assert (scores["toy_real"], scores["toy_fake"]) == (40, 30)
    assert set(scores) == {"toy_real", "toy_fake", "fid"} and scores["fid"] > 0
    assert doc["protocol"]["toy"] == "the images counted"
    assert list(doc["protocol"])[-2:] == ["toy", "real_subset"]  # the metrics' lines, then the reals'
    assert metrics.format_rows(scores) == [("FID", f"{scores['fid']:.3f}"), ("toy (40 reals)", "30")]

    [record] = [r for r in rundir.read_metrics(trained_run) if r.get("event") == "eval"]
    assert (record["toy_real"], record["toy_fake"], record["fid"]) == (40, 30, scores["fid"])
    assert eval_scalars(record) == {"eval/fid": scores["fid"], "eval/toy_fake": 30.0}
    series = plot.Series()
    series.add(rundir.read_metrics(trained_run))
    panels = {p.title: p for p in series.panels()}
    assert list(panels)[-2:] == ["FID", "toy panel"]
    assert [a.tolist() for a in panels["toy panel"].curves["toy_fake"].arrays()] == [[4], [30.0]]

    # its fewest images, its name in the choices
    assert_one_line_error(invoke("eval", "--num", "4", "--metrics", "toy"), 1,
                          "Toy needs at least 5 fake images, got 4; raise --num to 5 or more")
    assert_one_line_error(invoke("eval", "--metrics", "toyy"), 1, "unknown metric 'toyy'", "toy")


def test_a_generator_metric_is_computed_with_the_trained_g_ema_while_training(workdir, fake_net, pixels):
    result = invoke("train", *TINY, "--eval-every", "2", "--eval-num", "6", "--eval-num-real", "8",
                    "--eval-metrics", "fid,pixels", "--keep", "2", "--out", "r")
    assert result.exit_code == 0, result.output
    assert [call[0] for call in pixels] == [False, False]  # G_ema, in eval mode, at steps 2 and 4
    assert [call[1:] for call in pixels] == [(torch.device("cpu"), 6)] * 2
    evals = [r for r in rundir.read_metrics(workdir / "r") if r.get("event") == "eval"]
    assert [(r["step"], r["pixel_images"], r["num_fake"]) for r in evals] == [(2, 6, 6), (4, 6, 6)]
    for record in evals:  # the very G_ema each checkpoint holds
        G = ganctl.load(workdir / "r" / "checkpoints" / rundir.checkpoint_name(record["step"]), "cpu")
        assert record["pixel_mean"] == pixel_mean(G.G, G.config, torch.device("cpu"), 6)["pixel_mean"]
        assert "fid" in record
    assert evals[0]["pixel_mean"] != evals[1]["pixel_mean"]  # training moved G_ema
    assert f"pixel mean {evals[1]['pixel_mean']:.4g}" in result.stdout  # the log line's summary
    series = plot.Series()
    series.add(rundir.read_metrics(workdir / "r"))
    curve = {p.title: p for p in series.panels()}["pixels"].curves["pixel_mean"]
    assert [a.tolist() for a in curve.arrays()] == [[2, 4], [r["pixel_mean"] for r in evals]]


def test_a_generator_metric_alone_needs_no_features_of_the_fakes(trained_run, workdir, fake_net, pixels,
                                                                  monkeypatch):
    from ganctl import scoring

    extracted = []
    real_accumulate = scoring._accumulate
    monkeypatch.setattr(scoring, "_accumulate", lambda net, batches, total, what, progress: (
        extracted.append(what) or real_accumulate(net, batches, total, what, progress)))
    result = invoke("eval", "--num", "5", "--num-real", "8", "--metrics", "pixels", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    G = ganctl.load(CKPT, "cpu")
    assert doc["metrics"] == {"pixel_mean": pixel_mean(G.G, G.config, torch.device("cpu"), 5)["pixel_mean"],
                              "pixel_images": 5}
    assert doc["num_fake"] == 5 and [call[1:] for call in pixels] == [(torch.device("cpu"), 5)]
    assert extracted == ["features of 8 real images of shapes"]  # the fakes' features: not needed


def test_a_generator_metric_that_comes_out_non_finite_is_a_one_line_error(trained_run, workdir, fake_net,
                                                                          monkeypatch):
    broken = dataclasses.replace(PIXELS, generator=lambda G, *args: {"pixel_mean": float("nan")})
    monkeypatch.setitem(metrics.METRICS, "pixels", broken)
    assert_one_line_error(invoke("eval", "--num", "5", "--num-real", "8", "--metrics", "fid,pixels"), 1,
                          "mean pixel cannot be computed (its pixel_mean came out nan) for the G_ema of "
                          f"{CKPT}: a broken checkpoint")
    assert not [r for r in rundir.read_metrics(trained_run) if r.get("event") == "eval"]  # nothing logged
