"""Scripted behaviour policies for Safety-Gymnasium Goal tasks (Point and Car agents).

Every policy maps a batch of flat observations to a batch of actions::

    policy(obs (N, obs_dim), rng: np.random.Generator) -> actions (N, 2) float64 in [-1, 1]

(a single observation ``(obs_dim,)`` gives a single action ``(2,)``).

Observation layout (``observation_layout(env)``): the flat vector is Gymnasium's flatten of
``env.unwrapped.task.obs_info.obs_space_dict``, keys in insertion order. For the Goal1 tasks:

- Point (60): accelerometer 0:3, velocimeter 3:6, gyro 6:9, magnetometer 9:12, goal_lidar 12:28,
  hazards_lidar 28:44, vases_lidar 44:60.
- Car (72): accelerometer 0:3, velocimeter 3:6, gyro 6:9, magnetometer 9:12, ballangvel_rear 12:15,
  ballquat_rear 15:24 (3x3 rotation matrix), goal_lidar 24:40, hazards_lidar 40:56, vases_lidar 56:72.

Lidar (safety_gymnasium ``_obs_lidar_pseudo``, 16 bins, max_dist 3, aliasing on): bin ``i`` covers ego
angles ``[i, i+1) * 2 pi / 16`` measured counter-clockwise from the agent's body x axis; it reads
``max(0, 3 - d) / 3`` for the nearest object of that kind at distance d (0 = nothing within 3 m), and an
object at fractional bin position ``b + a`` also writes ``a * s`` into bin b+1 and ``(1 - a) * s`` into bin
b-1. So the direction of a single object is ``(b + lidar[b+1] / lidar[b]) * 2 pi / 16`` with b the
strongest bin. Hazards (radius 0.2) cost when the agent centre is inside: a reading above 0.933.

Actions (measured on the MuJoCo models, see the tests): Point ``[forward force, turn rate]`` with its
forward direction along body +x and turn > 0 counter-clockwise; Car ``[left motor, right motor]``
with ``[1, 1]`` driving along body -y (its front bumper) and ``a0 - a1 > 0`` turning counter-clockwise,
so ``[forward + turn, forward - turn]``.

Policies: ``goal_lidar`` steers to the goal and ignores hazards (reward-greedy, incurs cost);
``hazard_aware`` adds a repulsion from nearby hazard-lidar bins and slows down when a hazard is close
ahead (much lower cost, still positive reward); ``hazard_recovery`` repels late and slowly, slips into
hazard edges and steers straight out (slow in-hazard states and their exits); ``noisy_*`` add Gaussian
action noise; ``random`` is uniform. ``make_safety_gym_policy(name, env)`` builds any of them for a made env.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

AGENT_KINDS = ("point", "car")
# Ego angle (radians, counter-clockwise from body +x) of each agent's forward direction.
FORWARD_ANGLE = {"point": 0.0, "car": -math.pi / 2}
DEFAULT_NOISE = 0.3  # action-noise std of the noisy_* policies
DEFAULT_SAFETY_GYM_MIXTURE = (
    "goal_lidar:0.2,noisy_goal_lidar:0.2,hazard_aware:0.3,noisy_hazard_aware:0.2,random:0.1"
)

POINT_GOAL_LAYOUT_SIZES = (
    ("accelerometer", 3),
    ("velocimeter", 3),
    ("gyro", 3),
    ("magnetometer", 3),
    ("goal_lidar", 16),
    ("hazards_lidar", 16),
    ("vases_lidar", 16),
)
CAR_GOAL_LAYOUT_SIZES = (
    ("accelerometer", 3),
    ("velocimeter", 3),
    ("gyro", 3),
    ("magnetometer", 3),
    ("ballangvel_rear", 3),
    ("ballquat_rear", 9),
    ("goal_lidar", 16),
    ("hazards_lidar", 16),
    ("vases_lidar", 16),
)


class Policy(Protocol):
    """A batched behaviour policy: ``(obs (N, d), rng) -> actions (N, a)``."""

    def __call__(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...


@dataclass(frozen=True)
class ObservationLayout:
    """Where each named part lies in the flat observation: ``slices[name] = (start, stop)``."""

    slices: Mapping[str, tuple[int, int]]
    obs_dim: int

    def __post_init__(self) -> None:
        for name, (start, stop) in self.slices.items():
            if not (0 <= start < stop <= self.obs_dim):
                raise ValueError(
                    f"observation part {name!r} spans [{start}, {stop}), outside [0, {self.obs_dim})"
                )

    @classmethod
    def from_sizes(cls, sizes: tuple[tuple[str, int], ...] | list[tuple[str, int]]) -> ObservationLayout:
        """Layout of consecutive parts ``[(name, size), ...]``."""
        slices, start = {}, 0
        for name, size in sizes:
            if int(size) <= 0:
                raise ValueError(f"observation part {name!r} must have a positive size, got {size}")
            slices[name] = (start, start + int(size))
            start += int(size)
        return cls(slices, start)

    def part(self, obs: np.ndarray, name: str) -> np.ndarray:
        """``obs[..., start:stop]`` of part ``name``."""
        if name not in self.slices:
            raise ValueError(f"observation has no part {name!r}; parts: {list(self.slices)}")
        start, stop = self.slices[name]
        return obs[..., start:stop]


def observation_layout(env: gym.Env) -> ObservationLayout:
    """Read the flat-observation layout of a made Safety-Gymnasium env (``env.unwrapped.task``)."""
    task = getattr(env.unwrapped, "task", None)
    space_dict = getattr(getattr(task, "obs_info", None), "obs_space_dict", None)
    if space_dict is None:
        raise ValueError(f"{env} is not a Safety-Gymnasium navigation env (no unwrapped.task.obs_info)")
    if not getattr(task, "observation_flatten", False):
        raise ValueError(
            f"{env} has dict (e.g. vision) observations; the scripted policies need flat vectors"
        )
    layout = ObservationLayout.from_sizes([(k, gym.spaces.flatdim(s)) for k, s in space_dict.spaces.items()])
    if env.observation_space.shape != (layout.obs_dim,):
        raise ValueError(
            f"observation space {env.observation_space} does not match its layout ({layout.obs_dim})"
        )
    return layout


def agent_kind(env: gym.Env) -> str:
    """``"point"`` or ``"car"``: the agent of a made Safety-Gymnasium env."""
    agent = getattr(getattr(env.unwrapped, "task", None), "agent", None)
    kind = type(agent).__name__.lower()
    if kind not in AGENT_KINDS:
        raise ValueError(f"scripted Safety-Gymnasium policies support agents {AGENT_KINDS}, got {kind!r}")
    return kind


def _check_kind(agent: str) -> str:
    if agent not in AGENT_KINDS:
        raise ValueError(f"agent must be one of {AGENT_KINDS}, got {agent!r}")
    return agent


def _check_nonneg(name: str, value: float) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


def _batch(obs: Any, layout: ObservationLayout) -> tuple[np.ndarray, bool]:
    obs = np.asarray(obs, dtype=np.float64)
    single = obs.ndim == 1
    obs2 = obs[None] if single else obs
    if obs2.ndim != 2 or obs2.shape[1] != layout.obs_dim:
        raise ValueError(
            f"expected obs of shape (N, {layout.obs_dim}) or ({layout.obs_dim},), got {obs.shape}"
        )
    return obs2, single


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


def lidar_direction(lidar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ego angle (N,) of the strongest object in a lidar batch (N, bins), and its reading (N,) (0: none)."""
    n_bins = lidar.shape[-1]
    b = np.argmax(lidar, axis=-1)
    peak = np.take_along_axis(lidar, b[:, None], axis=-1)[:, 0]
    nxt = np.take_along_axis(lidar, ((b + 1) % n_bins)[:, None], axis=-1)[:, 0]
    alias = np.clip(np.divide(nxt, peak, out=np.zeros_like(peak), where=peak > 0), 0.0, 1.0)
    return (b + alias) * (2 * np.pi / n_bins), peak


