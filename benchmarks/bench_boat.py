"""The boat results table (DESIGN.md section 7): SafeFQL and the baselines, trained on one dataset, evaluated
from the same fixed oracle-safe starts.

Methods (``--methods``, comma-separated; default all):

- ``safefql``: SafeFQL trained by ``safefql.training.trainer.train`` with ``seeds=K`` (one vmapped program
  for all K seeds; its time is the total for the K seeds), evaluated in **policy mode** (its one-step actor,
  z = 0). In policy mode the actor never reads the calibrated threshold, so the calibration is reported
  where it changes something: a second table runs the goal-greedy agent (thrust straight at the goal) under
  the SafeFQL shield with ``delta = 0`` and with the offline-calibrated ``delta``
  (``calibrate(ckpt, "offline", eps)`` on the held-out episodes the trainer saved).
- ``bc`` (all data), ``bc_safe`` (zero-cost episodes only), ``fql`` (unconstrained flow Q-learning, z = 0),
  ``fisor`` (FISOR-style: 16 DDPM candidates, lowest Q_h; fresh noise every step from a seeded Generator):
  ``safefql.training.baselines.train_baseline``, one run per seed, on the same training episodes as SafeFQL
  (the trainer's calibration split is held out for every method).

Protocol: ``--starts`` (100) start states ``load_boat_oracle().safe_starts(n, seed=12345)``, one 400-step
episode each, rolled out for all starts at once with the NumPy boat equations (``safefql.envs.boat``:
``step_state``, ``margin``, ``reward``, equal to the MuJoCo env); mean return, mean episode cost (steps in a
rock), violation rate (episodes with any cost). A second protocol (``--no-uniform`` skips it) starts from
``n`` seeded uniform states over the box (some of them cannot avoid a rock). Per-action latency at batch 1
(median of ``--latency-calls`` individually timed calls; the NumPy path where the method has one: SafeFQL's
``NumpyPolicy``, a NumPy forward of the BC / FQL networks written in ``bench_latency.py``; FISOR: JAX), the
time of one 400-step episode at batch 1, training time and updates/s. Numbers are mean ± std over seeds.
The paper's published numbers are printed beside them, labelled: they come from a different start
distribution and implementation, so they are context, not a like-for-like comparison.

Writes ``<out-dir>/boat.json`` (per seed and aggregate, config, machine), ``boat_trajectories.png``,
``boat_value_maps.png`` (seed 0's learned V_h vs the oracle; sign agreement in the JSON) and
``boat_training_curve.png`` (the trainer's curve). Run directories go under ``--out-runs``::

    uv run python benchmarks/bench_boat.py                  # 5 seeds, each config's own number of updates
    uv run python benchmarks/bench_boat.py --quick          # 2 seeds, 500 updates, 10 starts: a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_OUT_DIR = HERE / "results"
DEFAULT_DATASET = "safefql/BoatNav-mixed-v0"
START_SEED = 12345
METHODS = {
    "safefql": "SafeFQL (policy)",
    "bc": "BC (all data)",
    "bc_safe": "BC-safe",
    "fql": "FQL (unconstrained)",
    "fisor": "FISOR-style",
}
# SafeFQL paper (DESIGN.md section 6): 5 seeds, raw return / episode cost, their own start distribution.
PUBLISHED = {
    "SafeFQL": {"return": -497.0, "cost": 0.0, "episode_s": 0.14},
    "FISOR": {"return": -660.0, "cost": 3.56, "episode_s": "0.33-0.35"},
    "C2IQL": {"return": -780.0, "cost": 23.65},
    "CPQ": {"return": -623.0, "cost": 74.1},
    "BEAR-Lag": {"return": -570.0, "cost": 16.6},
    "COptiDICE": {"return": -1056.0, "cost": 17.2},
}
PUBLISHED_FOR = {"safefql": "SafeFQL", "fisor": "FISOR"}
METRICS = ("return", "cost", "violation_rate")


def _sibling(name: str) -> Any:
    """Import another script of this folder by path (the benchmarks folder is not a package)."""
    mod_name = f"_safefql_bench_{name}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module


def _clean(o: Any) -> Any:
    """Strict-JSON copy: NumPy to Python, non-finite floats to strings, paths to strings."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean(v) for v in o]
    if isinstance(o, np.ndarray):
        return _clean(o.tolist())
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    return o


