"""Run any agent with and without a SafeFQL shield, side by side, from the same seeded start states.

``evaluate(env_id, agent, shield=...)`` returns an :class:`EvalReport` (return, episode cost, violating
episodes, intervention rate, steps/s; trajectories on the boat) that prints as a rich table, writes JSON
(atomically) and, for the boat, plots both sets of trajectories over the HJ oracle's value map.

Agents: ``"random"`` (uniform in the action box, one Generator per episode seeded from ``seed``),
``"zero"``, ``"goal"`` (BoatNav-v0 only: thrust straight at the goal, ignoring the rocks), a
``"module:callable"`` import string, any callable ``obs -> action``, or an object with a
Stable-Baselines3-style ``predict(obs, deterministic=True)`` (its first element is the action).
User agents are called one observation at a time; their actions are cast to the action space dtype.

On ``safefql/BoatNav-v0`` the episodes run batched (all starts at once) through ``BoatNavVectorEnv`` and
:class:`~safefql.shields.wrapper.SafeFQLVectorShield` (NumPy equations); ``batched=False`` runs them one by
one through the MuJoCo ``BoatNavEnv`` and :class:`~safefql.shields.wrapper.SafeFQLShield` instead. Both give
the same trajectories to float precision (tested). Every other env runs one episode at a time.

:class:`BoatOracleModel` is the ground-truth shield model of the boat in the policy protocol
(``Q_h(s, a) = V(step_state(s, a))`` with ``V`` the HJ oracle): a reference to compare learned shields with.
"""

from __future__ import annotations

import importlib
import io
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from safefql._io import atomic_write_bytes, atomic_write_text
from safefql.shields.wrapper import FALLBACKS, MODES, SafeFQLShield, SafeFQLVectorShield, resolve_model

BOAT_ID = "safefql/BoatNav-v0"
BOAT_FAMILY = ("safefql/BoatNav-v0", "safefql/BoatNavDynamic-v0")
BUILTIN_AGENTS = ("random", "zero", "goal")
STARTS = ("safe", "uniform")


