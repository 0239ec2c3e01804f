"""The loaded-policy object: what users and the shield get from a checkpoint.

``SafeFQLPolicy`` evaluates the networks through JAX (one jitted function per query, compiled once per
batch shape); ``SafeFQLPolicy.numpy()`` gives a ``NumpyPolicy`` with the same methods computed in pure
NumPy from exported float32 weights (no JAX dispatch), the fast path for batch-1 control loops.

Every query accepts a single observation ``(d,)`` (returns an action ``(a,)`` or a Python-float-like NumPy
scalar) or a batch ``(N, d)`` (returns ``(N, a)`` or ``(N,)``). Observations are validated against the
checkpoint's observation space (shape) and must be finite.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import gymnasium as gym
import jax
import numpy as np

from safefql.training.calibration import Calibration
from safefql.training.checkpoint import load_checkpoint, space_from_dict

_GELU_C0 = np.float32(math.sqrt(2.0 / math.pi))
_GELU_C1 = np.float32(0.044715)
_ONE = np.float32(1.0)
_NEG_ONE = np.float32(-1.0)
_HALF = np.float32(0.5)


def _validate(x: Any, space_shape: tuple[int, ...], name: str) -> tuple[np.ndarray, bool]:
    """Float32 ``(N, d)`` view of ``x`` and whether the input was a single item."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    nd = len(space_shape)
    if arr.shape == space_shape:
        single = True
        arr = arr.reshape(1, -1)
    elif arr.ndim == nd + 1 and arr.shape[1:] == space_shape:
        single = False
        arr = arr.reshape(arr.shape[0], -1)
    else:
        raise ValueError(
            f"{name} has shape {arr.shape}; expected {space_shape} (one item) or "
            f"(N, {', '.join(map(str, space_shape))})"
        )
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return arr, single


def _validate_noise(rng: Any, n: int, act_dim: int) -> np.ndarray:
    if rng is None:
        return np.zeros((n, act_dim), np.float32)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be None (z = 0) or a numpy.random.Generator, got {type(rng).__name__}")
    return rng.standard_normal((n, act_dim), dtype=np.float32)


class _PolicyInfo:
    """Header-derived properties shared by the JAX and NumPy policies."""

    _header: dict[str, Any]
    _obs_space: gym.spaces.Box
    _act_space: gym.spaces.Box
    _calibration: Calibration | None

    def _init_info(self, header: dict[str, Any]) -> None:
        for key in ("observation_space", "action_space", "config"):
            if key not in header:
                raise ValueError(f"policy header has no {key!r}")
        self._header = header
        self._obs_space = space_from_dict(header["observation_space"])
        self._act_space = space_from_dict(header["action_space"])
        cal = header.get("calibration")
        self._calibration = None if cal is None else Calibration.from_dict(cal)
        self._obs_shape = tuple(self._obs_space.shape)
        self._act_shape = tuple(self._act_space.shape)
        self._act_dim = int(np.prod(self._act_shape))

    @property
    def header(self) -> dict[str, Any]:
        """The checkpoint header (config, spaces, env id, versions, calibration, training info)."""
        return self._header

    @property
    def calibration(self) -> Calibration | None:
        """The stored calibration, or None if the checkpoint was never calibrated."""
        return self._calibration

    @property
    def delta(self) -> float:
        """Calibrated threshold added to safety values (``V_h + delta <= 0``); 0.0 if uncalibrated."""
        return 0.0 if self._calibration is None else float(self._calibration.delta)

    @property
    def observation_space(self) -> gym.spaces.Box:
        """Observation space the policy was trained on."""
        return self._obs_space

    @property
    def action_space(self) -> gym.spaces.Box:
        """Action space of the policy's outputs."""
        return self._act_space

    @property
    def env_id(self) -> str | None:
        """Gymnasium id of the environment the data came from (None if unknown)."""
        return self._header.get("env_id")

    def _out_action(self, a: np.ndarray, single: bool) -> np.ndarray:
        a = a.reshape((a.shape[0], *self._act_shape))
        return a[0] if single else a


# Which networks each batched function of safefql.training.safefql reads.
_NETWORKS = {
    "actor_actions": ("actor",),
    "safety_value": ("safety_v",),
    "safety_q_value": ("safety_q",),
    "reward_q_value": ("reward_q",),
}


