"""Where does a shielded agent's remaining cost come from? A per-step account of shielded rollouts.

``diagnose_safety_critic.py`` judges the safety critic on held-out *logged* episodes. This script judges it
where the shield uses it: along the rollouts of the goal_lidar agent (hazards ignored) inside
``SafeFQLShield``, on a Safety-Gymnasium Goal task with the hazard-distance margin (``info["h"]``, metres,
``> 0`` inside a hazard). For each seed's checkpoint of a finished ``bench_safety_gym`` run it reports:

- **cost split**: per episode, the hazard *entries* (a costly step after a cost-free one) and the *stay*
  steps (costly after costly);
- **entries / stays**: the fraction of those steps where the shield intervened on the step that led there,
  and the mean ``Q_h(s, proposed)`` / ``Q_h(s, applied)`` of that step. A critic that saw the hazard coming
  has ``Q_h(s, proposed) > -delta`` there (so the shield intervened);
- **false alarms**: the intervention rate on steps far from every hazard (``h(s) < -0.3``);
- **fidelity**: the Pearson correlation of ``Q_h(s, proposed)`` with ``h(s)`` along the shielded rollouts
  and, with ``--dataset``, of ``Q_h(s, a)`` with ``h(s)`` on 20,000 logged transitions of the training data;
- **inside a hazard**: at the steps with ``h(s) > 0`` (where every HJ target is at least ``h > 0``),
  ``Q_h(s, a)`` of the executed action (mean, and the fraction above 0), the depth ``h`` and the speed
  (velocimeter norm), for the agent alone (the same episodes without the shield, once for all seeds), the
  shielded agent and the logged data: whether the states the shield leads into look like the data's.

Prints a table and adds an entry (``--tag``) with its command to
``benchmarks/results/shield_rollout_diagnosis.json``::

    uv run python benchmarks/diagnose_shield_rollouts.py --env car \\
        --run-dir /tmp/sgbench/car/SafetyCarGoal1Gymnasium-v0/safefql \\
        --dataset bench/CarGoal1-mix150-hd-s0-v0 --fallback samples --delta 0.1 --tag car-samples-0.1
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
sys.path.insert(0, str(HERE))

ENVS = {"point": "SafetyPointGoal1Gymnasium-v0", "car": "SafetyCarGoal1Gymnasium-v0"}
FAR = -0.3  # metres outside every hazard: an intervention there is a false alarm


def rollouts(env: Any, agent: Any, episodes: int, seed: int) -> dict[str, np.ndarray]:
    """Per-step arrays over ``episodes`` episodes of ``agent`` in ``env`` (resets seeded ``seed + i``): the
    observation, the executed action, the pre-step margin ``h``, the cost of the pre-step state and of the
    next state, and, when ``env`` is a shield, its decision and ``Q_h``s (NaN otherwise)."""
    keys = ("h", "cost_before", "cost", "intervened", "q_proposed", "q_applied")
    out: dict[str, list[Any]] = {k: [] for k in (*keys, "obs", "action")}
    for i in range(episodes):
        obs, info = env.reset(seed=seed + i)
        h, cost_before = float(info["h"]), float(info["cost"])
        while True:
            proposed = agent(obs, None)
            next_obs, _, term, trunc, info = env.step(proposed)
            sh = info.get("shield")
            if sh is None:
                step, applied = (info["cost"], 0.0, np.nan, np.nan), proposed
            else:
                step, applied = (
                    (info["cost"], sh["intervened"], sh["q_h_proposed"], sh["q_h_applied"]),
                    sh["applied"],
                )
            for k, v in zip(keys, (h, cost_before, *step), strict=True):
                out[k].append(float(v))
            out["obs"].append(np.asarray(obs, np.float32))
            out["action"].append(np.asarray(applied, np.float32))
            obs, h, cost_before = next_obs, float(info["h"]), float(info["cost"])
            if term or trunc:
                break
    return {k: np.asarray(v) for k, v in out.items()}


def account(r: dict[str, np.ndarray], episodes: int) -> dict[str, Any]:
    """The cost split and the critic's readings on the steps that led into or stayed in a hazard."""
    costly, before = r["cost"] > 0, r["cost_before"] > 0
    entry, stay = costly & ~before, costly & before
    intervened = r["intervened"] > 0
    inside = r["h"] > 0

    def on(mask: np.ndarray) -> dict[str, Any]:
        n = int(mask.sum())
        if not n:
            return {"steps": 0}
        return {
            "steps": n,
            "intervened": float(intervened[mask].mean()),
            "q_proposed": float(r["q_proposed"][mask].mean()),
            "q_applied": float(r["q_applied"][mask].mean()),
        }

    return {
        "cost_per_episode": float(r["cost"].sum() / episodes),
        "entries_per_episode": float(entry.sum() / episodes),
        "stay_steps_per_episode": float(stay.sum() / episodes),
        "intervention_rate": float(intervened.mean()),
        "entries": on(entry),
        "stays": on(stay),
        "false_alarm_rate": float(intervened[r["h"] < FAR].mean()) if (r["h"] < FAR).any() else None,
        "pearson_q_h_rollout": float(np.corrcoef(r["q_proposed"], r["h"])[0, 1]),
        "q_inside_rollout": float(r["q_proposed"][inside].mean()) if inside.any() else None,
    }