# -------------------------------------------------------------------------------------------- oracle model
class BoatOracleModel:
    """The boat's ground-truth safety model in the SafeFQL policy protocol (duck-typed ``SafeFQLPolicy``).

    ``safety_q(s, a) = V(step_state(s, a))`` and ``safety_value(s) = V(s)``, with ``V`` the HJ avoid value of
    ``safefql.envs.oracle`` (> 0: a rock cannot be avoided). The actor tries ``directions`` unit thrust
    directions and takes, among those with ``V(next) <= -actor_margin``, the one pointing most directly at the
    goal; if none qualifies, the one with the smallest ``V(next)``. Deterministic (``rng`` is ignored).

    >>> model = BoatOracleModel()
    >>> bool(model.safety_q([-1.0, 0.5], [1.0, 0.0]) > 0)  # 0.1 left of the upper rock, heading into it
    True
    >>> bool(model.safety_q([-2.5, 0.0], [1.0, 0.0]) <= 0)  # far upstream: safe
    True
    >>> [round(float(x), 3) for x in model.act([0.5, 0.0])]  # safe and in front of the goal: go straight
    [1.0, 0.0]
    """

    env_id = BOAT_ID

    def __init__(self, delta: float = 0.02, directions: int = 32, actor_margin: float = 0.02) -> None:
        from safefql.envs import boat
        from safefql.envs.oracle import load_boat_oracle

        if isinstance(directions, bool) or int(directions) != directions or directions < 4:
            raise ValueError(f"directions must be an integer >= 4, got {directions!r}")
        if not (math.isfinite(actor_margin) and actor_margin >= 0):
            raise ValueError(f"actor_margin must be a finite number >= 0, got {actor_margin!r}")
        self._boat = boat
        self._oracle = load_boat_oracle()
        self.delta = float(delta)
        self.actor_margin = float(actor_margin)
        ang = 2 * np.pi * np.arange(int(directions)) / int(directions)
        self._dirs = np.stack([np.cos(ang), np.sin(ang)], -1)
        self.observation_space = gym.spaces.Box(boat.BOX_LOW.copy(), boat.BOX_HIGH.copy(), dtype=np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

    def safety_value(self, obs: Any) -> np.ndarray:
        """HJ value ``V(s)`` (``<= 0``: the boat can stay out of the rocks)."""
        return self._oracle.value(obs)

    def safety_q(self, obs: Any, action: Any) -> np.ndarray:
        """``V(step_state(s, a))``: the HJ value after taking ``a`` for one step."""
        return self._oracle.value(self._boat.step_state(obs, action))

    def act(self, obs: Any, rng: Any = None) -> np.ndarray:
        """Goal-seeking among the directions that keep ``V <= -actor_margin``; batched or single."""
        p = np.asarray(obs, dtype=np.float64)
        v = self._oracle.value(self._boat.step_state(p[..., None, :], self._dirs))  # (..., D)
        to_goal = self._boat.GOAL - p
        cos = (to_goal[..., None, :] * self._dirs).sum(-1)
        score = np.where(v <= -self.actor_margin, -cos, np.inf)
        best = np.where(np.isfinite(score).any(-1), score.argmin(-1), v.argmin(-1))
        return self._dirs[best].astype(np.float32)


# ------------------------------------------------------------------------------------------------ agents
class _Agent:
    """Uniform batched interface over the accepted agent kinds: ``act(obs (N, ...), episodes (N,))``."""

    def __init__(self, spec: Any, env_id: str, action_space: gym.spaces.Box, seed: int) -> None:
        self.action_space = action_space
        self.shape = tuple(action_space.shape)
        self.dtype = np.dtype(action_space.dtype)
        self.seed = int(seed)
        self._rngs: dict[int, np.random.Generator] = {}
        self._fn: Callable[[np.ndarray], Any] | None = None
        self.kind = "callable"
        if isinstance(spec, str):
            if spec in BUILTIN_AGENTS:
                if spec == "goal" and env_id != BOAT_ID:
                    raise ValueError(
                        f"agent 'goal' (straight at the goal) is defined for {BOAT_ID} only, not {env_id!r}; "
                        "pass a callable obs -> action or 'module:callable'"
                    )
                self.kind, self.name = spec, spec
                return
            if ":" not in spec:
                raise ValueError(
                    f"unknown agent {spec!r}: use one of {BUILTIN_AGENTS}, a 'module:callable' string, a "
                    "callable obs -> action, or an object with .predict(obs, deterministic=True)"
                )
            self.name = spec
            spec = import_agent(spec)
        else:
            self.name = getattr(spec, "__name__", type(spec).__name__)
        predict = getattr(spec, "predict", None)
        if callable(predict):
            self.kind = "predict"
            self._fn = lambda o: predict(o, deterministic=True)[0]
        elif callable(spec):
            self._fn = spec
        else:
            raise ValueError(
                f"agent {self.name!r} is neither callable nor has a .predict method "
                f"(got {type(spec).__name__})"
            )

    def new_run(self) -> None:
        """Forget per-episode state, so a second run sees the same random proposals as the first."""
        self._rngs = {}

    def _rng(self, episode: int) -> np.random.Generator:
        if episode not in self._rngs:
            self._rngs[episode] = np.random.default_rng([self.seed, int(episode)])
        return self._rngs[episode]

    def act(self, obs: np.ndarray, episodes: np.ndarray) -> np.ndarray:
        n = obs.shape[0]
        if self.kind == "zero":
            return np.zeros((n, *self.shape), dtype=self.dtype)
        if self.kind == "goal":
            from safefql.envs import boat

            d = boat.GOAL - np.asarray(obs, dtype=np.float64)
            norm = np.linalg.norm(d, axis=-1, keepdims=True)
            return np.divide(d, norm, out=np.zeros_like(d), where=norm > 0).astype(self.dtype)
        if self.kind == "random":
            low, high = self.action_space.low, self.action_space.high
            return np.stack([self._rng(e).uniform(low, high) for e in episodes]).astype(self.dtype)
        out = np.empty((n, *self.shape), dtype=self.dtype)
        for i in range(n):
            a = np.asarray(self._fn(obs[i]))
            if a.shape != self.shape:
                raise ValueError(
                    f"agent {self.name!r} returned an action of shape {a.shape}; expected {self.shape}"
                )
            out[i] = a
        return out


def import_agent(spec: str) -> Any:
    """Import ``"package.module:attr.path"`` and return the object (ValueError naming what is missing)."""
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise ValueError(f"agent import string must look like 'module:callable', got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import module {module_name!r} for agent {spec!r}: {e}") from e
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"agent {spec!r}: {type(obj).__name__} {obj!r} has no attribute {part!r}")
        obj = getattr(obj, part)
    return obj


