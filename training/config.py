"""Hyperparameters of the SafeFQL learner (DESIGN.md sections 2-3) and per-environment defaults."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from safefql.training.networks import ACTIVATIONS

ACTOR_OBJECTIVES = ("plain", "normalized")
EPISODE_SETS = ("all", "safe")  # the episodes a loss learns from (reward_episodes, flow_episodes)
# flow_episodes may also be "recovering": the safe episodes plus every step out of the failure set
FLOW_SETS = (*EPISODE_SETS, "recovering")
# each such config field -> the DeviceDataset weights that carry it when not "all"
EPISODE_WEIGHTS = {"reward_episodes": "reward_weights", "flow_episodes": "flow_weights"}
_HIDDEN_FIELDS = ("critic_hidden", "value_hidden", "actor_hidden", "flow_hidden")


@dataclasses.dataclass(frozen=True)
class SafeFQLConfig:
    """Everything that defines a SafeFQL agent and its updates; frozen and hashable (a static jit arg)."""

    critic_hidden: tuple[int, ...] = (256, 256)  # hidden widths of each reward/safety Q network
    value_hidden: tuple[int, ...] = (256, 256)  # hidden widths of the V_r and V_h networks
    actor_hidden: tuple[int, ...] = (512, 512, 512, 512)  # hidden widths of the one-step actor mu(s, z)
    flow_hidden: tuple[int, ...] = (512, 512, 512, 512)  # hidden widths of the flow teacher v(s, x_t, t)
    activation: str = "gelu"  # nonlinearity of every network (a key of networks.ACTIVATIONS)
    critic_layer_norm: bool = False  # LayerNorm after each hidden activation of the Q and V nets (as FQL)
    critic_lr: float = 3e-4  # Adam learning rate of the four critics (Q_r, V_r, Q_h, V_h)
    actor_lr: float = 3e-4  # Adam learning rate of the one-step actor
    flow_lr: float = 3e-4  # Adam learning rate of the flow teacher
    grad_clip: float | None = None  # global grad-norm clip per optimizer; None disables clipping
    gamma: float = 0.99  # discount per env step of the reward and HJ safety backups
    action_repeat: int = 1  # k: critics learn from k-step held-action transitions (data held for k steps)
    ema_rate: float = 0.005  # Polyak rate of the target Q networks
    margin_floor: float | None = None  # Q_h learns from max(h, floor), floor < 0 (raises Q_h only); None: h
    expectile_reward: float = 0.9  # tau_r: V_r tracks the upper tau_r-expectile of Qbar_r
    expectile_safety: float = 0.9  # tau_h: V_h tracks the lower (1 - tau_h)-expectile of Qbar_h
    flow_steps: int = 10  # K, Euler steps of the flow teacher when sampling
    alpha: float = 1.0  # weight of the distillation loss ||a_mu - flow_K||^2 in the actor loss
    distill_feasible_only: bool = False  # distil only where the teacher's action passes the actor's gate
    w_safe: float = 1.0  # weight of the max(0, Q_h) penalty on samples outside the safety gate
    safety_margin: float = 0.0  # actor gate is Q_h + margin <= 0 (0: the paper's gate; > 0 keeps clear)
    infeasible_reward_weight: float = 0.0  # share of the -Q_r term kept outside the gate (0: the paper)
    action_penalty: float = 1.0  # weight of (|mu(s,z)| - 1)^2 beyond the box, so clip never stalls gradients
    actor_objective: str = "plain"  # "plain": batch mean; "normalized": each gate branch averaged alone
    candidate_actions: int = 0  # N > 0: also regress the actor onto the best of N uniform box actions
    candidate_weight: float = 1.0  # weight of that regression (best by the gate: feasible max Q_r)
    candidate_tolerance: float = 0.0  # none feasible: best Q_r among those within this of the lowest Q_h
    cost_penalty: float = 0.0  # kappa: Q_r learns r - kappa * 1[h(s) > 0] per step (0: the pure reward)
    actor_backup: float = 0.0  # share of Qbar_r(s', mu(s', 0)) in Q_r's target, rest V_r(s') (0: IQL)
    normalize_observations: bool = False  # standardise obs by the training split's mean/std (folded at save)
    reward_episodes: str = "all"  # Q_r and V_r learn from "all" episodes or the "safe" ones only (no h > 0)
    flow_episodes: str = "all"  # teacher clones "all", "safe" (no h > 0) or "recovering" (safe + exits)
    batch_size: int = 256  # transitions per update
    num_reward_q: int = 2  # reward Q ensemble size (min over members)
    num_safety_q: int = 2  # safety Q ensemble size (max over members)
    steps_per_call: int = 1000  # updates per jitted lax.scan call of train_steps
    num_updates: int = 100_000  # total updates a training run makes by default

    def __post_init__(self) -> None:
        for name in _HIDDEN_FIELDS:
            value = getattr(self, name)
            if isinstance(value, int | str) or not hasattr(value, "__iter__"):
                raise ValueError(f"{name} must be a sequence of layer widths, got {value!r}")
            value = tuple(value)
            if not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in value):
                raise ValueError(f"{name} must contain positive integers, got {value!r}")
            object.__setattr__(self, name, value)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.actor_objective not in ACTOR_OBJECTIVES:
            raise ValueError(
                f"actor_objective must be one of {ACTOR_OBJECTIVES}, got {self.actor_objective!r}"
            )
        for name, allowed in (("reward_episodes", EPISODE_SETS), ("flow_episodes", FLOW_SETS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("critic_lr", "actor_lr", "flow_lr"):
            _check_float(name, getattr(self, name), lo=0.0, lo_open=True)
        if self.grad_clip is not None:
            _check_float("grad_clip", self.grad_clip, lo=0.0, lo_open=True)
        _check_float("gamma", self.gamma, lo=0.0, hi=1.0, hi_open=True)
        _check_float("ema_rate", self.ema_rate, lo=0.0, hi=1.0, lo_open=True)
        if self.margin_floor is not None:
            _check_float("margin_floor", self.margin_floor, hi=0.0, hi_open=True)
        for name in ("expectile_reward", "expectile_safety"):
            _check_float(name, getattr(self, name), lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        _check_float("alpha", self.alpha, lo=0.0)
        _check_float("w_safe", self.w_safe, lo=0.0)
        _check_float("safety_margin", self.safety_margin, lo=0.0)
        _check_float("infeasible_reward_weight", self.infeasible_reward_weight, lo=0.0, hi=1.0)
        _check_float("action_penalty", self.action_penalty, lo=0.0)
        _check_float("candidate_weight", self.candidate_weight, lo=0.0)
        _check_float("cost_penalty", self.cost_penalty, lo=0.0)
        _check_float("candidate_tolerance", self.candidate_tolerance, lo=0.0)
        _check_float("actor_backup", self.actor_backup, lo=0.0, hi=1.0)
        for name in ("distill_feasible_only", "normalize_observations", "critic_layer_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.distill_feasible_only and self.alpha == 0:
            raise ValueError(
                "distill_feasible_only=True needs alpha > 0 (with alpha = 0 nothing is distilled)"
            )
        n = self.candidate_actions
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"candidate_actions must be an integer >= 0, got {n!r}")
        for name in (
            "action_repeat",
            "flow_steps",
            "batch_size",
            "num_reward_q",
            "num_safety_q",
            "steps_per_call",
            "num_updates",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        for name in _HIDDEN_FIELDS:
            out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SafeFQLConfig:
        """Inverse of ``to_dict``; unknown keys raise ValueError, missing keys take the class defaults."""
        if not isinstance(data, dict):
            raise ValueError(f"config must be a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SafeFQLConfig keys {unknown}; known keys are {sorted(known)}")
        kwargs = dict(data)
        for name in _HIDDEN_FIELDS:
            if name in kwargs and isinstance(kwargs[name], list):
                kwargs[name] = tuple(kwargs[name])
        return cls(**kwargs)

    def replace(self, **changes: Any) -> SafeFQLConfig:
        """Copy with some fields changed (validated again); unknown names raise ValueError."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown SafeFQLConfig fields {unknown}; known fields are {sorted(known)}")
        return dataclasses.replace(self, **changes)


