"""The ``safefql`` console script: each command end to end on tiny inputs, and its errors as one line.

Runs the typer app in-process (``typer.testing.CliRunner``); datasets go to the session's hermetic Minari
folder (conftest).
"""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

import safefql
from safefql.cli import Fallback, app
from safefql.datasets.collect import dataset_path
from safefql.shields.wrapper import FALLBACKS
from safefql.training.policy import SafeFQLPolicy

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_version_and_help():
    result = invoke("version")
    assert result.exit_code == 0 and result.stdout.strip() == safefql.__version__
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("collect", "import-hdf5", "train", "calibrate", "evaluate", "rollout", "info", "demo"):
        assert command in result.stdout


def test_fallback_choices_match_the_shield():
    assert tuple(f.value for f in Fallback) == FALLBACKS


def test_policies_lists_the_boat_mixture_and_rejects_an_unknown_env():
    result = invoke("policies")
    assert result.exit_code == 0
    assert "goal" in result.stdout and "default mixture:" in result.stdout
    result = invoke("policies", "NoSuchEnv-v9")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "NoSuchEnv-v9" in result.stderr
    assert "Traceback" not in result.stderr


def test_info_prints_the_header_and_names_a_missing_file(trained_boat_checkpoint, tmp_path):
    result = invoke("info", trained_boat_checkpoint)
    assert result.exit_code == 0
    header = json.loads(result.stdout)
    assert header["env_id"] == "safefql/BoatNav-v0"
    assert header["calibration"]["source"] == "offline" and header["calibration"]["delta"] > 0
    missing = tmp_path / "nope.eqx"
    result = invoke("info", missing)
    assert result.exit_code == 1 and "nope.eqx" in result.stderr


def test_evaluate_passes_fallback_and_delta_to_the_shield(trained_boat_checkpoint, tmp_path):
    out = tmp_path / "eval"
    report_path = out / "safefql_BoatNav-v0_goal.json"
    args = ("evaluate", "--agent", "goal", "--episodes", "6", "--out", out)
    result = invoke(*args, "--fallback", "actor", "--delta", "100")
    assert result.exit_code == 0, result.stdout
    report = json.loads(report_path.read_text())
    assert report["fallback"] == "actor" and report["delta"] == 100
    assert report["runs"]["shielded"]["intervention_rate"] == 1.0  # Q_h + 100 > 0: every action replaced
    assert (out / "safefql_BoatNav-v0_goal.png").is_file()
    # defaults: the nearest fallback at the checkpoint's calibrated delta
    result = invoke(*args)
    assert result.exit_code == 0, result.stdout
    report = json.loads(report_path.read_text())
    assert report["fallback"] == "nearest"
    assert report["delta"] == pytest.approx(SafeFQLPolicy.load(trained_boat_checkpoint).delta)
    shielded, alone = report["runs"]["shielded"], report["runs"]["unshielded"]
    assert shielded["violation_rate"] <= alone["violation_rate"] and 0 < shielded["intervention_rate"] < 1
    # typer rejects a fallback that does not exist before anything runs
    bad = runner.invoke(app, [*map(str, args), "--fallback", "teleport"])
    assert bad.exit_code == 2 and "teleport" in bad.stderr
    # shield options without a shield to apply them are refused, not silently ignored
    for extra in (("--shield", "none", "--delta", "0.1"), ("--mode", "policy", "--fallback", "actor")):
        result = invoke(*args, *extra)
        assert result.exit_code == 1 and "have no effect" in result.stderr


@pytest.mark.slow
def test_collect_train_calibrate_info_on_a_tiny_boat_run(tmp_path):
    dataset = "clitest/BoatNav-tiny-v0"
    result = invoke("collect", "--episodes", "30", "--seed", "3", "--dataset-id", dataset)
    assert result.exit_code == 0, result.stdout
    assert dataset in result.stdout and dataset_path(dataset).is_dir()
    result = invoke("collect", "--episodes", "30", "--dataset-id", dataset)
    assert result.exit_code == 1 and "already exists" in result.stderr  # never overwritten silently

    run = tmp_path / "run"
    tiny = ("--set", "critic_hidden=[16,16]", "--set", "value_hidden=[16,16]")
    tiny += ("--set", "actor_hidden=[16,16]", "--set", "flow_hidden=[16,16]", "--set", "batch_size=32")
    result = invoke("train", "--dataset", dataset, "--out", run, "--steps", "40", "--eval-every", "0",
                    "--eval-episodes", "2", "--set", "steps_per_call=20", *tiny)  # fmt: skip
    assert result.exit_code == 0, result.stdout
    ckpt = run / "policy.eqx"
    assert ckpt.is_file() and str(ckpt) in result.stdout

    result = invoke("calibrate", ckpt, "--eps", "0.3")  # 3 held-out episodes: enough for eps >= 0.25
    assert result.exit_code == 0, result.stdout
    header = json.loads(invoke("info", ckpt).stdout)
    calibration = header["calibration"]
    assert calibration["eps"] == 0.3 and calibration["source"] == "offline" and calibration["n"] == 3
    assert math.isfinite(calibration["delta"])
    assert header["config"]["critic_hidden"] == [16, 16] and header["config"]["batch_size"] == 32

    result = invoke("train", "--dataset", dataset, "--out", tmp_path / "bad", "--set", "no_such_field=1")
    assert result.exit_code == 1 and "no_such_field" in result.stderr
