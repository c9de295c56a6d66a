"""FID, KID and precision/recall as functions (degenerate and non-finite statistics too), the
feature network's lookup and forms, and evaluation during training with its `best` checkpoint
(`ganctl eval`: test_cli_eval.py; scoring's bad inputs: test_scoring.py)."""

import dataclasses
import io
import json
import re
import urllib.error
import urllib.request
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from helpers import TINY, assert_one_line_error, invoke, read_json, write_feature_net

from ganctl import metrics as registry
from ganctl import rundir, scoring
from ganctl.errors import ConfigError, FeatureNetError
from ganctl.fsutil import sha256_file
from ganctl.metrics import inception, parse_metrics
from ganctl.metrics.fid import frechet_distance, frechet_distance_of_features
from ganctl.metrics.kid import kernel_inception_distance, mmd2_unbiased
from ganctl.metrics.pr import precision_recall
from ganctl.metrics.scores import compute
from ganctl.metrics.stats import KEEP, Accumulator, FeatureStats, float64_device

EVAL = ["--eval-num", "24", "--eval-num-real", "48"]


def offline(*args, **kwargs):
    raise urllib.error.URLError("Name or service not known")


def random_spd(rng, d):
    a = rng.normal(size=(d, 2 * d))
    return a @ a.T / (2 * d)


# --- the metrics as functions ------------------------------------------------------------------------