def _actions(agent: str, forward: np.ndarray, turn: np.ndarray) -> np.ndarray:
    if agent == "point":
        act = np.stack([forward, turn], axis=-1)
    else:
        act = np.stack([forward + turn, forward - turn], axis=-1)
    return np.clip(act, -1.0, 1.0)


@dataclass(frozen=True)
class GoalLidarPolicy:
    """Steer toward the goal-lidar direction, ignoring hazards (reward-greedy).

    Turn ``clip(turn_gain * e)`` for heading error e; drive forward with ``max(cos e, 0)``. With no goal
    within lidar range, drive forward on a wide arc (``search_turn``) until it shows up.
    """

    layout: ObservationLayout
    agent: str
    noise: float = 0.0
    turn_gain: float = 2.0
    search_turn: float = 0.3

    def __post_init__(self) -> None:
        _check_kind(self.agent)
        _check_nonneg("noise", self.noise)
        _check_nonneg("turn_gain", self.turn_gain)
        if not math.isfinite(self.search_turn):
            raise ValueError(f"search_turn must be a finite angle (radians), got {self.search_turn}")
        self.layout.part(np.zeros(self.layout.obs_dim), "goal_lidar")

    def heading(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Desired ego direction vectors (N, 2) and whether the goal is visible (N,)."""
        angle, peak = lidar_direction(self.layout.part(obs, "goal_lidar"))
        search = FORWARD_ANGLE[self.agent] + self.search_turn
        angle = np.where(peak > 0, angle, search)
        return np.stack([np.cos(angle), np.sin(angle)], axis=-1), peak > 0

    def steer(self, obs: np.ndarray) -> np.ndarray:
        """Noise-free actions (N, 2) for a batch of observations."""
        direction, _ = self.heading(obs)
        return self._steer_to(direction, np.ones(len(obs)))

    def _steer_to(self, direction: np.ndarray, speed: np.ndarray) -> np.ndarray:
        err = _wrap(np.arctan2(direction[:, 1], direction[:, 0]) - FORWARD_ANGLE[self.agent])
        turn = np.clip(self.turn_gain * err, -1.0, 1.0)
        forward = speed * np.maximum(np.cos(err), 0.0)
        return _actions(self.agent, forward, turn)

    def __call__(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Actions (N, 2) in [-1, 1]; Gaussian noise of std ``noise`` before clipping."""
        batch, single = _batch(obs, self.layout)
        act = self.steer(batch)
        if self.noise > 0:
            act = np.clip(act + rng.normal(0.0, self.noise, size=act.shape), -1.0, 1.0)
        return act[0] if single else act


@dataclass(frozen=True)
class HazardAwarePolicy(GoalLidarPolicy):
    """Goal seeking with hazard avoidance and a speed limit.

    Direction: the unit goal direction minus ``repulsion * sum_i w_i u(theta_i)`` over hazard-lidar bin
    centres, ``w_i = ((s_i - t) / (1 - t))^2`` for readings ``s_i > t`` (t = ``hazard_threshold``; 0.7 is
    0.9 m from a hazard centre). Speed: track ``max_speed`` (m/s, from the velocimeter), reduced by
    ``brake`` times the closeness of the nearest hazard within +-60 degrees ahead; the forward command may
    be negative (braking). Steering aims at ``v_des + drift_gain * (v_des - v)`` so that sideways drift
    (the Point slides: low damping, strong motor) is corrected instead of carrying it into a hazard.
    """

    hazard_threshold: float = 0.7
    repulsion: float = 3.0
    brake: float = 0.7
    max_speed: float = 0.6
    speed_gain: float = 2.0
    drift_gain: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0.0 <= self.hazard_threshold < 1.0):
            raise ValueError(f"hazard_threshold must lie in [0, 1), got {self.hazard_threshold}")
        if not (0.0 <= self.brake <= 1.0):
            raise ValueError(f"brake must lie in [0, 1], got {self.brake}")
        for name in ("repulsion", "max_speed", "speed_gain", "drift_gain"):
            _check_nonneg(name, getattr(self, name))
        zeros = np.zeros(self.layout.obs_dim)
        self.layout.part(zeros, "hazards_lidar")
        self.layout.part(zeros, "velocimeter")

    def steer(self, obs: np.ndarray) -> np.ndarray:
        """Noise-free actions (N, 2) for a batch of observations."""
        goal, _ = self.heading(obs)
        haz = self.layout.part(obs, "hazards_lidar")
        vel = self.layout.part(obs, "velocimeter")[:, :2]
        n_bins = haz.shape[-1]
        centres = (np.arange(n_bins) + 0.5) * (2 * np.pi / n_bins)
        units = np.stack([np.cos(centres), np.sin(centres)], axis=-1)  # (bins, 2)
        t = self.hazard_threshold
        w = (np.clip(haz - t, 0.0, None) / (1.0 - t)) ** 2  # (N, bins)
        direction = goal - self.repulsion * (w @ units)
        norm = np.linalg.norm(direction, axis=-1, keepdims=True)
        direction = np.divide(direction, norm, out=np.zeros_like(direction), where=norm > 1e-9)
        fwd = FORWARD_ANGLE[self.agent]
        ahead = np.abs(_wrap(centres - fwd)) < np.pi / 3
        close = np.clip((haz[:, ahead].max(axis=-1) - t) / (1.0 - t), 0.0, 1.0)
        speed = self.max_speed * (1.0 - self.brake * close)
        v_des = speed[:, None] * direction
        aim = v_des + self.drift_gain * (v_des - vel)
        err = _wrap(np.arctan2(aim[:, 1], aim[:, 0]) - fwd)
        turn = np.clip(self.turn_gain * err, -1.0, 1.0)
        v_fwd = vel @ np.array([np.cos(fwd), np.sin(fwd)])
        forward = np.clip(self.speed_gain * (speed * np.maximum(np.cos(err), 0.0) - v_fwd), -1.0, 1.0)
        return _actions(self.agent, forward, turn)