# ------------------------------------------------------------------------------------------------ report
def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


@dataclass
class RunResult:
    """Per-episode results of one run (shielded or not); arrays have one entry per episode."""

    returns: np.ndarray
    costs: np.ndarray
    violations: np.ndarray
    interventions: np.ndarray
    steps: np.ndarray
    wall_s: float
    corrections: np.ndarray | None = None  # per episode: sum over steps of ||applied - proposed||
    trajectories: np.ndarray | None = None  # (episodes, steps + 1, obs_dim), boat only

    def __post_init__(self) -> None:
        if self.corrections is None:
            self.corrections = np.zeros(np.shape(self.returns))

    @property
    def mean_return(self) -> float:
        """Mean episode return."""
        return float(np.mean(self.returns))

    @property
    def mean_cost(self) -> float:
        """Mean episode cost (number of steps with ``cost > 0``, weighted by the cost)."""
        return float(np.mean(self.costs))

    @property
    def violation_rate(self) -> float:
        """Fraction of episodes with any cost."""
        return float(np.mean(self.violations))

    @property
    def intervention_rate(self) -> float:
        """Interventions per step, over all episodes."""
        return float(self.interventions.sum() / max(int(self.steps.sum()), 1))

    @property
    def mean_correction(self) -> float:
        """Mean ``||applied - proposed||`` over the steps where the shield intervened (0 if it never did)."""
        k = int(self.interventions.sum())
        return float(self.corrections.sum() / k) if k else 0.0

    @property
    def steps_per_s(self) -> float:
        """Environment steps per second of wall time (agent, shield and env together)."""
        return float(self.steps.sum() / self.wall_s) if self.wall_s > 0 else math.inf

    def summary(self) -> dict[str, float]:
        """The headline numbers."""
        return {
            "mean_return": self.mean_return,
            "mean_cost": self.mean_cost,
            "violation_rate": self.violation_rate,
            "violating_episodes": int(self.violations.sum()),
            "intervention_rate": self.intervention_rate,
            "mean_correction": self.mean_correction,
            "steps_per_s": self.steps_per_s,
            "wall_s": float(self.wall_s),
        }

    def to_dict(self, include_trajectories: bool = True) -> dict[str, Any]:
        """JSON-ready dict: summary plus per-episode lists (and trajectories if present and asked for)."""
        d: dict[str, Any] = {
            **self.summary(),
            "returns": self.returns.tolist(),
            "costs": self.costs.tolist(),
            "violations": self.violations.astype(bool).tolist(),
            "interventions": self.interventions.tolist(),
            "corrections": self.corrections.tolist(),
            "steps": self.steps.tolist(),
        }
        if include_trajectories and self.trajectories is not None:
            d["trajectories"] = np.round(self.trajectories, 6).tolist()
        return d


