"""The SafeFQL learner: IQL reward critics, HJ safety critics, flow teacher and gated one-step actor.

Implements DESIGN.md sections 2-3. Actions are assumed to lie in [-1, 1] per dimension (the boat's and
Safety-Gymnasium's action spaces); ``create_train_state`` rejects other bounds. Every network takes an
unbatched input; the functions below take batched inputs ``(..., dim)`` and vmap over the leading axes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from safefql.datasets.sampler import DeviceDataset, sample_batch
from safefql.training.config import EPISODE_WEIGHTS, SafeFQLConfig
from safefql.training.networks import MLP, ema_update, ensemble_apply, make_ensemble

Batch = dict[str, Array]
Info = dict[str, Array]


class SafeFQLAgent(eqx.Module):
    """All networks of SafeFQL. Ensembles carry a leading member axis (``networks.make_ensemble``)."""

    reward_q: MLP  # ensemble, Q_r^k(concat(obs, action)) -> scalar
    reward_q_target: MLP  # EMA copy of reward_q
    reward_v: MLP  # V_r(obs) -> scalar
    safety_q: MLP  # ensemble, Q_h^k(concat(obs, action)) -> scalar
    safety_q_target: MLP  # EMA copy of safety_q
    safety_v: MLP  # V_h(obs) -> scalar
    flow: MLP  # v(concat(obs, x_t, t)) -> velocity
    actor: MLP  # mu(concat(obs, z)) -> pre-clip action


class TrainState(eqx.Module):
    """Agent, one Adam state per parameter group, and the update counter. ``config`` is static."""

    agent: SafeFQLAgent
    critic_opt_state: optax.OptState  # over (reward_q, reward_v, safety_q, safety_v)
    actor_opt_state: optax.OptState
    flow_opt_state: optax.OptState
    step: Int[Array, ""]
    config: SafeFQLConfig = eqx.field(static=True)


_NETWORKS = tuple(f.name for f in dataclasses.fields(SafeFQLAgent))  # every network of the agent


def observation_stats(observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (float32) for ``normalize_observations``.

    A feature whose std is below 1e-3 (constant in the data, like the Safety-Gymnasium accelerometer's
    gravity axis) is only centred (std 1): dividing by a tiny std would blow up any deviation at deployment.
    """
    obs = np.asarray(observations, dtype=np.float64)
    if obs.ndim != 2 or obs.shape[0] == 0:
        raise ValueError(f"observation_stats needs a non-empty (N, obs_dim) array, got shape {obs.shape}")
    mean, std = obs.mean(0), obs.std(0)
    std = np.where(std >= 1e-3, std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def fold_observation_normalization(agent: SafeFQLAgent, mean: Array, std: Array) -> SafeFQLAgent:
    """The agent that computes on raw observations what ``agent`` computes on ``(obs - mean) / std``.

    Every network reads the observation first in its input, so the standardisation is a linear map folded
    into the obs columns of its first layer: ``W' = W / std``, ``b' = b - W (mean / std)``. Works on
    ensembles and stacked seeds (any leading axes of the weights).
    """
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    d = mean.shape[-1]

    def fold(net: MLP) -> MLP:
        first = net.layers[0]
        w_obs = first.weight[..., :d]
        weight = jnp.concatenate([w_obs / std, first.weight[..., d:]], axis=-1)
        bias = first.bias - jnp.einsum("...oi,i->...o", w_obs, mean / std)
        return eqx.tree_at(lambda n: (n.layers[0].weight, n.layers[0].bias), net, (weight, bias))

    return eqx.tree_at(
        lambda g: [getattr(g, name) for name in _NETWORKS],
        agent,
        [fold(getattr(agent, name)) for name in _NETWORKS],
    )


def _sg(tree):
    return jax.tree.map(jax.lax.stop_gradient, tree)


def _leading(fn: Callable, *xs: Array) -> Array:
    """Apply an unbatched ``fn`` over all leading axes of ``xs`` (last axis is the feature axis)."""
    lead = xs[0].shape[:-1]
    flat = [x.reshape(-1, x.shape[-1]) for x in xs]
    out = jax.vmap(fn)(*flat)
    return out.reshape(lead + out.shape[1:])


def _q_all(ensemble: MLP, obs: Array, actions: Array) -> Array:
    """Every member's Q value, shape ``(..., num)``."""
    return _leading(lambda o, a: ensemble_apply(ensemble, jnp.concatenate([o, a])), obs, actions)


def _v(net: MLP, obs: Array) -> Array:
    return _leading(net, obs)


def flow_actions(
    agent: SafeFQLAgent, obs: Float[Array, "... o"], z: Float[Array, "... a"], steps: int
) -> Array:
    """Teacher sample: ``steps`` Euler steps from noise ``z`` (t=0) to t=1, then clip to [-1, 1]."""

    def single(o, x0):
        def body(i, x):
            t = jnp.full((1,), i / steps, dtype=x.dtype)
            return x + agent.flow(jnp.concatenate([o, x, t])) / steps

        return jax.lax.fori_loop(0, steps, body, x0)

    return jnp.clip(_leading(single, obs, z), -1.0, 1.0)


def actor_raw_actions(agent: SafeFQLAgent, obs: Float[Array, "... o"], z: Float[Array, "... a"]) -> Array:
    """One-step policy output ``mu(s, z)`` before clipping."""
    return _leading(lambda o, x: agent.actor(jnp.concatenate([o, x])), obs, z)


def actor_actions(agent: SafeFQLAgent, obs: Float[Array, "... o"], z: Float[Array, "... a"]) -> Array:
    """One-step policy ``clip(mu(s, z))``."""
    return jnp.clip(actor_raw_actions(agent, obs, z), -1.0, 1.0)


def safety_q_value(agent: SafeFQLAgent, obs: Array, actions: Array) -> Array:
    """Pessimistic safety Q, ``max_k Q_h^k(s, a)`` (online nets); ``<= 0`` means predicted safe."""
    return _q_all(agent.safety_q, obs, actions).max(-1)


def reward_q_value(agent: SafeFQLAgent, obs: Array, actions: Array) -> Array:
    """Pessimistic reward Q, ``min_k Q_r^k(s, a)`` (online nets)."""
    return _q_all(agent.reward_q, obs, actions).min(-1)


def safety_value(agent: SafeFQLAgent, obs: Array) -> Array:
    """``V_h(s)``; ``<= 0`` means predicted to stay safe."""
    return _v(agent.safety_v, obs)


def reward_value(agent: SafeFQLAgent, obs: Array) -> Array:
    """``V_r(s)``."""
    return _v(agent.reward_v, obs)


def expectile_weight(diff: Array, tau: float) -> Array:
    """IQL weight ``|tau - 1(diff < 0)|``; with ``diff = target - v``, v tracks the upper tau-expectile."""
    return jnp.abs(tau - (diff < 0).astype(diff.dtype))


def hj_backup(h: Array, next_value: Array, gamma: float) -> Array:
    """Discounted HJ max-backup ``(1 - gamma) h + gamma max(h, next_value)`` (DESIGN.md section 2)."""
    return (1.0 - gamma) * h + gamma * jnp.maximum(h, next_value)


def _repeat(batch: Batch) -> int:
    """Steps per transition: k for held-action batches (``h`` of shape (B, k)), else 1."""
    return batch["h"].shape[1] if batch["h"].ndim == 2 else 1


def _weighted_mean(per_sample: Array, batch: Batch, weights_key: str) -> Array:
    """Batch mean of a per-sample loss, weighted by ``batch[weights_key]`` where the data carries it."""
    weights = batch.get(weights_key)
    if weights is None:
        return jnp.mean(per_sample)
    return jnp.sum(weights * per_sample) / jnp.maximum(jnp.sum(weights), 1.0)


# ---------------------------------------------------------------- losses: (loss, info dict of scalars)


def reward_value_loss(agent: SafeFQLAgent, batch: Batch, config: SafeFQLConfig) -> tuple[Array, Info]:
    """``|tau_r - 1(u < 0)| u^2`` with ``u = min_k Qbar_r^k(s, a) - V_r(s)`` (over ``reward_weights``)."""
    q = jax.lax.stop_gradient(_q_all(agent.reward_q_target, batch["observations"], batch["actions"]).min(-1))
    v = _v(agent.reward_v, batch["observations"])
    u = q - v
    loss = _weighted_mean(expectile_weight(u, config.expectile_reward) * u**2, batch, "reward_weights")
    return loss, {"reward_v_loss": loss, "reward_v": _weighted_mean(v, batch, "reward_weights")}


def penalized_rewards(batch: Batch, config: SafeFQLConfig) -> Array:
    """``r - kappa * sum_i gamma^i 1[h_i > 0]`` (``kappa = cost_penalty``), summed like the k-step rewards.

    ``h_i`` are the margins of the states the rewards were collected in (``s_t .. s_{t+k-1}``), so each step
    spent inside the failure set costs ``kappa``. A terminal block's padding repeats the terminal margin.
    """
    h = batch["h"] if batch["h"].ndim == 2 else batch["h"][:, None]
    discounts = config.gamma ** jnp.arange(h.shape[1], dtype=h.dtype)
    return batch["rewards"] - config.cost_penalty * jnp.sum((h > 0).astype(h.dtype) * discounts, axis=-1)


def actor_next_value(agent: SafeFQLAgent, next_obs: Array, act_dim: int) -> Array:
    """``min_k Qbar_r^k(s', mu(s', 0))``: the reward of what the gated actor itself does next (sg'd).

    IQL's ``V_r(s')`` values a state by the data's best in-support continuation, which may pass where the
    actor's gate will not let it (on the boat, the corridor under the lower rock), so the actor heads for
    a place it then cannot leave. Backing up the actor's own action lets ``Q_r`` see that.
    """
    frozen = _sg(agent)
    a_next = actor_actions(frozen, next_obs, jnp.zeros(next_obs.shape[:-1] + (act_dim,)))
    return jax.lax.stop_gradient(_q_all(frozen.reward_q_target, next_obs, a_next).min(-1))


def reward_critic_loss(agent: SafeFQLAgent, batch: Batch, config: SafeFQLConfig) -> tuple[Array, Info]:
    """``(r' + gamma * mask * V_r(s') - Q_r^k(s, a))^2``, summed over members, mean over the batch.

    ``r' = r`` (the paper's reward critic), or with ``cost_penalty > 0`` the reward less ``kappa`` per step
    inside the failure set: Q_r then ranks the detour above the path through a hazard, which the gate
    alone only blocks once the hazard is close. With ``reward_weights`` in the batch (config
    ``reward_episodes="safe"``) only the transitions of episodes that never enter the failure set count:
    ``V_r`` then values a state by how the data's safe episodes continued from it, not by paths through a
    hazard. With ``actor_backup = lambda > 0`` the target's next value is ``(1 - lambda) V_r(s') + lambda
    min_k Qbar_r^k(s', mu(s', 0))`` (:func:`actor_next_value`; FQL's backup at ``lambda = 1``).
    """
    next_obs = batch["next_observations"]
    next_v = _v(agent.reward_v, next_obs)
    if config.actor_backup > 0:  # static: the IQL target stays bit-identical at 0
        lam = config.actor_backup
        next_v = (1.0 - lam) * next_v + lam * actor_next_value(agent, next_obs, batch["actions"].shape[-1])
    discount = config.gamma ** _repeat(batch)  # k-step held-action batches carry discounted reward sums
    rewards = penalized_rewards(batch, config) if config.cost_penalty > 0 else batch["rewards"]
    y = jax.lax.stop_gradient(rewards + discount * batch["masks"] * next_v)
    q = _q_all(agent.reward_q, batch["observations"], batch["actions"])
    loss = _weighted_mean(jnp.sum((q - y[..., None]) ** 2, axis=-1), batch, "reward_weights")
    return loss, {
        "reward_q_loss": loss,
        "reward_q": _weighted_mean(q.mean(-1), batch, "reward_weights"),
        "reward_q_target": _weighted_mean(y, batch, "reward_weights"),
    }


def safety_critic_loss(agent: SafeFQLAgent, batch: Batch, config: SafeFQLConfig) -> tuple[Array, Info]:
    """HJ backup ``y = (1 - gamma) h + gamma max(h, V_h(s'))`` (``y = h`` at terminals), per-member MSE.

    With ``margin_floor = f < 0`` the backup uses ``max(h, f)``: the failure set is unchanged, every target
    can only rise (more conservative; as gamma -> 1 the zero level set is the same), and the critic no longer
    spends its error on how far off the safe states are.

    For k-step held-action batches (``h`` of shape (B, k)) the same backup runs through the k margins,
    last to first, starting from ``V_h(s_{t+k})``: the exact k-fold composition of the one-step backup.
    """
    h = batch["h"] if batch["h"].ndim == 2 else batch["h"][:, None]
    if config.margin_floor is not None:  # static: far-off margins stop spending the critic's capacity
        h = jnp.maximum(h, config.margin_floor)
    next_v = _v(agent.safety_v, batch["next_observations"])
    last = h[:, -1]
    y = batch["masks"] * hj_backup(last, next_v, config.gamma) + (1.0 - batch["masks"]) * last
    for i in range(h.shape[1] - 2, -1, -1):
        y = hj_backup(h[:, i], y, config.gamma)
    y = jax.lax.stop_gradient(y)
    q = _q_all(agent.safety_q, batch["observations"], batch["actions"])
    loss = jnp.mean(jnp.sum((q - y[..., None]) ** 2, axis=-1))
    return loss, {"safety_q_loss": loss, "safety_q": q.mean(), "safety_q_target": y.mean()}


def safety_value_loss(agent: SafeFQLAgent, batch: Batch, config: SafeFQLConfig) -> tuple[Array, Info]:
    """Lower expectile: ``|tau_h - 1(w > 0)| w^2`` with ``w = max_k Qbar_h^k(s, a) - V_h(s)``."""
    q = jax.lax.stop_gradient(_q_all(agent.safety_q_target, batch["observations"], batch["actions"]).max(-1))
    v = _v(agent.safety_v, batch["observations"])
    w = q - v
    loss = jnp.mean(jnp.abs(config.expectile_safety - (w > 0).astype(w.dtype)) * w**2)
    return loss, {"safety_v_loss": loss, "safety_v": v.mean(), "safe_frac_v": jnp.mean(v <= 0)}


def flow_loss(
    agent: SafeFQLAgent, batch: Batch, key: PRNGKeyArray, config: SafeFQLConfig
) -> tuple[Array, Info]:
    """Flow matching ``||v(s, x_t, t) - (a - z)||^2`` with ``x_t = (1 - t) z + t a``, ``t ~ U[0, 1]``.

    With ``flow_weights`` in the batch (config ``flow_episodes="safe"``) only the transitions of episodes
    that never enter the failure set count: the teacher, and through distillation the actor's prior,
    clones the data's safe behaviour (like BC-safe, but judged by h, final state included) instead of the
    whole mixture. ``"recovering"`` adds the steps inside the failure set that lower h, so the teacher
    also knows a way out of it (the safe episodes never go there).
    """
    a = batch["actions"]
    kz, kt = jax.random.split(key)
    z = jax.random.normal(kz, a.shape, a.dtype)
    t = jax.random.uniform(kt, a.shape[:-1] + (1,), a.dtype)
    x_t = (1.0 - t) * z + t * a
    v = _leading(lambda o, x, s: agent.flow(jnp.concatenate([o, x, s])), batch["observations"], x_t, t)
    loss = _weighted_mean(jnp.sum((v - (a - z)) ** 2, axis=-1), batch, "flow_weights")
    return loss, {"flow_loss": loss}


def best_candidate_actions(
    agent: SafeFQLAgent,
    obs: Array,
    actions: Array,
    key: PRNGKeyArray,
    config: SafeFQLConfig,
    action_q: tuple[Array, Array] | None = None,
) -> Array:
    """Per state, the best of ``actions`` and ``candidate_actions`` uniform draws from the box, by the
    actor's own gate: the highest ``Q_r`` among those with ``Q_h + margin <= 0``, else the lowest ``Q_h``.

    Gradients of the gated objective cannot leave a local optimum: where the reward-greedy direction is
    blocked, ``-grad Q_r`` and ``grad Q_h`` point along one line and the actor settles between them (on the
    boat, parked beside a rock). A sampled search over the whole box finds the feasible detour; the actor
    regresses onto it during training only, so deployment stays one network call. No gradient flows out.
    ``action_q = (Q_h, Q_r)`` of ``actions``, when the caller has them, saves scoring them again. With
    ``candidate_tolerance > 0`` the "else" is the highest ``Q_r`` among those within the tolerance of the
    lowest ``Q_h`` (capped at ``Q_h <= -margin / 2``).
    """
    n = config.candidate_actions
    actions = jax.lax.stop_gradient(actions)
    drawn = jax.random.uniform(key, actions.shape[:-1] + (n, actions.shape[-1]), actions.dtype, -1.0, 1.0)
    obs_c = jnp.broadcast_to(obs[..., None, :], drawn.shape[:-1] + obs.shape[-1:])
    if action_q is None:
        action_q = (safety_q_value(agent, obs, actions), reward_q_value(agent, obs, actions))
    own_h, own_r = jax.lax.stop_gradient(action_q)
    cand = jnp.concatenate([drawn, actions[..., None, :]], axis=-2)  # (B, n + 1, A)
    q_h = jnp.concatenate([_q_all(agent.safety_q, obs_c, drawn).max(-1), own_h[..., None]], axis=-1)
    q_r = jnp.concatenate([_q_all(agent.reward_q, obs_c, drawn).min(-1), own_r[..., None]], axis=-1)
    feasible = q_h + config.safety_margin <= 0
    if config.candidate_tolerance > 0:  # static: slide along the boundary instead of straight back
        safest = q_h.min(-1, keepdims=True)
        # ... but only while the slide stays at least half the margin inside the safe side of Q_h = 0.
        cap = -config.safety_margin / 2
        limit = jnp.maximum(safest, jnp.minimum(safest + config.candidate_tolerance, cap))
        near_safest = q_h <= limit
        fallback = jnp.argmax(jnp.where(near_safest, q_r, -jnp.inf), -1)
    else:
        fallback = jnp.argmin(q_h, -1)
    pick = jnp.where(feasible.any(-1), jnp.argmax(jnp.where(feasible, q_r, -jnp.inf), -1), fallback)
    best = jnp.take_along_axis(cand, pick[..., None, None], axis=-2)[..., 0, :]
    return jax.lax.stop_gradient(best)


def actor_loss(
    agent: SafeFQLAgent, batch: Batch, key: PRNGKeyArray, config: SafeFQLConfig
) -> tuple[Array, Info]:
    """``alpha * distill + gated Q objective (+ candidate_weight * ||a_mu - best candidate||^2)``; only the
    actor gets gradients (critics and flow are sg'd).

    With ``alpha = 0`` the teacher is not evaluated and ``info`` has no ``distill_loss``. With
    ``distill_feasible_only`` a sample is distilled only where the teacher's own action passes the gate
    (``Q_h(s, flow_K(s, z)) + margin <= 0``): the actor then copies the behaviour where the critic calls it
    safe and follows the gated Q objective alone elsewhere, instead of being pulled towards the unsafe
    part of a mixed dataset. The batch mean keeps the masked samples as zeros.
    """
    obs = batch["observations"]
    if config.candidate_actions > 0:  # static: configs without candidates keep their noise stream
        key, candidate_key = jax.random.split(key)
    z = jax.random.normal(key, batch["actions"].shape, batch["actions"].dtype)
    frozen = _sg(agent)  # critics and flow enter only as constants; frozen.actor is never used
    raw = actor_raw_actions(agent, obs, z)
    a_mu = jnp.clip(raw, -1.0, 1.0)
    if config.alpha > 0:
        target = jax.lax.stop_gradient(flow_actions(frozen, obs, z, config.flow_steps))
        per_sample = jnp.sum((a_mu - target) ** 2, axis=-1)
        if config.distill_feasible_only:  # static
            teacher_h = _q_all(frozen.safety_q, obs, target).max(-1)
            teacher_ok = jax.lax.stop_gradient(
                (teacher_h + config.safety_margin <= 0).astype(per_sample.dtype)
            )
            per_sample = teacher_ok * per_sample
        distill = jnp.mean(per_sample)
    else:  # alpha is static: skip the K teacher passes it would multiply by zero (most of the actor's cost)
        distill = None
    # clip has zero gradient outside the box: an output that drifts past a bound stops receiving Q
    # gradients and the actor freezes at a corner. The penalty returns it to where gradients flow;
    # it is zero for in-box outputs, so it leaves the clipped optimum unchanged.
    box = jnp.mean(jnp.sum(jax.nn.relu(jnp.abs(raw) - 1.0) ** 2, axis=-1))
    q_h = _q_all(frozen.safety_q, obs, a_mu).max(-1)
    q_r = _q_all(frozen.reward_q, obs, a_mu).min(-1)
    scale = jax.lax.stop_gradient(1.0 / (jnp.mean(jnp.abs(q_r)) + 1e-6))
    # With safety_margin m > 0 the actor already treats "Q_h > -m" as infeasible, so it steers clear of the
    # boundary instead of grazing it (the one-step effect of an action on Q_h is small when dt is small).
    q_h_margin = q_h + config.safety_margin
    gate = jax.lax.stop_gradient((q_h_margin <= 0).astype(q_h.dtype))
    feasible_term = gate * (-q_r) * scale
    # Inside the failure set the HJ target max(h(s), V_h(s')) is flat in every action that does not go
    # deeper, so the safety term cannot say "get out". A share of -Q_r kept there lets the reward critic
    # (which pays for progress, and with cost_penalty > 0 charges each step inside) move the agent on.
    infeasible_term = (1.0 - gate) * (
        config.w_safe * jax.nn.relu(q_h_margin) + config.infeasible_reward_weight * (-q_r) * scale
    )
    if config.candidate_actions > 0:
        best = best_candidate_actions(frozen, obs, a_mu, candidate_key, config, (q_h, q_r))
        candidate = jnp.mean(jnp.sum((a_mu - best) ** 2, axis=-1))
    else:
        candidate = None
    if config.actor_objective == "normalized":
        q_loss = feasible_term.sum() / jnp.maximum(gate.sum(), 1.0) + infeasible_term.sum() / jnp.maximum(
            (1.0 - gate).sum(), 1.0
        )
    else:
        q_loss = jnp.mean(feasible_term + infeasible_term)
    loss = q_loss + config.action_penalty * box + (0.0 if distill is None else config.alpha * distill)
    if candidate is not None:
        loss = loss + config.candidate_weight * candidate
    info = {} if distill is None else {"distill_loss": distill}
    if distill is not None and config.distill_feasible_only:
        info["teacher_feasible_frac"] = teacher_ok.mean()
    info |= {} if candidate is None else {"candidate_loss": candidate}
    info |= {
        "actor_loss": loss,
        "box_penalty": box,
        "q_loss": q_loss,
        "gate_frac": gate.mean(),
        "q_h_actor": q_h.mean(),
        "q_r_actor": q_r.mean(),
        "action_abs": jnp.abs(a_mu).mean(),
    }
    return loss, info


# ---------------------------------------------------------------- state, optimizers, updates

_CRITICS = lambda g: (g.reward_q, g.reward_v, g.safety_q, g.safety_v)


def _optimizer(lr: float, clip: float | None) -> optax.GradientTransformation:
    adam = optax.adam(lr)
    return adam if clip is None else optax.chain(optax.clip_by_global_norm(clip), adam)


def _optimizers(config: SafeFQLConfig) -> tuple[optax.GradientTransformation, ...]:
    return (
        _optimizer(config.critic_lr, config.grad_clip),
        _optimizer(config.actor_lr, config.grad_clip),
        _optimizer(config.flow_lr, config.grad_clip),
    )


def create_train_state(
    config: SafeFQLConfig,
    obs_dim: int,
    act_dim: int,
    key: PRNGKeyArray,
    action_low: float | np.ndarray = -1.0,
    action_high: float | np.ndarray = 1.0,
) -> TrainState:
    """Fresh agent and optimizer states. Actions must be bounded by [-1, 1] (no rescaling is implemented)."""
    obs_dim, act_dim = _check_dims(config, obs_dim, act_dim, action_low, action_high)
    return _init_state(config, obs_dim, act_dim, key)


def _check_dims(config, obs_dim, act_dim, action_low, action_high) -> tuple[int, int]:
    if not isinstance(config, SafeFQLConfig):
        raise ValueError(f"config must be a SafeFQLConfig, got {type(config).__name__}")
    for name, dim in (("obs_dim", obs_dim), ("act_dim", act_dim)):
        if not isinstance(dim, int | np.integer) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"{name} must be a positive integer, got {dim!r}")
    obs_dim, act_dim = int(obs_dim), int(act_dim)
    low, high = np.broadcast_to(action_low, (act_dim,)), np.broadcast_to(action_high, (act_dim,))
    if not (np.all(low == -1.0) and np.all(high == 1.0)):
        raise ValueError(
            f"SafeFQL assumes actions in [-1, 1]; got action bounds low={low.tolist()}, high={high.tolist()} "
            "(rescale the environment's actions, e.g. gymnasium.wrappers.RescaleAction)"
        )
    return obs_dim, act_dim