# ------------------------------------------------------------------------------------------- rollouts
def rollout(act: Any, starts: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, Any]:
    """All starts at once for one 400-step episode: ``a = act(p (N, 2), rng)``, NumPy boat dynamics.

    Same conventions as ``BoatNavEnv`` and ``calibration.boat_episodes``: the return sums the rewards of the
    pre-step states, the episode cost counts post-step states inside a rock.
    """
    from safefql.envs import boat
    from safefql.training.calibration import blas_single_thread

    p = np.array(starts, dtype=np.float64)
    n = p.shape[0]
    traj = np.empty((n, boat.EPISODE_STEPS + 1, 2))
    traj[:, 0] = p
    ret, cost, worst = np.zeros(n), np.zeros(n), boat.margin(p)
    with blas_single_thread():
        t0 = time.perf_counter()
        for t in range(boat.EPISODE_STEPS):
            a = np.asarray(act(p, rng), dtype=np.float64)
            ret += boat.reward(p)
            p = boat.step_state(p, a)
            h = boat.margin(p)
            cost += h > 0
            np.maximum(worst, h, out=worst)
            traj[:, t + 1] = p
        wall = time.perf_counter() - t0
    return {"returns": ret, "costs": cost, "worst_h": worst, "trajectories": traj, "wall_s": wall}


def summarize(ep: dict[str, Any]) -> dict[str, float]:
    """Mean return, mean episode cost, violation rate (episodes with any cost) and counts."""
    viol = ep["costs"] > 0
    return {
        "return": float(np.mean(ep["returns"])),
        "cost": float(np.mean(ep["costs"])),
        "violation_rate": float(np.mean(viol)),
        "violating_episodes": int(viol.sum()),
        "episodes": int(viol.size),
        "rollout_wall_s": float(ep["wall_s"]),
    }


def aggregate(per_seed: list[dict[str, Any]], keys: tuple[str, ...] = METRICS) -> dict[str, float]:
    """``{key}_mean``, ``{key}_std`` (ddof=1; 0 for a single seed) over the per-seed dicts."""
    out: dict[str, float] = {"seeds": len(per_seed)}
    for k in keys:
        vals = np.array([float(s[k]) for s in per_seed if k in s], dtype=np.float64)
        if vals.size == 0:
            continue
        out[f"{k}_mean"] = float(vals.mean())
        out[f"{k}_std"] = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
    return out


def measure_latency(paths: dict[str, Any], calls: int, episode_repeats: int) -> dict[str, Any]:
    """Batch-1 latency (median us) per path and the 400-step episode time of the fastest path."""
    lat = _sibling("bench_latency")
    from safefql.envs import boat

    obs = np.array([[-2.5, 1.5]], dtype=np.float32)
    per_path = {
        name: lat.time_calls(lambda fn=fn: fn(obs), min(5, calls), calls, budget_s=max(2.0, calls * 2e-3))
        for name, fn in paths.items()
    }
    best = min(per_path, key=lambda k: per_path[k]["median_us"])
    episode_s = lat.episode_seconds(paths[best], boat.EPISODE_STEPS, episode_repeats)
    return {
        "paths": per_path,
        "best_path": best,
        "latency_us": per_path[best]["median_us"],
        "episode_400_s": episode_s,
        "note": "batch 1, median of individually timed calls; episode = policy + NumPy boat step, 400 steps",
    }


