"""Behaviour policies for BoatNav-v0 datasets, and mixtures of named policies drawn once per episode.

Every policy maps a batch of boat states to a batch of actions::

    policy(obs (N, 2), rng: np.random.Generator) -> actions (N, 2) float32 in [-1, 1]

The boat only uses the direction of the action (u = a / ||a||), so the policies return unit vectors.

- ``goal``: heads straight for the goal and ignores the rocks (often crashes).
- ``safe_expert``: oracle-guided. Among ``n_candidates`` evenly spaced directions (plus the exact goal
  direction), keep those whose next state has HJ oracle value ``<= -margin`` and take the one closest to
  the goal direction; if none qualifies, take the direction that minimises the next state's value.
- ``noisy_goal`` / ``noisy_safe_expert``: the same, with Gaussian noise of std ``noise_std`` radians added
  to the angle of the chosen direction (independently per state and step).
- ``random``: uniform in [-1, 1]^2.

``Mixture.parse("goal:0.3,safe_expert:0.7")`` validates a weighted mixture; ``Mixture.assign`` gives each
episode one policy (stratified: the counts match the weights up to rounding, the order is shuffled).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from safefql.envs import boat

# Default behaviour mixture for BoatNav-v0 datasets: both safe and violating episodes, and the whole box.
# Measured on the default dataset (2500 episodes, seed 0, 80% uniform / 20% safe starts, decisions held for
# 10 steps): 16.1% of the episodes violate (goal 27.6%, noisy_goal 30.7%, random 20.2%, safe_expert 6.7%
# and noisy_safe_expert 10.9%, the experts' violations being mostly starts inside or next to a rock).
# Mean returns: goal -451, safe_expert -494, noisy_safe_expert -519, random -701, so a learned policy can
# beat behaviour cloning of the safe episodes by picking the goal-ward safe actions.
DEFAULT_BOAT_MIXTURE = "safe_expert:0.3,noisy_safe_expert:0.25,goal:0.1,noisy_goal:0.15,random:0.2"
DEFAULT_NOISE_STD = 0.6  # radians of Gaussian angle noise for the noisy_* policies
DEFAULT_SAFETY_MARGIN = 0.1  # safe_expert keeps the next state's oracle value <= -margin when it can
DEFAULT_CANDIDATES = 32  # evenly spaced candidate directions of safe_expert


class Policy(Protocol):
    """A batched behaviour policy: ``(obs (N, d), rng) -> actions (N, a)``."""

    def __call__(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...


def _check_obs(obs: Any) -> np.ndarray:
    obs = np.asarray(obs, dtype=np.float64)
    if obs.ndim != 2 or obs.shape[1] != 2:
        raise ValueError(f"boat policies expect obs of shape (N, 2), got {obs.shape}")
    return obs


def _check_std(noise_std: float) -> float:
    if not (math.isfinite(noise_std) and noise_std >= 0):
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std}")
    return float(noise_std)


def _angles_to_actions(angle: np.ndarray, noise_std: float, rng: np.random.Generator) -> np.ndarray:
    if noise_std > 0:
        angle = angle + rng.normal(0.0, noise_std, size=angle.shape)
    return np.stack([np.cos(angle), np.sin(angle)], axis=-1).astype(np.float32)


def _goal_angle(obs: np.ndarray) -> np.ndarray:
    d = boat.GOAL - obs
    return np.arctan2(d[:, 1], d[:, 0])


@dataclass(frozen=True)
class GoalPolicy:
    """Thrust straight at the goal (plus optional angle noise); blind to the rocks."""

    noise_std: float = 0.0

    def __post_init__(self) -> None:
        _check_std(self.noise_std)

    def __call__(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Unit actions (N, 2) pointing from ``obs`` to the goal."""
        obs = _check_obs(obs)
        return _angles_to_actions(_goal_angle(obs), self.noise_std, rng)


