"""One SafeFQL config change on the boat, K seeds: return, violating and parked starts per seed.

The rows of the README's "tries at the parked starts" table. Trains SafeFQL on the default boat dataset
with ``--set key=value`` overrides of the boat config (one vmapped program for the K seeds, the split and
seed keys of ``bench_boat.py``), then runs each seed's policy (its one-step actor, z = 0) from the
benchmark's 100 oracle-safe starts with ``bench_boat.rollout``. A start "parks" when its return is below
``PARKED_RETURN``: the boat held station beside a rock for most of the episode instead of reaching the
goal. Results go under ``--tag`` into ``--out`` (JSON, with the command and the machine)::

    uv run python benchmarks/boat_tries.py --tag default
    uv run python benchmarks/boat_tries.py --tag actor_backup=1 --set actor_backup=1
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
# About -3.5 per step for 400 steps: the distance from upstream of the lower rock to the goal, held.
PARKED_RETURN = -1300.0


def seed_row(returns: np.ndarray, costs: np.ndarray) -> dict[str, Any]:
    """Per-seed summary of one rollout over the starts."""
    return {
        "return": float(np.mean(returns)),
        "violating": int(np.sum(costs > 0)),
        "parked": int(np.sum(returns < PARKED_RETURN)),
        "parked_starts": [int(i) for i in np.flatnonzero(returns < PARKED_RETURN)],
        "violating_starts": [int(i) for i in np.flatnonzero(costs > 0)],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", required=True, help="name the result is stored under")
    parser.add_argument("--set", action="append", default=[], help="boat config override key=value")
    parser.add_argument("--seeds", type=int, default=5, help="training seeds (vmapped)")
    parser.add_argument("--steps", type=int, default=None, help="updates (default: the boat config's)")
    parser.add_argument("--starts", type=int, default=100, help="oracle-safe starts per seed")
    parser.add_argument("--dataset", default="safefql/BoatNav-mixed-v0", help="Minari dataset id")
    parser.add_argument("--out-runs", type=Path, default=Path("runs/boat_tries"), help="run directories")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "boat_tries.json", help="JSON file")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.starts < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--seeds, --starts and --steps must be >= 1")

    from rich.console import Console
    from rich.table import Table

    from safefql._io import atomic_write_text
    from safefql.envs import BOAT_ID
    from safefql.envs.oracle import load_boat_oracle
    from safefql.training.config import default_config, parse_overrides
    from safefql.training.policy import SafeFQLPolicy
    from safefql.training.trainer import train

    try:
        overrides = parse_overrides(args.set)
        config = default_config(BOAT_ID).replace(**overrides)
    except ValueError as e:
        parser.error(str(e))
    if str(HERE) not in sys.path:  # the other scripts of this folder (it is not a package)
        sys.path.insert(0, str(HERE))
    import bench_boat as boat
    import bench_latency

    transitions, _ = boat.ensure_dataset(args.dataset, 2500, progress=True)
    starts = load_boat_oracle().safe_starts(args.starts, seed=boat.START_SEED)
    res = train(
        transitions,
        out_dir=args.out_runs / args.tag,
        config=config,
        steps=args.steps,
        seed=0,
        seeds=args.seeds,
        calib_fraction=0.1,
        overwrite=True,
    )
    per_seed = []
    for path in res.policy_paths:
        ep = boat.rollout(SafeFQLPolicy.load(path).numpy().act, starts)
        per_seed.append(seed_row(ep["returns"], ep["costs"]))
    result = {
        "tag": args.tag,
        "overrides": overrides,
        "seeds": args.seeds,
        "steps": res.steps,
        "per_seed": per_seed,
        **{k: v for k, v in boat.aggregate(per_seed, ("return",)).items() if k != "seeds"},
        "training": {
            "wall_s": res.wall_time_s,
            "compile_s": res.compile_time_s,
            "updates_per_s": res.updates_per_s,
        },
        "command": "uv run python benchmarks/boat_tries.py "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": bench_latency.machine_info(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    table = Table(title=f"boat, {args.tag}: {args.starts} oracle-safe starts per seed")
    for col in ("seed", "return", "violating", "parked"):
        table.add_column(col, justify="right")
    for i, row in enumerate(per_seed):
        table.add_row(str(i), f"{row['return']:.1f}", str(row["violating"]), str(row["parked"]))
    table.add_row(
        "all",
        f"{result['return_mean']:.1f} ± {result['return_std']:.1f}",
        str(sum(r["violating"] for r in per_seed)),
        str(sum(r["parked"] for r in per_seed)),
    )
    Console().print(table)
    stored = json.loads(args.out.read_text()) if args.out.is_file() else {}
    stored[args.tag] = result
    atomic_write_text(args.out, json.dumps(stored, indent=2, default=list) + "\n")
    print(f"wrote {args.out} [{args.tag}]")
    return result


if __name__ == "__main__":
    main()
