"""Fast checks of the benchmark scripts: README generation, the latency benchmark, bench_boat's pieces."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
README_TEXT = """# project

intro text

## Results

<!-- results:start -->
old generated text
<!-- results:end -->

## After

tail text
"""


def _load(name: str):
    """Import ``benchmarks/<name>.py`` (the folder is not a package)."""
    mod_name = f"_test_bench_{name}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module


def _write(path: Path, obj) -> None:
    path.write_text(json.dumps(obj))


MACHINE = {"platform": "TestOS-1.0", "cpu_count": 2, "python": "3.11.7", "jax": "0.10.2"}


def _fake_results(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    _write(
        d / "envs.json",
        {
            "benchmark": "envs",
            "results": {
                "BoatNav-v0 (single, MuJoCo)": {"steps": 1000, "steps_per_s": 12345.6, "us_per_step": 81.0},
                "BoatNav-v0 (vector, NumPy)": {
                    "transitions": 20000,
                    "num_envs": 1000,
                    "transitions_per_s": 4.5e6,
                    "seconds_per_1M": 0.22,
                },
            },
            "machine": {"platform": "TestOS-1.0", "cpus": 2},
        },
    )
    agg = {"seeds": 2, "return_mean": -501.3, "return_std": 3.5, "cost_mean": 0.0, "cost_std": 0.0}
    agg |= {"violation_rate_mean": 0.0, "violation_rate_std": 0.0}
    _write(
        d / "boat.json",
        {
            "benchmark": "boat",
            "command": "uv run python benchmarks/bench_boat.py --quick",
            "config": {"starts": 10, "eps": 0.05, "steps": 500},
            "starts": {"safe": "..."},
            "methods": {
                "safefql": {
                    "label": "SafeFQL (policy)",
                    "aggregate": {"safe": agg},
                    "latency": {"latency_us": 31.4, "best_path": "numpy", "episode_400_s": 0.0123},
                    "training": {"train_time_s": 77.0, "updates_per_s": 88.8, "steps": 500},
                },
                "fisor": {"label": "FISOR-style", "error": "RuntimeError('boom')"},
            },
            "published": {"SafeFQL": {"return": -497.0, "cost": 0.0, "episode_s": 0.14}},
            "machine": MACHINE,
        },
    )
    _write(
        d / "latency.json",
        {
            "benchmark": "latency",
            "rows": [
                {"method": "actor", "path": "numpy", "batch": 1, "median_us": 27.5, "per_state_us": 27.5},
                {"method": "actor", "path": "numpy", "batch": 64, "median_us": 99.0, "per_state_us": 1.55},
                {"method": "fisor", "path": "jax", "batch": 1, "median_us": 1058.0, "per_state_us": 1058.0},
            ],
            "episode_400": [{"method": "actor", "path": "numpy", "seconds": 0.031}],
            "ratios": {"fisor_jax_over_actor_jax_b1": 38.5, "target": 10.0},
            "machine": MACHINE,
        },
    )
    (d / "boat_trajectories.png").write_bytes(b"\x89PNG fake")


def test_make_readme_renders_and_detects_staleness(tmp_path):
    mr = _load("make_readme")
    results, readme = tmp_path / "bench" / "results", tmp_path / "README.md"
    _fake_results(results)
    readme.write_text(README_TEXT)
    args = ["--results-dir", str(results), "--readme", str(readme)]
    assert mr.main([*args, "--check"]) == 1  # the placeholder is stale
    assert readme.read_text() == README_TEXT  # --check writes nothing
    assert mr.main(args) == 0
    text = readme.read_text()
    assert text.startswith("# project\n\nintro text") and text.endswith("## After\n\ntail text\n")
    assert "old generated text" not in text
    section = text[text.index("<!-- results:start -->") : text.index("<!-- results:end -->")]
    # numbers come from the JSON; commands and machines are stated; the PNG is linked relative to the README
    for expected in (
        "12,346",
        "-501.3 ± 3.5",
        "-497 / 0",
        "31.4 (numpy)",
        "38.5x",
        "`uv run python benchmarks/bench_boat.py --quick`",
        "TestOS-1.0, 2 CPUs",
        "![boat_trajectories](bench/results/boat_trajectories.png)",
        "FISOR-style | n/a | failed",
        "`collect.json`: `uv run python benchmarks/bench_collect.py`",
        "`shield.json`",
        "`safety_gym.json`",
    ):
        assert expected in section, expected
    assert mr.main([*args, "--check"]) == 0
    assert mr.main(args) == 0 and readme.read_text() == text  # idempotent

    boat = json.loads((results / "boat.json").read_text())
    boat["methods"]["safefql"]["aggregate"]["safe"]["return_mean"] = -400.0
    _write(results / "boat.json", boat)
    assert mr.main([*args, "--check"]) == 1
    assert mr.main(args) == 0 and "-400.0 ± 3.5" in readme.read_text()
    assert mr.main([*args, "--check"]) == 0


def test_make_readme_survives_missing_keys_and_bad_files(tmp_path):
    mr = _load("make_readme")
    results, readme = tmp_path / "results", tmp_path / "README.md"
    results.mkdir()
    readme.write_text(README_TEXT)
    for name in ("demo", "envs", "collect", "boat", "latency", "shield"):
        _write(results / f"{name}.json", {"benchmark": name})
    _write(
        results / "safety_gym.json", {"envs": {"SafetyPointGoal1Gymnasium-v0": {"error": "ValueError: x"}}}
    )
    (results / "latency.json").write_text("{not json")
    _write(results / "boat.json", {"methods": {"bc": {"aggregate": "oops"}}, "machine": "odd"})
    assert mr.main(["--results-dir", str(results), "--readme", str(readme)]) == 0
    text = readme.read_text()
    for title in (
        "`safefql demo`, end to end",
        "Environment throughput",
        "Dataset collection",
        "Boat",
        "Shield overhead",
        "Safety-Gymnasium",
    ):
        assert f"### {title}" in text
    assert "`latency.json` could not be read" in text
    assert "Failed: ValueError: x" in text
    assert "Not measured yet" not in text


def test_make_readme_needs_markers(tmp_path):
    mr = _load("make_readme")
    readme = tmp_path / "README.md"
    readme.write_text("# no markers here\n")
    assert mr.main(["--results-dir", str(tmp_path), "--readme", str(readme)]) == 2
    assert mr.main(["--results-dir", str(tmp_path), "--readme", str(tmp_path / "missing.md")]) == 2


def test_bench_latency_quick_writes_json(tmp_path):
    lat = _load("bench_latency")
    out = tmp_path / "out"
    argv = ["--quick", "--batch", "8", "--calls", "5", "--calls-large", "2", "--budget-s", "0.05"]
    result = lat.main([*argv, "--out-dir", str(out)])
    data = json.loads((out / "latency.json").read_text())
    assert data["benchmark"] == "latency" and data["rows"] == json.loads(json.dumps(result["rows"]))
    combos = {(r["method"], r["path"], r["batch"]) for r in data["rows"]}
    for method, path in (
        ("actor", "jax"),
        ("actor", "numpy"),
        ("flow", "jax"),
        ("flow", "numpy"),
        ("fisor", "jax"),
    ):
        assert {(method, path, 1), (method, path, 8)} <= combos
    assert all(r["median_us"] > 0 and r["calls"] >= 1 for r in data["rows"])
    assert {e["method"] for e in data["episode_400"]} == {"actor", "flow", "fisor"}
    assert all(e["seconds"] > 0 for e in data["episode_400"])
    assert data["ratios"]["fisor_jax_over_actor_jax_b1"] > 0
    assert max(data["numpy_vs_jax_max_abs_diff"].values()) < 1e-4
    assert "freshly initialised" in data["weights"]["safefql"]
    assert data["machine"]["cpu_count"] >= 1 and data["machine"]["jax"]


def test_bench_boat_help(capsys):
    boat = _load("bench_boat")
    with pytest.raises(SystemExit) as e:
        boat.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--methods", "--seeds", "--steps", "--quick", "--out-runs", "--out-dir"):
        assert flag in out


def test_boat_tries_counts_parked_and_violating_starts(capsys):
    tries = _load("boat_tries")
    returns = np.array([-450.0, -1390.0, -1299.0, -1301.0])
    costs = np.array([0.0, 0.0, 3.0, 0.0])
    row = tries.seed_row(returns, costs)
    assert row == {
        "return": pytest.approx(returns.mean()),
        "violating": 1,
        "parked": 2,
        "parked_starts": [1, 3],
        "violating_starts": [2],
    }
    with pytest.raises(SystemExit) as e:
        tries.main(["--tag", "x", "--set", "alpha"])  # refused before any data is loaded
    assert e.value.code == 2 and "--set expects key=value" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tries.main(["--tag", "x", "--set", "no_such_field=1"])
    assert "unknown SafeFQLConfig fields" in capsys.readouterr().err


def test_bench_boat_rollout_matches_library():
    boat_bench = _load("bench_boat")
    from safefql.training.calibration import boat_episodes

    class Downstream:  # full thrust along +x, and a little up
        def act(self, obs, rng=None):
            return np.tile(np.array([1.0, 0.3]), (np.asarray(obs).shape[0], 1))

    starts = np.array([[-2.5, 1.5], [-1.6, -1.2], [0.0, 0.0]])
    ours = boat_bench.rollout(lambda p, rng: Downstream().act(p), starts)
    ref = boat_episodes(Downstream(), starts)
    np.testing.assert_allclose(ours["returns"], ref["return"])
    np.testing.assert_array_equal(ours["costs"], ref["cost"])
    assert ours["trajectories"].shape == (3, 401, 2)
    summary = boat_bench.summarize(ours)
    assert summary["violation_rate"] == float(np.mean(ref["cost"] > 0))
    agg = boat_bench.aggregate([{"return": 1.0}, {"return": 3.0}], ("return",))
    assert agg["return_mean"] == 2.0 and agg["return_std"] == pytest.approx(np.sqrt(2.0))


def test_bench_demo_runs_the_demo_end_to_end_and_renders(tmp_path, monkeypatch):
    """The README's main command at smoke size: every phase runs, is timed, and reaches the README."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    demo = _load("bench_demo")
    out_dir = tmp_path / "results"
    argv = ["--quick", "--steps", "200", "--eval-episodes", "4", "--out-run", str(tmp_path / "run")]
    result = demo.main([*argv, "--out-dir", str(out_dir)])
    data = json.loads((out_dir / "demo.json").read_text())
    assert data["full_size"] is False
    assert data["sizes"] == {"episodes": 300, "updates": 200, "eval_episodes": 4}
    phases = data["timings_s"]
    assert set(phases) == {"collect_s", "train_s", "calibrate_s", "evaluate_s", "total_s"}
    assert all(v > 0 for v in phases.values())
    assert sum(v for k, v in phases.items() if k != "total_s") <= phases["total_s"] <= data["wall_s"]
    assert data["within_budget"] == (data["wall_s"] <= 600.0)
    assert [r["what"] for r in data["rows"]][0] == "SafeFQL policy" and len(data["rows"]) == 5
    alone = {r["what"]: r for r in data["rows"]}["goal agent alone"]
    assert alone["intervention_rate"] is None and 0 <= alone["violating_episodes"] <= 4
    assert data["dataset"]["episodes"] == 300 and 0.0 <= data["sign_agreement"] <= 1.0
    assert (tmp_path / "run" / "run" / "policy.eqx").is_file()
    assert result["wall_s"] == data["wall_s"]
    text = "\n".join(_load("make_readme").render_demo(data))
    assert "REDUCED sizes" in text and "| goal agent + shield |" in text


