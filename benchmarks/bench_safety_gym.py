"""Safety-Gymnasium results (DESIGN.md section 7): SafeFQL, BC-all, BC-safe and FISOR-style on one
scripted-behaviour dataset per task, plus the SafeFQL shield around the reward-greedy goal_lidar agent.

Per task (``--envs``, default SafetyPointGoal1Gymnasium-v0 and SafetyCarGoal1Gymnasium-v0):

(a) **data**: ``safefql.datasets.collect`` rolls out the scripted mixture (``--mixture``, default
    ``DEFAULT_SAFETY_GYM_MIXTURE``: goal_lidar, noisy_goal_lidar, hazard_aware, noisy_hazard_aware,
    random; one policy per episode) for ``--episodes`` 1000-step episodes into a Minari dataset under
    ``$MINARI_DATASETS_PATH`` (default ``<work-dir>/minari``). Reported: size, collection time, episode
    cost distribution overall and per behaviour policy (mean episode cost, fraction of episodes with cost).
    ``--reuse-data`` keeps an existing dataset with the same id (the id encodes env, episodes and seed).
(b) **training**: SafeFQL via ``safefql.training.trainer.train`` with a CPU-sized config (``cpu_config``:
    2x256 critics, 2x256 GELU actor and flow, batch 256; alpha, w_safe, safety_margin from the
    Safety-Gym defaults unless ``--set key=value``), ``--seeds`` seeds in one vmapped program, 10% of the
    episodes held out (calibration). BC-all, BC-safe (zero-cost episodes only) and FISOR-style
    (``train_baseline``; configs in ``baseline_configs``: 2x256 critics, FISOR noise net width 64) on the
    same training episodes, one run per seed. Reported: updates/s and wall time of each.
(c) **evaluation**: every policy for ``--eval-episodes`` episodes per seed, the same seeded starts for all
    (``env.reset(seed=EVAL_SEED + i)``), SafeFQL as a policy (one-step actor, z = 0), FISOR with fresh noise
    per step. Normalised the DSRL way: ``r_norm = (R - R_min) / (R_max - R_min)`` with R_min / R_max the
    minimum / maximum episode return in the collected dataset (DSRL's ``min/max_episode_reward`` are
    dataset statistics too), and ``c_norm = C / cost_limit``. The cost limit is not stated in DESIGN.md;
    ``--cost-limit`` defaults to 25 (the usual Safety-Gymnasium episode cost limit for 1000-step tasks),
    and the JSON says so. The scripted behaviours are evaluated on the same starts as references.
    Targets: SafeFQL ``c_norm <= 1`` with ``r_norm >= `` BC-safe's.
(d) **shield**: the goal_lidar agent (steers at the goal, ignores hazards) alone vs wrapped in
    ``SafeFQLShield`` with seed 0's checkpoint (``--shield-seeds K``: each of the first K seeds'
    checkpoints, every number then the mean over them, with its std), for each fallback in
    ``--shield-fallbacks`` (default "safest" and "samples"; "nearest" and "actor" on request), at
    ``delta = 0`` and at the offline conformal ``delta`` (``calibrate(ckpt, "offline", eps=--eps)`` on the
    held-out episodes, each checkpoint its own) when finite, plus each fixed ``--shield-deltas`` value
    (a sweep of the trade-off between cost and interventions). Reported: episode-cost reduction (target
    >= 80% while the agent still acts), return change, intervention rate. ``--reuse-safefql`` evaluates a
    finished SafeFQL run of the same config, seeds and dataset again (``trainer.finished_run``) instead of
    training it again.

Variants (stored under ``"<env id> [<tag>]"`` with ``--tag``): ``--kappa K`` relabels the surrogate margin
in memory (``h = K if cost > 0 else -1``, for every method; the HJ critic's horizon shrinks with K: with
gamma 0.99 a state K-unsafe k steps ahead has a positive value while ``K 0.99^k > 1 - 0.99^k``, i.e. about
324 steps for K = 25 and 69 for K = 1); ``--switch-every N`` collects a prototype dataset whose behaviour
policy is re-drawn from the mixture every N steps inside each episode (``collect`` draws one per episode),
so that safe continuations exist from the states the reward-greedy policies visit; ``--action-hold K``
collects with every behaviour decision held for K steps (``collect(action_hold=K)``, as the boat data), so
that critics trained with ``--set action_repeat=K`` see K-step held-action transitions.
``--margin hazard_distance`` collects with ``h`` = minus the signed distance to the hazard disks (exact on the
Goal1 tasks, where the hazards are the only constrained objects; dataset id suffix ``-hd``) instead of the
binary-cost surrogate, so that the safety critic sees how near a hazard each state is.

``--extend``: add baselines to a stored entry instead of running SafeFQL again. ``--methods`` then lists
baselines only; the entry (``"<env id> [<tag>]"`` in ``--out``) must have been made with the same data
settings, split and evaluation protocol, and the dataset must hold the same episodes (``same_dataset``).
The new training and evaluation rows (and the ``--references`` rows) join the entry, its policy targets are
recomputed, and the command is appended to the entry's ``extensions`` (the shield is not rerun).

Prints rich tables and writes ``benchmarks/results/safety_gym.json`` (atomic; results of each env are merged
into an existing file, so tasks can be run one at a time) with every number, the sizes, the command and the
machine (including its load average: the numbers depend on what else runs)::

    OPENBLAS_NUM_THREADS=1 uv run python benchmarks/bench_safety_gym.py --envs point --episodes 150 \\
        --steps 15000 --seeds 1 --eval-episodes 20
    uv run python benchmarks/bench_safety_gym.py --quick      # tiny everything, a smoke run (~1-2 min)

``--quick``: 3 dataset episodes (``collect`` has no episode cap, so 3000 steps), 200 updates of 64-wide
networks, 1 seed, 2 evaluation episodes capped at 200 steps. Numbers from it mean nothing. If none of its
training episodes stays out of the failure set, SafeFQL's episode sets fall back to "all" (noted in the
JSON) and BC-safe is skipped, so the smoke run still finishes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "safety_gym.json"
DEFAULT_WORK = Path("/tmp/safefql-bench-safety-gym")
ENV_ALIASES = {
    "point": "SafetyPointGoal1Gymnasium-v0",
    "car": "SafetyCarGoal1Gymnasium-v0",
}
DEFAULT_ENVS = "point,car"
EVAL_SEED = 10_000  # first reset seed of the evaluation episodes (the collection uses other seeds)
DEFAULT_COST_LIMIT = 25.0
COST_LIMIT_NOTE = (
    "DESIGN.md section 7 records cost_limit but states no value for Safety-Gymnasium; 25 is used: the usual "
    "episode cost limit of the 1000-step Safety-Gymnasium navigation tasks (Safety-Gymnasium / OmniSafe "
    "default), taken here per the benchmark brief as OSRL/DSRL's default (not checked against their code). "
    "DSRL's formula is c_norm = (C + e) / (cost_limit + e) with e = 1 only when cost_limit = 0, i.e. C / "
    "cost_limit here. Change it with --cost-limit."
)
METHODS = {
    "safefql": "SafeFQL (policy)",
    "bc": "BC-all",
    "bc_safe": "BC-safe",
    "fisor": "FISOR-style",
}
REFERENCE_POLICIES = ("goal_lidar", "hazard_aware", "random")


# ------------------------------------------------------------------------------------------- configs
def cpu_config(env_id: str, overrides: dict[str, Any], quick: bool) -> Any:
    """SafeFQL config sized for a 2-core CPU; alpha / w_safe / safety_margin as in default_config."""
    from safefql.training.config import default_config

    base = default_config(env_id)
    cfg = base.replace(
        critic_hidden=(256, 256),
        value_hidden=(256, 256),
        actor_hidden=(256, 256),
        flow_hidden=(256, 256),
        batch_size=256,
        steps_per_call=500,
    )
    if quick:
        cfg = cfg.replace(
            critic_hidden=(64, 64),
            value_hidden=(64, 64),
            actor_hidden=(64, 64),
            flow_hidden=(64, 64),
            batch_size=64,
            flow_steps=5,
            steps_per_call=100,
        )
    return cfg.replace(**overrides) if overrides else cfg


def baseline_configs(quick: bool) -> dict[str, Any]:
    """CPU-sized baseline configs (critics as SafeFQL's; FISOR's noise net at its CPU default width)."""
    from safefql.training.baselines import BCConfig, FisorConfig

    width = (64, 64) if quick else (256, 256)
    spc = 100 if quick else 500
    bs = 64 if quick else 256
    bc = BCConfig(hidden=width, batch_size=bs, steps_per_call=spc)
    fisor = FisorConfig(
        critic_hidden=width,
        value_hidden=width,
        noise_width=32 if quick else 64,
        batch_size=bs,
        steps_per_call=spc,
    )
    return {"bc": bc, "bc_safe": bc, "fisor": fisor}


# A shield run counts as filtering the agent only while the agent's own action is applied on at least 10%
# of the steps. Near an intervention rate of 1 every action is the fallback's (on CarGoal1 delta = 2 gave
# 0.99995: one of the agent's actions in 20,000 steps), so the run measures the SafeFQL policy instead.
MAX_INTERVENTION_RATE = 0.9


def shield_cost_target(shield: dict[str, Any], variants: list[str]) -> dict[str, Any]:
    """The >= 80% cost-reduction target over the shield runs ``variants`` (keys of ``shield``); a run
    counts only at an intervention rate <= ``MAX_INTERVENTION_RATE`` (the agent still acts)."""
    out: dict[str, Any] = {}
    met = []
    for v in variants:
        reduction, rate = shield[v]["cost_reduction"], shield[v]["intervention_rate"]
        out[f"value_{v}"], out[f"interventions_{v}"] = reduction, rate
        if math.isfinite(reduction) and reduction >= 0.8 and rate <= MAX_INTERVENTION_RATE:
            met.append(v)
    rule = f"reduction >= 0.8 with intervention rate <= {MAX_INTERVENTION_RATE:g}"
    return out | {"met_by": met, "met": bool(met), "rule": rule}


SHIELD_AGG_KEYS = (
    "return",
    "cost",
    "r_norm",
    "c_norm",
    "violation_rate",
    "over_limit_rate",
    "intervention_rate",
    "cost_reduction",
    "return_change",
    "delta",
)


def aggregate_shield_runs(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """One shield run over several seeds' checkpoints: the mean over seeds of each summary number (so the
    run reads like a one-seed run), its ``_std`` (ddof 1), ``seeds`` and the seeds' own summaries. A single
    seed's summary is returned as it is."""
    if len(per_seed) == 1:
        return per_seed[0]
    out = {
        k: v for k, v in per_seed[0].items() if not isinstance(v, int | float | list) or isinstance(v, bool)
    }
    out |= aggregate(per_seed, SHIELD_AGG_KEYS)
    out["episodes"] = sum(int(s["episodes"]) for s in per_seed)
    out["per_seed"] = per_seed
    return out


