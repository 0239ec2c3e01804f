"""Is a Safety-Gymnasium baseline's score a matter of dataset size or of which episodes were drawn?

Trains one baseline (``--method``, default BC-safe) on a collected bench dataset as a whole and on each of
``--parts`` disjoint, equal slices of its episodes (in collection order), with the bench's config, split
(``--calib-fraction`` held out, as ``bench_safety_gym.py`` does) and evaluation (``--eval-episodes`` from
the same seeded starts, normalised with the whole dataset's return range and ``--cost-limit``). If the
slices score like the whole, the dataset's size is not what moves the score; if they spread widely, a
single draw of that size says little. ``--seeds`` training seeds per part (one evaluation each).

Writes ``benchmarks/results/data_subsets.json`` (entries keyed by dataset and method, merged)::

    MINARI_DATASETS_PATH=/tmp/sgbench/point450/minari uv run python benchmarks/bench_data_subsets.py \\
        --dataset bench/PointGoal1-mix450-hd-s0-v0 --parts 3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "data_subsets.json"


def _bench() -> Any:
    name = "_bench_safety_gym_for_subsets"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "bench_safety_gym.py")
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


def episode_parts(episode_ids: np.ndarray, parts: int) -> list[np.ndarray]:
    """The dataset's episode ids cut into ``parts`` disjoint, equal slices in collection order."""
    ids = np.unique(episode_ids)
    if parts < 1 or ids.size < 2 * parts:
        raise ValueError(f"cannot cut {ids.size} episodes into {parts} parts of at least 2 episodes")
    size = ids.size // parts
    return [ids[i * size : (i + 1) * size] for i in range(parts)]


def stored_results(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The results stored at ``path`` (empty when there is none); a file that is not JSON is an error."""
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError as e:
        parser.error(f"{path} is not valid JSON ({e}); move it away or pass another --out")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="a collected dataset id (or path)")
    parser.add_argument("--method", default="bc_safe", choices=("bc", "bc_safe", "fisor"))
    parser.add_argument("--parts", type=int, default=3, help="disjoint slices of the episodes")
    parser.add_argument("--steps", type=int, default=15_000, help="baseline updates")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per part")
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--calib-fraction", type=float, default=0.1)
    parser.add_argument("--cost-limit", type=float, default=None, help="default: the bench's (25)")
    parser.add_argument("--no-standardise", dest="standardise", action="store_false")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    for name in ("steps", "seeds", "eval_episodes", "parts"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    stored_results(args.out, parser)  # a bad results file fails now, not after the training
    bench = _bench()
    from rich.console import Console
    from rich.table import Table

    import safefql  # noqa: F401  (registers the Safety-Gymnasium ids)
    from safefql._io import atomic_write_text
    from safefql.datasets.load import dataset_env_id, load_transitions, split_episodes
    from safefql.training.baselines import train_baseline

    cost_limit = bench.DEFAULT_COST_LIMIT if args.cost_limit is None else args.cost_limit
    try:
        env_id = dataset_env_id(args.dataset)
        data = load_transitions(args.dataset)
        parts = episode_parts(data.episode_ids, args.parts)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    returns = bench.episode_table(data)["returns"]
    r_min, r_max = float(returns.min()), float(returns.max())
    config = bench.baseline_configs(False)[args.method]
    make = lambda: bench._make_env(env_id)  # noqa: E731
    console = Console(width=120)
    rows = []
    slices = [("all", np.unique(data.episode_ids))] + [(f"part {i + 1}", ids) for i, ids in enumerate(parts)]
    for label, ids in slices:
        train_t, _ = split_episodes(data.select_episodes(ids), args.calib_fraction, 0)
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            _, policy, info = train_baseline(
                args.method,
                train_t,
                config,
                steps=args.steps,
                seed=seed,
                normalize_observations=args.standardise,
            )
            rng = np.random.default_rng([seed, 7]) if args.method == "fisor" else None  # as the bench

            def act(obs: np.ndarray, policy: Any = policy, rng: Any = rng) -> Any:
                return policy.act(obs, rng)

            ep = bench.run_episodes(make, act, args.eval_episodes, bench.EVAL_SEED, None)
            s = bench.summarize(ep, r_min, r_max, cost_limit)
            rows.append(
                {
                    "slice": label,
                    "episodes": int(ids.size),
                    "first_episode": int(ids[0]),
                    "train_episodes": train_t.num_episodes,
                    "train_transitions": int(info.get("num_transitions", len(train_t))),
                    "seed": seed,
                    "seconds": time.perf_counter() - t0,
                    **{k: s[k] for k in ("return", "cost", "r_norm", "c_norm", "violation_rate")},
                }
            )
            r = rows[-1]
            console.print(
                f"[dim]{label} seed {seed}: r_norm {r['r_norm']:.3f} c_norm {r['c_norm']:.3f}[/dim]"
            )
    table = Table(title=f"{args.method} on {args.dataset}: the whole dataset and {args.parts} disjoint parts")
    for col in ("slice", "episodes", "seed", "train transitions", "r_norm", "c_norm", "violation rate"):
        table.add_column(col, justify="left" if col == "slice" else "right")
    for r in rows:
        table.add_row(
            r["slice"],
            str(r["episodes"]),
            str(r["seed"]),
            str(r["train_transitions"]),
            f"{r['r_norm']:.3f}",
            f"{r['c_norm']:.3f}",
            f"{r['violation_rate']:.2f}",
        )
    table.caption = f"{args.eval_episodes} evaluation episodes each; r_norm over [{r_min:.2f}, {r_max:.2f}]"
    console.print(table)
    existing = stored_results(args.out, parser)  # read again: other runs may have written meanwhile
    key = f"{args.dataset} {args.method}"
    existing[key] = {
        "env_id": env_id,
        "method": args.method,
        "steps": args.steps,
        "standardised": args.standardise,
        "eval_episodes": args.eval_episodes,
        "cost_limit": cost_limit,
        "r_min": r_min,
        "r_max": r_max,
        "rows": rows,
        "command": "MINARI_DATASETS_PATH={} uv run python benchmarks/bench_data_subsets.py {}".format(
            os.environ.get("MINARI_DATASETS_PATH", "<unset>"),
            shlex.join(sys.argv[1:] if argv is None else argv),
        ),
        "machine": bench.machine_info(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(args.out, json.dumps(bench._clean(existing), indent=1) + "\n")
    console.print(f"wrote {args.out} ({key})")
    return existing[key]


if __name__ == "__main__":
    main()