@pytest.mark.parametrize("flag", ["--episodes", "--steps", "--eval-episodes"])
def test_bench_demo_rejects_non_positive_sizes(flag, capsys):
    with pytest.raises(SystemExit) as e:
        _load("bench_demo").main([flag, "0"])
    assert e.value.code == 2
    assert f"{flag} must be >= 1, got 0" in capsys.readouterr().err


class _CostScriptEnv:
    """Episodes whose step costs follow a fixed script; reward 1 per step."""

    def __init__(self, script):
        self.script, self.t = script, 0

    def reset(self, seed=None):
        self.t = 0
        return np.zeros(1), {}

    def step(self, action):
        cost = self.script[self.t]
        self.t += 1
        return np.zeros(1), 1.0, False, self.t == len(self.script), {"cost": cost}

    def close(self):
        pass


def test_bench_safety_gym_counts_hazard_entries_and_steps_per_stay():
    sg = _load("bench_safety_gym")
    script = [0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0]  # two entries: 3 steps inside, then 1
    ep = sg.run_episodes(lambda: _CostScriptEnv(script), lambda obs: np.zeros(2), 2, 0, None)
    assert ep["cost_onsets"].tolist() == [2, 2] and ep["costs"].tolist() == [4.0, 4.0]
    summary = sg.summarize(ep, r_min=0.0, r_max=8.0, cost_limit=4.0)
    assert summary["cost_onsets"] == 2.0 and summary["cost_steps_per_onset"] == 2.0
    assert summary["c_norm"] == 1.0 and summary["r_norm"] == 1.0
    clean = sg.summarize(sg.run_episodes(lambda: _CostScriptEnv([0.0] * 3), None, 1, 0, None), 0.0, 3.0, 1.0)
    assert clean["cost_onsets"] == 0.0 and clean["cost_steps_per_onset"] == 0.0


@pytest.mark.slow  # ~45 s: collect, train every method, evaluate and shield, all tiny
def test_bench_safety_gym_quick_run_end_to_end(tmp_path, monkeypatch, capsys):
    # SafeFQL, BC-all and BC-safe in one run; FISOR-style then added to the same entry with --extend
    sg = _load("bench_safety_gym")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    out = tmp_path / "sg.json"
    argv = ["--quick", "--envs", "car", "--seeds", "2", "--shield-seeds", "2", "--eval-episodes", "1"]
    argv += ["--shield-fallbacks", "safest", "--references", "", "--work-dir", str(tmp_path)]
    argv += ["--out", str(out), "--no-progress"]
    sg.main([*argv, "--methods", "safefql,bc,bc_safe"])
    first = json.loads(out.read_text())["envs"]["SafetyCarGoal1Gymnasium-v0"]
    sg.main([*argv, "--methods", "fisor", "--extend", "--reuse-data"])
    entry = json.loads(out.read_text())["envs"]["SafetyCarGoal1Gymnasium-v0"]
    methods = entry["evaluation"]["methods"]
    assert set(methods) == {"safefql", "bc", "bc_safe", "fisor"}
    for name in methods:
        seeds = methods[name]["per_seed"]
        assert len(seeds) == 2 and all(s["episodes"] == 1 and s["cost_onsets"] >= 0 for s in seeds)
    for name in ("safefql", "bc", "bc_safe"):  # the stored rows are kept as they were
        assert methods[name] == first["evaluation"]["methods"][name]
    assert entry["shield"] == first["shield"] and entry["command"] == first["command"]
    (ext,) = entry["extensions"]
    assert ext["methods"] == ["fisor"] and "--extend" in ext["command"]
    assert "train_fisor_s" in entry["timings"]
    assert entry["training"]["fisor"]["steps"] == 200
    shield = entry["shield"]
    assert len(shield["checkpoints"]) == 2 and shield["safest_delta_0"]["seeds"] == 2
    assert 0.0 <= shield["safest_delta_0"]["intervention_rate"] <= 1.0
    # an extension must share the entry's evaluation protocol
    with pytest.raises(SystemExit):
        sg.main([*argv, "--methods", "fisor", "--extend", "--reuse-data", "--eval-episodes", "2"])
    assert "eval_episodes: stored 1, now 2" in capsys.readouterr().err