# Hazard-lidar reading at a hazard's edge (radius 0.2 m, lidar range 3 m): larger readings are inside.
HAZARD_EDGE_READING = 1.0 - 0.2 / 3.0


@dataclass(frozen=True)
class HazardRecoveryPolicy(HazardAwarePolicy):
    """Hazard-aware goal seeking that repels late, so it slips into hazard edges slowly, then leaves.

    Outside hazards it is :class:`HazardAwarePolicy` (the registry sets a late ``hazard_threshold``, a
    strong repulsion and a low ``max_speed``). Inside one (nearest hazard reading above
    ``inside_reading``) it escapes: it tracks ``exit_speed`` straight away from that hazard's centre,
    reversing when the hazard lies ahead and turning whichever body axis is nearer onto the way out.
    Its episodes hold what the other behaviours rarely show: slow in-hazard states and the actions
    that leave them.
    """

    inside_reading: float = HAZARD_EDGE_READING
    exit_speed: float = 0.4

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0.0 < self.inside_reading < 1.0):
            raise ValueError(f"inside_reading must lie in (0, 1), got {self.inside_reading}")
        _check_nonneg("exit_speed", self.exit_speed)

    def steer(self, obs: np.ndarray) -> np.ndarray:
        """Noise-free actions (N, 2) for a batch of observations."""
        outside = super().steer(obs)
        angle, peak = lidar_direction(self.layout.part(obs, "hazards_lidar"))
        vel = self.layout.part(obs, "velocimeter")[:, :2]
        fwd = FORWARD_ANGLE[self.agent]
        err = _wrap(angle + np.pi - fwd)  # way out (away from the hazard centre) relative to forward
        v_fwd = vel @ np.array([np.cos(fwd), np.sin(fwd)])
        forward = np.clip(self.speed_gain * (self.exit_speed * np.cos(err) - v_fwd), -1.0, 1.0)
        axis_err = np.where(np.cos(err) >= 0, err, _wrap(err + np.pi))
        turn = np.clip(self.turn_gain * axis_err, -1.0, 1.0)
        escape = _actions(self.agent, forward, turn)
        return np.where((peak > self.inside_reading)[:, None], escape, outside)


