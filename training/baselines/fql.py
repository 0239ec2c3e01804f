"""Unconstrained Flow Q-Learning (Park, Li, Levine 2025, arXiv 2502.02538), no safety critic.

Follows the FQL reference agent:
- critic: two Q nets, SARSA-style target with the one-step actor's next action,
  ``y = r + gamma * mask * agg_k Qbar^k(s', clip(mu(s', z')))``, ``agg`` = mean (FQL's default ``q_agg``)
  or min; loss ``(Q^k(s, a) - y)^2`` averaged over members and batch; EMA targets.
- flow teacher: the flow-matching loss shared with SafeFQL (``safefql.training.safefql.flow_loss``).
- one-step actor: ``alpha * mean((mu(s, z) - sg(flow_K(s, z)))^2) - mean(Q) * sg(1 / mean|Q|)`` with
  ``Q = mean_k Q^k(s, mu(s, z))``; the distillation is averaged over action dimensions, as in FQL;
  alpha = 10 by default.
The reference critics use layer norm; ``networks.MLP`` has none, so these do not.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from safefql.datasets.sampler import DeviceDataset, sample_batch
from safefql.training.baselines.common import (
    BatchedPolicy,
    adam,
    check_choice,
    check_float,
    check_hidden,
    check_int,
    key_from_rng,
)
from safefql.training.networks import ACTIVATIONS, MLP, ema_update, ensemble_apply, make_ensemble
from safefql.training.safefql import actor_actions, flow_actions, flow_loss

Q_AGGS = ("mean", "min")


@dataclasses.dataclass(frozen=True)
class FQLConfig:
    """FQL hyperparameters (CPU-sized networks for the boat). Frozen and hashable (a static jit argument)."""

    critic_hidden: tuple[int, ...] = (128, 128)  # hidden widths of each Q network
    actor_hidden: tuple[int, ...] = (128, 128)  # hidden widths of the one-step actor mu(s, z)
    flow_hidden: tuple[int, ...] = (128, 128)  # hidden widths of the flow teacher v(s, x_t, t)
    activation: str = "gelu"  # nonlinearity of every network
    critic_lr: float = 3e-4  # Adam learning rate of the Q ensemble
    actor_lr: float = 3e-4  # Adam learning rate of the one-step actor
    flow_lr: float = 3e-4  # Adam learning rate of the flow teacher
    gamma: float = 0.99  # discount
    ema_rate: float = 0.005  # Polyak rate of the target Q networks
    alpha: float = 10.0  # weight of the distillation loss
    q_agg: str = "mean"  # aggregation of the twin target Qs: "mean" (FQL default) or "min"
    normalize_q_loss: bool = True  # scale the Q term by sg(1 / mean|Q|)
    flow_steps: int = 10  # Euler steps of the flow teacher
    num_q: int = 2  # size of the Q ensemble
    batch_size: int = 256  # transitions per update
    steps_per_call: int = 1000  # updates per jitted lax.scan call
    num_updates: int = 30_000  # updates of a full training run (train_baseline's default)

    def __post_init__(self) -> None:
        for name in ("critic_hidden", "actor_hidden", "flow_hidden"):
            object.__setattr__(self, name, check_hidden(name, getattr(self, name)))
        check_choice("activation", self.activation, tuple(ACTIVATIONS))
        check_choice("q_agg", self.q_agg, Q_AGGS)
        for name in ("critic_lr", "actor_lr", "flow_lr"):
            check_float(name, getattr(self, name), lo=0.0, lo_open=True)
        check_float("gamma", self.gamma, lo=0.0, hi=1.0)
        check_float("ema_rate", self.ema_rate, lo=0.0, hi=1.0, lo_open=True)
        check_float("alpha", self.alpha, lo=0.0)
        if not isinstance(self.normalize_q_loss, bool):
            raise ValueError(f"normalize_q_loss must be a bool, got {self.normalize_q_loss!r}")
        for name in ("flow_steps", "num_q", "batch_size", "steps_per_call", "num_updates"):
            check_int(name, getattr(self, name))


class FQLAgent(eqx.Module):
    """FQL networks; ``flow`` and ``actor`` follow SafeFQL's input layout so its samplers apply."""

    reward_q: MLP  # ensemble, Q^k(concat(obs, action)) -> scalar
    reward_q_target: MLP  # EMA copy of reward_q
    flow: MLP  # v(concat(obs, x_t, t)) -> velocity
    actor: MLP  # mu(concat(obs, z)) -> pre-clip action