def inside_signature(
    policy: Any, obs: np.ndarray, action: np.ndarray, h: np.ndarray, speed: slice
) -> dict[str, float | int | None]:
    """At the steps inside a hazard (``h > 0``): how many, ``Q_h(s, a)`` of the executed action (mean and
    fraction ``> 0``), the depth ``h`` and the speed (norm of the velocimeter reading)."""
    inside = h > 0
    n = int(inside.sum())
    if not n:
        return {"steps": 0, "q": None, "q_above_zero": None, "depth": None, "speed": None}
    q = np.asarray(policy.safety_q(obs[inside], action[inside]), np.float64)
    return {
        "steps": n,
        "q": float(q.mean()),
        "q_above_zero": float((q > 0).mean()),
        "depth": float(h[inside].mean()),
        "speed": float(np.linalg.norm(obs[inside][:, speed], axis=1).mean()),
    }


def data_fidelity(policy: Any, data: Any, rng: np.random.Generator, n: int = 20_000) -> dict[str, float]:
    idx = rng.choice(data.h.size, size=min(n, data.h.size), replace=False)
    q = np.asarray(policy.safety_q(data.observations[idx], data.actions[idx]), np.float64)
    h = data.h[idx].astype(np.float64)
    return {"pearson_q_h_data": float(np.corrcoef(q, h)[0, 1]), "q_inside_data": float(q[h > 0].mean())}


