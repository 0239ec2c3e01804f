"""SafeFQL learner core: losses against exact answers, gate behaviour, EMA, stop-gradients, vmapped seeds."""

from __future__ import annotations

import io

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from safefql.datasets.sampler import DeviceDataset, sample_batch
from safefql.training.config import SafeFQLConfig, default_config, parse_overrides
from safefql.training.safefql import (
    SafeFQLAgent,
    actor_actions,
    actor_loss,
    actor_raw_actions,
    best_candidate_actions,
    create_train_state,
    create_train_states,
    flow_actions,
    flow_loss,
    fold_observation_normalization,
    observation_stats,
    penalized_rewards,
    reward_critic_loss,
    reward_q_value,
    reward_value,
    reward_value_loss,
    safety_critic_loss,
    safety_q_value,
    safety_value,
    safety_value_loss,
    train_steps,
    train_steps_multi,
    update,
)

# Compiling an update takes seconds on a CPU, so every TINY train_steps call below has the same config,
# the same dataset shapes (OBS, ACT, N) and the same number of steps, and shares one compilation.
GAMMA = 0.9
TINY = SafeFQLConfig(
    critic_hidden=(32, 32),
    value_hidden=(32, 32),
    actor_hidden=(32, 32),
    flow_hidden=(64, 64),
    activation="gelu",
    critic_lr=3e-3,
    actor_lr=3e-3,
    flow_lr=3e-3,
    gamma=GAMMA,
    ema_rate=0.1,
    w_safe=10.0,
    batch_size=64,
    flow_steps=10,
    steps_per_call=100,
)
STEPS = 100
OBS, ACT, N = 6, 1, 240
# Linear critics and values (hidden=()), hand-set in the tests below; 1-D observation and action.
LINEAR = TINY.replace(critic_hidden=(), value_hidden=(), alpha=0.0, w_safe=100.0)


def _expectile_np(x: np.ndarray, tau: float) -> float:
    """tau-expectile by bisection: the root of tau E[(x - e)+] = (1 - tau) E[(e - x)+]."""
    lo, hi = float(x.min()), float(x.max())
    for _ in range(100):
        e = 0.5 * (lo + hi)
        if tau * np.maximum(x - e, 0).mean() - (1 - tau) * np.maximum(e - x, 0).mean() > 0:
            lo = e
        else:
            hi = e
    return 0.5 * (lo + hi)


def _random_arrays(rng: np.random.Generator, n: int = N, obs_dim: int = OBS, act_dim: int = ACT) -> dict:
    return dict(
        observations=rng.normal(size=(n, obs_dim)),
        actions=rng.uniform(-1, 1, size=(n, act_dim)),
        rewards=rng.normal(size=n),
        h=rng.normal(size=n),
        next_observations=rng.normal(size=(n, obs_dim)),
        masks=(rng.uniform(size=n) > 0.1).astype(np.float32),
        costs=(rng.uniform(size=n) > 0.5).astype(np.float32),
    )


def _set_linear_ensemble(ensemble, weight_row: list[float], bias: float | list[float]):
    """Hand-set every member k of a hidden=() ensemble to Q_k(x) = weight_row . x + bias[k]."""
    layer = ensemble.layers[0]
    num = layer.weight.shape[0]
    w = jnp.broadcast_to(jnp.asarray(weight_row, jnp.float32), (num, 1, len(weight_row)))
    b = jnp.broadcast_to(jnp.asarray(bias, jnp.float32).reshape(-1, 1), (num, 1))
    return eqx.tree_at(lambda e: (e.layers[0].weight, e.layers[0].bias), ensemble, (w, b))


def _leaves(tree):
    return jax.tree.leaves(eqx.filter(tree, eqx.is_array))


# ---------------------------------------------------------------- expectile value losses


@pytest.mark.parametrize("which", ["reward", "safety"])
def test_value_loss_minimiser_is_the_expectile(which):
    rng = np.random.default_rng(0)
    n = 2000
    mix = rng.uniform(size=n) < 0.7
    acts = np.clip(np.where(mix, rng.normal(-0.3, 0.1, n), rng.normal(0.5, 0.2, n)), -1, 1).astype(np.float32)
    batch = {"observations": jnp.ones((n, 1)), "actions": jnp.asarray(acts[:, None])}
    cfg = LINEAR
    agent = create_train_state(cfg, 1, 1, jax.random.key(0)).agent
    # Target members Qbar^0(s, a) = a and Qbar^1(s, a) = a + 0.5: the reward side must use the min over
    # members (targets = the action samples), the safety side the max (targets = samples + 0.5).
    if which == "reward":
        agent = eqx.tree_at(
            lambda g: g.reward_q_target, agent, _set_linear_ensemble(agent.reward_q_target, [0, 1], [0, 0.5])
        )
        loss_fn, get_v, tau, shift = reward_value_loss, (lambda g: g.reward_v), 0.9, 0.0  # upper expectile
    else:
        agent = eqx.tree_at(
            lambda g: g.safety_q_target, agent, _set_linear_ensemble(agent.safety_q_target, [0, 1], [0, 0.5])
        )
        loss_fn, get_v, tau, shift = safety_value_loss, (lambda g: g.safety_v), 0.1, 0.5  # lower expectile
    opt = optax.adam(0.02)

    @jax.jit
    def fit(v):
        def step(carry, _):
            v, s = carry
            g = jax.grad(lambda v: loss_fn(eqx.tree_at(get_v, agent, v), batch, cfg)[0])(v)
            upd, s = opt.update(g, s, v)
            return (optax.apply_updates(v, upd), s), None

        return jax.lax.scan(step, (v, opt.init(v)), None, length=1500)[0][0]

    v_fit = fit(get_v(agent))
    fitted = float(v_fit(jnp.ones(1)))
    expected = _expectile_np(acts.astype(np.float64), tau) + shift
    assert abs(fitted - expected) < 2e-3
    assert abs(expected - shift - acts.mean()) > 0.1  # the asymmetry matters: the mean would fail


# ---------------------------------------------------------------- exact values on a chain + bimodal flow


H = np.array([-1.0, -0.6, 0.4, -0.7, -0.9, -0.3], np.float32)
R = np.array([0.5, -1.0, 0.2, 0.8, -0.4, 1.0], np.float32)


def _hj_chain_values() -> np.ndarray:
    exact = np.zeros(len(H))
    exact[-1] = H[-1]  # terminal: y_h = h
    for i in range(len(H) - 2, -1, -1):
        exact[i] = (1 - GAMMA) * H[i] + GAMMA * max(H[i], exact[i + 1])
    return exact