# ------------------------------------------------------------------------------------------- methods
def run_safefql(args: Any, transitions: Any, starts: dict[str, np.ndarray], oracle: Any, figs: dict) -> dict:
    """Train K seeds in one vmapped program, calibrate each, evaluate as a policy and as a shield."""
    from safefql.analysis import plot_value_maps, sign_agreement
    from safefql.envs import BOAT_ID
    from safefql.shields.evaluate import evaluate
    from safefql.training.calibration import boat_episodes, calibrate
    from safefql.training.config import default_config
    from safefql.training.policy import SafeFQLPolicy
    from safefql.training.trainer import CURVE_FILE, train

    config = default_config(BOAT_ID)
    run_dir = Path(args.out_runs) / "safefql"
    res = train(
        transitions,
        out_dir=run_dir,
        config=config,
        steps=args.steps,
        seed=args.seed,
        seeds=args.seeds,
        calib_fraction=args.calib_fraction,
        overwrite=True,
        reuse=args.reuse_safefql,
        progress=args.progress,
    )
    if res.reused:
        print(f"reusing the finished SafeFQL run in {run_dir} (--reuse-safefql)")
    training = {
        "steps": res.steps,
        "num_seeds": res.num_seeds,
        "wall_time_s": res.wall_time_s,
        "compile_time_s": res.compile_time_s,
        "eval_time_s": res.eval_time_s,
        "train_time_s": res.wall_time_s - res.eval_time_s,
        "updates_per_s": res.updates_per_s,
        "note": f"one vmapped program for all {res.num_seeds} seeds: times are totals for all seeds; each "
        "update updates every seed; train_time_s = wall time minus the trainer's periodic evaluation",
        "run_dir": str(res.run_dir),
        "trainer_eval": res.eval,
    }
    curve = res.run_dir / CURVE_FILE
    if curve.is_file():
        from safefql._io import atomic_write_bytes

        figs["training_curve"] = atomic_write_bytes(
            args.out_dir / "boat_training_curve.png", curve.read_bytes()
        )

    per_seed, shield_seeds, goal_alone = [], [], {}
    out: dict[str, Any] = {"label": METHODS["safefql"], "config": config.to_dict(), "training": training}
    for i, path in enumerate(res.policy_paths):
        cal = calibrate(path, "offline", eps=args.eps, seed=args.seed)
        policy = SafeFQLPolicy.load(path)
        fast = policy.numpy()
        row: dict[str, Any] = {"seed_index": i, "checkpoint": str(path), "calibration": cal.to_dict()}
        for proto, st in starts.items():
            ep = rollout(fast.act, st)
            row[proto] = summarize(ep)
            if i == 0 and proto == "safe":
                figs.setdefault("trajectories", {})[METHODS["safefql"]] = ep
                ref = boat_episodes(fast, st)  # the library's batched rollout: must agree with ours
                row["rollout_check_max_abs_diff"] = float(
                    max(
                        np.max(np.abs(ref["return"] - ep["returns"])),
                        np.max(np.abs(ref["cost"] - ep["costs"])),
                    )
                )
        row["sign_agreement"] = {"delta_0": sign_agreement(fast, oracle, delta=0.0)}
        if math.isfinite(cal.delta):
            row["sign_agreement"]["calibrated"] = sign_agreement(fast, oracle, delta=cal.delta)
        if i == 0:
            out["latency"] = measure_latency(
                {"numpy": lambda o, p=fast: p.act(o), "jax": lambda o, p=policy: p.act(o)},
                args.latency_calls,
                args.episode_repeats,
            )
            vm = plot_value_maps(fast, oracle, args.out_dir / "boat_value_maps.png", delta=0.0)
            figs["value_maps"] = args.out_dir / "boat_value_maps.png"
            out["value_map_seed0"] = vm
        # the deployed SafeFQL: its own actor filtered by its calibrated critic (shield mode, agent = actor)
        for proto in starts:
            rep = evaluate(
                BOAT_ID,
                fast.act,
                shield=policy,
                episodes=args.starts,
                starts=proto,
                seed=args.start_seed,
                delta=float(cal.delta) if math.isfinite(cal.delta) else None,
            )
            row[f"{proto}/actor_shielded"] = {
                "return": rep.shielded.mean_return,
                "cost": rep.shielded.mean_cost,
                "violation_rate": rep.shielded.violation_rate,
                "violating_episodes": int(np.sum(rep.shielded.violations)),
                "intervention_rate": rep.shielded.summary()["intervention_rate"],
            }
        # shield: the goal-greedy agent filtered by this seed's critic, delta = 0 and calibrated
        srow: dict[str, Any] = {"seed_index": i, "calibrated_delta": cal.delta}
        for proto in starts:
            for variant, delta in (("delta_0", 0.0), ("calibrated", cal.delta)):
                rep = evaluate(
                    BOAT_ID,
                    "goal",
                    shield=policy,
                    episodes=args.starts,
                    starts=proto,
                    seed=args.start_seed,
                    delta=float(delta),
                )
                if not np.allclose(rep.start_states, starts[proto]):
                    raise RuntimeError(f"evaluate used other {proto} starts than this benchmark")
                srow[f"{proto}/{variant}"] = rep.shielded.summary()
                goal_alone.setdefault(proto, rep.unshielded.summary())
                if i == 0 and proto == "safe" and variant == "calibrated":
                    traj = figs.setdefault("trajectories", {})
                    traj["goal agent (no shield)"] = _report_episodes(rep.unshielded)
                    traj["goal agent + SafeFQL shield (calibrated)"] = _report_episodes(rep.shielded)
        shield_seeds.append(srow)
        per_seed.append(row)
    out["per_seed"] = per_seed
    out["aggregate"] = {proto: aggregate([s[proto] for s in per_seed]) for proto in starts}
    for proto in starts:
        out["aggregate"][f"{proto}/actor_shielded"] = aggregate(
            [s[f"{proto}/actor_shielded"] for s in per_seed], (*METRICS, "intervention_rate")
        )
    out["aggregate"]["sign_agreement_delta_0"] = aggregate(
        [{"v": s["sign_agreement"]["delta_0"]} for s in per_seed], ("v",)
    )
    shield_keys = ("return", "cost", "violation_rate", "intervention_rate")
    shield: dict[str, Any] = {
        "agent": "goal (thrust straight at the goal, rocks ignored)",
        "fallback": "nearest (the shield's default)",
        "goal_alone": goal_alone,
        "per_seed": shield_seeds,
        "aggregate": {},
    }
    for proto in starts:
        for variant in ("delta_0", "calibrated"):
            rows = [
                {
                    "return": s[f"{proto}/{variant}"]["mean_return"],
                    "cost": s[f"{proto}/{variant}"]["mean_cost"],
                    "violation_rate": s[f"{proto}/{variant}"]["violation_rate"],
                    "intervention_rate": s[f"{proto}/{variant}"]["intervention_rate"],
                }
                for s in shield_seeds
            ]
            shield["aggregate"][f"{proto}/{variant}"] = aggregate(rows, shield_keys)
    shield["aggregate"]["calibrated_delta"] = aggregate(
        [{"d": s["calibrated_delta"]} for s in shield_seeds if math.isfinite(s["calibrated_delta"])], ("d",)
    )
    out["shield"] = shield
    return out


