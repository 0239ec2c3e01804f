"""End-to-end timing of ``safefql demo`` (the README's main command) and what it reports.

Runs :func:`safefql.demo.run_demo` in this process with the demo's own sizes (2500 episodes, the boat's
default config, 100 evaluation starts), times the whole call and each phase (collect, train, calibrate,
evaluate), and writes ``benchmarks/results/demo.json``: the timings against the issue's budget (<= 10 min on
a 2-core CPU, aim 5), the policy and shield results, the calibrated delta and the sign agreement with the
HJ oracle. ``uv run safefql demo`` adds the interpreter start and imports (a few seconds) to ``wall_s``.
The demo overwrites the Minari dataset ``safefql/BoatNav-demo-v0`` under ``$MINARI_DATASETS_PATH``.

    uv run python benchmarks/bench_demo.py            # the real run (quiet machine, ~8 min on 2 cores)
    uv run python benchmarks/bench_demo.py --quick    # the demo's own smoke size (about a minute)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# As the `safefql` console script does before NumPy loads (an explicit user setting wins).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
DEFAULT_OUT_DIR = HERE / "results"
BUDGET_S, AIM_S = 600.0, 300.0
COMMAND = "uv run python benchmarks/bench_demo.py"
DATASET_KEYS = ("dataset_id", "episodes", "transitions", "violating_fraction")


def _sibling(name: str) -> Any:
    """Import ``benchmarks/<name>.py`` (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def summarize(record: dict[str, Any]) -> dict[str, Any]:
    """The rows the README shows: SafeFQL as a policy, and the goal/random agents alone and shielded."""
    ev = record["evaluation"]
    rows = [{"what": "SafeFQL policy", **_row(ev["policy"]["shielded"], shielded=False)}]
    for agent in ("goal", "random"):
        rows.append({"what": f"{agent} agent alone", **_row(ev[agent]["unshielded"], shielded=False)})
        rows.append({"what": f"{agent} agent + shield", **_row(ev[agent]["shielded"], shielded=True)})
    return {"rows": rows}


def _row(run: dict[str, Any], shielded: bool) -> dict[str, Any]:
    return {
        "return": run["mean_return"],
        "violating_episodes": run["violating_episodes"],
        "intervention_rate": run["intervention_rate"] if shielded else None,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the demo, print the timing table, write ``demo.json``; returns the JSON record."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0, help="the demo's seed (default 0)")
    parser.add_argument("--quick", action="store_true", help="the demo's smoke size (about a minute)")
    parser.add_argument("--episodes", type=int, default=None, help="override the dataset size")
    parser.add_argument("--steps", type=int, default=None, help="override the number of updates")
    parser.add_argument("--eval-episodes", type=int, default=None, help="override the evaluation starts")
    parser.add_argument("--out-run", type=Path, default=Path("runs/bench_demo"), help="the demo's folder")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="demo.json goes here")
    args = parser.parse_args(argv)
    for name in ("episodes", "steps", "eval_episodes"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")

    from rich.console import Console
    from rich.table import Table

    from safefql._io import atomic_write_text
    from safefql.demo import run_demo

    t0 = time.perf_counter()
    record = run_demo(
        args.out_run,
        seed=args.seed,
        quick=args.quick,
        episodes=args.episodes,
        steps=args.steps,
        eval_episodes=args.eval_episodes,
    )
    wall = time.perf_counter() - t0
    timings = {k: float(v) for k, v in record["timings_s"].items()}
    full_size = not (args.quick or args.episodes or args.steps or args.eval_episodes)
    result = {
        "benchmark": "demo",
        "command": " ".join([COMMAND, *(sys.argv[1:] if argv is None else argv)]),
        "full_size": full_size,
        "seed": args.seed,
        "wall_s": wall,
        "timings_s": timings,
        "budget_s": BUDGET_S,
        "aim_s": AIM_S,
        "within_budget": wall <= BUDGET_S,
        "sizes": record["sizes"],
        "dataset": {k: record["dataset"][k] for k in DATASET_KEYS},
        "calibration_delta": record["calibration"]["offline"].get("delta"),
        "sign_agreement": record["value_map"].get("sign_agreement"),
        **summarize(record),
        "machine": _sibling("bench_latency").machine_info(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    table = Table(title="safefql demo, end to end")
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    for key, value in timings.items():
        table.add_row(key.removesuffix("_s"), f"{value:.1f}")
    table.add_row("wall (this process)", f"{wall:.1f}")
    Console().print(table)
    verdict = "within" if result["within_budget"] else "OVER"
    print(f"{verdict} the {BUDGET_S / 60:.0f}-minute budget (aim {AIM_S / 60:.0f} min)")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = atomic_write_text(args.out_dir / "demo.json", json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