# ------------------------------------------------------------------------------------------- helpers
def _clean(o: Any) -> Any:
    """Strict-JSON copy: NumPy to Python, tuples to lists, non-finite floats to strings."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean(v) for v in o]
    if isinstance(o, np.ndarray):
        return _clean(o.tolist())
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, Path):
        return str(o)
    return o


def _make_env(env_id: str, **kwargs: Any) -> Any:
    import gymnasium as gym

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Box(-inf, inf) checker notes, robotics notice
        return gym.make(env_id, **kwargs)


def run_episodes(
    make_env: Callable[[], Any],
    act: Callable[[np.ndarray], Any] | None,
    episodes: int,
    seed: int,
    max_steps: int | None,
) -> dict[str, Any]:
    """Roll ``act`` (None: policy-mode shield, the env picks) for ``episodes`` episodes, resets seeded
    ``seed + i``. Per-episode returns, costs (sum of step costs), steps, shield interventions, cost onsets
    (steps with cost after a step without: how often the agent enters a hazard); wall time."""
    env = make_env()
    rets, costs, steps, interv, onsets = [], [], [], [], []
    t0 = time.perf_counter()
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            r = c = 0.0
            n = k = entered = 0
            was_costly = False
            while True:
                obs, rew, term, trunc, info = env.step(None if act is None else act(obs))
                r += float(rew)
                c += float(info["cost"])
                n += 1
                costly = float(info["cost"]) > 0
                entered += int(costly and not was_costly)
                was_costly = costly
                sh = info.get("shield")
                k += int(bool(sh["intervened"])) if sh is not None else 0
                if term or trunc or (max_steps is not None and n >= max_steps):
                    break
            rets.append(r)
            costs.append(c)
            steps.append(n)
            interv.append(k)
            onsets.append(entered)
    finally:
        env.close()
    wall = time.perf_counter() - t0
    return {
        "returns": np.asarray(rets),
        "costs": np.asarray(costs),
        "steps": np.asarray(steps),
        "interventions": np.asarray(interv),
        "cost_onsets": np.asarray(onsets),
        "wall_s": wall,
    }


def summarize(ep: dict[str, Any], r_min: float, r_max: float, cost_limit: float) -> dict[str, Any]:
    """Means over episodes, normalised, plus the per-episode lists."""
    ret, cost = ep["returns"], ep["costs"]
    steps = int(ep["steps"].sum())
    return {
        "return": float(ret.mean()),
        "cost": float(cost.mean()),
        "r_norm": float((ret.mean() - r_min) / (r_max - r_min)),
        "c_norm": float(cost.mean() / cost_limit),
        "violation_rate": float(np.mean(cost > 0)),
        "over_limit_rate": float(np.mean(cost > cost_limit)),
        "intervention_rate": float(ep["interventions"].sum() / max(steps, 1)),
        # cost = onsets x steps per stay: few entries with long stays means the agent idles in hazards
        "cost_onsets": float(ep["cost_onsets"].mean()),
        "cost_steps_per_onset": float(cost.sum() / max(ep["cost_onsets"].sum(), 1)),
        "steps_per_s": float(steps / ep["wall_s"]) if ep["wall_s"] > 0 else math.nan,
        "episodes": int(ret.size),
        "returns": ret.tolist(),
        "costs": cost.tolist(),
    }


AGG_KEYS = ("return", "cost", "r_norm", "c_norm", "violation_rate", "over_limit_rate")


def aggregate(per_seed: list[dict[str, Any]], keys: tuple[str, ...] = AGG_KEYS) -> dict[str, float]:
    """Mean over seeds, and the std over seeds (ddof 1) when there are several."""
    out: dict[str, float] = {}
    for k in keys:
        vals = np.array([float(s[k]) for s in per_seed])
        out[k] = float(vals.mean())
        out[f"{k}_std"] = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
    out["seeds"] = len(per_seed)
    return out


def episode_table(t: Any) -> dict[str, np.ndarray]:
    """Per-episode return and cost from loaded transitions. The cost is ``sum_t cost(s_t)`` over
    ``t = 0..T-1`` (the start state in, the final state out), within 1 of the env's episode cost."""
    _, inv = np.unique(t.episode_ids, return_inverse=True)
    n = int(inv.max()) + 1
    ret = np.zeros(n)
    np.add.at(ret, inv, t.rewards.astype(np.float64))
    cost = np.zeros(n)
    np.add.at(cost, inv, t.costs.astype(np.float64))
    return {"returns": ret, "costs": cost, "lengths": np.bincount(inv)}


