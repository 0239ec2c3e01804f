"""Deterministic behaviour cloning: an MLP ``pi(s)`` fit to dataset actions by mean squared error.

"BC-all" trains on every transition; "BC-safe" on the transitions of zero-cost episodes only (see
``common.filter_zero_cost_episodes``). The policy is deterministic: ``squash="tanh"`` maps the MLP
output through tanh (the loss is taken after the tanh), ``squash="clip"`` trains the raw output and clips
it to [-1, 1] at inference. The Generator passed to the policy is accepted and ignored.
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
)
from safefql.training.networks import ACTIVATIONS, MLP

SQUASHES = ("tanh", "clip")


@dataclasses.dataclass(frozen=True)
class BCConfig:
    """Behaviour cloning hyperparameters. Frozen and hashable (a static jit argument)."""

    hidden: tuple[int, ...] = (128, 128)  # hidden widths of the policy MLP (CPU-sized for the boat)
    activation: str = "relu"  # nonlinearity (a key of networks.ACTIVATIONS)
    squash: str = "tanh"  # "tanh": loss on tanh(MLP); "clip": loss on the raw MLP, clipped at inference
    lr: float = 3e-4  # Adam learning rate
    grad_clip: float | None = None  # global grad-norm clip; None disables it
    batch_size: int = 256  # transitions per update
    steps_per_call: int = 1000  # updates per jitted lax.scan call
    num_updates: int = 30_000  # updates of a full training run (train_baseline's default)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", check_hidden("hidden", self.hidden))
        check_choice("activation", self.activation, tuple(ACTIVATIONS))
        check_choice("squash", self.squash, SQUASHES)
        check_float("lr", self.lr, lo=0.0, lo_open=True)
        if self.grad_clip is not None:
            check_float("grad_clip", self.grad_clip, lo=0.0, lo_open=True)
        for name in ("batch_size", "steps_per_call", "num_updates"):
            check_int(name, getattr(self, name))


class BCState(eqx.Module):
    """Policy network, its Adam state and the update counter; ``config`` is static."""

    model: MLP  # pi(obs) -> pre-squash action
    opt_state: optax.OptState
    step: Int[Array, ""]
    config: BCConfig = eqx.field(static=True)


def create_bc_state(config: BCConfig, obs_dim: int, act_dim: int, key: PRNGKeyArray) -> BCState:
    """Fresh policy and optimizer state."""
    if not isinstance(config, BCConfig):
        raise ValueError(f"config must be a BCConfig, got {type(config).__name__}")
    check_int("obs_dim", obs_dim)
    check_int("act_dim", act_dim)
    return _init_bc(config, int(obs_dim), int(act_dim), key)


@eqx.filter_jit
def _init_bc(config: BCConfig, obs_dim: int, act_dim: int, key: PRNGKeyArray) -> BCState:
    """One compiled graph for all initialisers (op-by-op init compiles every primitive separately)."""
    model = MLP(int(obs_dim), int(act_dim), config.hidden, key=key, activation=config.activation)
    opt_state = adam(config.lr, config.grad_clip).init(eqx.filter(model, eqx.is_array))
    return BCState(model=model, opt_state=opt_state, step=jnp.zeros((), jnp.int32), config=config)


def bc_actions(model: MLP, obs: Float[Array, "n o"], squash: str, clip: bool = True) -> Float[Array, "n a"]:
    """Batched policy output; ``clip`` applies the inference clip of the ``"clip"`` squash."""
    out = jax.vmap(model)(obs)
    if squash == "tanh":
        return jnp.tanh(out)
    return jnp.clip(out, -1.0, 1.0) if clip else out


def bc_loss(model: MLP, batch: dict[str, Array], config: BCConfig) -> tuple[Array, dict[str, Array]]:
    """``||pi(s) - a||^2`` summed over action dimensions, mean over the batch."""
    pred = bc_actions(model, batch["observations"], config.squash, clip=False)
    target = jax.lax.stop_gradient(batch["actions"])
    loss = jnp.mean(jnp.sum((pred - target) ** 2, axis=-1))
    return loss, {"bc_loss": loss, "action_abs": jnp.abs(pred).mean()}


def _update(state: BCState, batch: dict[str, Array]) -> tuple[BCState, dict[str, Array]]:
    opt = adam(state.config.lr, state.config.grad_clip)
    (_, info), grads = eqx.filter_value_and_grad(bc_loss, has_aux=True)(state.model, batch, state.config)
    updates, opt_state = opt.update(grads, state.opt_state, eqx.filter(state.model, eqx.is_array))
    model = eqx.apply_updates(state.model, updates)
    info["grad_norm"] = optax.tree.norm(eqx.filter(grads, eqx.is_array))
    return BCState(model, opt_state, state.step + 1, state.config), info


@eqx.filter_jit
def bc_train_steps(
    state: BCState, data: DeviceDataset, key: PRNGKeyArray, num_steps: int
) -> tuple[BCState, dict[str, Array]]:
    """``num_steps`` updates in one ``lax.scan`` on device-sampled batches; info averaged over the steps."""
    check_int("num_steps", num_steps)

    def body(carry: BCState, k: PRNGKeyArray):
        return _update(carry, sample_batch(k, data, carry.config.batch_size))

    state, infos = jax.lax.scan(body, state, jax.random.split(key, num_steps))
    return state, jax.tree.map(lambda x: x.mean(0), infos)


@eqx.filter_jit
def _policy_batch(model: MLP, obs: Array, squash: str) -> Array:
    return bc_actions(model, obs, squash)


def make_policy(state: BCState, name: str = "bc") -> BatchedPolicy:
    """Batched deterministic policy ``(obs (N, d), rng) -> (N, a)``; ``rng`` is ignored."""
    model, squash = state.model, state.config.squash
    obs_dim = model.layers[0].in_features
    act_dim = model.layers[-1].out_features
    return BatchedPolicy(
        name, lambda obs, rng: _policy_batch(model, jnp.asarray(obs), squash), obs_dim, act_dim
    )


def act(state: BCState, obs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Action ``(act_dim,)`` for one observation ``(obs_dim,)``."""
    return make_policy(state).act(obs, rng)