class FQLState(eqx.Module):
    """Agent, one Adam state per network group, the update counter; ``config`` is static."""

    agent: FQLAgent
    critic_opt_state: optax.OptState
    actor_opt_state: optax.OptState
    flow_opt_state: optax.OptState
    step: Int[Array, ""]
    config: FQLConfig = eqx.field(static=True)


def create_fql_state(config: FQLConfig, obs_dim: int, act_dim: int, key: PRNGKeyArray) -> FQLState:
    """Fresh networks and optimizer states."""
    if not isinstance(config, FQLConfig):
        raise ValueError(f"config must be an FQLConfig, got {type(config).__name__}")
    check_int("obs_dim", obs_dim)
    check_int("act_dim", act_dim)
    return _init_fql(config, int(obs_dim), int(act_dim), key)


@eqx.filter_jit
def _init_fql(config: FQLConfig, obs_dim: int, act_dim: int, key: PRNGKeyArray) -> FQLState:
    """One compiled graph for all initialisers (op-by-op init compiles every primitive separately)."""
    o, a, act = int(obs_dim), int(act_dim), config.activation
    k_q, k_flow, k_actor = jax.random.split(key, 3)
    q = make_ensemble(
        k_q,
        config.num_q,
        in_size=o + a,
        out_size=1,
        hidden=config.critic_hidden,
        activation=act,
        squeeze=True,
    )
    agent = FQLAgent(
        reward_q=q,
        reward_q_target=q,
        flow=MLP(o + a + 1, a, config.flow_hidden, key=k_flow, activation=act),
        actor=MLP(o + a, a, config.actor_hidden, key=k_actor, activation=act),
    )
    return FQLState(
        agent=agent,
        critic_opt_state=adam(config.critic_lr).init(eqx.filter(agent.reward_q, eqx.is_array)),
        actor_opt_state=adam(config.actor_lr).init(eqx.filter(agent.actor, eqx.is_array)),
        flow_opt_state=adam(config.flow_lr).init(eqx.filter(agent.flow, eqx.is_array)),
        step=jnp.zeros((), jnp.int32),
        config=config,
    )


def q_values(ensemble: MLP, obs: Float[Array, "n o"], actions: Float[Array, "n a"]) -> Float[Array, "n k"]:
    """Every member's Q value for a batch."""
    return jax.vmap(lambda s, u: ensemble_apply(ensemble, jnp.concatenate([s, u])))(obs, actions)


def critic_loss(
    reward_q: MLP, agent: FQLAgent, batch: dict[str, Array], key: PRNGKeyArray, config: FQLConfig
) -> tuple[Array, dict[str, Array]]:
    """SARSA-style TD loss with the one-step actor's next action and the target ensemble."""
    z = jax.random.normal(key, batch["actions"].shape, batch["actions"].dtype)
    next_a = actor_actions(agent, batch["next_observations"], z)
    next_qs = q_values(agent.reward_q_target, batch["next_observations"], next_a)
    next_q = next_qs.mean(-1) if config.q_agg == "mean" else next_qs.min(-1)
    y = jax.lax.stop_gradient(batch["rewards"] + config.gamma * batch["masks"] * next_q)
    q = q_values(reward_q, batch["observations"], batch["actions"])
    loss = jnp.mean((q - y[:, None]) ** 2)
    return loss, {"q_loss": loss, "q": q.mean(), "q_target": y.mean()}


def actor_loss(
    actor: MLP, agent: FQLAgent, batch: dict[str, Array], key: PRNGKeyArray, config: FQLConfig
) -> tuple[Array, dict[str, Array]]:
    """``alpha * distillation - mean-over-twins Q`` (normalised by ``sg(1 / mean|Q|)``)."""
    obs = batch["observations"]
    z = jax.random.normal(key, batch["actions"].shape, batch["actions"].dtype)
    frozen = jax.lax.stop_gradient(agent)
    target = jax.lax.stop_gradient(flow_actions(frozen, obs, z, config.flow_steps))
    a_mu = actor_actions(eqx.tree_at(lambda g: g.actor, frozen, actor), obs, z)
    distill = jnp.mean((a_mu - target) ** 2)
    q = q_values(frozen.reward_q, obs, a_mu).mean(-1)
    scale = jax.lax.stop_gradient(1.0 / (jnp.mean(jnp.abs(q)) + 1e-6)) if config.normalize_q_loss else 1.0
    q_loss = -jnp.mean(q) * scale
    loss = config.alpha * distill + q_loss
    return loss, {"actor_loss": loss, "distill_loss": distill, "q_actor": q.mean(), "q_term": q_loss}