@dataclass(frozen=True)
class RandomPolicy:
    """Uniform actions in [-1, 1]^2."""

    def __call__(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Uniform random actions (N, 2)."""
        obs = _check_obs(obs)
        return rng.uniform(-1.0, 1.0, size=(obs.shape[0], 2)).astype(np.float32)


@dataclass(frozen=True)
class SafeExpertPolicy:
    """Oracle-guided goal seeking: the most goal-ward direction whose next state keeps V <= -margin.

    ``oracle`` is any object with ``value(points (..., 2)) -> (...)`` (``BoatOracle``); ``None`` loads
    the cached ground-truth oracle on first use.
    """

    margin: float = DEFAULT_SAFETY_MARGIN
    n_candidates: int = DEFAULT_CANDIDATES
    noise_std: float = 0.0
    oracle: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_std(self.noise_std)
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"margin must be a finite number >= 0, got {self.margin}")
        if int(self.n_candidates) != self.n_candidates or self.n_candidates < 4:
            raise ValueError(f"n_candidates must be an integer >= 4, got {self.n_candidates}")

    def _oracle(self) -> Any:
        if self.oracle is None:
            from safefql.envs.oracle import load_boat_oracle

            object.__setattr__(self, "oracle", load_boat_oracle())
        return self.oracle

    def direction_angles(self, obs: np.ndarray) -> np.ndarray:
        """Noise-free chosen thrust angles (N,) for states ``obs`` (N, 2)."""
        obs = _check_obs(obs)
        goal = _goal_angle(obs)
        if obs.shape[0] == 0:
            return goal
        oracle = self._oracle()
        # The goal direction has zero angular gap, so wherever it is admissible it is the answer; only
        # the other states need the full candidate search (same result, much less oracle work).
        goal_next = boat.step_state(obs, np.stack([np.cos(goal), np.sin(goal)], axis=-1))
        out = goal.copy()
        rest = np.flatnonzero(oracle.value(goal_next) > -self.margin)
        if rest.size == 0:
            return out
        p, g = obs[rest], goal[rest]
        fixed = 2 * np.pi * np.arange(int(self.n_candidates)) / int(self.n_candidates)
        cand = np.concatenate([g[:, None], np.broadcast_to(fixed, (rest.size, fixed.size))], axis=1)  # (M, K)
        dirs = np.stack([np.cos(cand), np.sin(cand)], axis=-1)  # (M, K, 2)
        value = oracle.value(boat.step_state(p[:, None, :], dirs))  # (M, K)
        gap = np.abs(np.angle(np.exp(1j * (cand - g[:, None]))))  # angular distance to the goal direction
        ok = value <= -self.margin
        pick_safe = np.argmin(np.where(ok, gap, np.inf), axis=1)
        pick_min = np.argmin(value, axis=1)
        pick = np.where(ok.any(axis=1), pick_safe, pick_min)
        out[rest] = cand[np.arange(rest.size), pick]
        return out

    def __call__(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Unit actions (N, 2): the safest goal-ward direction, plus optional angle noise."""
        return _angles_to_actions(self.direction_angles(obs), self.noise_std, rng)


@dataclass(frozen=True)
class PolicySpec:
    """A registry entry: a factory of fresh policy objects and a one-line description."""

    factory: Callable[..., Policy]
    description: str


BOAT_POLICIES: dict[str, PolicySpec] = {
    "goal": PolicySpec(lambda **kw: GoalPolicy(**kw), "head straight for the goal, ignoring the rocks"),
    "noisy_goal": PolicySpec(
        lambda noise_std=DEFAULT_NOISE_STD, **kw: GoalPolicy(noise_std=noise_std, **kw),
        f"goal with Gaussian angle noise (std {DEFAULT_NOISE_STD} rad)",
    ),
    "safe_expert": PolicySpec(
        lambda **kw: SafeExpertPolicy(**kw),
        f"HJ-oracle guided: most goal-ward direction keeping V <= -{DEFAULT_SAFETY_MARGIN}",
    ),
    "noisy_safe_expert": PolicySpec(
        lambda noise_std=DEFAULT_NOISE_STD, **kw: SafeExpertPolicy(noise_std=noise_std, **kw),
        f"safe_expert with Gaussian angle noise (std {DEFAULT_NOISE_STD} rad)",
    ),
    "random": PolicySpec(lambda **kw: RandomPolicy(**kw), "uniform actions in [-1, 1]^2"),
}


def list_boat_policies() -> dict[str, str]:
    """Names of the boat behaviour policies and their one-line descriptions."""
    return {name: spec.description for name, spec in BOAT_POLICIES.items()}


def make_boat_policy(name: str, **kwargs: Any) -> Policy:
    """Build the named boat policy (``kwargs`` go to its constructor, e.g. ``noise_std``)."""
    if name not in BOAT_POLICIES:
        raise ValueError(f"unknown boat policy {name!r}; available: {', '.join(BOAT_POLICIES)}")
    return BOAT_POLICIES[name].factory(**kwargs)


@dataclass(frozen=True)
class Mixture:
    """A weighted mixture of named policies; weights are normalised to sum to 1."""

    names: tuple[str, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.names) == 0:
            raise ValueError("a mixture needs at least one policy")
        if len(self.names) != len(self.weights):
            raise ValueError(f"mixture has {len(self.names)} names but {len(self.weights)} weights")
        if len(set(self.names)) != len(self.names):
            dup = sorted({n for n in self.names if self.names.count(n) > 1})
            raise ValueError(f"mixture lists policy {dup[0]!r} more than once")
        for name, w in zip(self.names, self.weights, strict=True):
            if not (isinstance(w, int | float) and math.isfinite(w) and w > 0):
                raise ValueError(f"mixture weight of {name!r} must be a finite number > 0, got {w!r}")
        total = float(sum(self.weights))
        object.__setattr__(self, "weights", tuple(float(w) / total for w in self.weights))

    @classmethod
    def parse(cls, text: str, available: Iterable[str] | None = None) -> Mixture:
        """Parse ``"name:weight,name:weight,..."`` (a bare ``name`` means weight 1).

        ``available`` restricts the names; an unknown name raises ValueError listing the valid ones.
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError("mixture string is empty; expected e.g. 'goal:0.5,random:0.5'")
        names: list[str] = []
        weights: list[float] = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                raise ValueError(f"mixture {text!r} has an empty entry")
            name, sep, wtext = part.partition(":")
            name = name.strip()
            if not name:
                raise ValueError(f"mixture entry {part!r} has no policy name")
            if sep:
                try:
                    weight = float(wtext)
                except ValueError:
                    raise ValueError(
                        f"mixture weight of {name!r} is not a number: {wtext.strip()!r}"
                    ) from None
            else:
                weight = 1.0
            names.append(name)
            weights.append(weight)
        if available is not None:
            avail = list(available)
            for name in names:
                if name not in avail:
                    raise ValueError(f"unknown policy {name!r} in mixture; available: {', '.join(avail)}")
        return cls(tuple(names), tuple(weights))

    def assign(self, episodes: int, rng: np.random.Generator) -> np.ndarray:
        """Policy index (into ``names``) of each of ``episodes`` episodes: stratified counts, shuffled."""
        if int(episodes) != episodes or episodes < 0:
            raise ValueError(f"episodes must be a non-negative integer, got {episodes}")
        episodes = int(episodes)
        w = np.asarray(self.weights)
        counts = np.floor(w * episodes).astype(np.int64)
        rest = episodes - int(counts.sum())
        if rest > 0:  # largest remainders first; ties broken at random
            frac = w * episodes - counts
            order = np.lexsort((rng.random(w.size), -frac))
            counts[order[:rest]] += 1
        idx = np.repeat(np.arange(w.size), counts)
        return rng.permutation(idx)

    def to_dict(self) -> dict[str, float]:
        """``{name: normalised weight}``."""
        return dict(zip(self.names, self.weights, strict=True))

    def __str__(self) -> str:
        return ",".join(f"{n}:{w:.6g}" for n, w in zip(self.names, self.weights, strict=True))


def as_mixture(
    mixture: str | Mixture | Mapping[str, float], available: Iterable[str] | None = None
) -> Mixture:
    """Accept a mixture string, a ``Mixture`` or a ``{name: weight}`` mapping; validate names."""
    if isinstance(mixture, str):
        return Mixture.parse(mixture, available)
    if isinstance(mixture, Mapping):
        mixture = Mixture(tuple(mixture), tuple(mixture.values()))
    if not isinstance(mixture, Mixture):
        raise ValueError(f"mixture must be a string, a Mixture or a mapping, got {type(mixture).__name__}")
    if available is not None:
        avail = list(available)
        for name in mixture.names:
            if name not in avail:
                raise ValueError(f"unknown policy {name!r} in mixture; available: {', '.join(avail)}")
    return mixture


__all__ = [
    "BOAT_POLICIES",
    "DEFAULT_BOAT_MIXTURE",
    "GoalPolicy",
    "Mixture",
    "Policy",
    "PolicySpec",
    "RandomPolicy",
    "SafeExpertPolicy",
    "as_mixture",
    "list_boat_policies",
    "make_boat_policy",
]