def _train_chain(config: SafeFQLConfig):
    """Deterministic chain 0 -> 1 -> ... -> 5 (terminal), one-hot observations, actions +-0.7 (no effect)."""
    eye = np.eye(OBS, dtype=np.float32)
    idx = np.repeat(np.arange(OBS), N // OBS)
    acts = np.where(np.arange(N) % 2 == 0, 0.7, -0.7).astype(np.float32)[:, None]
    arrays = dict(
        observations=eye[idx],
        actions=acts,
        rewards=R[idx],
        h=H[idx],
        next_observations=eye[np.minimum(idx + 1, OBS - 1)],
        masks=(idx != OBS - 1).astype(np.float32),
        costs=(H[idx] > 0).astype(np.float32),  # unused by the learner; present so shapes match the others
    )
    data = DeviceDataset.from_arrays(arrays)
    state = create_train_state(config, OBS, ACT, jax.random.key(1))
    for i in range(15):
        state, info = train_steps(state, data, jax.random.key(100 + i), STEPS)
    return state, info, eye


@pytest.fixture(scope="module")
def chain_run():
    return _train_chain(TINY)


@pytest.mark.slow  # compiles a train_steps scan (shared by the chain, serialisation and vmapped tests)
def test_safety_critic_matches_hj_value_iteration(chain_run):
    state, info, eye = chain_run
    exact = _hj_chain_values()
    obs = jnp.asarray(eye)
    v = np.asarray(safety_value(state.agent, obs))
    q = np.asarray(safety_q_value(state.agent, obs, jnp.full((len(H), 1), 0.7)))
    assert np.max(np.abs(v - exact)) < 0.02
    assert np.max(np.abs(q - exact)) < 0.02
    assert exact[0] > 0 > H[0]  # state 0 is safe now but the max-backup sees the failure two steps ahead
    assert np.all(np.isfinite([float(x) for x in info.values()]))


@pytest.mark.slow  # a second train_steps compile
def test_layer_norm_critics_match_hj_value_iteration():
    """``critic_layer_norm=True`` (LayerNorm after each hidden activation of the Q and V nets) still
    recovers the exact HJ values, and the NumPy export reproduces the JAX critics."""
    import gymnasium as gym

    from safefql.training.checkpoint import space_to_dict
    from safefql.training.policy import SafeFQLPolicy

    state, info, eye = _train_chain(TINY.replace(critic_layer_norm=True))
    assert state.agent.safety_q.norms and not state.agent.actor.norms
    exact = _hj_chain_values()
    obs = jnp.asarray(eye)
    action = jnp.full((len(H), 1), 0.7)
    q = np.asarray(safety_q_value(state.agent, obs, action))
    assert np.max(np.abs(np.asarray(safety_value(state.agent, obs)) - exact)) < 0.02
    assert np.max(np.abs(q - exact)) < 0.02
    # the trained norms moved away from their (1, 0) init, and NumPy applies them
    assert float(jnp.abs(state.agent.safety_q.norms[0].bias).max()) > 1e-3
    space = gym.spaces.Box(-1.0, 1.0, (OBS,), np.float32)
    header = {
        "config": state.config.to_dict(),
        "observation_space": space_to_dict(space),
        "action_space": space_to_dict(gym.spaces.Box(-1.0, 1.0, (ACT,), np.float32)),
    }
    npol = SafeFQLPolicy.from_agent(state.agent, header).numpy()
    np.testing.assert_allclose(npol.safety_q(eye, np.asarray(action)), q, rtol=1e-5, atol=1e-5)


def test_reward_critic_matches_discounted_return(chain_run):
    state, _, eye = chain_run
    exact = np.zeros(len(R))
    exact[-1] = R[-1]
    for i in range(len(R) - 2, -1, -1):
        exact[i] = R[i] + GAMMA * exact[i + 1]
    obs = jnp.asarray(eye)
    v = np.asarray(reward_value(state.agent, obs))
    q = np.asarray(reward_q_value(state.agent, obs, jnp.full((len(R), 1), -0.7)))
    # Values lie in [0.19, 1.33]; a missing discount or terminal mask would be off by > 0.5.
    assert np.max(np.abs(v - exact)) < 0.1
    assert np.max(np.abs(q - exact)) < 0.1


def test_flow_teacher_fits_bimodal_actions(chain_run):
    state, _, eye = chain_run
    n = 1000
    obs = jnp.asarray(np.tile(eye[2], (n, 1)))
    z = jax.random.normal(jax.random.key(3), (n, 1))
    a = np.asarray(flow_actions(state.agent, obs, z, state.config.flow_steps))[:, 0]
    assert np.mean(a > 0.35) >= 0.4 and np.mean(a < -0.35) >= 0.4  # both modes keep their mass
    assert np.mean(np.abs(a) < 0.35) < 0.1  # few in between (a single Gaussian fit would put ~30% here)
    assert abs(np.median(a[a > 0]) - 0.7) < 0.1 and abs(np.median(a[a < 0]) + 0.7) < 0.1
    assert np.all(np.abs(a) <= 1.0)


# ---------------------------------------------------------------- gated actor


@eqx.filter_jit
def _train_actor(agent: SafeFQLAgent, cfg: SafeFQLConfig, steps: int = 1500) -> SafeFQLAgent:
    obs = jax.random.normal(jax.random.key(5), (256, 1))
    batch = {"observations": obs, "actions": jnp.zeros((256, 1))}
    opt = optax.adam(3e-3)

    def step(carry, k):
        actor, s = carry
        g = jax.grad(lambda m: actor_loss(eqx.tree_at(lambda x: x.actor, agent, m), batch, k, cfg)[0])(actor)
        upd, s = opt.update(g, s, actor)
        return (optax.apply_updates(actor, upd), s), None

    init = (agent.actor, opt.init(agent.actor))
    actor = jax.lax.scan(step, init, jax.random.split(jax.random.key(6), steps))[0][0]
    return eqx.tree_at(lambda x: x.actor, agent, actor)


@pytest.fixture(scope="module")
def toy_critics():
    """1-D action; Q_r = a (greedy action 1) and Q_h = a - 0.2 (unsafe above 0.2)."""
    cfg = LINEAR
    agent = create_train_state(cfg, 1, 1, jax.random.key(4)).agent
    agent = eqx.tree_at(lambda g: g.reward_q, agent, _set_linear_ensemble(agent.reward_q, [0, 1], 0.0))
    agent = eqx.tree_at(lambda g: g.safety_q, agent, _set_linear_ensemble(agent.safety_q, [0, 1], -0.2))
    test_obs = jax.random.normal(jax.random.key(7), (500, 1))
    test_z = jax.random.normal(jax.random.key(8), (500, 1))
    return cfg, agent, test_obs, test_z


@pytest.mark.parametrize(("objective", "margin"), [("plain", 0.0), ("normalized", 0.1)])
def test_gated_actor_picks_best_safe_action(toy_critics, objective, margin):
    cfg, agent, obs, z = toy_critics
    trained = _train_actor(agent, cfg.replace(actor_objective=objective, safety_margin=margin))
    a = np.asarray(actor_actions(trained, obs, z))
    best = 0.2 - margin  # the gate is Q_h + margin <= 0, i.e. a <= 0.2 - margin
    assert a.max() <= best + 0.03
    assert abs(np.median(a) - best) < 0.03


def test_actor_goes_unsafe_without_the_safety_gate(toy_critics):
    cfg, agent, obs, z = toy_critics
    # Safety critic that calls everything safe: the gate is always open and only Q_r drives the actor.
    blind = eqx.tree_at(lambda g: g.safety_q, agent, _set_linear_ensemble(agent.safety_q, [0, 0], -1.0))
    a = np.asarray(actor_actions(_train_actor(blind, cfg), obs, z))
    assert np.median(a) > 0.9
    # Same true critics but no penalty weight: actions past the boundary get no push back.
    a0 = np.asarray(actor_actions(_train_actor(agent, cfg.replace(w_safe=0.0)), obs, z))
    assert a0.max() > 0.2 + 0.03


def test_infeasible_reward_weight_moves_the_actor_where_the_safety_critic_is_flat(toy_critics):
    cfg, agent, obs, z = toy_critics
    # Q_h = 0.5 for every action (inside the failure set the HJ target cannot rank actions) and Q_r = a.
    flat = eqx.tree_at(lambda g: g.safety_q, agent, _set_linear_ensemble(agent.safety_q, [0, 0], 0.5))
    start = np.asarray(actor_actions(flat, obs, z))
    stuck = np.asarray(actor_actions(_train_actor(flat, cfg), obs, z))
    assert np.abs(stuck - start).max() < 0.05  # paper objective: no gradient at all, the actor idles
    moved = np.asarray(actor_actions(_train_actor(flat, cfg.replace(infeasible_reward_weight=0.2)), obs, z))
    assert np.median(moved) > 0.9
    # Where Q_h does rank actions, the penalty (w_safe = 100) still wins over that share of -Q_r.
    kept = np.asarray(actor_actions(_train_actor(agent, cfg.replace(infeasible_reward_weight=0.2)), obs, z))
    assert kept.max() <= 0.2 + 0.03 and abs(np.median(kept) - 0.2) < 0.03


def _set_relu_ensemble(ensemble, first_w, first_b, out_w, out_b: float):
    """Hand-set every member of a hidden=(2,) relu ensemble on input x = (s, a): out_w . relu(W x + b) + c."""
    num = ensemble.layers[0].weight.shape[0]
    tile = lambda x: jnp.broadcast_to(jnp.asarray(x, jnp.float32), (num, *np.shape(x)))
    params = (tile(first_w), tile(first_b), tile([out_w]), tile([out_b]))
    return eqx.tree_at(
        lambda e: (e.layers[0].weight, e.layers[0].bias, e.layers[1].weight, e.layers[1].bias),
        ensemble,
        params,
    )


@pytest.fixture(scope="module")
def notch_critics():
    """1-D action, Q_r = a, Q_h = 0.4 - |a - 0.1|: feasible a <= -0.3 or a >= 0.5, best feasible a = 1.

    From the lower feasible interval, -grad Q_r pushes a up into the notch and grad Q_h pushes it back
    down: gradients alone park the actor at -0.3, the local optimum beside the blocked region.
    """
    cfg = LINEAR.replace(critic_hidden=(2,), activation="relu", w_safe=10.0)
    agent = create_train_state(cfg, 1, 1, jax.random.key(40)).agent
    plus_minus = [[0.0, 1.0], [0.0, -1.0]]  # relu(a) and relu(-a) of the input (s, a)
    reward_q = _set_relu_ensemble(agent.reward_q, plus_minus, [0.0, 0.0], [1.0, -1.0], 0.0)  # = a
    safety_q = _set_relu_ensemble(agent.safety_q, plus_minus, [-0.1, 0.1], [-1.0, -1.0], 0.4)
    agent = eqx.tree_at(lambda g: (g.reward_q, g.safety_q), agent, (reward_q, safety_q))
    agent = eqx.tree_at(lambda g: g.actor.layers[-1].bias, agent, jnp.full((1,), -0.5))  # start below
    return cfg, agent


def test_best_candidate_actions_follow_the_gate(notch_critics):
    cfg, agent = notch_critics
    obs = jnp.zeros((64, 1))
    own = jnp.full((64, 1), -0.3)
    keys = jax.random.split(jax.random.key(41), 2)
    best = np.asarray(best_candidate_actions(agent, obs, own, keys[0], cfg.replace(candidate_actions=256)))
    assert np.all(best > 0.9)  # the feasible maximum of Q_r, across the notch
    q_h = np.asarray(safety_q_value(agent, obs, jnp.asarray(best)))
    assert np.all(q_h <= 0)
    # Nothing feasible (Q_h shifted up by 2): the lowest Q_h, i.e. the draw farthest from the notch.
    blocked = eqx.tree_at(lambda g: g.safety_q.layers[-1].bias, agent, agent.safety_q.layers[-1].bias + 2.0)
    far = np.asarray(best_candidate_actions(blocked, obs, own, keys[1], cfg.replace(candidate_actions=256)))
    assert np.all(np.abs(far - 0.1) > 1.0)
    # candidate_tolerance: the best Q_r (= a) among the near-safest. Q_h = 0.72 - |a - 0.1| with margin 0.4:
    # nothing feasible, the safest draw is near a = -1 (Q_h ~ -0.38). Tolerance 0.1 admits draws up to about
    # 0.1 above it; tolerance 0.3 would admit a <= -0.67, but the cap at -margin / 2 = -0.2 keeps a <= -0.82.
    edge = eqx.tree_at(lambda g: g.safety_q.layers[-1].bias, agent, agent.safety_q.layers[-1].bias + 0.32)
    near = cfg.replace(candidate_actions=256, safety_margin=0.4)
    back = np.asarray(best_candidate_actions(edge, obs, own, keys[1], near))
    assert np.all(back < -0.95)  # no tolerance: straight back to the lowest Q_h
    slide = lambda tol: np.asarray(  # noqa: E731
        best_candidate_actions(edge, obs, own, keys[1], near.replace(candidate_tolerance=tol))
    )
    slid = slide(0.1)
    assert np.all((slid > -0.95) & (slid <= -0.86)) and np.all(slid - back > 0.05)
    capped = slide(0.3)
    assert np.all((capped > -0.87) & (capped <= -0.82 + 1e-5))
    # The actor's own action competes: with no draws better than it, it is kept.
    keep = np.asarray(
        best_candidate_actions(agent, obs, jnp.ones((64, 1)), keys[0], cfg.replace(candidate_actions=8))
    )
    assert np.all(keep == 1.0)
    # The caller's (Q_h, Q_r) of its own actions stand in for scoring them again: same choice.
    own_q = (safety_q_value(agent, obs, own), reward_q_value(agent, obs, own))
    for key in keys:
        searched = cfg.replace(candidate_actions=8)
        given = best_candidate_actions(agent, obs, own, key, searched, own_q)
        again = best_candidate_actions(agent, obs, own, key, searched)
        assert np.array_equal(np.asarray(given), np.asarray(again))


def test_candidate_search_frees_the_actor_from_a_blocked_local_optimum(notch_critics):
    cfg, agent = notch_critics
    obs = jax.random.normal(jax.random.key(42), (500, 1))
    z = jax.random.normal(jax.random.key(43), (500, 1))
    stuck = np.asarray(actor_actions(_train_actor(agent, cfg), obs, z))
    assert abs(np.median(stuck) + 0.3) < 0.05  # gradients alone: parked below the notch
    # The regression must outweigh the safety push inside the notch (w_safe = 10 times |dQ_h/da| = 1).
    searching = cfg.replace(candidate_actions=8, candidate_weight=10.0)
    freed = np.asarray(actor_actions(_train_actor(agent, searching), obs, z))
    assert np.median(freed) > 0.9 and np.mean(freed >= 0.5) > 0.95


# ---------------------------------------------------------------- stop-gradients and EMA


def test_actor_loss_terms_and_no_gradient_to_critics_or_flow():
    agent = create_train_state(TINY, OBS, ACT, jax.random.key(12)).agent
    # Centre Q_h near 0 (output bias) so that both gate branches are populated with and without the
    # margin, and scale the actor's output layer so that some raw actions leave [-1, 1] (box penalty > 0).
    agent = eqx.tree_at(lambda g: g.safety_q.layers[-1].bias, agent, jnp.full((2, 1), -0.03))
    agent = eqx.tree_at(lambda g: g.actor.layers[-1].weight, agent, agent.actor.layers[-1].weight * 30.0)
    obs = jax.random.normal(jax.random.key(13), (64, OBS))
    batch = {"observations": obs, "actions": jnp.zeros((64, ACT))}
    normalized = TINY.replace(
        alpha=0.0, w_safe=5.0, actor_objective="normalized", safety_margin=0.05, action_penalty=2.0
    )
    configs = [
        TINY.replace(alpha=1.0, w_safe=5.0, actor_objective="plain"),
        normalized,
        normalized.replace(infeasible_reward_weight=0.3),
    ]

    @eqx.filter_jit
    def run(agent):
        out = []
        for cfg in configs:
            (loss, info), grads = eqx.filter_value_and_grad(
                lambda g, cfg=cfg: actor_loss(g, batch, jax.random.key(14), cfg), has_aux=True
            )(agent)
            out.append((loss, info, grads))
        # Reference terms, recomputed here from their definitions (actor_loss draws z from its key this way).
        z = jax.random.normal(jax.random.key(14), (64, ACT))
        raw = actor_raw_actions(agent, obs, z)
        a_mu = actor_actions(agent, obs, z)
        distill = jnp.mean(jnp.sum((a_mu - flow_actions(agent, obs, z, TINY.flow_steps)) ** 2, -1))
        return out, (raw, distill, safety_q_value(agent, obs, a_mu), reward_q_value(agent, obs, a_mu))

    out, (raw, distill, q_h, q_r) = run(agent)
    raw, q_h, q_r, distill = np.asarray(raw), np.asarray(q_h), np.asarray(q_r), float(distill)
    box = np.mean(np.sum(np.maximum(np.abs(raw) - 1.0, 0) ** 2, -1))
    assert box > 1e-3 and distill > 1e-3

    def q_terms(margin):
        gate = (q_h + margin <= 0).astype(np.float64)
        assert 0.05 < gate.mean() < 0.95
        reward_term = gate * -q_r / np.abs(q_r).mean()
        penalty = (1 - gate) * 5.0 * np.maximum(q_h + margin, 0)
        return gate, reward_term, penalty

    gate, reward_term, penalty = q_terms(0.0)
    gate_m, reward_m, penalty_m = q_terms(0.05)
    expected = [
        distill + np.mean(reward_term + penalty) + box,  # plain
        reward_m.sum() / gate_m.sum() + penalty_m.sum() / (1 - gate_m).sum() + 2.0 * box,  # normalized
        # 0.3 of the reward term stays outside the gate, averaged with the penalty over that branch
        reward_m.sum() / gate_m.sum()
        + (penalty_m + 0.3 * (1 - gate_m) * -q_r / np.abs(q_r).mean()).sum() / (1 - gate_m).sum()
        + 2.0 * box,
    ]
    assert abs(expected[2] - expected[1]) > 1e-3 * abs(expected[1])
    plain_with_margin = np.mean(reward_m + penalty_m) + 2.0 * box
    assert abs(expected[1] - plain_with_margin) > 1e-2 * abs(expected[1])  # per-branch averaging matters
    for i, (loss, info, grads) in enumerate(out):
        assert float(loss) == pytest.approx(expected[i], rel=1e-4), i
        assert float(info["gate_frac"]) == pytest.approx((gate_m if i >= 1 else gate).mean(), abs=1e-6)
        assert float(info["box_penalty"]) == pytest.approx(box, rel=1e-4)
        if i == 0:
            assert float(info["distill_loss"]) == pytest.approx(distill, rel=1e-5)
        else:
            assert "distill_loss" not in info  # alpha = 0: the teacher is not evaluated
        for name in (
            "reward_q",
            "reward_q_target",
            "reward_v",
            "safety_q",
            "safety_q_target",
            "safety_v",
            "flow",
        ):
            assert max(float(jnp.abs(x).max()) for x in _leaves(getattr(grads, name))) == 0.0, name
        assert sum(float(jnp.abs(x).sum()) for x in _leaves(grads.actor)) > 1e-6


def test_feasible_only_distillation_masks_the_unsafe_teacher_actions():
    agent = create_train_state(TINY, OBS, ACT, jax.random.key(12)).agent
    agent = eqx.tree_at(lambda g: g.safety_q.layers[-1].bias, agent, jnp.full((2, 1), -0.03))
    obs = jax.random.normal(jax.random.key(13), (64, OBS))
    batch = {"observations": obs, "actions": jnp.zeros((64, ACT))}
    gated = TINY.replace(alpha=2.0, safety_margin=0.01, distill_feasible_only=True)
    z = jax.random.normal(jax.random.key(14), (64, ACT))  # the z actor_loss draws from key 14
    target = flow_actions(agent, obs, z, TINY.flow_steps)
    per_sample = np.sum((np.asarray(actor_actions(agent, obs, z)) - np.asarray(target)) ** 2, -1)
    ok = np.asarray(safety_q_value(agent, obs, target)) + 0.01 <= 0
    assert 0.05 < ok.mean() < 0.95  # both kinds of teacher action occur
    loss, info = actor_loss(agent, batch, jax.random.key(14), gated)
    full_loss, full_info = actor_loss(
        agent, batch, jax.random.key(14), gated.replace(distill_feasible_only=False)
    )
    assert float(info["distill_loss"]) == pytest.approx(np.mean(ok * per_sample), rel=1e-4)
    assert float(full_info["distill_loss"]) == pytest.approx(np.mean(per_sample), rel=1e-4)
    assert float(info["teacher_feasible_frac"]) == pytest.approx(ok.mean(), abs=1e-6)
    assert float(full_loss - loss) == pytest.approx(2.0 * np.mean(~ok * per_sample), rel=1e-3)


def test_critic_targets_are_stop_gradient():
    cfg = TINY
    agent = create_train_state(cfg, OBS, ACT, jax.random.key(15)).agent
    batch = sample_batch(
        jax.random.key(16), DeviceDataset.from_arrays(_random_arrays(np.random.default_rng(1))), 32
    )
    checks = [
        (reward_critic_loss, "reward_v"),
        (safety_critic_loss, "safety_v"),
        (reward_value_loss, "reward_q_target"),
        (safety_value_loss, "safety_q_target"),
    ]
    all_grads = eqx.filter_jit(
        lambda g: [eqx.filter_grad(lambda g, f=f: f(g, batch, cfg)[0])(g) for f, _ in checks]
    )(agent)
    for (_, target_name), grads in zip(checks, all_grads, strict=True):
        assert max(float(jnp.abs(x).max()) for x in _leaves(getattr(grads, target_name))) == 0.0
        trained = {"reward_v": "reward_q", "safety_v": "safety_q"}.get(target_name)
        trained = trained or {"reward_q_target": "reward_v", "safety_q_target": "safety_v"}[target_name]
        assert sum(float(jnp.abs(x).sum()) for x in _leaves(getattr(grads, trained))) > 1e-6


@pytest.mark.parametrize("lam", [0.5, 1.0])
def test_actor_backup_mixes_the_actors_next_q_into_the_reward_target(lam):
    """``actor_backup = lam``: y = r + gamma mask ((1 - lam) V_r(s') + lam min_k Qbar_r^k(s', mu(s', 0)))."""
    agent = create_train_state(LINEAR, 1, 1, jax.random.key(18)).agent
    ident = (jnp.ones((1, 1)), jnp.zeros(1))
    layer = lambda m: (m.layers[0].weight, m.layers[0].bias)  # noqa: E731
    agent = eqx.tree_at(
        lambda g: (g.reward_v, g.reward_q_target),
        agent,
        (
            eqx.tree_at(layer, agent.reward_v, ident),
            _set_linear_ensemble(agent.reward_q, [1.0, 2.0], [0.5, -0.5]),
        ),
    )
    nxt = np.array([[-1.0], [0.3], [2.0]], np.float32)
    masks = np.array([1.0, 0.0, 1.0], np.float32)
    batch = {
        "observations": jnp.zeros((3, 1)),
        "actions": jnp.zeros((3, 1)),
        "rewards": jnp.array([1.0, -2.0, 0.5]),
        "h": jnp.zeros(3),
        "next_observations": jnp.asarray(nxt),
        "masks": jnp.asarray(masks),
    }
    cfg = LINEAR.replace(actor_backup=lam)
    mu = np.asarray(actor_actions(agent, jnp.asarray(nxt), jnp.zeros((3, 1))))[:, 0]
    actor_q = nxt[:, 0] + 2.0 * mu - 0.5  # the min over the two target members
    expected = np.array([1.0, -2.0, 0.5]) + GAMMA * masks * ((1 - lam) * nxt[:, 0] + lam * actor_q)
    _, info = eqx.filter_jit(reward_critic_loss)(agent, batch, cfg)
    assert float(info["reward_q_target"]) == pytest.approx(expected.mean(), abs=1e-5)
    _, iql = eqx.filter_jit(reward_critic_loss)(agent, batch, LINEAR)
    assert float(iql["reward_q_target"]) != pytest.approx(expected.mean(), abs=1e-3)  # the mix changes y
    grads = eqx.filter_grad(lambda g: reward_critic_loss(g, batch, cfg)[0])(agent)
    for frozen in (grads.actor, grads.reward_q_target, grads.reward_v):
        assert max(float(jnp.abs(x).max()) for x in _leaves(frozen)) == 0.0


def test_reward_weights_restrict_the_reward_losses_to_weighted_rows():
    agent = create_train_state(TINY, OBS, ACT, jax.random.key(17)).agent
    arrays = {
        k: jnp.asarray(v, jnp.float32) for k, v in _random_arrays(np.random.default_rng(2), n=32).items()
    }
    keep = np.arange(32) % 3 != 0
    weighted = {**arrays, "reward_weights": jnp.asarray(keep, jnp.float32)}
    subset = {k: v[keep] for k, v in arrays.items()}
    # rows of weight 0 with other rewards change nothing
    shifted = {**weighted, "rewards": jnp.where(jnp.asarray(keep), arrays["rewards"], 1e3)}
    for loss_fn in (reward_critic_loss, reward_value_loss):
        expected = float(loss_fn(agent, subset, TINY)[0])
        assert float(loss_fn(agent, weighted, TINY)[0]) == pytest.approx(expected, rel=1e-5)
        assert abs(float(loss_fn(agent, arrays, TINY)[0]) - expected) > 1e-4 * abs(expected)
    # only the critic's target reads the rewards: those of weight-0 rows change nothing
    expected = float(reward_critic_loss(agent, subset, TINY)[0])
    assert float(reward_critic_loss(agent, shifted, TINY)[0]) == pytest.approx(expected, rel=1e-5)
    # the safety losses ignore the weights: the HJ critic needs the violating episodes
    assert float(safety_critic_loss(agent, weighted, TINY)[0]) == float(
        safety_critic_loss(agent, arrays, TINY)[0]
    )


def test_flow_weights_restrict_the_teacher_to_weighted_rows():
    agent = create_train_state(TINY, OBS, ACT, jax.random.key(17)).agent
    arrays = {
        k: jnp.asarray(v, jnp.float32) for k, v in _random_arrays(np.random.default_rng(3), n=32).items()
    }
    keep = jnp.asarray(np.arange(32) % 4 != 0)
    weighted = {**arrays, "flow_weights": keep.astype(jnp.float32)}
    moved = {**weighted, "actions": jnp.where(keep[:, None], arrays["actions"], -arrays["actions"])}
    key = jax.random.key(5)
    loss = float(flow_loss(agent, weighted, key, TINY)[0])
    assert float(flow_loss(agent, moved, key, TINY)[0]) == pytest.approx(loss, rel=1e-6)
    assert abs(float(flow_loss(agent, {**arrays, "actions": moved["actions"]}, key, TINY)[0]) - loss) > 1e-3


def test_weighted_flow_teacher_clones_only_the_weighted_mode():
    """Actions +-0.7 in equal shares; only the +0.7 rows carry weight: the teacher keeps that mode alone."""
    n = 512
    obs = jnp.zeros((n, 1))
    acts = jnp.where(jnp.arange(n)[:, None] % 2 == 0, 0.7, -0.7)
    batch = {"observations": obs, "actions": acts, "flow_weights": (acts[:, 0] > 0).astype(jnp.float32)}
    cfg = TINY.replace(flow_hidden=(32, 32))
    agent = create_train_state(cfg, 1, 1, jax.random.key(9)).agent
    opt = optax.adam(1e-2)

    @eqx.filter_jit
    def fit(flow):
        def step(carry, k):
            flow, s = carry
            g = jax.grad(lambda m: flow_loss(eqx.tree_at(lambda x: x.flow, agent, m), batch, k, cfg)[0])(flow)
            upd, s = opt.update(g, s, flow)
            return (optax.apply_updates(flow, upd), s), None

        return jax.lax.scan(step, (flow, opt.init(flow)), jax.random.split(jax.random.key(10), 1500))[0][0]

    agent = eqx.tree_at(lambda x: x.flow, agent, fit(agent.flow))
    z = jax.random.normal(jax.random.key(11), (1000, 1))
    a = np.asarray(flow_actions(agent, jnp.zeros((1000, 1)), z, cfg.flow_steps))[:, 0]
    assert np.mean(a > 0.35) >= 0.95  # the unweighted -0.7 mode is gone (it would hold ~50%)
    assert abs(np.median(a) - 0.7) < 0.1


def test_safety_backup_values_and_terminal():
    cfg = LINEAR.replace(gamma=0.8)
    agent = create_train_state(LINEAR, 1, 1, jax.random.key(17)).agent
    # V_h(s) = s exactly, Q_h^k(s, a) = 0.
    v = eqx.tree_at(
        lambda m: (m.layers[0].weight, m.layers[0].bias), agent.safety_v, (jnp.ones((1, 1)), jnp.zeros(1))
    )
    agent = eqx.tree_at(
        lambda g: (g.safety_v, g.safety_q), agent, (v, _set_linear_ensemble(agent.safety_q, [0, 0], 0.0))
    )
    h = jnp.array([0.5, -1.0, -1.0, 0.3])
    nxt = jnp.array([[2.0], [0.4], [-3.0], [2.0]])
    masks = jnp.array([1.0, 1.0, 1.0, 0.0])
    batch = {
        "observations": jnp.zeros((4, 1)),
        "actions": jnp.zeros((4, 1)),
        "h": h,
        "next_observations": nxt,
        "masks": masks,
    }
    loss, info = eqx.filter_jit(safety_critic_loss)(agent, batch, cfg)
    y = np.array([0.2 * 0.5 + 0.8 * 2.0, 0.2 * -1 + 0.8 * 0.4, 0.2 * -1 + 0.8 * -1, 0.3])
    assert float(info["safety_q_target"]) == pytest.approx(y.mean(), abs=1e-6)
    assert float(loss) == pytest.approx(2 * np.mean(y**2), rel=1e-5)  # two members, both predicting 0
    # margin_floor -0.5: the margins -1 become -0.5 (the next values stay the critic's own)
    floored = eqx.filter_jit(safety_critic_loss)(agent, batch, cfg.replace(margin_floor=-0.5))[1]
    y_floor = np.array([0.2 * 0.5 + 0.8 * 2.0, 0.2 * -0.5 + 0.8 * 0.4, 0.2 * -0.5 + 0.8 * -0.5, 0.3])
    assert float(floored["safety_q_target"]) == pytest.approx(y_floor.mean(), abs=1e-6)
    with pytest.raises(ValueError, match=r"margin_floor must lie in \[-inf, 0.0\)"):
        cfg.replace(margin_floor=0.0)


def test_held_action_backups_compose_one_step_backups():
    """k-step batches (h of shape (B, k)): HJ target = the k-fold one-step backup; reward uses gamma^k."""
    gamma = 0.8
    cfg = LINEAR.replace(gamma=gamma)
    agent = create_train_state(LINEAR, 1, 1, jax.random.key(17)).agent
    ident = (jnp.ones((1, 1)), jnp.zeros(1))  # V(s) = s for both value nets, every Q member = 0
    layer = lambda m: (m.layers[0].weight, m.layers[0].bias)  # noqa: E731
    agent = eqx.tree_at(
        lambda g: (g.safety_v, g.reward_v, g.safety_q, g.reward_q),
        agent,
        (
            eqx.tree_at(layer, agent.safety_v, ident),
            eqx.tree_at(layer, agent.reward_v, ident),
            _set_linear_ensemble(agent.safety_q, [0, 0], 0.0),
            _set_linear_ensemble(agent.reward_q, [0, 0], 0.0),
        ),
    )
    h = np.array([[-0.2, -0.1, 0.5], [-1.0, -1.0, -1.0], [0.4, 0.4, 0.4]], np.float32)
    nxt = np.array([[-2.0], [1.5], [3.0]], np.float32)
    masks = np.array([1.0, 1.0, 0.0], np.float32)
    batch = {
        "observations": jnp.zeros((3, 1)),
        "actions": jnp.zeros((3, 1)),
        "rewards": jnp.array([1.0, 2.0, 3.0]),
        "h": jnp.asarray(h),
        "next_observations": jnp.asarray(nxt),
        "masks": jnp.asarray(masks),
    }
    expected = []
    for row, v_next, mask in zip(h, nxt[:, 0], masks, strict=True):
        y = (1 - gamma) * row[-1] + gamma * max(row[-1], v_next) if mask else row[-1]
        for hi in row[-2::-1]:
            y = (1 - gamma) * hi + gamma * max(hi, y)
        expected.append(y)
    # Row 0: the failure at the block's third step shows through although both ends are safe.
    assert expected[0] > 0 > max(h[0, 0], nxt[0, 0])
    _, info = eqx.filter_jit(safety_critic_loss)(agent, batch, cfg)
    assert float(info["safety_q_target"]) == pytest.approx(np.mean(expected), abs=1e-6)
    _, info = eqx.filter_jit(reward_critic_loss)(agent, batch, cfg)
    y_r = np.array([1.0, 2.0, 3.0]) + gamma**3 * masks * nxt[:, 0]
    assert float(info["reward_q_target"]) == pytest.approx(y_r.mean(), abs=1e-6)
    # cost_penalty kappa: each step whose state is inside the failure set (h > 0) costs kappa, discounted.
    _, info = eqx.filter_jit(reward_critic_loss)(agent, batch, cfg.replace(cost_penalty=2.0))
    steps_inside = np.array([gamma**2, 0.0, 1 + gamma + gamma**2])
    assert float(info["reward_q_target"]) == pytest.approx(np.mean(y_r - 2.0 * steps_inside), abs=1e-5)
    one_step = {**batch, "h": batch["h"][:, 0], "rewards": jnp.zeros(3)}
    assert np.allclose(penalized_rewards(one_step, cfg.replace(cost_penalty=3.0)), [0.0, 0.0, -3.0])


@pytest.mark.slow  # compiles one update
def test_ema_targets_move_at_ema_rate():
    state = create_train_state(TINY, OBS, ACT, jax.random.key(18))
    rate = TINY.ema_rate
    data = DeviceDataset.from_arrays(_random_arrays(np.random.default_rng(2)))
    # Start the targets away from the online nets so the mix is visible.
    state = eqx.tree_at(
        lambda s: (s.agent.reward_q_target, s.agent.safety_q_target),
        state,
        (
            jax.tree.map(lambda x: x + 1.0, state.agent.reward_q_target),
            jax.tree.map(lambda x: x - 1.0, state.agent.safety_q_target),
        ),
    )
    new, _ = update(state, data.sample(jax.random.key(19), TINY.batch_size), jax.random.key(20))
    for tgt, onl in (("reward_q_target", "reward_q"), ("safety_q_target", "safety_q")):
        old_t = _leaves(getattr(state.agent, tgt))
        new_o = _leaves(getattr(new.agent, onl))
        new_t = _leaves(getattr(new.agent, tgt))
        for a, b, c in zip(old_t, new_o, new_t, strict=True):
            np.testing.assert_allclose(c, (1 - rate) * a + rate * b, rtol=0, atol=2e-6)
            assert float(jnp.abs(c - a).max()) > 0.5 * rate  # moved by ~rate * |online - target| ~ rate
        # The online nets did move this step.
        old_o = _leaves(getattr(state.agent, onl))
        assert max(float(jnp.abs(b - o).max()) for b, o in zip(new_o, old_o, strict=True)) > 0
    assert int(new.step) == 1


# ---------------------------------------------------------------- multi-seed, serialisation, validation


@pytest.mark.slow
def test_vmapped_seeds_equal_single_seed_runs():
    data = DeviceDataset.from_arrays(_random_arrays(np.random.default_rng(3)))
    keys = jax.random.split(jax.random.key(21), 2)
    run_keys = jax.random.split(jax.random.key(22), 2)
    states = create_train_states(TINY, OBS, ACT, keys)
    multi, multi_info = train_steps_multi(states, data, run_keys, STEPS)
    single, single_info = train_steps(create_train_state(TINY, OBS, ACT, keys[1]), data, run_keys[1], STEPS)
    picked = jax.tree.map(lambda x: x[1], eqx.filter(multi, eqx.is_array))
    for a, b in zip(_leaves(picked), _leaves(single), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert float(multi_info["critic/reward_q_loss"][1]) == pytest.approx(
        float(single_info["critic/reward_q_loss"]), rel=1e-4
    )
    # Different seeds really differ.
    assert (
        float(jnp.abs(multi.agent.actor.layers[0].weight[0] - multi.agent.actor.layers[0].weight[1]).max())
        > 1e-3
    )


def test_train_state_serialises_into_template():
    data = DeviceDataset.from_arrays(_random_arrays(np.random.default_rng(4)))
    state, _ = train_steps(
        create_train_state(TINY, OBS, ACT, jax.random.key(23)), data, jax.random.key(24), STEPS
    )
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, state)
    buf.seek(0)
    loaded = eqx.tree_deserialise_leaves(buf, create_train_state(TINY, OBS, ACT, jax.random.key(99)))
    for a, b in zip(_leaves(loaded), _leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(loaded.step) == STEPS


def test_losses_decrease_on_random_data():
    data = DeviceDataset.from_arrays(_random_arrays(np.random.default_rng(5)))
    state = create_train_state(TINY, OBS, ACT, jax.random.key(25))
    state, first = train_steps(state, data, jax.random.key(26), STEPS)
    for i in range(4):
        state, last = train_steps(state, data, jax.random.key(200 + i), STEPS)
    assert float(last["flow/flow_loss"]) < 0.9 * float(first["flow/flow_loss"])
    assert float(last["critic/reward_q_loss"]) < 0.9 * float(first["critic/reward_q_loss"])
    assert all(np.isfinite(float(v)) for v in last.values())
    assert int(state.step) == 5 * STEPS


def test_sampler_draws_rows_of_the_dataset():
    arrays = _random_arrays(np.random.default_rng(6), n=7)
    data = DeviceDataset.from_arrays(arrays)
    assert data.size == 7
    batch = jax.jit(lambda k: sample_batch(k, data, 700))(jax.random.key(28))
    assert set(batch) == {"observations", "actions", "rewards", "h", "next_observations", "masks", "costs"}
    assert batch["observations"].shape == (700, OBS) and batch["observations"].dtype == jnp.float32
    rows = np.asarray(batch["observations"])
    idx = [int(np.argmin(np.abs(arrays["observations"] - r).sum(1))) for r in rows]
    np.testing.assert_allclose(np.asarray(batch["h"]), arrays["h"][idx], rtol=1e-6)
    counts = np.bincount(idx, minlength=7)
    assert counts.min() > 60 and counts.max() < 140  # uniform: 100 expected per row


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.pop("h"), "no safety margin 'h'"),
        (lambda d: d.pop("masks"), "missing key 'masks'"),
        (lambda d: d.__setitem__("rewards", d["rewards"][:-1]), "same length"),
        (lambda d: d.__setitem__("rewards", d["rewards"][:, None]), r"'rewards' must have shape \(N,\)"),
        (lambda d: d.__setitem__("observations", d["observations"][:, 0]), r"'observations' must have shape"),
        (lambda d: d.__setitem__("next_observations", d["next_observations"][:, :2]), "next_observations"),
        (lambda d: d["h"].__setitem__(3, np.nan), "'h' has 1 non-finite"),
        (lambda d: d.__setitem__("actions", d["actions"] * 2), r"'actions' must lie in \[-1, 1\]"),
        (lambda d: d.__setitem__("masks", d["masks"] - 1), "'masks' must lie in"),
        (lambda d: d.__setitem__("costs", np.array(["a"] * 50)), "'costs' must be a real numeric"),
    ],
)
def test_device_dataset_validation(change, match):
    arrays = _random_arrays(np.random.default_rng(7))
    change(arrays)
    with pytest.raises(ValueError, match=match):
        DeviceDataset.from_arrays(arrays)


