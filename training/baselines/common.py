"""Pieces every baseline shares: config checks, the episode filter of BC-safe, and the policy interface.

A *policy function* maps a batch of observations ``(N, obs_dim)`` and a ``numpy.random.Generator`` to
actions ``(N, act_dim)`` in [-1, 1]; ``BatchedPolicy`` is that callable plus ``act`` for one observation,
so the benchmark treats SafeFQL (``policy_from_act``) and every baseline alike.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import optax
from jaxtyping import PRNGKeyArray

PolicyFn = Callable[[np.ndarray, np.random.Generator | None], np.ndarray]


# ---------------------------------------------------------------- config validation


def check_int(name: str, value: Any, lo: int = 1) -> None:
    """Raise ValueError unless ``value`` is an int (not bool) ``>= lo``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")


def check_float(
    name: str, value: Any, lo: float | None = None, hi: float | None = None, lo_open: bool = False
) -> None:
    """Raise ValueError unless ``value`` is a finite real in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi):
        left = "(" if lo_open else "["
        raise ValueError(f"{name} must lie in {left}{lo}, {hi}], got {value!r}")


def check_hidden(name: str, value: Any) -> tuple[int, ...]:
    """Validate a tuple of layer widths (may be empty: a linear map) and return it as a tuple."""
    if isinstance(value, int | str) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a sequence of layer widths, got {value!r}")
    value = tuple(value)
    if not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in value):
        raise ValueError(f"{name} must contain positive integers, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def adam(lr: float, clip: float | None = None) -> optax.GradientTransformation:
    """Adam, optionally after global-norm gradient clipping."""
    opt = optax.adam(lr)
    return opt if clip is None else optax.chain(optax.clip_by_global_norm(clip), opt)


# ---------------------------------------------------------------- BC-safe: keep zero-cost episodes


def as_dict(data: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The fields of a dict of arrays or of a Transitions-like object (dataclass, namedtuple, object)."""
    if isinstance(data, Mapping):
        return dict(data)
    if hasattr(data, "__dataclass_fields__"):
        return {name: getattr(data, name) for name in data.__dataclass_fields__}
    if hasattr(data, "_asdict"):
        return dict(data._asdict())
    if hasattr(data, "__dict__"):
        return dict(vars(data))
    raise ValueError(f"data must be a mapping or a Transitions-like object, got {type(data).__name__}")


