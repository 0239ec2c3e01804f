"""Environment throughput: single-env steps/s (BoatNav-v0, BoatNavDynamic-v0) and vector-env transitions/s.

Usage::

    uv run python benchmarks/bench_envs.py                       # full run (1M vector transitions)
    uv run python benchmarks/bench_envs.py --steps 2000 --transitions 20000   # quick check

Prints a rich table and writes ``benchmarks/results/envs.json`` (or ``--out``). The vector benchmark
includes a simple policy in the loop (uniform random actions from a NumPy Generator), as dataset collection
would; the single-env benchmarks step with pre-drawn random actions, so they time the env alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import mujoco
import numpy as np
from rich.console import Console
from rich.table import Table

from safefql._io import atomic_write_text
from safefql.envs.boat import BoatNavEnv, BoatNavVectorEnv
from safefql.envs.boat_dynamic import BoatNavDynamicEnv

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "envs.json"


def bench_single(env, steps: int, seed: int = 0) -> dict[str, float]:
    """Step ``env`` ``steps`` times with random actions (resetting on truncation); returns steps/s."""
    actions = np.random.default_rng(seed).uniform(-1, 1, size=(steps, 2)).astype(np.float32)
    env.reset(seed=seed)
    for a in actions[: min(1000, steps)]:  # warm-up
        env.step(a)
    env.reset(seed=seed)
    t0 = time.perf_counter()
    for a in actions:
        if env.step(a)[3]:
            env.reset()
    elapsed = time.perf_counter() - t0
    return {
        "steps": steps,
        "seconds": elapsed,
        "steps_per_s": steps / elapsed,
        "us_per_step": 1e6 * elapsed / steps,
    }


def bench_vector(transitions: int, num_envs: int, seed: int = 0) -> dict[str, float]:
    """Collect ``transitions`` with ``BoatNavVectorEnv(num_envs)`` and a uniform random policy."""
    env = BoatNavVectorEnv(num_envs)
    rng = np.random.default_rng(seed)
    n_steps = -(-transitions // num_envs)
    t0 = time.perf_counter()
    env.reset(seed=seed)
    for _ in range(n_steps):
        env.step(rng.uniform(-1.0, 1.0, size=(num_envs, 2)))
    elapsed = time.perf_counter() - t0
    done = n_steps * num_envs
    return {
        "transitions": done,
        "num_envs": num_envs,
        "seconds": elapsed,
        "transitions_per_s": done / elapsed,
        "seconds_per_1M": 1e6 * elapsed / done,
    }


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmarks, print the table, write the JSON; returns the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000, help="single-env steps per env")
    parser.add_argument("--transitions", type=int, default=1_000_000, help="vector-env transitions")
    parser.add_argument("--num-envs", type=int, default=1000, help="boats in the vector env")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    args = parser.parse_args(argv)
    for name in ("steps", "transitions", "num_envs"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")

    results = {
        "BoatNav-v0 (single, MuJoCo)": bench_single(BoatNavEnv(), args.steps),
        "BoatNavDynamic-v0 (single, MuJoCo)": bench_single(BoatNavDynamicEnv(), args.steps),
        "BoatNav-v0 (vector, NumPy)": bench_vector(args.transitions, args.num_envs),
    }
    table = Table(title="Environment throughput")
    table.add_column("env")
    table.add_column("steps or transitions", justify="right")
    table.add_column("per second", justify="right")
    table.add_column("note", justify="right")
    for name, r in results.items():
        if "steps_per_s" in r:
            table.add_row(
                name, f"{r['steps']:,}", f"{r['steps_per_s']:,.0f}", f"{r['us_per_step']:.1f} us/step"
            )
        else:
            table.add_row(
                name,
                f"{r['transitions']:,} ({r['num_envs']} envs)",
                f"{r['transitions_per_s']:,.0f}",
                f"{r['seconds_per_1M']:.2f} s per 1M",
            )
    Console().print(table)
    payload = {
        "benchmark": "envs",
        "results": results,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "mujoco": mujoco.__version__,
        },
        "args": {"steps": args.steps, "transitions": args.transitions, "num_envs": args.num_envs},
    }
    atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")
    Console().print(f"wrote {args.out}")
    return payload


if __name__ == "__main__":
    main()