def test_bad_arguments_raise():
    data = DeviceDataset.from_arrays(_random_arrays(np.random.default_rng(8)))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        sample_batch(jax.random.key(0), data, 0)
    with pytest.raises(ValueError, match="actions in"):
        create_train_state(TINY, OBS, ACT, jax.random.key(0), action_low=-2.0, action_high=2.0)
    with pytest.raises(ValueError, match="act_dim must be a positive integer"):
        create_train_state(TINY, 3, 0, jax.random.key(0))
    with pytest.raises(ValueError, match="config must be a SafeFQLConfig"):
        create_train_state({"batch_size": 3}, OBS, ACT, jax.random.key(0))
    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
        train_steps(create_train_state(TINY, OBS, ACT, jax.random.key(0)), data, jax.random.key(1), 0)


def test_parse_overrides_reads_json_values_and_rejects_bad_items():
    changes = parse_overrides(["alpha=3", "critic_hidden=[64, 64]", "activation=relu", "grad_clip=null"])
    assert changes == {"alpha": 3, "critic_hidden": (64, 64), "activation": "relu", "grad_clip": None}
    cfg = default_config("safefql/BoatNav-v0").replace(**changes)
    assert cfg.alpha == 3.0 and cfg.critic_hidden == (64, 64) and cfg.grad_clip is None
    for bad in ("alpha", "=3"):
        with pytest.raises(ValueError, match="--set expects key=value"):
            parse_overrides([bad])