def test_frechet_distance_known_values():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=16), random_spd(rng, 16)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0, abs=1e-9)
    # two Gaussians with diagonal covariances: sum (m1 - m2)^2 + (sqrt(s1) - sqrt(s2))^2
    m1, m2, s1, s2 = rng.normal(size=8), rng.normal(size=8), rng.uniform(0.1, 2, 8), rng.uniform(0.1, 2, 8)
    closed = ((m1 - m2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert frechet_distance(m1, np.diag(s1), m2, np.diag(s2)) == pytest.approx(closed, rel=1e-12)


@pytest.mark.parametrize("d", [8, 64, 256])
def test_frechet_distance_equals_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_spd(rng, d), random_spd(rng, d)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    reference = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-6)


@pytest.mark.parametrize("n1, n2", [(20, 30), (64, 64), (100, 40)])
def test_frechet_distance_of_few_images_equals_the_covariance_formula(n1, n2):
    rng = np.random.default_rng(n1)
    x1 = rng.gamma(2.0, size=(n1, 128))  # fewer images than features, as in small evaluations
    x2 = rng.gamma(2.5, size=(n2, 128)) + 0.1
    by_covariance = frechet_distance(x1.mean(0), np.cov(x1, rowvar=False), x2.mean(0),
                                     np.cov(x2, rowvar=False))
    # (the covariance route takes roots of the near-zero eigenvalues of singular matrices)
    assert frechet_distance_of_features(x1, x2) == pytest.approx(by_covariance, rel=1e-7)
    assert frechet_distance_of_features(x1, x1) == pytest.approx(0, abs=1e-9)


def test_statistics_are_float64_with_the_unbiased_covariance():
    x = torch.randn(500, 5, generator=torch.Generator().manual_seed(0)) * 3 + 1
    acc = Accumulator(keep=100)
    for chunk in x.split(64):
        acc.add(chunk)
    stats = acc.result()
    x64 = x.double().numpy()
    assert stats.count == 500 and stats.mean.dtype == np.float64 and stats.kept.shape == (100, 5)
    np.testing.assert_allclose(stats.mean, x64.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(x64, rowvar=False), rtol=1e-10)
    np.testing.assert_array_equal(stats.kept, x[:100].numpy())


def test_kid_known_values():
    a, b = np.full((50, 4), 0.5), np.full((50, 4), 1.5)
    k = lambda x, y: (x @ y / 4 + 1) ** 3  # noqa: E731
    exact = k(a[0], a[0]) + k(b[0], b[0]) - 2 * k(a[0], b[0])  # two point masses
    assert mmd2_unbiased(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(exact)
    kid = kernel_inception_distance(b, a, subsets=3, subset_size=20)
    assert kid.mean == pytest.approx(exact) and kid.std == pytest.approx(0) and kid.subset_size == 20
    rng = np.random.default_rng(1)  # one distribution: 0 in expectation
    same = kernel_inception_distance(rng.normal(size=(400, 16)), rng.normal(size=(400, 16)),
                                     subsets=50, subset_size=100)
    assert abs(same.mean) < 3 * same.std / np.sqrt(50)
    shifted = kernel_inception_distance(rng.normal(size=(400, 16)), rng.normal(size=(400, 16)) + 1,
                                        subsets=50, subset_size=100)
    assert shifted.mean > 20 * same.std
    assert kernel_inception_distance(a, b, subsets=2, subset_size=1000).subset_size == 50


def test_precision_and_recall_on_constructed_sets():
    g = torch.Generator().manual_seed(0)
    cloud = torch.randn(200, 8, generator=g)
    same = precision_recall(cloud, cloud.clone())
    assert (same.precision, same.recall, same.k) == (1.0, 1.0, 3)
    far = precision_recall(cloud, cloud + 100)
    assert (far.precision, far.recall) == (0.0, 0.0)
    # fakes that cover half of the reals' modes: full precision, about half the recall
    reals = torch.cat([cloud, cloud + 100])
    half = precision_recall(reals, cloud.clone())
    assert half.precision == 1.0 and half.recall == pytest.approx(0.5, abs=0.02)


def test_kid_of_huge_features_has_a_finite_spread_without_warnings():
    """The cubic kernel of features near 1e30 gives MMD^2 near 1e180, whose squares overflow."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 16)), rng.normal(size=(40, 16)) + 1
    plain = kernel_inception_distance(x, y, subsets=5, subset_size=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        huge = kernel_inception_distance(x * 1e30, y * 1e30, subsets=5, subset_size=20)
    assert np.isfinite(huge.std) and huge.std > 0 and plain.std > 0


@pytest.mark.parametrize("scale", [2.0**-90, 2.0**70, 2.0**126])
def test_precision_and_recall_do_not_depend_on_the_features_scale(scale):
    """Distances of features near 1e21 overflow float32, and of features near 1e-27 underflow."""
    g = torch.Generator().manual_seed(0)
    reals, fakes = torch.randn(60, 32, generator=g), torch.randn(60, 32, generator=g) + 0.5
    reals, fakes = reals / reals.abs().max(), fakes / reals.abs().max()
    plain = precision_recall(reals, fakes)
    assert 0 < plain.precision < 1 and 0 < plain.recall < 1
    assert precision_recall(reals * scale, fakes * scale) == plain


# --- degenerate and non-finite statistics ---------------------------------------------------------

def constant(value: float, n: int = 5, d: int = 16) -> FeatureStats:
    """Statistics of n identical images: a zero covariance."""
    x = np.full((n, d), value)
    return FeatureStats(n, x.mean(0), np.cov(x, rowvar=False), x.astype(np.float32))


def test_identical_images_give_a_number_and_identical_sets_zero():
    cpu = torch.device("cpu")
    assert compute(["fid", "kid"], constant(0.5), constant(0.5), cpu)["fid"] == 0.0
    assert compute(["fid"], constant(0.5), constant(1.5), cpu)["fid"] == pytest.approx(16.0)
    assert compute(["fid"], constant(0.5, n=3000), constant(1.5, n=3000), cpu)["fid"] == pytest.approx(16.0)
    x = np.ones((4, 8))
    assert frechet_distance_of_features(x, x) == 0.0
    assert frechet_distance(x[0], np.zeros((8, 8)), x[0], np.zeros((8, 8))) == 0.0


def test_non_finite_statistics_are_refused_before_the_arithmetic():
    bad = constant(0.5)
    bad.cov[0, 0] = np.inf
    with pytest.raises(FeatureNetError, match="real images' feature covariance has NaN or inf values; "
                                              "the feature network file or the images are broken"):
        compute(["fid"], bad, constant(0.5), torch.device("cpu"))
    with pytest.raises(ValueError, match="sigma1 has NaN or inf values"):  # not numpy's LinAlgError
        frechet_distance(bad.mean, bad.cov, bad.mean, constant(0.5).cov)
    with pytest.raises(ValueError, match="x2 has NaN or inf values"):
        frechet_distance_of_features(np.ones((3, 4)), np.full((3, 4), np.nan))
    with pytest.raises(ConfigError, match=r"precision/recall \(k = 3\) needs at least 4 fake images"):
        compute(["pr"], constant(0.5), constant(0.5, n=3), torch.device("cpu"))


def test_statistics_beyond_float32_features_are_refused_by_the_scorer():
    """A covariance of 1e308 (a damaged file, say) would make FID inf, and numpy print a warning."""
    bad = constant(0.5, n=5)
    bad = FeatureStats(3000, bad.mean, np.eye(16) * 1e308, bad.kept)  # more images than kept: the cov is used
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(FeatureNetError, match=r"^the real images' feature covariance has values beyond "
                                                  r"what float32 features can give \(1e\+308\); the feature "
                                                  "network file or the images are broken$"):
            compute(["fid"], bad, constant(0.5), torch.device("cpu"))


@pytest.mark.parametrize("metric, value, why", [
    ("fid", lambda: np.float64(1e300) * 1e300,
     "FID cannot be computed (overflow encountered in scalar multiply)"),
    ("fid", lambda: float("inf"), "FID cannot be computed (its fid came out inf)"),
    ("kid", lambda: float("nan"), "KID cannot be computed (its kid came out nan)"),
])
def test_a_metric_that_comes_out_non_finite_is_an_error_not_a_number_or_a_warning(monkeypatch, metric, value,
                                                                                   why):
    broken = dataclasses.replace(registry.METRICS[metric],
                                 features=lambda real, fake, device: {metric: value()})
    monkeypatch.setitem(registry.METRICS, metric, broken)
    big = FeatureStats(5, np.full(16, 2.0), np.eye(16), np.zeros((5, 16), np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(FeatureNetError) as e:
            compute([metric], constant(0.5), big, torch.device("cpu"))
    assert str(e.value).startswith(f"{why} from the feature statistics of the fake images (largest mean^2 + "
                                   "variance 0.25 for the reals, 5 for the fakes); the feature network file "
                                   "or the fake images are broken"), e.value


def test_features_as_large_as_float32_allows_score_finitely_and_silently():
    """FID (both ways), KID and precision/recall of features of +-3.4e38: finite, no numpy warning."""
    rng = np.random.default_rng(0)
    limit = float(np.finfo(np.float32).max)
    sides = []
    for _ in range(2):
        acc = Accumulator()
        acc.add(torch.from_numpy(np.where(rng.random((40, 64)) < 0.5, limit, -limit).astype(np.float32)))
        sides.append(acc.result())
    real, fake = sides
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        few = compute(["fid", "kid", "pr"], real, fake, torch.device("cpu"))
        more = FeatureStats(KEEP + 1, real.mean, real.cov, real.kept)  # more than kept: the cov is used
        many = compute(["fid"], more, fake, torch.device("cpu"))
    assert all(np.isfinite(v) for v in [*few.values(), many["fid"]]), few
    assert many["fid"] == pytest.approx(few["fid"], rel=1e-6)


def test_float64_sums_run_where_float64_exists():
    """Apple's mps has no float64: the accumulator's sums and KID run on the CPU there."""
    assert float64_device(torch.device("mps")) == torch.device("cpu")
    assert float64_device(torch.device("cuda:1")) == torch.device("cuda:1")
    acc = Accumulator()
    acc.add(torch.tensor([[1.0, float("inf")], [2.0, 3.0], [float("nan"), 0.0]]))
    assert acc.nonfinite == 2
    with pytest.raises(ValueError, match="2 of 3 images gave non-finite features"):
        acc.result()


def test_the_eval_document_is_strict_json_as_the_record_is():
    result = scoring.EvalResult({"fid": float("inf"), "kid": float("nan"), "pr_k": 3, "recall": 0.5}, 8, 6,
                                1.0, "computed x", {"sha256": "f" * 64})
    for doc in (result.to_dict()["metrics"], result.record(4)):
        text = json.dumps(doc, allow_nan=False)
        assert json.loads(text)["fid"] == "inf" and doc["kid"] == "nan" and doc["pr_k"] == 3
        assert doc["recall"] == 0.5


def test_metric_names_are_checked():
    assert parse_metrics("FID, kid,fid") == ["fid", "kid"]
    with pytest.raises(Exception, match="unknown metric 'is'; choose from fid, kid, pr"):
        parse_metrics("fid,is")
    with pytest.raises(Exception, match=r"unknown metric 'fdi' \(did you mean 'fid'\?\); choose"):
        parse_metrics("fdi")


# --- the feature network -----------------------------------------------------------------------------

def test_the_feature_network_is_looked_for_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("GANCTL_INCEPTION", raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    cached = write_feature_net(tmp_path / "xdg" / "ganctl" / "models" / inception.FILE_NAME)
    env = write_feature_net(tmp_path / "env.pt")
    given = write_feature_net(tmp_path / "given.pt")
    assert inception.locate(None) == cached
    monkeypatch.setenv("GANCTL_INCEPTION", str(env))
    assert inception.locate(None) == env
    assert inception.locate(str(given)) == given
    with pytest.raises(FeatureNetError, match="--inception .*missing.pt does not exist"):
        inception.locate(str(tmp_path / "missing.pt"))
    with pytest.raises(FeatureNetError, match=r"--inception .* is a directory; give the Inception "
                                              r"file itself \(inception-2015-12-05.pt: https"):
        inception.locate(str(tmp_path))
    monkeypatch.setenv("GANCTL_INCEPTION", str(tmp_path / "gone.pt"))
    with pytest.raises(FeatureNetError) as wrong:  # not told to set the variable that is wrong
        inception.locate(None)
    assert "GANCTL_INCEPTION" in str(wrong.value) and "set GANCTL_INCEPTION" not in str(wrong.value)


def test_offline_or_no_download_says_what_file_where_from_and_where_to(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("GANCTL_INCEPTION", raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    where = str(tmp_path / "xdg" / "ganctl" / "models")
    for download, why in ((True, "downloading it failed"), (False, "--no-download is set")):
        with pytest.raises(FeatureNetError) as e:
            inception.locate(None, download)
        for part in ("inception-2015-12-05.pt", why, inception.URL, where, "GANCTL_INCEPTION"):
            assert part in str(e.value)
    assert not list((tmp_path / "xdg").rglob("*.pt*"))  # nothing half-downloaded left


def test_a_download_lands_atomically_in_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("GANCTL_INCEPTION", raising=False)
    blob = write_feature_net(tmp_path / "served.pt").read_bytes()

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(blob))}

    asked = []
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda url, timeout: asked.append(url) or Response(blob))
    progress = []
    path = inception.locate(None, progress=lambda what, total: progress.append((what, total)) or (
        lambda n: None))
    assert asked == [inception.URL] and path.read_bytes() == blob
    assert path == tmp_path / "xdg" / "ganctl" / "models" / inception.FILE_NAME
    assert progress and inception.URL in progress[0][0]
    assert [p.name for p in path.parent.iterdir()] == [inception.FILE_NAME]


def test_both_forms_are_accepted_and_anything_else_refused(tmp_path):
    cpu = torch.device("cpu")
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    float_form = inception.load(write_feature_net(tmp_path / "a.pt", "float299"), cpu)
    nvlabs_form = inception.load(write_feature_net(tmp_path / "b.pt", "nvlabs"), cpu)
    assert (float_form.form, nvlabs_form.form) == ("float299", "nvlabs")
    # the same network behind either interface gives the same features
    torch.testing.assert_close(float_form(images), nvlabs_form(images), rtol=1e-5, atol=1e-5)
    grey = float_form(images[:, :1])
    torch.testing.assert_close(grey, float_form(images[:, :1].expand(-1, 3, -1, -1)))
    assert float_form.describe()["sha256"] == sha256_file(tmp_path / "a.pt")
    for form, why in (("other", "it returns features of shape (1, 10), not (1, 2048)"),
                      ("garbage", "not a TorchScript file (a pickle")):
        path = tmp_path / f"{form}.pt"
        if form == "garbage":
            path.write_bytes(b"\x80\x04not a model")
        else:
            write_feature_net(path, form)
        with pytest.raises(FeatureNetError, match="network ganctl knows; use NVlabs' .*; "
                           + re.escape(why)):
            inception.load(path, cpu)


# --- evaluation during training ------------------------------------------------------------------------

def test_training_evaluates_keeps_the_best_and_never_prunes_it(workdir, fake_net, monkeypatch):
    fids = iter([5.0, 3.0, 4.0, 6.0])  # step 2, 4, 6, 8: the best is step 4
    real_compute = scoring.compute
    monkeypatch.setattr(scoring, "compute", lambda names, real, fake, device: {
        **real_compute(names, real, fake, device), "fid": next(fids)})
    result = invoke("train", *TINY, "--steps", "8", "--ckpt-every", "100", "--keep", "1",
                    "--eval-every", "2", *EVAL, "--out", "r")
    assert result.exit_code == 0, result.output
    assert "eval at step 4: FID 3" in result.stdout
    evals = [r for r in rundir.read_metrics(workdir / "r") if r.get("event") == "eval"]
    assert [(r["step"], r["fid"], r["num_fake"], r["num_real"]) for r in evals] == [
        (2, 5.0, 24, 48), (4, 3.0, 24, 48), (6, 4.0, 24, 48), (8, 6.0, 24, 48)]
    ckpts = workdir / "r" / "checkpoints"
    assert (ckpts / "best").read_text().strip() == "step-000000004.safetensors"
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-000000004.safetensors",
                                                            "step-000000008.safetensors"]
    info = json.loads(invoke("inspect", "r", "--json").stdout)
    assert info["best"]["fid"] == 3.0 and info["best"]["step"] == 4 and info["eval"]["fid"] == 6.0
    assert "best FID" in invoke("inspect", "r").stdout
    sampled = invoke("sample", "-n", "4", "b.png", "--ckpt", "r/checkpoints/best", "--json")
    assert sampled.exit_code == 0 and json.loads(sampled.stdout)["step"] == 4
    assert json.loads(invoke("inspect", "r/checkpoints/best", "--json").stdout)["step"] == 4


def test_the_words_best_and_latest_name_the_newest_runs_checkpoints(workdir, fake_net):
    assert invoke("train", *TINY, "--eval-every", "4", *EVAL).exit_code == 0
    assert json.loads(invoke("inspect", "best", "--json").stdout)["step"] == 4
    assert json.loads(invoke("inspect", "latest", "--json").stdout)["step"] == 4
    assert invoke("sample", "-n", "1", "one.png", "--ckpt", "best").exit_code == 0


def test_best_without_evaluations_is_a_clear_error(trained_run):
    assert_one_line_error(invoke("sample", "x.png", "--ckpt", "best"), 1, "has no best checkpoint",
                          "--eval-every")


def test_an_evaluation_that_cannot_run_fails_before_training(workdir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("GANCTL_INCEPTION", raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    result = invoke("train", *TINY, "--eval-every", "2", "--out", "r")
    assert_one_line_error(result, 1, "inception-2015-12-05.pt", "downloading it failed")
    assert not (workdir / "r").exists()


def test_resume_replays_evaluations_once(workdir, fake_net):
    args = [*TINY, "--eval-every", "2", *EVAL, "--out", "r"]
    assert invoke("train", *args, "--steps", "4").exit_code == 0
    # as if the process died after the step-4 evaluation was logged but before its checkpoint
    (workdir / "r" / "checkpoints" / "step-000000004.safetensors").unlink()
    (workdir / "r" / "checkpoints" / "latest").unlink()
    result = invoke("resume", "r", "--steps", "6")
    assert result.exit_code == 0, result.output
    steps = [r["step"] for r in rundir.read_metrics(workdir / "r") if r.get("event") == "eval"]
    assert steps == [2, 4, 6]
    assert read_json(workdir / "r" / "config.json")["eval_every"] == 2