def test_bench_safety_gym_extend_merges_baselines_and_recomputes_the_targets():
    sg = _load("bench_safety_gym")

    def row(r_norm, c_norm):
        return {"aggregate": {"r_norm": r_norm, "c_norm": c_norm}}

    entry = {
        "settings": {"episodes": 450, "seeds": 3, "eval_episodes": 100},
        "training": {"safefql": {"steps": 30000}, "bc_safe": {"steps": 30000}},
        "evaluation": {"methods": {"safefql": row(0.6, 0.9), "bc_safe": row(0.5, 0.5)}},
        "targets": {"safefql_c_norm_le_1": {"met": True}, "shield_cost_reduction_ge_0.8": {"met": True}},
        "timings": {"train_safefql_s": 10.0},
    }
    new = {
        "training": {"bc_safe": {"steps": 1}, "fisor": {"steps": 1}},
        "evaluation": {
            "methods": {"bc_safe": row(0.7, 0.4), "fisor": row(0.1, 2.0)},
            "references": {"random": {"r_norm": 0.0}},
        },
        "timings": {"train_bc_safe_s": 1.0, "train_fisor_s": 2.0, "eval_s": 3.0},
    }
    before = json.dumps(entry)
    merged = sg.merge_extension(entry, new, {"command": "cmd"})
    assert json.dumps(entry) == before  # a copy
    assert list(merged["evaluation"]["methods"]) == ["safefql", "bc_safe", "fisor"]
    assert merged["evaluation"]["methods"]["bc_safe"] == row(0.7, 0.4)  # replaced
    gap = merged["targets"]["safefql_r_norm_ge_bc_safe"]
    assert gap["bc_safe"] == 0.7 and not gap["met"] and gap["gap"] == pytest.approx(-0.1)
    assert merged["targets"]["shield_cost_reduction_ge_0.8"] == {"met": True}
    assert merged["timings"] == {"train_safefql_s": 10.0, "train_bc_safe_s": 1.0, "train_fisor_s": 2.0}
    assert merged["extensions"] == [{"methods": ["bc_safe", "fisor", "scripted random"], "command": "cmd"}]
    assert merged["evaluation"]["references"] == {"random": {"r_norm": 0.0}}
    settings = dict.fromkeys(sg.EXTEND_SETTINGS) | entry["settings"]
    assert sg.extension_mismatches({"settings": settings}, settings) == []
    assert sg.extension_mismatches({"settings": settings}, settings | {"seeds": 1}) == [
        "seeds: stored 3, now 1"
    ]


def test_bench_safety_gym_extend_needs_a_stored_entry_and_baselines_only(tmp_path, capsys):
    sg = _load("bench_safety_gym")
    out = tmp_path / "none.json"
    with pytest.raises(SystemExit):
        sg.main(
            ["--quick", "--envs", "car", "--methods", "fisor", "--extend", "--reuse-data", "--out", str(out)]
        )
    assert "holds no finished SafeFQL entry 'SafetyCarGoal1Gymnasium-v0'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sg.main(["--quick", "--methods", "safefql,fisor", "--extend", "--out", str(out)])
    assert "--methods must list baselines only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sg.main(
            ["--quick", "--methods", "", "--references", "", "--extend", "--reuse-data", "--out", str(out)]
        )
    assert "--extend: nothing to add" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sg.main(["--quick", "--methods", "bc", "--out", str(out)])
    assert "--methods must include safefql" in capsys.readouterr().err


@pytest.mark.slow  # ~60 s: three tiny SafeFQL-only runs
def test_bench_safety_gym_resumes_a_shorter_safefql_run(tmp_path, monkeypatch):
    # --resume-safefql continues a 200-update run to 400; resume is exact, so the policy equals the one a
    # fresh 400-update run writes, to the last bit
    sg = _load("bench_safety_gym")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    argv = ["--quick", "--envs", "car", "--seeds", "1", "--methods", "safefql", "--eval-episodes", "1"]
    argv += ["--shield-episodes", "1", "--shield-fallbacks", "safest", "--references", "", "--no-progress"]
    argv += ["--no-calibrated-shield", "--reuse-data"]

    def run(work: str, steps: int, *extra: str) -> dict:
        out = tmp_path / f"{work}-{steps}.json"
        sg.main([*argv, "--work-dir", str(tmp_path / work), "--steps", str(steps), *extra, "--out", str(out)])
        return json.loads(out.read_text())["envs"]["SafetyCarGoal1Gymnasium-v0"]["training"]["safefql"]

    run("resumed", 200)
    resumed = run("resumed", 400, "--resume-safefql")
    fresh = run("fresh", 400)
    assert resumed["steps"] == fresh["steps"] == 400 and not resumed["reused"]
    from safefql.training.policy import SafeFQLPolicy

    a, b = (SafeFQLPolicy.load(r["policy_paths"][0]) for r in (resumed, fresh))
    obs = np.random.default_rng(0).normal(size=(16, *a.observation_space.shape)).astype(np.float32)
    act = a.act(obs, np.random.default_rng(1))
    assert np.array_equal(act, b.act(obs, np.random.default_rng(1)))
    assert np.array_equal(a.safety_q(obs, act), b.safety_q(obs, act))
    again = run("resumed", 400, "--resume-safefql")  # already at 400 updates: reused, not trained
    assert again["reused"]


def test_bench_safety_gym_keeps_the_collection_time_of_a_reused_dataset():
    sg = _load("bench_safety_gym")
    stats = {"transitions": 1000, "episode_return": {"mean": 13.5}, "episode_cost": {"mean": 26.8}}
    collected = {"seconds": 117.0, "steps_per_s": 1293.0}
    reused = {"seconds": None, "note": "reused an existing dataset (--reuse-data)"}
    entries = {
        # the same id collected again elsewhere: other episodes, so not this data's time
        "task": {
            "timestamp": "T0",
            "data": {
                "dataset_id": "bench/x-v0",
                **stats,
                "episode_return": {"mean": 1.0},
                "collection": {"seconds": 437.0},
            },
        },
        "task [variant]": {
            "timestamp": "T1",
            "data": {"dataset_id": "bench/x-v0", **stats, "collection": collected},
        },
    }

    def reused_out(**changes):
        return {
            "data": {"dataset_id": "bench/x-v0", **stats, "reused": True, "collection": dict(reused)}
            | changes
        }

    out = reused_out()
    sg.carry_collection(out, entries)
    assert out["data"]["collection"]["seconds"] == 117.0
    assert out["data"]["collection"]["measured_at"] == "T1"
    entries["task"] = out | {"timestamp": "T2"}  # a carried time is carried on with its first date
    out = reused_out()
    sg.carry_collection(out, entries)
    assert (out["data"]["collection"]["seconds"], out["data"]["collection"]["measured_at"]) == (117.0, "T1")

    for out in (
        reused_out(dataset_id="bench/other-v0"),  # another dataset
        reused_out(transitions=999),  # other contents under the same id
        {"data": {"dataset_id": "bench/x-v0", **stats, "reused": False, "collection": {"seconds": 5.0}}},
    ):
        before = json.dumps(out)
        sg.carry_collection(out, entries)
        assert json.dumps(out) == before
    out = reused_out()
    sg.carry_collection(out, {})
    assert out["data"]["collection"]["seconds"] is None