def _bind(agent: Any, name: str) -> tuple[Any, dict[str, Any]]:
    """``jax.jit`` of ``safefql.<name>`` taking only the arrays of the networks it reads (a smaller pytree
    to flatten per call than the whole agent: ~2x lower batch-1 dispatch overhead), plus those arrays."""
    from safefql.training import safefql as sf

    fn, nets = getattr(sf, name), _NETWORKS[name]
    parts = {k: eqx.partition(getattr(agent, k), eqx.is_array) for k in nets}
    params = {k: parts[k][0] for k in nets}

    def call(p: dict[str, Any], *xs: Any) -> Any:
        full = eqx.tree_at(
            lambda g: tuple(getattr(g, k) for k in nets),
            agent,
            tuple(eqx.combine(p[k], parts[k][1]) for k in nets),
        )
        return fn(full, *xs)

    return jax.jit(call), params


class SafeFQLPolicy(_PolicyInfo):
    """A trained SafeFQL agent with its checkpoint header. Build with :meth:`load` or :meth:`from_agent`."""

    def __init__(self, agent: Any, header: dict[str, Any]):
        self._init_info(header)
        self._agent = agent
        # compiled once per policy and batch shape, on first use
        self._fns = {name: _bind(agent, name) for name in _NETWORKS}

    def _call(self, name: str, *xs: np.ndarray) -> np.ndarray:
        fn, params = self._fns[name]
        return np.asarray(fn(params, *xs))

    @classmethod
    def load(cls, path: str | os.PathLike) -> SafeFQLPolicy:
        """Load a ``kind="policy"`` checkpoint (FileNotFoundError if missing, ValueError if corrupted)."""
        agent, header = load_checkpoint(path)
        if header.get("kind") != "policy":
            raise ValueError(
                f"{path} is a {header.get('kind')!r} checkpoint; SafeFQLPolicy.load needs kind 'policy' "
                "(the trainer writes policy.eqx / policy_seed{i}.eqx)"
            )
        header = dict(header)
        header["path"] = str(Path(path))
        return cls(agent, header)

    @classmethod
    def from_agent(cls, agent: Any, header: dict[str, Any]) -> SafeFQLPolicy:
        """Wrap an in-memory ``SafeFQLAgent``; ``header`` needs the two spaces and ``config``."""
        return cls(agent, dict(header))

    @property
    def agent(self) -> Any:
        """The underlying ``SafeFQLAgent``."""
        return self._agent

    def act(self, obs: Any, rng: np.random.Generator | None = None) -> np.ndarray:
        """Actor action ``clip(mu(s, z))``: ``z = 0`` if ``rng`` is None, else ``z ~ N(0, I)`` from it."""
        o, single = _validate(obs, self._obs_shape, "obs")
        z = _validate_noise(rng, o.shape[0], self._act_dim)
        a = self._call("actor_actions", o, z)
        return self._out_action(a.astype(self._act_space.dtype, copy=False), single)

    def safety_value(self, obs: Any) -> np.ndarray:
        """``V_h(s)`` (``<= 0``: predicted to stay safe)."""
        o, single = _validate(obs, self._obs_shape, "obs")
        v = self._call("safety_value", o)
        return v[0] if single else v

    def _pair(self, obs: Any, action: Any) -> tuple[np.ndarray, np.ndarray, bool]:
        o, single_o = _validate(obs, self._obs_shape, "obs")
        a, single_a = _validate(action, self._act_shape, "action")
        if single_o != single_a or o.shape[0] != a.shape[0]:
            raise ValueError(
                f"obs and action batch shapes disagree: obs {np.shape(obs)}, action {np.shape(action)}"
            )
        return o, a, single_o

    def safety_q(self, obs: Any, action: Any) -> np.ndarray:
        """Pessimistic safety Q, ``max_k Q_h^k(s, a)`` (``<= 0``: predicted safe)."""
        o, a, single = self._pair(obs, action)
        q = self._call("safety_q_value", o, a)
        return q[0] if single else q

    def reward_q(self, obs: Any, action: Any) -> np.ndarray:
        """Pessimistic reward Q, ``min_k Q_r^k(s, a)``."""
        o, a, single = self._pair(obs, action)
        q = self._call("reward_q_value", o, a)
        return q[0] if single else q

    def with_calibration(self, calibration: Calibration | None) -> SafeFQLPolicy:
        """A copy whose header carries ``calibration`` (not written to disk: ``checkpoint.update_header``)."""
        header = dict(self._header)
        header["calibration"] = None if calibration is None else calibration.to_dict()
        return SafeFQLPolicy(self._agent, header)

    def numpy(self) -> NumpyPolicy:
        """The same policy on NumPy weights (no JAX dispatch)."""
        return NumpyPolicy(export_weights(self._agent), self._header)