def _report_episodes(run: Any) -> dict[str, Any]:
    return {"returns": run.returns, "costs": run.costs, "trajectories": run.trajectories}


def _numpy_paths(name: str, state: Any) -> dict[str, Any]:
    """NumPy batch forward of a BC or FQL policy (no NumPy path exists in the library for baselines)."""
    lat = _sibling("bench_latency")
    if name in ("bc", "bc_safe"):
        net = lat.numpy_mlp(state.model)
        squash = state.config.squash
        if squash == "tanh":
            return {"numpy": lambda o: np.tanh(net(np.asarray(o, np.float32)))}
        return {"numpy": lambda o: np.clip(net(np.asarray(o, np.float32)), -1.0, 1.0)}
    if name == "fql":
        net = lat.numpy_mlp(state.agent.actor)
        act_dim = state.agent.actor.layers[-1].out_features

        def fql_np(o: np.ndarray) -> np.ndarray:
            o = np.asarray(o, np.float32)
            z = np.zeros((o.shape[0], act_dim), np.float32)
            return np.clip(net(np.concatenate([o, z], axis=-1)), -1.0, 1.0)

        return {"numpy": fql_np}
    return {}


def run_baseline(name: str, args: Any, data: dict[str, np.ndarray], starts: dict, figs: dict) -> dict:
    """Train one baseline per seed, evaluate each from the fixed starts."""
    from safefql.training.baselines import default_baseline_config, train_baseline

    steps = args.baseline_steps if args.baseline_steps is not None else args.steps
    config = default_baseline_config(name)
    if steps is not None:  # record the number of updates that actually ran
        config = dataclasses.replace(config, num_updates=steps)
    per_seed = []
    out: dict[str, Any] = {"label": METHODS[name], "config": _clean(dataclasses.asdict(config))}
    noise = "fresh noise each step (seeded Generator)" if name == "fisor" else "deterministic (z = 0)"
    out["noise"] = noise if name in ("fisor", "fql") else "deterministic policy"
    for i in range(args.seeds):
        seed = args.seed + i
        state, policy, info = train_baseline(name, data, config, steps=steps, seed=seed)
        row: dict[str, Any] = {
            "seed": seed,
            "training": {
                k: info.get(k) for k in ("steps", "train_time_s", "updates_per_s", "num_transitions")
            },
        }
        row["training"] |= {k: v for k, v in info.items() if k.startswith("num_episodes")}
        for j, (proto, st) in enumerate(starts.items()):
            ep = rollout(policy, st, np.random.default_rng([seed, j]) if name == "fisor" else None)
            row[proto] = summarize(ep)
            if i == 0 and proto == "safe":
                figs.setdefault("trajectories", {})[METHODS[name]] = ep
        if i == 0:
            paths = {"jax": lambda o, p=policy: p(o, None if name != "fisor" else np.random.default_rng(0))}
            np_paths = _numpy_paths(name, state)
            probe = np.random.default_rng(0).uniform([-3, -2], [2, 2], (64, 2)).astype(np.float32)
            for key, fn in np_paths.items():  # the NumPy forward must reproduce the JAX policy
                diff = float(np.max(np.abs(fn(probe) - policy(probe, None))))
                if diff > 1e-4:
                    raise RuntimeError(f"{name}: NumPy forward differs from the JAX policy by {diff}")
                out["numpy_vs_jax_max_abs_diff"] = diff
                paths[key] = fn
            out["latency"] = measure_latency(paths, args.latency_calls, args.episode_repeats)
        per_seed.append(row)
    out["per_seed"] = per_seed
    out["aggregate"] = {proto: aggregate([s[proto] for s in per_seed]) for proto in starts}
    times = [float(s["training"]["train_time_s"]) for s in per_seed]
    ups = [float(s["training"]["updates_per_s"]) for s in per_seed]
    out["training"] = {
        "steps": per_seed[0]["training"]["steps"] if per_seed else None,
        "train_time_s": float(np.sum(times)),
        "train_time_s_per_seed_mean": float(np.mean(times)),
        "updates_per_s": float(np.mean(ups)),
        "note": "one run per seed; train_time_s is the total over seeds (compilation included)",
    }
    return out


