"""BoatNav-v0: equations, MuJoCo transitions, gymnasium API, reset options, vector env, rendering."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import safefql  # noqa: F401  (registers the ids)
from safefql.envs import boat
from safefql.envs.boat import BoatNavEnv, BoatNavVectorEnv

ROCKS = [(-0.5, 0.5, 0.4), (-1.0, -1.2, 0.5)]


# Independent re-implementation of DESIGN.md section 6 (plain Python, one state at a time).
def ref_h(x: float, y: float) -> float:
    return max(r - math.hypot(x - cx, y - cy) for cx, cy, r in ROCKS)


def ref_step(x: float, y: float, a0: float, a1: float) -> tuple[float, float]:
    a0, a1 = min(max(a0, -1.0), 1.0), min(max(a1, -1.0), 1.0)
    n = math.hypot(a0, a1)
    u0, u1 = (a0 / n, a1 / n) if n > 0 else (0.0, 0.0)
    x2 = x + 0.005 * (u0 + 2.0 - 0.5 * y**2)
    y2 = y + 0.005 * u1
    return min(max(x2, -3.0), 2.0), min(max(y2, -2.0), 2.0)


def ref_reward(x: float, y: float) -> float:
    return -math.hypot(x - 1.5, y)


@pytest.fixture(scope="module", autouse=True)
def oracle_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAFEFQL_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def test_constants():
    assert boat.BOX_LOW.tolist() == [-3.0, -2.0] and boat.BOX_HIGH.tolist() == [2.0, 2.0]
    assert boat.OBSTACLES.tolist() == [list(r) for r in ROCKS]
    assert boat.GOAL.tolist() == [1.5, 0.0]
    assert boat.DT == 0.005 and boat.EPISODE_STEPS == 400


def test_numpy_functions_match_reference_batched():
    rng = np.random.default_rng(0)
    p = rng.uniform(boat.BOX_LOW, boat.BOX_HIGH, size=(3, 50, 2))
    a = rng.uniform(-2, 2, size=(3, 50, 2))
    a[0, :5] = 0.0  # zero thrust
    h = boat.margin(p)
    nxt = boat.step_state(p, a)
    r = boat.reward(p)
    v = boat.velocity(p, a)
    assert h.shape == r.shape == (3, 50) and nxt.shape == v.shape == (3, 50, 2)
    for idx in np.ndindex(3, 50):
        x, y = p[idx]
        assert h[idx] == pytest.approx(ref_h(x, y), abs=1e-12)
        assert r[idx] == pytest.approx(ref_reward(x, y), abs=1e-12)
        np.testing.assert_allclose(nxt[idx], ref_step(x, y, *a[idx]), rtol=0, atol=1e-12)
    np.testing.assert_allclose(v[0, :5], np.stack([2 - 0.5 * p[0, :5, 1] ** 2, np.zeros(5)], -1), atol=1e-12)
    # unit thrust: speed relative to the water is 1
    rel = v[1:] - np.stack([2 - 0.5 * p[1:, :, 1] ** 2, np.zeros((2, 50))], -1)
    np.testing.assert_allclose(np.linalg.norm(rel, axis=-1), 1.0, atol=1e-12)


def test_numpy_functions_reject_bad_shapes():
    with pytest.raises(ValueError, match=r"p must have shape \(\.\.\., 2\)"):
        boat.margin(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"a must have shape"):
        boat.step_state(np.zeros(2), np.zeros(3))


def test_margin_known_values():
    np.testing.assert_allclose(boat.margin([[-0.5, 0.5], [-1.0, -1.2], [-0.5, 0.9], [1.5, 0.0]]),
                               [0.4, 0.5, 0.0, 0.4 - math.hypot(2.0, 0.5)], atol=1e-12)  # fmt: skip


def test_check_env():
    check_env(BoatNavEnv(), skip_render_check=True)
    check_env(gym.make("safefql/BoatNav-v0").unwrapped, skip_render_check=True)


def test_transitions_equal_independent_equations():
    env = BoatNavEnv()
    obs, info = env.reset(seed=3)
    rng = np.random.default_rng(1)
    x, y = obs
    for t in range(600):
        if t % 150 == 0:  # hit the box walls too
            env.reset(options={"state": rng.choice([(-2.99, 1.99), (1.99, -1.99), (0.0, 0.0)])})
            x, y = env.state
        a = rng.uniform(-1.6, 1.6, size=2).astype(np.float32)
        if t % 7 == 0:
            a[:] = 0.0
        obs, r, term, trunc, info = env.step(a)
        assert r == pytest.approx(ref_reward(x, y), abs=1e-12)
        x, y = ref_step(x, y, float(a[0]), float(a[1]))
        np.testing.assert_allclose(obs, (x, y), rtol=0, atol=1e-12)
        assert info["h"] == pytest.approx(ref_h(x, y), abs=1e-12)
        assert info["cost"] == float(ref_h(x, y) > 0)
        assert term is False
        x, y = obs  # follow the env (clipping at the wall is exact)


def test_mujoco_integrates_the_state():
    env = BoatNavEnv()
    env.reset(options={"state": (0.0, 1.0)})
    env.step(np.array([0.0, 1.0], dtype=np.float32))
    # MuJoCo's qvel holds the velocity that moved qpos: (2 - 0.5, 1)
    np.testing.assert_allclose(env.data.qvel, [1.5, 1.0])
    np.testing.assert_allclose(env.data.qpos, [0.0075, 1.005])
    assert env.model.opt.timestep == boat.DT and env.model.opt.integrator == 0  # Euler


def test_info_types_and_truncation():
    env = BoatNavEnv()
    obs, info = env.reset(seed=0)
    assert set(info) == {"cost", "h"} and all(type(v) is float for v in info.values())
    assert obs.dtype == np.float64 and obs.shape == (2,)
    for t in range(1, 401):
        obs, r, term, trunc, info = env.step(env.action_space.sample())
        assert type(r) is float and term is False and trunc == (t == 400)
        assert set(info) == {"cost", "h"} and all(type(v) is float for v in info.values())
        assert info["h"] == pytest.approx(ref_h(*obs), abs=1e-12)
        assert env.observation_space.contains(obs)


def test_gym_make_and_time_limit():
    env = gym.make("safefql/BoatNav-v0")
    assert env.spec.max_episode_steps == 400
    env.reset(seed=0)
    truncs = [env.step(np.zeros(2, dtype=np.float32))[3] for _ in range(400)]
    assert truncs[-1] and not any(truncs[:-1])


def test_cost_counts_steps_inside_rock():
    env = BoatNavEnv()
    _, info = env.reset(options={"state": (-0.5, 0.5)})
    assert info == {"cost": 1.0, "h": pytest.approx(0.4)}
    _, info = env.reset(options={"state": (1.0, 1.0)})
    assert info["cost"] == 0.0 and info["h"] < 0


def test_same_seed_same_episode():
    def episode(seed):
        env = BoatNavEnv()
        env.action_space.seed(seed)
        obs, _ = env.reset(seed=seed)
        out = [obs]
        for _ in range(50):
            out.append(env.step(env.action_space.sample())[0])
        return np.array(out)

    np.testing.assert_array_equal(episode(5), episode(5))
    assert not np.array_equal(episode(5), episode(6))


def test_out_of_range_action_is_clipped():
    e1, e2 = BoatNavEnv(), BoatNavEnv()
    e1.reset(options={"state": (-2.0, 0.3)})
    e2.reset(options={"state": (-2.0, 0.3)})
    o1 = e1.step(np.array([5.0, -0.5]))[0]
    o2 = e2.step(np.array([1.0, -0.5]))[0]
    np.testing.assert_array_equal(o1, o2)
    # clipping happens before normalisation: (5, -0.5) is not the direction of (1, -0.1)
    e2.reset(options={"state": (-2.0, 0.3)})
    assert not np.allclose(e2.step(np.array([1.0, -0.1]))[0], o1)


@pytest.mark.parametrize(
    ("action", "match"),
    [
        (np.array([np.nan, 0.0]), "NaN or inf"),
        (np.array([0.0, np.inf]), "NaN or inf"),
        (np.zeros(3), r"shape \(2,\)"),
        (np.zeros((1, 2)), r"shape \(2,\)"),
        (0.5, r"shape \(2,\)"),
    ],
)
def test_bad_actions_raise(action, match):
    env = BoatNavEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(action)


def test_step_before_reset_raises():
    with pytest.raises(gym.error.ResetNeeded):
        BoatNavEnv().step(np.zeros(2))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"state": (2.5, 0.0)}, "outside the box"),
        ({"state": (0.0, -2.1)}, "outside the box"),
        ({"state": (np.nan, 0.0)}, "NaN or inf"),
        ({"state": (0.0, 0.0, 0.0)}, "length"),
        ({"state": "ab"}, "numeric"),
        ({"start": "edge"}, "must be one of"),
        ({"seed": 3}, r"unknown reset option\(s\) \['seed'\]"),
        ({"state": (0.0, 0.0), "start": "safe"}, "mutually exclusive"),
    ],
)
def test_bad_reset_options_raise(options, match):
    with pytest.raises(ValueError, match=match):
        BoatNavEnv().reset(options=options)


def test_bad_constructor_args_raise():
    with pytest.raises(ValueError, match="start must be one of"):
        BoatNavEnv(start="anywhere")
    with pytest.raises(ValueError, match="render_mode"):
        BoatNavEnv(render_mode="human")
    with pytest.raises(ValueError, match="render size"):
        BoatNavEnv(width=4000)


def test_reset_state_and_start_options():
    env = BoatNavEnv()
    obs, info = env.reset(options={"state": [1.25, -0.5]})
    np.testing.assert_array_equal(obs, [1.25, -0.5])
    assert info["h"] == pytest.approx(ref_h(1.25, -0.5))
    starts = np.array([env.reset(seed=s, options={"start": "uniform"})[0] for s in range(200)])
    assert np.all(starts >= boat.BOX_LOW) and np.all(starts <= boat.BOX_HIGH)
    assert np.any(boat.margin(starts) > 0)  # uniform starts land in rocks ~6% of the time

    from safefql.envs.oracle import SAFE_START_MARGIN, load_boat_oracle

    safe_env = BoatNavEnv(start="safe")
    safe = np.array([safe_env.reset(seed=s)[0] for s in range(100)])
    assert np.all(load_boat_oracle().value(safe) <= -SAFE_START_MARGIN)
    assert np.all(boat.margin(safe) < 0)
    again = np.array([env.reset(seed=s, options={"start": "safe"})[0] for s in range(100)])
    np.testing.assert_array_equal(safe, again)


def test_vector_env_equals_sync_vector_of_single_envs():
    n = 4
    ref = gym.vector.SyncVectorEnv([BoatNavEnv for _ in range(n)])
    vec = BoatNavVectorEnv(n)
    o1, i1 = ref.reset(seed=11)
    o2, i2 = vec.reset(seed=11)
    np.testing.assert_array_equal(o1, o2)
    assert set(i1) == set(i2) == {"cost", "_cost", "h", "_h"}
    rng = np.random.default_rng(0)
    for t in range(850):  # crosses two autoresets
        a = rng.uniform(-1.3, 1.3, size=(n, 2)).astype(np.float32)
        r1, r2 = ref.step(a), vec.step(a)
        for x1, x2 in zip(r1[:4], r2[:4], strict=True):
            np.testing.assert_allclose(x2, x1, rtol=0, atol=1e-12, err_msg=f"step {t}")
        for k in ("cost", "h"):
            np.testing.assert_allclose(r2[4][k], r1[4][k], rtol=0, atol=1e-12)
    assert vec.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP


def test_vector_env_options_and_errors():
    vec = BoatNavVectorEnv(3, start="safe")
    obs, info = vec.reset(seed=0, options={"state": [[0.0, 0.0], [1.0, 1.0], [-0.5, 0.5]]})
    np.testing.assert_array_equal(info["cost"], [0.0, 0.0, 1.0])
    obs, _ = vec.reset(options={"state": (0.5, 0.5)})
    np.testing.assert_array_equal(obs, [[0.5, 0.5]] * 3)
    with pytest.raises(ValueError, match=r"shape \(2,\) or \(3, 2\)"):
        vec.reset(options={"state": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="outside the box"):
        vec.reset(options={"state": [[0.0, 0.0], [9.0, 0.0], [0.0, 0.0]]})
    with pytest.raises(ValueError, match="seed list must have length"):
        vec.reset(seed=[1, 2])
    vec.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions must have shape \(3, 2\)"):
        vec.step(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="NaN or inf"):
        vec.step(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="num_envs"):
        BoatNavVectorEnv(0)


def test_plot_scene():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    boat.plot_scene(ax)
    circles = [p for p in ax.patches if type(p).__name__ == "Circle"]
    assert sorted((c.center[0], c.center[1], c.radius) for c in circles) == sorted(ROCKS)
    assert ax.get_xlim()[0] < -3 and ax.get_xlim()[1] > 2
    plt.close(fig)


def _render_in_subprocess() -> str:
    code = (
        "import numpy as np; from safefql.envs.boat import BoatNavEnv\n"
        "e = BoatNavEnv(render_mode='rgb_array', width=160, height=128)\n"
        "e.reset(options={'state': (0.0, 0.0)})\n"
        "img = e.render(); e.close(); print(img.shape, img.dtype, int(img.std() > 5))\n"
    )
    env = {**os.environ, "MUJOCO_GL": "egl"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    if res.returncode != 0:
        pytest.skip(f"MuJoCo rendering unavailable (MUJOCO_GL=egl): {res.stderr.strip().splitlines()[-1]}")
    return res.stdout.strip()


def test_render_rgb_array():
    env = BoatNavEnv(render_mode="rgb_array", width=160, height=128)
    env.reset(options={"state": (0.0, 0.0)})
    try:
        img = env.render()
    except RuntimeError as e:
        assert "MUJOCO_GL" in str(e)
        # This process imported mujoco with an unusable GL backend; check in a fresh one.
        assert _render_in_subprocess() == "(128, 160, 3) uint8 1"
        return
    assert img.shape == (128, 160, 3) and img.dtype == np.uint8
    assert img.std() > 5  # not a blank frame
    env.step(np.array([0.0, 1.0]))
    env.reset(options={"state": (1.5, 1.5)})
    assert not np.array_equal(env.render(), img)  # the boat moved
    env.close()
    assert env._renderer is None
    check_env(gym.make("safefql/BoatNav-v0", render_mode="rgb_array").unwrapped)  # with its render checks


def test_render_without_mode_returns_none():
    env = BoatNavEnv()
    env.reset(seed=0)
    with pytest.warns(UserWarning, match="render_mode"):
        assert env.render() is None
    env.close()