@dataclass
class EvalReport:
    """What :func:`evaluate` measured: the agent alone (``unshielded``) and shielded (``shielded``)."""

    env_id: str
    agent: str
    shield: str | None
    mode: str
    fallback: str
    delta: float | None
    episodes: int
    starts: str
    seed: int
    batched: bool
    start_states: np.ndarray
    unshielded: RunResult
    shielded: RunResult | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def runs(self) -> dict[str, RunResult]:
        """``{"unshielded": ..., "shielded": ...}`` (the latter only when a shield was given)."""
        out = {"unshielded": self.unshielded}
        if self.shielded is not None:
            out["shielded"] = self.shielded
        return out

    def table(self) -> Any:
        """A ``rich.table.Table`` with one row per run."""
        from rich.table import Table

        title = (
            f"{self.env_id}: agent {self.agent!r}, {self.episodes} episodes, {self.starts} starts, "
            f"seed {self.seed}"
        )
        if self.shield is not None:
            title += (
                f"\nshield {self.shield} (mode {self.mode}, fallback {self.fallback}, delta {self.delta})"
            )
        t = Table(title=title)
        cols = (
            "run",
            "mean return",
            "mean cost",
            "violating episodes",
            "interventions/step",
            "mean correction",
        )
        for col in (*cols, "steps/s"):
            t.add_column(col, justify="left" if col == "run" else "right")
        for name, r in self.runs().items():
            label = name if name == "unshielded" or self.mode == "shield" else "SafeFQL policy"
            t.add_row(
                label,
                _fmt(r.mean_return),
                _fmt(r.mean_cost),
                f"{int(r.violations.sum())}/{r.violations.size} ({100 * r.violation_rate:.1f}%)",
                f"{r.intervention_rate:.4f}",
                f"{r.mean_correction:.3f}",
                f"{r.steps_per_s:,.0f}",
            )
        return t

    def to_dict(self, include_trajectories: bool = True) -> dict[str, Any]:
        """JSON-ready dict of the whole report."""
        from safefql import __version__

        delta = self.delta
        if delta is not None and not math.isfinite(delta):
            delta = str(delta)
        return {
            "env_id": self.env_id,
            "agent": self.agent,
            "shield": self.shield,
            "mode": self.mode,
            "fallback": self.fallback,
            "delta": delta,
            "episodes": self.episodes,
            "starts": self.starts,
            "seed": self.seed,
            "batched": self.batched,
            "safefql_version": __version__,
            "start_states": np.asarray(self.start_states).tolist(),
            "runs": {k: v.to_dict(include_trajectories) for k, v in self.runs().items()},
            **({"extra": self.extra} if self.extra else {}),
        }

    def to_json(self, path: str | os.PathLike, include_trajectories: bool = True) -> Path:
        """Write :meth:`to_dict` as JSON, atomically; returns the path."""
        return atomic_write_text(path, json.dumps(self.to_dict(include_trajectories), indent=1) + "\n")

    def plot(self, path: str | os.PathLike, max_trajectories: int | None = None) -> Path:
        """Boat only: trajectories without / with the shield over the oracle's value map (.png/.pdf/.svg)."""
        if self.env_id != BOAT_ID or self.unshielded.trajectories is None:
            raise ValueError(f"plot needs boat trajectories ({BOAT_ID}); this report is for {self.env_id!r}")
        path = Path(path)
        fmt = path.suffix.lstrip(".").lower()
        if fmt not in ("png", "pdf", "svg"):
            raise ValueError(f"plot path must end in .png, .pdf or .svg, got {path.name!r}")
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        from matplotlib.figure import Figure

        from safefql.envs.oracle import load_boat_oracle

        del plt  # Figure() without pyplot: no global state, works under any backend
        oracle = load_boat_oracle()
        runs = self.runs()
        fig = Figure(figsize=(5.2 * len(runs), 4.6), layout="constrained")
        axes = fig.subplots(1, len(runs), squeeze=False)[0]
        for ax, (name, r) in zip(axes, runs.items(), strict=True):
            im = oracle.plot(ax)
            traj = r.trajectories
            k = traj.shape[0] if max_trajectories is None else min(int(max_trajectories), traj.shape[0])
            for i in range(k):
                color = "tab:red" if r.violations[i] else "black"
                ax.plot(traj[i, :, 0], traj[i, :, 1], color=color, linewidth=0.8, alpha=0.7, zorder=5)
            ax.plot(traj[:k, 0, 0], traj[:k, 0, 1], "o", color="white", mec="black", ms=3, zorder=6)
            label = "SafeFQL policy" if name == "shielded" and self.mode == "policy" else name
            ax.set_title(
                f"{label}: return {r.mean_return:.0f}, "
                f"violations {int(r.violations.sum())}/{r.violations.size}"
                + (f", interventions {r.intervention_rate:.3f}/step" if name == "shielded" else ""),
                fontsize=9,
            )
        fig.colorbar(im, ax=axes.tolist(), shrink=0.8, label="oracle HJ value V (> 0: unavoidable collision)")
        fig.suptitle(f"{self.env_id}, agent {self.agent!r} (red: episodes that hit a rock)", fontsize=10)
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=120)
        return atomic_write_bytes(path, buf.getvalue())


