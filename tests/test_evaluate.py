"""evaluate(): side-by-side runs, report fields, JSON, table, plot, agents, batched == sequential, errors."""

from __future__ import annotations

import io
import json
import math
import textwrap

import gymnasium as gym
import numpy as np
import pytest
from rich.console import Console

import safefql  # noqa: F401  (registers the boat)
from safefql.shields.evaluate import BoatOracleModel, EvalReport, evaluate, import_agent

BOAT = "safefql/BoatNav-v0"
LINE_ID = "safefql_test/Line-v0"
NOCOST_ID = "safefql_test/LineNoCost-v0"


class LineEnv(gym.Env):
    """x' = x + 0.1 clip(a); failure set x > 0.5; reward x; 15 steps; seeded start uniform in [0, 0.3]."""

    metadata = {"render_modes": []}

    def __init__(self, report_cost: bool = True) -> None:
        self.observation_space = gym.spaces.Box(-2.0, 2.0, shape=(1,), dtype=np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.report_cost = report_cost
        self.x = 0.0

    def _info(self) -> dict:
        return {"cost": float(self.x > 0.5), "h": self.x - 0.5} if self.report_cost else {}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = float(self.np_random.uniform(0.0, 0.3))
        return np.array([self.x]), self._info()

    def step(self, action):
        self.x = float(np.clip(self.x + 0.1 * np.clip(float(np.asarray(action).reshape(())), -1, 1), -2, 2))
        return np.array([self.x]), self.x, False, False, self._info()


for _id, _kwargs in ((LINE_ID, {}), (NOCOST_ID, {"report_cost": False})):
    if _id not in gym.registry:
        gym.register(_id, entry_point=LineEnv, max_episode_steps=15, kwargs=_kwargs)


class LineModel:
    """Exact one-step critic for LineEnv; the actor stops."""

    delta = 0.0
    observation_space = gym.spaces.Box(-2.0, 2.0, shape=(1,), dtype=np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def safety_q(self, obs, action):
        return np.asarray(obs)[..., 0] + 0.1 * np.clip(np.asarray(action)[..., 0], -1, 1) - 0.5

    def act(self, obs, rng=None):
        return np.zeros(np.shape(obs), dtype=np.float32)


def push_right(obs):
    return np.array([1.0], dtype=np.float32)


@pytest.fixture(scope="module")
def oracle_model() -> BoatOracleModel:
    return BoatOracleModel()


@pytest.fixture(scope="module")
def boat_report(oracle_model) -> EvalReport:
    return evaluate(BOAT, "goal", shield=oracle_model, episodes=12, seed=2)


# ------------------------------------------------------------------------------------------------ report
def test_report_fields(boat_report):
    r = boat_report
    assert (r.env_id, r.agent, r.mode, r.fallback, r.starts, r.seed, r.episodes) == (
        BOAT,
        "goal",
        "shield",
        "nearest",
        "safe",
        2,
        12,
    )
    assert r.shield == "BoatOracleModel" and r.delta == pytest.approx(0.02) and r.batched
    assert set(r.runs()) == {"unshielded", "shielded"}
    for run in r.runs().values():
        assert run.returns.shape == run.costs.shape == run.violations.shape == (12,)
        assert (run.steps == 400).all()
        assert run.trajectories.shape == (12, 401, 2)
        assert np.array_equal(run.violations, run.costs > 0)
        assert run.violation_rate == pytest.approx(run.violations.mean())
        assert run.steps_per_s > 0 and run.wall_s > 0
    assert r.unshielded.intervention_rate == 0.0 and r.unshielded.mean_correction == 0.0
    assert r.shielded.intervention_rate > 0 and r.shielded.mean_correction > 0
    assert r.unshielded.violations.sum() == 4 and r.shielded.violations.sum() == 0


def test_same_start_states_for_both_runs(boat_report):
    r = boat_report
    assert np.array_equal(r.unshielded.trajectories[:, 0], r.start_states)
    assert np.array_equal(r.shielded.trajectories[:, 0], r.start_states)
    from safefql.envs.oracle import load_boat_oracle

    assert np.array_equal(r.start_states, load_boat_oracle().safe_starts(12, 2))
    again = evaluate(BOAT, "zero", shield=None, episodes=12, seed=2)
    assert np.array_equal(again.start_states, r.start_states) and again.shielded is None


def test_returns_match_the_trajectories(boat_report):
    from safefql.envs import boat

    run = boat_report.shielded
    expected = boat.reward(run.trajectories[:, :-1]).sum(axis=1)
    assert np.allclose(run.returns, expected)
    costs = (boat.margin(run.trajectories[:, 1:]) > 0).sum(axis=1)
    assert np.array_equal(run.costs, costs)


def test_json_written(boat_report, tmp_path):
    path = boat_report.to_json(tmp_path / "sub" / "report.json")
    data = json.loads(path.read_text())
    assert data["env_id"] == BOAT and data["agent"] == "goal" and data["episodes"] == 12
    sh = data["runs"]["shielded"]
    assert sh["violating_episodes"] == 0
    assert sh["mean_return"] == pytest.approx(boat_report.shielded.mean_return)
    assert len(sh["trajectories"]) == 12 and len(sh["trajectories"][0]) == 401
    assert np.allclose(data["start_states"], boat_report.start_states)
    small = json.loads(boat_report.to_json(tmp_path / "small.json", include_trajectories=False).read_text())
    assert "trajectories" not in small["runs"]["unshielded"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_table(boat_report):
    table = boat_report.table()
    assert table.row_count == 2
    buf = io.StringIO()
    Console(file=buf, width=200).print(table)
    text = buf.getvalue()
    assert "unshielded" in text and "shielded" in text and "0/12" in text


def test_plot(boat_report, tmp_path):
    path = boat_report.plot(tmp_path / "traj.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with pytest.raises(ValueError, match=r"must end in \.png, \.pdf or \.svg"):
        boat_report.plot(tmp_path / "traj.jpg")


# ------------------------------------------------------------------------------------------------ paths
@pytest.mark.parametrize("agent", ["goal", "random"])
def test_batched_equals_single_env_path(oracle_model, agent):
    kw = dict(shield=oracle_model, episodes=3, seed=2, starts="uniform")
    batched = evaluate(BOAT, agent, batched=True, **kw)
    single = evaluate(BOAT, agent, batched=False, **kw)
    assert batched.batched and not single.batched
    for name in ("unshielded", "shielded"):
        b, s = batched.runs()[name], single.runs()[name]
        assert np.allclose(b.trajectories, s.trajectories, rtol=0, atol=1e-9)
        assert np.allclose(b.returns, s.returns, rtol=1e-12)
        assert np.array_equal(b.costs, s.costs)
        assert np.array_equal(b.interventions, s.interventions)
        assert np.allclose(b.corrections, s.corrections)
    assert batched.shielded.interventions.sum() > 0


def test_policy_mode(oracle_model):
    r = evaluate(BOAT, "zero", shield=oracle_model, mode="policy", episodes=6, seed=0)
    assert r.shielded.violations.sum() == 0 and r.shielded.interventions.sum() == 0
    assert r.shielded.mean_return > r.unshielded.mean_return  # the oracle actor heads for the goal
    assert "SafeFQL policy" in str(r.table().columns[0]._cells)


# ------------------------------------------------------------------------------------------------ agents
def test_module_callable_agent(tmp_path, monkeypatch):
    (tmp_path / "my_test_agents.py").write_text(
        textwrap.dedent(
            """
            import numpy as np

            def right(obs):
                return np.array([1.0], dtype=np.float32)

            class _SB3Like:
                def predict(self, obs, deterministic=True):
                    assert deterministic
                    return np.array([0.5], dtype=np.float32), None

            agents = type("Agents", (), {"sb3": _SB3Like()})
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    by_name = evaluate(LINE_ID, "my_test_agents:right", shield=LineModel(), episodes=4, seed=1)
    direct = evaluate(LINE_ID, push_right, shield=LineModel(), episodes=4, seed=1)
    assert by_name.agent == "my_test_agents:right" and direct.agent == "push_right"
    for name in ("unshielded", "shielded"):
        assert np.array_equal(by_name.runs()[name].returns, direct.runs()[name].returns)
    assert by_name.unshielded.violations.all()  # pushing right for 15 steps crosses x = 0.5
    assert not by_name.shielded.violations.any() and by_name.shielded.interventions.min() > 0
    sb3 = evaluate(LINE_ID, "my_test_agents:agents.sb3", episodes=2, seed=1)
    assert sb3.unshielded.returns[0] > 0
    assert import_agent("my_test_agents:right")(None).tolist() == [1.0]


def test_generic_env_same_starts_and_caps():
    r = evaluate(LINE_ID, push_right, shield=LineModel(), episodes=5, seed=7, max_steps=4)
    assert r.starts == "uniform" and not r.batched
    assert (r.unshielded.steps == 4).all() and (r.shielded.steps == 4).all()
    expected = [gym.make(LINE_ID).reset(seed=7 + i)[0] for i in range(5)]
    assert np.allclose(r.start_states, np.stack(expected))
    assert r.unshielded.trajectories is None
    with pytest.raises(ValueError, match="plot needs boat trajectories"):
        r.plot("x.png")


def test_random_agent_is_seeded():
    a = evaluate(LINE_ID, "random", episodes=3, seed=4)
    b = evaluate(LINE_ID, "random", episodes=3, seed=4)
    c = evaluate(LINE_ID, "random", episodes=3, seed=5)
    assert np.array_equal(a.unshielded.returns, b.unshielded.returns)
    assert not np.array_equal(a.unshielded.returns, c.unshielded.returns)


# ------------------------------------------------------------------------------------------------ errors
def test_bad_inputs_raise(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown env id 'Nope-v9'"):
        evaluate("Nope-v9", "zero")
    with pytest.raises(ValueError, match="episodes must be a positive integer, got 0"):
        evaluate(LINE_ID, "zero", episodes=0)
    with pytest.raises(ValueError, match="unknown agent 'fly'"):
        evaluate(LINE_ID, "fly", episodes=1)
    with pytest.raises(ValueError, match=f"agent 'goal' .* is defined for {BOAT} only, not '{LINE_ID}'"):
        evaluate(LINE_ID, "goal", episodes=1)
    with pytest.raises(ValueError, match=f"starts='safe' needs a ground-truth safe set.*not '{LINE_ID}'"):
        evaluate(LINE_ID, "zero", starts="safe", episodes=1)
    with pytest.raises(ValueError, match=r"starts must be one of \('safe', 'uniform'\), got 'edge'"):
        evaluate(BOAT, "zero", starts="edge", episodes=1)
    with pytest.raises(ValueError, match="mode='policy' runs the SafeFQL actor: pass shield="):
        evaluate(LINE_ID, "zero", mode="policy", episodes=1)
    with pytest.raises(ValueError, match="mode must be one of"):
        evaluate(LINE_ID, "zero", shield=LineModel(), mode="both", episodes=1)
    with pytest.raises(ValueError, match="fallback must be one of"):
        evaluate(LINE_ID, "zero", shield=LineModel(), fallback="none", episodes=1)
    with pytest.raises(ValueError, match="max_steps must be a positive integer"):
        evaluate(LINE_ID, "zero", max_steps=0, episodes=1)
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        evaluate(LINE_ID, "no_such_module_xyz:act", episodes=1)
    with pytest.raises(ValueError, match="has no attribute 'nothing_here'"):
        evaluate(LINE_ID, "math:nothing_here", episodes=1)
    with pytest.raises(ValueError, match="must look like 'module:callable'"):
        import_agent("math:")
    with pytest.raises(ValueError, match="agent 'math:pi' is neither callable nor has a .predict method"):
        evaluate(LINE_ID, "math:pi", episodes=1)
    with pytest.raises(ValueError, match=r"returned an action of shape \(2,\); expected \(1,\)"):
        evaluate(LINE_ID, lambda obs: np.zeros(2), episodes=1)
    with pytest.raises(ValueError, match=f"env '{NOCOST_ID}' reports no info\\['cost'\\]"):
        evaluate(NOCOST_ID, "zero", episodes=1)
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        evaluate(LINE_ID, "zero", shield=tmp_path / "missing.eqx", episodes=1)
    with pytest.raises(ValueError, match=f"no pretrained SafeFQL model is shipped for env id '{LINE_ID}'"):
        evaluate(LINE_ID, "zero", shield="pretrained", episodes=1)


def test_nondeterministic_reset_is_detected():
    class Drifting(LineEnv):
        calls = 0

        def reset(self, *, seed=None, options=None):
            obs, info = super().reset(seed=seed, options=options)
            Drifting.calls += 1
            self.x = 0.01 * Drifting.calls
            return np.array([self.x]), info

    env_id = "safefql_test/Drifting-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=Drifting, max_episode_steps=3)
    with pytest.raises(RuntimeError, match="reset to different start states"):
        evaluate(env_id, "zero", shield=LineModel(), episodes=2)


def test_oracle_model_errors_and_protocol():
    with pytest.raises(ValueError, match="directions must be an integer >= 4"):
        BoatOracleModel(directions=2)
    with pytest.raises(ValueError, match="actor_margin must be a finite number >= 0"):
        BoatOracleModel(actor_margin=math.nan)
    m = BoatOracleModel()
    batch = np.array([[-2.5, 0.0], [-1.0, 0.5]])
    assert m.act(batch).shape == (2, 2) and m.safety_q(batch, m.act(batch)).shape == (2,)
    assert m.safety_value(batch)[1] > 0 > m.safety_value(batch)[0]