def test_config_roundtrip_and_errors():
    import json

    cfg = default_config("safefql/BoatNav-v0")
    assert SafeFQLConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.alpha == 0.0 and cfg.w_safe > 1.0 and max(cfg.critic_hidden) <= 128  # README tuning notes
    assert cfg.action_repeat == 10 and cfg.safety_margin > 0 and cfg.candidate_actions > 0  # tuning notes
    assert default_config("SafetyPointGoal1-v0").critic_hidden != cfg.critic_hidden
    assert default_config("SafetyPointGoal1-v0").action_repeat == 1
    point, car = default_config("SafetyPointGoal1Gymnasium-v0"), default_config("SafetyCarGoal1Gymnasium-v0")
    # Goal notes in config.py: one config for Point and Car, the recovering teacher on standardised inputs
    assert point == car and point.flow_episodes == "recovering" and point.safety_margin == 0.1
    assert point.normalize_observations and point.expectile_safety == 0.5
    other = default_config("SafetyPointButton1Gymnasium-v0")  # other tasks keep the generic Safety-Gym config
    assert other.flow_episodes == "all" and not other.normalize_observations and other.expectile_safety == 0.9
    with pytest.raises(ValueError, match="action_repeat must be a positive integer"):
        cfg.replace(action_repeat=0)
    assert default_config("SomethingElse-v3") == default_config("Pendulum-v1")
    assert cfg.replace(alpha=3.0).alpha == 3.0 and cfg.alpha != 3.0
    with pytest.raises(ValueError, match=r"unknown SafeFQLConfig keys \['bogus'\]"):
        SafeFQLConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="unknown SafeFQLConfig fields"):
        cfg.replace(lr=1.0)
    with pytest.raises(ValueError, match="actor_objective must be one of"):
        cfg.replace(actor_objective="fancy")
    with pytest.raises(ValueError, match="safety_margin must lie in"):
        cfg.replace(safety_margin=-0.1)
    with pytest.raises(ValueError, match=r"infeasible_reward_weight must lie in \[0.0, 1.0\]"):
        cfg.replace(infeasible_reward_weight=1.5)
    with pytest.raises(ValueError, match="gamma must lie in"):
        cfg.replace(gamma=1.0)
    with pytest.raises(ValueError, match="critic_hidden must contain positive integers"):
        cfg.replace(critic_hidden=(64, 0))
    with pytest.raises(ValueError, match="activation must be one of"):
        cfg.replace(activation="swish2")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        cfg.replace(batch_size=0)
    for bad in (-1, True, 2.0):
        with pytest.raises(ValueError, match="candidate_actions must be an integer >= 0"):
            cfg.replace(candidate_actions=bad)
    with pytest.raises(ValueError, match="candidate_weight must lie in"):
        cfg.replace(candidate_weight=-1.0)
    with pytest.raises(ValueError, match="candidate_tolerance must lie in"):
        cfg.replace(candidate_tolerance=-0.1)
    with pytest.raises(ValueError, match="cost_penalty must lie in"):
        cfg.replace(cost_penalty=-1.0)
    with pytest.raises(ValueError, match="actor_backup must lie in"):
        cfg.replace(actor_backup=1.5)
    with pytest.raises(ValueError, match="reward_episodes must be one of"):
        cfg.replace(reward_episodes="unsafe")
    with pytest.raises(ValueError, match="flow_episodes must be one of"):
        cfg.replace(flow_episodes="cost0")
    with pytest.raises(ValueError, match="distill_feasible_only must be a bool"):
        cfg.replace(distill_feasible_only="yes")
    with pytest.raises(ValueError, match="normalize_observations must be a bool"):
        cfg.replace(normalize_observations=1)
    with pytest.raises(ValueError, match="critic_layer_norm must be a bool"):
        cfg.replace(critic_layer_norm="true")
    with pytest.raises(ValueError, match="distill_feasible_only=True needs alpha > 0"):
        cfg.replace(distill_feasible_only=True, alpha=0.0)
    with pytest.raises(ValueError, match="grad_clip must be a finite number"):
        cfg.replace(grad_clip=float("nan"))
    with pytest.raises(ValueError, match="env_id must be a string"):
        default_config(3)