# ------------------------------------------------------------------------------------------------ runs
def _check_cost(info: dict[str, Any], env_id: str) -> float:
    if "cost" not in info:
        raise ValueError(
            f"env {env_id!r} reports no info['cost']; evaluate needs the safefql cost convention"
        )
    return float(info["cost"])


def _run_sequential(
    make_env: Callable[[], gym.Env],
    env_id: str,
    agent: _Agent,
    reset_args: list[dict[str, Any]],
    max_steps: int,
    record: bool,
    policy_mode: bool = False,
) -> tuple[RunResult, np.ndarray]:
    env = make_env()
    n = len(reset_args)
    returns, costs = np.zeros(n), np.zeros(n)
    interventions, steps = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    corrections = np.zeros(n)
    starts, trajs = [], []
    agent.new_run()
    t0 = time.perf_counter()
    try:
        for i, kwargs in enumerate(reset_args):
            obs, _ = env.reset(**kwargs)
            starts.append(np.array(obs, dtype=np.float64))
            traj = [starts[-1]] if record else None
            for _ in range(max_steps):
                action = None if policy_mode else agent.act(np.asarray(obs)[None], np.array([i]))[0]
                obs, reward, terminated, truncated, info = env.step(action)
                returns[i] += float(reward)
                costs[i] += _check_cost(info, env_id)
                steps[i] += 1
                if "shield" in info and info["shield"]["intervened"]:
                    interventions[i] += 1
                    corrections[i] += float(
                        np.linalg.norm(info["shield"]["applied"] - info["shield"]["proposed"])
                    )
                if record:
                    traj.append(np.array(obs, dtype=np.float64))
                if terminated or truncated:
                    break
            if record:
                trajs.append(np.stack(traj))
    finally:
        env.close()
    wall = time.perf_counter() - t0
    result = RunResult(
        returns=returns,
        costs=costs,
        violations=costs > 0,
        interventions=interventions,
        steps=steps,
        wall_s=wall,
        corrections=corrections,
        trajectories=np.stack(trajs) if record and len({t.shape for t in trajs}) == 1 else None,
    )
    return result, np.stack(starts)


