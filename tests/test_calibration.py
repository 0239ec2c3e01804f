"""Conformal calibration: coverage of the offline rule, Clopper-Pearson bounds, the rollout grid rule, the
boat rollout against the MuJoCo env, and the ``calibrate`` driver on a checkpoint."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import gymnasium as gym
import jax
import numpy as np
import pytest
import scipy.stats

from safefql.datasets.load import Transitions
from safefql.envs import BOAT_ID, boat
from safefql.training.calibration import (
    Calibration,
    boat_episodes,
    calibrate,
    offline_conformal_delta,
    offline_scores,
    rollout_calibrate,
    rollout_epsilon,
    rollout_violations,
    select_episode_states,
)
from safefql.training.checkpoint import read_header, save_checkpoint, space_to_dict
from safefql.training.config import SafeFQLConfig
from safefql.training.policy import SafeFQLPolicy


# ------------------------------------------------------------------------------------------ offline rule
def test_offline_delta_is_the_conformal_order_statistic():
    scores = np.arange(1.0, 100.0)  # 1..99, shuffled
    np.random.default_rng(0).shuffle(scores)
    assert offline_conformal_delta(scores, 0.05) == 95.0  # ceil(100 * 0.95) = 95
    assert offline_conformal_delta(scores, 0.1) == 90.0
    assert offline_conformal_delta(scores, 0.123) == 88.0  # ceil(87.7)
    for n in range(9, 200, 7):  # the rank agrees with exact rational arithmetic (no float off-by-one)
        for eps_text in ("0.1", "0.05", "0.2", "0.01"):
            eps = float(eps_text)
            rank = math.ceil((n + 1) * (1 - Fraction(eps_text)))
            if rank <= n:
                assert offline_conformal_delta(np.arange(1.0, n + 1), eps) == rank


def test_offline_coverage_lies_in_the_conformal_band_uniform_scores():
    """Uniform scores: the conditional coverage P(e <= delta | calibration) is delta itself, so averaging it
    over repetitions estimates the marginal coverage with little Monte-Carlo error."""
    n, eps, reps = 50, 0.1, 20_000
    rng = np.random.default_rng(1)
    cover = np.array([offline_conformal_delta(rng.random(n), eps) for _ in range(reps)])
    se = cover.std(ddof=1) / math.sqrt(reps)
    mean = cover.mean()
    lo, hi = 1 - eps, 1 - eps + 1 / (n + 1)
    assert lo - 4 * se <= mean <= hi + 4 * se
    exact = math.ceil((n + 1) * (1 - eps)) / (n + 1)  # E[k-th order statistic of n uniforms]
    assert abs(mean - exact) <= 4 * se
    assert se < 0.0005  # the band check above is tight: an off-by-one rank (45/51) would fail it


def test_offline_coverage_with_fresh_test_scores_heavy_tailed():
    n, eps, reps, m = 30, 0.2, 4_000, 20
    rng = np.random.default_rng(2)
    hits = np.empty(reps)
    for r in range(reps):
        delta = offline_conformal_delta(rng.standard_t(2, size=n), eps)
        hits[r] = np.mean(rng.standard_t(2, size=m) <= delta)
    se = hits.std(ddof=1) / math.sqrt(reps)
    assert 1 - eps - 4 * se <= hits.mean() <= 1 - eps + 1 / (n + 1) + 4 * se


def test_offline_too_few_scores_returns_inf_with_warning():
    with pytest.warns(RuntimeWarning, match=r"too few for eps"):
        assert offline_conformal_delta(np.ones(5), 0.1) == math.inf  # ceil(6 * 0.9) = 6 > 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert offline_conformal_delta(np.arange(9.0), 0.1) == 8.0  # ceil(10 * 0.9) = 9 = n: the maximum


@pytest.mark.parametrize("eps", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_offline_rejects_bad_eps(eps):
    with pytest.raises(ValueError, match=r"eps must lie in the open interval"):
        offline_conformal_delta(np.ones(10), eps)


def test_offline_rejects_bad_scores():
    with pytest.raises(ValueError, match=r"NaN"):
        offline_conformal_delta(np.array([0.1, np.nan, 0.3]), 0.1)
    with pytest.raises(ValueError, match=r"empty"):
        offline_conformal_delta(np.array([]), 0.1)
    with pytest.raises(ValueError, match=r"1-D"):
        offline_conformal_delta(np.ones((3, 3)), 0.1)


def _calib_transitions(episodes: int = 40, length: int = 7, seed: int = 0) -> Transitions:
    rng = np.random.default_rng(seed)
    n = episodes * length
    h = rng.normal(-0.5, 0.3, n).astype(np.float32)
    ep = np.repeat(np.arange(episodes, dtype=np.int64) * 3 + 5, length)  # non-contiguous ids
    worst = np.empty(n, np.float32)
    for e in range(episodes):
        sl = slice(e * length, (e + 1) * length)
        worst[sl] = np.maximum.accumulate(h[sl][::-1])[::-1]
    obs = rng.uniform(boat.BOX_LOW, boat.BOX_HIGH, (n, 2)).astype(np.float32)
    z = np.zeros(n, np.float32)
    return Transitions(
        observations=obs,
        actions=rng.uniform(-1, 1, (n, 2)).astype(np.float32),
        rewards=z,
        costs=(h > 0).astype(np.float32),
        h=h,
        next_observations=obs,
        terminals=z,
        masks=z + 1,
        timeouts=z,
        episode_ids=ep,
        future_worst_h=worst,
        metadata={"env_id": BOAT_ID},
    )


class _ConstQ:
    """Analytic policy: Q_h = c, V_h = x - 1 (first coordinate), act = (0, 0)."""

    def __init__(self, c: float = 0.0):
        self.c = c

    def act(self, obs, rng=None):
        return np.zeros_like(np.asarray(obs, dtype=np.float64))

    def safety_value(self, obs):
        return np.asarray(obs)[..., 0] - 1.0

    def safety_q(self, obs, action):
        return np.full(np.asarray(obs).shape[0], self.c)


def test_offline_scores_take_one_random_state_per_episode():
    t = _calib_transitions()
    idx = select_episode_states(t.episode_ids, np.random.default_rng(0))
    assert idx.size == 40
    assert np.array_equal(t.episode_ids[idx], np.unique(t.episode_ids))  # one per episode, in order
    other = select_episode_states(t.episode_ids, np.random.default_rng(1))
    assert not np.array_equal(idx, other)  # random within episodes
    positions = np.stack([select_episode_states(t.episode_ids, np.random.default_rng(s)) for s in range(300)])
    within = positions % 7
    assert set(np.unique(within)) == set(range(7))  # every step of an episode can be picked
    scores = offline_scores(_ConstQ(0.25), t, np.random.default_rng(0))
    np.testing.assert_allclose(scores, t.future_worst_h[idx] - 0.25, rtol=1e-6)
    again = offline_scores(_ConstQ(0.25), t, np.random.default_rng(0))
    assert np.array_equal(scores, again)


# ------------------------------------------------------------------------------------------ rollout rule
@pytest.mark.parametrize("n", [1, 10, 299, 5000])
@pytest.mark.parametrize("beta", [1e-6, 0.05])
def test_rollout_epsilon_zero_violations_closed_form(n, beta):
    assert rollout_epsilon(0, n, beta) == pytest.approx(1 - beta ** (1 / n), rel=1e-9)


def test_rollout_epsilon_is_the_clopper_pearson_upper_bound():
    for k, n, beta in [(1, 100, 1e-6), (5, 1000, 0.01), (30, 60, 0.1)]:
        eps = rollout_epsilon(k, n, beta)
        # the upper bound solves P(Binomial(n, eps) <= k) = beta
        assert scipy.stats.binom.cdf(k, n, eps) == pytest.approx(beta, rel=1e-6)
        assert eps > k / n
    assert rollout_epsilon(7, 7, 0.1) == 1.0
    assert rollout_epsilon(0, 0, 0.1) == 1.0
    assert rollout_epsilon(2, 100, 1e-6) > rollout_epsilon(1, 100, 1e-6) > rollout_epsilon(0, 100, 1e-6)
    assert rollout_epsilon(0, 1000, 1e-6) == pytest.approx(0.0137205, abs=1e-6)  # 1 - exp(ln(1e-6) / 1000)


def test_rollout_epsilon_validation():
    with pytest.raises(ValueError, match=r"0 <= k <= n"):
        rollout_epsilon(5, 3, 0.1)
    with pytest.raises(ValueError, match=r"0 <= k <= n"):
        rollout_epsilon(-1, 3, 0.1)
    with pytest.raises(ValueError, match=r"beta must lie"):
        rollout_epsilon(0, 3, 0.0)
    with pytest.raises(ValueError, match=r"integers"):
        rollout_epsilon(0.5, 3, 0.1)


def test_rollout_calibrate_picks_the_smallest_qualifying_delta():
    # V_h(s0) = x - 1 with x = 0, 0.001, ..., 1.999 -> values in [-1, 1); starts with V > -0.3 violate
    x = np.arange(2000) / 1000.0
    starts = np.stack([x, np.zeros_like(x)], axis=1)
    values = x - 1.0
    violations = values > -0.3
    grid = np.round(np.arange(-0.5, 1.0001, 0.05), 6)
    cal = rollout_calibrate(_ConstQ(), starts, grid, eps_target=0.02, beta=1e-3, violations=violations)
    beta_each = 1e-3 / grid.size
    expected = None
    for d in grid:  # brute force of the documented rule
        judged = values + d <= 0
        eps_d = rollout_epsilon(int((judged & violations).sum()), int(judged.sum()), beta_each)
        if eps_d <= 0.02:
            expected = (d, eps_d, int(judged.sum()))
            break
    assert expected is not None and cal.delta == pytest.approx(expected[0])
    assert cal.eps == pytest.approx(expected[1]) and cal.n == expected[2] and cal.k == 0
    assert cal.delta == pytest.approx(0.3)  # the first grid value that excludes every violating start
    assert cal.source == "rollout" and cal.beta == 1e-3 and cal.details["met_target"]
    assert "1 - 0.001" in cal.guarantee


def test_rollout_calibrate_says_so_when_nothing_qualifies():
    starts = np.zeros((50, 2))
    violations = np.ones(50, dtype=bool)  # every start fails: no delta can certify anything
    with pytest.warns(RuntimeWarning, match=r"no delta on the grid"):
        cal = rollout_calibrate(
            _ConstQ(), starts, [0.0, 0.5], eps_target=0.05, beta=1e-6, violations=violations
        )
    assert cal.delta == math.inf and cal.eps == 1.0 and not cal.details["met_target"]
    assert cal.guarantee.startswith("None")


def test_rollout_calibrate_validation():
    starts = np.zeros((4, 2))
    with pytest.raises(ValueError, match=r"eps_target"):
        rollout_calibrate(_ConstQ(), starts, [0.0], eps_target=1.0, violations=np.zeros(4, bool))
    with pytest.raises(ValueError, match=r"delta_grid"):
        rollout_calibrate(_ConstQ(), starts, [np.nan], eps_target=0.1, violations=np.zeros(4, bool))
    with pytest.raises(ValueError, match=r"violations must have shape"):
        rollout_calibrate(_ConstQ(), starts, [0.0], eps_target=0.1, violations=np.zeros(3, bool))
    with pytest.raises(ValueError, match=r"starts must have shape"):
        rollout_violations(_ConstQ(), np.zeros((4, 3)))


class _Steer:
    """Deterministic state-feedback policy, to compare batched rollouts with the env."""

    def act(self, obs, rng=None):
        o = np.asarray(obs, dtype=np.float64)
        return np.clip(np.stack([-o[..., 1], np.sin(3 * o[..., 0])], axis=-1), -1, 1).astype(np.float32)


def test_boat_rollout_matches_the_mujoco_env():
    starts = np.array([[-2.5, 0.6], [-1.8, -1.1], [0.0, 1.5]])
    ep = boat_episodes(_Steer(), starts)
    env = gym.make(BOAT_ID)
    for i, s in enumerate(starts):
        obs, info = env.reset(options={"state": tuple(s)})
        ret = cost = 0.0
        worst = info["h"]
        done = False
        while not done:
            obs, r, term, trunc, info = env.step(_Steer().act(obs))
            ret += r
            cost += info["cost"]
            worst = max(worst, info["h"])
            done = term or trunc
        assert ep["return"][i] == pytest.approx(ret, rel=1e-9, abs=1e-6)
        assert ep["cost"][i] == cost
        assert ep["worst_h"][i] == pytest.approx(worst, abs=1e-9)
    env.close()
    # the first two starts cross a rock under this policy, the third stays clear: both cases are compared
    assert np.array_equal(ep["cost"] > 0, [True, True, False])
    assert np.array_equal(rollout_violations(_Steer(), starts), [True, True, False])


# ------------------------------------------------------------------------------------------ Calibration
def test_calibration_dict_round_trip_and_validation():
    cal = Calibration(
        delta=math.inf, eps=0.05, beta=1e-6, n=3, k=0, source="rollout", guarantee="g", details={"a": 1}
    )
    d = cal.to_dict()
    assert d["delta"] == "inf"
    assert Calibration.from_dict(d) == cal
    with pytest.raises(ValueError, match=r"missing keys \['guarantee'\]"):
        Calibration.from_dict({k: v for k, v in d.items() if k != "guarantee"})
    with pytest.raises(ValueError, match=r"source must be one of"):
        Calibration(delta=0.0, eps=0.1, beta=None, n=1, k=0, source="magic", guarantee="")


# ------------------------------------------------------------------------------------------ driver
TINY = SafeFQLConfig(
    critic_hidden=(16,), value_hidden=(16,), actor_hidden=(16,), flow_hidden=(16,), flow_steps=3
)


@pytest.fixture(scope="module")
def agent():
    from safefql.training.safefql import create_train_state

    return create_train_state(TINY, 2, 2, jax.random.PRNGKey(0)).agent


def _write_run(tmp_path, agent, env_id=BOAT_ID):
    from safefql.training.trainer import save_calib_episodes

    t = _calib_transitions(episodes=60)
    save_calib_episodes(tmp_path / "calib_episodes.npz", t)
    env = gym.make(BOAT_ID)
    header = dict(
        kind="policy",
        config=TINY.to_dict(),
        observation_space=space_to_dict(env.observation_space),
        action_space=space_to_dict(env.action_space),
        env_id=env_id,
        dataset_id=None,
        split={"calib_file": "calib_episodes.npz", "calib_episode_ids": np.unique(t.episode_ids).tolist()},
    )
    return save_checkpoint(tmp_path / "policy.eqx", agent, header), t


def test_calibrate_offline_stores_the_delta(tmp_path, agent):
    path, t = _write_run(tmp_path, agent)
    cal = calibrate(path, "offline", eps=0.1, seed=3)
    pol = SafeFQLPolicy.load(path)
    expected = offline_conformal_delta(offline_scores(pol, t, np.random.default_rng(3)), 0.1)
    assert cal.delta == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert cal.n == 60 and cal.source == "offline" and cal.beta is None
    assert cal.k <= math.floor(0.1 * 61)  # at most the scores above the ceil((n+1)(1-eps))-th
    stored = read_header(path)["calibration"]
    assert Calibration.from_dict(stored) == cal
    assert pol.delta == cal.delta and pol.calibration == cal
    (tmp_path / "calib_episodes.npz").unlink()
    with pytest.raises(FileNotFoundError, match=r"no calibration episodes"):
        calibrate(path, "offline", eps=0.1)


def test_calibrate_rollout_on_the_boat(tmp_path, agent):
    path, _ = _write_run(tmp_path, agent)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an untrained policy may certify nothing
        cal = calibrate(
            path, "rollout", eps=0.5, beta=0.1, num_starts=64, seed=1, delta_grid=[-1.0, 0.0, 1.0]
        )
    pol = SafeFQLPolicy.load(path)
    assert pol.calibration == cal and cal.source == "rollout" and cal.details["num_starts"] == 64
    starts = np.random.default_rng(1).uniform(boat.BOX_LOW, boat.BOX_HIGH, size=(64, 2))
    viol = rollout_violations(pol.numpy(), starts)
    values = pol.safety_value(starts)
    for d, n, k in zip(
        cal.details["delta_grid"], cal.details["n_judged_safe"], cal.details["k_violations"], strict=True
    ):
        judged = values + d <= 0
        assert n == judged.sum() and k == (judged & viol).sum()
    assert cal.details["violations_total"] == viol.sum()


def test_calibrate_driver_validation(tmp_path, agent):
    path, _ = _write_run(tmp_path, agent, env_id="SafetyPointGoal1-v0")
    with pytest.raises(ValueError, match=r"rollout calibration needs the boat"):
        calibrate(path, "rollout", eps=0.1)
    with pytest.raises(ValueError, match=r"source must be one of"):
        calibrate(path, "simulator", eps=0.1)
    with pytest.raises(ValueError, match=r"eps must lie"):
        calibrate(path, "offline", eps=1.2)
    with pytest.raises(FileNotFoundError, match=r"nothing\.eqx"):
        calibrate(tmp_path / "nothing.eqx", "offline")