_TRAINED = ("reward_q", "reward_v", "safety_q", "safety_v", "flow", "actor")


def _build_agent(config: SafeFQLConfig, obs_dim: int, act_dim: int, key: PRNGKeyArray) -> SafeFQLAgent:
    keys = jax.random.split(key, 6)
    act = config.activation
    ln = config.critic_layer_norm
    q_kw = dict(
        in_size=obs_dim + act_dim,
        out_size=1,
        hidden=config.critic_hidden,
        activation=act,
        squeeze=True,
        layer_norm=ln,
    )
    v_kw = dict(activation=act, squeeze=True, layer_norm=ln)
    reward_q = make_ensemble(keys[0], config.num_reward_q, **q_kw)
    safety_q = make_ensemble(keys[1], config.num_safety_q, **q_kw)
    return SafeFQLAgent(
        reward_q=reward_q,
        reward_q_target=reward_q,
        reward_v=MLP(obs_dim, 1, config.value_hidden, key=keys[2], **v_kw),
        safety_q=safety_q,
        safety_q_target=safety_q,
        safety_v=MLP(obs_dim, 1, config.value_hidden, key=keys[3], **v_kw),
        flow=MLP(obs_dim + act_dim + 1, act_dim, config.flow_hidden, key=keys[4], activation=act),
        actor=MLP(obs_dim + act_dim, act_dim, config.actor_hidden, key=keys[5], activation=act),
    )