def test_observation_stats_and_fold_over_ensembles_and_seeds():
    obs = np.array([[1.0, 9.81, 0.0], [3.0, 9.81, 2.0], [5.0, 9.81, 4.0]], np.float32)
    mean, std = observation_stats(obs)
    np.testing.assert_allclose(mean, [3.0, 9.81, 2.0], rtol=1e-6)
    np.testing.assert_allclose(std, [np.sqrt(8 / 3), 1.0, np.sqrt(8 / 3)], rtol=1e-6)  # constant: std 1
    with pytest.raises(ValueError, match=r"non-empty \(N, obs_dim\) array"):
        observation_stats(np.zeros((0, 3)))
    cfg = TINY.replace(num_safety_q=3)
    state = create_train_states(cfg, 3, 2, jax.random.split(jax.random.key(0), 2))  # 2 seeds x ensembles
    folded = fold_observation_normalization(state.agent, mean, std)
    rng = np.random.default_rng(1)
    raw = (rng.normal(size=(6, 3)) * 4 + [0, 9.81, 0]).astype(np.float32)
    act, z = rng.uniform(-1, 1, (6, 2)).astype(np.float32), rng.normal(size=(6, 2)).astype(np.float32)
    for i in range(2):
        a, f = (jax.tree.map(lambda x, i=i: x[i] if eqx.is_array(x) else x, m) for m in (state.agent, folded))
        scaled = (raw - mean) / std
        for fn, args in (
            (safety_q_value, (act,)),
            (reward_q_value, (act,)),
            (safety_value, ()),
            (reward_value, ()),
        ):
            np.testing.assert_allclose(fn(f, raw, *args), fn(a, scaled, *args), atol=2e-5)
        np.testing.assert_allclose(actor_actions(f, raw, z), actor_actions(a, scaled, z), atol=2e-5)
        np.testing.assert_allclose(flow_actions(f, raw, z, 3), flow_actions(a, scaled, z, 3), atol=2e-5)
        assert not np.allclose(safety_value(a, raw), safety_value(a, scaled))  # the fold did something
