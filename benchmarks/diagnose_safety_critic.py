"""Does a trained safety critic rank what the shield needs it to rank? A diagnosis on held-out episodes.

The shield trusts ``Q_h(s, a)`` twice: to flag the proposals that lead into the failure set, and to pick a
safe replacement among candidate actions. This script measures both on a training run's held-out
calibration episodes (``calib_episodes.npz``; Safety-Gymnasium Point Goal tasks):

- **value**: ``Q_h(s_t, a_t)`` against the Monte-Carlo HJ value of the logged continuation,
  ``y_t = (1 - gamma) h_t + gamma max(h_t, y_{t+1})`` (DESIGN.md section 2; ``y_T = h_T``): Pearson and
  Spearman correlation and mean error, on all steps and on the steps near a hazard (``-0.5 < h_t <= 0``).
  The last ``--tail`` steps of each episode are left out (their truncated ``y`` is biased). With
  ``expectile_safety = 0.5`` the critic estimates the behaviour's own value, so ``y`` is its target.
- **flagging**: among the steps outside the failure set, the AUC of ``Q_h(s_t, a_t)`` for "the logged
  continuation enters the failure set within ``--horizon`` steps", beside the AUC of ``h_t`` alone (the
  current margin, no critic): a critic that adds nothing over the margin scores the same.
- **action ranking**: at near-hazard states, the spread of ``Q_h(s, .)`` over a 5x5 action grid against its
  spread over the states; and, where the nearest hazard lies within 30 degrees of straight ahead (or
  behind) and within ``0.6`` m, the fraction of states where ``Q_h`` rates full forward thrust worse than
  full reverse (or the other way round), at zero turn. A critic that ranks actions by where they lead
  scores near 1; 0.5 is chance.

- **inside the failure set**: at the held-out steps with ``h > 0`` (where every HJ target is at least
  ``h > 0``), the fraction with ``Q_h > 0`` for the logged action and for the actor's own action, and the
  fraction where every action of the 5x5 grid gets ``Q_h <= 0`` (the gate open whatever the actor does).

Prints a table and adds an entry to ``benchmarks/results/critic_diagnosis.json`` (``--tag`` names it)::

    uv run python benchmarks/diagnose_safety_critic.py --run-dir RUN_DIR --tag NAME
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from safefql._io import atomic_write_text
from safefql.datasets.policies_safety_gym import POINT_GOAL_LAYOUT_SIZES, ObservationLayout, lidar_direction
from safefql.training.calibration import CALIB_EPISODES_FILE
from safefql.training.policy import SafeFQLPolicy
from safefql.training.trainer import load_calib_episodes

ROOT = Path(__file__).resolve().parent
NEAR = 0.5  # metres from a hazard edge: the states where the shield's choices matter
CONE = math.pi / 6  # "straight ahead" / "behind": within 30 degrees
CLOSE_READING = 1.0 - 0.6 / 3.0  # hazard lidar reads 1 - d / 3: within 0.6 m of the hazard centre


def mc_hj_values(h: np.ndarray, episode_ids: np.ndarray, gamma: float) -> np.ndarray:
    """``y_t = (1 - gamma) h_t + gamma max(h_t, y_{t+1})`` backwards through each episode; ``y_T = h_T``."""
    y = np.empty_like(h, dtype=np.float64)
    for t in range(h.size - 1, -1, -1):
        last = t == h.size - 1 or episode_ids[t + 1] != episode_ids[t]
        y[t] = h[t] if last else (1.0 - gamma) * h[t] + gamma * max(h[t], y[t + 1])
    return y


def steps_from_end(episode_ids: np.ndarray) -> np.ndarray:
    """How many steps each transition lies before the end of its episode (0 for the last)."""
    out = np.empty(episode_ids.size, dtype=np.int64)
    count = 0
    for t in range(episode_ids.size - 1, -1, -1):
        count = 0 if t == episode_ids.size - 1 or episode_ids[t + 1] != episode_ids[t] else count + 1
        out[t] = count
    return out


def enters_within(h: np.ndarray, episode_ids: np.ndarray, horizon: int) -> np.ndarray:
    """Whether ``h > 0`` at some step in ``t+1 .. t+horizon`` of the same episode."""
    inside = h > 0
    out = np.zeros(h.size, dtype=bool)
    for k in range(1, horizon + 1):
        same = np.zeros(h.size, dtype=bool)
        same[:-k] = episode_ids[k:] == episode_ids[:-k]
        hit = np.zeros(h.size, dtype=bool)
        hit[:-k] = inside[k:]
        out |= same & hit
    return out


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for ``label`` (Mann-Whitney; ties count half)."""
    pos, neg = int(label.sum()), int((~label).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = stats.rankdata(score)
    return float((ranks[label].sum() - pos * (pos + 1) / 2) / (pos * neg))


def fit_numbers(q: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Correlation and error of the critic ``q`` against the Monte-Carlo target ``y``."""
    return {
        "n": int(q.size),
        "pearson": float(stats.pearsonr(q, y)[0]),
        "spearman": float(stats.spearmanr(q, y)[0]),
        "mean_error": float(np.mean(q - y)),
        "mean_abs_error": float(np.mean(np.abs(q - y))),
        "target_std": float(np.std(y)),
    }


def grid_q(policy: Any, observations: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """``Q_h(s, a)`` for every state and every action of ``grid``: shape (states, actions)."""
    n = observations.shape[0]
    return policy.safety_q(np.repeat(observations, len(grid), 0), np.tile(grid, (n, 1))).reshape(n, -1)


def inside_failure_set(
    policy: Any, observations: np.ndarray, actions: np.ndarray, h: np.ndarray, grid: np.ndarray
) -> dict[str, Any]:
    """At the steps with ``h > 0`` (every HJ target there is at least ``h > 0``): the fraction where ``Q_h``
    of the logged action, and of the actor's own action, is above 0, and the fraction where every ``grid``
    action gets ``Q_h <= 0`` (the actor's gate is then open whatever it does)."""
    idx = np.flatnonzero(h > 0)
    if idx.size == 0:
        return {"steps": 0}
    o = observations[idx]
    q_grid = grid_q(policy, o, grid)
    return {
        "steps": int(idx.size),
        "logged_action_above_zero": float(np.mean(policy.safety_q(o, actions[idx]) > 0)),
        "actor_action_above_zero": float(np.mean(policy.safety_q(o, policy.act(o)) > 0)),
        "every_grid_action_at_most_zero": float(np.mean(q_grid.max(1) <= 0)),
        "mean_h": float(h[idx].mean()),
    }


def diagnose(run_dir: Path, seed_index: int, horizon: int, tail: int, max_states: int, seed: int) -> dict:
    ckpts = sorted(run_dir.glob("policy_seed*.eqx")) or [run_dir / "policy.eqx"]
    if not 0 <= seed_index < len(ckpts):
        raise ValueError(f"--seed-index {seed_index}: {run_dir} holds {len(ckpts)} seed checkpoint(s)")
    ckpt = ckpts[seed_index]
    policy = SafeFQLPolicy.load(ckpt)
    if policy.observation_space.shape != (60,) or policy.action_space.shape != (2,):
        raise ValueError(f"{ckpt}: the diagnosis reads the Point Goal observation (60) and actions (2)")
    config = policy.header["config"]
    if int(config.get("action_repeat", 1)) != 1:
        raise ValueError(
            f"{ckpt}: action_repeat={config['action_repeat']}; only one-step critics are handled"
        )
    gamma = float(config["gamma"])
    data = load_calib_episodes(run_dir / CALIB_EPISODES_FILE)
    h, ids = data.h.astype(np.float64), data.episode_ids
    y = mc_hj_values(h, ids, gamma)
    q = policy.safety_q(data.observations, data.actions).astype(np.float64)
    keep = steps_from_end(ids) >= tail
    near = keep & (h > -NEAR) & (h <= 0)
    outside = keep & (h <= 0)
    label = enters_within(h, ids, horizon)[outside]

    rng = np.random.default_rng(seed)
    near_idx = np.flatnonzero(near)
    pick = rng.choice(near_idx, size=min(max_states, near_idx.size), replace=False)
    grid = np.stack(np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 5)), -1).reshape(-1, 2)
    obs = data.observations[pick]
    q_grid = grid_q(policy, obs, grid)

    layout = ObservationLayout.from_sizes(POINT_GOAL_LAYOUT_SIZES)
    angle, peak = lidar_direction(layout.part(data.observations[near_idx], "hazards_lidar"))
    angle = (angle + math.pi) % (2 * math.pi) - math.pi
    close = peak >= CLOSE_READING
    ahead = near_idx[close & (np.abs(angle) <= CONE)]
    behind = near_idx[close & (np.abs(angle) >= math.pi - CONE)]

    def prefers(idx: np.ndarray, worse: float) -> dict[str, Any]:
        """Fraction of states where thrust ``worse`` (toward the hazard) gets the higher ``Q_h``."""
        if idx.size == 0:
            return {"states": 0, "fraction_correct": None}
        o = data.observations[idx]
        toward = policy.safety_q(o, np.tile([worse, 0.0], (idx.size, 1)))
        away = policy.safety_q(o, np.tile([-worse, 0.0], (idx.size, 1)))
        return {
            "states": int(idx.size),
            "fraction_correct": float(np.mean(toward > away)),
            "mean_gap": float(np.mean(toward - away)),
        }

    inside = inside_failure_set(policy, data.observations, data.actions, h, grid)

    return {
        "checkpoint": str(ckpt),
        "config": {
            k: config[k] for k in ("expectile_safety", "w_safe", "safety_margin", "gamma") if k in config
        },
        "calib_episodes": int(np.unique(ids).size),
        "horizon": horizon,
        "tail": tail,
        "value_all": fit_numbers(q[keep], y[keep]),
        "value_near": fit_numbers(q[near], y[near]),
        "flagging": {
            "steps_outside": int(outside.sum()),
            "positives": int(label.sum()),
            "auc_q": auc(q[outside], label),
            "auc_h": auc(h[outside], label),
        },
        "action_spread": {
            "states": int(len(pick)),
            "median_range_over_actions": float(np.median(q_grid.max(1) - q_grid.min(1))),
            "std_over_states": float(np.std(q_grid.mean(1))),
        },
        "forward_when_hazard_ahead": prefers(ahead, 1.0),
        "reverse_when_hazard_behind": prefers(behind, -1.0),
        "inside_failure_set": inside,
    }


def print_table(tag: str, r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"safety critic diagnosis: {tag}")
    t.add_column("measure")
    t.add_column("value", justify="right")
    va, vn, fl, sp = r["value_all"], r["value_near"], r["flagging"], r["action_spread"]
    t.add_row(
        "Q_h vs MC value, all steps: Spearman / mean error", f"{va['spearman']:.3f} / {va['mean_error']:+.3f}"
    )
    t.add_row(
        "Q_h vs MC value, near hazards: Spearman / mean error",
        f"{vn['spearman']:.3f} / {vn['mean_error']:+.3f}",
    )
    t.add_row(
        f"AUC, enters within {r['horizon']} steps: Q_h / h alone", f"{fl['auc_q']:.3f} / {fl['auc_h']:.3f}"
    )
    t.add_row(
        "Q_h range over actions (median) / std over states",
        f"{sp['median_range_over_actions']:.4f} / {sp['std_over_states']:.4f}",
    )
    for key, what in (("forward_when_hazard_ahead", "forward"), ("reverse_when_hazard_behind", "reverse")):
        p = r[key]
        value = (
            "-" if p["fraction_correct"] is None else f"{p['fraction_correct']:.2f} ({p['states']} states)"
        )
        t.add_row(f"{what} thrust toward a close hazard rated worse", value)
    ins = r["inside_failure_set"]
    if ins["steps"]:
        t.add_row(
            f"inside a hazard ({ins['steps']} steps): Q_h > 0 for the logged / the actor's action",
            f"{ins['logged_action_above_zero']:.2f} / {ins['actor_action_above_zero']:.2f}",
        )
        t.add_row(
            "inside a hazard: every action of the 5x5 grid has Q_h <= 0",
            f"{ins['every_grid_action_at_most_zero']:.2f}",
        )
    Console().print(t)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--run-dir", type=Path, required=True, help="a training run (checkpoints + calib episodes)"
    )
    parser.add_argument("--seed-index", type=int, default=0, help="which seed's checkpoint")
    parser.add_argument("--tag", required=True, help="the entry's name in the JSON")
    parser.add_argument("--horizon", type=int, default=20, help="steps ahead for the flagging AUC")
    parser.add_argument("--tail", type=int, default=200, help="steps left out at each episode's end")
    parser.add_argument("--max-states", type=int, default=2000, help="near-hazard states for the action grid")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "critic_diagnosis.json")
    args = parser.parse_args(argv)
    if not (args.run_dir / CALIB_EPISODES_FILE).is_file():
        parser.error(f"{args.run_dir} holds no {CALIB_EPISODES_FILE} (train with a calibration split)")
    result = diagnose(args.run_dir, args.seed_index, args.horizon, args.tail, args.max_states, args.seed)
    print_table(args.tag, result)
    entries = json.loads(args.out.read_text()) if args.out.is_file() else {}
    entries[args.tag] = result
    atomic_write_text(args.out, json.dumps(entries, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
