"""SafeFQLShield / SafeFQLVectorShield: decisions, info, counters, vector equality, errors, doctests.

A tiny 1-D env with a wall and an exact analytic model (one-step look-ahead of the wall margin, which is a
perfect safety critic there), plus the boat with the ground-truth HJ model (``BoatOracleModel``).
"""

from __future__ import annotations

import copy
import doctest
import importlib
import math

import gymnasium as gym
import numpy as np
import pytest

import safefql  # noqa: F401  (registers the boat)
from safefql.shields.evaluate import BoatOracleModel, evaluate
from safefql.shields.pretrained import PRETRAINED_DIR, pretrained_path
from safefql.shields.wrapper import DEFAULT_NUM_SPREAD, SafeFQLShield, SafeFQLVectorShield, spread_candidates

WALL = 0.5
SPEED = 0.1
WALL_ID = "safefql_test/Wall-v0"


class WallEnv(gym.Env):
    """x' = x + 0.1 clip(a); the wall is x > 0.5 (h = x - 0.5); reward x; ``horizon`` steps; seeded starts
    uniform in ``start`` (or ``options={"x": x0}``); ``nan_at``: the step whose observation is NaN."""

    metadata = {"render_modes": []}

    def __init__(self, nan_at: int | None = None, horizon: int = 20, start: tuple = (-1.0, 0.0)) -> None:
        self.observation_space = gym.spaces.Box(-2.0, 2.0, shape=(1,), dtype=np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.nan_at, self.horizon, self.start = nan_at, horizon, start
        self.x, self.t = 0.0, 0
        self.last_action = None

    def _obs(self) -> np.ndarray:
        return np.array([math.nan if self.t == self.nan_at else self.x])

    def _info(self) -> dict:
        h = self.x - WALL
        return {"cost": float(h > 0), "h": h}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = (
            float(options["x"]) if options and "x" in options else float(self.np_random.uniform(*self.start))
        )
        self.t = 0
        return self._obs(), self._info()

    def step(self, action):
        self.last_action = action
        a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(()), -1, 1))
        self.x = float(np.clip(self.x + SPEED * a, -2.0, 2.0))
        self.t += 1
        return self._obs(), self.x, False, self.t >= self.horizon, self._info()


if WALL_ID not in gym.registry:
    gym.register(WALL_ID, entry_point=WallEnv, max_episode_steps=20)


