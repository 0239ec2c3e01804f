"""Transitions held as device arrays, and uniform minibatch sampling that runs inside ``jit``/``lax.scan``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

REQUIRED_KEYS = ("observations", "actions", "rewards", "h", "next_observations", "masks")
OPTIONAL_KEYS = ("costs", "reward_weights", "flow_weights")
_VECTOR_KEYS = ("observations", "actions", "next_observations")


class DeviceDataset(eqx.Module):
    """Float32 transition arrays on device. Build with ``DeviceDataset.from_arrays`` (validates)."""

    observations: Float[Array, "n o"]
    actions: Float[Array, "n a"]  # in [-1, 1]
    rewards: Float[Array, " n"]
    # safety margin (> 0 inside the failure set) of observations, or (n, k) for k-step held-action
    # transitions: the margins of the k states the action is held through (load.held_action_transitions)
    h: Float[Array, " n"] | Float[Array, "n k"]
    next_observations: Float[Array, "n o"]
    masks: Float[Array, " n"]  # 1 - terminal (timeouts are not terminals)
    costs: Float[Array, " n"] | None = None  # optional, unused by the learner
    # optional weights of the reward critic and value losses (config.reward_episodes="safe": 1 for the
    # transitions of episodes that never enter the failure set, 0 for the rest)
    reward_weights: Float[Array, " n"] | None = None
    # the same for the flow teacher's loss (config.flow_episodes="safe")
    flow_weights: Float[Array, " n"] | None = None

    @classmethod
    def from_arrays(cls, source: Mapping[str, Any] | Any) -> DeviceDataset:
        """Validate and upload a dict of NumPy arrays (or an object with those attributes, e.g. Transitions).

        Extra keys are ignored. Raises ValueError naming the key for a missing key, a wrong shape or a
        non-finite or out-of-range value.
        """

        def get(name: str):
            if isinstance(source, Mapping):
                return source.get(name)
            return getattr(source, name, None)

        if get("h") is None:
            raise ValueError(
                "dataset has no safety margin 'h' (h > 0 inside the failure set); SafeFQL needs it. "
                "For binary-cost data build h from costs (e.g. h = kappa if cost > 0 else -1)."
            )
        arrays: dict[str, np.ndarray] = {}
        for name in REQUIRED_KEYS + OPTIONAL_KEYS:
            value = get(name)
            if value is None:
                if name in OPTIONAL_KEYS:
                    continue
                raise ValueError(f"dataset is missing key {name!r}; required keys are {list(REQUIRED_KEYS)}")
            arr = np.asarray(value)
            if not (
                np.issubdtype(arr.dtype, np.floating)
                or np.issubdtype(arr.dtype, np.integer)
                or arr.dtype == bool
            ):
                raise ValueError(f"dataset key {name!r} must be a real numeric array, got dtype {arr.dtype}")
            arr = arr.astype(np.float32)
            want_ndim = 2 if name in _VECTOR_KEYS or (name == "h" and arr.ndim == 2) else 1
            if arr.ndim != want_ndim:
                kind = "(N, dim)" if want_ndim == 2 else "(N,)"
                raise ValueError(f"dataset key {name!r} must have shape {kind}, got shape {arr.shape}")
            if not np.all(np.isfinite(arr)):
                bad = int(np.sum(~np.isfinite(arr)))
                raise ValueError(f"dataset key {name!r} has {bad} non-finite (NaN/inf) values")
            arrays[name] = arr
        n = arrays["observations"].shape[0]
        lengths = {k: v.shape[0] for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"dataset arrays must all have the same length; got lengths {lengths}")
        if n == 0:
            raise ValueError("dataset is empty (0 transitions)")
        if arrays["next_observations"].shape != arrays["observations"].shape:
            raise ValueError(
                f"dataset key 'next_observations' has shape {arrays['next_observations'].shape}, "
                f"expected the shape of 'observations' {arrays['observations'].shape}"
            )
        actions = arrays["actions"]
        if np.any(np.abs(actions) > 1.0 + 1e-5):
            raise ValueError(
                "dataset key 'actions' must lie in [-1, 1]; "
                f"got range [{actions.min():.4g}, {actions.max():.4g}]"
            )
        arrays["actions"] = np.clip(actions, -1.0, 1.0)
        masks = arrays["masks"]
        if np.any((masks < 0.0) | (masks > 1.0)):
            raise ValueError(f"dataset key 'masks' must lie in [0, 1] (1 - terminal); got min {masks.min()}")
        return cls(**{k: jnp.asarray(v) for k, v in arrays.items()})

    @property
    def action_repeat(self) -> int:
        """k of k-step held-action transitions (1 for plain transitions)."""
        return 1 if self.h.ndim == 1 else int(self.h.shape[1])

    @property
    def size(self) -> int:
        """Number of transitions."""
        return int(self.observations.shape[0])

    def standardized(self, mean: Any, std: Any) -> DeviceDataset:
        """The dataset with ``observations`` and ``next_observations`` mapped to ``(obs - mean) / std``."""
        mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
        return eqx.tree_at(
            lambda d: (d.observations, d.next_observations),
            self,
            ((self.observations - mean) / std, (self.next_observations - mean) / std),
        )

    def sample(self, key: PRNGKeyArray, batch_size: int) -> dict[str, Array]:
        """Same as ``sample_batch(key, self, batch_size)``."""
        return sample_batch(key, self, batch_size)


def sample_batch(key: PRNGKeyArray, data: DeviceDataset, batch_size: int) -> dict[str, Array]:
    """Uniform minibatch (with replacement) as a dict of float32 arrays; jit-safe, ``batch_size`` static."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    idx = jax.random.randint(key, (batch_size,), 0, data.observations.shape[0])
    fields = {k: getattr(data, k) for k in REQUIRED_KEYS + OPTIONAL_KEYS}
    return {k: v[idx] for k, v in fields.items() if v is not None}
