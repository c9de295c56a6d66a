"""Scoring generators (ganctl/scoring.py) through `ganctl eval`, ganctl.evaluate and training
alike, bad inputs being one-line errors and never "unexpected": feature networks that fail, answer
the wrong thing or give NaN, a generator that makes NaN images, too few images for a metric, and
damaged cached real statistics, computed again."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch
from helpers import CKPT, TINY, assert_one_line_error, image_folder, invoke, rewrite, write_feature_net
from safetensors import safe_open
from safetensors.torch import save_file

import ganctl
from ganctl import scoring
from ganctl.errors import CheckpointError, ConfigError, FeatureNetError, GanctlError
from ganctl.metrics import inception
from ganctl.metrics.stats import KEEP, Accumulator, DamagedStats, FeatureStats, load_stats, save_stats

FEW = ["--num", "6", "--num-real", "8"]  # a few images: each eval here takes about a second


@pytest.fixture
def scored(trained_run, fake_net):
    """The tiny trained run, a stand-in feature network found through GANCTL_INCEPTION, no download."""
    return trained_run


def assert_clean_error(result, *fragments: str) -> str:
    """Exit 1 with exactly one line on stderr, `error: ...`, holding the fragments; no
    'unexpected'. Returns the line."""
    assert_one_line_error(result, 1, *fragments)
    line = result.stderr.strip()
    assert "unexpected" not in result.output, line
    return line


def script(module: torch.nn.Module, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        torch.jit.script(module).save(str(path))
    return path


# --- feature networks of the float299 form that go wrong after the probe (a batch of 1) -----------

class NanAlways(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full([x.shape[0], 2048], float("nan"))


class BoomAfterProbe(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            raise RuntimeError("boom")
        return torch.zeros(x.shape[0], 2048)


class WrongShapeAfterProbe(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 2048 if x.shape[0] == 1 else 10)


class IntegersAfterProbe(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 2048)
        return out if x.shape[0] == 1 else out.long()


class OnTheMetaDevice(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros([x.shape[0], 2048], device=torch.device("meta"))


@pytest.mark.parametrize("net, fragments, last", [
    (BoomAfterProbe, ["ganctl knows; use NVlabs'", "it fails on a batch of 8 images: "],
     "RuntimeError: boom"),
    (WrongShapeAfterProbe, ["ganctl knows; use NVlabs'"],
     "it returns features of shape (8, 10), not (8, 2048)"),
    (IntegersAfterProbe, ["ganctl knows; use NVlabs'"], "it returns int64 features, not floating point"),
    (OnTheMetaDevice, ["ganctl knows; use NVlabs'", "it fails on 1 image: "],
     "NotImplementedError: Cannot copy out of meta tensor; no data!"),
    (NanAlways, ["ganctl knows; use NVlabs'"], "it returns NaN or inf features for a black image"),
])
def test_a_feature_network_that_fails_when_run_is_one_line_with_its_error_last(scored, tmp_path, net,
                                                                               fragments, last):
    path = script(net(), tmp_path / "stranger.pt")
    result = invoke("eval", "--inception", path, *FEW, "--metrics", "fid")
    line = assert_clean_error(result, str(path), *fragments)
    assert line.endswith(last), line
    assert "Traceback" not in line and "interpreter" not in line and "HERE" not in line
    with pytest.raises(GanctlError) as e:  # the API: the same error, the same line
        ganctl.evaluate(CKPT, metrics="fid", num=6, num_real=8, inception=path, quiet=True)
    assert type(e.value) is FeatureNetError and f"error: {e.value}" == line


def test_a_torch_save_pickle_offered_as_inception_says_so_in_one_line(scored, tmp_path):
    path = tmp_path / "x.pt"
    torch.save(NanAlways().state_dict() | {"w": torch.zeros(3)}, path)
    line = assert_clean_error(invoke("eval", "--inception", path, *FEW), str(path),
                              "is not an Inception feature network ganctl knows; use NVlabs'",
                              "not a TorchScript file (a torch.save file: a pickle, which ganctl "
                              "never loads)")
    assert line.endswith("RuntimeError: PytorchStreamReader failed locating file constants.pkl: "
                         "file not found"), line
    with pytest.raises(FeatureNetError, match=re.escape(line.removeprefix("error: "))):
        ganctl.evaluate(CKPT, num=6, num_real=8, inception=path, quiet=True)


class NanForOddRows(torch.nn.Module):
    """Finite features for the probe, NaN for every second image of a batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.mean(dim=(1, 2, 3))[:, None].expand(-1, 2048) + torch.arange(2048.0)
        odd = (torch.arange(x.shape[0]) % 2 == 1)[:, None]
        return torch.where(odd, torch.full_like(f, float("nan")), f)