def _linear_leaves(agent: SafeFQLAgent) -> list:
    return [
        x for name in _TRAINED for layer in getattr(agent, name).layers for x in (layer.weight, layer.bias)
    ]


def _norm_leaves(agent: SafeFQLAgent) -> list:
    """The LayerNorm (weight, bias) leaves of the critics (``critic_layer_norm``; others have none)."""
    return [x for net in _CRITICS(agent) for norm in net.norms for x in (norm.weight, norm.bias)]


@eqx.filter_jit
def _init_state(config: SafeFQLConfig, obs_dim: int, act_dim: int, key: PRNGKeyArray) -> TrainState:
    # Equinox's default Linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases, drawn
    # from ONE uniform stream: XLA:CPU spends ~0.15 s compiling each separate random draw.
    shapes = eqx.filter_eval_shape(_build_agent, config, obs_dim, act_dim, jax.random.key(0))
    structs = _linear_leaves(shapes)
    sizes = [math.prod(x.shape) for x in structs]
    u = jax.random.uniform(key, (sum(sizes),), jnp.float32, -1.0, 1.0)
    values, offset = [], 0
    for i, (struct, size) in enumerate(zip(structs, sizes, strict=True)):
        fan_in = structs[i - i % 2].shape[-1]  # the weight of this layer, shape (..., out, in)
        values.append(u[offset : offset + size].reshape(struct.shape) / math.sqrt(fan_in))
        offset += size
    agent = eqx.tree_at(_linear_leaves, shapes, values)
    if config.critic_layer_norm:  # LayerNorm scales 1, offsets 0 (pairs: weight, bias)
        norms = _norm_leaves(shapes)
        init = [jnp.full(x.shape, 1.0 - i % 2, x.dtype) for i, x in enumerate(norms)]
        agent = eqx.tree_at(_norm_leaves, agent, init)
    agent = eqx.tree_at(
        lambda g: (g.reward_q_target, g.safety_q_target), agent, (agent.reward_q, agent.safety_q)
    )
    critic_opt, actor_opt, flow_opt = _optimizers(config)
    return TrainState(
        agent=agent,
        critic_opt_state=critic_opt.init(eqx.filter(_CRITICS(agent), eqx.is_array)),
        actor_opt_state=actor_opt.init(eqx.filter(agent.actor, eqx.is_array)),
        flow_opt_state=flow_opt.init(eqx.filter(agent.flow, eqx.is_array)),
        step=jnp.zeros((), jnp.int32),
        config=config,
    )