def _run_boat_batched(
    starts: np.ndarray, agent: _Agent, shield_kwargs: dict[str, Any] | None, steps: int
) -> RunResult:
    from safefql.envs import boat

    n = starts.shape[0]
    venv: Any = boat.BoatNavVectorEnv(n)
    if shield_kwargs is not None:
        venv = SafeFQLVectorShield(venv, **shield_kwargs)
    policy_mode = shield_kwargs is not None and shield_kwargs["mode"] == "policy"
    traj = np.empty((n, steps + 1, 2))
    returns, costs = np.zeros(n), np.zeros(n)
    interventions = np.zeros(n, dtype=np.int64)
    corrections = np.zeros(n)
    episodes = np.arange(n)
    agent.new_run()
    t0 = time.perf_counter()
    obs, _ = venv.reset(options={"state": starts})
    traj[:, 0] = obs
    for t in range(steps):
        actions = None if policy_mode else agent.act(obs, episodes)
        obs, rewards, _, _, info = venv.step(actions)
        returns += rewards
        costs += info["cost"]
        if "shield" in info:
            sh = info["shield"]
            interventions += sh["intervened"]
            corrections += np.where(
                sh["intervened"], np.linalg.norm(sh["applied"] - sh["proposed"], axis=-1), 0.0
            )
        traj[:, t + 1] = obs
    wall = time.perf_counter() - t0
    return RunResult(
        returns=returns,
        costs=costs,
        violations=costs > 0,
        interventions=interventions,
        steps=np.full(n, steps, dtype=np.int64),
        wall_s=wall,
        corrections=corrections,
        trajectories=traj,
    )


def _shield_name(shield: Any) -> str | None:
    if shield is None:
        return None
    if isinstance(shield, str | os.PathLike):
        return str(shield)
    header = getattr(shield, "header", None)
    path = header.get("path") if isinstance(header, dict) else None
    return str(path) if path else type(shield).__name__


