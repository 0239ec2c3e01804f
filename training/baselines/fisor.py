"""FISOR-style baseline (Zheng et al. 2024): SafeFQL's critics plus a feasibility-weighted DDPM policy.

Critics: the same four losses as SafeFQL (``safefql.training.safefql``: IQL reward critics, HJ safety
critics, EMA targets), applied to a critic-only module with the same field names.

Policy: DDPM with ``T = diffusion_steps`` (5) denoising steps. ``beta_schedule="vp"`` (default, FISOR's)
is the discretised VP-SDE schedule ``beta_t = 1 - exp(-b_min/T - (b_max - b_min)(2t - 1)/(2T^2))``,
``b_min = 0.1``, ``b_max = 10``, t = 1..T (so ``alpha_bar_T ~ 0.006``); ``"cosine"`` is Nichol & Dhariwal's
schedule (s = 0.008, betas capped at 0.999). Noise network ``eps(s, x_t, t)``: learnable Fourier features
of the step index (``time_features`` outputs) -> 2-layer mish MLP -> concatenated with (s, x_t) -> linear
to ``noise_width`` -> ``noise_blocks`` residual blocks ``x + W2 mish(W1 LN(dropout(x)))`` with a 4x inner
width -> mish -> linear to the action. CPU defaults for the boat: width 64, 3 blocks, no dropout (FISOR:
width 256, 3 blocks, dropout 0.1). Sampling clips x to [-1, 1] after every step, as the reference does.

Actor loss: ``mean(w * ||eps_pred - eps||^2)`` with FISOR's per-sample weight (``fisor_weights``) from the
target Qs (``Q_r = min``, ``Q_h = max`` over twins) and the online values. Inference: ``num_candidates``
samples per state from the EMA noise network; the one with the lowest ``Q_h`` (max over the twin target
safety Qs) is executed, whether or not several are feasible (``Q_h <= 0``) and regardless of reward, as in
FISOR; ties go to the lowest candidate index (``argmin``). ``rng=None`` uses the fixed key 0.
"""

from __future__ import annotations

import dataclasses
import math

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
    check_observations,
    key_from_rng,
)
from safefql.training.config import SafeFQLConfig
from safefql.training.networks import ACTIVATIONS, MLP, ema_update, ensemble_apply, make_ensemble
from safefql.training.safefql import (
    reward_critic_loss,
    reward_value_loss,
    safety_critic_loss,
    safety_value_loss,
)

BETA_SCHEDULES = ("vp", "cosine")
WEIGHTINGS = ("fisor", "uniform")