def create_train_states(config: SafeFQLConfig, obs_dim: int, act_dim: int, keys: PRNGKeyArray) -> TrainState:
    """One train state per key, stacked along a leading seed axis (for ``train_steps_multi``)."""
    obs_dim, act_dim = _check_dims(config, obs_dim, act_dim, -1.0, 1.0)
    return _init_states(config, obs_dim, act_dim, keys)


# Module level so the compiled init is cached across calls; non-array arguments broadcast.
_init_states = eqx.filter_jit(eqx.filter_vmap(_init_state))


def _critic_total(critics, agent: SafeFQLAgent, batch: Batch, config: SafeFQLConfig) -> tuple[Array, Info]:
    agent = eqx.tree_at(_CRITICS, agent, critics)
    info: Info = {}
    total = jnp.zeros(())
    for fn in (reward_value_loss, reward_critic_loss, safety_value_loss, safety_critic_loss):
        loss, part = fn(agent, batch, config)
        total, info = total + loss, info | part
    return total, info


def _apply(opt: optax.GradientTransformation, module, grads, opt_state):
    updates, opt_state = opt.update(grads, opt_state, eqx.filter(module, eqx.is_array))
    return eqx.apply_updates(module, updates), opt_state


def _update(state: TrainState, batch: Batch, key: PRNGKeyArray) -> tuple[TrainState, Info]:
    config, agent = state.config, state.agent
    critic_opt, actor_opt, flow_opt = _optimizers(config)
    k_flow, k_actor = jax.random.split(key)

    critics = _CRITICS(agent)
    (_, c_info), c_grads = eqx.filter_value_and_grad(_critic_total, has_aux=True)(
        critics, agent, batch, config
    )

    def actor_fn(actor):
        return actor_loss(eqx.tree_at(lambda g: g.actor, agent, actor), batch, k_actor, config)

    (_, a_info), a_grads = eqx.filter_value_and_grad(actor_fn, has_aux=True)(agent.actor)

    def flow_fn(flow):
        return flow_loss(eqx.tree_at(lambda g: g.flow, agent, flow), batch, k_flow, config)

    (_, f_info), f_grads = eqx.filter_value_and_grad(flow_fn, has_aux=True)(agent.flow)

    critics, critic_opt_state = _apply(critic_opt, critics, c_grads, state.critic_opt_state)
    actor, actor_opt_state = _apply(actor_opt, agent.actor, a_grads, state.actor_opt_state)
    flow, flow_opt_state = _apply(flow_opt, agent.flow, f_grads, state.flow_opt_state)
    reward_q, reward_v, safety_q, safety_v = critics
    new_agent = SafeFQLAgent(
        reward_q=reward_q,
        reward_q_target=ema_update(agent.reward_q_target, reward_q, config.ema_rate),
        reward_v=reward_v,
        safety_q=safety_q,
        safety_q_target=ema_update(agent.safety_q_target, safety_q, config.ema_rate),
        safety_v=safety_v,
        flow=flow,
        actor=actor,
    )
    info = {f"critic/{k}": v for k, v in c_info.items()}
    info |= {f"actor/{k}": v for k, v in a_info.items()} | {f"flow/{k}": v for k, v in f_info.items()}
    info["critic/grad_norm"] = optax.tree.norm(eqx.filter(c_grads, eqx.is_array))
    info["actor/grad_norm"] = optax.tree.norm(eqx.filter(a_grads, eqx.is_array))
    new_state = TrainState(
        new_agent, critic_opt_state, actor_opt_state, flow_opt_state, state.step + 1, config
    )
    return new_state, info