# ------------------------------------------------------------------------------------------------ NumPy
def _mlp_weights(mlp: Any) -> tuple[list[tuple[np.ndarray, np.ndarray]], str, bool, list[tuple]]:
    """[(W^T (..., in, out), b (..., out))] per layer as contiguous float32, the activation, squeeze, and
    the hidden LayerNorms [(scale (..., out), offset (..., out), eps)] (empty without ``layer_norm``)."""
    layers = []
    for layer in mlp.layers:
        w = np.asarray(layer.weight, dtype=np.float32)
        b = np.asarray(layer.bias, dtype=np.float32)
        layers.append((np.ascontiguousarray(np.swapaxes(w, -1, -2)), np.ascontiguousarray(b)))
    norms = [
        (np.asarray(n.weight, dtype=np.float32), np.asarray(n.bias, dtype=np.float32), np.float32(n.eps))
        for n in mlp.norms
    ]
    return layers, mlp.activation, mlp.squeeze, norms


def export_weights(agent: Any) -> dict[str, tuple[list[tuple[np.ndarray, np.ndarray]], str, bool, list]]:
    """NumPy copies of the networks a policy needs (actor, safety_v, safety_q, reward_q)."""
    return {
        name: _mlp_weights(getattr(agent, name)) for name in ("actor", "safety_v", "safety_q", "reward_q")
    }


def _act_np(name: str) -> tuple[Callable[[np.ndarray], np.ndarray], np.float32]:
    """In-place activation ``f`` and the ``scale`` with ``act(x) = scale * f(x)``.

    ``scale`` is folded into the next layer's weights (:func:`_fold_scale`): at batch 1 each NumPy call
    costs about a microsecond whatever the size, so GELU saves its final ``* 0.5`` that way.
    """
    if name == "relu":
        return (lambda x: np.maximum(x, 0.0, out=x)), _ONE
    if name == "tanh":
        return (lambda x: np.tanh(x, out=x)), _ONE
    if name == "silu":
        return (lambda x: np.multiply(x, 1.0 / (1.0 + np.exp(-x)), out=x)), _ONE
    if name == "gelu":  # tanh approximation, as jax.nn.gelu(approximate=True); f = 2 * gelu
        c0c1, c0, one = _GELU_C0 * _GELU_C1, _GELU_C0, _ONE

        def twice_gelu(x: np.ndarray) -> np.ndarray:
            inner = x * x
            inner *= c0c1
            inner += c0
            inner *= x  # c0 * (x + c1 x^3)
            np.tanh(inner, out=inner)
            inner += one
            x *= inner
            return x

        return twice_gelu, _HALF
    raise ValueError(f"unknown activation {name!r}")


def _fold_scale(layers: list[tuple[np.ndarray, np.ndarray]], scale: np.float32) -> list:
    """Every layer after the first with its weights times ``scale`` (see :func:`_act_np`)."""
    if scale == _ONE:
        return list(layers)
    return [layers[0], *((np.ascontiguousarray(w * scale), b) for w, b in layers[1:])]


def _block_diagonal(w: np.ndarray) -> np.ndarray:
    """Ensemble weights (M, in, out) as one (M * in, M * out) block-diagonal matrix."""
    m, n_in, n_out = w.shape
    out = np.zeros((m * n_in, m * n_out), dtype=w.dtype)
    for k in range(m):
        out[k * n_in : (k + 1) * n_in, k * n_out : (k + 1) * n_out] = w[k]
    return out


