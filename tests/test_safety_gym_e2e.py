"""End-to-end smoke test on Safety-Gymnasium PointGoal1: collect -> train -> load -> shield (CPU, < 60 s).

One short Minari dataset from the scripted lidar policies, a few SafeFQL updates with a tiny network, the
checkpoint loaded as a ``SafeFQLPolicy`` and used by ``SafeFQLShield`` around
``gym.make("SafetyPointGoal1Gymnasium-v0")`` in both modes. The numbers are meaningless (a few updates);
the test checks the plumbing: infos, shapes, spaces, and the space-mismatch error with a boat checkpoint.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import math
import warnings

import gymnasium as gym
import jax
import numpy as np
import pytest

import safefql  # noqa: F401  (registers the env ids)
from safefql.training.config import SafeFQLConfig

POINT = "SafetyPointGoal1Gymnasium-v0"
DATASET_ID = "test/point-goal1-e2e-v0"
OBS_DIM, ACT_DIM = 60, 2
SHIELD_KEYS = {
    "intervened",
    "proposed",
    "applied",
    "q_h_proposed",
    "q_h_applied",
    "delta",
    "mode",
    "episode_steps",
    "episode_interventions",
}
TINY = SafeFQLConfig(
    critic_hidden=(32,),
    value_hidden=(32,),
    actor_hidden=(32,),
    flow_hidden=(32,),
    batch_size=64,
    flow_steps=3,
    steps_per_call=25,
)

pytest.importorskip("safety_gymnasium")


def _make(env_id: str = POINT) -> gym.Env:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # gymnasium_robotics notice, Box(-inf, inf) checker
        return gym.make(env_id)


@pytest.fixture(scope="module")
def point_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Collect 2 episodes (2000 steps), train 50 tiny updates; module-scoped (the expensive part)."""
    from safefql.datasets.collect import collect
    from safefql.training.trainer import train

    root = tmp_path_factory.mktemp("sg-e2e")
    mp = pytest.MonkeyPatch()
    mp.setenv("MINARI_DATASETS_PATH", str(root / "minari"))
    try:
        summary = collect(POINT, "goal_lidar:0.5,hazard_aware:0.5", 2, 0, DATASET_ID, progress=False)
        result = train(
            DATASET_ID,
            out_dir=root / "run",
            config=TINY,
            steps=50,
            seed=0,
            calib_fraction=0.0,
            eval_episodes=0,
            progress=False,
        )
    finally:
        mp.undo()
    return {"summary": summary, "result": result, "root": root}


def test_collect_writes_point_goal_dataset(point_run: dict) -> None:
    s = point_run["summary"]
    assert s.env_id == POINT and s.dataset_id == DATASET_ID
    assert s.episodes == 2 and s.transitions == 2000  # 1000-step time limit, no termination on Goal tasks
    assert set(s.per_policy) == {"goal_lidar", "hazard_aware"}
    assert math.isfinite(s.mean_return) and s.mean_cost >= 0.0


def test_dataset_loads_with_surrogate_margin(point_run: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from safefql.datasets.load import load_transitions

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(point_run["root"] / "minari"))
    t = load_transitions(DATASET_ID)
    assert t.observations.shape == (2000, OBS_DIM) and t.actions.shape == (2000, ACT_DIM)
    assert np.all(np.abs(t.actions) <= 1.0)
    # binary cost -> h = kappa (25) inside the failure set, -1 outside (DESIGN.md section 1)
    assert set(np.unique(t.h).tolist()) <= {-1.0, 25.0}
    np.testing.assert_array_equal(t.h > 0, t.costs > 0)
    assert t.metadata["env_id"] == POINT and t.metadata["kappa"] == 25.0
    assert t.metadata["margin"] == "surrogate" and t.metadata["h_source"].startswith("surrogate")