def test_nan_features_say_how_many_images_and_what_is_broken(scored, tmp_path):
    path = script(NanForOddRows(), tmp_path / "nan.pt")
    line = assert_clean_error(invoke("eval", "--inception", path, *FEW, "--metrics", "fid,kid,pr"),
                              f"the feature network {path} gave NaN or inf features for 4 of 8 images "
                              "while computing the features of 8 real images of shapes",
                              "the feature network file or the images are broken", inception.FILE_NAME)
    with pytest.raises(FeatureNetError) as e:
        ganctl.evaluate(CKPT, num=6, num_real=8, inception=path, quiet=True)
    assert f"error: {e.value}" == line


def test_a_generator_making_nan_images_names_the_checkpoint(scored, workdir):
    def poison(tensors, meta):  # finite weights (NaN ones are refused on loading) whose products overflow
        for name in tensors:
            if name.startswith("G_ema.") and tensors[name].is_floating_point():
                tensors[name] = torch.full_like(tensors[name], 3e38)

    broken = workdir / "broken.safetensors"
    rewrite(workdir / CKPT, broken, poison)
    assert_clean_error(invoke("eval", broken, *FEW, "--metrics", "fid"),
                       f"the G_ema of {broken} makes images with NaN or inf pixels for ",
                       " of 6 latent seeds: a broken checkpoint", "score or resume an earlier checkpoint")
    with pytest.raises(CheckpointError, match="makes images with NaN or inf pixels"):
        ganctl.evaluate(broken, num=6, num_real=8, quiet=True)