class _SingleEnsemble:
    """Batch-1 forward of an ensemble Q(s, a) as flat vectors: one GEMV per layer for all members.

    The input vector ``[obs, action, 1]`` is filled by slice assignment (which also casts to float32) and
    meets the first layer's weights with its bias as an extra row: at batch 1 every NumPy call costs about
    a microsecond, so this saves the casts, a second product and the bias add. Worth it only while the
    block-diagonal matrices stay small (``MAX_WIDTH``); the shield calls it on inputs it has already
    validated, so it does no checks of its own. Buffers are allocated per call (thread-safe).
    """

    MAX_WIDTH = 1024

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]], act: Callable, obs_dim: int):
        """``layers`` as :func:`_fuse_first_layer` returns them for an ensemble (see :meth:`fits`)."""
        w1, b1 = layers[0]  # (in, M * out) and (M, out)
        self.obs_dim, self.n_in = obs_dim, w1.shape[0]
        self.w_in = _with_bias_row(w1, b1.reshape(-1))
        self.rest = [(_block_diagonal(w), np.ascontiguousarray(b.reshape(-1))) for w, b in layers[1:]]
        self.act = act

    @classmethod
    def fits(cls, layers: list[tuple[np.ndarray, np.ndarray]]) -> bool:
        """An ensemble (biases (M, out)) whose every layer is at most ``MAX_WIDTH`` wide for all members."""
        return layers[0][1].ndim == 2 and all(b.size <= cls.MAX_WIDTH for _, b in layers)

    def __call__(self, obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        """Member outputs (M,) for ``obs`` (obs_dim,) and ``action`` (act_dim,), as float32."""
        x = np.empty(self.n_in + 1, np.float32)
        x[: self.obs_dim] = obs
        x[self.obs_dim : -1] = action
        x[-1] = 1.0
        x = np.dot(x, self.w_in)
        act = self.act
        for w, b in self.rest:
            x = np.dot(act(x), w)  # act works in place on the fresh product
            x += b
        return x


def _with_bias_row(w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[w; b]``: ``[x, 1] @ [w; b] = x @ w + b``."""
    return np.ascontiguousarray(np.vstack([w, b[None]]), dtype=np.float32)


def _linear(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``x @ w + b`` for one network, or an ensemble's layer (result (M, N, out)).

    Ensemble layers come as ``w`` (M, in, out) with ``b`` (M, out), or, for a first layer whose input is
    shared by every member, pre-fused by :func:`_fuse_first_layer` as ``w`` (in, M * out) with ``b`` (M, out):
    one GEMM for all members. (Broadcasting x to (M, N, in) instead gives it a zero stride, which sends
    matmul to a slow non-BLAS loop.)
    """
    if b.ndim == 1:
        return np.dot(x, w) + b
    if w.ndim == 2:
        m, n_out = b.shape
        return np.dot(x, w).reshape(len(x), m, n_out).transpose(1, 0, 2) + b[:, None, :]
    return np.matmul(x, w) + b[:, None, :]


def _fuse_first_layer(layers: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """An ensemble's first layer (M, in, out) as one (in, M * out) matrix, computed once; others unchanged."""
    w, b = layers[0]
    if w.ndim != 3:
        return list(layers)
    m, n_in, n_out = w.shape
    return [(np.ascontiguousarray(w.transpose(1, 0, 2).reshape(n_in, m * n_out)), b), *layers[1:]]


def _layer_norm(x: np.ndarray, scale: np.ndarray, offset: np.ndarray, eps: np.float32) -> np.ndarray:
    """LayerNorm over the last axis of ``x`` (N, out) or (M, N, out); ensemble parameters are (M, out)."""
    if scale.ndim == 2:
        scale, offset = scale[:, None, :], offset[:, None, :]
    x = x - x.mean(axis=-1, keepdims=True)
    x *= 1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    x *= scale
    x += offset
    return x


def _forward(
    layers: list[tuple[np.ndarray, np.ndarray]], act, x: np.ndarray, norms: list[tuple] = ()
) -> np.ndarray:
    """Batched MLP: ``x`` (N, in) with weights (in, out) or ensemble weights (M, in, out); ``norms``: a
    LayerNorm after each hidden activation (then ``act`` must be the exact activation, no folded scale)."""
    for i, (w, b) in enumerate(layers[:-1]):
        x = act(_linear(x, w, b))
        if norms:
            x = _layer_norm(x, *norms[i])
    w, b = layers[-1]
    return _linear(x, w, b)


class NumpyPolicy(_PolicyInfo):
    """``SafeFQLPolicy`` computed in NumPy from exported float32 weights; same methods and outputs.

    The batch-1 actor path precomputes the first-layer split ``W1 = [W_obs; W_z]`` so ``z = 0`` costs one
    small dot per layer; activations run in place on the freshly computed layer outputs. No buffer is
    shared between calls, so one instance may be used from several threads.
    """

    def __init__(self, weights: dict[str, Any], header: dict[str, Any]):
        self._init_info(header)
        self._obs_dim = int(np.prod(self._obs_shape))
        self._w = weights
        self._acts, folded, self._norms = {}, {}, {}
        for name, (layers, act_name, _, norms) in weights.items():
            self._acts[name], scale = _act_np(act_name)
            self._norms[name] = norms
            if norms and scale != _ONE:  # a LayerNorm follows the activation: apply its scale in place
                f = self._acts[name]
                self._acts[name] = lambda x, f=f, scale=scale: np.multiply(f(x), scale, out=x)
            else:
                layers = _fold_scale(layers, scale)
            folded[name] = layers
        self._layers = {name: _fuse_first_layer(layers) for name, layers in folded.items()}
        w1, b1 = folded["actor"][0]
        if w1.shape[0] != self._obs_dim + self._act_dim:
            raise ValueError(
                f"actor input size {w1.shape[0]} does not match "
                f"obs_dim + act_dim = {self._obs_dim + self._act_dim}"
            )
        self._a_w1_obs = np.ascontiguousarray(w1[: self._obs_dim])
        self._a_w1_z = np.ascontiguousarray(w1[self._obs_dim :])
        self._a_b1 = b1
        self._actor_act = self._acts["actor"]
        self._a_rest = folded["actor"][1:]
        self._act_dtype = np.dtype(self._act_space.dtype)
        q_layers = self._layers["safety_q"]
        self._safety_q_one = (
            _SingleEnsemble(q_layers, self._acts["safety_q"], self._obs_dim)
            if _SingleEnsemble.fits(q_layers) and not self._norms["safety_q"]
            else None
        )

    def act(self, obs: Any, rng: np.random.Generator | None = None) -> np.ndarray:
        """Actor action ``clip(mu(s, z))``: ``z = 0`` if ``rng`` is None, else ``z ~ N(0, I)`` from it."""
        o, single = _validate(obs, self._obs_shape, "obs")
        x = np.dot(o, self._a_w1_obs)
        x += self._a_b1
        if rng is not None:
            z = _validate_noise(rng, o.shape[0], self._act_dim)
            x += np.dot(z, self._a_w1_z)
        act = self._actor_act
        rest = self._a_rest
        if rest:
            x = act(x)
            for w, b in rest[:-1]:
                x = np.dot(x, w)
                x += b
                x = act(x)
            w, b = rest[-1]
            x = np.dot(x, w)
            x += b
        np.minimum(np.maximum(x, _NEG_ONE, out=x), _ONE, out=x)  # clip, at half np.clip's call overhead
        if x.dtype != self._act_dtype:
            x = x.astype(self._act_dtype)
        return self._out_action(x, single)

    def safety_value(self, obs: Any) -> np.ndarray:
        """``V_h(s)`` (``<= 0``: predicted to stay safe)."""
        o, single = _validate(obs, self._obs_shape, "obs")
        v = _forward(self._layers["safety_v"], self._acts["safety_v"], o, self._norms["safety_v"])[..., 0]
        return v[0] if single else v

    def _q(self, name: str, obs: Any, action: Any) -> tuple[np.ndarray, bool]:
        o, single_o = _validate(obs, self._obs_shape, "obs")
        a, single_a = _validate(action, self._act_shape, "action")
        if single_o != single_a or o.shape[0] != a.shape[0]:
            raise ValueError(
                f"obs and action batch shapes disagree: obs {np.shape(obs)}, action {np.shape(action)}"
            )
        x = np.concatenate([o, a], axis=-1)
        q = _forward(self._layers[name], self._acts[name], x, self._norms[name])[..., 0]  # (M, N)
        return q, single_o

    def safety_q(self, obs: Any, action: Any) -> np.ndarray:
        """Pessimistic safety Q, ``max_k Q_h^k(s, a)``."""
        q, single = self._q("safety_q", obs, action)
        q = q.max(axis=0)
        return q[0] if single else q

    def safety_q_one(self, obs: np.ndarray, action: np.ndarray) -> float:
        """``safety_q`` of one pair that the caller has already validated (finite, right shapes): the
        shield's per-step hot path, without the checks and batch bookkeeping of :meth:`safety_q`."""
        if self._safety_q_one is None:
            return float(self.safety_q(obs, action))
        o = obs if obs.ndim == 1 else obs.reshape(-1)
        a = action if action.ndim == 1 else action.reshape(-1)
        return max(self._safety_q_one(o, a).tolist())  # builtin max: ndarray.max costs ~5 us at this size

    def reward_q(self, obs: Any, action: Any) -> np.ndarray:
        """Pessimistic reward Q, ``min_k Q_r^k(s, a)``."""
        q, single = self._q("reward_q", obs, action)
        q = q.min(axis=0)
        return q[0] if single else q

    def numpy(self) -> NumpyPolicy:
        """Itself (already NumPy)."""
        return self


__all__ = ["NumpyPolicy", "SafeFQLPolicy", "export_weights"]