def test_bench_safety_gym_refuses_to_reuse_data_of_another_mixture():
    sg = _load("bench_safety_gym")
    env_id = "SafetyPointGoal1Gymnasium-v0"
    stored = {"mixture": "goal_lidar:0.5,random:0.5"}
    sg.check_reused_mixture("bench/x-v0", stored, "goal_lidar:1,random:1", env_id)  # the same, rescaled
    sg.check_reused_mixture("bench/x-v0", {}, "goal_lidar:1", env_id)  # no record: nothing to compare
    with pytest.raises(ValueError, match="collected with mixture 'goal_lidar:0.5,random:0.5'"):
        sg.check_reused_mixture("bench/x-v0", stored, "goal_lidar:0.5,hazard_recovery:0.5", env_id)


def test_make_readme_renders_each_shield_fallback(tmp_path):
    mr = _load("make_readme")
    results, readme = tmp_path / "results", tmp_path / "README.md"
    results.mkdir()
    readme.write_text(README_TEXT)
    run = {"return": 5.0, "cost": 10.0, "violation_rate": 0.5, "intervention_rate": 0.25}
    run["cost_reduction"] = 0.75
    shield = {
        "agent": "goal_lidar",
        "episodes": 20,
        "alone": {"return": 20.0, "cost": 40.0, "violation_rate": 0.9},
        "delta_0": run | {"delta": 0.0, "fallback": "nearest"},
        "actor_delta_0": run | {"delta": 0.0, "fallback": "actor", "cost_reduction": 0.5},
        "actor_delta_5": run
        | {"delta": 5.0, "fallback": "actor", "cost_reduction": 0.7},  # --shield-deltas 5
    }
    _write(results / "safety_gym.json", {"envs": {"SafetyCarGoal1Gymnasium-v0": {"shield": shield}}})
    assert mr.main(["--results-dir", str(results), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "| run | fallback | delta |" in text and "| --- | --- | ---: |" in text
    assert "| shielded (delta_0) | nearest | 0 | 5.00 | 10.00 | 0.50 | 75.0% | 0.250 |" in text
    assert "| shielded (delta_0) | actor | 0 | 5.00 | 10.00 | 0.50 | 50.0% | 0.250 |" in text
    assert "| shielded (delta_5) | actor | 5 | 5.00 | 10.00 | 0.50 | 70.0% | 0.250 |" in text
    assert "Shield: goal_lidar, 20 episodes." in text
    # a --shield-seeds run: means with their spread, and the header says over how many checkpoints
    multi = shield | {
        "checkpoints": ["s0.eqx", "s1.eqx", "s2.eqx"],
        "actor_delta_0": shield["actor_delta_0"] | {"seeds": 3, "cost_reduction_std": 0.125},
    }
    _write(results / "safety_gym.json", {"envs": {"SafetyCarGoal1Gymnasium-v0": {"shield": multi}}})
    assert mr.main(["--results-dir", str(results), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "| shielded (delta_0) | actor | 0 | 5.00 | 10.00 | 0.50 | 50.0% ± 12.5 | 0.250 |" in text
    assert "| shielded (delta_0) | nearest | 0 | 5.00 | 10.00 | 0.50 | 75.0% | 0.250 |" in text
    assert "20 episodes with each of 3 seeds' checkpoints (mean ± std over seeds" in text
    assert mr.best_acting_shield(multi) == "75.0% (nearest, delta 0, 0.25)"
    assert (
        mr.best_acting_shield({"actor_delta_0": multi["actor_delta_0"]})
        == "50.0% ± 12.5 (actor, delta 0, 0.25)"
    )
    # shield results withdrawn from an entry: the page says why instead of a table
    withdrawn = {"note": "not kept: the checkpoints changed during the run"}
    _write(results / "safety_gym.json", {"envs": {"SafetyCarGoal1Gymnasium-v0": {"shield": withdrawn}}})
    assert mr.main(["--results-dir", str(results), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "Shield: not kept: the checkpoints changed during the run." in text and "| run |" not in text


def test_make_readme_says_when_a_variant_ran_on_recollected_data():
    mr = _load("make_readme")

    def entry(ret, cost, dataset="bench/Car-mix150-s0-v0"):
        data = {"dataset_id": dataset, "episode_return": {"mean": ret}, "episode_cost": {"mean": cost}}
        return {"settings": {"episodes": 150, "overrides": {"alpha": 100}}, "data": data}

    main = {"settings": {"episodes": 150}, "data": entry(16.69, 21.63)["data"]}
    assert mr.variant_changes(entry(16.69, 21.63), main) == "alpha=100"  # the same data
    assert mr.variant_changes(entry(16.74, 21.21, "bench/Car-mix600-s0-v0"), main) == "alpha=100"  # other id
    assert mr.variant_changes(entry(16.74, 21.21), main) == (
        "alpha=100; data collected again (episode return / cost mean 16.74 / 21.21; main run 16.69 / 21.63)"
    )
    assert mr.variant_changes({**entry(16.74, 21.21), "data": {}}, main) == "alpha=100"  # nothing recorded


def test_make_readme_lists_config_fields_that_differ_from_the_main_run():
    """A run under older defaults, as a variant of a main run under new ones: every differing config field
    is named (a field the old run predates counts as its default), and so is a setting set back to its
    default value (margin=surrogate against a hazard_distance main run)."""
    mr = _load("make_readme")

    def run(margin, **config):
        return {"settings": {"margin": margin, "overrides": {}}, "training": {"safefql": {"config": config}}}

    main = run("hazard_distance", alpha=1.0, w_safe=10.0, flow_episodes="safe", critic_hidden=[256, 256])
    old = run("surrogate", alpha=1.0, w_safe=1.0, critic_hidden=[256, 256])  # predates flow_episodes
    assert mr.variant_changes(old, main) == "margin=surrogate; flow_episodes=all; w_safe=1"
    assert mr.variant_changes(run("hazard_distance", **main["training"]["safefql"]["config"]), main) == (
        "(same settings)"
    )


def test_make_readme_marks_baselines_trained_on_standardised_inputs():
    mr = _load("make_readme")
    methods = {
        "bc": {"label": "BC-all", "aggregate": {"seeds": 3, "r_norm": 0.65, "c_norm": 1.98}},
        "bc_safe": {"label": "BC-safe", "aggregate": {"seeds": 3, "r_norm": 0.27, "c_norm": 0.89}},
    }
    entry = {
        "evaluation": {"methods": methods},
        "training": {"bc": {"normalize_observations": False}, "bc_safe": {"normalize_observations": True}},
    }
    text = "\n".join(mr.render_safety_gym_entry("Env", entry))
    assert "| BC-safe (standardised inputs) | 3 |" in text
    assert "| BC-all | 3 |" in text
    rows = mr.render_safety_gym({"envs": {"Env": {}, "Env [v]": entry}})
    assert any("BC-all 0.65 / 1.98; BC-safe (standardised inputs) 0.27 / 0.89" in r for r in rows)


def test_make_readme_names_the_commands_that_extended_an_entry():
    mr = _load("make_readme")
    entry = {
        "command": "bench --methods safefql,bc",
        "extensions": [
            {"command": "bench --methods fisor --extend", "methods": ["fisor"], "timestamp": "T1"},
            {"command": "bench --methods bc_safe --extend", "methods": ["bc_safe"], "error": "boom"},
        ],
    }
    text = "\n".join(mr.render_safety_gym_entry("Env", entry))
    assert "Reproduce: `bench --methods safefql,bc`" in text
    assert "Then fisor added on the same data (T1): `bench --methods fisor --extend`" in text
    assert "Then adding bc_safe on the same data failed (boom): `bench --methods bc_safe --extend`" in text
    assert "bc_safe added" not in text


def test_make_readme_summarises_variants_and_writes_their_tables_to_docs(tmp_path):
    mr = _load("make_readme")
    results, readme = tmp_path / "results", tmp_path / "README.md"
    results.mkdir()
    readme.write_text(README_TEXT)
    env = "SafetyCarGoal1Gymnasium-v0"
    main = {"env_id": env, "settings": {"episodes": 150, "kappa": None, "overrides": {}}}
    methods = {
        "safefql": {
            "aggregate": {"seeds": 3, "r_norm": 0.5, "r_norm_std": 0.1, "c_norm": 0.8, "c_norm_std": 0.2}
        },
        "bc_safe": {"label": "BC-safe", "aggregate": {"seeds": 3, "r_norm": 0.6, "c_norm": 1.1}},
    }
    shield = {
        "actor_delta_0": {"fallback": "actor", "delta": 0.0, "cost_reduction": 0.5, "intervention_rate": 0.6},
        "actor_calibrated": {
            "fallback": "actor",
            "delta": 25.0,
            "cost_reduction": 0.9,
            "intervention_rate": 1.0,
        },
    }
    variant = {
        "env_id": env,
        "settings": {
            "episodes": 600,
            "kappa": None,
            "action_hold": 1,
            "overrides": {"critic_hidden": [128, 128]},
        },
        "evaluation": {"methods": methods},
        "shield": shield,
    }
    keys = {
        f"{env} [hold10-kappa1]": {"env_id": env},
        f"{env} [mix600]": variant,
        f"{env} [hold10]": {},
        f"{env} [mix600-alpha100]": {},
        f"{env} [mix600-alpha30]": {},
        env: main,
    }
    _write(results / "safety_gym.json", {"envs": keys})
    assert mr.main(["--results-dir", str(results), "--readme", str(readme)]) == 0
    text, doc = readme.read_text(), (tmp_path / "docs" / "safety_gym_variants.md").read_text()
    # the README keeps the main run's block and one row per variant; the variants' blocks go to the page
    assert [line for line in text.splitlines() if line.startswith("#### ")] == [f"#### {env}"]
    rows = [line for line in text.splitlines() if line.startswith("| [")]
    tags = ["hold10", "hold10-kappa1", "mix600", "mix600-alpha30", "mix600-alpha100"]  # numbers by value
    assert [row.split("]")[0] for row in rows] == [f"| [{tag}" for tag in tags]
    assert "| n/a |" in rows[0]  # no settings recorded: nothing is claimed about what changed
    link = "docs/safety_gym_variants.md#safetycargoal1gymnasium-v0-mix600"
    expected = (
        f"| [mix600]({link}) | episodes=600; critic_hidden=128,128 | 3 | 0.500 ± 0.100 | 0.800 ± 0.200 "
        "| BC-safe 0.60 / 1.10 | 50.0% (actor, delta 0, 0.60) |"
    )
    assert expected in rows
    heads = [line for line in doc.splitlines() if line.startswith("#### ")]
    assert heads == [f"#### {env} [{tag}]" for tag in tags]
    assert mr.main(["--results-dir", str(results), "--readme", str(readme), "--check"]) == 0
    (tmp_path / "docs" / "safety_gym_variants.md").write_text(doc + "edited by hand\n")
    assert mr.main(["--results-dir", str(results), "--readme", str(readme), "--check"]) == 1


def test_bench_safety_gym_shield_target_needs_the_agent_to_act():
    sg = _load("bench_safety_gym")
    shield = {
        "delta_0": {"cost_reduction": -1.5, "intervention_rate": 0.7},
        "actor_delta_0": {"cost_reduction": 0.85, "intervention_rate": 0.6},
        "actor_calibrated": {"cost_reduction": 0.9, "intervention_rate": 1.0},  # the policy alone
        "actor_delta_2": {"cost_reduction": 0.88, "intervention_rate": 0.99995},  # one agent action in 20,000
    }
    target = sg.shield_cost_target(shield, ["delta_0", "actor_calibrated", "actor_delta_2"])
    assert not target["met"] and target["met_by"] == [] and target["value_actor_calibrated"] == 0.9
    target = sg.shield_cost_target(shield, list(shield))
    assert target["met"] and target["met_by"] == ["actor_delta_0"]
    assert target["interventions_delta_0"] == 0.7


def test_bench_safety_gym_averages_a_shield_run_over_seeds():
    sg = _load("bench_safety_gym")
    one = {"fallback": "actor", "episodes": 20, "returns": [1.0], "steps_per_s": 9.0}
    runs = [
        one | {k: 0.0 for k in sg.SHIELD_AGG_KEYS} | {"cost_reduction": 0.5, "intervention_rate": 0.8},
        one | {k: 0.0 for k in sg.SHIELD_AGG_KEYS} | {"cost_reduction": 0.7, "intervention_rate": 0.6},
    ]
    assert sg.aggregate_shield_runs(runs[:1]) is runs[0]  # one seed: stored as before
    out = sg.aggregate_shield_runs(runs)
    assert out["cost_reduction"] == pytest.approx(0.6) and out["intervention_rate"] == pytest.approx(0.7)
    assert out["cost_reduction_std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert out["seeds"] == 2 and out["episodes"] == 40 and out["fallback"] == "actor"
    assert out["per_seed"] == runs and "returns" not in out and "steps_per_s" not in out
    target = sg.shield_cost_target({"actor_delta_0": out}, ["actor_delta_0"])  # judged on the means
    assert target["value_actor_delta_0"] == pytest.approx(0.6) and not target["met"]


def test_bench_safety_gym_rejects_unknown_shield_fallbacks(capsys):
    sg = _load("bench_safety_gym")
    with pytest.raises(SystemExit):
        sg.main(["--quick", "--shield-fallbacks", "nearest,teleport"])
    assert "--shield-fallbacks must come from" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--action-hold", "0"], "--action-hold must be >= 1"),
        (["--action-hold", "5", "--switch-every", "100"], "--action-hold and --switch-every cannot be"),
        (["--margin", "hazard_distance", "--kappa", "1"], "--margin hazard_distance cannot be combined"),
        (["--shield-deltas", "1,two"], "--shield-deltas must be comma-separated numbers"),
        (["--shield-deltas", "2,-1"], "--shield-deltas must be finite and >= 0"),
        (["--shield-seeds", "0"], "--shield-seeds must be >= 1"),
        (["--shield-candidates", "0"], "--shield-candidates must be >= 1"),
        (["--shield-fallbacks", "samples,bogus"], "--shield-fallbacks must come from"),
        (["--seeds", "2", "--shield-seeds", "3"], "--shield-seeds (3) cannot exceed --seeds (2)"),
        (["--resume-safefql", "--reuse-safefql"], "--resume-safefql already reuses a run at --steps"),
    ],
)
def test_bench_safety_gym_rejects_bad_flags(capsys, flags, message):
    sg = _load("bench_safety_gym")
    with pytest.raises(SystemExit):
        sg.main(["--quick", *flags])
    assert message in capsys.readouterr().err


def test_diagnose_safety_critic_helpers_match_hand_computed_values():
    diag = _load("diagnose_safety_critic")
    h = np.array([-1.0, 0.5, -2.0, -3.0, -1.0, 1.0])
    ids = np.array([0, 0, 0, 1, 1, 1])
    y = diag.mc_hj_values(h, ids, gamma=0.5)
    # Episode 0 backwards: y2 = -2; y1 = 0.25 + 0.5 max(0.5, -2) = 0.5; y0 = -0.5 + 0.5 max(-1, 0.5) = -0.25.
    # Episode 1 does not see episode 0: y5 = 1; y4 = -0.5 + 0.5 * 1 = 0; y3 = -1.5 + 0.5 * 0 = -1.5.
    np.testing.assert_allclose(y, [-0.25, 0.5, -2.0, -1.5, 0.0, 1.0])
    np.testing.assert_array_equal(diag.steps_from_end(ids), [2, 1, 0, 2, 1, 0])
    # Entering within 1 step: only the step before a positive h of the same episode (never across episodes).
    np.testing.assert_array_equal(diag.enters_within(h, ids, 1), [True, False, False, False, True, False])
    np.testing.assert_array_equal(diag.enters_within(h, ids, 2), [True, False, False, True, True, False])
    label = np.array([False, False, True, True])
    assert diag.auc(np.array([0.0, 1.0, 2.0, 3.0]), label) == 1.0
    assert diag.auc(np.array([3.0, 2.0, 1.0, 0.0]), label) == 0.0
    assert diag.auc(np.ones(4), label) == 0.5
    assert np.isnan(diag.auc(np.arange(4.0), np.zeros(4, dtype=bool)))


def test_bench_safety_gym_switching_collection_records_the_distance_margin(tmp_path, monkeypatch):
    from safefql.datasets.load import load_transitions

    sg = _load("bench_safety_gym")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    env_id = "SafetyPointGoal1Gymnasium-v0"
    report = sg.collect_switching(
        env_id, "goal_lidar:1", 1, 0, "test/point-sw-hd-v0", 50, False, margin="hazard_distance"
    )
    assert report["switch_every"] == 50
    t = load_transitions("test/point-sw-hd-v0")
    assert t.metadata["margin"] == "hazard_distance" and t.metadata["kappa"] is None
    assert t.metadata["h_source"].startswith("hazard_distance")
    assert np.unique(t.h).size > 100 and t.h.max() <= 0.2  # metres, not the surrogate's {-1, 25}
    np.testing.assert_array_equal(t.h > 0, t.costs > 0)


def test_diagnose_safety_critic_inside_the_failure_set():
    diag = _load("diagnose_safety_critic")

    class FakeCritic:  # Q_h(s, a) = s + a[0]; the actor always answers a = (-1, 0)
        def safety_q(self, obs, act):
            return obs[:, 0] + act[:, 0]

        def act(self, obs):
            return np.tile([-1.0, 0.0], (len(obs), 1))

    obs = np.array([[0.5], [1.5], [-3.0], [0.2]])
    actions = np.array([[0.0, 0.0], [-1.0, 0.0], [0.0, 0.0], [-0.5, 0.0]])
    h = np.array([0.1, 0.2, -1.0, 0.05])  # three steps inside; the third row is outside
    grid = np.array([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    r = diag.inside_failure_set(FakeCritic(), obs, actions, h, grid)
    assert r["steps"] == 3 and r["mean_h"] == pytest.approx(0.35 / 3)
    assert r["logged_action_above_zero"] == pytest.approx(2 / 3)  # 0.5, 0.5 > 0; -0.3 not
    assert r["actor_action_above_zero"] == pytest.approx(1 / 3)  # -0.5, 0.5, -0.8
    assert r["every_grid_action_at_most_zero"] == 0.0  # a[0] = 1 always pushes Q_h above 0
    assert diag.inside_failure_set(FakeCritic(), obs, actions, -np.ones(4), grid) == {"steps": 0}


def test_diagnose_safety_critic_names_bad_runs(tmp_path, trained_boat_checkpoint, capsys):
    import shutil

    diag = _load("diagnose_safety_critic")
    with pytest.raises(SystemExit):
        diag.main(["--run-dir", str(tmp_path), "--tag", "t"])
    assert "holds no calib_episodes.npz" in capsys.readouterr().err
    (tmp_path / "calib_episodes.npz").touch()
    shutil.copy(trained_boat_checkpoint, tmp_path / "policy.eqx")
    with pytest.raises(ValueError, match="reads the Point Goal observation"):
        diag.main(["--run-dir", str(tmp_path), "--tag", "t", "--out", str(tmp_path / "out.json")])
    with pytest.raises(ValueError, match="--seed-index 1: .* holds 1 seed checkpoint"):
        diag.main(["--run-dir", str(tmp_path), "--tag", "t", "--seed-index", "1"])
    assert not (tmp_path / "out.json").exists()


def test_plot_safety_gym_picks_the_runs_on_the_main_data(tmp_path, capsys):
    pg = _load("plot_safety_gym")
    env_id = "SafetyPointGoal1Gymnasium-v0"
    data = {
        "dataset_id": "bench/p-v0",
        "transitions": 100,
        "episode_return": {"mean": 13.3},
        "episode_cost": {"mean": 26.8},
    }

    def run(r, c, episodes=100, methods=("safefql",), **data_changes):
        agg = {"r_norm": r, "r_norm_std": 0.01, "c_norm": c, "c_norm_std": 0.1}
        return {
            "data": data | data_changes,
            "normalization": {"cost_limit": 25.0},
            "evaluation": {
                "episodes_per_seed": episodes,
                "methods": {m: {"aggregate": dict(agg)} for m in methods},
            },
        }

    main = run(0.3, 1.2, methods=("safefql", "bc", "bc_safe"))
    main["evaluation"]["methods"]["bc_safe"]["aggregate"]["r_norm"] = 0.28
    results = {
        "envs": {
            env_id: main,
            f"{env_id} [a]": run(0.35, 0.9),
            f"{env_id} [short]": run(0.5, 0.1, episodes=20),  # too few episodes
            f"{env_id} [recollected]": run(0.5, 0.1, episode_return={"mean": 12.0}),  # other data
            f"{env_id} [b]": run(0.2, 0.7, episodes=50),
            "SafetyCarGoal1Gymnasium-v0": run(0.9, 0.1),  # another task
            f"{env_id} [no-safefql]": run(0.1, 0.1, methods=("bc",)),
        }
    }
    points = pg.frontier_points(results, env_id, min_episodes=50)
    assert [(p[0], p[1], p[3], p[5]) for p in points["safefql"]] == [
        ("b", 0.2, 0.7, 50),
        ("a", 0.35, 0.9, 100),
        ("defaults", 0.3, 1.2, 100),
    ]
    assert [b[0] for b in points["baselines"]] == ["BC-all", "BC-safe"] and points["bc_safe_r"] == 0.28
    assert len(pg.frontier_points(results, env_id, min_episodes=10)["safefql"]) == 4
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    out = pg.main(["--results", str(path), "--out", str(tmp_path / "f.png")])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "defaults" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no run 'SafetyCarGoal2Gymnasium-v0' in the results"):
        pg.frontier_points(results, "SafetyCarGoal2Gymnasium-v0", 50)
    # anchored on the recollected variant: only the runs on its data, labelled by tag, its baselines
    other = pg.frontier_points(results, env_id, 50, tag="recollected")
    assert [p[0] for p in other["safefql"]] == ["recollected"] and other["baselines"] == []
    assert other["anchor"] == "[recollected]" and other["dataset_id"] == "bench/p-v0"
    with pytest.raises(SystemExit):
        pg.main(["--results", str(path), "--run", "nope"])
    assert "no run 'SafetyPointGoal1Gymnasium-v0 [nope]'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pg.main(["--results", str(tmp_path / "missing.json")])
    assert "no results file at" in capsys.readouterr().err


def test_bench_safety_gym_quick_falls_back_to_all_episodes_only_without_a_safe_one():
    from safefql.datasets.load import Transitions
    from safefql.training.config import SafeFQLConfig

    sg = _load("bench_safety_gym")

    def episodes(worst_h: list[float]) -> Transitions:
        n = 2 * len(worst_h)  # two steps per episode
        zeros = np.zeros(n, np.float32)
        return Transitions(
            observations=np.zeros((n, 3), np.float32),
            actions=np.zeros((n, 2), np.float32),
            rewards=zeros,
            costs=zeros,
            h=zeros,
            next_observations=np.zeros((n, 3), np.float32),
            terminals=zeros,
            masks=zeros + 1,
            timeouts=zeros,
            episode_ids=np.repeat(np.arange(len(worst_h)), 2),
            future_worst_h=np.repeat(np.asarray(worst_h, np.float32), 2),
        )

    config = SafeFQLConfig(flow_episodes="recovering", reward_episodes="safe")
    kept, note = sg.quick_episode_sets(config, episodes([0.3, -0.2]))  # one safe episode: unchanged
    assert kept == config and note is None
    fell, note = sg.quick_episode_sets(config, episodes([0.3, 0.1]))
    assert (fell.flow_episodes, fell.reward_episodes) == ("all", "all")
    assert "flow_episodes='recovering'" in note and "reward_episodes='safe'" in note
    plain = SafeFQLConfig(flow_episodes="all")
    assert sg.quick_episode_sets(plain, episodes([0.3])) == (plain, None)


def test_shield_tries_ensemble_is_pessimistic_and_parses_tries():
    tries = _load("safety_gym_shield_tries")

    class Member:
        def __init__(self, offset: float) -> None:
            self.offset = offset
            self.observation_space = self.action_space = None

        def act(self, obs, rng=None):
            return np.full_like(obs, self.offset)

        def safety_q(self, obs, action):
            return np.asarray(action, dtype=np.float64).sum(-1) + self.offset

    ens = tries.MaxEnsemble([Member(0.0), Member(0.5), Member(-1.0)], lead=2)
    a = np.array([[0.1, 0.2], [-0.3, 0.0]])
    assert ens.safety_q(a, a).tolist() == pytest.approx([0.8, 0.2])  # the largest member's Q_h
    assert ens.act(a).tolist() == [[-1.0, -1.0], [-1.0, -1.0]]  # the lead member acts
    assert tries.parse_try("safest:0.1") == {"kind": "goal", "fallback": "safest", "delta": 0.1, "k": 10}
    assert tries.parse_try("ensemble:samples:0.2:32")["kind"] == "ensemble"
    assert tries.parse_try("self:safest:0:16") == {"kind": "self", "fallback": "safest", "delta": 0, "k": 16}
    with pytest.raises(SystemExit, match="expected"):
        tries.parse_try("safest")


def test_shield_tries_teacher_source_samples_the_flow_teacher():
    import gymnasium as gym
    import jax

    from safefql.training.checkpoint import space_to_dict
    from safefql.training.config import SafeFQLConfig
    from safefql.training.policy import SafeFQLPolicy
    from safefql.training.safefql import create_train_state, flow_actions

    tries = _load("safety_gym_shield_tries")
    assert tries.parse_try("teacher:safest:0.1")["kind"] == "teacher"
    cfg = SafeFQLConfig(
        critic_hidden=(8,), value_hidden=(8,), actor_hidden=(8,), flow_hidden=(8,), flow_steps=4
    )
    agent = create_train_state(cfg, 3, 2, jax.random.key(0)).agent
    header = {
        "config": cfg.to_dict(),
        "observation_space": space_to_dict(gym.spaces.Box(-1.0, 1.0, (3,), np.float32)),
        "action_space": space_to_dict(gym.spaces.Box(-1.0, 1.0, (2,), np.float32)),
    }
    policy = SafeFQLPolicy.from_agent(agent, header)
    source = tries.TeacherSource(policy)
    obs = np.random.default_rng(0).uniform(-1, 1, (5, 3)).astype(np.float32)
    mode = np.asarray(flow_actions(agent, obs, np.zeros((5, 2), np.float32), 4))
    np.testing.assert_allclose(source.act(obs), mode, atol=1e-6)  # z = 0: the teacher's ODE from the origin
    assert source.act(obs[0]).shape == (2,)
    z = np.random.default_rng(1).standard_normal((5, 2), dtype=np.float32)
    drawn = np.asarray(flow_actions(agent, obs, z, 4))
    np.testing.assert_allclose(source.act(obs, np.random.default_rng(1)), drawn, atol=1e-6)
    np.testing.assert_allclose(source.safety_q(obs, mode), policy.safety_q(obs, mode), atol=1e-5)


def test_shield_rollout_account_splits_cost_into_entries_and_stays():
    diag = _load("diagnose_shield_rollouts")
    # Two episodes of 4 steps, concatenated: the cost of the state before and after each step.
    cost_before = np.array([0, 0, 1, 1, 0, 0, 0, 1], float)
    cost = np.array([0, 1, 1, 0, 0, 0, 1, 1], float)
    h = np.array([-1.0, -0.1, 0.05, 0.02, -0.5, -0.4, -0.05, 0.1])
    intervened = np.array([1, 1, 0, 0, 1, 0, 0, 1], float)
    q_proposed = h * 0.5
    r = {
        "h": h,
        "cost_before": cost_before,
        "cost": cost,
        "intervened": intervened,
        "q_proposed": q_proposed,
        "q_applied": q_proposed - 0.01,
    }
    s = diag.account(r, episodes=2)
    assert s["cost_per_episode"] == 2.0
    assert s["entries_per_episode"] == 1.0  # steps 1 and 6
    assert s["stay_steps_per_episode"] == 1.0  # steps 2 and 7
    assert s["entries"]["steps"] == 2 and s["entries"]["intervened"] == 0.5
    assert s["stays"]["intervened"] == 0.5
    assert s["entries"]["q_proposed"] == pytest.approx((-0.05 - 0.025) / 2)
    assert s["false_alarm_rate"] == pytest.approx(2 / 3)  # h < -0.3 at steps 0, 4, 5; intervened at 0 and 4
    assert s["q_inside_rollout"] == pytest.approx(np.mean([0.025, 0.01, 0.05]))
    assert s["pearson_q_h_rollout"] == pytest.approx(1.0)


def test_shield_rollout_inside_signature_reads_the_steps_inside_a_hazard():
    diag = _load("diagnose_shield_rollouts")

    class Critic:
        def safety_q(self, obs, action):
            return np.asarray(action, np.float64).sum(-1)

    obs = np.array([[0.0, 3.0, 4.0], [0.0, 0.0, 1.0], [9.0, 0.0, 0.0]], np.float32)
    action = np.array([[0.2, 0.1], [-0.5, 0.0], [1.0, 1.0]], np.float32)
    h = np.array([0.1, 0.05, -0.2])
    sig = diag.inside_signature(Critic(), obs, action, h, slice(1, 3))
    assert sig["steps"] == 2
    assert sig["q"] == pytest.approx((0.3 - 0.5) / 2) and sig["q_above_zero"] == 0.5
    assert sig["depth"] == pytest.approx(0.075) and sig["speed"] == pytest.approx((5.0 + 1.0) / 2)
    assert diag.inside_signature(Critic(), obs, action, -np.abs(h), slice(1, 3))["steps"] == 0


def test_shield_rollout_diagnosis_names_a_missing_checkpoint(tmp_path, capsys):
    diag = _load("diagnose_shield_rollouts")
    (tmp_path / "policy_seed0.eqx").write_bytes(b"")
    argv = ["--env", "car", "--run-dir", str(tmp_path), "--seeds", "2", "--delta", "0.1", "--tag", "t"]
    with pytest.raises(SystemExit):
        diag.main([*argv, "--out", str(tmp_path / "out.json")])
    assert "holds no policy_seed1.eqx" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_promote_safety_gym_run_swaps_the_main_run_and_a_variant(tmp_path, capsys):
    pr = _load("promote_safety_gym_run")
    env = "SafetyCarGoal1Gymnasium-v0"
    results = {
        "benchmark": "safety_gym",
        "envs": {env: {"command": "old"}, f"{env} [mix450]": {"command": "new --tag mix450"}, "Other": {}},
    }
    out = pr.promote(results, env, "mix450", "mix150", "more data. ", "2026-12-08")
    assert set(out["envs"]) == {env, f"{env} [mix150]", "Other"}
    assert out["envs"][f"{env} [mix150]"] == {"command": "old"}
    assert out["envs"][env]["command"] == "new --tag mix450"
    assert out["envs"][env]["promoted"] == {
        "from": f"{env} [mix450]",
        "at": "2026-12-08",
        "reason": "more data",
        "previous_main": f"{env} [mix150]",
    }
    assert f"{env} [mix450]" in results["envs"]  # the input is not changed
    for args, message in [
        (("nope", "mix150", "r"), "no run 'SafetyCarGoal1Gymnasium-v0 [nope]' to promote"),
        (("mix450", "mix450", "r"), "--old-main-tag must name a new tag"),
        (("mix450", "mix150", " "), "--reason must say why"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            pr.promote(results, env, *args, "d")
    failed = {"envs": {f"{env} [x]": {"error": "boom"}}}
    with pytest.raises(ValueError, match="failed run"):
        pr.promote(failed, env, "x", "y", "r", "d")
    taken = {"envs": {env: {}, f"{env} [a]": {}, f"{env} [b]": {}}}
    with pytest.raises(ValueError, match="exists already"):
        pr.promote(taken, env, "a", "b", "r", "d")

    path = tmp_path / "sg.json"
    path.write_text(json.dumps(results))
    pr.main(
        [env, "--tag", "mix450", "--old-main-tag", "mix150", "--reason", "more data", "--results", str(path)]
    )
    stored = json.loads(path.read_text())
    assert stored["envs"][env]["promoted"]["reason"] == "more data"
    mr = _load("make_readme")
    text = "\n".join(mr.render_safety_gym_entry(env, stored["envs"][env]))
    assert f"Stored as `{env} [mix450]` by that command, made the main run on " in text
    assert f"more data. The previous main run is the variant `{env} [mix150]`." in text
    with pytest.raises(SystemExit):  # the variant is gone now
        pr.main([env, "--tag", "mix450", "--old-main-tag", "x", "--reason", "r", "--results", str(path)])
    assert "no run" in capsys.readouterr().err

    # from another results file: its main run of the task replaces the main run here
    side = tmp_path / "side.json"
    side.write_text(json.dumps({"envs": {env: {"command": "bench --episodes 450 --out side.json"}}}))
    pr.main([env, "--old-main-tag", "v2", "--reason", "r", "--results", str(path), "--source", str(side)])
    stored = json.loads(path.read_text())["envs"]
    assert stored[env]["command"] == "bench --episodes 450 --out side.json"
    assert stored[env]["promoted"]["from"] == f"{env} in {side}"
    assert stored[f"{env} [v2]"]["command"] == "new --tag mix450" and f"{env} [mix150]" in stored
    assert "promoted" not in stored[f"{env} [v2]"]  # demoted: its promotion is history now
    assert stored[f"{env} [v2]"]["promotion_history"][0]["from"] == f"{env} [mix450]"
    with pytest.raises(SystemExit):
        pr.main([env, "--old-main-tag", "v3", "--reason", "r", "--results", str(path)])
    assert "--tag must name the variant to promote" in capsys.readouterr().err


def test_bench_data_subsets_cuts_disjoint_equal_parts_in_collection_order(tmp_path, monkeypatch, capsys):
    ds = _load("bench_data_subsets")
    ids = np.repeat(np.arange(7), 3)  # 7 episodes of 3 steps
    parts = ds.episode_parts(ids, 3)
    assert [p.tolist() for p in parts] == [[0, 1], [2, 3], [4, 5]]  # the 7th episode is left over
    assert ds.episode_parts(ids, 1)[0].tolist() == list(range(7))
    for bad in (0, 4):
        with pytest.raises(ValueError, match=f"cannot cut 7 episodes into {bad} parts"):
            ds.episode_parts(ids, bad)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    with pytest.raises(SystemExit):
        ds.main(["--dataset", "bench/missing-v0", "--out", str(tmp_path / "o.json")])
    assert "bench/missing-v0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ds.main(["--dataset", "x", "--parts", "0"])
    assert "--parts must be >= 1" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit):  # before any loading or training
        ds.main(["--dataset", "bench/missing-v0", "--out", str(bad)])
    assert "bad.json is not valid JSON" in capsys.readouterr().err


def test_bench_safety_gym_extend_reads_older_entries_and_skipped_baselines():
    sg = _load("bench_safety_gym")
    now = dict.fromkeys(sg.EXTEND_SETTINGS) | {"margin": "surrogate", "action_hold": 1, "switch_every": 0}
    now |= {"steps": 15000, "baseline_steps": 15000}
    old = {
        k: v for k, v in now.items() if k not in ("margin", "action_hold", "switch_every", "baseline_steps")
    }
    assert sg.extension_mismatches({"settings": old}, now) == []  # missing keys read as their old defaults
    assert sg.extension_mismatches({"settings": old}, now | {"baseline_steps": 30000}) == [
        "baseline_steps: stored 15000, now 30000"
    ]
    # inputs as the stored baselines saw them; they must agree; else SafeFQL's flag (absent: raw)
    raw_bc = {"safefql": {"config": {"normalize_observations": True}}, "bc": {"normalize_observations": None}}
    assert sg.extension_standardise({"training": raw_bc}) is False
    assert sg.extension_standardise({"training": {"safefql": {"config": {"normalize_observations": True}}}})
    assert sg.extension_standardise({"training": {"safefql": {"config": {}}}}) is False
    mixed = raw_bc | {"bc_safe": {"normalize_observations": True}}
    with pytest.raises(ValueError, match="differently scaled inputs"):
        sg.extension_standardise({"training": mixed})
    entry = {
        "training": {"safefql": {}, "bc_safe": {"steps": 5}},
        "evaluation": {"methods": {"bc_safe": {"aggregate": {"r_norm": 0.5, "c_norm": 0.5}}}},
    }
    new = {
        "training": {"bc_safe": {"skipped": "no zero-cost episode"}, "bc": {"steps": 1}},
        "evaluation": {"methods": {"bc": {"aggregate": {"r_norm": 0.9, "c_norm": 2.0}}}},
    }
    merged = sg.merge_extension(entry, new, {})
    assert merged["training"]["bc_safe"] == {"steps": 5}  # the stored row stays
    assert merged["extensions"] == [{"methods": ["bc"], "skipped": {"bc_safe": "no zero-cost episode"}}]


def test_bench_safety_gym_failed_extension_keeps_the_entry(tmp_path, monkeypatch, capsys):
    sg = _load("bench_safety_gym")
    env = "SafetyCarGoal1Gymnasium-v0"
    argv = ["--quick", "--envs", "car", "--methods", "bc", "--references", "random", "--extend"]
    out = tmp_path / "sg.json"
    stored = {
        "command": "first",
        "timestamp": "T0",
        "training": {"safefql": {"config": {"normalize_observations": True}}},
        "evaluation": {"methods": {}},
    }

    def run_env(env_id, args, console):
        raise RuntimeError("the env broke")

    monkeypatch.setattr(sg, "run_env", run_env)
    with pytest.raises(SystemExit):  # an extension never collects the data again
        sg.main([*argv, "--out", str(out)])
    assert "--extend needs --reuse-data" in capsys.readouterr().err
    quick = dict.fromkeys(sg.EXTEND_SETTINGS) | {"quick": True, "episodes": 3, "steps": 200, "seeds": 1}
    quick |= {"baseline_steps": 200, "eval_episodes": 2, "eval_max_steps": 200, "data_seed": 0, "seed": 0}
    quick |= {"calib_fraction": 0.1, "cost_limit": 25.0, "margin": "surrogate", "action_hold": 1}
    quick |= {"switch_every": 0}
    out.write_text(json.dumps({"benchmark": "safety_gym", "envs": {env: stored | {"settings": quick}}}))
    sg.main([*argv, "--reuse-data", "--out", str(out), "--work-dir", str(tmp_path)])
    entry = json.loads(out.read_text())["envs"][env]
    assert entry["command"] == "first" and entry["evaluation"] == {"methods": {}}
    (failed,) = entry["extensions"]
    assert failed["methods"] == ["bc", "scripted random"] and "the env broke" in failed["error"]
