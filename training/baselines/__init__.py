"""Baselines on SafeFQL's data, evaluation and code base: BC, BC-safe, FQL and a FISOR-style agent.

Every baseline exposes ``create_*_state``, ``*_train_steps`` (jitted ``lax.scan``), ``make_policy(state)``
(a ``BatchedPolicy``: ``policy(obs (N, d), rng) -> (N, a)``, with ``.act`` for one observation) and
``act(state, obs, rng)``. ``train_baseline`` runs any of them end to end from a dict of NumPy arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from safefql.datasets.sampler import DeviceDataset
from safefql.training.baselines import bc, fisor, fql
from safefql.training.baselines.bc import BCConfig, BCState
from safefql.training.baselines.common import (
    BatchedPolicy,
    PolicyFn,
    as_dict,
    check_int,
    filter_zero_cost_episodes,
    policy_from_act,
    run_chunks,
    standardized_inputs,
    zero_cost_episode_mask,
)
from safefql.training.baselines.fisor import FisorConfig, FisorState
from safefql.training.baselines.fql import FQLConfig, FQLState
from safefql.training.safefql import observation_stats

BASELINES = ("bc", "bc_safe", "fql", "fisor")

_CONFIGS: dict[str, type] = {"bc": BCConfig, "bc_safe": BCConfig, "fql": FQLConfig, "fisor": FisorConfig}


def default_baseline_config(name: str) -> BCConfig | FQLConfig | FisorConfig:
    """The CPU-sized default config of a baseline."""
    if name not in _CONFIGS:
        raise ValueError(f"unknown baseline {name!r}; choose one of {BASELINES}")
    return _CONFIGS[name]()


def train_baseline(
    name: str,
    data: Mapping[str, Any] | Any,
    config: BCConfig | FQLConfig | FisorConfig | None = None,
    steps: int | None = None,
    seed: int = 0,
    *,
    normalize_observations: bool = False,
) -> tuple[BCState | FQLState | FisorState, BatchedPolicy, dict[str, Any]]:
    """Train baseline ``name`` for ``steps`` updates on ``data`` (dict of NumPy arrays, SafeFQL's batch keys).

    ``"bc_safe"`` also needs ``episode_ids`` and ``costs`` in ``data`` and trains on zero-cost episodes only.
    ``config=None`` takes the default config, ``steps=None`` its ``num_updates``. Returns the trained state,
    its policy function and an info dict (last-chunk metrics, ``train_time_s``, ``updates_per_s``, sizes).

    ``normalize_observations=True`` trains on ``(obs - mean) / std`` with the statistics of all of ``data``
    (before BC-safe's filtering, as SafeFQL's ``normalize_observations`` uses its whole training split):
    the returned policy takes raw observations and standardises them itself, the returned state expects
    standardised ones, and ``info["observation_normalization"]`` holds the statistics.
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {BASELINES}")
    data = as_dict(data)  # a dict of arrays or a Transitions-like object
    config = default_baseline_config(name) if config is None else config
    if not isinstance(config, _CONFIGS[name]):
        raise ValueError(f"baseline {name!r} needs a {_CONFIGS[name].__name__}, got {type(config).__name__}")
    steps = config.num_updates if steps is None else steps
    check_int("steps", steps)
    check_int("seed", seed, lo=0)
    info: dict[str, Any] = {"name": name, "steps": int(steps), "seed": int(seed)}
    stats = observation_stats(np.asarray(data["observations"])) if normalize_observations else None
    if name == "bc_safe":
        for key in ("episode_ids", "costs"):
            if key not in data:
                raise ValueError(f"baseline 'bc_safe' needs {key!r} in data to keep zero-cost episodes")
        info["num_episodes"] = int(np.unique(np.asarray(data["episode_ids"])).shape[0])
        data = filter_zero_cost_episodes(data)
        info["num_episodes_kept"] = int(np.unique(data["episode_ids"]).shape[0])
    dataset = DeviceDataset.from_arrays(data)
    if stats is not None:
        info["observation_normalization"] = {"mean": stats[0].tolist(), "std": stats[1].tolist()}
        dataset = dataset.standardized(*stats)
    info["num_transitions"] = dataset.size
    obs_dim, act_dim = int(dataset.observations.shape[1]), int(dataset.actions.shape[1])
    k_init, k_train = jax.random.split(jax.random.key(seed))
    if name in ("bc", "bc_safe"):
        state = bc.create_bc_state(config, obs_dim, act_dim, k_init)
        train_fn, policy_of = bc.bc_train_steps, lambda s: bc.make_policy(s, name)
    elif name == "fql":
        state = fql.create_fql_state(config, obs_dim, act_dim, k_init)
        train_fn, policy_of = fql.fql_train_steps, fql.make_policy
    else:
        state = fisor.create_fisor_state(config, obs_dim, act_dim, k_init)
        train_fn, policy_of = fisor.fisor_train_steps, fisor.make_policy
    state, metrics = run_chunks(train_fn, state, dataset, k_train, steps, config.steps_per_call)
    policy = policy_of(state)
    if stats is not None:
        policy = standardized_inputs(policy, *stats)
    return state, policy, info | metrics


__all__ = [
    "BASELINES",
    "BCConfig",
    "BCState",
    "BatchedPolicy",
    "FQLConfig",
    "FQLState",
    "FisorConfig",
    "FisorState",
    "PolicyFn",
    "bc",
    "default_baseline_config",
    "filter_zero_cost_episodes",
    "fisor",
    "fql",
    "policy_from_act",
    "standardized_inputs",
    "train_baseline",
    "zero_cost_episode_mask",
]