# ------------------------------------------------------------------------------------------- figures
def plot_trajectories(trajs: dict[str, dict[str, Any]], oracle: Any, path: Path, k: int) -> Path:
    """Trajectories of each method from the same starts over the oracle's value map (red: hit a rock)."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from safefql._io import atomic_write_bytes

    names = [n for n in METHODS.values() if n in trajs] + [n for n in trajs if n not in METHODS.values()]
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(4.6 * cols, 3.9 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    im = None
    for ax, name in zip(axes, names, strict=False):
        ep = trajs[name]
        im = oracle.plot(ax)
        traj, costs = np.asarray(ep["trajectories"]), np.asarray(ep["costs"])
        n = min(k, traj.shape[0])
        for j in range(n):
            ax.plot(
                traj[j, :, 0],
                traj[j, :, 1],
                color="tab:red" if costs[j] > 0 else "black",
                lw=0.8,
                alpha=0.7,
                zorder=5,
            )
        ax.plot(traj[:n, 0, 0], traj[:n, 0, 1], "o", color="white", mec="black", ms=3, zorder=6)
        ax.set_title(
            f"{name}\nreturn {np.mean(ep['returns']):.0f}, violations {int(np.sum(costs > 0))}/{costs.size}",
            fontsize=9,
        )
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    if im is not None:
        fig.colorbar(im, ax=axes.tolist(), shrink=0.7, label="oracle HJ value (> 0: collision unavoidable)")
    shown = min(k, min(np.asarray(e["trajectories"]).shape[0] for e in trajs.values()))
    fig.suptitle(f"Boat, training seed 0: {shown} of the fixed oracle-safe starts (red: hit a rock)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write_bytes(path, buf.getvalue())


# ------------------------------------------------------------------------------------------- output
def _pm(agg: dict[str, Any], key: str, fmt: str = ".1f") -> str:
    if f"{key}_mean" not in agg:
        return "-"
    return f"{agg[f'{key}_mean']:{fmt}} ± {agg[f'{key}_std']:{fmt}}"


def print_tables(result: dict[str, Any]) -> None:
    """The results, the cost table, the shield table and the published numbers."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 130))
    methods = result["methods"]
    for proto, title in (
        ("safe", "oracle-safe starts (the protocol)"),
        ("uniform", "uniform starts over the box (some cannot avoid a rock)"),
    ):
        if proto not in result["starts"]:
            continue
        t = Table(
            title=f"Boat, policy mode, {result['config']['starts']} {title}; mean ± std over seeds",
            caption="published: SafeFQL paper, 5 seeds, a different start distribution and implementation",
        )
        for col in ("method", "seeds", "return", "episode cost", "violation rate", "published return / cost"):
            t.add_column(col, justify="left" if col == "method" else "right")
        for name, m in methods.items():
            if "aggregate" not in m:
                t.add_row(m.get("label", name), "-", "error", "", "", "")
                continue
            agg = m["aggregate"][proto]
            pub = PUBLISHED.get(PUBLISHED_FOR.get(name, ""), None)
            t.add_row(
                m["label"],
                str(agg["seeds"]),
                _pm(agg, "return"),
                _pm(agg, "cost", ".2f"),
                _pm(agg, "violation_rate", ".3f"),
                "-" if pub is None or proto != "safe" else f"{pub['return']:.0f} / {pub['cost']:g}",
            )
            shielded = m["aggregate"].get(f"{proto}/actor_shielded") if name == "safefql" else None
            if shielded:  # right under SafeFQL's own row
                t.add_row(
                    "SafeFQL (actor + its shield, calibrated delta)",
                    str(shielded["seeds"]),
                    _pm(shielded, "return"),
                    _pm(shielded, "cost", ".2f"),
                    _pm(shielded, "violation_rate", ".3f"),
                    "-",
                )
        console.print(t)
    t = Table(title="Cost of acting (batch 1, seed-0 model) and of training")
    cols = ("method", "latency us (path)", "400-step episode s", "train s (all seeds)", "updates/s", "steps")
    for col in cols:
        t.add_column(col, justify="left" if col == "method" else "right")
    for name, m in methods.items():
        lat, tr = m.get("latency", {}), m.get("training", {})
        t.add_row(
            m.get("label", name),
            f"{lat['latency_us']:,.1f} ({lat['best_path']})" if lat else "-",
            f"{lat['episode_400_s']:.3f}" if lat else "-",
            f"{tr['train_time_s']:.1f}" if tr.get("train_time_s") is not None else "-",
            f"{tr['updates_per_s']:.1f}" if tr.get("updates_per_s") is not None else "-",
            str(tr.get("steps", "-")),
        )
    console.print(t)
    shield = methods.get("safefql", {}).get("shield")
    if shield:
        t = Table(title="Goal-greedy agent under the SafeFQL shield (mean ± std over the SafeFQL seeds)")
        for col in ("starts", "run", "return", "episode cost", "violation rate", "interventions/step"):
            t.add_column(col, justify="left" if col in ("starts", "run") else "right")
        for proto in result["starts"]:
            alone = shield["goal_alone"].get(proto, {})
            t.add_row(
                proto,
                "goal agent alone",
                f"{alone.get('mean_return', float('nan')):.1f}",
                f"{alone.get('mean_cost', float('nan')):.2f}",
                f"{alone.get('violation_rate', float('nan')):.3f}",
                "-",
            )
            for variant, label in (("delta_0", "delta = 0"), ("calibrated", "calibrated delta")):
                agg = shield["aggregate"][f"{proto}/{variant}"]
                t.add_row(
                    proto,
                    f"goal + SafeFQL shield ({label})",
                    _pm(agg, "return"),
                    _pm(agg, "cost", ".2f"),
                    _pm(agg, "violation_rate", ".3f"),
                    _pm(agg, "intervention_rate", ".4f"),
                )
        console.print(t)
        d = shield["aggregate"].get("calibrated_delta", {})
        console.print(f"calibrated delta (offline, eps {result['config']['eps']}): {_pm(d, 'd', '.4f')}")
    t = Table(title="Published (SafeFQL paper; 5 seeds; their start distribution): raw return / episode cost")
    for col in ("method", "return", "episode cost", "400-step episode s"):
        t.add_column(col, justify="left" if col == "method" else "right")
    for name, p in PUBLISHED.items():
        t.add_row(name, f"{p['return']:.0f}", f"{p['cost']:g}", str(p.get("episode_s", "-")))
    console.print(t)


