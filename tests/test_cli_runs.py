"""`ganctl runs`: a run as a table and as JSON, an empty runs root and a folder that does not exist
(what a listing holds: test_runs.py)."""

from __future__ import annotations

import json

from helpers import TINY, assert_one_line_error, invoke


def test_runs_lists_a_complete_run_as_json_and_as_a_table(workdir):
    assert invoke("train", *TINY).exit_code == 0
    result = invoke("runs", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    [run] = doc["runs"]
    assert (run["id"], run["status"], run["step"], run["steps"]) == ("0001-shapes-dcgan", "complete", 4, 4)
    table = invoke("runs").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "STATUS", "DATASET"]
    assert table[1].split()[:5] == ["0001-shapes-dcgan", "complete", "shapes", "dcgan", "32"]


def test_runs_under_an_empty_root_says_how_to_start_one(workdir):
    result = invoke("runs")
    assert result.exit_code == 0 and "start one with `ganctl train`" in result.stdout


def test_runs_of_a_folder_that_does_not_exist_is_an_error(workdir):
    assert_one_line_error(invoke("runs", "nowhere"), 1, "nowhere does not exist")