def _check_float(
    name: str,
    value: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
    bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
    if bad_lo or bad_hi:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise ValueError(
            f"{name} must lie in {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}, "
            f"got {value!r}"
        )


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` (the ``--set`` options) -> ``{key: value}``; values parse as JSON where they
    can (numbers, booleans, lists, which become tuples), else stay strings. ``SafeFQLConfig.replace``
    then checks the keys and values."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip()] = tuple(value) if isinstance(value, list) else value
    return out


# Boat (DESIGN.md section 6): 2-D state and action, sized for a 2-core CPU (~2-3 minutes of training).
_BOAT = SafeFQLConfig(
    critic_hidden=(128, 128),
    value_hidden=(128, 128),
    actor_hidden=(256, 256, 256),
    flow_hidden=(128, 128),
    activation="relu",
    # Measured on the default 1M dataset (README, tuning notes; seed 0, 30k updates, 100 oracle-safe starts):
    # - action_repeat=10 on data whose actions are held for 10 steps: one step of dt = 0.005 changes Q_h by
    #   about as much as the critic's error, so single-step critics cannot rank actions; held for 10 steps
    #   they can. Sign agreement with the HJ oracle 95.0% -> 99.0%, violating episodes 17 -> 12.
    # - safety_margin=0.1: the actor stops riding the Q_h = 0 boundary: 12 -> 5 violating episodes.
    # - actor 3x256 (was 2x128): the avoidance manoeuvre near the rocks is sharp in the state: 5 -> 0.
    # - alpha=0 (the reference default): alpha > 0 makes the actor clone the mixed behaviour; w_safe=1e5
    #   drowns the reward branch and the actor drives into a box corner; w_safe=10 does not.
    # - relu, 2x64 critics, batch 128 (were gelu, 2x128, 256): 77 -> 238 updates/s on a 2-core CPU, sign
    #   agreement 99.0% -> 99.5%, still 0 violating; the batch-1 shield critic costs a third as much.
    # - candidate_actions=8, candidate_weight=3: without them 5-8 of the 100 starts park beside the lower
    #   rock (the gradient of the gated objective cannot reach the detour); with them none does on seed 0
    #   (over 5 seeds 16 of the 500 starts still park, README).
    # - 2x128 critics and values (were 2x64; 5 seeds, benchmarks/boat_tries.py): return -497.5 +- 7.5 ->
    #   -496.6 +- 4.8, still 0 violating starts; 237 updates/s for one seed on the 2026-12-03 machine
    #   (141 s in all).
    action_repeat=10,
    safety_margin=0.1,
    alpha=0.0,
    w_safe=10.0,
    actor_objective="plain",
    candidate_actions=8,
    candidate_weight=3.0,
    batch_size=128,
    steps_per_call=1000,
    num_updates=30_000,
)

# Safety-Gymnasium: bigger networks, closer to the reference code (sections 10).
_SAFETY_GYM = SafeFQLConfig(
    critic_hidden=(256, 256),
    value_hidden=(256, 256),
    actor_hidden=(256, 256, 256),
    flow_hidden=(256, 256, 256),
    activation="gelu",
    alpha=1.0,
    w_safe=1.0,
    batch_size=256,
    steps_per_call=500,
    num_updates=100_000,
)

# Safety-Gymnasium Goal tasks, Point and Car. Measured with benchmarks/bench_safety_gym.py on hazard-distance
# data (150 episodes, 3 seeds; README, Safety-Gymnasium tables and variants):
# - flow_episodes="recovering": the teacher clones the zero-cost episodes plus the steps out of a hazard.
#   With "all" the actor stays near a teacher of the whole mixture and behaves like BC-all (PointGoal1
#   c_norm 2.18). "safe" (zero-cost episodes only) never shows the way out of a hazard, and the actor stays
#   inside about 30 steps per entry; "recovering" halves the stays.
# - safety_margin=0.1 and 30k updates (the bench's --steps): PointGoal1 r_norm 0.443 at c_norm 1.041 (seeds
#   0.86, 1.07, 1.20; 100 episodes per seed). At 15k updates the runs lay on one reward-for-cost line
#   through BC-safe's point (0.303 / 0.974): "safe" 0.305 / 1.174, "recovering" 0.439 / 1.251, with margin
#   0.1 0.321 / 1.033, with 0.2 0.252 / 0.924. Margin 0.2 at 30k gave 0.347 / 1.088.
#   CarGoal1: 0.690 / 1.078 at 30k, 0.699 / 1.142 at 15k (BC-safe 0.610 / 1.429 over 50 episodes); w_safe
#   20 gave 0.658 / 1.199, margin 0.2 0.681 / 1.247 (50 episodes). 60k updates do not help: PointGoal1
#   0.397 / 1.334 (one seed at 2.10), CarGoal1 0.676 / 1.066.
# - critic_layer_norm stays False: LayerNorm critics generalise (CarGoal1 shield 79.6% at 15k) but the policy
#   loses (CarGoal1 0.700 / 1.321, PointGoal1 0.196 / 0.684 at 15k). 450 episodes instead of 150 meet both
#   CarGoal1 targets with this config (0.630 / 0.630, BC-safe 0.570 / 0.549; README [mix450]).
# - alpha=1: alpha 2-3 lowers reward more than cost (PointGoal1, "recovering": 0.366 / 1.312).
# - normalize_observations: the raw features differ in scale by about 100x (accelerometer std 8, lidar
#   0.05-0.3); standardised, the critic ranks states better (Spearman with the MC HJ value 0.53 -> 0.60).
# - expectile_safety=0.5, w_safe=10: Q_h estimates the behaviour's own HJ value, the pessimistic reading the
#   shield needs (with tau_h 0.9 on the same data the shield cuts goal_lidar's cost by at most 16%).
# - infeasible_reward_weight and cost_penalty stay 0: 0.3 / 0.1 measured c_norm 0.875 over the first 50
#   episodes per seed but 1.197 over 100 ("safe" teacher); with "recovering" irw 0.3 gave 0.437 / 1.361.
_SAFETY_GYM_GOAL = _SAFETY_GYM.replace(
    flow_episodes="recovering",
    safety_margin=0.1,
    normalize_observations=True,
    expectile_safety=0.5,
    w_safe=10.0,
)

_GENERIC = SafeFQLConfig(
    critic_hidden=(256, 256),
    value_hidden=(256, 256),
    actor_hidden=(256, 256, 256),
    flow_hidden=(256, 256, 256),
    alpha=1.0,
    w_safe=1.0,
    batch_size=256,
)


def default_config(env_id: str) -> SafeFQLConfig:
    """Per-environment defaults: the boat ids, Safety-Gymnasium Point Goal and Car Goal ids, other
    Safety-Gymnasium ids (``Safety...``), else a generic config."""
    if not isinstance(env_id, str):
        raise ValueError(f"env_id must be a string, got {type(env_id).__name__}")
    name = env_id.lower()
    if "boatnav" in name:
        return _BOAT
    if name.startswith(("safetypointgoal", "safetycargoal")):
        return _SAFETY_GYM_GOAL
    if name.startswith("safety") or "safety_gym" in name or "safetygym" in name:
        return _SAFETY_GYM
    return _GENERIC
