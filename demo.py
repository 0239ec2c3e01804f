"""``safefql demo``: the whole pipeline on the boat, end to end, on a laptop-class CPU.

1. collect a mixed behaviour dataset (Minari) on ``safefql/BoatNav-v0``;
2. train SafeFQL (critics, flow teacher, one-step actor);
3. calibrate the safety threshold (offline conformal from held-out episodes; rollout bound as a check);
4. evaluate it as a policy and as a shield over a goal-greedy and a random agent, from oracle-safe starts;
5. print the tables, write ``demo.json`` and the plots (value maps, trajectories, training curves).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from safefql._io import atomic_write_text

BOAT = "safefql/BoatNav-v0"


def _json_safe(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_json_safe(v) for v in o]
    return o


def run_demo(
    out: str | os.PathLike = "runs/demo",
    *,
    seed: int = 0,
    quick: bool = False,
    episodes: int | None = None,
    steps: int | None = None,
    eval_episodes: int | None = None,
) -> dict[str, Any]:
    """Run the demo into ``out``; returns (and writes as ``demo.json``) every number it printed.

    ``quick`` shrinks everything (dataset, updates, evaluation) to about a minute, for smoke tests;
    ``episodes``/``steps``/``eval_episodes`` override the sizes individually.
    """
    from rich.console import Console
    from rich.table import Table

    import safefql  # noqa: F401  (registers envs)
    from safefql.analysis import plot_value_maps
    from safefql.datasets.collect import collect
    from safefql.envs.oracle import load_boat_oracle
    from safefql.shields.evaluate import evaluate
    from safefql.training.calibration import calibrate
    from safefql.training.policy import SafeFQLPolicy
    from safefql.training.trainer import train

    console = Console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    episodes = episodes or (300 if quick else 2500)  # quick: 30 held-out episodes, enough for eps 0.05
    steps = steps or (1500 if quick else None)
    eval_episodes = eval_episodes or (20 if quick else 100)
    dataset_id = "safefql/BoatNav-demo-v0"
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    console.rule("[bold]1/4 collect a mixed behaviour dataset")
    t0 = time.perf_counter()
    summary = collect(BOAT, None, episodes, seed, dataset_id, overwrite=True)
    summary.print(console)
    timings["collect_s"] = time.perf_counter() - t0

    console.rule("[bold]2/4 train SafeFQL")
    t0 = time.perf_counter()
    run_dir = out / "run"
    result = train(
        dataset_id,
        out_dir=run_dir,
        steps=steps,
        seed=seed,
        eval_every=0,
        eval_episodes=0 if quick else 20,
        overwrite=True,
    )
    timings["train_s"] = time.perf_counter() - t0
    checkpoint = Path(result.policy_paths[0])

    console.rule("[bold]3/4 calibrate the safety threshold")
    t0 = time.perf_counter()
    rollout_cal = calibrate(
        checkpoint, "rollout", eps=0.05, beta=1e-6, seed=seed, num_starts=1000, store=False
    )
    console.print(rollout_cal.summary_table())
    offline_cal = calibrate(checkpoint, "offline", eps=0.05, seed=seed, store=True)
    console.print(offline_cal.summary_table())
    timings["calibrate_s"] = time.perf_counter() - t0

    console.rule("[bold]4/4 evaluate: SafeFQL as a policy, and as a shield over unsafe agents")
    t0 = time.perf_counter()
    policy = SafeFQLPolicy.load(checkpoint)
    oracle = load_boat_oracle()
    maps = plot_value_maps(policy, oracle, out / "value_maps.png")
    reports = {
        "policy": evaluate(BOAT, "zero", shield=checkpoint, episodes=eval_episodes, seed=seed, mode="policy"),
        "goal": evaluate(BOAT, "goal", shield=checkpoint, episodes=eval_episodes, seed=seed),
        "random": evaluate(BOAT, "random", shield=checkpoint, episodes=eval_episodes, seed=seed),
    }
    for name, report in reports.items():
        console.print(report.table())
        report.to_json(out / f"eval_{name}.json", include_trajectories=False)
        report.plot(out / f"trajectories_{name}.png")
    timings["evaluate_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_all

    pol = reports["policy"].shielded
    table = Table(title=f"safefql demo: {BOAT}, {eval_episodes} oracle-safe starts, seed {seed}")
    for col in ("what", "mean return", "violating episodes", "interventions/step"):
        table.add_column(col, justify="left" if col == "what" else "right")
    table.add_row("SafeFQL policy", f"{pol.mean_return:.1f}", f"{int(pol.violations.sum())}", "-")
    for name in ("goal", "random"):
        r = reports[name]
        for label, run in (("alone", r.unshielded), ("+ shield", r.shielded)):
            rate = "-" if label == "alone" else f"{run.intervention_rate:.3f}"
            violating = f"{int(run.violations.sum())}"
            table.add_row(f"{name} agent {label}", f"{run.mean_return:.1f}", violating, rate)
    console.print(table)
    console.print(
        f"learned V_h vs oracle: sign agreement {100 * maps['sign_agreement']:.1f}% "
        f"(unsafe judged safe: {100 * maps['unsafe_judged_safe']:.2f}% of the box)\n"
        f"delta (offline, eps 0.05) = {offline_cal.delta:.4g}; "
        f"rollout check: delta = {rollout_cal.delta:.4g}, "
        f"eps bound {rollout_cal.eps:.4g} at confidence 1 - {rollout_cal.beta:g}\n"
        f"time: collect {timings['collect_s']:.0f}s, train {timings['train_s']:.0f}s, "
        f"calibrate {timings['calibrate_s']:.0f}s, evaluate {timings['evaluate_s']:.0f}s, "
        f"total {timings['total_s']:.0f}s\nwritten to {out}/"
    )
    record = {
        "env_id": BOAT,
        "seed": seed,
        "quick": quick,
        "sizes": {"episodes": episodes, "updates": result.steps, "eval_episodes": eval_episodes},
        "dataset": summary.to_dict(),
        "checkpoint": str(checkpoint),
        "calibration": {"offline": offline_cal.to_dict(), "rollout": rollout_cal.to_dict()},
        "value_map": maps,
        "evaluation": {
            name: {k: r.summary() for k, r in rep.runs().items()} for name, rep in reports.items()
        },
        "timings_s": timings,
    }
    atomic_write_text(out / "demo.json", json.dumps(_json_safe(record), indent=2, default=str))
    return record