def _step(opt: optax.GradientTransformation, module, grads, opt_state):
    updates, opt_state = opt.update(grads, opt_state, eqx.filter(module, eqx.is_array))
    return eqx.apply_updates(module, updates), opt_state


def _update(state: FQLState, batch: dict[str, Array], key: PRNGKeyArray) -> tuple[FQLState, dict[str, Array]]:
    config, agent = state.config, state.agent
    k_critic, k_actor, k_flow = jax.random.split(key, 3)
    (_, c_info), c_grads = eqx.filter_value_and_grad(critic_loss, has_aux=True)(
        agent.reward_q, agent, batch, k_critic, config
    )
    (_, a_info), a_grads = eqx.filter_value_and_grad(actor_loss, has_aux=True)(
        agent.actor, agent, batch, k_actor, config
    )

    def flow_fn(flow: MLP):
        return flow_loss(eqx.tree_at(lambda g: g.flow, agent, flow), batch, k_flow, config)

    (_, f_info), f_grads = eqx.filter_value_and_grad(flow_fn, has_aux=True)(agent.flow)
    reward_q, critic_opt_state = _step(
        adam(config.critic_lr), agent.reward_q, c_grads, state.critic_opt_state
    )
    actor, actor_opt_state = _step(adam(config.actor_lr), agent.actor, a_grads, state.actor_opt_state)
    flow, flow_opt_state = _step(adam(config.flow_lr), agent.flow, f_grads, state.flow_opt_state)
    new_agent = FQLAgent(
        reward_q=reward_q,
        reward_q_target=ema_update(agent.reward_q_target, reward_q, config.ema_rate),
        flow=flow,
        actor=actor,
    )
    info = {f"critic/{k}": v for k, v in c_info.items()} | {f"actor/{k}": v for k, v in a_info.items()}
    info |= {f"flow/{k}": v for k, v in f_info.items()}
    new_state = FQLState(new_agent, critic_opt_state, actor_opt_state, flow_opt_state, state.step + 1, config)
    return new_state, info


@eqx.filter_jit
def fql_train_steps(
    state: FQLState, data: DeviceDataset, key: PRNGKeyArray, num_steps: int
) -> tuple[FQLState, dict[str, Array]]:
    """``num_steps`` updates (critic, actor, flow from the same pre-update agent) in one ``lax.scan``."""
    check_int("num_steps", num_steps)

    def body(carry: FQLState, k: PRNGKeyArray):
        k_batch, k_update = jax.random.split(k)
        return _update(carry, sample_batch(k_batch, data, carry.config.batch_size), k_update)

    state, infos = jax.lax.scan(body, state, jax.random.split(key, num_steps))
    return state, jax.tree.map(lambda x: x.mean(0), infos)


@eqx.filter_jit
def _policy_batch(actor: MLP, obs: Array, key: PRNGKeyArray | None) -> Array:
    n, act_dim = obs.shape[0], actor.layers[-1].out_features
    shape = (n, act_dim)
    z = jnp.zeros(shape, obs.dtype) if key is None else jax.random.normal(key, shape, obs.dtype)
    return jnp.clip(jax.vmap(lambda o, x: actor(jnp.concatenate([o, x])))(obs, z), -1.0, 1.0)


def make_policy(state: FQLState) -> BatchedPolicy:
    """Batched one-step policy ``clip(mu(s, z))``, ``z ~ N(0, I)`` from ``rng`` (``rng=None``: ``z = 0``)."""
    actor = state.agent.actor
    act_dim = actor.layers[-1].out_features
    obs_dim = actor.layers[0].in_features - act_dim
    return BatchedPolicy(
        "fql", lambda obs, rng: _policy_batch(actor, jnp.asarray(obs), key_from_rng(rng)), obs_dim, act_dim
    )


def act(state: FQLState, obs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Action ``(act_dim,)`` for one observation ``(obs_dim,)``."""
    return make_policy(state).act(obs, rng)