@dataclasses.dataclass(frozen=True)
class FisorConfig:
    """FISOR-style hyperparameters (CPU-sized for the boat). Frozen and hashable (a static jit argument)."""

    critic_hidden: tuple[int, ...] = (128, 128)  # hidden widths of each reward/safety Q net (SafeFQL boat)
    value_hidden: tuple[int, ...] = (128, 128)  # hidden widths of V_r and V_h
    critic_activation: str = "gelu"  # nonlinearity of the critics
    critic_lr: float = 3e-4  # Adam learning rate of the four critics
    gamma: float = 0.99  # discount of the reward and HJ backups
    ema_rate: float = 0.005  # Polyak rate of the target Q nets
    expectile_reward: float = 0.9  # tau_r of the IQL reward value
    expectile_safety: float = 0.9  # tau_h of the (lower-expectile) safety value
    num_reward_q: int = 2  # reward Q ensemble size
    num_safety_q: int = 2  # safety Q ensemble size
    diffusion_steps: int = 5  # T, DDPM denoising steps
    beta_schedule: str = "vp"  # "vp" (FISOR) or "cosine"
    noise_width: int = 64  # width of the residual noise network
    noise_blocks: int = 3  # residual blocks (inner width 4 * noise_width)
    time_features: int = 16  # Fourier time-embedding size (even)
    layer_norm: bool = True  # layer norm at the start of each residual block
    dropout: float = 0.0  # dropout rate in the residual blocks during training (FISOR: 0.1)
    actor_lr: float = 3e-4  # Adam learning rate of the noise network
    actor_ema_rate: float = 0.005  # Polyak rate of the EMA noise network used for sampling (1.0: none)
    weighting: str = "fisor"  # "fisor": feasibility-guided weights; "uniform": plain diffusion BC
    reward_temperature: float = 3.0  # in exp(T_r (Q_r - V_r)) on feasible states
    cost_temperature: float = 5.0  # in exp(T_h (V_h - Q_h)) on infeasible states
    reward_weight_max: float = 100.0  # clip of the reward weight
    cost_weight_max: float = 150.0  # clip of the cost weight
    num_candidates: int = 16  # N, actions sampled per state at inference
    batch_size: int = 256  # transitions per update
    steps_per_call: int = 1000  # updates per jitted lax.scan call
    num_updates: int = 30_000  # updates of a full training run (train_baseline's default)

    def __post_init__(self) -> None:
        for name in ("critic_hidden", "value_hidden"):
            object.__setattr__(self, name, check_hidden(name, getattr(self, name)))
        check_choice("critic_activation", self.critic_activation, tuple(ACTIVATIONS))
        check_choice("beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        check_choice("weighting", self.weighting, WEIGHTINGS)
        for name in ("critic_lr", "actor_lr", "reward_temperature", "cost_temperature"):
            check_float(name, getattr(self, name), lo=0.0, lo_open=True)
        for name in ("reward_weight_max", "cost_weight_max"):
            check_float(name, getattr(self, name), lo=0.0, lo_open=True)
        check_float("gamma", self.gamma, lo=0.0, hi=1.0)
        for name in ("ema_rate", "actor_ema_rate"):
            check_float(name, getattr(self, name), lo=0.0, hi=1.0, lo_open=True)
        for name in ("expectile_reward", "expectile_safety"):
            check_float(name, getattr(self, name), lo=0.0, hi=1.0, lo_open=True)
        check_float("dropout", self.dropout, lo=0.0, hi=0.95)
        if not isinstance(self.layer_norm, bool):
            raise ValueError(f"layer_norm must be a bool, got {self.layer_norm!r}")
        for name in ("num_reward_q", "num_safety_q", "diffusion_steps", "noise_width", "noise_blocks"):
            check_int(name, getattr(self, name))
        for name in ("num_candidates", "batch_size", "steps_per_call", "num_updates"):
            check_int(name, getattr(self, name))
        check_int("time_features", self.time_features, lo=2)
        if self.time_features % 2:
            raise ValueError(f"time_features must be even (cos and sin halves), got {self.time_features}")

    def critic_config(self) -> SafeFQLConfig:
        """The SafeFQL config whose critic fields the shared critic losses read."""
        return SafeFQLConfig(
            critic_hidden=self.critic_hidden,
            value_hidden=self.value_hidden,
            activation=self.critic_activation,
            critic_lr=self.critic_lr,
            gamma=self.gamma,
            ema_rate=self.ema_rate,
            expectile_reward=self.expectile_reward,
            expectile_safety=self.expectile_safety,
            batch_size=self.batch_size,
            num_reward_q=self.num_reward_q,
            num_safety_q=self.num_safety_q,
        )


# ---------------------------------------------------------------- DDPM pieces


def beta_schedule(name: str, steps: int) -> np.ndarray:
    """Betas ``(steps,)`` of the ``"vp"`` or ``"cosine"`` schedule (float32)."""
    check_choice("beta_schedule", name, BETA_SCHEDULES)
    check_int("diffusion_steps", steps)
    t = np.arange(1, steps + 1, dtype=np.float64)
    if name == "vp":
        b_min, b_max = 0.1, 10.0
        betas = 1.0 - np.exp(-b_min / steps - 0.5 * (b_max - b_min) * (2 * t - 1) / steps**2)
    else:
        s = 0.008
        f = lambda u: np.cos((u / steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = np.minimum(1.0 - f(t) / f(t - 1), 0.999)
    return betas.astype(np.float32)


def _mish(x: Array) -> Array:
    return x * jnp.tanh(jax.nn.softplus(x))


class FourierFeatures(eqx.Module):
    """Learnable Fourier features ``[cos(2 pi W t), sin(2 pi W t)]`` of a scalar, ``W ~ N(0, 0.2^2)``."""

    kernel: Float[Array, "half 1"]

    def __init__(self, size: int, *, key: PRNGKeyArray):
        self.kernel = 0.2 * jax.random.normal(key, (size // 2, 1))

    def __call__(self, t: Float[Array, " 1"]) -> Float[Array, " size"]:
        f = 2.0 * jnp.pi * (self.kernel @ t)
        return jnp.concatenate([jnp.cos(f), jnp.sin(f)])


class ResidualBlock(eqx.Module):
    """``x + W2 mish(W1 LN(dropout(x)))`` with inner width ``4 * width``."""

    norm: eqx.nn.LayerNorm | None
    dense1: eqx.nn.Linear
    dense2: eqx.nn.Linear
    dropout: float = eqx.field(static=True)

    def __init__(self, width: int, layer_norm: bool, dropout: float, *, key: PRNGKeyArray):
        k1, k2 = jax.random.split(key)
        self.norm = eqx.nn.LayerNorm(width) if layer_norm else None
        self.dense1 = eqx.nn.Linear(width, 4 * width, key=k1)
        self.dense2 = eqx.nn.Linear(4 * width, width, key=k2)
        self.dropout = dropout

    def __call__(self, x: Array, key: PRNGKeyArray | None) -> Array:
        y = x
        if key is not None and self.dropout > 0:
            keep = jax.random.bernoulli(key, 1.0 - self.dropout, y.shape)
            y = jnp.where(keep, y / (1.0 - self.dropout), 0.0)
        if self.norm is not None:
            y = self.norm(y)
        return x + self.dense2(_mish(self.dense1(y)))


class NoiseNet(eqx.Module):
    """``eps(s, x_t, t)``: the residual MLP noise predictor of the DDPM policy (unbatched)."""

    time_features: FourierFeatures
    time_mlp: tuple[eqx.nn.Linear, eqx.nn.Linear]
    inp: eqx.nn.Linear
    blocks: tuple[ResidualBlock, ...]
    out: eqx.nn.Linear

    def __init__(self, obs_dim: int, act_dim: int, config: FisorConfig, *, key: PRNGKeyArray):
        keys = jax.random.split(key, 5 + config.noise_blocks)
        tf, w = config.time_features, config.noise_width
        self.time_features = FourierFeatures(tf, key=keys[0])
        self.time_mlp = (eqx.nn.Linear(tf, 2 * tf, key=keys[1]), eqx.nn.Linear(2 * tf, tf, key=keys[2]))
        self.inp = eqx.nn.Linear(obs_dim + act_dim + tf, w, key=keys[3])
        self.blocks = tuple(ResidualBlock(w, config.layer_norm, config.dropout, key=k) for k in keys[5:])
        self.out = eqx.nn.Linear(w, act_dim, key=keys[4])

    def __call__(self, obs: Array, x: Array, t: Array, key: PRNGKeyArray | None = None) -> Array:
        """``t`` is the integer step index 0..T-1 (as a float ``(1,)``); ``key`` enables dropout."""
        emb = self.time_mlp[1](_mish(self.time_mlp[0](self.time_features(t))))
        h = self.inp(jnp.concatenate([obs, x, emb]))
        keys = [None] * len(self.blocks) if key is None else list(jax.random.split(key, len(self.blocks)))
        for block, k in zip(self.blocks, keys, strict=True):
            h = block(h, k)
        return self.out(_mish(h))


def ddpm_loss(
    net: NoiseNet,
    obs: Float[Array, "n o"],
    actions: Float[Array, "n a"],
    weights: Float[Array, " n"],
    key: PRNGKeyArray,
    config: FisorConfig,
) -> tuple[Array, dict[str, Array]]:
    """Weighted noise matching ``mean(w * ||eps(s, x_t, t) - eps||^2)``, ``t ~ U{0..T-1}``."""
    alpha_bar = jnp.asarray(np.cumprod(1.0 - beta_schedule(config.beta_schedule, config.diffusion_steps)))
    k_t, k_eps, k_drop = jax.random.split(key, 3)
    n = obs.shape[0]
    t = jax.random.randint(k_t, (n,), 0, config.diffusion_steps)
    eps = jax.random.normal(k_eps, actions.shape, actions.dtype)
    ab = alpha_bar[t][:, None]
    x_t = jnp.sqrt(ab) * actions + jnp.sqrt(1.0 - ab) * eps
    drop_keys = jax.random.split(k_drop, n) if config.dropout > 0 else None
    tf = t[:, None].astype(obs.dtype)
    if drop_keys is None:
        pred = jax.vmap(lambda o, x, s: net(o, x, s))(obs, x_t, tf)
    else:
        pred = jax.vmap(net)(obs, x_t, tf, drop_keys)
    per_sample = jnp.sum((pred - eps) ** 2, axis=-1)
    w = jax.lax.stop_gradient(weights)
    loss = jnp.mean(w * per_sample)
    return loss, {"actor_loss": loss, "noise_mse": per_sample.mean(), "weight_mean": w.mean()}


def ddpm_sample(net: NoiseNet, obs: Float[Array, "n o"], key: PRNGKeyArray, config: FisorConfig) -> Array:
    """Ancestral DDPM sampling from ``x_T ~ N(0, I)``, clipping x to [-1, 1] after each step."""
    betas = beta_schedule(config.beta_schedule, config.diffusion_steps)
    alphas, alpha_bar = 1.0 - betas, np.cumprod(1.0 - betas)
    act_dim = net.out.out_features
    k0, k_steps = jax.random.split(key)
    x = jax.random.normal(k0, (obs.shape[0], act_dim), obs.dtype)
    steps = np.arange(config.diffusion_steps)[::-1]

    def body(x, inp):
        t, k = inp
        tf = jnp.full((obs.shape[0], 1), t, obs.dtype)
        eps = jax.vmap(lambda o, xi, s: net(o, xi, s))(obs, x, tf)
        a_t, ab_t, b_t = jnp.asarray(alphas)[t], jnp.asarray(alpha_bar)[t], jnp.asarray(betas)[t]
        x = (x - (1.0 - a_t) / jnp.sqrt(1.0 - ab_t) * eps) / jnp.sqrt(a_t)
        x = x + (t > 0) * jnp.sqrt(b_t) * jax.random.normal(k, x.shape, x.dtype)
        return jnp.clip(x, -1.0, 1.0), None

    x, _ = jax.lax.scan(body, x, (jnp.asarray(steps), jax.random.split(k_steps, len(steps))))
    return x


# ---------------------------------------------------------------- critics, weights, state


class FisorCritics(eqx.Module):
    """The critic half of ``SafeFQLAgent`` (same field names, so SafeFQL's critic losses apply)."""

    reward_q: MLP  # ensemble, Q_r^k(concat(obs, action))
    reward_q_target: MLP  # EMA copy of reward_q
    reward_v: MLP  # V_r(obs)
    safety_q: MLP  # ensemble, Q_h^k(concat(obs, action)); <= 0 predicted safe
    safety_q_target: MLP  # EMA copy of safety_q
    safety_v: MLP  # V_h(obs)


class FisorState(eqx.Module):
    """Critics, noise network and its EMA copy, optimizer states and the update counter."""

    critics: FisorCritics
    actor: NoiseNet
    actor_target: NoiseNet  # EMA of actor, used for sampling
    critic_opt_state: optax.OptState
    actor_opt_state: optax.OptState
    step: Int[Array, ""]
    config: FisorConfig = eqx.field(static=True)


_TRAINED = lambda c: (c.reward_q, c.reward_v, c.safety_q, c.safety_v)


def create_fisor_state(config: FisorConfig, obs_dim: int, act_dim: int, key: PRNGKeyArray) -> FisorState:
    """Fresh critics, noise network and optimizer states."""
    if not isinstance(config, FisorConfig):
        raise ValueError(f"config must be a FisorConfig, got {type(config).__name__}")
    check_int("obs_dim", obs_dim)
    check_int("act_dim", act_dim)
    return _init_fisor(config, int(obs_dim), int(act_dim), key)


@eqx.filter_jit
def _init_fisor(config: FisorConfig, obs_dim: int, act_dim: int, key: PRNGKeyArray) -> FisorState:
    """One compiled graph for all initialisers (op-by-op init compiles every primitive separately)."""
    o, a, act = int(obs_dim), int(act_dim), config.critic_activation
    k = jax.random.split(key, 5)
    q_kw = dict(in_size=o + a, out_size=1, hidden=config.critic_hidden, activation=act, squeeze=True)
    reward_q = make_ensemble(k[0], config.num_reward_q, **q_kw)
    safety_q = make_ensemble(k[1], config.num_safety_q, **q_kw)
    critics = FisorCritics(
        reward_q=reward_q,
        reward_q_target=reward_q,
        reward_v=MLP(o, 1, config.value_hidden, key=k[2], activation=act, squeeze=True),
        safety_q=safety_q,
        safety_q_target=safety_q,
        safety_v=MLP(o, 1, config.value_hidden, key=k[3], activation=act, squeeze=True),
    )
    actor = NoiseNet(o, a, config, key=k[4])
    return FisorState(
        critics=critics,
        actor=actor,
        actor_target=actor,
        critic_opt_state=adam(config.critic_lr).init(eqx.filter(_TRAINED(critics), eqx.is_array)),
        actor_opt_state=adam(config.actor_lr).init(eqx.filter(actor, eqx.is_array)),
        step=jnp.zeros((), jnp.int32),
        config=config,
    )


def _q(ensemble: MLP, obs: Array, actions: Array) -> Array:
    """Member Q values ``(..., k)`` over any leading axes."""
    lead = obs.shape[:-1]
    flat = jax.vmap(lambda s, u: ensemble_apply(ensemble, jnp.concatenate([s, u])))(
        obs.reshape(-1, obs.shape[-1]), actions.reshape(-1, actions.shape[-1])
    )
    return flat.reshape(lead + flat.shape[-1:])


def fisor_weights(q_r: Array, v_r: Array, q_h: Array, v_h: Array, config: FisorConfig) -> Array:
    """FISOR's per-sample weight (temperatures and clips from ``config``; defaults 5, 150, 3, 100):

    ``1[V_h > 0] clip(exp(5 (V_h - Q_h)), 0, 150)``
    ``+ 1[V_h <= 0] 1[Q_h <= 0] clip(exp(3 (Q_r - V_r)), 0, 100)``.
    """
    unsafe = (v_h > 0).astype(v_h.dtype)
    feasible = (v_h <= 0).astype(v_h.dtype) * (q_h <= 0).astype(q_h.dtype)
    w_cost = jnp.clip(jnp.exp(config.cost_temperature * (v_h - q_h)), 0.0, config.cost_weight_max)
    w_reward = jnp.clip(jnp.exp(config.reward_temperature * (q_r - v_r)), 0.0, config.reward_weight_max)
    return unsafe * w_cost + feasible * w_reward


def critic_weights(
    critics: FisorCritics, obs: Array, actions: Array, config: FisorConfig
) -> tuple[Array, dict[str, Array]]:
    """FISOR weights of dataset pairs from the target Qs (min reward, max safety) and online values."""
    q_r = _q(critics.reward_q_target, obs, actions).min(-1)
    q_h = _q(critics.safety_q_target, obs, actions).max(-1)
    v_r = jax.vmap(critics.reward_v)(obs)
    v_h = jax.vmap(critics.safety_v)(obs)
    w = jax.lax.stop_gradient(fisor_weights(q_r, v_r, q_h, v_h, config))
    info = {"weight_max": w.max(), "unsafe_frac": jnp.mean(v_h > 0), "zero_weight_frac": jnp.mean(w == 0)}
    return w, info


def _critic_total(trained, critics: FisorCritics, batch, config: SafeFQLConfig):
    critics = eqx.tree_at(_TRAINED, critics, trained)
    total, info = jnp.zeros(()), {}
    for fn in (reward_value_loss, reward_critic_loss, safety_value_loss, safety_critic_loss):
        loss, part = fn(critics, batch, config)  # duck-typed: these read only the critic fields
        total, info = total + loss, info | part
    return total, info


def _update(state: FisorState, batch: dict[str, Array], key: PRNGKeyArray):
    config, critics = state.config, state.critics
    (_, c_info), c_grads = eqx.filter_value_and_grad(_critic_total, has_aux=True)(
        _TRAINED(critics), critics, batch, config.critic_config()
    )
    if config.weighting == "fisor":
        weights, w_info = critic_weights(critics, batch["observations"], batch["actions"], config)
    else:
        weights, w_info = jnp.ones_like(batch["rewards"]), {}
    (_, a_info), a_grads = eqx.filter_value_and_grad(ddpm_loss, has_aux=True)(
        state.actor, batch["observations"], batch["actions"], weights, key, config
    )
    c_opt, a_opt = adam(config.critic_lr), adam(config.actor_lr)
    updates, critic_opt_state = c_opt.update(
        c_grads, state.critic_opt_state, eqx.filter(_TRAINED(critics), eqx.is_array)
    )
    reward_q, reward_v, safety_q, safety_v = eqx.apply_updates(_TRAINED(critics), updates)
    updates, actor_opt_state = a_opt.update(
        a_grads, state.actor_opt_state, eqx.filter(state.actor, eqx.is_array)
    )
    actor = eqx.apply_updates(state.actor, updates)
    new_critics = FisorCritics(
        reward_q=reward_q,
        reward_q_target=ema_update(critics.reward_q_target, reward_q, config.ema_rate),
        reward_v=reward_v,
        safety_q=safety_q,
        safety_q_target=ema_update(critics.safety_q_target, safety_q, config.ema_rate),
        safety_v=safety_v,
    )
    actor_target = ema_update(state.actor_target, actor, config.actor_ema_rate)
    info = {f"critic/{k}": v for k, v in c_info.items()}
    info |= {f"actor/{k}": v for k, v in (a_info | w_info).items()}
    new_state = FisorState(
        new_critics, actor, actor_target, critic_opt_state, actor_opt_state, state.step + 1, config
    )
    return new_state, info


@eqx.filter_jit
def fisor_train_steps(
    state: FisorState, data: DeviceDataset, key: PRNGKeyArray, num_steps: int
) -> tuple[FisorState, dict[str, Array]]:
    """``num_steps`` updates (critics, and the DDPM weighted by the pre-update critics) in a ``lax.scan``."""
    check_int("num_steps", num_steps)

    def body(carry: FisorState, k: PRNGKeyArray):
        k_batch, k_update = jax.random.split(k)
        return _update(carry, sample_batch(k_batch, data, carry.config.batch_size), k_update)

    state, infos = jax.lax.scan(body, state, jax.random.split(key, num_steps))
    return state, jax.tree.map(lambda x: x.mean(0), infos)


# ---------------------------------------------------------------- inference


def fisor_candidates(
    actor: NoiseNet, safety_q: MLP, obs: Float[Array, "n o"], key: PRNGKeyArray, config: FisorConfig
) -> tuple[Float[Array, "n m a"], Float[Array, "n m"]]:
    """``num_candidates`` DDPM samples per state and their ``Q_h`` (max over the safety ensemble)."""
    m = config.num_candidates
    rep = jnp.repeat(obs, m, axis=0)
    cand = ddpm_sample(actor, rep, key, config).reshape(obs.shape[0], m, -1)
    q_h = _q(safety_q, jnp.repeat(obs[:, None, :], m, axis=1), cand).max(-1)
    return cand, q_h


def select_lowest_q_h(candidates: Float[Array, "n m a"], q_h: Float[Array, "n m"]) -> Float[Array, "n a"]:
    """Per state, the candidate with the lowest ``Q_h`` (first index on ties)."""
    idx = jnp.argmin(q_h, axis=1)
    return jnp.take_along_axis(candidates, idx[:, None, None], axis=1)[:, 0]


@eqx.filter_jit
def _policy_batch(actor: NoiseNet, safety_q: MLP, obs: Array, key: PRNGKeyArray, config: FisorConfig):
    cand, q_h = fisor_candidates(actor, safety_q, obs, key, config)
    return select_lowest_q_h(cand, q_h), cand, q_h


def _key(rng: np.random.Generator | None) -> PRNGKeyArray:
    key = key_from_rng(rng)
    return jax.random.key(0) if key is None else key


def sample_candidates(
    state: FisorState, obs: np.ndarray, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the policy sees for ``obs (N, d)``: chosen ``(N, a)``, candidates ``(N, M, a)``, ``Q_h (N, M)``.

    Uses the same compiled function and the same noise as ``make_policy(state)(obs, rng)``.
    """
    policy = make_policy(state)
    x = check_observations(obs, policy.obs_dim)
    out = _policy_batch(
        state.actor_target, state.critics.safety_q_target, jnp.asarray(x), _key(rng), state.config
    )
    return tuple(np.asarray(v) for v in out)


def make_policy(state: FisorState) -> BatchedPolicy:
    """Batched FISOR policy: lowest-``Q_h`` of ``num_candidates`` EMA-net samples (``rng=None``: key 0)."""
    actor, safety_q, config = state.actor_target, state.critics.safety_q_target, state.config
    act_dim = actor.out.out_features
    obs_dim = actor.inp.in_features - act_dim - config.time_features

    def fn(obs: np.ndarray, rng: np.random.Generator | None) -> Array:
        return _policy_batch(actor, safety_q, jnp.asarray(obs), _key(rng), config)[0]

    return BatchedPolicy("fisor", fn, obs_dim, act_dim)


def act(state: FisorState, obs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Action ``(act_dim,)`` for one observation ``(obs_dim,)``."""
    return make_policy(state).act(obs, rng)