def print_table(tag: str, per_seed: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"shielded rollouts: {tag}")
    t.add_column("measure")
    for i in range(len(per_seed)):
        t.add_column(f"seed {i}", justify="right")

    def get(s: dict[str, Any], path: str) -> Any:
        for k in path.split("."):
            s = s.get(k) if isinstance(s, dict) else None
        return s

    def cell(s: dict[str, Any], paths: tuple[str, ...], fmt: str) -> str:
        return " / ".join("-" if get(s, p) is None else format(get(s, p), fmt) for p in paths)

    def where(key: str) -> tuple[str, ...]:
        return tuple(f"inside.{w}.{key}" for w in ("alone", "shielded", "data"))

    rows = [
        ("cost / episode", ("cost_per_episode",), ".1f"),
        ("hazard entries / episode", ("entries_per_episode",), ".2f"),
        ("stay steps / episode", ("stay_steps_per_episode",), ".1f"),
        ("interventions / step", ("intervention_rate",), ".2f"),
        ("entries: shield intervened", ("entries.intervened",), ".2f"),
        ("entries: Q_h(s, proposed) / Q_h(s, applied)", ("entries.q_proposed", "entries.q_applied"), "+.3f"),
        ("stays: shield intervened", ("stays.intervened",), ".2f"),
        ("stays: Q_h(s, proposed) / Q_h(s, applied)", ("stays.q_proposed", "stays.q_applied"), "+.3f"),
        (f"false alarms (interventions at h < {FAR})", ("false_alarm_rate",), ".2f"),
        ("Pearson(Q_h, h): shielded / data", ("pearson_q_h_rollout", "pearson_q_h_data"), "+.3f"),
        ("inside, mean Q_h(s, executed): alone / shielded / data", where("q"), "+.3f"),
        ("inside, fraction Q_h > 0: alone / shielded / data", where("q_above_zero"), ".2f"),
        ("inside, depth h (m): alone / shielded / data", where("depth"), ".3f"),
        ("inside, speed: alone / shielded / data", where("speed"), ".2f"),
    ]
    for name, paths, fmt in rows:
        t.add_row(name, *(cell(s, paths, fmt) for s in per_seed))
    Console(width=max(110, 70 + 26 * len(per_seed))).print(t)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import bench_safety_gym as bench

    from safefql._io import atomic_write_text
    from safefql.datasets.load import load_transitions
    from safefql.datasets.policies_safety_gym import make_safety_gym_policy, observation_layout
    from safefql.shields.wrapper import FALLBACKS, SafeFQLShield
    from safefql.training.policy import SafeFQLPolicy

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", choices=sorted(ENVS), required=True)
    p.add_argument("--run-dir", type=Path, required=True, help="a finished bench_safety_gym SafeFQL run")
    p.add_argument("--dataset", default=None, help="its training dataset (id or path), for the data column")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--fallback", choices=FALLBACKS, default="samples")
    p.add_argument("--delta", type=float, required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--out", type=Path, default=HERE / "results" / "shield_rollout_diagnosis.json")
    args = p.parse_args(argv)
    for i in range(args.seeds):
        if not (args.run_dir / f"policy_seed{i}.eqx").is_file():
            p.error(f"{args.run_dir} holds no policy_seed{i}.eqx (a finished run with --seeds {args.seeds})")
    env_id = ENVS[args.env]
    data = load_transitions(args.dataset) if args.dataset else None

    def make() -> Any:
        return bench._make_env(env_id, margin="hazard_distance")

    bare = make()
    agent = make_safety_gym_policy("goal_lidar", bare)
    speed = slice(*observation_layout(bare).slices["velocimeter"])
    t0 = time.perf_counter()
    alone = rollouts(bare, agent, args.episodes, bench.EVAL_SEED)
    print(f"agent alone: cost/episode {alone['cost'].sum() / args.episodes:.1f}", flush=True)
    per_seed = []
    for i in range(args.seeds):
        policy = SafeFQLPolicy.load(args.run_dir / f"policy_seed{i}.eqx")
        fast = policy.numpy()
        shield = SafeFQLShield(make(), checkpoint=policy, delta=args.delta, fallback=args.fallback)
        r = rollouts(shield, agent, args.episodes, bench.EVAL_SEED)
        s = account(r, args.episodes)
        s["inside"] = {
            "alone": inside_signature(fast, alone["obs"], alone["action"], alone["h"], speed),
            "shielded": inside_signature(fast, r["obs"], r["action"], r["h"], speed),
        }
        if data is not None:
            s |= data_fidelity(fast, data, np.random.default_rng(i))
            s["inside"]["data"] = inside_signature(fast, data.observations, data.actions, data.h, speed)
        per_seed.append(s)
        print(f"seed {i}: cost/episode {s['cost_per_episode']:.1f}", flush=True)
    print_table(args.tag, per_seed)
    entry = {
        "env_id": env_id,
        "run_dir": str(args.run_dir),
        "fallback": args.fallback,
        "delta": args.delta,
        "episodes": args.episodes,
        "agent_alone_cost_per_episode": float(alone["cost"].sum() / args.episodes),
        "per_seed": per_seed,
        "wall_s": time.perf_counter() - t0,
        "machine": bench.machine_info(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": "uv run python benchmarks/diagnose_shield_rollouts.py " + shlex.join(argv or sys.argv[1:]),
    }
    entries = json.loads(args.out.read_text()) if args.out.is_file() else {}
    entries[args.tag] = entry
    atomic_write_text(args.out, json.dumps(entries, indent=1) + "\n")
    print(f"wrote {args.out} [{args.tag}]")
    return entry


if __name__ == "__main__":
    from safefql._io import exit_on_sigterm

    exit_on_sigterm()
    main()