def zero_cost_episode_mask(episode_ids: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Boolean mask over transitions: True where the transition's episode has total cost exactly 0.

    Raises ValueError on mismatched lengths, non-1-D arrays, non-finite or negative costs, or when no
    episode has zero cost.
    """
    ids = np.asarray(episode_ids)
    c = np.asarray(costs, dtype=np.float64)
    if ids.ndim != 1 or c.ndim != 1:
        raise ValueError(f"episode_ids and costs must be 1-D, got shapes {ids.shape} and {c.shape}")
    if ids.shape[0] != c.shape[0]:
        raise ValueError(f"episode_ids has {ids.shape[0]} entries but costs has {c.shape[0]}")
    if ids.shape[0] == 0:
        raise ValueError("episode_ids and costs are empty (0 transitions)")
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise ValueError("costs must be finite and non-negative")
    uniq, inverse = np.unique(ids, return_inverse=True)
    totals = np.zeros(uniq.shape[0])
    np.add.at(totals, inverse, c)
    safe = totals == 0.0
    if not np.any(safe):
        raise ValueError(
            f"no zero-cost episode: all {uniq.shape[0]} episodes have positive total cost "
            "(BC-safe would have no data)"
        )
    return safe[inverse]


def filter_zero_cost_episodes(
    data: Mapping[str, Any] | Any,
    episode_ids: np.ndarray | None = None,
    costs: np.ndarray | None = None,
) -> dict[str, Any]:
    """Rows of ``data`` whose episode has total cost 0 (BC-safe's training set), as a new dict.

    ``data`` is a dict of arrays or a Transitions-like object; ``episode_ids`` and ``costs`` default to the
    ``"episode_ids"`` and ``"costs"`` entries of ``data``. Every array entry with one row per transition is
    filtered; other entries are copied unchanged. Raises ValueError when an id/cost array is missing or
    when no episode has zero cost.
    """
    fields = as_dict(data)
    for name, given in (("episode_ids", episode_ids), ("costs", costs)):
        if given is None and fields.get(name) is None:
            raise ValueError(f"filtering by episode needs {name!r}: pass it or include it in data")
    ids = np.asarray(fields["episode_ids"] if episode_ids is None else episode_ids)
    c = np.asarray(fields["costs"] if costs is None else costs)
    mask = zero_cost_episode_mask(ids, c)
    n = mask.shape[0]
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if isinstance(value, np.ndarray | jax.Array) and value.ndim >= 1 and value.shape[0] == n:
            out[name] = np.asarray(value)[mask]
        else:
            out[name] = value
    out["episode_ids"], out["costs"] = ids[mask], c[mask]
    return out


# ---------------------------------------------------------------- the policy interface


def key_from_rng(rng: np.random.Generator | None) -> PRNGKeyArray | None:
    """A JAX key drawn from ``rng`` (so a seeded Generator gives reproducible actions); None stays None."""
    if rng is None:
        return None
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator or None, got {type(rng).__name__}")
    return jax.random.key(int(rng.integers(0, 2**62)))


def check_observations(obs: Any, obs_dim: int) -> np.ndarray:
    """Float32 ``(N, obs_dim)`` array; ValueError for another shape, N = 0, or non-finite values."""
    arr = np.asarray(obs)
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"observations must be numeric, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != obs_dim or arr.shape[0] == 0:
        raise ValueError(f"observations must have shape (N, {obs_dim}) with N >= 1, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("observations contain NaN or inf values")
    return arr.astype(np.float32, copy=False)


class BatchedPolicy:
    """``policy(obs (N, obs_dim), rng) -> actions (N, act_dim)``, plus ``act`` for a single observation.

    ``fn(obs, rng)`` does the work on validated float32 observations; the output shape is checked here.
    """

    def __init__(
        self,
        name: str,
        fn: Callable[[np.ndarray, np.random.Generator | None], Any],
        obs_dim: int,
        act_dim: int,
    ):
        check_int("obs_dim", obs_dim)
        check_int("act_dim", act_dim)
        self.name = name
        self.obs_dim = int(obs_dim)
        self.act_dim = int(act_dim)
        self._fn = fn

    def __call__(self, obs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Actions for a batch of observations, float32 ``(N, act_dim)``."""
        x = check_observations(obs, self.obs_dim)
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator or None, got {type(rng).__name__}")
        out = np.asarray(self._fn(x, rng), dtype=np.float32)
        if out.shape != (x.shape[0], self.act_dim):
            raise ValueError(
                f"{self.name}: policy returned shape {out.shape}, expected {(x.shape[0], self.act_dim)}"
            )
        return out

    def act(self, obs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Action ``(act_dim,)`` for one observation ``(obs_dim,)``."""
        x = np.asarray(obs)
        if x.shape != (self.obs_dim,):
            raise ValueError(f"act takes one observation of shape ({self.obs_dim},), got {x.shape}")
        return self(x[None], rng)[0]

    def __repr__(self) -> str:
        return f"BatchedPolicy({self.name!r}, obs_dim={self.obs_dim}, act_dim={self.act_dim})"


def policy_from_act(
    name: str, act_fn: Callable[[np.ndarray, Any], np.ndarray], obs_dim: int, act_dim: int
) -> BatchedPolicy:
    """Wrap any batched ``act(obs (N, d), rng)`` (e.g. ``SafeFQLPolicy.act``) in the common interface."""
    return BatchedPolicy(name, act_fn, obs_dim, act_dim)


def standardize(obs: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(obs - mean) / std`` as float32."""
    return ((np.asarray(obs, np.float32) - mean) / std).astype(np.float32)


def standardized_inputs(policy: BatchedPolicy, mean: np.ndarray, std: np.ndarray) -> BatchedPolicy:
    """The policy on raw observations of ``policy``, which was trained on ``(obs - mean) / std``."""
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    if mean.shape != (policy.obs_dim,) or std.shape != (policy.obs_dim,):
        raise ValueError(
            f"observation statistics must have shape ({policy.obs_dim},), "
            f"got mean {mean.shape}, std {std.shape}"
        )
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
        raise ValueError("observation statistics must be finite with std > 0")
    return BatchedPolicy(
        policy.name, lambda obs, rng: policy(standardize(obs, mean, std), rng), policy.obs_dim, policy.act_dim
    )


# ---------------------------------------------------------------- chunked training driver


def run_chunks(
    train_fn: Callable[[Any, Any, PRNGKeyArray, int], tuple[Any, dict]],
    state: Any,
    data: Any,
    key: PRNGKeyArray,
    steps: int,
    steps_per_call: int,
) -> tuple[Any, dict[str, float]]:
    """Call ``train_fn(state, data, key, n)`` in chunks of ``steps_per_call`` until ``steps`` updates ran.

    Returns the final state and the last chunk's averaged metrics as floats, plus ``train_time_s`` (wall
    time including compilation) and ``updates_per_s`` (measured after the first chunk when there are
    several, else including compilation).
    """
    check_int("steps", steps)
    check_int("steps_per_call", steps_per_call)
    done, info, t_start, t_after_first = 0, {}, time.perf_counter(), None
    while done < steps:
        n = min(steps_per_call, steps - done)
        key, sub = jax.random.split(key)
        state, info = train_fn(state, data, sub, n)
        jax.block_until_ready(info)
        done += n
        if t_after_first is None:
            t_after_first, first_n = time.perf_counter(), n
    t_end = time.perf_counter()
    out = {k: float(v) for k, v in info.items()}
    out["train_time_s"] = t_end - t_start
    if steps > first_n:
        out["updates_per_s"] = (steps - first_n) / max(t_end - t_after_first, 1e-9)
    else:
        out["updates_per_s"] = steps / max(t_end - t_start, 1e-9)
    return state, out