def test_collect_with_hazard_distance_margin(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safefql.datasets.collect import collect
    from safefql.datasets.load import load_transitions

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    collect(POINT, "goal_lidar:1", 1, 0, "test/point-goal1-hd-v0", progress=False, margin="hazard_distance")
    t = load_transitions("test/point-goal1-hd-v0")
    meta = t.metadata
    assert meta["margin"] == "hazard_distance" and meta["kappa"] is None
    assert meta["h_source"].startswith("hazard_distance")
    # a distance in metres (hazard radius 0.2), not the surrogate's {-1, 25}; positive exactly when costly
    assert np.unique(t.h).size > 100 and t.h.max() <= 0.2 and t.h.min() < -0.3
    assert (t.costs > 0).any()
    np.testing.assert_array_equal(t.h > 0, t.costs > 0)
    with pytest.raises(ValueError, match="margin 'hazard_distance' is a Safety-Gymnasium option"):
        collect("safefql/BoatNav-v0", None, 1, 0, "test/boat-hd-v0", margin="hazard_distance")
    with pytest.raises(ValueError, match="margin must be one of"):
        collect(POINT, None, 1, 0, "test/point-bad-v0", margin="lidar")


def test_checkpoint_spaces_match_env(point_run: dict) -> None:
    from safefql.training.checkpoint import read_header
    from safefql.training.policy import SafeFQLPolicy

    result = point_run["result"]
    assert result.steps == 50 and result.env_id == POINT
    (path,) = result.policy_paths
    header = read_header(path)
    assert header["kind"] == "policy" and header["env_id"] == POINT
    policy = SafeFQLPolicy.load(path)
    env = _make()
    try:
        assert policy.observation_space.shape == env.observation_space.shape == (OBS_DIM,)
        assert policy.action_space == env.action_space
        obs, info = env.reset(seed=3)
        assert set(info) >= {"cost", "h"} and isinstance(info["h"], float)
    finally:
        env.close()
    a = policy.act(obs)
    assert a.shape == (ACT_DIM,) and np.all(np.abs(a) <= 1.0)
    assert np.isfinite(float(policy.safety_q(obs, a))) and np.isfinite(float(policy.safety_value(obs)))
    batch = np.stack([obs, obs, obs])
    assert policy.act(batch).shape == (3, ACT_DIM) and policy.safety_q(batch, policy.act(batch)).shape == (3,)
    np.testing.assert_allclose(policy.numpy().act(obs), a, atol=1e-5)


@pytest.mark.parametrize("mode", ["shield", "policy"])
def test_shield_steps_point_goal(point_run: dict, mode: str) -> None:
    from safefql.shields.wrapper import SafeFQLShield

    (path,) = point_run["result"].policy_paths
    env = SafeFQLShield(_make(), checkpoint=path, mode=mode)
    rng = np.random.default_rng(0)
    try:
        obs, info = env.reset(seed=1)
        assert obs.shape == (OBS_DIM,)
        assert set(info["shield"]) == SHIELD_KEYS and info["shield"]["episode_steps"] == 0
        assert isinstance(info["cost"], float) and isinstance(info["h"], float)
        interventions = 0
        for t in range(1, 41):
            action = None if mode == "policy" else rng.uniform(-1.0, 1.0, ACT_DIM).astype(np.float32)
            expected = env.act(obs)
            obs, reward, terminated, truncated, info = env.step(action)
            sh = info["shield"]
            assert obs.shape == (OBS_DIM,) and np.all(np.isfinite(obs))
            assert isinstance(reward, float) and not (terminated or truncated)
            assert set(info) >= {"cost", "h", "shield"} and info["cost"] >= 0.0
            assert info["h"] == (25.0 if info["cost"] > 0 else -1.0)
            assert set(sh) == SHIELD_KEYS and sh["mode"] == mode
            assert sh["proposed"].shape == sh["applied"].shape == (ACT_DIM,)
            assert np.all(np.abs(sh["applied"]) <= 1.0)
            assert math.isfinite(sh["q_h_proposed"]) and math.isfinite(sh["q_h_applied"])
            assert sh["episode_steps"] == t
            interventions += bool(sh["intervened"])
            if mode == "shield" and not sh["intervened"]:
                np.testing.assert_allclose(sh["applied"], action, atol=1e-6)
            if mode == "policy":  # the actor's (deterministic) action at the pre-step observation
                assert not sh["intervened"]
                np.testing.assert_allclose(sh["applied"], expected, atol=1e-5)
        assert sh["episode_interventions"] == interventions == env.episode_interventions
        assert env.episode_steps == 40
        # the shield also works as a plain policy on a batch
        assert env.act(np.stack([obs, obs])).shape == (2, ACT_DIM)
    finally:
        env.close()


def test_samples_fallback_picks_the_least_unsafe_actor_draw_on_point_goal(point_run: dict) -> None:
    from safefql.shields.wrapper import SafeFQLShield

    (path,) = point_run["result"].policy_paths
    env = SafeFQLShield(_make(), checkpoint=path, fallback="samples", delta=100.0, num_candidates=8)
    try:
        obs, _ = env.reset(seed=2)
        for _ in range(10):  # Q_h + 100 > 0 everywhere: every step falls back to the smallest-Q_h draw
            q_actor = float(env.fast_model.safety_q(obs, env.act(obs)))
            obs, *_, info = env.step(np.ones(ACT_DIM, dtype=np.float32))
            sh = info["shield"]
            assert sh["intervened"] and sh["q_h_applied"] <= q_actor + 1e-6
            assert not np.allclose(sh["applied"], sh["proposed"])
    finally:
        env.close()


def test_boat_checkpoint_on_point_goal_names_both_spaces(tmp_path) -> None:
    from safefql.envs import BOAT_ID
    from safefql.shields.wrapper import SafeFQLShield
    from safefql.training.checkpoint import save_checkpoint, space_to_dict
    from safefql.training.safefql import create_train_state

    boat = gym.make(BOAT_ID)
    header = {
        "kind": "policy",
        "config": TINY.to_dict(),
        "observation_space": space_to_dict(boat.observation_space),
        "action_space": space_to_dict(boat.action_space),
        "env_id": BOAT_ID,
    }
    boat.close()
    state = create_train_state(TINY, 2, 2, jax.random.PRNGKey(0))
    path = save_checkpoint(tmp_path / "boat_policy.eqx", state.agent, header)
    env = _make()
    try:
        with pytest.raises(ValueError, match="observation_space mismatch") as err:
            SafeFQLShield(env, checkpoint=path)
    finally:
        env.close()
    msg = str(err.value)
    assert "shape=(2,)" in msg and f"shape=({OBS_DIM},)" in msg  # names the model's and the env's space
