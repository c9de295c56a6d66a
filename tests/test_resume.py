import json

import torch
from conftest import TINY, invoke

from ganctl import checkpoint


def final_tensors(run_dir):
    ckpt = checkpoint.latest_in_run(run_dir)
    return checkpoint.read_header(ckpt).step, checkpoint.load_tensors(ckpt)


def test_resume_continues_exactly_where_a_straight_run_goes(workdir):
    args = [a for a in TINY if a != "4"]  # TINY without its --steps value
    args.remove("--steps")
    assert invoke("train", *args, "--steps", "6", "--out", "straight").exit_code == 0
    assert invoke("train", *args, "--steps", "3", "--out", "split").exit_code == 0
    result = invoke("resume", "split", "--steps", "6")
    assert result.exit_code == 0, result.output
    assert "from step-000000003.safetensors (step 3 of 6)" in result.stdout

    step_a, a = final_tensors(workdir / "straight")
    step_b, b = final_tensors(workdir / "split")
    assert step_a == step_b == 6
    assert a.keys() == b.keys()
    assert any(k.startswith("opt_G.state.") for k in a) and "rng.noise" in a
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # the metrics of the replayed interval are logged once, and the stored config is updated
    steps = [json.loads(x)["step"] for x in (workdir / "split/metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 3, 4, 6]
    assert json.loads((workdir / "split/config.json").read_text())["steps"] == 6


def test_resume_without_argument_takes_the_newest_run(trained_run, workdir):
    result = invoke("resume", "--steps", "6", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["step"] == 6 and doc["run_dir"] == "runs/0001-shapes-dcgan"
    assert checkpoint.latest_in_run(trained_run).name == "step-000000006.safetensors"


def test_resume_from_a_checkpoint_file(trained_run):
    result = invoke("resume", trained_run / "checkpoints" / "step-000000002.safetensors",
                    "--steps", "3")
    assert result.exit_code == 0, result.output
    assert "(step 2 of 3)" in result.stdout


def test_resume_of_a_complete_run_says_so(trained_run):
    result = invoke("resume", trained_run)
    assert result.exit_code == 0
    assert "already complete at step 4" in result.stdout


def test_resume_to_fewer_steps_than_done_is_refused(trained_run):
    result = invoke("resume", trained_run, "--steps", "3")
    assert result.exit_code == 1
    assert "at step 4, past --steps 3" in result.stderr


def test_resume_cannot_change_the_model():
    result = invoke("resume", "--resolution", "64")
    assert result.exit_code == 2  # not an option of resume


def test_resume_checkpoint_outside_a_run(trained_run, workdir):
    lone = workdir / "lone.safetensors"
    lone.write_bytes((trained_run / "checkpoints" / "step-000000004.safetensors").read_bytes())
    result = invoke("resume", lone, "--steps", "5")
    assert result.exit_code == 1 and "not inside a run's checkpoints/" in result.stderr


def test_exact_resume_with_mirror_across_epochs_on_a_folder(workdir):
    from PIL import Image
    (workdir / "imgs" / "a").mkdir(parents=True)
    for i in range(10):  # 10 images, batch 4: an epoch is 2 batches, so 7 steps cross 3 epochs
        Image.new("RGB", (40, 32), (i * 25, 255 - i * 25, 60)).save(workdir / "imgs" / "a" / f"{i}.png")
    args = ["--dataset", "imgs", "--resolution", "32", "--mirror", "--batch-size", "4",
            "--g-width", "8", "--d-width", "8", "--log-every", "1", "--ckpt-every", "3",
            "--sample-every", "100", "--device", "cpu"]
    assert invoke("train", *args, "--steps", "7", "--out", "straight").exit_code == 0
    assert invoke("train", *args, "--steps", "3", "--out", "split").exit_code == 0
    assert invoke("resume", "split", "--steps", "7").exit_code == 0
    (_, a), (_, b) = final_tensors(workdir / "straight"), final_tensors(workdir / "split")
    assert a.keys() == b.keys() and int(a["state.data_epoch"]) == 3
    for name in a:
        assert torch.equal(a[name], b[name]), name