@eqx.filter_jit
def update(state: TrainState, batch: Batch, key: PRNGKeyArray) -> tuple[TrainState, Info]:
    """One update: critics, actor and flow from the same pre-update agent, then the EMA targets."""
    return _update(state, batch, key)


def _train_steps(state: TrainState, data: DeviceDataset, key: PRNGKeyArray, num_steps: int):
    def body(carry, k):
        k_batch, k_update = jax.random.split(k)
        carry, info = _update(carry, sample_batch(k_batch, data, carry.config.batch_size), k_update)
        return carry, info

    state, infos = jax.lax.scan(body, state, jax.random.split(key, num_steps))
    return state, jax.tree.map(lambda x: x.mean(0), infos)


def _check_call(config: SafeFQLConfig, data: DeviceDataset, num_steps: int) -> None:
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    for name, field in EPISODE_WEIGHTS.items():
        if getattr(config, name) != "all" and getattr(data, field) is None:
            raise ValueError(
                f"config.{name}={getattr(config, name)!r} but the dataset has no {field}: build it with "
                "safefql.training.trainer.device_dataset(transitions, config)"
            )


@eqx.filter_jit
def train_steps(
    state: TrainState, data: DeviceDataset, key: PRNGKeyArray, num_steps: int
) -> tuple[TrainState, Info]:
    """``num_steps`` updates in one ``lax.scan``, batches sampled on device; info averaged over the steps."""
    _check_call(state.config, data, num_steps)
    return _train_steps(state, data, key, num_steps)


@eqx.filter_jit
def train_steps_multi(
    states: TrainState, data: DeviceDataset, keys: PRNGKeyArray, num_steps: int
) -> tuple[TrainState, Info]:
    """``train_steps`` vmapped over seeds: ``states``/``keys`` have a leading seed axis; data is shared."""
    _check_call(states.config, data, num_steps)
    return eqx.filter_vmap(lambda s, k: _train_steps(s, data, k, num_steps))(states, keys)
