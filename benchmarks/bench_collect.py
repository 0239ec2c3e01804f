"""Benchmark: the default BoatNav-v0 dataset (2500 episodes x 400 steps = 1M transitions).

Times ``safefql.datasets.collect`` (simulation + policies, and the Minari write), then loading the result
with ``load_transitions`` through the direct HDF5 reader and through ``minari.MinariDataset``. The dataset
goes to a temporary ``MINARI_DATASETS_PATH`` (removed afterwards unless ``--keep``). Prints a rich table and
writes ``benchmarks/results/collect.json``.

    uv run python benchmarks/bench_collect.py                 # the real numbers (quiet machine)
    uv run python benchmarks/bench_collect.py --episodes 100  # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "collect.json"


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the JSON record that is also written to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=2500, help="episodes of 400 steps (default 2500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixture", default=None, help="behaviour mixture (default: the boat default)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON output (default {RESULTS})")
    parser.add_argument("--keep", action="store_true", help="keep the dataset directory")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be >= 1")

    root = Path(tempfile.mkdtemp(prefix="safefql-bench-collect-"))
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    # Imports after setting the dataset root; the oracle (needed by safe starts and safe_expert) is
    # loaded before timing, as it is cached on disk after its first computation.
    import minari
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    import safefql
    from safefql._io import atomic_write_text
    from safefql.datasets.collect import collect
    from safefql.datasets.load import load_transitions
    from safefql.datasets.policies import DEFAULT_BOAT_MIXTURE
    from safefql.envs import BOAT_ID
    from safefql.envs.oracle import load_boat_oracle

    console = Console()
    dataset_id = "bench/boat-default-v0"
    try:
        t = time.perf_counter()
        load_boat_oracle()
        oracle_s = time.perf_counter() - t

        summary = collect(BOAT_ID, args.mixture, args.episodes, args.seed, dataset_id, progress=False)

        t = time.perf_counter()
        tr = load_transitions(dataset_id, reader="hdf5")
        load_hdf5_s = time.perf_counter() - t
        t = time.perf_counter()
        tm = load_transitions(dataset_id, reader="minari")
        load_minari_s = time.perf_counter() - t
        if not np.array_equal(tr.observations, tm.observations):
            raise RuntimeError("the two readers disagree")
        size_mb = sum(p.stat().st_size for p in (root / dataset_id).rglob("*") if p.is_file()) / 1e6
        with_minari = minari.load_dataset(dataset_id).total_steps
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    record = {
        "benchmark": "collect",
        "env_id": BOAT_ID,
        "mixture": args.mixture or DEFAULT_BOAT_MIXTURE,
        "episodes": summary.episodes,
        "transitions": summary.transitions,
        "minari_total_steps": int(with_minari),
        "seconds": {
            "oracle_load": oracle_s,
            "collect_total": summary.seconds,
            "simulate": summary.produce_seconds,
            "minari_write": summary.write_seconds,
            "load_transitions_hdf5": load_hdf5_s,
            "load_transitions_minari": load_minari_s,
        },
        "transitions_per_second_collect": summary.transitions / summary.seconds,
        "dataset_mb": size_mb,
        "violating_fraction": summary.violating_fraction,
        "safe_fraction": 1.0 - summary.violating_fraction,
        "mean_return": summary.mean_return,
        "mean_cost": summary.mean_cost,
        "per_policy": summary.per_policy,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "versions": {"safefql": safefql.__version__, "minari": minari.__version__, "numpy": np.__version__},
    }

    table = Table(
        title=f"collect benchmark: {summary.transitions:,} boat transitions ({summary.episodes} episodes)"
    )
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    for name, sec in record["seconds"].items():
        table.add_row(name, f"{sec:.2f}")
    table.add_row("dataset size (MB)", f"{size_mb:.1f}", end_section=True)
    table.add_row("violating episodes", f"{summary.violating_fraction:.3f}")
    console.print(table)
    summary.print(console)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")
    console.print(f"wrote {args.out}")
    return record


if __name__ == "__main__":
    from safefql._io import exit_on_sigterm

    exit_on_sigterm()  # a killed run removes its temporary dataset and checkpoint paths
    main()
