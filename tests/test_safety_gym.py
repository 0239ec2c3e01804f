"""Safety-Gymnasium on the modern stack: patches, lazy ids, cost/h infos, rendering, scripted policies."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco's renderer

import math
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import safefql  # noqa: F401  (registers the ids)
from safefql.datasets import policies_safety_gym as sgp
from safefql.envs import safety_gym

POINT = "SafetyPointGoal1Gymnasium-v0"
CAR = "SafetyCarGoal1Gymnasium-v0"


def _make(env_id: str, **kwargs) -> gym.Env:
    with warnings.catch_warnings():
        # gymnasium_robotics prints a notice; Box(-inf, inf) observation spaces trigger checker warnings.
        warnings.simplefilter("ignore", UserWarning)
        return gym.make(env_id, **kwargs)


@pytest.fixture(scope="module")
def point_env():
    env = _make(POINT)
    yield env
    env.close()


@pytest.fixture(scope="module")
def car_env():
    env = _make(CAR)
    yield env
    env.close()


class _ToyCostEnv(gym.Env):
    """One-dimensional env whose step cost is 1 when the action is positive (or no cost key at all)."""

    def __init__(self, report_cost: bool = True) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.report_cost = report_cost

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        info = {"cost": float(action[0] > 0)} if self.report_cost else {"other": 1}
        return np.zeros(1, np.float32), 0.0, False, False, info


# ------------------------------------------------------------------------------------------------
# Registration and import behaviour
# ------------------------------------------------------------------------------------------------
def test_import_safefql_registers_lazily_without_importing_safety_gymnasium():
    code = (
        "import sys, safefql, gymnasium as gym\n"
        "print('safety_gymnasium' in sys.modules)\n"
        f"s = gym.registry['{POINT}']\n"
        "print(s.entry_point, s.max_episode_steps)\n"
        f"print(gym.registry['{CAR}'].max_episode_steps, end=' ')\n"
        "print(gym.registry['SafetyPointCircle1Gymnasium-v0'].max_episode_steps)\n"
        "from safefql.envs.safety_gym import apply_compat_patches\n"
        "print(sorted(apply_compat_patches()), apply_compat_patches())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    lines = out.stdout.split("\n")
    assert lines[0] == "False"
    assert lines[1] == f"{safety_gym.ENTRY_POINT} 1000"
    assert lines[2] == "1000 500"
    # First call: the gymnasium-side fixes (the import hook came with `import safefql`); second call: none.
    aliases = ", ".join(
        f"'alias gymnasium.wrappers.{m}'"
        for m in ("autoreset", "compatibility", "env_checker", "normalize", "time_limit")
    )
    assert lines[3] == f"['EnvSpec.apply_api_compatibility', 'EnvSpec.autoreset', {aliases}] ()"


def test_plain_import_of_safety_gymnasium_after_safefql_warns_nothing_and_keeps_our_ids():
    # The import hook patches safety_gymnasium as it loads and keeps our registrations: no "Overriding
    # environment" warnings (turned into errors here) and gym.make still gives the cost/h wrapper.
    code = (
        "import warnings; warnings.simplefilter('error')\n"
        "import safefql, gymnasium as gym\n"
        "import safety_gymnasium\n"
        f"print(gym.registry['{POINT}'].entry_point)\n"
        f"env = gym.make('{POINT}')\n"
        "obs, info = env.reset(seed=0)\n"
        "print(sorted(info))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split("\n")
    assert lines[0] == safety_gym.ENTRY_POINT
    assert lines[1] == "['cost', 'goal_met', 'h']"


def test_registration_table_matches_safety_gymnasium():
    sg = safety_gym.import_safety_gymnasium()
    from safety_gymnasium.utils.registration import safe_registry

    expected = set()
    for safe_id in safe_registry:
        name, _, version = safe_id.partition("-")
        expected.add(f"{name}Gymnasium-{version}")
    assert expected == set(safety_gym.SAFETY_GYM_IDS)
    assert len(expected) == 298
    for gym_id, settings in safety_gym.SAFETY_GYM_SPECS.items():
        name, _, version = gym_id.partition("-")
        theirs = gym.registry[f"{name[: -len('Gymnasium')]}-{version}"]
        assert theirs.max_episode_steps == settings["max_episode_steps"], gym_id
        assert theirs.reward_threshold == settings.get("reward_threshold"), gym_id
        assert gym.registry[gym_id].entry_point == safety_gym.ENTRY_POINT
    assert sg.__name__ == "safety_gymnasium"
    assert safety_gym.register_safety_gym_envs() == ()  # idempotent: nothing left to register


def test_patches_idempotent_and_in_place():
    safety_gym.import_safety_gymnasium()
    names = [
        f"gymnasium.wrappers.{m}"
        for m in ("compatibility", "autoreset", "env_checker", "normalize", "time_limit")
    ]
    before = [sys.modules[n] for n in names]
    assert safety_gym.apply_compat_patches() == ()
    assert safety_gym.apply_compat_patches() == ()
    assert [sys.modules[n] for n in names] == before
    hooks = [f for f in sys.meta_path if getattr(f, "_safefql_safety_gym_hook", False)]
    assert len(hooks) == 1

    from gymnasium.wrappers import TimeLimit
    from safety_gymnasium.assets.color import COLOR
    from safety_gymnasium.bases import base_agent, underlying
    from safety_gymnasium.utils import registration

    assert sys.modules["gymnasium.wrappers.time_limit"].TimeLimit is TimeLimit
    assert all(isinstance(hash(c), int) for c in COLOR.values())  # hashable: accepted as dataclass defaults
    from safety_gymnasium.assets.geoms import Hazards

    assert Hazards().color is COLOR["hazard"]
    np.testing.assert_array_equal(COLOR["hazard"], [0, 0, 1, 0.25])
    assert registration.EnvSpec is safety_gym._EnvSpecCompat
    assert getattr(underlying.OffScreenViewer, "_safefql_patched", False)
    assert getattr(base_agent.BaseAgent._init_jnt_sensors, "_safefql_patched", False)
    with pytest.raises(ValueError, match="apply_api_compatibility"):
        sys.modules["gymnasium.wrappers.compatibility"].EnvCompatibility(None)


def test_safety_gymnasium_make_keeps_its_six_tuple_api():
    sg = safety_gym.import_safety_gymnasium()
    env = sg.make("SafetyPointGoal1-v0")
    env.reset(seed=0)
    out = env.step(np.zeros(2))
    assert len(out) == 6
    assert env._max_episode_steps == 1000  # safety_gymnasium's own SafeTimeLimit (a 0.28-era TimeLimit alias)
    env.close()


def test_multi_agent_stub_raises_clear_import_error():
    import types

    module = types.ModuleType("stub")
    safety_gym._multi_agent_stub(module)
    with pytest.raises(ImportError, match="gymnasium-robotics"):
        module.make_ma("Ant", "2x4")


def test_import_safety_gymnasium_reports_missing_package(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.delitem(sys.modules, "safety_gymnasium")
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "safety_gymnasium" else real_find_spec(name, *args),
    )
    with pytest.raises(ImportError, match="safety_gymnasium is not installed"):
        safety_gym.import_safety_gymnasium()


def test_make_rejects_unknown_id():
    with pytest.raises(ValueError, match="unknown Safety-Gymnasium id"):
        safety_gym.make_safety_gym_env("SafetyPointGoal9Gymnasium-v0")


# ------------------------------------------------------------------------------------------------
# The made envs
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", [POINT, CAR])
def test_make_spec_infos_and_five_tuple(env_id, point_env, car_env):
    env = point_env if env_id == POINT else car_env
    assert env.spec.id == env_id
    assert env.spec.max_episode_steps == 1000
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert set(info) == {"cost", "h", "goal_met"}
    assert type(info["cost"]) is float and type(info["h"]) is float and type(info["goal_met"]) is bool
    assert info["cost"] == 0.0 and info["h"] == -1.0  # Safety-Gymnasium never starts inside a hazard
    rng = np.random.default_rng(0)
    for _ in range(5):
        out = env.step(rng.uniform(-1, 1, 2))
        assert len(out) == 5
        obs, reward, terminated, truncated, info = out
        assert type(reward) is float and type(terminated) is bool and type(truncated) is bool
        assert {k: type(v) for k, v in info.items()} == {"cost": float, "h": float, "goal_met": bool}
    # Lists work (safety_gymnasium's own np.array(action, copy=False) refuses them on NumPy 2).
    env.step([0.1, -0.2])


def test_fast_reset_changes_only_the_skybox(point_env):
    # fast_reset (default without render_mode) compiles the world with a 32-px builtin skybox instead of
    # the 3259-px star_hd PNGs; observations, rewards and costs are identical.
    slow = _make(POINT, fast_reset=False)
    actions = np.random.default_rng(7).uniform(-1, 1, (60, 2))
    runs = []
    for env in (point_env, slow):
        obs, info = env.reset(seed=21)
        out = [np.concatenate([obs, [0.0, info["cost"]]])]
        for a in actions:
            obs, r, _, _, info = env.step(a)
            out.append(np.concatenate([obs, [r, info["cost"]]]))
        runs.append(np.stack(out))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert point_env.unwrapped.task.model.tex_width[0] == 32
    assert slow.unwrapped.task.model.tex_width[0] > 1000
    slow.close()


def test_time_limit_truncates_at_max_episode_steps():
    env = _make(POINT, max_episode_steps=7)
    env.reset(seed=1)
    flags = [env.step(np.zeros(2))[3] for _ in range(7)]
    assert flags == [False] * 6 + [True]
    env.close()


def test_same_seed_same_episode(point_env):
    rng = np.random.default_rng(3)
    actions = rng.uniform(-1, 1, (20, 2))
    runs = []
    for _ in range(2):
        obs, _ = point_env.reset(seed=11)
        traj = [obs] + [point_env.step(a)[0] for a in actions]
        runs.append(np.stack(traj))
    np.testing.assert_array_equal(runs[0], runs[1])
    other, _ = point_env.reset(seed=12)
    assert not np.array_equal(other, runs[0][0])


def test_cost_and_h_follow_the_hazards(point_env):
    # Drive goal-greedily (blind to hazards) until the agent has been inside a hazard; every step's
    # cost must match the simulator's hazard distances, and h the surrogate rule.
    pol = sgp.make_safety_gym_policy("goal_lidar", point_env)
    rng = np.random.default_rng(0)
    task = point_env.unwrapped.task
    seen_cost = 0
    for seed in range(6):
        obs, info = point_env.reset(seed=seed)
        for _ in range(400):
            obs, _, _, _, info = point_env.step(pol(obs, rng))
            dists = [task.agent.dist_xy(p) for p in task.hazards.pos]
            inside = min(dists) <= task.hazards.size
            assert info["cost"] == float(inside)
            assert info["h"] == (25.0 if inside else -1.0)
            seen_cost += inside
        if seen_cost >= 5:
            break
    assert seen_cost >= 5


@pytest.mark.parametrize(("env_id", "tol"), [(POINT, 1e-9), (CAR, 1e-2)])
def test_hazard_distance_margin_is_the_distance_the_lidar_reads(env_id, tol):
    # margin="hazard_distance": h = r - d to the nearest hazard, so h > 0 exactly on the costly steps, and
    # (hazards within the lidar's 3 m) h is what the observation's hazard lidar reads: 1 - d / 3 per bin,
    # so the margin of logged data is a function of its observations. The Car's lidar reads in the body
    # frame, which tilts as it drives (up to ~5 mm off the planar distance that decides the cost).
    env = _make(env_id, margin="hazard_distance")
    layout = sgp.observation_layout(env)
    task = env.unwrapped.task
    pol = sgp.make_safety_gym_policy("goal_lidar", env)
    rng = np.random.default_rng(0)
    hs, costs = [], []
    for seed in range(4):
        obs, info = env.reset(seed=seed)
        hs.append(info["h"])
        costs.append(info["cost"])
        for _ in range(300):
            obs, _, _, _, info = env.step(pol(obs, rng))
            assert set(info) == {"cost", "h", "goal_met"} and isinstance(info["h"], float)
            nearest = layout.part(obs, "hazards_lidar").max()
            assert nearest > 0.0
            lidar_h = task.hazards.size - task.lidar_conf.max_dist * (1.0 - nearest)
            assert info["h"] == pytest.approx(lidar_h, abs=tol)
            hs.append(info["h"])
            costs.append(info["cost"])
    hs, costs = np.asarray(hs), np.asarray(costs)
    assert np.array_equal(hs > 0.0, costs > 0.0)
    assert (costs > 0).sum() >= 5 and hs.min() < -0.5  # inside a hazard and far from all of them
    assert np.all(hs <= task.hazards.size)
    # The margin is a constructor argument: Minari's JSON spec -> gym.make keeps it.
    remade = gym.make(gym.envs.registration.EnvSpec.from_json(env.spec.to_json()))
    assert remade.spec.kwargs["margin"] == "hazard_distance"
    _, info = remade.reset(seed=0)
    assert info["h"] not in (-1.0, 25.0)
    env.close()
    remade.close()


def test_hazard_distance_margin_refuses_tasks_it_does_not_describe():
    # Goal2 also constrains the vases (contact costs), so a hazard distance would miss costly steps.
    with pytest.raises(ValueError, match=r"GoalLevel2 constrains \['hazards', 'vases'\]"):
        _make("SafetyPointGoal2Gymnasium-v0", margin="hazard_distance")
    with pytest.raises(ValueError, match="needs a Safety-Gymnasium navigation env"):
        safety_gym.SafetyGymCostInfo(_ToyCostEnv(), margin="hazard_distance")
    with pytest.raises(ValueError, match="margin must be one of"):
        safety_gym.SafetyGymCostInfo(_ToyCostEnv(), margin="distance")


def test_cost_info_wrapper_rule_and_kappa():
    env = safety_gym.SafetyGymCostInfo(_ToyCostEnv(), kappa=7.5)
    obs, info = env.reset(seed=0)
    assert info == {"cost": 0.0, "h": -1.0, "goal_met": False}
    assert env.step(np.array([0.5], np.float32))[4] == {"cost": 1.0, "h": 7.5, "goal_met": False}
    assert env.step(np.array([-0.5], np.float32))[4] == {"cost": 0.0, "h": -1.0, "goal_met": False}
    check_env(env, skip_render_check=True)  # a plain 5-tuple env: the wrapper keeps it valid


def test_kappa_through_gym_make():
    env = _make(POINT, kappa=10.0)
    assert env.spec.kwargs["kappa"] == 10.0
    wrapper = env.env
    while not isinstance(wrapper, safety_gym.SafetyGymCostInfo):
        wrapper = wrapper.env
    assert wrapper.kappa == 10.0
    # What Minari does when it recreates an env from a dataset: JSON spec -> gym.make.
    remade = gym.make(gym.envs.registration.EnvSpec.from_json(env.spec.to_json()))
    assert remade.spec.id == POINT
    assert remade.spec.kwargs["kappa"] == 10.0
    remade.reset(seed=0)
    assert remade.step(np.zeros(2))[4]["h"] in (-1.0, 10.0)
    env.close()
    remade.close()


def test_cost_info_wrapper_errors():
    env = safety_gym.SafetyGymCostInfo(_ToyCostEnv(report_cost=False))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"needs info\['cost'\]"):
        env.step(np.zeros(1, np.float32))
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="kappa must be a finite positive"):
            safety_gym.SafetyGymCostInfo(_ToyCostEnv(), kappa=bad)


@pytest.mark.parametrize("env_id", [POINT, CAR])
def test_check_env_on_wrapped_env(env_id):
    # check_env runs on the 5-tuple env from gym.make: env.unwrapped is safety_gymnasium's Builder, whose
    # 6-tuple step fails Gymnasium's API by design. The render check is skipped because it also tries
    # render_mode="human", which needs a display (glfw aborts the process without one); rgb_array and
    # depth_array rendering are tested below.
    env = _make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        check_env(env, skip_render_check=True)
    env.close()


def test_render_rgb_array():
    env = _make(CAR, render_mode="rgb_array", width=64, height=48)
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8
    assert frame.std() > 5.0  # an actual picture, not a blank buffer
    env.step(np.ones(2))
    assert env.render().shape == (48, 64, 3)
    env.close()


# ------------------------------------------------------------------------------------------------
# Scripted policies
# ------------------------------------------------------------------------------------------------
def test_observation_layouts(point_env, car_env):
    point = sgp.observation_layout(point_env)
    car = sgp.observation_layout(car_env)
    assert point == sgp.ObservationLayout.from_sizes(sgp.POINT_GOAL_LAYOUT_SIZES)
    assert car == sgp.ObservationLayout.from_sizes(sgp.CAR_GOAL_LAYOUT_SIZES)
    assert (
        point.obs_dim == 60
        and point.slices["goal_lidar"] == (12, 28)
        and point.slices["hazards_lidar"] == (28, 44)
    )
    assert (
        car.obs_dim == 72 and car.slices["goal_lidar"] == (24, 40) and car.slices["hazards_lidar"] == (40, 56)
    )
    assert sgp.agent_kind(point_env) == "point" and sgp.agent_kind(car_env) == "car"
    # The goal lidar part of a real observation is the simulator's lidar reading.
    obs, _ = point_env.reset(seed=4)
    task = point_env.unwrapped.task
    np.testing.assert_allclose(point.part(obs, "goal_lidar"), task._obs_lidar(task.goal.pos, task.goal.group))


def test_action_semantics(point_env, car_env):
    # The documented control conventions, measured: forward motion and counter-clockwise turns.
    def run(env, action, steps=40):
        env.reset(seed=1)
        for _ in range(steps):
            obs = env.step(np.asarray(action, float))[0]
        layout = sgp.observation_layout(env)
        return layout.part(obs, "velocimeter"), layout.part(obs, "gyro")

    vel, _ = run(point_env, [1.0, 0.0])
    assert vel[0] > 0.5 and abs(vel[1]) < 0.1 * vel[0]
    _, gyro = run(point_env, [0.0, 1.0])
    assert gyro[2] > 1.0
    vel, _ = run(car_env, [1.0, 1.0])
    assert vel[1] < -0.3 and abs(vel[0]) < 0.2 * abs(vel[1])  # car forward is body -y
    _, gyro = run(car_env, [1.0, -1.0])
    assert gyro[2] > 0.5


def test_lidar_direction_inverts_the_aliased_lidar():
    bins = 16
    size = 2 * np.pi / bins
    angles = np.array([0.1, 1.0, 3.0, 5.5, 2 * np.pi - 0.05])
    lidar = np.zeros((angles.size, bins))
    for k, theta in enumerate(angles):  # safety_gymnasium's _obs_lidar_pseudo for one object, s = 0.6
        b = int(theta / size)
        alias = theta / size - b
        lidar[k, b] = 0.6
        lidar[k, (b + 1) % bins] = alias * 0.6
        lidar[k, (b - 1) % bins] = (1 - alias) * 0.6
    est, peak = sgp.lidar_direction(lidar)
    np.testing.assert_allclose(est, angles, atol=1e-12)
    np.testing.assert_allclose(peak, 0.6)
    assert sgp.lidar_direction(np.zeros((1, bins)))[1][0] == 0.0


@pytest.mark.parametrize("name", sorted(sgp.SAFETY_GYM_POLICIES))
def test_policy_shapes_bounds_determinism(name, point_env, car_env):
    for env in (point_env, car_env):
        pol = sgp.make_safety_gym_policy(name, env)
        obs = np.stack([env.reset(seed=s)[0] for s in range(3)])
        obs[1] = env.step(np.ones(2))[0]  # a moving state too
        a1 = pol(obs, np.random.default_rng(5))
        a2 = pol(obs, np.random.default_rng(5))
        assert a1.shape == (3, 2) and np.all(np.abs(a1) <= 1.0)
        np.testing.assert_array_equal(a1, a2)
        single = pol(obs[0], np.random.default_rng(5))
        assert single.shape == (2,)
        np.testing.assert_array_equal(single, a1[0])
        assert env.action_space.contains(single)
        with pytest.raises(ValueError, match="expected obs of shape"):
            pol(obs[:, :-1], np.random.default_rng(0))


def test_goal_lidar_turns_toward_the_goal():
    layout = sgp.ObservationLayout.from_sizes(sgp.POINT_GOAL_LAYOUT_SIZES)
    for agent, turn_sign in (("point", lambda a: a[1]), ("car", lambda a: a[0] - a[1])):
        pol = sgp.GoalLidarPolicy(layout, agent)
        fwd = sgp.FORWARD_ANGLE[agent]
        for offset, sign in ((0.8, 1.0), (-0.8, -1.0)):
            obs = np.zeros((1, layout.obs_dim))
            theta = (fwd + offset) % (2 * np.pi)
            b = int(theta / (2 * np.pi / 16))
            obs[0, 12 + b] = 0.5
            action = pol(obs, np.random.default_rng(0))[0]
            assert np.sign(turn_sign(action)) == sign


def test_noise_changes_actions_and_validation(point_env):
    obs = point_env.reset(seed=0)[0][None]
    clean = sgp.make_safety_gym_policy("hazard_aware", point_env)(obs, np.random.default_rng(0))
    noisy = sgp.make_safety_gym_policy("noisy_hazard_aware", point_env)(obs, np.random.default_rng(0))
    assert not np.allclose(clean, noisy)
    assert sgp.make_safety_gym_policy("goal_lidar", point_env, noise=0.7).noise == 0.7
    layout = sgp.observation_layout(point_env)
    with pytest.raises(ValueError, match="unknown Safety-Gymnasium policy"):
        sgp.make_safety_gym_policy("teleport", point_env)
    with pytest.raises(ValueError, match="needs an env, or both layout= and agent="):
        sgp.make_safety_gym_policy("goal_lidar", layout=layout)
    with pytest.raises(ValueError, match="agent must be one of"):
        sgp.make_safety_gym_policy("goal_lidar", layout=layout, agent="doggo")
    with pytest.raises(ValueError, match="noise must be a finite number >= 0"):
        sgp.GoalLidarPolicy(layout, "point", noise=-0.1)
    with pytest.raises(ValueError, match="search_turn must be a finite angle"):
        sgp.GoalLidarPolicy(layout, "point", search_turn=math.nan)
    with pytest.raises(ValueError, match="max_speed must be a finite number >= 0"):
        sgp.HazardAwarePolicy(layout, "point", max_speed=-1.0)
    with pytest.raises(ValueError, match="hazard_threshold must lie in"):
        sgp.HazardAwarePolicy(layout, "point", hazard_threshold=1.0)
    with pytest.raises(ValueError, match="observation has no part 'hazards_lidar'"):
        sgp.HazardAwarePolicy(sgp.ObservationLayout.from_sizes([("goal_lidar", 16)]), "point")
    with pytest.raises(ValueError, match="outside"):
        sgp.ObservationLayout({"goal_lidar": (10, 30)}, 20)
    with pytest.raises(ValueError, match="not a Safety-Gymnasium navigation env"):
        sgp.observation_layout(gym.make("CartPole-v1"))
    with pytest.raises(ValueError, match="supports agents|support agents"):
        sgp.agent_kind(gym.make("CartPole-v1"))
    assert set(sgp.list_safety_gym_policies()) == {
        "goal_lidar",
        "noisy_goal_lidar",
        "hazard_aware",
        "noisy_hazard_aware",
        "hazard_recovery",
        "noisy_hazard_recovery",
        "random",
    }
    with pytest.raises(ValueError, match="inside_reading must lie in"):
        sgp.HazardRecoveryPolicy(layout, "point", inside_reading=1.0)
    with pytest.raises(ValueError, match="exit_speed must be a finite number >= 0"):
        sgp.HazardRecoveryPolicy(layout, "point", exit_speed=math.inf)


def _hazard_obs(layout: sgp.ObservationLayout, agent: str, offset: float, reading: float) -> np.ndarray:
    """A still agent, one hazard at ego angle forward + offset read at ``reading``, the goal ahead."""
    obs = np.zeros((1, layout.obs_dim))
    fwd = sgp.FORWARD_ANGLE[agent]
    position = ((fwd + offset) % (2 * np.pi)) / (2 * np.pi / 16)  # aliased as safety_gymnasium does
    b, alias = int(position), position - int(position)
    hazards = np.zeros(16)
    hazards[[b, (b + 1) % 16, (b - 1) % 16]] = reading * np.array([1.0, alias, 1.0 - alias])
    obs[0, slice(*layout.slices["hazards_lidar"])] = hazards
    obs[0, layout.slices["goal_lidar"][0] + int((fwd % (2 * np.pi)) / (2 * np.pi / 16))] = 0.5
    return obs


def test_hazard_recovery_steers_out_of_a_hazard_and_is_hazard_aware_outside():
    for agent, sizes in (("point", sgp.POINT_GOAL_LAYOUT_SIZES), ("car", sgp.CAR_GOAL_LAYOUT_SIZES)):
        layout = sgp.ObservationLayout.from_sizes(sizes)
        recover = sgp.make_safety_gym_policy("hazard_recovery", layout=layout, agent=agent)
        aware = sgp.HazardAwarePolicy(layout, agent, hazard_threshold=0.85, repulsion=4.0, max_speed=0.4)
        rng = np.random.default_rng(0)

        def forward(a: np.ndarray, agent: str = agent) -> float:  # the forward command of either agent
            return float(a[0] if agent == "point" else (a[0] + a[1]) / 2)

        def turn(a: np.ndarray, agent: str = agent) -> float:  # > 0: counter-clockwise
            return float(a[1] if agent == "point" else (a[0] - a[1]) / 2)

        inside = sgp.HAZARD_EDGE_READING + 0.02
        ahead = recover(_hazard_obs(layout, agent, 0.3, inside), rng)[0]
        behind = recover(_hazard_obs(layout, agent, np.pi + 0.3, inside), rng)[0]
        assert forward(ahead) < -0.5  # hazard centre ahead: back out, although the goal is ahead too
        assert forward(behind) > 0.5  # behind: drive on
        # The centre 0.3 rad counter-clockwise of the forward (backward) axis: the way out is 0.3 rad
        # counter-clockwise of the backward (forward) axis, so the agent turns counter-clockwise.
        assert turn(ahead) > 0 and turn(behind) > 0
        mirrored = recover(_hazard_obs(layout, agent, -0.3, inside), rng)[0]
        assert forward(mirrored) < -0.5 and turn(mirrored) < 0
        for offset, reading in ((0.1, 0.5), (0.1, 0.9), (2.0, inside - 0.03)):
            obs = _hazard_obs(layout, agent, offset, reading)
            np.testing.assert_array_equal(recover(obs, rng), aware(obs, rng))


def _rollouts(env, name: str, episodes: int, steps: int) -> tuple[float, float]:
    pol = sgp.make_safety_gym_policy(name, env)
    rng = np.random.default_rng(0)
    total_r = total_c = 0.0
    for e in range(episodes):
        obs, _ = env.reset(seed=100 + e)
        for _ in range(steps):
            obs, r, term, trunc, info = env.step(pol(obs, rng))
            total_r += r
            total_c += info["cost"]
            if term or trunc:
                break
    return total_r / episodes, total_c / episodes


@pytest.mark.slow
@pytest.mark.parametrize("env_id", [POINT, CAR])
def test_policies_behave(env_id, point_env, car_env):
    # Fixed seeds, 3 episodes of 300 steps each; measured here (mean return / cost per episode):
    # Point goal_lidar 5.2 / 19.0, hazard_aware 4.2 / 0.0, random -0.5 / 0.0;
    # Car goal_lidar 7.1 / 9.0, hazard_aware 5.3 / 0.0, random -0.3 / 39.7.
    env = point_env if env_id == POINT else car_env
    goal_r, goal_c = _rollouts(env, "goal_lidar", 3, 300)
    safe_r, safe_c = _rollouts(env, "hazard_aware", 3, 300)
    rand_r, _ = _rollouts(env, "random", 3, 300)
    assert goal_r > rand_r + 3.0  # reaches goals; random hovers around 0
    assert goal_c > 5.0  # blind to hazards: drives through them
    assert safe_c < 0.3 * goal_c  # markedly lower cost
    assert safe_r > 2.0  # still makes progress


@pytest.mark.slow
def test_hazard_recovery_enters_slowly_and_leaves_at_once(point_env):
    # Fixed seeds, 3 episodes of 300 steps on PointGoal1; measured here (cost steps / entries / median
    # speed in a hazard): goal_lidar 57 / 4 / 1.13 m/s, hazard_recovery 19 / 15 / 0.06 m/s.
    layout = sgp.observation_layout(point_env)

    def in_hazard(name: str) -> tuple[int, int, float]:
        pol, rng = sgp.make_safety_gym_policy(name, point_env), np.random.default_rng(0)
        steps = entries = 0
        speeds = []
        for e in range(3):
            obs, _ = point_env.reset(seed=100 + e)
            was_inside = False
            for _ in range(300):
                obs, _, _, _, info = point_env.step(pol(obs, rng))
                inside = info["cost"] > 0
                steps += inside
                entries += inside and not was_inside
                was_inside = inside
                if inside:
                    speeds.append(np.linalg.norm(layout.part(obs, "velocimeter")[:2]))
        return steps, entries, float(np.median(speeds)) if speeds else math.nan

    goal_steps, goal_entries, goal_speed = in_hazard("goal_lidar")
    steps, entries, speed = in_hazard("hazard_recovery")
    assert entries >= 5 and steps <= 2 * entries  # it slips in often and is out again within ~2 steps
    assert goal_steps >= 10 * goal_entries  # the reward-greedy agent crosses whole hazards
    assert speed < 0.2 < 0.5 < goal_speed