def relabel_kappa(t: Any, kappa: float) -> Any:
    """The same transitions with the surrogate margin ``h = kappa if cost > 0 else -1`` (in memory).

    ``future_worst_h`` is relabelled the same way (the map is monotone, so the max commutes with it)."""
    from safefql.datasets.load import ARRAY_KEYS, Transitions

    arrays = {k: getattr(t, k) for k in ARRAY_KEYS}
    arrays["h"] = np.where(t.h > 0, kappa, -1.0).astype(np.float32)
    arrays["future_worst_h"] = np.where(t.future_worst_h > 0, kappa, -1.0).astype(np.float32)
    meta = dict(t.metadata)
    meta["kappa_relabelled"] = {"from": meta.get("kappa"), "to": float(kappa)}
    meta["kappa"] = float(kappa)
    return Transitions(**arrays, metadata=meta)


def machine_info() -> dict[str, Any]:
    import jax

    import safefql

    info = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "safefql": safefql.__version__,
        "niceness": os.nice(0) if hasattr(os, "nice") else None,
        "blas_threads_env": {
            k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
        },
    }
    try:
        import mujoco

        info["mujoco"] = mujoco.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


def load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def collect_switching(
    env_id: str,
    mixture: str,
    episodes: int,
    seed: int,
    dataset_id: str,
    switch_every: int,
    progress: bool,
    margin: str = "surrogate",
) -> dict[str, Any]:
    """A prototype collection in which the behaviour policy is re-drawn from the mixture every
    ``switch_every`` steps inside each episode (``collect`` draws one policy per episode), written with
    ``collect.write_minari_dataset``; ``h`` is the env's ``margin`` (``gym.make(env_id, margin=...)``).
    Returns timings and per-policy step statistics."""
    from safefql.datasets.collect import (
        SAFETY_GYM_H_SOURCES,
        EpisodeRecord,
        available_policies,
        write_minari_dataset,
    )
    from safefql.datasets.policies import as_mixture
    from safefql.datasets.policies_safety_gym import make_safety_gym_policy
    from safefql.envs.safety_gym import SAFETY_GYM_KAPPA

    mix = as_mixture(mixture, available_policies(env_id))
    env = _make_env(env_id, margin=margin)
    pols = [make_safety_gym_policy(n, env) for n in mix.names]
    rng = np.random.default_rng([seed, 21])
    weights = np.asarray(mix.weights)
    steps_by = np.zeros(len(pols), dtype=np.int64)
    cost_by = np.zeros(len(pols))
    space = env.action_space

    def episodes_gen() -> Any:
        for _ in range(episodes):
            obs, info = env.reset(seed=int(rng.integers(0, 2**31 - 1)))
            ob, ac, rw, te, tr, co, hh = [obs], [], [], [], [], [float(info["cost"])], [float(info["h"])]
            k = 0
            while True:
                if len(rw) % switch_every == 0:
                    k = int(rng.choice(len(pols), p=weights))
                a = np.clip(pols[k](np.asarray(obs, np.float64), rng), -1.0, 1.0).astype(space.dtype)
                obs, r, term, trunc, info = env.step(a)
                ob.append(obs)
                ac.append(a)
                rw.append(float(r))
                te.append(bool(term))
                tr.append(bool(trunc))
                co.append(float(info["cost"]))
                hh.append(float(info["h"]))
                steps_by[k] += 1
                cost_by[k] += float(info["cost"])
                if term or trunc:
                    break
            yield EpisodeRecord(
                observations=np.asarray(ob),
                actions=np.asarray(ac),
                rewards=np.asarray(rw),
                terminations=np.asarray(te),
                truncations=np.asarray(tr),
                cost=np.asarray(co),
                h=np.asarray(hh),
                policy=f"switching every {switch_every}",
            )

    t0 = time.perf_counter()
    try:
        written = write_minari_dataset(
            dataset_id,
            episodes_gen(),
            env_id=env_id,
            observation_space=env.observation_space,
            action_space=space,
            metadata={
                "behavior_policies": mix.to_dict(),
                "mixture": str(mix),
                "policy_selection": f"re-drawn from the mixture every {switch_every} steps (prototype)",
                "seed": seed,
                "margin": margin,
                "h_source": SAFETY_GYM_H_SOURCES[margin],
                # gym.make's default surrogate; the distance margin has no kappa
                "kappa": SAFETY_GYM_KAPPA if margin == "surrogate" else None,
            },
            overwrite=True,
            total=episodes,
            progress=progress,
        )
    finally:
        env.close()
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "produce_seconds": written.produce_seconds,
        "write_seconds": written.seconds - written.produce_seconds,
        "steps_per_s": int(steps_by.sum()) / max(written.produce_seconds, 1e-9),
        "switch_every": switch_every,
        "per_policy_steps": {
            n: {"steps": int(steps_by[i]), "step_cost_rate": float(cost_by[i] / max(steps_by[i], 1))}
            for i, n in enumerate(mix.names)
        },
    }


def check_reused_mixture(dataset_id: str, meta: dict[str, Any], mixture: str, env_id: str) -> None:
    """Refuse to reuse a dataset collected from another behaviour mixture (its id does not name it)."""
    from safefql.datasets.collect import available_policies
    from safefql.datasets.policies import as_mixture

    stored = meta.get("mixture")
    wanted = str(as_mixture(mixture, available_policies(env_id)))
    if stored is not None and str(stored) != wanted:
        raise ValueError(
            f"--reuse-data: dataset {dataset_id} was collected with mixture {stored!r}, not {wanted!r}; "
            "use another MINARI_DATASETS_PATH or drop --reuse-data"
        )


# ------------------------------------------------------------------------------------------- stages
def stage_data(env_id: str, args: Any, console: Any) -> tuple[Any, dict[str, Any]]:
    """Collect (or reuse) the dataset; returns the transitions and the data report."""
    from safefql.datasets.collect import collect, dataset_path
    from safefql.datasets.load import load_transitions
    from safefql.datasets.policies_safety_gym import DEFAULT_SAFETY_GYM_MIXTURE

    mixture = args.mixture or DEFAULT_SAFETY_GYM_MIXTURE
    name = env_id.replace("Gymnasium-v0", "").replace("Safety", "")
    switch = f"-sw{args.switch_every}" if args.switch_every else ""
    hold = f"-hold{args.action_hold}" if args.action_hold > 1 else ""
    hazard = "-hd" if args.margin == "hazard_distance" else ""
    dataset_id = f"bench/{name}-mix{args.episodes}{switch}{hold}{hazard}-s{args.data_seed}-v0"
    report: dict[str, Any] = {
        "dataset_id": dataset_id,
        "mixture": mixture,
        "episodes": args.episodes,
        "action_hold": args.action_hold,
        "margin": args.margin,
    }
    reused = args.reuse_data and dataset_path(dataset_id).exists()
    if reused:
        console.print(f"[dim]reusing dataset {dataset_id} at {dataset_path(dataset_id)}[/dim]")
    elif args.switch_every:
        report["collection"] = collect_switching(
            env_id,
            mixture,
            args.episodes,
            args.data_seed,
            dataset_id,
            args.switch_every,
            args.progress,
            margin=args.margin,
        )
        console.print(f"[dim]collected {dataset_id}: {json.dumps(report['collection'])}[/dim]")
    else:
        summary = collect(
            env_id,
            mixture,
            args.episodes,
            args.data_seed,
            dataset_id,
            overwrite=True,
            progress=args.progress,
            action_hold=args.action_hold,
            margin=args.margin,
        )
        console.print(summary.table())
        report["collection"] = {
            "seconds": summary.seconds,
            "produce_seconds": summary.produce_seconds,
            "write_seconds": summary.write_seconds,
            "steps_per_s": summary.transitions / max(summary.produce_seconds, 1e-9),
        }
    t0 = time.perf_counter()
    transitions = load_transitions(dataset_id)
    report["load_seconds"] = time.perf_counter() - t0
    meta = transitions.metadata
    if reused:
        check_reused_mixture(dataset_id, meta, mixture, env_id)
    report["reused"] = bool(reused)
    report["path"] = str(dataset_path(dataset_id))
    if reused and "collection" not in report:
        report["collection"] = {"seconds": None, "note": "reused an existing dataset (--reuse-data)"}
    ep = episode_table(transitions)
    returns = ep["returns"]
    report |= {
        "transitions": len(transitions),
        "num_episodes": int(returns.size),
        "obs_dim": transitions.obs_dim,
        "act_dim": transitions.act_dim,
        "kappa": meta.get("kappa"),
        "h_source": meta.get("h_source"),
        "hdf5_bytes": int(sum(p.stat().st_size for p in Path(report["path"]).rglob("*") if p.is_file())),
        "episode_return": {
            "min": float(returns.min()),
            "max": float(returns.max()),
            "mean": float(returns.mean()),
            "median": float(np.median(returns)),
        },
        "episode_cost": {
            "mean": float(meta.get("mean_cost", np.nan)),
            "note": "mean and fraction_with_cost from the collector (env episode cost; any cost, start "
            "state included); median / max / over-limit / zero-cost from sum_t cost(s_t), t < T",
            "median": float(np.median(ep["costs"])),
            "max": float(ep["costs"].max()),
            "fraction_with_cost": float(meta.get("violating_fraction", np.nan)),
            "fraction_over_cost_limit": float(np.mean(ep["costs"] > args.cost_limit)),
            "zero_cost_episodes": int(np.sum(ep["costs"] == 0)),
        },
        "per_policy": meta.get("per_policy", {}),
        "step_cost_rate": float(np.mean(transitions.costs > 0)),
    }
    return transitions, report