class WallModel:
    """Exact critic for WallEnv: Q_h(x, a) = h(x + 0.1 clip(a)); the actor stops (a = 0)."""

    delta = 0.0

    def __init__(self, actor_value: float = 0.0) -> None:
        self.observation_space = gym.spaces.Box(-2.0, 2.0, shape=(1,), dtype=np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.actor_value = actor_value
        self.calls = {"act": 0, "safety_q": 0}

    def safety_q(self, obs, action):
        self.calls["safety_q"] += 1
        x = np.asarray(obs, dtype=np.float64)[..., 0]
        a = np.clip(np.asarray(action, dtype=np.float64)[..., 0], -1, 1)
        return x + SPEED * a - WALL

    def act(self, obs, rng=None):
        self.calls["act"] += 1
        shape = np.shape(obs)
        a = np.full(shape, self.actor_value, dtype=np.float32)
        if rng is not None:
            a = a + rng.normal(scale=0.1, size=shape).astype(np.float32)
        return np.clip(a, -1, 1)


class WallModelWithNumpy(WallModel):
    """A model whose .numpy() returns a separate twin, to check which one the hot path uses."""

    def __init__(self) -> None:
        super().__init__()
        self.twin = WallModel()

    def numpy(self):
        return self.twin


def wall_shield(**kwargs) -> SafeFQLShield:
    return SafeFQLShield(WallEnv(), checkpoint=kwargs.pop("checkpoint", WallModel()), **kwargs)


# ------------------------------------------------------------------------------------------------ basics
def test_safe_action_passes_untouched():
    shield = wall_shield()
    obs, info = shield.reset(options={"x": -0.5})
    action = np.array([0.7], dtype=np.float32)
    obs, reward, terminated, truncated, info = shield.step(action)
    s = info["shield"]
    assert s["intervened"] is False
    assert np.array_equal(s["applied"], s["proposed"])
    assert s["proposed"].tolist() == pytest.approx([0.7])
    assert shield.unwrapped.last_action is action  # the agent's own object reached the env
    assert obs[0] == pytest.approx(-0.5 + 0.07)
    assert s["q_h_proposed"] == pytest.approx(-0.5 + 0.07 - WALL)
    assert s["q_h_applied"] == s["q_h_proposed"]


def test_unsafe_action_replaced_nearest_and_actor():
    # At x = 0.45 the wall allows a <= 0.5. "nearest" walks from a = 1 towards the actor's 0 in steps of 0.1.
    shield = wall_shield()
    shield.reset(options={"x": 0.45})
    obs, *_, info = shield.step(np.array([1.0], dtype=np.float32))
    s = info["shield"]
    assert s["intervened"] is True
    assert s["applied"].tolist() == pytest.approx([0.5])
    assert s["q_h_proposed"] == pytest.approx(0.05)
    assert s["q_h_applied"] <= 1e-12
    assert obs[0] == pytest.approx(0.5)

    shield = wall_shield(fallback="actor")
    shield.reset(options={"x": 0.45})
    obs, *_, info = shield.step(np.array([1.0], dtype=np.float32))
    assert info["shield"]["intervened"] is True
    assert info["shield"]["applied"].tolist() == [0.0]
    assert obs[0] == pytest.approx(0.45)


def test_nearest_with_no_feasible_candidate_takes_smallest_q():
    # Already inside the wall: nothing is feasible; the smallest Q_h on the segment 1 -> -1 is the actor's -1.
    shield = wall_shield(checkpoint=WallModel(actor_value=-1.0), num_candidates=4)
    shield.reset(options={"x": 0.9})
    *_, info = shield.step(np.array([1.0], dtype=np.float32))
    assert info["shield"]["intervened"] is True
    assert info["shield"]["applied"].tolist() == [-1.0]
    assert info["shield"]["q_h_applied"] == pytest.approx(0.9 - 0.1 - WALL)


def test_spread_candidates_rescue_an_unsafe_actor():
    # The actor pushes into the wall too (a = 1), so the proposal-to-actor segment holds no safe action; the
    # fixed candidates spread over the box do, and the nearest feasible one (a = 0.5) is taken.
    shield = wall_shield(checkpoint=WallModel(actor_value=1.0))
    shield.reset(options={"x": 0.45})
    *_, info = shield.step(np.array([1.0], dtype=np.float32))
    assert info["shield"]["applied"].tolist() == pytest.approx([0.5])
    assert info["shield"]["q_h_applied"] <= 1e-12
    spread = spread_candidates(shield.action_space, DEFAULT_NUM_SPREAD)
    assert spread.shape == (DEFAULT_NUM_SPREAD, 1) and np.unique(spread).size == DEFAULT_NUM_SPREAD
    assert spread.min() >= -1.0 and spread.max() <= 1.0 and 0.5 in spread
    # without them the shield can only pick the least unsafe point of the segment: the actor's a = 1
    shield = wall_shield(checkpoint=WallModel(actor_value=1.0), num_spread=0)
    shield.reset(options={"x": 0.45})
    *_, info = shield.step(np.array([1.0], dtype=np.float32))
    assert info["shield"]["applied"].tolist() == [1.0] and info["shield"]["q_h_applied"] > 0


def test_samples_fallback_takes_the_feasible_actor_draw_nearest_the_proposal():
    # The actor's draws scatter around 0 (std 0.1): all are feasible at x = 0.45 (the wall allows a <= 0.5),
    # so the draw nearest the proposal a = 1 -- the largest -- is executed.
    model = WallModel()
    shield = wall_shield(checkpoint=model, fallback="samples", num_candidates=16, rng=5)
    shield.reset(options={"x": 0.45})
    *_, info = shield.step(np.array([1.0], dtype=np.float32))
    draws = np.random.default_rng(5).normal(scale=0.1, size=(16, 1)).astype(np.float32)  # WallModel.act
    assert info["shield"]["intervened"] is True
    assert info["shield"]["applied"].tolist() == pytest.approx([draws.max()])
    assert 0.0 < info["shield"]["applied"][0] <= 0.5 and info["shield"]["q_h_applied"] <= 0.0
    assert model.calls == {"act": 2, "safety_q": 2}  # z = 0 and the 16 draws; proposal and 17 candidates


def test_samples_fallback_without_a_feasible_draw_takes_the_smallest_q():
    # The actor pushes into the wall (draws around 1): nothing is feasible, the least unsafe draw is taken.
    shield = wall_shield(checkpoint=WallModel(actor_value=1.0), fallback="samples", num_candidates=8, rng=2)
    shield.reset(options={"x": 0.45})
    *_, info = shield.step(np.array([1.0], dtype=np.float32))
    draws = np.clip(1.0 + np.random.default_rng(2).normal(scale=0.1, size=(8, 1)).astype(np.float32), -1, 1)
    assert info["shield"]["applied"].tolist() == pytest.approx([draws.min()])
    assert info["shield"]["q_h_applied"] == pytest.approx(0.45 + SPEED * draws.min() - WALL, abs=1e-6)


def test_safest_fallback_takes_the_draw_with_the_smallest_q():
    # The draws of the first samples test (all feasible): "samples" takes the one nearest the proposal (the
    # largest), "safest" the one with the smallest Q_h, the draw that steps furthest back from the wall.
    shield = wall_shield(checkpoint=WallModel(), fallback="safest", num_candidates=16, rng=5)
    shield.reset(options={"x": 0.45})
    *_, info = shield.step(np.array([1.0], dtype=np.float32))
    draws = np.random.default_rng(5).normal(scale=0.1, size=(16, 1)).astype(np.float32)
    assert info["shield"]["intervened"] is True
    assert draws.min() < 0.0  # the actor's own action (0) is a candidate but not the safest here
    assert info["shield"]["applied"].tolist() == pytest.approx([draws.min()])
    assert info["shield"]["q_h_applied"] == pytest.approx(0.45 + SPEED * draws.min() - WALL, abs=1e-6)
    # a safe proposal still passes untouched
    *_, info = shield.step(np.array([-1.0], dtype=np.float32))
    assert info["shield"]["intervened"] is False and info["shield"]["applied"].tolist() == [-1.0]


def test_samples_fallback_is_seeded_by_reset():
    def run(seed):
        shield = wall_shield(fallback="samples")
        shield.reset(seed=seed, options={"x": 0.45})
        return [shield.step(np.array([1.0], dtype=np.float32))[4]["shield"]["applied"][0] for _ in range(3)]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_out_of_range_proposal_is_clipped_before_the_test():
    shield = wall_shield()
    shield.reset(options={"x": 0.0})
    *_, info = shield.step(np.array([3.0]))
    assert info["shield"]["proposed"].tolist() == [1.0]
    assert info["shield"]["intervened"] is False
    assert shield.unwrapped.last_action.tolist() == [1.0]


def test_delta_makes_the_shield_stricter():
    shield = wall_shield(delta=0.2)
    shield.reset(options={"x": 0.15})
    *_, info = shield.step(np.array([1.0], dtype=np.float32))  # Q_h = -0.25, plus delta 0.2 -> -0.05: ok
    assert info["shield"]["intervened"] is False
    *_, info = shield.step(np.array([1.0], dtype=np.float32))  # Q_h = -0.15 -> unsafe at delta 0.2
    assert info["shield"]["intervened"] is True
    assert info["shield"]["q_h_applied"] + 0.2 <= 1e-12
    assert info["shield"]["delta"] == 0.2


def test_policy_mode_ignores_the_action():
    shield = wall_shield(checkpoint=WallModel(actor_value=0.3), mode="policy")
    shield.reset(options={"x": 0.0})
    obs1, *_, info1 = shield.step(None)
    obs2, *_, info2 = shield.step(np.array([-1.0]))
    assert info1["shield"]["applied"].tolist() == pytest.approx([0.3])
    assert info2["shield"]["applied"].tolist() == pytest.approx([0.3])
    assert info2["shield"]["proposed"].tolist() == pytest.approx([0.3])
    assert obs2[0] - obs1[0] == pytest.approx(0.03)
    assert info2["shield"]["intervened"] is False and info2["shield"]["mode"] == "policy"
    assert info2["shield"]["q_h_applied"] == pytest.approx(obs1[0] + 0.03 - WALL)


def test_info_keys_types_and_counters_reset_per_episode():
    keys = {
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
    shield = wall_shield()
    obs, info = shield.reset(options={"x": 0.3})
    assert set(info["shield"]) == keys and info["shield"]["episode_steps"] == 0
    assert math.isnan(info["shield"]["q_h_proposed"])
    push = np.array([1.0], dtype=np.float32)
    interventions = []
    for _ in range(5):
        obs, reward, terminated, truncated, info = shield.step(push)
        interventions.append(info["shield"]["intervened"])
        s = info["shield"]
        assert set(s) == keys
        assert isinstance(s["intervened"], bool) and isinstance(s["q_h_proposed"], float)
        assert isinstance(s["proposed"], np.ndarray) and s["proposed"].dtype == np.float64
        assert isinstance(s["episode_steps"], int) and isinstance(s["delta"], float)
        assert "cost" in info and "h" in info  # the env's own keys survive
    # x: 0.3 -> 0.4 -> 0.5 (both allowed), then every push is cut to 0.
    assert interventions == [False, False, True, True, True]
    assert (s["episode_steps"], s["episode_interventions"]) == (5, 3)
    assert (shield.episode_steps, shield.episode_interventions) == (5, 3)
    obs, info = shield.reset(options={"x": 0.3})
    assert info["shield"]["episode_interventions"] == 0 and shield.episode_interventions == 0
    *_, info = shield.step(push)
    assert (info["shield"]["episode_steps"], info["shield"]["episode_interventions"]) == (1, 0)


def test_act_and_is_safe():
    shield = wall_shield(checkpoint=WallModel(actor_value=-0.25))
    shield.reset(options={"x": 0.0})
    assert shield.act(np.array([0.1])).tolist() == [-0.25]
    assert shield.act(np.zeros((3, 1))).shape == (3, 1)
    assert shield.is_safe(np.array([0.45]), np.array([0.5])) is True
    assert shield.is_safe(np.array([0.45]), np.array([0.6])) is False
    batch = shield.is_safe(np.array([[0.0], [0.45]]), np.array([[1.0], [1.0]]))
    assert batch.tolist() == [True, False]
    with pytest.raises(ValueError, match="NaN"):
        shield.act(np.array([math.nan]))
    with pytest.raises(ValueError, match="NaN"):
        shield.is_safe(np.array([math.nan]), np.array([0.0]))


def test_hot_path_uses_numpy_twin_and_jax_backend_uses_model():
    model = WallModelWithNumpy()
    shield = wall_shield(checkpoint=model)
    assert shield.fast_model is model.twin
    shield.reset(options={"x": 0.45})
    shield.step(np.array([1.0], dtype=np.float32))
    assert (
        model.calls["safety_q"] == 0 and model.twin.calls["safety_q"] == 2
    )  # proposal + candidates (1 call)
    model2 = WallModelWithNumpy()
    shield = wall_shield(checkpoint=model2, backend="jax")
    assert shield.fast_model is model2
    with pytest.raises(ValueError, match=r"backend='numpy' needs a model with a \.numpy\(\)"):
        wall_shield(checkpoint=WallModel(), backend="numpy")


def test_nearest_fallback_is_one_batched_call():
    model = WallModel()
    shield = wall_shield(checkpoint=model, num_candidates=7)
    shield.reset(options={"x": 0.45})
    shield.step(np.array([1.0], dtype=np.float32))
    assert model.calls == {"act": 1, "safety_q": 2}


def test_stochastic_actor_is_seeded():
    def run(seed):
        shield = wall_shield(mode="policy", stochastic=True, rng=seed)
        shield.reset(options={"x": 0.0})
        return [shield.step(None)[4]["shield"]["applied"][0] for _ in range(5)]

    assert run(3) == run(3)
    assert run(3) != run(4)
    det = wall_shield(mode="policy")
    det.reset(options={"x": 0.0})
    assert det.step(None)[4]["shield"]["applied"][0] == 0.0


def test_record_constructor_args_does_not_copy_the_model():
    class NoCopy(WallModel):
        def __deepcopy__(self, memo):
            raise AssertionError("the model must not be deep-copied")

    env = gym.make(WALL_ID)
    shield = SafeFQLShield(env, checkpoint=NoCopy(), fallback="actor")
    assert isinstance(shield._saved_kwargs["checkpoint"], str)
    assert "NoCopy" in shield._saved_kwargs["checkpoint"]
    spec = shield.spec  # deep-copies the recorded kwargs: must not touch the model
    assert spec.additional_wrappers[-1].kwargs["fallback"] == "actor"
    copy.deepcopy(shield._saved_kwargs)


# ------------------------------------------------------------------------------------------------ errors
def test_space_mismatch_names_both():
    class Wide(WallModel):
        def __init__(self):
            super().__init__()
            self.observation_space = gym.spaces.Box(-3.0, 3.0, shape=(1,), dtype=np.float64)

    with pytest.raises(
        ValueError, match=r"observation_space mismatch: the model expects Box.*-3\.0.*env has Box.*-2\.0"
    ):
        wall_shield(checkpoint=Wide())

    class TwoD(WallModel):
        def __init__(self):
            super().__init__()
            self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

    with pytest.raises(
        ValueError,
        match=r"action_space mismatch: the model expects Box\(shape=\(2,\).*env has Box\(shape=\(1,\)",
    ):
        wall_shield(checkpoint=TwoD())
    with pytest.raises(ValueError, match="observation_space mismatch"):
        SafeFQLShield(gym.make("safefql/BoatNav-v0"), checkpoint=WallModel())


def test_non_box_spaces_rejected():
    env = gym.make("CartPole-v1")
    with pytest.raises(ValueError, match="needs a Box action_space"):
        SafeFQLShield(env, checkpoint=WallModel())


def test_nan_observation_raises():
    shield = SafeFQLShield(WallEnv(nan_at=2), checkpoint=WallModel())
    shield.reset(options={"x": 0.0})
    shield.step(np.array([0.0]))
    with pytest.raises(ValueError, match="observation with NaN or inf at step"):
        shield.step(np.array([0.0]))
    shield = SafeFQLShield(WallEnv(nan_at=0), checkpoint=WallModel())
    with pytest.raises(ValueError, match="observation with NaN or inf at reset"):
        shield.reset()


def test_bad_actions_raise():
    shield = wall_shield()
    shield.reset(options={"x": 0.0})
    with pytest.raises(ValueError, match=r"proposed action has shape \(2,\); the action space needs \(1,\)"):
        shield.step(np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="proposed action contains NaN"):
        shield.step(np.array([math.nan]))
    with pytest.raises(ValueError, match="proposed action contains NaN or inf"):
        shield.step(np.array([math.inf]))
    with pytest.raises(ValueError, match="proposed action has shape"):
        shield.step(None)
    with pytest.raises(ValueError, match="must be numeric"):
        shield.step(["a"])


def test_bad_options_raise():
    with pytest.raises(ValueError, match=r"mode must be one of \('shield', 'policy'\), got 'filter'"):
        wall_shield(mode="filter")
    with pytest.raises(
        ValueError, match=r"fallback must be one of \('nearest', 'actor', 'samples', 'safest'\), got 'random'"
    ):
        wall_shield(fallback="random")
    with pytest.raises(ValueError, match="num_candidates must be a positive integer"):
        wall_shield(num_candidates=0)
    with pytest.raises(ValueError, match="backend must be one of"):
        wall_shield(backend="torch")
    with pytest.raises(ValueError, match="delta must be a number"):
        wall_shield(delta=math.nan)
    with pytest.raises(ValueError, match="rng must be None, an int seed or a numpy.random.Generator"):
        wall_shield(rng="seed")
    with pytest.raises(ValueError, match=r"object lacks \['act', 'safety_q'"):
        wall_shield(checkpoint=object())

    class NoDelta(WallModel):
        delta = property(lambda self: self.no_such_attribute)  # AttributeError: as if there were no delta

    with pytest.raises(ValueError, match="has no 'delta' attribute; pass delta="):
        wall_shield(checkpoint=NoDelta())
    assert wall_shield(checkpoint=NoDelta(), delta=0.1).delta == 0.1


def test_step_before_reset_raises():
    with pytest.raises(gym.error.ResetNeeded, match="reset"):
        wall_shield().step(np.array([0.0]))


def test_missing_checkpoints_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        wall_shield(checkpoint=tmp_path / "nope.eqx")
    with pytest.raises(
        ValueError, match=rf"no pretrained SafeFQL model is shipped for env id '{WALL_ID}'.*checkpoint="
    ):
        SafeFQLShield(gym.make(WALL_ID))
    with pytest.raises(ValueError, match="has no spec id.*checkpoint="):
        SafeFQLShield(WallEnv())
    with pytest.raises(ValueError, match="env id must be a non-empty string"):
        pretrained_path("")


def test_pretrained_lookup():
    path = PRETRAINED_DIR / "boatnav_v0.eqx"
    if path.is_file():
        assert pretrained_path("safefql/BoatNav-v0") == path
    else:
        with pytest.raises(FileNotFoundError, match=r"env id 'safefql/BoatNav-v0'.*missing.*checkpoint="):
            pretrained_path("safefql/BoatNav-v0")


# ------------------------------------------------------------------------------------------------ vector
def _vector_vs_single(autoreset_mode, fallback):
    """A vector shield over 4 WallEnvs and 4 single shields, reset to the same seeded starts near the wall."""
    n, horizon = 4, 6

    def make():
        return WallEnv(horizon=horizon, start=(0.1, 0.5))

    venv = gym.vector.SyncVectorEnv([make] * n, autoreset_mode=autoreset_mode)
    vshield = SafeFQLVectorShield(venv, checkpoint=WallModel(), fallback=fallback)
    singles = [SafeFQLShield(make(), checkpoint=WallModel(), fallback=fallback) for _ in range(n)]
    vobs, _ = vshield.reset(seed=10)  # sub-env i gets seed 10 + i
    sobs = [s.reset(seed=10 + i)[0] for i, s in enumerate(singles)]
    assert np.array_equal(vobs, np.stack(sobs))
    return vshield, singles, np.random.default_rng(0), horizon


@pytest.mark.parametrize("fallback", ["nearest", "actor"])
def test_vector_shield_equals_single_shields(fallback):
    vshield, singles, rng, horizon = _vector_vs_single(gym.vector.AutoresetMode.NEXT_STEP, fallback)
    keys = (
        "intervened",
        "proposed",
        "applied",
        "q_h_proposed",
        "q_h_applied",
        "episode_steps",
        "episode_interventions",
    )
    total_interventions = 0
    for t in range(2 * horizon + 1):
        actions = rng.uniform(-1, 1.5, size=(4, 1)).astype(np.float32)
        vobs, vrew, vterm, vtrunc, vinfo = vshield.step(actions)
        if t == horizon:  # the next-step autoreset: the vector env resets, the singles are reset by hand
            assert not vinfo["shield"]["intervened"].any()
            assert np.isnan(vinfo["shield"]["q_h_proposed"]).all()
            assert (vinfo["shield"]["episode_steps"] == 0).all()
            for i, s in enumerate(singles):
                obs, _ = s.reset()
                assert np.allclose(vobs[i], obs)
            continue
        for i, s in enumerate(singles):
            obs, rew, term, trunc, info = s.step(actions[i])
            assert np.allclose(vobs[i], obs) and vrew[i] == pytest.approx(rew) and vtrunc[i] == trunc
            for k in keys:
                assert np.allclose(vinfo["shield"][k][i], info["shield"][k]), (t, i, k)
            total_interventions += info["shield"]["intervened"]
    assert total_interventions > 3  # the comparison exercised the fallback
    assert vinfo["shield"]["delta"] == 0.0 and vinfo["shield"]["mode"] == "shield"


def test_vector_same_step_autoreset_counters():
    vshield, singles, rng, horizon = _vector_vs_single(gym.vector.AutoresetMode.SAME_STEP, "nearest")
    push = np.ones((4, 1), dtype=np.float32)
    for _ in range(horizon):
        *_, vtrunc, vinfo = vshield.step(push)
    assert vtrunc.all()
    assert (vinfo["shield"]["episode_steps"] == horizon).all()  # the finished episode's totals
    finished = vinfo["shield"]["episode_interventions"]
    assert (finished >= 1).all() and (finished <= horizon).all()  # pushing into the wall from 0.1..0.5
    *_, vinfo = vshield.step(push)
    assert (vinfo["shield"]["episode_steps"] == 1).all()
    assert (vinfo["shield"]["episode_interventions"] <= 1).all()


def test_vector_reset_mask_and_policy_mode():
    venv = gym.vector.SyncVectorEnv([WallEnv] * 3, autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    vshield = SafeFQLVectorShield(venv, checkpoint=WallModel(actor_value=0.2), mode="policy")
    vshield.reset(seed=0)
    for _ in range(2):
        *_, info = vshield.step(None)
    assert info["shield"]["applied"][:, 0].tolist() == pytest.approx([0.2] * 3)
    assert info["shield"]["episode_steps"].tolist() == [2, 2, 2]
    _, info = vshield.reset(options={"reset_mask": np.array([True, False, False])})
    assert info["shield"]["episode_steps"].tolist() == [0, 2, 2]
    assert vshield.act(np.zeros((3, 1))).shape == (3, 1)


def test_vector_errors():
    venv = gym.vector.SyncVectorEnv([WallEnv] * 2)
    with pytest.raises(ValueError, match=r"action_space mismatch.*vector env has"):

        class TwoD(WallModel):
            def __init__(self):
                super().__init__()
                self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

        SafeFQLVectorShield(venv, checkpoint=TwoD())
    vshield = SafeFQLVectorShield(venv, checkpoint=WallModel())
    with pytest.raises(gym.error.ResetNeeded):
        vshield.step(np.zeros((2, 1)))
    vshield.reset(seed=0)
    with pytest.raises(
        ValueError, match=r"proposed action has shape \(3, 1\); the action space needs \(2, 1\)"
    ):
        vshield.step(np.zeros((3, 1)))
    with pytest.raises(ValueError, match="NaN"):
        vshield.step(np.array([[0.0], [math.nan]]))
    with pytest.raises(ValueError, match="mode must be one of"):
        SafeFQLVectorShield(venv, checkpoint=WallModel(), mode="x")


# ------------------------------------------------------------------------------------------------ boat
def test_boat_goal_agent_violations_drop_to_zero():
    model = BoatOracleModel()
    report = evaluate("safefql/BoatNav-v0", "goal", shield=model, episodes=40, seed=3)
    assert report.unshielded.violations.sum() >= 3  # straight to the goal hits rocks from some safe starts
    assert report.shielded.violations.sum() == 0 and report.shielded.mean_cost == 0.0
    assert 0 < report.shielded.intervention_rate < 0.2
    # the shield only steps in when needed: episodes that never came close are identical
    calm = report.shielded.interventions == 0
    assert calm.sum() >= 10
    assert np.allclose(report.shielded.returns[calm], report.unshielded.returns[calm])


def test_boat_single_env_shield_blocks_a_collision():
    model = BoatOracleModel()
    shield = SafeFQLShield(gym.make("safefql/BoatNav-v0"), checkpoint=model)
    obs, _ = shield.reset(seed=0, options={"state": (-2.0, -1.2)})  # straight upstream of the lower rock
    ahead = np.array([1.0, 0.0], dtype=np.float32)
    worst, truncated = -np.inf, False
    while not truncated:
        obs, _, _, truncated, info = shield.step(ahead)
        worst = max(worst, info["h"])
        if info["shield"]["intervened"]:
            assert info["shield"]["q_h_applied"] + model.delta <= info["shield"]["q_h_proposed"] + model.delta
    assert worst <= 0.0 and info["shield"]["episode_interventions"] > 0
    env = gym.make("safefql/BoatNav-v0")
    env.reset(options={"state": (-2.0, -1.2)})
    assert max(env.step(ahead)[4]["h"] for _ in range(400)) > 0.0


def test_boat_fallbacks_compared():
    """Why "nearest" is the default: same (zero) violations, closer to the agent's intent (random agent)."""
    model = BoatOracleModel()
    reports = {
        fb: evaluate("safefql/BoatNav-v0", "random", shield=model, episodes=30, seed=1, fallback=fb)
        for fb in ("nearest", "actor")
    }
    for r in reports.values():
        assert r.shielded.violations.sum() == 0
    assert reports["nearest"].unshielded.violations.sum() > 0
    assert reports["nearest"].shielded.mean_correction < 0.9 * reports["actor"].shielded.mean_correction


def test_jax_and_numpy_paths_give_identical_decisions(request):
    try:
        path = request.getfixturevalue("trained_boat_checkpoint")
    except pytest.FixtureLookupError:
        pytest.skip("the trained_boat_checkpoint fixture (tests/conftest.py) is not defined")
    except (FileNotFoundError, ValueError) as e:
        pytest.skip(f"trained_boat_checkpoint is unavailable: {e}")
    if not path.is_file():
        pytest.skip(f"trained_boat_checkpoint {path} does not exist")
    shields = {
        b: SafeFQLShield(gym.make("safefql/BoatNav-v0"), checkpoint=path, backend=b) for b in ("numpy", "jax")
    }
    assert type(shields["numpy"].fast_model).__name__ == "NumpyPolicy"
    assert type(shields["jax"].fast_model).__name__ == "SafeFQLPolicy"
    rng = np.random.default_rng(0)
    interventions = 0
    for start in [(-2.0, 0.5), (-2.0, -1.2), (-2.5, 1.0)]:
        for s in shields.values():
            s.reset(options={"state": start})
        for _ in range(150):
            a = rng.uniform(-1, 1, 2).astype(np.float32) if rng.random() < 0.5 else np.float32([1, 0])
            out = {b: s.step(a) for b, s in shields.items()}
            i_np, i_jx = out["numpy"][4]["shield"], out["jax"][4]["shield"]
            assert i_np["intervened"] == i_jx["intervened"]
            assert np.allclose(i_np["applied"], i_jx["applied"], atol=1e-5)
            assert i_np["q_h_proposed"] == pytest.approx(i_jx["q_h_proposed"], abs=1e-4)
            assert np.allclose(out["numpy"][0], out["jax"][0], atol=1e-6)
            interventions += i_np["intervened"]
    assert interventions > 0  # heading straight for the rocks: the decisions compared include interventions
    assert np.isfinite(shields["numpy"].delta)

    from safefql.envs.boat import BoatNavVectorEnv

    vshields = {
        b: SafeFQLVectorShield(BoatNavVectorEnv(8), checkpoint=path, backend=b) for b in ("numpy", "jax")
    }
    for v in vshields.values():
        v.reset(seed=0, options={"start": "safe"})
    for _ in range(60):
        a = rng.uniform(-1, 1, (8, 2)).astype(np.float32)
        i_np, i_jx = (vshields[b].step(a)[4]["shield"] for b in ("numpy", "jax"))
        assert np.array_equal(i_np["intervened"], i_jx["intervened"])
        assert np.allclose(i_np["applied"], i_jx["applied"], atol=1e-5)


# ------------------------------------------------------------------------------------------------ doctests
def test_docstring_examples_run():
    # import_module, not "from safefql.shields import evaluate": the package may re-export the function
    names = ("safefql.shields.wrapper", "safefql.shields.evaluate", "safefql.shields.pretrained")
    attempted = {}
    for name in names:
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, name
        attempted[name] = result.attempted
    assert attempted["safefql.shields.wrapper"] >= 20 and attempted["safefql.shields.evaluate"] >= 4
