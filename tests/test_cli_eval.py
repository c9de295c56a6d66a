"""`ganctl eval`: a checkpoint's scores as a table and as JSON, the real statistics it caches,
another dataset, and its one-line errors (scoring's bad inputs: test_scoring.py)."""

from __future__ import annotations

import json

from helpers import assert_one_line_error, image_folder, invoke, write_feature_net

from ganctl import rundir, scoring
from ganctl.fsutil import sha256_file
from ganctl.metrics import inception


def test_eval_scores_a_checkpoint_and_caches_the_real_statistics(trained_run, workdir, fake_net,
                                                                   monkeypatch):
    extracted = []
    real_accumulate = scoring._accumulate  # what extract and the fakes' features go through
    monkeypatch.setattr(scoring, "_accumulate", lambda net, batches, total, what, progress: (
        extracted.append(what) or real_accumulate(net, batches, total, what, progress)))
    result = invoke("eval", "--num", "30", "--num-real", "40", "--metrics", "fid,kid,pr", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["checkpoint"] == "runs/0001-shapes-dcgan/checkpoints/step-000000004.safetensors"
    assert (doc["step"], doc["num_real"], doc["num_fake"], doc["dataset"]) == (4, 40, 30, "shapes")
    assert set(doc["metrics"]) >= {"fid", "kid", "kid_std", "precision", "recall"}
    assert doc["metrics"]["kid_subset_size"] == 30 and doc["metrics"]["fid"] > 0
    assert doc["feature_net"]["sha256"] == sha256_file(fake_net)
    assert doc["protocol"]["version"] == 1 and "bilinear" in doc["protocol"]["resize"]
    assert doc["real_stats"].startswith("computed ")
    assert extracted == ["features of 40 real images of shapes", "features of the fakes"]
    # the run's metrics.jsonl has the score; a second eval reuses the real statistics
    logged = [r for r in rundir.read_metrics(trained_run) if r.get("event") == "eval"]
    assert logged[0]["fid"] == doc["metrics"]["fid"]
    assert logged[0]["checkpoint"] == "step-000000004.safetensors"
    again = invoke("eval", "--num", "30", "--num-real", "40", "--metrics", "fid")
    assert again.exit_code == 0, again.output
    assert "real statistics of 40 images from the cache" in again.stdout
    assert extracted[2:] == ["features of the fakes"]
    assert "FID" in again.stdout and "40" in again.stdout and "30" in again.stdout


def test_eval_against_another_dataset(trained_run, workdir, fake_net):
    image_folder(workdir / "other", 12)
    result = invoke("eval", trained_run, "--dataset", "other", "--num", "10", "--metrics", "fid",
                    "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["dataset"] == "other" and doc["num_real"] == 12


def test_eval_errors_are_one_line(trained_run, workdir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("GANCTL_INCEPTION", raising=False)
    assert_one_line_error(invoke("eval", "--no-download", "--num", "10"), 1, "inception-2015-12-05.pt",
                          inception.URL)
    assert_one_line_error(invoke("eval", "--metrics", "is"), 1, "unknown metric 'is'")
    assert_one_line_error(invoke("eval", "--num", "1"), 2, "--num")
    write_feature_net(tmp_path / "other.pt", "other")
    assert_one_line_error(invoke("eval", "--inception", tmp_path / "other.pt", "--num", "10"), 1,
                          "not an Inception feature network ganctl knows")
