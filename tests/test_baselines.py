"""Baselines: BC / BC-safe, FQL and the FISOR-style agent, on tiny CPU-sized problems."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from safefql.datasets.sampler import DeviceDataset
from safefql.training.baselines import (
    BCConfig,
    FisorConfig,
    FQLConfig,
    bc,
    default_baseline_config,
    filter_zero_cost_episodes,
    fisor,
    fql,
    policy_from_act,
    standardized_inputs,
    train_baseline,
    zero_cost_episode_mask,
)
from safefql.training.networks import MLP, make_ensemble
from safefql.training.safefql import flow_actions


def _dataset(obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray | None = None, **extra) -> dict:
    n = obs.shape[0]
    data = {
        "observations": obs.astype(np.float32),
        "actions": actions.astype(np.float32),
        "rewards": np.zeros(n, np.float32) if rewards is None else rewards.astype(np.float32),
        "h": -np.ones(n, np.float32),
        "next_observations": obs.astype(np.float32),
        "masks": np.ones(n, np.float32),
    }
    return data | extra


def _linear_ensemble(weights: np.ndarray, biases: np.ndarray):
    """An ensemble of linear Q/V nets with hand-set parameters: member k is ``weights[k] @ x + biases[k]``."""
    num, in_size = weights.shape
    kw = dict(in_size=in_size, out_size=1, hidden=(), activation="gelu", squeeze=True)
    ens = eqx.filter_eval_shape(make_ensemble, jax.random.key(0), num, **kw)  # structure only, no init
    ens = eqx.tree_at(lambda e: e.layers[0].weight, ens, jnp.asarray(weights, jnp.float32)[:, None, :])
    return eqx.tree_at(lambda e: e.layers[0].bias, ens, jnp.asarray(biases, jnp.float32)[:, None])


# ---------------------------------------------------------------- BC


W_TRUE = np.array([[0.5, -0.2, 0.2], [0.1, 0.4, -0.25]])
B_TRUE = np.array([0.05, -0.05])


@pytest.fixture(scope="module")
def bc_state():
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (4000, 3))
    data = DeviceDataset.from_arrays(_dataset(obs, obs @ W_TRUE.T + B_TRUE))
    config = BCConfig(hidden=(64, 64), squash="clip", lr=3e-3, batch_size=256)
    state = bc.create_bc_state(config, 3, 2, jax.random.key(1))
    state, info = bc.bc_train_steps(state, data, jax.random.key(2), 1500)
    return state, info


def test_bc_recovers_linear_behaviour_policy(bc_state):
    state, info = bc_state
    obs = np.random.default_rng(9).uniform(-1, 1, (500, 3))
    target = obs @ W_TRUE.T + B_TRUE
    pred = bc.make_policy(state)(obs)
    mse = np.mean(np.sum((pred - target) ** 2, axis=1))
    mse_of_mean = np.mean(np.sum((target - target.mean(0)) ** 2, axis=1))
    assert mse < 2e-3, mse
    assert mse < 0.01 * mse_of_mean
    assert int(state.step) == 1500
    assert float(info["bc_loss"]) < 5e-3


# ---------------------------------------------------------------- BC-safe episode filter


def test_zero_cost_filter_keeps_exactly_the_safe_episodes():
    ids = np.repeat([4, 7, 1, 9, 2], [3, 5, 2, 4, 6])  # 20 transitions, 5 episodes, unsorted ids
    costs = np.zeros(20)
    costs[4] = 1.0  # episode 7
    costs[19] = 0.5  # episode 2
    obs = np.arange(20, dtype=np.float32)[:, None]
    data = {
        "observations": obs,
        "actions": np.zeros((20, 1)),
        "episode_ids": ids,
        "costs": costs,
        "meta": "x",
    }
    out = filter_zero_cost_episodes(data)
    assert sorted(np.unique(out["episode_ids"]).tolist()) == [1, 4, 9]
    assert out["observations"].shape == (3 + 2 + 4, 1)
    np.testing.assert_array_equal(out["observations"][:, 0], [0, 1, 2, 8, 9, 10, 11, 12, 13])
    assert out["costs"].sum() == 0 and out["meta"] == "x"
    assert zero_cost_episode_mask(ids, costs).sum() == 9


def test_zero_cost_filter_errors():
    ids = np.array([0, 0, 1, 1])
    with pytest.raises(ValueError, match="no zero-cost episode"):
        zero_cost_episode_mask(ids, np.array([0.0, 1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="episode_ids has 4 entries but costs has 3"):
        zero_cost_episode_mask(ids, np.zeros(3))
    with pytest.raises(ValueError, match="non-negative"):
        zero_cost_episode_mask(ids, np.array([0.0, -1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="needs 'episode_ids'"):
        filter_zero_cost_episodes({"observations": np.zeros((4, 1)), "costs": np.zeros(4)})


def test_train_baseline_bc_safe_uses_only_zero_cost_episodes():
    rng = np.random.default_rng(4)
    obs = rng.uniform(-1, 1, (600, 1))
    ids = np.repeat(np.arange(6), 100)
    unsafe = ids % 2 == 1  # episodes 1, 3, 5 have cost and act with +0.9; the safe ones with -0.9
    actions = np.where(unsafe, 0.9, -0.9)[:, None]
    data = _dataset(obs, actions, episode_ids=ids, costs=unsafe.astype(np.float32) * (obs[:, 0] > 0.9))
    kept = int(np.unique(ids[zero_cost_episode_mask(ids, data["costs"])]).shape[0])
    # default squash: tanh
    state, policy, info = train_baseline("bc_safe", data, BCConfig(hidden=(16,), lr=3e-3), steps=300, seed=0)
    assert info["num_episodes"] == 6 and info["num_episodes_kept"] == kept == 3
    assert info["num_transitions"] == 300 and info["steps"] == 300 and info["updates_per_s"] > 0
    out = policy(obs[:20])
    assert np.all(out < -0.7) and np.all(out > -1.0)  # only the safe episodes' action was imitated


def test_train_baseline_standardised_observations():
    """Inputs on scales 100x apart (as Safety-Gym's accelerometer vs lidar): standardised BC fits them, and
    its policy standardises raw observations itself with the statistics of all the data (BC-safe too)."""
    rng = np.random.default_rng(5)
    u = rng.uniform(-1, 1, (3000, 2))
    obs = np.stack([500.0 + 300.0 * u[:, 0], 0.01 * u[:, 1]], 1)
    actions = 0.45 * u[:, :1] - 0.45 * u[:, 1:]
    ids = np.repeat(np.arange(30), 100)
    costs = np.where(ids % 3 == 0, 1.0, 0.0)
    data = _dataset(obs, actions, episode_ids=ids, costs=costs)
    config = BCConfig(hidden=(32, 32), squash="clip", lr=3e-3)
    test_u = rng.uniform(-1, 1, (400, 2))
    test_obs = np.stack([500.0 + 300.0 * test_u[:, 0], 0.01 * test_u[:, 1]], 1)
    target = 0.45 * test_u[:, :1] - 0.45 * test_u[:, 1:]
    mse = {}
    for norm in (False, True):
        state, policy, info = train_baseline(
            "bc_safe", data, config, steps=600, seed=0, normalize_observations=norm
        )
        mse[norm] = float(np.mean((policy(test_obs) - target) ** 2))
    assert mse[True] < 5e-3, mse
    assert mse[False] > 10 * mse[True], mse
    stats = info["observation_normalization"]
    np.testing.assert_allclose(stats["mean"], obs.mean(0), rtol=1e-5)  # all episodes, not the kept ones
    np.testing.assert_allclose(stats["std"], obs.std(0), rtol=1e-4)
    standardised = (test_obs - obs.mean(0)) / obs.std(0)
    np.testing.assert_allclose(policy(test_obs), bc.make_policy(state)(standardised), atol=1e-5)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        standardized_inputs(policy, np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="std > 0"):
        standardized_inputs(policy, np.zeros(2), np.zeros(2))


def test_train_baseline_errors():
    data = _dataset(np.zeros((10, 1)), np.zeros((10, 1)))
    with pytest.raises(ValueError, match="data must be a mapping or a Transitions-like object"):
        train_baseline("bc", 5)
    with pytest.raises(ValueError, match="unknown baseline 'cql'"):
        train_baseline("cql", data)
    with pytest.raises(ValueError, match="needs a FQLConfig"):
        train_baseline("fql", data, BCConfig())
    with pytest.raises(ValueError, match="needs 'episode_ids'"):
        train_baseline("bc_safe", data, steps=1)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        train_baseline("bc", data, steps=0)
    with pytest.raises(ValueError, match="missing key 'h'|safety margin 'h'"):
        train_baseline("bc", {k: v for k, v in data.items() if k != "h"}, steps=1)
    assert isinstance(default_baseline_config("fisor"), FisorConfig)


def test_config_validation():
    with pytest.raises(ValueError, match="squash must be one of"):
        BCConfig(squash="sigmoid")
    with pytest.raises(ValueError, match="q_agg must be one of"):
        FQLConfig(q_agg="max")
    with pytest.raises(ValueError, match="alpha must lie in"):
        FQLConfig(alpha=-1.0)
    with pytest.raises(ValueError, match="beta_schedule must be one of"):
        FisorConfig(beta_schedule="linear")
    with pytest.raises(ValueError, match="time_features must be even"):
        FisorConfig(time_features=7)
    with pytest.raises(ValueError, match="critic_hidden must contain positive integers"):
        FisorConfig(critic_hidden=(64, 0))
    with pytest.raises(ValueError, match="config must be a BCConfig"):
        bc.create_bc_state(FQLConfig(), 2, 2, jax.random.key(0))


# ---------------------------------------------------------------- FISOR: DDPM, weights, inference


MODES = np.array([[0.6, 0.6], [-0.6, -0.6]])


@pytest.fixture(scope="module")
def bimodal_fisor():
    """FISOR on two action modes with equal reward and no hazard (h = -1): its weights tend to 1 on both."""
    rng = np.random.default_rng(0)
    n = 4000
    obs = rng.normal(size=(n, 2))
    actions = MODES[rng.integers(0, 2, n)] + 0.05 * rng.normal(size=(n, 2))
    data = DeviceDataset.from_arrays(_dataset(obs, np.clip(actions, -1, 1)))
    config = FisorConfig(
        critic_hidden=(),  # linear critics (the shape of the hand-set one below) suffice here
        value_hidden=(),
        critic_lr=3e-3,
        noise_width=32,
        noise_blocks=1,
        actor_lr=2e-3,
        actor_ema_rate=0.05,
        num_candidates=16,
    )
    state = fisor.create_fisor_state(config, 2, 2, jax.random.key(0))
    state, info = fisor.fisor_train_steps(state, data, jax.random.key(1), 1000)
    return state, info


def test_vp_beta_schedule_numbers():
    betas = fisor.beta_schedule("vp", 5)
    t = np.arange(1, 6)
    expected = 1 - np.exp(-0.1 / 5 - 0.5 * 9.9 * (2 * t - 1) / 25)
    np.testing.assert_allclose(betas, expected, rtol=1e-6)
    assert abs(betas[0] - 0.19586) < 1e-4 and np.all(np.diff(betas) > 0)
    assert np.prod(1 - betas) < 0.01  # x_T is almost pure noise
    cos = fisor.beta_schedule("cosine", 5)
    assert cos[-1] == pytest.approx(0.999) and np.all((cos > 0) & (cos <= 0.999))


def test_ddpm_fits_bimodal_action_distribution(bimodal_fisor):
    state, info = bimodal_fisor
    obs = np.random.default_rng(5).normal(size=(200, 2))
    _, cand, _ = fisor.sample_candidates(state, obs, np.random.default_rng(7))
    samples = cand.reshape(-1, 2)  # 3200 DDPM samples (16 per state)
    dist = np.linalg.norm(samples[:, None, :] - MODES[None], axis=-1)
    frac = (dist < 0.3).mean(0)
    assert np.all(frac >= 0.35), frac
    # a unimodal fit (e.g. MSE BC) would put its mass at the mean of the modes, the origin
    assert np.mean(np.linalg.norm(samples, axis=1) < 0.3) < 0.2
    # both modes are equally safe and rewarded, so FISOR's weights stay O(1) and do not pick a mode
    assert 0.3 < float(info["actor/weight_mean"]) < 1.5 and float(info["actor/weight_max"]) <= 150.0
    assert float(info["actor/zero_weight_frac"]) < 0.3


def test_noise_net_dropout_only_with_a_key():
    cfg = FisorConfig(noise_width=8, noise_blocks=1, time_features=4, dropout=0.5)
    net = eqx.filter_jit(lambda k: fisor.NoiseNet(2, 2, cfg, key=k))(jax.random.key(0))

    @eqx.filter_jit
    def outputs(net, k1, k2):
        o, x, t = jnp.ones(2), jnp.full(2, 0.5), jnp.ones(1)
        loss, _ = fisor.ddpm_loss(net, jnp.ones((4, 2)), jnp.zeros((4, 2)), jnp.ones(4), k1, cfg)
        return net(o, x, t), net(o, x, t), net(o, x, t, k1), net(o, x, t, k2), loss

    plain, again, drop1, drop2, loss = (
        np.asarray(v) for v in outputs(net, jax.random.key(1), jax.random.key(2))
    )
    np.testing.assert_array_equal(plain, again)  # inference (no key): deterministic, no dropout
    assert not np.allclose(plain, drop1) and not np.allclose(drop1, drop2)
    assert np.isfinite(loss) and loss > 0


def test_fisor_weights_formula_exact():
    cfg = FisorConfig()
    #          q_r   v_r   q_h   v_h
    cases = [
        (0.0, 0.0, 0.1, 0.2),  # unsafe state: exp(5 * 0.1)
        (9.0, 0.0, -0.5, 1.0),  # unsafe: exp(7.5) = 1808 -> clip 150
        (0.0, 0.0, 0.9, 0.3),  # unsafe, action worse than V_h: exp(-3)
        (5.0, 0.0, 0.3, -0.1),  # feasible state, unsafe action: 0
        (1.0, 0.5, -0.2, -0.1),  # feasible, safe action: exp(3 * 0.5)
        (3.0, 1.0, -1.0, -0.5),  # exp(6) = 403 -> clip 100
        (0.0, 1.0, 0.0, 0.0),  # boundary V_h = Q_h = 0 counts as safe: exp(-3)
        (50.0, 0.0, 0.2, 0.2),  # unsafe branch ignores reward: exp(0) = 1
    ]
    q_r, v_r, q_h, v_h = (jnp.asarray(c, jnp.float32) for c in zip(*cases, strict=True))
    w = np.asarray(fisor.fisor_weights(q_r, v_r, q_h, v_h, cfg))
    expected = [np.exp(0.5), 150.0, np.exp(-3.0), 0.0, np.exp(1.5), 100.0, np.exp(-3.0), 1.0]
    np.testing.assert_allclose(w, expected, rtol=1e-5)


def _linear_v(weight: float) -> MLP:
    net = eqx.filter_eval_shape(lambda k: MLP(1, 1, (), key=k, squeeze=True), jax.random.key(0))
    net = eqx.tree_at(lambda m: m.layers[0].weight, net, jnp.array([[weight]]))
    return eqx.tree_at(lambda m: m.layers[0].bias, net, jnp.array([0.0]))


def test_fisor_weights_from_hand_set_critics():
    cfg = FisorConfig()
    reward_q = _linear_ensemble(np.array([[0, 1], [0, 1]]), np.array([0, 0.5]))  # a and a + 0.5
    safety_q = _linear_ensemble(np.array([[1, 1], [1, 1]]), np.array([0, -0.3]))  # s + a and s + a - 0.3
    critics = fisor.FisorCritics(
        reward_q=None, reward_q_target=reward_q, reward_v=_linear_v(0.5),
        safety_q=None, safety_q_target=safety_q, safety_v=_linear_v(1.0),
    )  # fmt: skip
    s = np.array([0.4, 0.1, -0.5, -0.5, -0.2], np.float32)
    a = np.array([-0.3, 0.5, 0.2, 0.9, -0.9], np.float32)
    # Q_r = min over twins = a; Q_h = max over twins = s + a; V_r = 0.5 s; V_h = s
    q_r, q_h, v_r, v_h = a, s + a, 0.5 * s, s
    expected = np.where(v_h > 0, np.clip(np.exp(5 * (v_h - q_h)), 0, 150), 0.0)
    expected += np.where((v_h <= 0) & (q_h <= 0), np.clip(np.exp(3 * (q_r - v_r)), 0, 100), 0.0)
    w, _ = eqx.filter_jit(fisor.critic_weights)(
        critics, jnp.asarray(s[:, None]), jnp.asarray(a[:, None]), cfg
    )
    np.testing.assert_allclose(np.asarray(w), expected, rtol=1e-5)
    assert expected[3] == 0.0 and expected[1] == pytest.approx(np.exp(-2.5)) and expected[2] > 1


def test_fisor_inference_picks_lowest_safety_q(bimodal_fisor):
    state, _ = bimodal_fisor
    # Hand-set safety critic: member 0 = a_0, member 1 = a_1, so Q_h = max(a_0, a_1) (obs weights 0).
    q_h_net = _linear_ensemble(np.array([[0, 0, 1, 0], [0, 0, 0, 1]]), np.zeros(2))
    state = eqx.tree_at(lambda s: s.critics.safety_q_target, state, q_h_net)
    obs = np.random.default_rng(11).normal(size=(200, 2)).astype(np.float32)
    chosen_seen, cand, q_h = fisor.sample_candidates(state, obs, np.random.default_rng(3))
    assert cand.shape == (200, 16, 2) and q_h.shape == (200, 16)
    np.testing.assert_allclose(q_h, cand.max(-1), atol=1e-6)
    expected = cand[np.arange(200), q_h.argmin(1)]
    chosen = fisor.make_policy(state)(obs, np.random.default_rng(3))
    np.testing.assert_allclose(chosen, expected, atol=1e-6)
    np.testing.assert_array_equal(chosen, chosen_seen)
    # about half of the candidates sit in the unsafe (+) mode, none of the chosen actions do
    assert 0.3 < np.mean(cand.max(-1) > 0) < 0.7
    assert np.mean(chosen.max(-1) < 0) >= 0.99
    # ties: the first candidate among equals
    ties = fisor.select_lowest_q_h(jnp.arange(8.0).reshape(1, 4, 2), jnp.array([[1.0, 0.0, 0.0, 2.0]]))
    np.testing.assert_array_equal(np.asarray(ties), [[2.0, 3.0]])


# ---------------------------------------------------------------- FQL


@pytest.fixture(scope="module")
def fql_toy():
    """1-D actions ~ N(0, 0.15) and reward r = a with gamma = 0, so the critic learns Q(s, a) = a."""
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (3000, 1))
    actions = np.clip(0.15 * rng.normal(size=(3000, 1)), -1, 1)
    data = DeviceDataset.from_arrays(_dataset(obs, actions, rewards=actions[:, 0]))
    config = FQLConfig(
        critic_hidden=(32,),
        actor_hidden=(32,),
        flow_hidden=(32,),
        gamma=0.0,
        alpha=10.0,
        flow_steps=4,
        critic_lr=1e-3,
        actor_lr=1e-3,
        flow_lr=1e-3,
        batch_size=128,
    )
    state = fql.create_fql_state(config, 1, 1, jax.random.key(0))
    state, info = fql.fql_train_steps(state, data, jax.random.key(1), 1000)
    return state, info, actions


def test_fql_actor_seeks_q_and_alpha_keeps_it_near_data(fql_toy):
    state, info, actions = fql_toy
    obs = np.random.default_rng(2).uniform(-1, 1, (400, 1)).astype(np.float32)
    a_actor = fql.make_policy(state)(obs, np.random.default_rng(0))[:, 0]
    z = jax.random.normal(jax.random.key(5), (400, 1))
    a_teacher = np.asarray(flow_actions(state.agent, jnp.asarray(obs), z, state.config.flow_steps))[:, 0]
    assert float(info["critic/q_loss"]) < 5e-3  # the critic learned Q = a
    assert abs(a_teacher.mean() - actions.mean()) < 0.05  # the flow teacher clones the data
    # With Q = a the normalised Q term pulls every action up by about 1 / (2 alpha mean|Q|) ~ 0.2:
    assert a_actor.mean() > a_teacher.mean() + 0.1  # toward higher Q ...
    assert a_actor.mean() < 0.45  # ... but alpha = 10 keeps it near the data (max Q would be a = 1)
    assert a_actor.std() > 0.04  # and it stays a distribution, not one action
    assert float(info["actor/distill_loss"]) < 0.1


# ---------------------------------------------------------------- the common policy interface


def test_policy_functions_shapes_determinism_and_errors(bc_state, fql_toy, bimodal_fisor):
    # batch sizes as in the tests above, so the compiled policies are reused
    policies = {
        "bc": (bc.make_policy(bc_state[0]), 3, 2, False, 500),
        "fql": (fql.make_policy(fql_toy[0]), 1, 1, True, 400),
        "fisor": (fisor.make_policy(bimodal_fisor[0]), 2, 2, True, 200),
    }
    for name, (policy, obs_dim, act_dim, stochastic, n) in policies.items():
        obs = np.clip(np.random.default_rng(1).normal(size=(n, obs_dim)), -1, 1)
        a1 = policy(obs, np.random.default_rng(42))
        a2 = policy(obs, np.random.default_rng(42))
        assert a1.shape == (n, act_dim) and a1.dtype == np.float32, name
        assert np.all(np.abs(a1) <= 1.0), name
        np.testing.assert_array_equal(a1, a2)
        np.testing.assert_array_equal(policy(obs), policy(obs))  # rng=None is deterministic too
        a3 = policy(obs, np.random.default_rng(43))
        assert (not np.array_equal(a1, a3)) == stochastic, name
        if name != "fisor":  # act is BatchedPolicy.act for all; skip FISOR's costly N = 1 compile
            single = policy.act(obs[0], np.random.default_rng(42))
            assert single.shape == (act_dim,)
        with pytest.raises(ValueError, match=rf"shape \(N, {obs_dim}\)"):
            policy(np.zeros((4, obs_dim + 1)))
        with pytest.raises(ValueError, match="act takes one observation"):
            policy.act(np.zeros((2, obs_dim)))
        with pytest.raises(ValueError, match="rng must be a numpy.random.Generator"):
            policy(obs, 123)
        with pytest.raises(ValueError, match="NaN or inf"):
            policy(np.full((2, obs_dim), np.nan))
    np.testing.assert_array_equal(bc.act(bc_state[0], np.zeros(3)), policies["bc"][0].act(np.zeros(3)))
    wrapped = policy_from_act("const", lambda o, rng: np.full((o.shape[0], 2), 0.5), 3, 2)
    np.testing.assert_array_equal(wrapped(np.zeros((3, 3))), np.full((3, 2), 0.5, np.float32))
    bad = policy_from_act("bad", lambda o, rng: np.zeros((o.shape[0], 5)), 3, 2)
    with pytest.raises(ValueError, match=r"bad: policy returned shape \(3, 5\)"):
        bad(np.zeros((3, 3)))
