"""Learner throughput: compile time and updates/s of ``train_steps`` for an env's default config.

Synthetic transitions (random observations/actions, the speed does not depend on the values) of the
env's observation/action sizes. Run on a quiet machine; prints a table and writes JSON next to this file::

    uv run python benchmarks/learner_speed.py --env-id safefql/BoatNav-v0 --seeds 1
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import numpy as np

from safefql._io import atomic_write_text
from safefql.datasets.sampler import DeviceDataset
from safefql.training.config import default_config
from safefql.training.safefql import create_train_state, create_train_states, train_steps, train_steps_multi

# Observation/action sizes of the envs we ship defaults for.
ENV_DIMS = {
    "safefql/BoatNav-v0": (2, 2),
    "safefql/BoatNavDynamic-v0": (4, 2),
    "SafetyPointGoal1Gymnasium-v0": (60, 2),
    "SafetyCarGoal1Gymnasium-v0": (72, 2),
}


def synthetic_data(obs_dim: int, act_dim: int, n: int, seed: int) -> DeviceDataset:
    """Random transitions with the right shapes (values do not affect the speed)."""
    rng = np.random.default_rng(seed)
    return DeviceDataset.from_arrays(
        dict(
            observations=rng.normal(size=(n, obs_dim)),
            actions=rng.uniform(-1, 1, size=(n, act_dim)),
            rewards=rng.normal(size=n),
            h=rng.normal(size=n),
            next_observations=rng.normal(size=(n, obs_dim)),
            masks=np.ones(n),
        )
    )


def measure(env_id: str, seeds: int, calls: int, steps: int | None) -> dict:
    """Compile time (first call) and steady-state updates/s (best and median over ``calls`` calls)."""
    if env_id not in ENV_DIMS:
        raise ValueError(f"unknown env id {env_id!r}; known: {sorted(ENV_DIMS)}")
    obs_dim, act_dim = ENV_DIMS[env_id]
    config = default_config(env_id)
    steps = steps or config.steps_per_call
    data = synthetic_data(obs_dim, act_dim, 100_000, 0)
    key = jax.random.key(0)
    if seeds == 1:
        state = create_train_state(config, obs_dim, act_dim, key)
        run = lambda s, k: train_steps(s, data, k, steps)
    else:
        state = create_train_states(config, obs_dim, act_dim, jax.random.split(key, seeds))
        run = lambda s, k: train_steps_multi(s, data, jax.random.split(k, seeds), steps)
    t = time.perf_counter()
    state, _ = run(state, jax.random.key(1))
    jax.block_until_ready(state)
    first = time.perf_counter() - t
    rates = []
    for i in range(calls):
        t = time.perf_counter()
        state, _ = run(state, jax.random.key(2 + i))
        jax.block_until_ready(state)
        rates.append(steps / (time.perf_counter() - t))
    compile_s = max(first - steps / float(np.median(rates)), 0.0)
    return {
        "env_id": env_id,
        "seeds": seeds,
        "batch_size": config.batch_size,
        "steps_per_call": steps,
        "config": config.to_dict(),
        "compile_s": compile_s,
        "updates_per_s_best": max(rates),
        "updates_per_s_median": float(np.median(rates)),
        "seed_updates_per_s_median": float(np.median(rates)) * seeds,
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
        "machine": platform.processor() or platform.machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-id", action="append", help="repeatable; default: all known envs")
    parser.add_argument("--seeds", type=int, default=1, help="vmapped seeds per call")
    parser.add_argument("--calls", type=int, default=3, help="timed calls after the compile call")
    parser.add_argument("--steps", type=int, default=None, help="updates per call (default: config)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("learner_speed.json"))
    args = parser.parse_args()
    rows = [measure(e, args.seeds, args.calls, args.steps) for e in (args.env_id or list(ENV_DIMS))]
    print(f"{'env':32s} {'seeds':>5s} {'batch':>5s} {'compile s':>9s} {'upd/s med':>9s} {'upd/s best':>10s}")
    for r in rows:
        print(
            f"{r['env_id']:32s} {r['seeds']:5d} {r['batch_size']:5d} {r['compile_s']:9.1f} "
            f"{r['updates_per_s_median']:9.0f} {r['updates_per_s_best']:10.0f}"
        )
    atomic_write_text(args.out, json.dumps(rows, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