def quick_episode_sets(config: Any, train_t: Any) -> tuple[Any, str | None]:
    """``--quick`` only: a few-episode dataset may have no episode that stays out of the failure set, and
    then ``flow_episodes`` / ``reward_episodes`` other than "all" have nothing to learn from. The smoke run
    falls back to "all" for those fields and says so, instead of stopping (a full run keeps the error)."""
    from safefql.training.config import EPISODE_WEIGHTS
    from safefql.training.trainer import unsafe_episode_ids

    chosen = {name: getattr(config, name) for name in EPISODE_WEIGHTS if getattr(config, name) != "all"}
    if not chosen:
        return config, None
    if np.unique(train_t.episode_ids).size > unsafe_episode_ids(train_t).size:
        return config, None
    fields = ", ".join(f"{k}={v!r}" for k, v in chosen.items())
    note = f"--quick: every training episode enters the failure set, so {fields} fell back to 'all'"
    return config.replace(**dict.fromkeys(chosen, "all")), note


def stage_safefql(
    env_id: str, args: Any, transitions: Any, train_t: Any, run_dir: Path
) -> tuple[dict[str, Any], list]:
    from safefql.training.trainer import TRAIN_STATE_FILE, finished_run, train

    config = cpu_config(env_id, args.overrides, args.quick)
    note = None
    if args.quick:
        config, note = quick_episode_sets(config, train_t)
        if note:
            print(note)
    # --resume-safefql: continue a shorter run of this config (resume is exact: the same weights as a
    # run trained from scratch to --steps); a run already at --steps is reused as with --reuse-safefql
    reuse = args.reuse_safefql
    resume = args.resume_safefql and (run_dir / TRAIN_STATE_FILE).is_file()
    if resume and finished_run(
        run_dir,
        config,
        steps=args.steps,
        seeds=args.seeds,
        seed=args.seed,
        dataset_id=(transitions.metadata or {}).get("dataset_id"),
        calib_fraction=args.calib_fraction,
    ):
        resume, reuse = False, True
    res = train(
        transitions,
        out_dir=run_dir,
        config=config,
        steps=args.steps,
        seed=args.seed,
        seeds=args.seeds,
        calib_fraction=args.calib_fraction,
        eval_episodes=0,
        overwrite=not resume,
        resume=resume,
        reuse=reuse,  # evaluate a finished run again (new shield runs) without retraining it
        progress=args.progress,
    )
    if resume:
        print(f"resumed the SafeFQL run in {run_dir} to {res.steps} updates (--resume-safefql)")
    if res.reused:
        print(f"reusing the finished SafeFQL run in {run_dir} (--reuse-safefql)")
    train_report = {
        "reused": res.reused,  # times below are then those of the run that trained it
        "config": config.to_dict(),
        "steps": res.steps,
        "num_seeds": res.num_seeds,
        "wall_time_s": res.wall_time_s,
        "compile_time_s": res.compile_time_s,
        "updates_per_s": res.updates_per_s,
        "note": f"trainer.train, one vmapped program for all {res.num_seeds} seed(s): each update updates "
        "every seed and times are totals; updates_per_s excludes compilation",
        "final_losses": res.final_losses,
        "run_dir": str(res.run_dir),
        "policy_paths": [str(p) for p in res.policy_paths],
    }
    if note:
        train_report["note_quick"] = note
    return train_report, list(res.policy_paths)


def stage_baseline(
    name: str, args: Any, train_t: Any, config: Any, normalize_observations: bool
) -> tuple[dict[str, Any], list]:
    """Train baseline ``name`` once per seed; ``normalize_observations`` follows SafeFQL's config (a fair
    comparison: every method then sees the same standardised inputs)."""
    from safefql.training.baselines import train_baseline

    policies, runs = [], []
    for i in range(args.seeds):
        seed = args.seed + i
        t0 = time.perf_counter()
        _, policy, info = train_baseline(
            name,
            train_t,
            config,
            steps=args.baseline_steps,
            seed=seed,
            normalize_observations=normalize_observations,
        )
        runs.append(
            {
                "seed": seed,
                "wall_time_s": time.perf_counter() - t0,
                **{
                    k: info.get(k)
                    for k in ("train_time_s", "updates_per_s", "num_transitions", "steps")
                    if k in info
                },
                **{k: v for k, v in info.items() if k.startswith("num_episodes")},
            }
        )
        policies.append(policy)
    report = {
        "config": _clean(dataclasses.asdict(config)),
        "normalize_observations": bool(normalize_observations),
        "steps": args.baseline_steps,
        "per_seed": runs,
        "wall_time_s": float(sum(r["wall_time_s"] for r in runs)),
        "updates_per_s": float(np.mean([r["updates_per_s"] for r in runs])),
        "note": "train_baseline, one run per seed; updates_per_s measured after the first chunk (compile)",
    }
    return report, policies


def policy_targets(evals: dict[str, Any]) -> dict[str, Any]:
    """SafeFQL's policy-mode targets from the evaluation rows: c_norm <= 1, r_norm >= BC-safe's."""
    sf = evals.get("safefql", {}).get("aggregate")
    bs = evals.get("bc_safe", {}).get("aggregate")
    targets: dict[str, Any] = {}
    if sf is not None:
        targets["safefql_c_norm_le_1"] = {"value": sf["c_norm"], "met": bool(sf["c_norm"] <= 1.0)}
        if bs is not None:
            targets["safefql_r_norm_ge_bc_safe"] = {
                "value": sf["r_norm"],
                "bc_safe": bs["r_norm"],
                "gap": sf["r_norm"] - bs["r_norm"],
                "met": bool(sf["r_norm"] >= bs["r_norm"]),
            }
    return targets


# settings an --extend run must share with the entry it extends: the data, the split and the evaluation
EXTEND_SETTINGS = (
    "episodes",
    "data_seed",
    "mixture",
    "margin",
    "kappa",
    "switch_every",
    "action_hold",
    "quick",
    "seed",
    "seeds",
    "baseline_steps",
    "calib_fraction",
    "eval_episodes",
    "eval_max_steps",
    "cost_limit",
)
# what a setting meant in entries stored before the bench recorded it
SETTING_DEFAULTS = {"margin": "surrogate", "action_hold": 1, "switch_every": 0}