def evaluate(
    env_id: str,
    agent: Any,
    *,
    shield: Any = None,
    episodes: int = 100,
    starts: str | None = None,
    seed: int = 0,
    mode: str = "shield",
    fallback: str = "nearest",
    delta: float | None = None,
    batched: bool = True,
    max_steps: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
) -> EvalReport:
    """Run ``agent`` without and (if ``shield`` is given) with the shield, from the same start states.

    Args:
        env_id: a registered Gymnasium id whose env reports ``info["cost"]``.
        agent: ``"random"``, ``"zero"``, ``"goal"`` (boat), ``"module:callable"``, a callable
            ``obs -> action`` or an object with ``predict(obs, deterministic=True)``.
        shield: None (unshielded run only), ``"pretrained"`` (the shipped model for ``env_id``), a
            checkpoint path, or a policy object (e.g. :class:`BoatOracleModel`).
        episodes: number of episodes (start states).
        starts: boat envs: ``"safe"`` (default; uniform over the oracle's safe set, ``V <= -0.05``) or
            ``"uniform"`` (over the box); other envs: ``"uniform"`` (default) = the env's own reset
            distribution with seed ``seed + i`` for episode ``i``.
        seed: seeds the start states (the same ones for both runs) and the ``"random"`` agent.
        mode: ``"shield"`` (filter the agent) or ``"policy"`` (the shielded run is the SafeFQL actor).
        fallback, delta: passed to the shield (``delta`` None: the model's calibrated value).
        batched: BoatNav-v0 only: all episodes at once through the vector shield (same results; with the
            ``"samples"`` fallback the draws are seeded by ``seed`` but shared across the batch: they differ).
        max_steps: cap on steps per episode (default: the env's time limit, else 1000).
        env_kwargs: keyword arguments for ``gymnasium.make``.
    """
    if not isinstance(env_id, str) or env_id not in gym.registry:
        raise ValueError(
            f"unknown env id {env_id!r} (not registered with gymnasium; import its package first)"
        )
    if isinstance(episodes, bool) or int(episodes) != episodes or episodes < 1:
        raise ValueError(f"episodes must be a positive integer, got {episodes!r}")
    episodes, seed = int(episodes), int(seed)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    if mode == "policy" and shield is None:
        raise ValueError("mode='policy' runs the SafeFQL actor: pass shield='pretrained', a path or a model")
    boat_family = env_id in BOAT_FAMILY
    starts = starts if starts is not None else ("safe" if boat_family else "uniform")
    if starts not in STARTS:
        raise ValueError(f"starts must be one of {STARTS}, got {starts!r}")
    if starts == "safe" and not boat_family:
        raise ValueError(
            f"starts='safe' needs a ground-truth safe set, available for {BOAT_FAMILY} only, not {env_id!r}; "
            "use starts='uniform' (the env's own reset distribution)"
        )
    env_kwargs = dict(env_kwargs or {})
    spec = gym.spec(env_id)
    if max_steps is None:
        max_steps = spec.max_episode_steps or 1000
    if isinstance(max_steps, bool) or int(max_steps) != max_steps or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    max_steps = int(max_steps)

    probe = gym.make(env_id, **env_kwargs)
    action_space = probe.action_space
    probe.close()
    if not isinstance(action_space, gym.spaces.Box):
        raise ValueError(f"evaluate needs a Box action space; {env_id!r} has {action_space}")
    runner = _Agent(agent, env_id, action_space, seed)

    model = None
    if shield is not None:
        model = resolve_model(
            None if (isinstance(shield, str) and shield == "pretrained") else shield, env_id
        )
    shield_kwargs = (
        None if model is None else {"checkpoint": model, "mode": mode, "fallback": fallback, "delta": delta}
    )

    use_batched = bool(batched) and env_id == BOAT_ID and not env_kwargs
    record = env_id in BOAT_FAMILY
    if env_id == BOAT_ID:
        from safefql.envs import boat

        if starts == "safe":
            from safefql.envs.oracle import load_boat_oracle

            start_states = load_boat_oracle().safe_starts(episodes, seed)
        else:
            start_states = np.random.default_rng(seed).uniform(
                boat.BOX_LOW, boat.BOX_HIGH, size=(episodes, 2)
            )
        reset_args = [{"seed": seed + i, "options": {"state": start_states[i]}} for i in range(episodes)]
        steps = min(max_steps, boat.EPISODE_STEPS)
    else:
        opts = {"start": starts} if boat_family else None
        reset_args = [{"seed": seed + i, "options": opts} for i in range(episodes)]
        start_states = None

    def make_plain() -> gym.Env:
        return gym.make(env_id, **env_kwargs)

    def make_shielded() -> gym.Env:
        return SafeFQLShield(gym.make(env_id, **env_kwargs), **shield_kwargs)

    runs: dict[str, RunResult] = {}
    if use_batched:
        runs["unshielded"] = _run_boat_batched(start_states, runner, None, steps)
        if shield_kwargs is not None:
            runs["shielded"] = _run_boat_batched(start_states, runner, {**shield_kwargs, "rng": seed}, steps)
    else:
        runs["unshielded"], first = _run_sequential(make_plain, env_id, runner, reset_args, max_steps, record)
        if start_states is None:
            start_states = first
        if shield_kwargs is not None:
            runs["shielded"], second = _run_sequential(
                make_shielded, env_id, runner, reset_args, max_steps, record, policy_mode=mode == "policy"
            )
            if not np.array_equal(first, second):
                raise RuntimeError(
                    f"{env_id!r} reset to different start states for the same seeds in the two runs; "
                    "its reset is not deterministic given the seed, so the comparison would be unfair"
                )
    used_delta = None
    if model is not None:
        used_delta = float(model.delta) if delta is None else float(delta)
    return EvalReport(
        env_id=env_id,
        agent=runner.name,
        shield=None if model is None else ("pretrained" if shield == "pretrained" else _shield_name(shield)),
        mode=mode,
        fallback=fallback,
        delta=used_delta,
        episodes=episodes,
        starts=starts,
        seed=seed,
        batched=use_batched,
        start_states=np.asarray(start_states, dtype=np.float64),
        unshielded=runs["unshielded"],
        shielded=runs.get("shielded"),
    )


__all__ = ["BUILTIN_AGENTS", "BoatOracleModel", "EvalReport", "RunResult", "evaluate", "import_agent"]