class ScaledPixels(torch.nn.Module):
    """Finite features, the first 2048 pixel values times `scale`."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :2048] * self.scale


def strict(text: str):
    """JSON as strict parsers read it: NaN and Infinity are not JSON."""
    def refuse(token):
        raise AssertionError(f"{token} in the JSON document")
    return json.loads(text, parse_constant=refuse)


def test_huge_but_finite_features_give_finite_scores_in_strict_json(scored, tmp_path, workdir):
    """Features of 2**83 (1e25) times plain ones: FID 2**166 times theirs, KID's cubic kernel near
    1e150 (its spread's squares overflow), precision/recall the same (float32 distances overflow)."""
    def scores(scale):
        path = script(ScaledPixels(scale), tmp_path / f"{scale}.pt")
        result = invoke("eval", "--inception", path, *FEW, "--metrics", "fid,kid,pr", "--json")
        assert result.exit_code == 0, result.output
        assert "Warning" not in result.stderr and "unexpected" not in result.output, result.stderr
        return strict(result.stdout)["metrics"]

    plain, huge = scores(1.0), scores(2.0**83)
    assert huge["fid"] == pytest.approx(plain["fid"] * 2.0**166, rel=1e-6)
    assert np.isfinite(huge["kid"]) and np.isfinite(huge["kid_std"])
    assert (huge["precision"], huge["recall"]) == (plain["precision"], plain["recall"])
    records = [strict(line) for line in (scored / "metrics.jsonl").read_text().splitlines()
               if '"eval"' in line]
    assert records[-1]["fid"] == huge["fid"]


def test_training_with_a_feature_network_giving_nan_fails_before_it_starts(workdir, tmp_path,
                                                                           monkeypatch):
    monkeypatch.setenv("GANCTL_INCEPTION", str(script(NanForOddRows(), tmp_path / "nan.pt")))
    result = invoke("train", *TINY, "--eval-every", "2", "--eval-num-real", "8", "--out", "r")
    assert_clean_error(result, "gave NaN or inf features for 4 of 8 images",
                       "the feature network file or the images are broken")
    assert not (workdir / "r").exists()


# --- too few images: refused before any feature is computed ---------------------------------------

@pytest.fixture
def no_features(monkeypatch):
    """Fails the test if any feature is computed."""
    monkeypatch.setattr(scoring, "_accumulate", lambda *args: pytest.fail("features were computed"))


@pytest.mark.parametrize("args, fragments", [
    (["--num", "3"], ["precision/recall (k = 3) needs at least 4 fake images, got 3; raise --num to "
                      "4 or more"]),
    (["--num-real", "3"], ["precision/recall (k = 3) needs at least 4 real images, got 3; raise "
                           "--num-real to 4 or more, or leave --num-real out for all of them"]),
])
def test_precision_recall_with_too_few_images_is_refused_first(scored, no_features, args, fragments):
    assert_clean_error(invoke("eval", "--metrics", "fid,pr", *FEW, *args), *fragments)


def test_the_api_refuses_too_few_images_for_precision_recall(scored, no_features):
    with pytest.raises(ConfigError, match=r"needs at least 4 fake images, got 3; raise num= to 4"):
        ganctl.evaluate(CKPT, metrics="pr", num=3, quiet=True)
    with pytest.raises(ConfigError, match=r"needs at least 4 real images, got 3; raise num_real= to "
                                          r"4 or more, or None for all of them"):
        ganctl.evaluate(CKPT, metrics=["kid", "pr"], num=8, num_real=3, quiet=True)


def test_a_dataset_with_too_few_images_for_precision_recall(scored, workdir, no_features):
    image_folder(workdir / "three", 3)
    assert_clean_error(invoke("eval", "--dataset", "three", "--metrics", "pr", "--num", "8"),
                       "precision/recall (k = 3) needs at least 4 real images; three has 3")


def test_training_with_too_few_images_for_precision_recall_fails_before_it_starts(workdir, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setenv("GANCTL_INCEPTION", str(write_feature_net(tmp_path / "fake.pt")))
    result = invoke("train", *TINY, "--eval-every", "2", "--eval-metrics", "pr", "--eval-num", "3",
                    "--out", "r")
    assert_clean_error(result, "needs at least 4 fake images, got 3; raise --eval-num to 4 or more")
    assert not (workdir / "r").exists()


# --- damaged cached statistics (metrics/stats.py's load_stats, and who computes them again) -------

def read(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def damaged(path, change) -> None:
    """Rewrite the statistics file with change(tensors, meta) applied."""
    tensors, meta = read(path)
    change(tensors, meta)
    save_file(tensors, str(path), metadata=meta)


def set_meta(**values):
    def change(tensors, meta):
        meta["ganctl.stats"] = json.dumps({**json.loads(meta["ganctl.stats"]), **values})
    return change


def set_stats(value):
    def change(tensors, meta):
        meta["ganctl.stats"] = value
    return change


def scale_cov(factor, identity=False):
    """Replace the covariance by factor times itself, or by factor times the identity."""
    def change(tensors, meta):
        cov = tensors["cov"]
        tensors["cov"] = (torch.eye(len(cov), dtype=cov.dtype) if identity else cov) * factor
    return change


def set_covariance(i, j, value):
    """Set cov[i, j] and cov[j, i]: a symmetric change."""
    def change(tensors, meta):
        tensors["cov"] = tensors["cov"].clone()
        tensors["cov"][i, j] = tensors["cov"][j, i] = value
    return change


def drop(name):
    def change(tensors, meta):
        del tensors[name]
    return change


def poke(name, value, index=0):
    """Set one entry (in row-major order) of a tensor."""
    def change(tensors, meta):
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[index] = value
    return change


DAMAGE = {  # how -> (change, why the message gives)
    "metadata a list": (set_stats("[1, 2]"), "its ganctl.stats metadata is a JSON list, not an object"),
    "metadata a number": (set_stats("7"), "metadata is a JSON int, not an object"),
    "metadata a string": (set_stats('"x"'), "metadata is a JSON str, not an object"),
    "metadata not JSON": (set_stats("{"), "its ganctl.stats metadata is not JSON"),
    "metadata nested deep": (set_stats("[" * 100_000 + "]" * 100_000),
                             "its ganctl.stats metadata is not JSON"),
    "no metadata": (lambda t, m: m.clear(), "no ganctl.stats metadata"),
    "no kept": (drop("kept"), "no kept tensor"),
    "kept of the wrong shape": (lambda t, m: t.update(kept=t["kept"][:3].contiguous()),
                                "its kept has shape (3, "),
    "kept of integers": (lambda t, m: t.update(kept=t["kept"].long()),
                         "its kept is int64, not floating point"),
    "NaN in the mean": (poke("mean", float("nan")), "its mean has NaN or inf values"),
    "inf in the covariance": (poke("cov", float("inf")), "its cov has NaN or inf values"),
    "a covariance not symmetric": (poke("cov", 1e6, index=1), "its cov is not symmetric"),
    "a mean not of its features": (poke("mean", 1e3), "its mean is not the mean of its kept features"),
    "a mean beyond float32": (poke("mean", 1e300),
                              "its mean has values beyond what float32 features can give"),
    "a covariance of 1e308": (scale_cov(1e308, identity=True),
                              "its cov has variances beyond what float32 features can give"),
    "a covariance of 1e30": (scale_cov(1e30, identity=True), "its cov's variances are not those of its kept"),
    "variances not of its features": (scale_cov(4.0),
                                      "its cov's variances are not those of its kept features"),
    "a negative variance": (poke("cov", -1.0), "its cov has negative variances"),
    "a covariance beyond its variances": (set_covariance(0, 1, 10.0),
                                          "its cov has covariances larger than its variances allow"),
    "count not matching": (set_meta(count=9), "they are of 9 images, not 8"),
    "count of one": (set_meta(count=1), "its count is 1, not a whole number of at least 2 images"),
    "count not a number": (set_meta(count="8"), "its count is '8'"),
    "another feature network": (set_meta(feature_net_sha256="0" * 64), "its feature_net_sha256 is '0000"),
    "the mean of another size": (lambda t, m: t.update(mean=t["mean"][:5].contiguous()),
                                 "its mean has shape (5,), not ("),
}


@pytest.mark.parametrize("how", DAMAGE)
def test_load_stats_says_why_it_refuses_a_cached_file(tmp_path, how):
    acc = Accumulator()
    acc.add(torch.rand(8, 64, generator=torch.Generator().manual_seed(0)))
    path = tmp_path / "x.stats.safetensors"
    expect = {"feature_net_sha256": "f" * 64}
    save_stats(path, acc.result(), {"dataset": "x", **expect})
    assert load_stats(path, 8, 64, expect).count == 8
    change, why = DAMAGE[how]
    damaged(path, change)
    with pytest.raises(DamagedStats, match=re.escape(why)):
        load_stats(path, 8, 64, expect)


def test_unreadable_cached_files_are_damaged_too(tmp_path):
    path = tmp_path / "x.stats.safetensors"
    assert load_stats(path) is None  # absent: simply none
    for content in (b"", b"not safetensors at all", b"\xff" * 8 + b"{}"):
        path.write_bytes(content)
        with pytest.raises(DamagedStats, match="not a readable safetensors file"):
            load_stats(path)
    path.unlink()
    path.mkdir()
    with pytest.raises(DamagedStats, match="not a regular file"):
        load_stats(path)


def test_statistics_of_more_images_than_kept_are_checked_against_the_kept_ones(tmp_path):
    """Beyond KEEP images the kept features are a part of the set: each variance is at least their
    share of it, and no variance is more than float32 features can give (else FID overflows)."""
    kept = np.random.default_rng(0).random((KEEP, 8), dtype=np.float32)
    count = KEEP + 5
    mean = kept.mean(0, dtype=np.float64)
    cov = np.cov(kept.astype(np.float64), rowvar=False)
    path = tmp_path / "x.stats.safetensors"
    for damage, why in ((None, None), (cov / 2, "its cov has variances smaller than its kept features' own"),
                        (np.eye(8) * 1e308, "its cov has variances beyond what float32 features can give")):
        save_stats(path, FeatureStats(count, mean, cov if damage is None else damage, kept), {})
        if why is None:
            assert load_stats(path, count, 8).count == count
        else:
            with pytest.raises(DamagedStats, match=re.escape(why)):
                load_stats(path, count, 8)


def stats_file(workdir):
    (path,) = (workdir / "cache").glob("*.stats.safetensors")
    return path


@pytest.mark.parametrize("how", ["metadata a list", "no kept", "count not matching", "NaN in the mean",
                                 "truncated", "metadata nested deep", "a covariance of 1e308"])
def test_a_damaged_cache_is_computed_again_with_one_line_saying_so(scored, workdir, how):
    args = ["eval", *FEW, "--metrics", "fid,kid,pr", "--json"]
    fresh = invoke(*args)
    assert fresh.exit_code == 0, fresh.output
    path = stats_file(workdir)
    good = path.read_bytes()
    if how == "truncated":
        path.write_bytes(good[:-100])
        why = "not a readable safetensors file"
    else:
        change, why = DAMAGE[how]
        damaged(path, change)
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert "unexpected" not in again.output and "Warning" not in again.stderr
    (line,) = [line for line in again.stderr.splitlines() if "were damaged" in line]
    assert line.startswith(f"cached statistics {path} were damaged ({why}"), line
    assert line.endswith("); computing them again"), line
    first, second = json.loads(fresh.stdout), json.loads(again.stdout)
    assert second["metrics"] == first["metrics"] and second["real_stats"] == f"computed {path}"
    assert path.read_bytes() == good  # rebuilt whole, in place
    third = invoke(*args)
    assert json.loads(third.stdout)["real_stats"] == f"cache {path}" and "were damaged" not in third.output


def test_the_api_computes_a_damaged_cache_again(scored, workdir, capsys):
    first = ganctl.evaluate(CKPT, metrics="fid,kid", num=6, num_real=8, quiet=True)
    path = stats_file(workdir)
    damaged(path, set_stats("[]"))
    again = ganctl.evaluate(CKPT, metrics="fid,kid", num=6, num_real=8)
    assert again["metrics"] == first["metrics"] and again["real_stats"] == f"computed {path}"
    assert "were damaged (its ganctl.stats metadata is a JSON list, not an object)" in capsys.readouterr().err


def test_training_computes_a_damaged_cache_again_and_says_so(scored, workdir):
    assert invoke("eval", *FEW, "--metrics", "fid").exit_code == 0  # the cache training will use
    damaged(stats_file(workdir), drop("kept"))
    result = invoke("train", *TINY, "--eval-every", "4", "--eval-num", "6", "--eval-num-real", "8",
                    "--out", "r")
    assert result.exit_code == 0, result.output
    assert f"cached statistics {stats_file(workdir)} were damaged (no kept tensor); computing them " \
           "again" in result.stdout.splitlines()
    assert "eval at step 4: FID" in result.stdout


# --- an evaluation failing mid-run ----------------------------------------------------------------

def test_an_evaluation_failing_mid_run_stops_it_after_that_steps_checkpoint(workdir, tmp_path,
                                                                           monkeypatch):
    """The step is checkpointed before the run stops with the evaluation's error: nothing of the
    training since the last checkpoint is lost, and resume continues (scoring again)."""
    from helpers import valid_steps

    monkeypatch.setenv("GANCTL_INCEPTION", str(write_feature_net(tmp_path / "fake.pt")))
    real_call = scoring.Evaluator.__call__
    calls = []

    def failing_second_time(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise FeatureNetError("the feature network ran out of memory")
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(scoring.Evaluator, "__call__", failing_second_time)
    args = [*TINY, "--steps", "6", "--eval-every", "2", "--eval-num", "6", "--eval-num-real", "8"]
    result = invoke("train", *args, "--ckpt-every", "1000", "--out", "r")
    assert_one_line_error(result, 1, "the evaluation at step 4 failed: the feature network ran out "
                                     "of memory; the run stopped there, its checkpoint written",
                          "ganctl resume r continues it")
    assert valid_steps(workdir / "r") == [2, 4]
    result = invoke("resume", "r")
    assert result.exit_code == 0, result.output
    assert valid_steps(workdir / "r")[-1] == 6