def extension_mismatches(entry: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """The ``EXTEND_SETTINGS`` on which an --extend run differs from the stored entry (empty: compatible)."""
    stored = entry.get("settings") or {}
    wrong = []
    for k in EXTEND_SETTINGS:
        if k == "baseline_steps" and k not in stored:  # older entries: the baselines ran --steps updates
            was = stored.get("steps")
        else:
            was = stored.get(k, SETTING_DEFAULTS.get(k))
        if was != settings.get(k):
            wrong.append(f"{k}: stored {was!r}, now {settings.get(k)!r}")
    return wrong


def extension_standardise(entry: dict[str, Any]) -> bool:
    """Whether an --extend run's baselines get standardised inputs: as the stored baselines did (they must
    agree), else as the stored SafeFQL config says (older entries without the flag: raw inputs)."""
    training = entry.get("training") or {}
    flags = {
        bool(t.get("normalize_observations"))
        for name, t in training.items()
        if name != "safefql" and isinstance(t, dict) and "skipped" not in t
    }
    if len(flags) > 1:
        raise ValueError(
            "--extend: the stored baselines saw differently scaled inputs; extend a consistent entry"
        )
    if flags:
        return flags.pop()
    return bool(((training.get("safefql") or {}).get("config") or {}).get("normalize_observations", False))


def merge_extension(entry: dict[str, Any], new: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """``entry`` with the baselines of an --extend run ``new`` added (a copy; ``entry`` is not changed).

    Training and evaluation rows of the new methods join (a method already there is replaced), the policy
    targets are recomputed from the merged rows, the shield's stay; ``record`` (command, machine, time,
    timings of the extension) is appended to ``extensions``.
    """
    merged = json.loads(json.dumps(_clean(entry)))
    skipped = {k: v for k, v in new["training"].items() if "skipped" in v}
    trained = {k: v for k, v in new["training"].items() if k not in skipped}
    merged["training"] = {**merged.get("training", {}), **trained}
    merged["evaluation"]["methods"] = {**merged["evaluation"]["methods"], **new["evaluation"]["methods"]}
    new_refs = new["evaluation"].get("references") or {}
    merged["evaluation"]["references"] = {**merged["evaluation"].get("references", {}), **new_refs}
    shield_targets = {k: v for k, v in merged.get("targets", {}).items() if k.startswith("shield")}
    merged["targets"] = policy_targets(merged["evaluation"]["methods"]) | shield_targets
    merged.setdefault("timings", {}).update(
        {k: v for k, v in new.get("timings", {}).items() if k.startswith("train_")}
    )
    added = list(trained) + [f"scripted {n}" for n in new_refs]
    extra = {"skipped": {k: v["skipped"] for k, v in skipped.items()}} if skipped else {}
    merged.setdefault("extensions", []).append({"methods": added, **extra, **record})
    return merged


# ------------------------------------------------------------------------------------------- env run
def run_env(env_id: str, args: Any, console: Any) -> dict[str, Any]:
    from rich.table import Table

    from safefql.datasets.load import split_episodes
    from safefql.datasets.policies_safety_gym import make_safety_gym_policy
    from safefql.shields.wrapper import SafeFQLShield
    from safefql.training.calibration import calibrate
    from safefql.training.policy import SafeFQLPolicy

    extend = getattr(args, "extend_entry", None)  # --extend: the stored entry the baselines join
    t_env = time.perf_counter()
    timings: dict[str, float] = {}
    out: dict[str, Any] = {"env_id": env_id, "load_avg_start": load_avg()}
    console.rule(f"[bold]{env_id}")

    # (a) data
    t0 = time.perf_counter()
    transitions, data = stage_data(env_id, args, console)
    if args.kappa is not None and args.kappa != data["kappa"]:
        transitions = relabel_kappa(transitions, args.kappa)
        data["kappa_relabelled"] = {"from": data["kappa"], "to": args.kappa, "how": "in memory, every method"}
    timings["data_s"] = time.perf_counter() - t0
    out["data"] = data
    r_min, r_max = data["episode_return"]["min"], data["episode_return"]["max"]
    out["normalization"] = {
        "r_min": r_min,
        "r_max": r_max,
        "r_source": f"min / max episode return over the {data['num_episodes']} episodes of the collected "
        f"dataset {data['dataset_id']} (DSRL's min/max_episode_reward are likewise dataset statistics)",
        "cost_limit": args.cost_limit,
        "cost_limit_source": COST_LIMIT_NOTE
        if args.cost_limit == DEFAULT_COST_LIMIT
        else f"--cost-limit {args.cost_limit} (user-given)",
    }
    pp = Table(title=f"{env_id}: dataset episode cost per behaviour policy (cost limit {args.cost_limit:g})")
    for col in ("policy", "episodes", "mean return", "mean episode cost", "frac. episodes with cost"):
        pp.add_column(col, justify="right" if col != "policy" else "left")
    for pname, s in sorted(data["per_policy"].items()):
        pp.add_row(
            pname,
            str(int(s["episodes"])),
            f"{s['mean_return']:.2f}",
            f"{s['mean_cost']:.2f}",
            f"{s['violating_fraction']:.2f}",
        )
    ec = data["episode_cost"]
    pp.caption = (
        f"{data['transitions']} transitions, {data['num_episodes']} episodes; returns in [{r_min:.2f}, "
        f"{r_max:.2f}]; {ec['zero_cost_episodes']} zero-cost episodes; "
        f"{ec['fraction_over_cost_limit']:.2f} of episodes over the cost limit"
    )
    console.print(pp)

    # same training episodes for every method: the trainer's calibration split is held out everywhere
    train_t, calib_t = split_episodes(transitions, args.calib_fraction, args.seed)
    out["split"] = {
        "calib_fraction": args.calib_fraction,
        "seed": args.seed,
        "train_episodes": train_t.num_episodes,
        "train_transitions": len(train_t),
        "calib_episodes": calib_t.num_episodes,
    }
    if extend is not None:
        if not same_dataset(extend.get("data") or {}, data):
            raise ValueError(
                f"--extend: dataset {data['dataset_id']} does not hold the episodes the stored entry was "
                "trained on (transitions or episode return / cost statistics differ)"
            )
        if extend.get("split") != out["split"]:
            raise ValueError(f"--extend: split {out['split']} differs from the stored {extend.get('split')}")

    # (b) training
    work = Path(args.work_dir) / (env_id if not args.tag else f"{env_id}-{args.tag}")
    policies: dict[str, list[Callable[[int], Callable[[np.ndarray], Any]]]] = {}
    training: dict[str, Any] = {}
    if extend is None:
        t0 = time.perf_counter()
        tr, paths = stage_safefql(env_id, args, transitions, train_t, work / "safefql")
        timings["train_safefql_s"] = time.perf_counter() - t0
        training["safefql"] = tr
        speed = f"{tr['wall_time_s']:.0f} s, {tr['updates_per_s']:.1f} upd/s"
        console.print(f"[dim]trained SafeFQL: {speed}[/dim]")

        def safefql_factory(path: Path) -> Callable[[int], Callable[[np.ndarray], Any]]:
            fast = SafeFQLPolicy.load(path).numpy()
            return lambda _seed: fast.act

        policies["safefql"] = [safefql_factory(p) for p in paths]
        standardise = bool(tr["config"]["normalize_observations"])  # the baselines see what SafeFQL sees
    else:
        standardise = extension_standardise(extend)  # what the stored baselines saw
    bcfgs = baseline_configs(args.quick)
    for name in args.methods:
        if name == "safefql":
            continue
        t0 = time.perf_counter()
        try:
            rep, pols = stage_baseline(name, args, train_t, bcfgs[name], standardise)
        except ValueError as e:  # e.g. BC-safe without a single zero-cost episode
            training[name] = {"skipped": str(e)}
            console.print(f"[yellow]{METHODS[name]} skipped: {e}[/yellow]")
            continue
        timings[f"train_{name}_s"] = time.perf_counter() - t0
        training[name] = rep
        console.print(
            f"[dim]trained {METHODS[name]}: {rep['wall_time_s']:.0f} s, {rep['updates_per_s']:.1f} upd/s"
        )

        def factory(p: Any, stochastic: bool) -> Callable[[int], Callable[[np.ndarray], Any]]:
            def make(seed: int) -> Callable[[np.ndarray], Any]:
                rng = np.random.default_rng([seed, 7]) if stochastic else None
                return lambda o: p.act(o, rng)

            return make

        policies[name] = [factory(p, name == "fisor") for p in pols]
    out["training"] = training
    tt = Table(title=f"{env_id}: training ({args.seeds} seed(s))")
    for col in ("method", "updates", "updates/s", "wall s", "transitions"):
        tt.add_column(col, justify="right" if col != "method" else "left")
    for name, rep in training.items():
        if "skipped" in rep:
            tt.add_row(METHODS[name], "skipped", "-", "-", "-")
            continue
        n_tr = out["split"]["train_transitions"]
        if name == "bc_safe":
            n_tr = rep["per_seed"][0].get("num_transitions", n_tr)
        tt.add_row(
            METHODS[name],
            str(rep["steps"]),
            f"{rep['updates_per_s']:.1f}",
            f"{rep['wall_time_s']:.1f}",
            str(n_tr),
        )
    console.print(tt)

    # (c) evaluation
    make = lambda: _make_env(env_id)  # noqa: E731
    evals: dict[str, Any] = {}
    t0 = time.perf_counter()
    for name, facts in policies.items():
        per_seed = []
        for i, fact in enumerate(facts):
            ep = run_episodes(make, fact(args.seed + i), args.eval_episodes, EVAL_SEED, args.eval_max_steps)
            per_seed.append(summarize(ep, r_min, r_max, args.cost_limit) | {"seed_index": i})
        evals[name] = {"label": METHODS[name], "per_seed": per_seed, "aggregate": aggregate(per_seed)}
        if args.progress:
            a = evals[name]["aggregate"]
            console.print(f"[dim]eval {METHODS[name]}: R {a['return']:.2f} C {a['cost']:.2f}[/dim]")
    timings["eval_s"] = time.perf_counter() - t0

    # scripted references on the same starts
    probe = _make_env(env_id)
    scripted = {n: make_safety_gym_policy(n, probe) for n in REFERENCE_POLICIES}
    probe.close()
    refs: dict[str, Any] = {}
    t0 = time.perf_counter()
    for n in args.references:
        rng = np.random.default_rng([args.seed, 11])
        pol = scripted[n]
        ep = run_episodes(
            make, lambda o, pol=pol, rng=rng: pol(o, rng), args.eval_episodes, EVAL_SEED, args.eval_max_steps
        )
        refs[n] = summarize(ep, r_min, r_max, args.cost_limit)
    timings["eval_references_s"] = time.perf_counter() - t0
    out["evaluation"] = {
        "episodes_per_seed": args.eval_episodes,
        "reset_seeds": f"env.reset(seed={EVAL_SEED} + i), i < {args.eval_episodes}, same for every method",
        "max_steps": args.eval_max_steps or "env time limit (1000)",
        "methods": evals,
        "references": refs,
        "noise": "SafeFQL: actor with z = 0; BC: deterministic; FISOR: 16 candidates with fresh noise per "
        "step (seeded Generator), lowest Q_h executed",
    }

    et = Table(title=f"{env_id}: evaluation ({args.eval_episodes} episodes x seeds; mean ± std over seeds)")
    for col in ("method", "return", "cost", "r_norm", "c_norm", "viol. rate", "c_norm<=1"):
        et.add_column(col, justify="right" if col != "method" else "left")

    def pm(a: dict[str, float], k: str, fmt: str) -> str:
        s = f"{a[k]:{fmt}}"
        return s + (f" ± {a[k + '_std']:{fmt}}" if a.get("seeds", 1) > 1 else "")

    for ev in evals.values():
        a = ev["aggregate"]
        et.add_row(
            ev["label"],
            pm(a, "return", ".2f"),
            pm(a, "cost", ".2f"),
            pm(a, "r_norm", ".3f"),
            pm(a, "c_norm", ".3f"),
            pm(a, "violation_rate", ".2f"),
            "yes" if a["c_norm"] <= 1 else "no",
        )
    for n, s in refs.items():
        et.add_row(
            f"[dim]scripted {n}[/dim]",
            f"{s['return']:.2f}",
            f"{s['cost']:.2f}",
            f"{s['r_norm']:.3f}",
            f"{s['c_norm']:.3f}",
            f"{s['violation_rate']:.2f}",
            "yes" if s["c_norm"] <= 1 else "no",
        )
    et.caption = (
        f"r_norm = (R - {r_min:.2f}) / ({r_max:.2f} - {r_min:.2f}) (dataset min/max episode return); "
        f"c_norm = C / {args.cost_limit:g}"
    )
    console.print(et)
    if extend is not None:  # baselines and references only: the entry's shield stays as it is
        timings["total_s"] = time.perf_counter() - t_env
        out["timings"] = timings
        out["load_avg_end"] = load_avg()
        return out

    # (d) shield around the goal_lidar agent
    t0 = time.perf_counter()
    shield: dict[str, Any] = {"agent": "goal_lidar (steer at the goal lidar, hazards ignored), deterministic"}
    ckpts = paths[: args.shield_seeds]  # seed 0 first: the one-seed runs use it alone
    # loaded once: every shield run of a seed then uses the same weights, whatever happens to the files
    models = {ckpt: SafeFQLPolicy.load(ckpt) for ckpt in ckpts}
    cals: list[Any] = []
    for ckpt in ckpts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                cals.append(calibrate(ckpt, "offline", eps=args.eps, seed=args.seed, store=False))
        except Exception as e:  # noqa: BLE001 - report, keep the benchmark going
            shield.setdefault("calibration", {"error": f"{type(e).__name__}: {e}"})
            cals.append(None)
    if cals[0] is not None:
        shield["calibration"] = cals[0].to_dict()
    if len(ckpts) > 1:
        shield["calibrations"] = [None if c is None else c.to_dict() for c in cals]
    goal = scripted["goal_lidar"]
    goal_act = lambda o: goal(o, None)  # noqa: E731  (noise-free policy: the rng is not used)
    n_sh = args.shield_episodes
    alone = run_episodes(make, goal_act, n_sh, EVAL_SEED, args.eval_max_steps)
    shield["alone"] = summarize(alone, r_min, r_max, args.cost_limit)
    deltas: list[tuple[str, list[float]]] = [
        (f"delta_{d:g}", [d] * len(ckpts)) for d in sorted({0.0, *args.shield_deltas})
    ]
    own = [float(c.delta) for c in cals if c is not None and math.isfinite(c.delta)]
    if len(own) == len(ckpts) and not args.no_calibrated_shield:
        deltas.append(("calibrated", own))  # each checkpoint at its own calibrated delta
    # "nearest" keeps the plain keys; other fallbacks are stored as "<fallback>_<variant>"
    variants = [
        (name if fb == "nearest" else f"{fb}_{name}", per_ckpt, fb)
        for fb in args.shield_fallbacks
        for name, per_ckpt in deltas
    ]
    shield["checkpoint"] = str(ckpts[0])
    shield["checkpoints"] = [str(c) for c in ckpts]
    shield["episodes"] = n_sh
    shield["fallbacks"] = list(args.shield_fallbacks)
    base_c = shield["alone"]["cost"]
    for variant, per_ckpt, fallback in variants:
        per_seed = []
        for ckpt, delta in zip(ckpts, per_ckpt, strict=True):

            def make_shielded(ckpt: Path = ckpt, delta: float = delta, fallback: str = fallback) -> Any:
                env = _make_env(env_id)
                return SafeFQLShield(
                    env,
                    checkpoint=models[ckpt],
                    mode="shield",
                    delta=delta,
                    fallback=fallback,
                    num_candidates=args.shield_candidates,
                )

            ep = run_episodes(make_shielded, goal_act, n_sh, EVAL_SEED, args.eval_max_steps)
            s = summarize(ep, r_min, r_max, args.cost_limit)
            s["delta"] = delta
            s["fallback"] = fallback
            s["cost_reduction"] = float(1.0 - s["cost"] / base_c) if base_c > 0 else math.nan
            s["return_change"] = float(s["return"] - shield["alone"]["return"])
            per_seed.append(s)
        shield[variant] = aggregate_shield_runs(per_seed)
    timings["shield_s"] = time.perf_counter() - t0
    out["shield"] = shield

    over = f" x {len(ckpts)} seeds' checkpoints, mean over seeds" if len(ckpts) > 1 else ""
    st = Table(
        title=f"{env_id}: goal_lidar agent with and without the SafeFQL shield ({n_sh} episodes{over})"
    )
    cols = ("run", "fallback", "delta", "return", "cost", "c_norm", "viol. rate", "cost reduction")
    for col in (*cols, "interv. rate"):
        st.add_column(col, justify="left" if col in ("run", "fallback") else "right")
    a = shield["alone"]
    st.add_row(
        "alone",
        "-",
        "-",
        f"{a['return']:.2f}",
        f"{a['cost']:.2f}",
        f"{a['c_norm']:.3f}",
        f"{a['violation_rate']:.2f}",
        "-",
        "-",
    )
    for variant, _, fallback in variants:
        s = shield[variant]
        st.add_row(
            f"shielded ({variant})",
            fallback,
            f"{s['delta']:.3g}",
            f"{s['return']:.2f}",
            f"{s['cost']:.2f}",
            f"{s['c_norm']:.3f}",
            f"{s['violation_rate']:.2f}",
            f"{100 * s['cost_reduction']:.1f}%"
            + (f" ± {100 * s['cost_reduction_std']:.1f}" if "cost_reduction_std" in s else ""),
            f"{s['intervention_rate']:.3f}",
        )
    if isinstance(shield.get("calibration"), dict) and "delta" in shield["calibration"]:
        st.caption = (
            f"offline conformal delta (eps {args.eps}, {shield['calibration']['n']} held-out episodes): "
            f"{shield['calibration']['delta']}"
        )
    console.print(st)

    # targets
    targets = policy_targets(evals)
    targets["shield_cost_reduction_ge_0.8"] = shield_cost_target(shield, [v for v, _, _ in variants])
    out["targets"] = targets
    timings["total_s"] = time.perf_counter() - t_env
    out["timings"] = timings
    out["load_avg_end"] = load_avg()
    console.print(f"[bold]targets[/bold]: {json.dumps(_clean(targets))}")
    console.print(f"[dim]timings: {json.dumps({k: round(v, 1) for k, v in timings.items()})}[/dim]")
    return out


# ------------------------------------------------------------------------------------------- main
def same_dataset(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two runs' ``data`` reports describe the same episodes: the same dataset id, transitions and
    episode return and cost statistics (a dataset collected again under one id is other data)."""
    contents = ("dataset_id", "transitions", "episode_return", "episode_cost")
    return all(a.get(k) == b.get(k) for k in contents)


def carry_collection(env_out: dict[str, Any], entries: dict[str, dict[str, Any]]) -> None:
    """On a reused dataset, keep the collection time measured by the run that collected that same data.

    ``entries`` are the stored results (any task or tag). A run counts when it names the same dataset id,
    measured a time, and saw the same episodes (transitions, episode return and cost statistics): a
    dataset collected again under the same id, on another machine, is other data. The latest such run
    wins; the copy names when it was measured.
    """
    data = env_out.get("data") or {}
    if not data.get("reused"):
        return
    matches = []
    for entry in entries.values():
        old = entry.get("data") or {}
        seconds = (old.get("collection") or {}).get("seconds")
        if seconds is not None and same_dataset(old, data):
            matches.append(entry)
    if not matches:
        return
    source = max(matches, key=lambda e: str(e.get("timestamp", "")))
    old_collection = source["data"]["collection"]
    data["collection"] = dict(
        old_collection,
        note="dataset reused (--reuse-data); collection time measured by the run that collected it",
        measured_at=old_collection.get("measured_at", source.get("timestamp")),
    )


def read_results(path: Path) -> dict[str, Any] | None:
    """The safety_gym results stored at ``path`` (``None``: missing, unreadable or another benchmark's)."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(stored, dict) or stored.get("benchmark") != "safety_gym":
        return None
    return stored | {"envs": dict(stored.get("envs") or {})}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", default=DEFAULT_ENVS, help="comma-separated: point, car or full env ids")
    parser.add_argument("--episodes", type=int, default=None, help="dataset episodes (default 200)")
    parser.add_argument("--steps", type=int, default=None, help="SafeFQL updates (default 20000)")
    parser.add_argument("--baseline-steps", type=int, default=None, help="baseline updates (default --steps)")
    parser.add_argument("--seeds", type=int, default=None, help="training seeds per method (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="first training seed (and the data split seed)")
    parser.add_argument("--data-seed", type=int, default=0, help="collection seed")
    parser.add_argument("--eval-episodes", type=int, default=None, help="episodes per seed (default 20)")
    parser.add_argument("--shield-episodes", type=int, default=None, help="default: --eval-episodes")
    parser.add_argument("--eval-max-steps", type=int, default=None, help="cap episode length (quick runs)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    parser.add_argument("--references", default=",".join(REFERENCE_POLICIES), help="scripted references")
    parser.add_argument("--mixture", default=None, help="behaviour mixture (default the Safety-Gym mixture)")
    parser.add_argument("--cost-limit", type=float, default=DEFAULT_COST_LIMIT)
    parser.add_argument("--calib-fraction", type=float, default=0.1)
    parser.add_argument("--eps", type=float, default=0.1, help="offline calibration level for the shield")
    parser.add_argument("--no-calibrated-shield", action="store_true", help="skip the calibrated-delta run")
    parser.add_argument(
        "--shield-deltas",
        default="",
        help="comma-separated fixed deltas to run the shield at too (0 always runs)",
    )
    parser.add_argument(
        "--shield-fallbacks",
        default="safest,samples",
        help="shield fallbacks to run (comma-separated: safest, samples, nearest, actor)",
    )
    parser.add_argument(
        "--shield-seeds", type=int, default=1, help="run the shield with the first K seeds' checkpoints"
    )
    parser.add_argument(
        "--shield-candidates",
        type=int,
        default=10,
        help="the shield's num_candidates: segment points (nearest) or actor draws (samples, safest)",
    )
    parser.add_argument(
        "--reuse-safefql",
        action="store_true",
        help="skip SafeFQL training when the work dir holds a finished run with the same config and sizes",
    )
    parser.add_argument(
        "--resume-safefql",
        action="store_true",
        help="continue a shorter SafeFQL run of the same config in the work dir up to --steps (exact: the "
        "same weights as training from scratch); a run already at --steps is reused",
    )
    parser.add_argument("--set", action="append", default=[], help="SafeFQLConfig override key=value")
    parser.add_argument(
        "--switch-every", type=int, default=0, help="prototype data: re-draw the policy every N steps"
    )
    parser.add_argument(
        "--action-hold", type=int, default=1, help="behaviour decisions held for K steps in the data"
    )
    parser.add_argument("--kappa", type=float, default=None, help="relabel h = kappa if cost > 0 else -1")
    parser.add_argument(
        "--margin",
        default="surrogate",
        choices=("surrogate", "hazard_distance"),
        help="the data's h: the binary-cost surrogate, or minus the distance to the hazards (Goal1)",
    )
    parser.add_argument("--tag", default="", help="store the results under '<env id> [<tag>]' (variants)")
    parser.add_argument(
        "--extend",
        action="store_true",
        help="add the --methods baselines to the stored entry of the same data (SafeFQL is not rerun)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny everything: a smoke run")
    parser.add_argument(
        "--reuse-data", action="store_true", help="reuse an existing dataset with the same id"
    )
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK, help="datasets and run directories")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON (default {DEFAULT_OUT})")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)

    q = args.quick
    defaults = {
        "episodes": 3 if q else 200,
        "steps": 200 if q else 20_000,
        "seeds": 1 if q else 3,
        "eval_episodes": 2 if q else 20,
    }
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.baseline_steps is None:
        args.baseline_steps = args.steps
    if args.shield_episodes is None:
        args.shield_episodes = args.eval_episodes
    if q and args.eval_max_steps is None:
        args.eval_max_steps = 200
    for name in (
        "episodes",
        "steps",
        "baseline_steps",
        "seeds",
        "eval_episodes",
        "shield_episodes",
        "shield_seeds",
        "shield_candidates",
        "action_hold",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.shield_seeds > args.seeds:
        parser.error(f"--shield-seeds ({args.shield_seeds}) cannot exceed --seeds ({args.seeds})")
    if args.action_hold > 1 and args.switch_every:
        parser.error("--action-hold and --switch-every cannot be combined (switching holds no action)")
    if args.margin != "surrogate" and args.kappa is not None:
        parser.error("--margin hazard_distance cannot be combined with --kappa")
    if args.episodes < 2:
        parser.error("--episodes must be >= 2 (one episode is held out for calibration)")
    args.envs = [ENV_ALIASES.get(e.strip().lower(), e.strip()) for e in args.envs.split(",") if e.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        parser.error(f"--methods must come from {list(METHODS)}; bad: {bad}")
    if args.extend and "safefql" in args.methods:
        parser.error("--extend adds baselines to a stored entry: --methods must list baselines only")
    if args.extend and not args.reuse_data:
        parser.error("--extend needs --reuse-data: the stored entry's dataset must not be collected again")
    if not args.extend and "safefql" not in args.methods:
        parser.error(f"--methods must include safefql (--extend adds baselines alone); got {args.methods}")
    from safefql.shields.wrapper import FALLBACKS
    from safefql.training.config import parse_overrides

    args.shield_fallbacks = [f.strip() for f in args.shield_fallbacks.split(",") if f.strip()]
    if not args.shield_fallbacks or any(f not in FALLBACKS for f in args.shield_fallbacks):
        parser.error(f"--shield-fallbacks must come from {FALLBACKS}")
    try:
        args.shield_deltas = [float(d) for d in args.shield_deltas.split(",") if d.strip()]
    except ValueError:
        parser.error(f"--shield-deltas must be comma-separated numbers, got {args.shield_deltas!r}")
    if any(not math.isfinite(d) or d < 0 for d in args.shield_deltas):
        parser.error(f"--shield-deltas must be finite and >= 0, got {args.shield_deltas}")
    if args.resume_safefql and args.reuse_safefql:
        parser.error("--resume-safefql already reuses a run at --steps: pass it without --reuse-safefql")
    args.references = [r.strip() for r in args.references.split(",") if r.strip()]
    if any(r not in REFERENCE_POLICIES for r in args.references):
        parser.error(f"--references must come from {REFERENCE_POLICIES}")
    try:
        args.overrides = parse_overrides(args.set)
    except ValueError as e:
        parser.error(str(e))

    os.environ.setdefault("MINARI_DATASETS_PATH", str(Path(args.work_dir) / "minari"))
    os.environ.setdefault("MUJOCO_GL", "egl")
    from rich.console import Console

    import safefql  # noqa: F401  (registers the Safety-Gymnasium ids)
    from safefql._io import atomic_write_text

    console = Console(width=None if sys.stdout.isatty() else 120)  # logs: wide enough for the tables
    command = "MINARI_DATASETS_PATH={} OPENBLAS_NUM_THREADS={} uv run python {} {}".format(
        os.environ["MINARI_DATASETS_PATH"],
        os.environ.get("OPENBLAS_NUM_THREADS", "<unset>"),
        "benchmarks/bench_safety_gym.py",
        shlex.join(sys.argv[1:] if argv is None else argv),
    )
    settings = {
        k: _clean(getattr(args, k))
        for k in (
            "episodes",
            "steps",
            "baseline_steps",
            "seeds",
            "seed",
            "data_seed",
            "eval_episodes",
            "shield_episodes",
            "eval_max_steps",
            "methods",
            "references",
            "mixture",
            "cost_limit",
            "calib_fraction",
            "eps",
            "quick",
            "reuse_data",
            "work_dir",
            "overrides",
            "kappa",
            "tag",
            "switch_every",
            "action_hold",
            "margin",
            "shield_candidates",
        )
    }
    existing = read_results(args.out)
    result = {
        "benchmark": "safety_gym",
        "description": __doc__.split("\n\n")[0],
        "envs": {} if existing is None else existing["envs"],
    }
    key_of = lambda env_id: env_id if not args.tag else f"{env_id} [{args.tag}]"  # noqa: E731
    if args.extend:  # check every entry before any work
        if not args.methods and not args.references:
            parser.error("--extend: nothing to add (no --methods, no --references)")
        for env_id in args.envs:
            entry = result["envs"].get(key_of(env_id))
            if not entry or "error" in entry or "safefql" not in (entry.get("training") or {}):
                parser.error(f"--extend: {args.out} holds no finished SafeFQL entry {key_of(env_id)!r}")
            wrong = extension_mismatches(entry, settings)
            if wrong:
                parser.error(f"--extend: {key_of(env_id)!r} was made with other settings: {'; '.join(wrong)}")
    for env_id in args.envs:
        key = key_of(env_id)
        args.extend_entry = result["envs"][key] if args.extend else None
        t0 = time.perf_counter()
        try:
            env_out = run_env(env_id, args, console)
        except Exception as e:  # noqa: BLE001 - keep the other envs; record the failure
            console.print_exception()
            env_out = {
                "env_id": env_id,
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(),
            }
        record = {
            "command": command,
            "settings": settings,
            "machine": machine_info(),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "wall_time_s": time.perf_counter() - t0,
        }
        # runs take an hour: merge into the file as it is now, not as it was at the start
        fresh = read_results(args.out)
        if fresh is not None:
            result["envs"] = fresh["envs"]
        if args.extend:
            base = result["envs"].get(key, args.extend_entry)
            if "error" not in env_out:
                record |= {"timings": env_out.get("timings"), "load_avg_start": env_out.get("load_avg_start")}
                try:
                    env_out = merge_extension(base, env_out, record)
                except (KeyError, TypeError, ValueError) as e:
                    env_out = {"error": f"merging into the stored entry failed: {type(e).__name__}: {e}"}
            if "error" in env_out:  # the stored entry stays; the failure is recorded beside it
                tried = args.methods + [f"scripted {n}" for n in args.references]
                failed = record | {"methods": tried, "error": env_out["error"]}
                env_out = dict(base)
                env_out["extensions"] = [*env_out.get("extensions", []), failed]
        else:
            env_out |= record
            carry_collection(env_out, result["envs"])
        result["envs"][key] = env_out
        result["updated"] = record["timestamp"]
        atomic_write_text(args.out, json.dumps(_clean(result), indent=1) + "\n")
        console.print(f"wrote {args.out} ({env_id})")
    return result


if __name__ == "__main__":
    from safefql._io import exit_on_sigterm

    exit_on_sigterm()  # a killed run removes its temporary dataset and checkpoint paths
    main()