@dataclass(frozen=True)
class RandomPolicy:
    """Uniform actions in [-1, 1]^2."""

    layout: ObservationLayout
    agent: str = field(default="point")

    def __post_init__(self) -> None:
        _check_kind(self.agent)

    def __call__(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Uniform random actions (N, 2)."""
        batch, single = _batch(obs, self.layout)
        act = rng.uniform(-1.0, 1.0, size=(batch.shape[0], 2))
        return act[0] if single else act


PolicyFactory = Callable[..., Policy]
# hazard_recovery: repulsion from 0.35 m off a hazard centre (0.15 m outside its edge), at 0.4 m/s.
_RECOVERY_DEFAULTS = {"hazard_threshold": 0.85, "repulsion": 4.0, "max_speed": 0.4}
SAFETY_GYM_POLICIES: dict[str, tuple[PolicyFactory, dict[str, Any], str]] = {
    "goal_lidar": (GoalLidarPolicy, {}, "steer to the goal lidar, ignore hazards (reward-greedy)"),
    "noisy_goal_lidar": (
        GoalLidarPolicy,
        {"noise": DEFAULT_NOISE},
        f"goal_lidar with Gaussian action noise (std {DEFAULT_NOISE})",
    ),
    "hazard_aware": (HazardAwarePolicy, {}, "goal seeking with hazard-lidar repulsion and braking"),
    "noisy_hazard_aware": (
        HazardAwarePolicy,
        {"noise": DEFAULT_NOISE},
        f"hazard_aware with Gaussian action noise (std {DEFAULT_NOISE})",
    ),
    "hazard_recovery": (
        HazardRecoveryPolicy,
        _RECOVERY_DEFAULTS,
        "hazard_aware that repels late and slowly, so it slips into hazard edges, then steers out",
    ),
    "noisy_hazard_recovery": (
        HazardRecoveryPolicy,
        {**_RECOVERY_DEFAULTS, "noise": DEFAULT_NOISE},
        f"hazard_recovery with Gaussian action noise (std {DEFAULT_NOISE})",
    ),
    "random": (RandomPolicy, {}, "uniform actions in [-1, 1]^2"),
}


def list_safety_gym_policies() -> dict[str, str]:
    """Policy names usable in a mixture -> one-line descriptions."""
    return {name: desc for name, (_, _, desc) in SAFETY_GYM_POLICIES.items()}


def make_safety_gym_policy(
    name: str,
    env: gym.Env | None = None,
    *,
    layout: ObservationLayout | None = None,
    agent: str | None = None,
    **overrides: Any,
) -> Policy:
    """Build policy ``name`` for a made env (layout and agent read from it) or an explicit layout/agent.

    ``overrides`` replace the registry defaults (e.g. ``noise=0.5``).
    """
    if name not in SAFETY_GYM_POLICIES:
        raise ValueError(
            f"unknown Safety-Gymnasium policy {name!r}; available: {sorted(SAFETY_GYM_POLICIES)}"
        )
    if env is None and (layout is None or agent is None):
        raise ValueError("make_safety_gym_policy needs an env, or both layout= and agent=")
    if env is not None:
        if env.action_space.shape != (2,):
            raise ValueError(
                f"scripted Safety-Gymnasium policies need a (2,) action space, got {env.action_space}"
            )
        layout = observation_layout(env) if layout is None else layout
        agent = agent_kind(env) if agent is None else agent
    factory, defaults, _ = SAFETY_GYM_POLICIES[name]
    return factory(layout=layout, agent=_check_kind(agent), **{**defaults, **overrides})


__all__ = [
    "AGENT_KINDS",
    "CAR_GOAL_LAYOUT_SIZES",
    "DEFAULT_NOISE",
    "DEFAULT_SAFETY_GYM_MIXTURE",
    "FORWARD_ANGLE",
    "POINT_GOAL_LAYOUT_SIZES",
    "SAFETY_GYM_POLICIES",
    "GoalLidarPolicy",
    "HAZARD_EDGE_READING",
    "HazardAwarePolicy",
    "HazardRecoveryPolicy",
    "ObservationLayout",
    "Policy",
    "RandomPolicy",
    "agent_kind",
    "lidar_direction",
    "list_safety_gym_policies",
    "make_safety_gym_policy",
    "observation_layout",
]
