"""Reward against cost of every stored Safety-Gymnasium run on one task's main dataset (one figure).

Reads ``benchmarks/results/safety_gym.json`` (written by ``bench_safety_gym.py``) and plots, for the main
run of ``--env`` and each tagged variant that ran on the same data (same dataset id and contents) with at
least ``--min-episodes`` evaluation episodes per seed, SafeFQL's normalized reward against its normalized
cost (mean and std over seeds), next to the main run's baselines, with the cost limit (c_norm = 1) and
the target region (c_norm <= 1, r_norm >= BC-safe's) shaded. Runs with few episodes are left out
because a single long stay inside a hazard moves a seed's c_norm by about 0.3 per 100 episodes.
``--run TAG`` anchors the figure on the variant ``"<env> [TAG]"`` instead of the main run (its dataset,
its baselines): the runs on another dataset than the main one.

    uv run python benchmarks/plot_safety_gym.py            # PointGoal1, 50+ episodes per seed
    uv run python benchmarks/plot_safety_gym.py --env SafetyCarGoal1Gymnasium-v0 --run mix150
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT_IN = RESULTS / "safety_gym.json"
BASELINES = {"bc": "BC-all", "bc_safe": "BC-safe", "fisor": "FISOR-style"}


def _sibling(name: str) -> Any:
    """Import another script of this folder by path (the benchmarks folder is not a package)."""
    mod_name = f"_safefql_bench_{name}"
    if mod_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(mod_name, HERE / f"{name}.py")
        sys.modules[mod_name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[mod_name]


def frontier_points(results: dict[str, Any], env_id: str, min_episodes: int, tag: str = "") -> dict[str, Any]:
    """``{"safefql": [(label, r, r_std, c, c_std, episodes)], "baselines": [...], "bc_safe_r": float}``.

    The main run is labelled ``defaults``; variants by their tag. ``tag`` anchors the figure on
    that variant's data and baselines instead of the main run's. Raises ``ValueError`` when the results
    hold no such run of ``env_id``.
    """
    same_dataset = _sibling("bench_safety_gym").same_dataset
    envs = results.get("envs") or {}
    anchor = f"{env_id} [{tag}]" if tag else env_id
    main = envs.get(anchor)
    if not isinstance(main, dict) or "evaluation" not in main:
        raise ValueError(f"no run {anchor!r} in the results (keys: {sorted(envs)[:5]}...)")
    points: list[tuple[str, float, float, float, float, int]] = []
    for key, entry in envs.items():
        m = re.fullmatch(re.escape(env_id) + r"(?: \[(.+)\])?", key)
        if m is None or not isinstance(entry, dict) or "evaluation" not in entry:
            continue
        episodes = int(entry["evaluation"].get("episodes_per_seed") or 0)
        safefql = (entry["evaluation"].get("methods") or {}).get("safefql")
        same = same_dataset(entry.get("data") or {}, main.get("data") or {})
        if episodes < min_episodes or safefql is None or not same:
            continue
        a = safefql["aggregate"]
        points.append(
            (m.group(1) or "defaults", a["r_norm"], a["r_norm_std"], a["c_norm"], a["c_norm_std"], episodes)
        )
    baselines = []
    for name, label in BASELINES.items():
        run = (main["evaluation"].get("methods") or {}).get(name)
        if run is not None:
            a = run["aggregate"]
            baselines.append((label, a["r_norm"], a["r_norm_std"], a["c_norm"], a["c_norm_std"]))
    bc_safe = (main["evaluation"].get("methods") or {}).get("bc_safe")
    return {
        "safefql": sorted(points, key=lambda p: p[3]),
        "baselines": baselines,
        "bc_safe_r": None if bc_safe is None else bc_safe["aggregate"]["r_norm"],
        "cost_limit": (main.get("normalization") or {}).get("cost_limit"),
        "dataset_id": (main.get("data") or {}).get("dataset_id"),
        "anchor": f"[{tag}]" if tag else "the main run",
    }


def plot_frontier(points: dict[str, Any], env_id: str, path: Path) -> Path:
    """Write the reward-against-cost figure (PNG, atomically) and return its path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from safefql._io import atomic_write_bytes

    fig = Figure(figsize=(10.5, 5.4), layout="constrained")
    ax, side = fig.subplots(1, 2, width_ratios=(2.2, 1))
    if points["bc_safe_r"] is not None:
        ax.fill_between(
            [0, 1], points["bc_safe_r"], 1.0, color="tab:green", alpha=0.12, label="target region"
        )
    ax.axvline(1.0, color="k", lw=0.8, ls="--", label="cost limit (c_norm = 1)")
    lines = []
    for i, (label, r, rs, c, cs, episodes) in enumerate(points["safefql"], start=1):
        ax.errorbar(c, r, xerr=cs, yerr=rs, fmt="o", color="tab:blue", ms=5, capsize=2, lw=0.6, alpha=0.8)
        ax.annotate(str(i), (c, r), textcoords="offset points", xytext=(4, 3), fontsize=8)
        lines.append(f"{i:>2}  {label}  ({r:.3f}, {c:.3f}; {episodes} ep.)")
    for (label, r, rs, c, cs), marker in zip(points["baselines"], "s^D", strict=False):
        ax.errorbar(c, r, xerr=cs, yerr=rs, fmt=marker, color="tab:orange", ms=7, capsize=2, lw=0.8)
        ax.annotate(label, (c, r), textcoords="offset points", xytext=(6, -12), fontsize=8)
    ax.plot([], [], "o", color="tab:blue", label="SafeFQL (numbered, right)")
    ax.plot([], [], "s", color="tab:orange", label=f"baselines of {points.get('anchor', 'the main run')}")
    ax.set_xlabel("normalized cost c_norm (mean ± std over seeds)")
    ax.set_ylabel("normalized reward r_norm")
    limit = points.get("cost_limit")
    data = points.get("dataset_id") or "one dataset"
    title = f"{env_id}: runs on {data}" + (f", cost limit {limit:g}" if limit else "")
    ax.set_title(title, fontsize=10)
    ax.set_xlim(left=0)
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.0)
    ax.legend(fontsize=7, loc="upper right")
    side.axis("off")
    side.text(
        0.0,
        1.0,
        "SafeFQL runs (r_norm, c_norm; episodes per seed)\n\n" + "\n".join(lines),
        va="top",
        ha="left",
        family="monospace",
        fontsize=7,
        transform=side.transAxes,
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    return path


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=DEFAULT_IN, help="safety_gym.json")
    parser.add_argument("--env", default="SafetyPointGoal1Gymnasium-v0", help="the task (main run key)")
    parser.add_argument("--min-episodes", type=int, default=50, help="evaluation episodes per seed, at least")
    parser.add_argument("--run", default="", help="anchor on the variant with this tag (default: main run)")
    parser.add_argument("--out", type=Path, default=None, help="PNG (default results/<task>_frontier.png)")
    args = parser.parse_args(argv)
    if not args.results.is_file():
        parser.error(f"no results file at {args.results}")
    try:
        points = frontier_points(json.loads(args.results.read_text()), args.env, args.min_episodes, args.run)
    except ValueError as e:
        parser.error(str(e))
    name = args.env.replace("Gymnasium-v0", "").replace("Safety", "").lower()
    out = args.out or RESULTS / f"safety_gym_{name}{'_' + args.run if args.run else ''}_frontier.png"
    plot_frontier(points, args.env, out)
    for label, r, _, c, _, episodes in points["safefql"]:
        print(f"{label:28s} r_norm {r:.3f}  c_norm {c:.3f}  ({episodes} episodes per seed)")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