def _violating_fraction(episode_ids: np.ndarray, costs: np.ndarray) -> float:
    _, inverse = np.unique(episode_ids, return_inverse=True)
    return float(np.mean(np.bincount(inverse, weights=np.asarray(costs, dtype=np.float64)) > 0))


def ensure_dataset(dataset: str, episodes: int, progress: bool) -> tuple[Any, bool]:
    """Load the dataset; collect it first (boat default mixture, seed 0) when it does not exist."""
    from safefql.datasets.collect import collect, default_action_hold
    from safefql.datasets.load import load_transitions
    from safefql.envs import BOAT_ID

    hold = default_action_hold(BOAT_ID)
    try:
        t = load_transitions(dataset)
        if t.metadata.get("action_hold") == hold:
            return t, False
        held = t.metadata.get("action_hold", 1)
        print(f"{dataset} holds actions for {held} steps, not {hold}: collecting it again")
    except FileNotFoundError:
        pass
    collect(BOAT_ID, None, episodes, 0, dataset, progress=progress, overwrite=True)
    return load_transitions(dataset), True


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, evaluate, print, write JSON and figures; returns the result (``errors`` lists failures)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help=f"Minari dataset id ({DEFAULT_DATASET})")
    parser.add_argument("--collect-episodes", type=int, default=2500, help="episodes if it must be collected")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated subset of {list(METHODS)}"
    )
    parser.add_argument("--seeds", type=int, default=None, help="training seeds per method (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="first training seed (and the data split seed)")
    parser.add_argument("--steps", type=int, default=None, help="updates per method (default: each config's)")
    parser.add_argument(
        "--baseline-steps", type=int, default=None, help="updates per baseline (default: as --steps)"
    )
    parser.add_argument("--starts", type=int, default=None, help="evaluation starts (default 100)")
    parser.add_argument("--start-seed", type=int, default=START_SEED, help="seed of the start states")
    parser.add_argument("--no-uniform", action="store_true", help="skip the uniform-starts protocol")
    parser.add_argument("--eps", type=float, default=0.05, help="offline calibration level")
    parser.add_argument("--calib-fraction", type=float, default=0.1, help="episodes held out (all methods)")
    parser.add_argument("--latency-calls", type=int, default=None, help="timed batch-1 calls (default 1000)")
    parser.add_argument("--episode-repeats", type=int, default=1, help="batch-1 400-step episodes timed")
    parser.add_argument("--plot-episodes", type=int, default=30, help="trajectories drawn per panel")
    parser.add_argument(
        "--reuse-safefql",
        action="store_true",
        help="skip SafeFQL training when --out-runs holds a finished run with the same config and sizes",
    )
    parser.add_argument("--quick", action="store_true", help="2 seeds, 500 updates, 10 starts: a smoke run")
    parser.add_argument("--out-runs", type=Path, default=Path("runs/bench_boat"), help="run directories")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="boat.json and PNGs go here")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    args = parser.parse_args(argv)
    defaults = {"seeds": (2, 5), "steps": (500, None), "starts": (10, 100), "latency_calls": (50, 1000)}
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    for name in ("seeds", "starts", "latency_calls", "episode_repeats", "plot_episodes", "collect_episodes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("steps", "baseline_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0.0 < args.calib_fraction < 1.0:
        parser.error("--calib-fraction must lie in (0, 1) (calibration needs held-out episodes)")

    from rich.console import Console

    from safefql._io import atomic_write_text
    from safefql.datasets.load import split_episodes
    from safefql.envs import BOAT_ID, boat
    from safefql.envs.oracle import load_boat_oracle

    console = Console()
    t_start = time.perf_counter()
    transitions, collected = ensure_dataset(args.dataset, args.collect_episodes, args.progress)
    env_id = transitions.metadata.get("env_id")
    if env_id != BOAT_ID:
        raise SystemExit(f"dataset {args.dataset!r} is for env {env_id!r}; this benchmark needs {BOAT_ID}")
    oracle = load_boat_oracle()
    starts = {"safe": oracle.safe_starts(args.starts, seed=args.start_seed)}
    if not args.no_uniform:
        starts["uniform"] = np.random.default_rng(args.start_seed).uniform(
            boat.BOX_LOW, boat.BOX_HIGH, size=(args.starts, 2)
        )
    train_t, calib_t = split_episodes(transitions, args.calib_fraction, args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    figs: dict[str, Any] = {}
    result: dict[str, Any] = {
        "benchmark": "boat",
        "command": "uv run python benchmarks/bench_boat.py"
        + ("" if not (argv if argv is not None else sys.argv[1:]) else " ")
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "env_id": BOAT_ID,
        "config": {
            "dataset": args.dataset,
            "methods": methods,
            "seeds": args.seeds,
            "seed": args.seed,
            "steps": args.steps if args.steps is not None else "each config's num_updates",
            "baseline_steps": args.baseline_steps if args.baseline_steps is not None else "as steps",
            "starts": args.starts,
            "start_seed": args.start_seed,
            "eps": args.eps,
            "calib_fraction": args.calib_fraction,
            "latency_calls": args.latency_calls,
            "quick": args.quick,
            "out_runs": str(args.out_runs),
        },
        "dataset": {
            "id": args.dataset,
            "collected_now": collected,
            "episodes": int(np.unique(transitions.episode_ids).size),
            "transitions": int(transitions.observations.shape[0]),
            "train_episodes": int(np.unique(train_t.episode_ids).size),
            "calib_episodes": int(np.unique(calib_t.episode_ids).size),
            "violating_episode_fraction": _violating_fraction(transitions.episode_ids, transitions.costs),
        },
        "starts": {
            "safe": f"load_boat_oracle().safe_starts({args.starts}, seed={args.start_seed})",
            **(
                {}
                if args.no_uniform
                else {"uniform": f"default_rng({args.start_seed}).uniform(BOX_LOW, BOX_HIGH, (n, 2))"}
            ),
        },
        "protocol": "one 400-step episode per start; policy mode (each method's own actions); "
        "return = sum of -||p - goal|| over pre-step states, episode cost = steps inside a rock, "
        "violation = any cost; mean ± std over training seeds",
        "methods": {},
        "published": {
            "source": "SafeFQL paper (DESIGN.md section 6); different start distribution",
            **PUBLISHED,
        },
        "errors": {},
    }
    data = train_t.as_dict()
    for name in methods:
        console.rule(f"[bold]{METHODS[name]}")
        try:
            if name == "safefql":
                result["methods"][name] = run_safefql(args, transitions, starts, oracle, figs)
            else:
                result["methods"][name] = run_baseline(name, args, data, starts, figs)
        except Exception as e:  # noqa: BLE001 - one failing method must not lose the others' numbers
            console.print_exception()
            result["methods"][name] = {"label": METHODS[name], "error": repr(e)}
            result["errors"][name] = traceback.format_exc()
    if figs.get("trajectories"):
        figs["trajectories_png"] = plot_trajectories(
            figs["trajectories"], oracle, args.out_dir / "boat_trajectories.png", args.plot_episodes
        )
    result["figures"] = {
        k: str(v)
        for k, v in (
            ("trajectories", figs.get("trajectories_png")),
            ("value_maps", figs.get("value_maps")),
            ("training_curve", figs.get("training_curve")),
        )
        if v is not None
    }
    lat = _sibling("bench_latency")
    result["machine"] = lat.machine_info()
    result["total_wall_s"] = time.perf_counter() - t_start
    result["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    print_tables(result)
    out = args.out_dir / "boat.json"
    atomic_write_text(out, json.dumps(_clean(result), indent=1) + "\n")
    console.print(f"wrote {out}" + "".join(f", {p}" for p in result["figures"].values()))
    if result["errors"]:
        console.print(f"[bold red]methods that failed: {sorted(result['errors'])} (details in the JSON)")
    return result


if __name__ == "__main__":
    sys.exit(1 if main()["errors"] else 0)
