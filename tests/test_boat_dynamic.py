"""BoatNavDynamic-v0: gymnasium API, physics (drift, thrust, torque, drag), failure set, reset options."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import safefql  # noqa: F401  (registers the ids)
from safefql.envs import boat_dynamic as bd
from safefql.envs.boat_dynamic import BoatNavDynamicEnv


@pytest.fixture(scope="module", autouse=True)
def oracle_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAFEFQL_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def run(env: BoatNavDynamicEnv, action, steps: int) -> np.ndarray:
    obs = None
    for _ in range(steps):
        obs = env.step(np.asarray(action, dtype=np.float32))[0]
    return obs


def test_check_env():
    check_env(BoatNavDynamicEnv(), skip_render_check=True)
    check_env(gym.make("safefql/BoatNavDynamic-v0").unwrapped, skip_render_check=True)


def test_model_parameters():
    env = BoatNavDynamicEnv()
    m = env.model
    assert m.opt.timestep == bd.SUBSTEP_DT and bd.DT == pytest.approx(0.005)
    assert [m.joint(i).name for i in range(m.njnt)] == ["x", "y", "yaw"]
    assert m.body("boat").mass[0] == bd.MASS and m.body("boat").inertia[2] == bd.YAW_INERTIA
    np.testing.assert_allclose(m.actuator_gear[:, 0], [bd.THRUST_GAIN, bd.TORQUE_GAIN])


def test_zero_action_drifts_with_the_current():
    env = BoatNavDynamicEnv()
    # from rest over ground: drag relative to the water accelerates the boat to the current speed (2 at y=0)
    env.reset(options={"state": (-3.0, 0.0, 0.0, 0.0, 0.0, 0.0)})
    obs = run(env, [0, 0], 400)
    assert obs[4] == pytest.approx(2.0, rel=0.03) and abs(obs[5]) < 1e-9 and obs[1] == 0.0
    # broadside to the current (sway drag): same end speed, reached faster
    env.reset(options={"state": (-3.0, 0.0, math.pi / 2, 0.0, 0.0, 0.0)})
    obs = run(env, [0, 0], 400)
    assert env.state[3] == pytest.approx(2.0, rel=1e-3) and abs(env.state[4]) < 1e-9
    # starting with the water (the default), the boat drifts exactly like BoatNav-v0 with zero thrust
    env.reset(options={"state": (-2.5, 1.5)})
    obs = run(env, [0, 0], 400)
    assert obs[0] == pytest.approx(-2.5 + 2.0 * (2 - 0.5 * 1.5**2), abs=1e-9) and obs[1] == pytest.approx(1.5)


def test_thrust_accelerates_along_heading():
    env = BoatNavDynamicEnv()
    psi = math.pi / 3
    env.reset(options={"state": (-2.0, 0.0, psi)})  # drifting with the water
    before = env.state
    run(env, [1, 0], 1)
    rel = env.state[3:5] - before[3:5]  # the current barely changes over one step
    # a = F / m = 5 m/s^2 along the heading, over DT = 0.005 s (drag still ~0)
    expected = bd.THRUST_GAIN / bd.MASS * bd.DT * np.array([math.cos(psi), math.sin(psi)])
    np.testing.assert_allclose(rel, expected, rtol=0.02, atol=1e-6)
    # terminal speed through the water: thrust = drag, 5 = 2u + u^2
    env.reset(options={"state": (-3.0, 0.0, 0.0)})
    obs = run(env, [1, 0], 200)
    assert obs[4] - 2.0 == pytest.approx(math.sqrt(1 + bd.THRUST_GAIN) - 1, rel=0.02)
    # reverse thrust slows the boat below the current
    env.reset(options={"state": (-3.0, 0.0, 0.0)})
    assert run(env, [-1, 0], 100)[4] < 1.0


def test_yaw_torque_turns_the_boat():
    env = BoatNavDynamicEnv()
    env.reset(options={"state": (-3.0, 0.0, 0.0)})
    obs = run(env, [0, 1], 400)
    # terminal yaw rate: 0.3 = 0.1 r + 0.02 r^2
    assert obs[6] == pytest.approx((-0.1 + math.sqrt(0.01 + 4 * 0.02 * 0.3)) / 0.04, rel=0.01)
    env.reset(options={"state": (-3.0, 0.0, 0.0)})
    obs = run(env, [0, -1], 20)
    assert obs[6] < 0 and obs[2] < 0  # clockwise


def test_info_types_failure_set_and_truncation():
    env = BoatNavDynamicEnv()
    obs, info = env.reset(seed=0)
    assert obs.shape == (7,) and obs.dtype == np.float64
    assert set(info) == {"cost", "h"} and all(type(v) is float for v in info.values())
    for t in range(1, 401):
        obs, r, term, trunc, info = env.step(env.action_space.sample())
        assert type(r) is float and term is False and trunc == (t == 400)
        assert all(type(v) is float for v in info.values()) and set(info) == {"cost", "h"}
        assert info["h"] == pytest.approx(float(bd.failure_margin(obs[:2])))
        assert info["cost"] == float(info["h"] > 0)
        assert obs[2] ** 2 + obs[3] ** 2 == pytest.approx(1.0)
        assert env.observation_space.contains(obs)
    assert env.reset(options={"state": (0.0, 1.95)})[1] == {"cost": 1.0, "h": pytest.approx(0.05)}  # bank
    assert env.reset(options={"state": (-0.5, 0.5)})[1] == {"cost": 1.0, "h": pytest.approx(0.4)}  # rock
    assert env.reset(options={"state": (1.0, 0.0)})[1]["cost"] == 0.0


def test_reward_is_pre_step_distance():
    env = BoatNavDynamicEnv()
    env.reset(options={"state": (0.0, 1.0)})
    assert env.step(np.zeros(2))[1] == pytest.approx(-math.hypot(1.5, 1.0))


def test_box_is_a_wall():
    env = BoatNavDynamicEnv()
    env.reset(options={"state": (1.9, 0.0, 0.0)})
    obs = run(env, [1, 0], 100)
    assert obs[0] == 2.0 and env.state[3] <= 1e-9  # pinned at the wall, no outward velocity left


def test_same_seed_same_episode():
    def episode(seed):
        env = BoatNavDynamicEnv()
        env.action_space.seed(seed)
        out = [env.reset(seed=seed)[0]]
        out += [env.step(env.action_space.sample())[0] for _ in range(40)]
        return np.array(out)

    np.testing.assert_array_equal(episode(2), episode(2))
    assert not np.array_equal(episode(2), episode(3))


def test_out_of_range_action_is_clipped():
    e1, e2 = BoatNavDynamicEnv(), BoatNavDynamicEnv()
    e1.reset(options={"state": (-1.0, 1.2, 0.3)})
    e2.reset(options={"state": (-1.0, 1.2, 0.3)})
    np.testing.assert_array_equal(run(e1, [4.0, -9.0], 5), run(e2, [1.0, -1.0], 5))


@pytest.mark.parametrize(
    ("action", "match"),
    [
        (np.array([np.nan, 0.0]), "NaN or inf"),
        (np.zeros(4), r"shape \(2,\)"),
        (np.zeros((2, 1)), r"shape \(2,\)"),
    ],
)
def test_bad_actions_raise(action, match):
    env = BoatNavDynamicEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(action)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"state": (3.0, 0.0)}, "outside the box"),
        ({"state": (0.0, np.inf)}, "NaN or inf"),
        ({"state": (0.0, 0.0, 0.0, 0.0)}, "length"),
        ({"state": (0.0, 0.0, 0.0, 50.0, 0.0, 0.0)}, "exceeds the observation bounds"),
        ({"start": 1}, "must be one of"),
        ({"goal": (0, 0)}, "unknown reset option"),
    ],
)
def test_bad_reset_options_raise(options, match):
    with pytest.raises(ValueError, match=match):
        BoatNavDynamicEnv().reset(options=options)


def test_bad_constructor_args_raise():
    with pytest.raises(ValueError, match="start must be one of"):
        BoatNavDynamicEnv(start="random")
    with pytest.raises(ValueError, match="render_mode"):
        BoatNavDynamicEnv(render_mode="human")


def test_reset_state_forms_and_starts():
    env = BoatNavDynamicEnv()
    obs, _ = env.reset(options={"state": (0.5, -1.0, math.pi / 2)})
    np.testing.assert_allclose(obs[:4], [0.5, -1.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(obs[4:], [0.0, -1.5, 0.0], atol=1e-12)  # drifting with c(-1) = 1.5 along +x
    env.reset(options={"state": (0.5, -1.0, 0.0, 0.3, -0.2, 1.0)})
    np.testing.assert_allclose(env.state, [0.5, -1.0, 0.0, 0.3, -0.2, 1.0])
    yaws = [env.reset(seed=s)[0][2] for s in range(30)]
    assert np.std(yaws) > 0.3  # uniform heading
    from safefql.envs.oracle import load_boat_oracle

    safe = BoatNavDynamicEnv(start="safe")
    starts = np.array([safe.reset(seed=s)[0] for s in range(40)])
    assert np.all(np.abs(starts[:, 1]) <= bd.Y_BANK - bd.SAFE_BANK_MARGIN)
    assert np.all(load_boat_oracle().is_safe(starts[:, :2]))
    np.testing.assert_array_equal(starts[:, 2:4], np.tile([0.0, 1.0], (40, 1)))


def test_render_rgb_array():
    env = BoatNavDynamicEnv(render_mode="rgb_array", width=120, height=96)
    env.reset(options={"state": (0.0, 0.0, 0.8)})
    try:
        img = env.render()
    except RuntimeError as e:
        pytest.skip(f"MuJoCo rendering unavailable in this process: {e}")
    assert img.shape == (96, 120, 3) and img.dtype == np.uint8 and img.std() > 5
    env.close()
    assert env._renderer is None
