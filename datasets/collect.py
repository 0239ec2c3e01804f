"""Collect offline datasets as real Minari datasets (``minari list local``, ``minari.load_dataset``).

``collect(env_id, mixture, episodes, seed, dataset_id)`` rolls out a mixture of behaviour policies (one
policy drawn per episode) and writes a Minari dataset under ``$MINARI_DATASETS_PATH`` (default
``~/.minari/datasets``), at ``<root>/<dataset_id>/data/{metadata.json, main_data.hdf5}``.

Every episode's infos hold ``cost`` and ``h`` for the reset state and each step, so
``infos["h"][i] = h(observations[i])`` for ``i = 0..T`` (DESIGN.md section 1). Binary-cost envs that do
not report ``h`` get the surrogate ``h = kappa if cost > 0 else -1``.

Dataset-level safefql metadata (behaviour policies and weights, seed, env id and version, kappa,
start distribution, episode counts, safe/violating fractions, per-policy statistics) is stored in
Minari's own ``metadata.json`` under the key ``"safefql"`` (Minari keeps unknown keys;
``MinariDataset.storage.metadata["safefql"]`` reads it back). Each episode's behaviour policy is
Minari episode metadata (``dataset.storage.get_episode_metadata([i])`` -> ``{"policy": ...}``); boat
episodes also record their start state as ``options["state"]`` (``env.reset(options=...)`` replays it).

BoatNav-v0 fast path: all episodes of a chunk step in parallel with the NumPy reference equations of
``safefql.envs.boat`` (``step_state``, ``reward``, ``margin``), which the MuJoCo env matches to float
precision. Starts: a fraction ``safe_start_fraction`` (default 0.2) of the episodes start in the HJ
oracle's safe set (``BoatOracle.safe_starts``, margin 0.05, as in the evaluation protocol); the rest start
uniformly over the whole box, rocks included, so the safety critic sees the unsafe regions too.

Other envs (Safety-Gymnasium): a live path steps ``gym.make(env_id)`` with the policy in batches of one.

Atomicity: the dataset is built in a hidden temporary sibling directory (which ``minari list`` skips)
and renamed into place only when complete; an interrupt or error leaves nothing under the id (a SIGKILL
can leave the hidden ``.<name>.*.tmp`` directory behind, never a dataset). An existing id is refused
(``FileExistsError``) unless ``overwrite=True``; an interrupted overwrite keeps the old dataset.

Live envs: only ``cost`` and ``h`` are recorded from the infos (other keys may change from step to step,
which Minari does not allow).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from safefql._io import atomic_dir
from safefql.datasets.policies import (
    BOAT_POLICIES,
    DEFAULT_BOAT_MIXTURE,
    Mixture,
    Policy,
    as_mixture,
    make_boat_policy,
)

FORMAT_VERSION = 1  # of the "safefql" metadata block
DEFAULT_KAPPA = 25.0
DEFAULT_SAFE_START_FRACTION = 0.2
DEFAULT_CHUNK_EPISODES = 500
# BoatNav-v0 behaviour decisions are held for this many steps (0.05 s): one step of dt = 0.005 moves the boat
# by at most 0.015, too little for a learned Q_h to rank actions; held for 10 steps the effect is measurable.
BOAT_ACTION_HOLD = 10
METADATA_KEY = "safefql"
_SG_GOAL_RE = re.compile(r"Safety(Point|Car)Goal\dGymnasium-v\d+")
_DATASET_ID_RE = re.compile(r"^(?:[-_\w][-_\w/]*[-_\w]+/)?[-_\w]+?-v\d+$")


# --------------------------------------------------------------------------------------------------
# Dataset ids and locations
# --------------------------------------------------------------------------------------------------
def validate_dataset_id(dataset_id: str) -> str:
    """Check a Minari dataset id ``(namespace/)name-vN``; returns it unchanged."""
    if not isinstance(dataset_id, str) or not _DATASET_ID_RE.fullmatch(dataset_id):
        raise ValueError(
            f"invalid dataset id {dataset_id!r}: Minari ids look like '(namespace/)name-vN', "
            "e.g. 'safefql/boat-mixed-v0'"
        )
    return dataset_id


def datasets_root() -> Path:
    """Minari's local dataset root: ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``."""
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env) if env else Path.home() / ".minari" / "datasets"


def dataset_path(dataset_id: str) -> Path:
    """Directory of a local Minari dataset (it holds ``data/``)."""
    return datasets_root() / validate_dataset_id(dataset_id)


def default_dataset_id(env_id: str) -> str:
    """A default dataset id for an env: ``safefql/<EnvName>-mixed-v0``."""
    name = env_id.split("/")[-1].split(":")[-1]
    name = re.sub(r"-v\d+$", "", name)
    name = re.sub(r"[^-_\w]", "_", name)
    return f"safefql/{name}-mixed-v0"


# --------------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CollectSummary:
    """What a collection (or an import) wrote, with episode statistics.

    ``mean_cost`` is the mean over episodes of the summed step costs (the env's episode cost); an episode
    is *violating* when any of its states, the start included, has cost > 0.
    """

    dataset_id: str
    env_id: str
    path: str
    episodes: int
    transitions: int
    mean_return: float
    mean_cost: float
    violating_episodes: int
    violating_fraction: float
    seconds: float
    per_policy: dict[str, dict[str, float]] = field(default_factory=dict)
    produce_seconds: float = 0.0  # generating episodes (simulation and policies, or reading the source file)
    write_seconds: float = 0.0  # Minari/HDF5 writing

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of every field."""
        return asdict(self)

    def table(self) -> Any:
        """A ``rich.table.Table`` with the summary (and one row per behaviour policy)."""
        from rich import box
        from rich.table import Table

        t = Table(title=f"dataset {self.dataset_id} ({self.env_id})", box=box.SIMPLE_HEAD)
        t.add_column("policy", justify="left", no_wrap=True)
        for col in ("episodes", "steps", "return", "cost", "violating", "frac"):
            t.add_column(col, justify="right", no_wrap=True)
        rows = {} if set(self.per_policy) <= {"-"} else self.per_policy
        for name, s in rows.items():
            t.add_row(
                name,
                str(int(s["episodes"])),
                str(int(s["transitions"])),
                f"{s['mean_return']:.1f}",
                f"{s['mean_cost']:.2f}",
                str(int(s["violating_episodes"])),
                f"{s['violating_fraction']:.3f}",
            )
        t.add_row(
            "[bold]all[/bold]",
            str(self.episodes),
            str(self.transitions),
            f"{self.mean_return:.1f}",
            f"{self.mean_cost:.2f}",
            str(self.violating_episodes),
            f"{self.violating_fraction:.3f}",
            end_section=True,
        )
        t.caption = (
            f"{self.seconds:.1f} s ({self.produce_seconds:.1f} s generating, "
            f"{self.write_seconds:.1f} s writing), written to {self.path}"
        )
        return t

    def __rich__(self) -> Any:
        return self.table()

    def print(self, console: Any = None) -> None:
        """Print the table with ``rich`` (to ``console`` if given)."""
        if console is None:
            from rich.console import Console

            console = Console()
        console.print(self.table())


# --------------------------------------------------------------------------------------------------
# The Minari writer (shared with hdf5_import)
# --------------------------------------------------------------------------------------------------
@dataclass
class EpisodeRecord:
    """One episode in Minari's layout: ``T`` steps, ``T + 1`` observations, cost/h per observation."""

    observations: np.ndarray  # (T + 1, obs_dim)
    actions: np.ndarray  # (T, act_dim)
    rewards: np.ndarray  # (T,)
    terminations: np.ndarray  # (T,) bool
    truncations: np.ndarray  # (T,) bool
    cost: np.ndarray  # (T + 1,): cost of observations[i]
    h: np.ndarray  # (T + 1,): margin of observations[i]
    policy: str = ""  # behaviour policy label (episode metadata, and per-policy statistics)
    seed: int | None = None
    options: dict[str, Any] | None = None

    def validate(self, index: int) -> None:
        """Raise ValueError naming the key when the arrays are inconsistent."""
        steps = int(np.shape(self.rewards)[0]) if np.ndim(self.rewards) == 1 else -1
        if steps < 0:
            raise ValueError(f"episode {index}: 'rewards' must be 1-D, got shape {np.shape(self.rewards)}")
        want = {
            "observations": steps + 1,
            "actions": steps,
            "terminations": steps,
            "truncations": steps,
            "infos/cost": steps + 1,
            "infos/h": steps + 1,
        }
        arrays = {
            "observations": self.observations,
            "actions": self.actions,
            "terminations": self.terminations,
            "truncations": self.truncations,
            "infos/cost": self.cost,
            "infos/h": self.h,
        }
        for key, arr in arrays.items():
            shape = np.shape(arr)
            if len(shape) == 0 or shape[0] != want[key]:
                raise ValueError(
                    f"episode {index}: {key!r} has shape {shape}, expected length {want[key]} "
                    f"for {steps} steps"
                )
        for key in ("infos/cost", "infos/h"):
            if np.ndim(arrays[key]) != 1:
                raise ValueError(f"episode {index}: {key!r} must be 1-D, got shape {np.shape(arrays[key])}")
            if not np.all(np.isfinite(arrays[key])):
                raise ValueError(f"episode {index}: {key!r} has non-finite values")

    def to_buffer(self) -> Any:
        """A ``minari.data_collector.EpisodeBuffer`` holding the arrays."""
        from minari.data_collector import EpisodeBuffer

        return EpisodeBuffer(
            id=None,
            seed=self.seed,
            options=self.options,
            observations=np.asarray(self.observations),
            actions=np.asarray(self.actions),
            rewards=np.asarray(self.rewards, dtype=np.float64),
            terminations=np.asarray(self.terminations, dtype=bool),
            truncations=np.asarray(self.truncations, dtype=bool),
            infos={
                "cost": np.asarray(self.cost, dtype=np.float64),
                "h": np.asarray(self.h, dtype=np.float64),
            },
        )


class _Stats:
    """Running episode statistics, overall and per behaviour policy."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[int, float, float, bool]]] = {}

    def add(self, ep: EpisodeRecord) -> None:
        steps = int(np.shape(ep.rewards)[0])
        ret = float(np.sum(ep.rewards))
        cost = np.asarray(ep.cost, dtype=np.float64)
        self.rows.setdefault(ep.policy or "-", []).append(
            (steps, ret, float(np.sum(cost[1:])), bool(np.any(cost > 0)))
        )

    @staticmethod
    def _summarise(rows: list[tuple[int, float, float, bool]]) -> dict[str, float]:
        arr = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
        n = arr.shape[0]
        return {
            "episodes": int(n),
            "transitions": int(arr[:, 0].sum()),
            "mean_return": float(arr[:, 1].mean()) if n else math.nan,
            "mean_cost": float(arr[:, 2].mean()) if n else math.nan,
            "violating_episodes": int(arr[:, 3].sum()),
            "violating_fraction": float(arr[:, 3].mean()) if n else math.nan,
        }

    def overall(self) -> dict[str, float]:
        return self._summarise([r for rows in self.rows.values() for r in rows])

    def per_policy(self) -> dict[str, dict[str, float]]:
        return {name: self._summarise(rows) for name, rows in self.rows.items()}


def _json_clean(obj: Any) -> Any:
    """Convert NumPy scalars/arrays inside ``obj`` to plain JSON types (and check it serialises)."""

    def conv(o: Any) -> Any:
        if isinstance(o, Mapping):
            return {str(k): conv(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [conv(v) for v in o]
        if isinstance(o, np.ndarray):
            return conv(o.tolist())
        if isinstance(o, np.generic):
            return o.item()
        return o

    out = conv(obj)
    try:
        json.dumps(out, allow_nan=True)
    except TypeError as e:
        raise ValueError(f"dataset metadata is not JSON-serialisable: {e}") from e
    return out


def _ensure_namespace(dataset_id: str) -> None:
    from minari.namespace import create_namespace, list_local_namespaces

    namespace = dataset_id.rsplit("/", 1)[0] if "/" in dataset_id else None
    if namespace is not None and namespace not in list_local_namespaces():
        create_namespace(namespace)


def refuse_existing(dataset_id: str, overwrite: bool) -> Path:
    """Raise FileExistsError if ``dataset_id`` exists locally and ``overwrite`` is False; return its path."""
    path = dataset_path(dataset_id)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"dataset {dataset_id!r} already exists at {path}; "
            "pass overwrite=True (--overwrite) to replace it"
        )
    return path


@dataclass(frozen=True)
class WrittenDataset:
    """What ``write_minari_dataset`` wrote: its directory, the stored safefql metadata, and timings."""

    path: Path
    metadata: dict[str, Any]
    produce_seconds: float  # time spent inside the episode iterable
    seconds: float  # total time of the write, the episode iterable included


def write_minari_dataset(
    dataset_id: str,
    episodes: Iterable[EpisodeRecord],
    *,
    env_id: str,
    observation_space: gym.Space,
    action_space: gym.Space,
    metadata: Mapping[str, Any],
    overwrite: bool = False,
    algorithm_name: str = "safefql",
    description: str | None = None,
    total: int | None = None,
    progress: bool = True,
    desc: str = "writing",
) -> WrittenDataset:
    """Write ``episodes`` as the Minari dataset ``dataset_id``, atomically.

    ``episodes`` may be a generator (the data is streamed into the HDF5 file). ``metadata`` is read after
    the episodes are consumed (a generator may still fill it in) and stored under
    ``metadata.json["safefql"]`` together with the episode statistics computed while writing.
    Returns the dataset directory, the stored safefql metadata and timings.
    """
    import minari
    from minari.dataset.minari_storage import MinariStorage
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    final = refuse_existing(dataset_id, overwrite)
    spec = gym.spec(env_id) if env_id in gym.registry else None
    if spec is not None:
        try:  # specs with callable entry points cannot be stored; the env id stays in our metadata
            spec.to_json()
        except (TypeError, ValueError):
            spec = None
    stats = _Stats()
    policies: list[str] = []
    produce = [0.0]

    def stream() -> Iterator[Any]:
        bar = tqdm(total=total, desc=desc, unit="ep", disable=not progress, leave=False)
        it = iter(episodes)
        try:
            for i in itertools.count():
                t = time.perf_counter()
                ep = next(it, None)
                produce[0] += time.perf_counter() - t
                if ep is None:
                    break
                ep.validate(i)
                stats.add(ep)
                policies.append(ep.policy)
                bar.update(1)
                yield ep.to_buffer()
        finally:
            bar.close()

    _ensure_namespace(dataset_id)
    with atomic_dir(final, overwrite=overwrite) as tmp:
        storage = MinariStorage.new(
            tmp / "data",
            observation_space=observation_space,
            action_space=action_space,
            env_spec=spec,
            data_format="hdf5",
        )
        minari_meta: dict[str, Any] = {
            "dataset_id": dataset_id,
            "algorithm_name": algorithm_name,
            "minari_version": minari.__version__,
            "author": {"safefql"},
        }
        if description:
            minari_meta["description"] = description
        storage.update_metadata(minari_meta)
        storage.update_episodes(stream())
        if not policies:
            raise ValueError(f"dataset {dataset_id!r}: no episodes to write")
        if any(policies):
            storage.update_episode_metadata([{"policy": p} for p in policies])
        overall = stats.overall()
        block = dict(metadata)
        block.update(
            {
                "format_version": FORMAT_VERSION,
                "env_id": env_id,
                "dataset_id": dataset_id,
                "total_episodes": overall["episodes"],
                "total_steps": overall["transitions"],
                "mean_return": overall["mean_return"],
                "mean_cost": overall["mean_cost"],
                "violating_episodes": overall["violating_episodes"],
                "violating_fraction": overall["violating_fraction"],
                "safe_fraction": 1.0 - overall["violating_fraction"],
                "per_policy": stats.per_policy(),
            }
        )
        block = _json_clean(block)
        storage.update_metadata({METADATA_KEY: block})
    return WrittenDataset(final, block, produce[0], time.perf_counter() - t0)


def _summary_from_written(w: WrittenDataset, seconds: float) -> CollectSummary:
    block = w.metadata
    return CollectSummary(
        dataset_id=block["dataset_id"],
        env_id=block["env_id"],
        path=str(w.path),
        episodes=int(block["total_episodes"]),
        transitions=int(block["total_steps"]),
        mean_return=float(block["mean_return"]),
        mean_cost=float(block["mean_cost"]),
        violating_episodes=int(block["violating_episodes"]),
        violating_fraction=float(block["violating_fraction"]),
        seconds=float(seconds),
        per_policy={k: dict(v) for k, v in block["per_policy"].items()},
        produce_seconds=float(w.produce_seconds),
        write_seconds=float(w.seconds - w.produce_seconds),
    )


# --------------------------------------------------------------------------------------------------
# Policies per env
# --------------------------------------------------------------------------------------------------
def _is_boat(env_id: str) -> bool:
    from safefql.envs import BOAT_ID

    return env_id == BOAT_ID


class _UniformPolicy:
    """Uniform actions over a Box action space (the generic ``random`` policy)."""

    def __init__(self, space: gym.spaces.Box) -> None:
        self.low = np.asarray(space.low, dtype=np.float64)
        self.high = np.asarray(space.high, dtype=np.float64)
        self.dtype = space.dtype

    def __call__(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = np.shape(obs)[0]
        return rng.uniform(self.low, self.high, size=(n, *self.low.shape)).astype(self.dtype)


def _is_safety_gym(env_id: str) -> bool:
    from safefql.envs.safety_gym import ENTRY_POINT

    return env_id in gym.registry and gym.spec(env_id).entry_point == ENTRY_POINT


def _is_safety_gym_goal(env_id: str) -> bool:
    """Safety-Gymnasium Goal tasks with Point/Car agents: the scripted lidar policies apply."""
    return (
        _is_safety_gym(env_id) and re.fullmatch(r"Safety(Point|Car)Goal\dGymnasium-v\d+", env_id) is not None
    )


def available_policies(env_id: str) -> dict[str, str]:
    """Behaviour policy names usable in a mixture for ``env_id`` (name -> description).

    The boat has ``BOAT_POLICIES``; Safety-Gymnasium Point/Car Goal tasks have the scripted lidar
    policies of ``safefql.datasets.policies_safety_gym``; every other Box-action env has ``random``.
    ValueError for an id that is not registered with Gymnasium.
    """
    if env_id not in gym.registry:
        import difflib

        close = difflib.get_close_matches(env_id, list(gym.registry), n=3)
        hint = (
            f"; did you mean {', '.join(map(repr, close))}?"
            if close
            else " (import the package that registers it)"
        )
        raise ValueError(f"env id {env_id!r} is not registered with gymnasium{hint}")
    if _is_boat(env_id):
        return {name: spec.description for name, spec in BOAT_POLICIES.items()}
    out = {"random": "uniform actions over the action space"}
    if _is_safety_gym_goal(env_id):
        from safefql.datasets.policies_safety_gym import list_safety_gym_policies

        out.update(list_safety_gym_policies())
    return out


def default_action_hold(env_id: str) -> int:
    """Steps each behaviour decision is held for by default: ``BOAT_ACTION_HOLD`` on the boats, else 1."""
    return BOAT_ACTION_HOLD if _is_boat(env_id) else 1


def default_mixture(env_id: str) -> str:
    """The default behaviour mixture for ``env_id``."""
    if _is_boat(env_id):
        return DEFAULT_BOAT_MIXTURE
    if _is_safety_gym_goal(env_id):
        from safefql.datasets.policies_safety_gym import DEFAULT_SAFETY_GYM_MIXTURE

        return DEFAULT_SAFETY_GYM_MIXTURE
    return "random:1"


def _check_actions(
    actions: Any, n: int, act_shape: tuple[int, ...], name: str, low: Any, high: Any
) -> np.ndarray:
    a = np.asarray(actions)
    if a.shape != (n, *act_shape):
        raise ValueError(f"policy {name!r} returned actions of shape {a.shape}, expected {(n, *act_shape)}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"policy {name!r} returned non-finite actions")
    if np.any(a < np.asarray(low) - 1e-6) or np.any(a > np.asarray(high) + 1e-6):
        raise ValueError(f"policy {name!r} returned actions outside the action space [{low}, {high}]")
    return a


# --------------------------------------------------------------------------------------------------
# Boat fast path
# --------------------------------------------------------------------------------------------------
def _boat_episodes(
    names: tuple[str, ...],
    assignment: np.ndarray,
    starts: np.ndarray,
    seed: int,
    chunk: int,
    action_space: gym.spaces.Box,
    progress: bool,
    action_hold: int = 1,
) -> Iterator[EpisodeRecord]:
    from tqdm.auto import tqdm

    from safefql.envs import boat

    policies = [make_boat_policy(n) for n in names]
    steps = boat.EPISODE_STEPS
    n_total = assignment.size
    bar = tqdm(total=n_total * steps, desc="simulating", unit="step", unit_scale=True, disable=not progress)
    try:
        for c, lo in enumerate(range(0, n_total, chunk)):
            hi = min(lo + chunk, n_total)
            n = hi - lo
            rng = np.random.default_rng([seed, 1, c])
            pol = assignment[lo:hi]
            groups = [(k, np.flatnonzero(pol == k)) for k in range(len(names))]
            obs = np.empty((n, steps + 1, 2))
            act = np.empty((n, steps, 2), dtype=action_space.dtype)
            rew = np.empty((n, steps))
            obs[:, 0] = starts[lo:hi]
            a = np.empty((n, 2), dtype=action_space.dtype)
            for t in range(steps):
                p = obs[:, t]
                for k, idx in groups if t % action_hold == 0 else ():
                    if idx.size:
                        a[idx] = _check_actions(
                            policies[k](p[idx], rng),
                            idx.size,
                            (2,),
                            names[k],
                            action_space.low,
                            action_space.high,
                        )
                act[:, t] = a  # between decisions the previous action is held
                rew[:, t] = boat.reward(p)
                obs[:, t + 1] = boat.step_state(p, a)
                bar.update(n)
            h = boat.margin(obs)
            cost = (h > 0).astype(np.float64)
            term = np.zeros(steps, dtype=bool)
            trunc = np.zeros(steps, dtype=bool)
            trunc[-1] = True
            for i in range(n):
                yield EpisodeRecord(
                    observations=obs[i],
                    actions=act[i],
                    rewards=rew[i],
                    terminations=term,
                    truncations=trunc,
                    cost=cost[i],
                    h=h[i],
                    policy=names[pol[i]],
                    options={"state": obs[i, 0].copy()},
                )
    finally:
        bar.close()


def boat_starts(episodes: int, seed: int, safe_start_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Start states (episodes, 2) and a bool mask of those drawn from the oracle's safe set.

    The first ``round(safe_start_fraction * episodes)`` episodes (before shuffling) start in
    ``BoatOracle.safe_starts`` (margin 0.05); the others uniformly over the box. Deterministic in ``seed``.
    """
    from safefql.envs import boat

    if not (0.0 <= safe_start_fraction <= 1.0):
        raise ValueError(f"safe_start_fraction must lie in [0, 1], got {safe_start_fraction}")
    rng = np.random.default_rng([seed, 2])
    n_safe = int(round(safe_start_fraction * episodes))
    starts = rng.uniform(boat.BOX_LOW, boat.BOX_HIGH, size=(episodes, 2))
    safe = np.zeros(episodes, dtype=bool)
    if n_safe:
        from safefql.envs.oracle import load_boat_oracle

        safe[:n_safe] = True
        starts[:n_safe] = load_boat_oracle().safe_starts(n_safe, seed=int(rng.integers(2**31)))
    perm = rng.permutation(episodes)
    return starts[perm], safe[perm]


# --------------------------------------------------------------------------------------------------
# Live env path
# --------------------------------------------------------------------------------------------------
SAFETY_GYM_H_SOURCES = {  # metadata "h_source" of each Safety-Gymnasium margin
    "surrogate": "surrogate (Safety-Gymnasium wrapper, h = kappa if cost > 0 else -1)",
    "hazard_distance": "hazard_distance (Safety-Gymnasium wrapper, h = max_i (r_i - d_i) over the hazards)",
}


def _cost_h(info: Mapping[str, Any], kappa: float, env_id: str, where: str) -> tuple[float, float, str]:
    if "cost" not in info:
        raise ValueError(
            f"env {env_id!r} does not report info['cost'] at {where}; safefql datasets need a cost signal"
        )
    cost = float(info["cost"])
    if "h" in info:
        return cost, float(info["h"]), "env"
    return cost, (kappa if cost > 0 else -1.0), "surrogate"


def _live_episodes(
    env: gym.Env,
    env_id: str,
    names: tuple[str, ...],
    policies: list[Policy],
    assignment: np.ndarray,
    seed: int,
    kappa: float,
    meta: dict[str, Any],
    progress: bool,
    action_hold: int = 1,
) -> Iterator[EpisodeRecord]:
    from tqdm.auto import tqdm

    rng = np.random.default_rng([seed, 1])
    ep_seeds = np.random.default_rng([seed, 3]).integers(0, 2**31 - 1, size=assignment.size)
    space = env.action_space
    max_steps = env.spec.max_episode_steps if env.spec is not None else None
    bar = tqdm(total=assignment.size, desc="collecting", unit="ep", disable=not progress)
    h_sources: set[str] = set()
    try:
        for e, k in enumerate(assignment):
            obs, info = env.reset(seed=int(ep_seeds[e]))
            c, h, src = _cost_h(info, kappa, env_id, "reset")
            h_sources.add(src)
            observations, actions, rewards, terms, truncs, costs, hs = [obs], [], [], [], [], [c], [h]
            while True:
                if len(rewards) % action_hold == 0:  # between decisions the previous action is held
                    proposal = policies[k](np.asarray(obs)[None], rng)
                    a = _check_actions(proposal, 1, space.shape, names[k], space.low, space.high)[0]
                obs, r, terminated, truncated, info = env.step(a)
                c, h, src = _cost_h(info, kappa, env_id, "step")
                h_sources.add(src)
                observations.append(obs)
                actions.append(a)
                rewards.append(float(r))
                terms.append(bool(terminated))
                truncs.append(bool(truncated))
                costs.append(c)
                hs.append(h)
                if terminated or truncated:
                    break
                if max_steps is None and len(rewards) >= 100_000:
                    raise ValueError(f"env {env_id!r} has no time limit and ran 100000 steps without ending")
            bar.update(1)
            yield EpisodeRecord(
                observations=np.asarray(observations),
                actions=np.asarray(actions, dtype=space.dtype),
                rewards=np.asarray(rewards),
                terminations=np.asarray(terms),
                truncations=np.asarray(truncs),
                cost=np.asarray(costs),
                h=np.asarray(hs),
                policy=names[k],
                seed=int(ep_seeds[e]),
            )
        if _is_safety_gym(env_id):
            meta["h_source"] = SAFETY_GYM_H_SOURCES[meta["margin"]]
        else:
            meta["h_source"] = "+".join(sorted(h_sources))
    finally:
        bar.close()


# --------------------------------------------------------------------------------------------------
# collect
# --------------------------------------------------------------------------------------------------
def collect(
    env_id: str,
    mixture: str | Mixture | Mapping[str, float] | None,
    episodes: int,
    seed: int,
    dataset_id: str | None,
    *,
    overwrite: bool = False,
    kappa: float = DEFAULT_KAPPA,
    progress: bool = True,
    safe_start_fraction: float = DEFAULT_SAFE_START_FRACTION,
    chunk_episodes: int = DEFAULT_CHUNK_EPISODES,
    action_hold: int | None = None,
    margin: str = "surrogate",
) -> CollectSummary:
    """Roll out a policy mixture on ``env_id`` and write the Minari dataset ``dataset_id``.

    ``mixture``: ``"name:weight,..."`` (``None``: the env's default mixture, ``DEFAULT_BOAT_MIXTURE`` for
    the boat); one policy is drawn per episode. ``kappa``: surrogate margin for envs that report only a
    binary cost. ``margin``: Safety-Gymnasium only, what ``h`` is: ``"surrogate"`` (``kappa`` if cost > 0
    else -1) or ``"hazard_distance"`` (minus the signed distance to the hazards, ``Goal1`` tasks; see
    ``safefql.envs.safety_gym.SafetyGymCostInfo``); recorded as metadata ``margin``.
    ``safe_start_fraction``/``chunk_episodes``: boat only (episodes simulated per batch; part of the seed's
    meaning). ``dataset_id`` ``None`` uses ``default_dataset_id(env_id)``.
    ``action_hold``: the behaviour policies decide every ``action_hold`` steps (from each episode's first
    step) and repeat their action in between, so the data holds exact k-step held-action transitions for
    learners with ``action_repeat = k`` (any divisor of ``action_hold``); ``None``:
    ``default_action_hold(env_id)`` (10 for the boat, 1 elsewhere). Recorded as metadata ``action_hold``.
    """
    t0 = time.perf_counter()
    if not isinstance(env_id, str) or env_id not in gym.registry:
        raise ValueError(f"unknown env id {env_id!r}: not in the gymnasium registry")
    if isinstance(episodes, bool) or int(episodes) != episodes or episodes < 1:
        raise ValueError(f"episodes must be a positive integer, got {episodes}")
    episodes = int(episodes)
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    seed = int(seed)
    if not (math.isfinite(kappa) and kappa > 0):
        raise ValueError(f"kappa must be a finite number > 0, got {kappa}")
    if isinstance(chunk_episodes, bool) or int(chunk_episodes) != chunk_episodes or chunk_episodes < 1:
        raise ValueError(f"chunk_episodes must be a positive integer, got {chunk_episodes}")
    if not (0.0 <= safe_start_fraction <= 1.0):
        raise ValueError(f"safe_start_fraction must lie in [0, 1], got {safe_start_fraction}")
    if action_hold is None:
        action_hold = default_action_hold(env_id)
    if isinstance(action_hold, bool) or int(action_hold) != action_hold or action_hold < 1:
        raise ValueError(f"action_hold must be a positive integer, got {action_hold}")
    action_hold = int(action_hold)
    if margin != "surrogate" and not _is_safety_gym(env_id):
        raise ValueError(
            f"margin {margin!r} is a Safety-Gymnasium option; {env_id!r} reports its own h (use 'surrogate')"
        )
    dataset_id = validate_dataset_id(dataset_id if dataset_id is not None else default_dataset_id(env_id))
    refuse_existing(dataset_id, overwrite)
    if mixture is None:
        mixture = default_mixture(env_id)
    mix = as_mixture(mixture, available_policies(env_id))
    assignment = mix.assign(episodes, np.random.default_rng([seed, 0]))

    env = _make_env(env_id, kappa, margin)
    try:
        obs_space, act_space = env.observation_space, env.action_space
        if not isinstance(act_space, gym.spaces.Box):
            raise ValueError(f"env {env_id!r}: only Box action spaces are supported, got {act_space}")
        meta: dict[str, Any] = {
            "behavior_policies": mix.to_dict(),
            "mixture": str(mix),
            "policy_selection": "one policy per episode, stratified counts in shuffled order",
            "seed": seed,
            "env_version": env.spec.version if env.spec is not None else None,
            "episodes_requested": episodes,
            "action_hold": action_hold,
            "safefql_version": _safefql_version(),
        }
        if _is_boat(env_id):
            from safefql.envs import boat

            starts, safe_mask = boat_starts(episodes, seed, safe_start_fraction)
            meta.update(
                {
                    "collector": "boat-vectorized (NumPy reference equations)",
                    "start_distribution": {
                        "safe_start_fraction": float(safe_start_fraction),
                        "safe_starts": int(safe_mask.sum()),
                        "uniform_starts": int((~safe_mask).sum()),
                        "safe": "BoatOracle.safe_starts (V <= -0.05)",
                        "uniform": "uniform over the box [{}, {}] x [{}, {}]".format(
                            *boat.BOX_LOW[:1], *boat.BOX_HIGH[:1], *boat.BOX_LOW[1:], *boat.BOX_HIGH[1:]
                        ),
                    },
                    "chunk_episodes": int(chunk_episodes),
                    "h_source": "env",
                    "kappa": None,
                }
            )
            gen = _boat_episodes(
                mix.names, assignment, starts, seed, int(chunk_episodes), act_space, progress, action_hold
            )
        else:
            policies = [_make_live_policy(n, env, env_id) for n in mix.names]
            meta.update({"collector": "live env, batch 1", "kappa": float(kappa)})
            if _is_safety_gym(env_id):  # the env's SafetyGymCostInfo has validated the margin
                meta.update({"margin": margin, "kappa": float(kappa) if margin == "surrogate" else None})
            # _live_episodes sets meta["h_source"] when it finishes; the writer reads meta afterwards.
            gen = _live_episodes(
                env, env_id, mix.names, policies, assignment, seed, kappa, meta, progress, action_hold
            )
        written = write_minari_dataset(
            dataset_id,
            gen,
            env_id=env_id,
            observation_space=obs_space,
            action_space=act_space,
            metadata=meta,
            overwrite=overwrite,
            algorithm_name=f"safefql collect: {mix}",
            description=f"safefql behaviour-mixture dataset for {env_id} ({episodes} episodes, seed {seed})",
            total=episodes,
            progress=progress,
        )
    finally:
        env.close()
    return _summary_from_written(written, time.perf_counter() - t0)


def _make_env(env_id: str, kappa: float, margin: str = "surrogate") -> gym.Env:
    """``gym.make(env_id)``; Safety-Gymnasium ids get the margin's ``kappa`` and kind."""
    if _is_safety_gym(env_id):
        return gym.make(env_id, kappa=float(kappa), margin=margin)
    return gym.make(env_id)


def _make_live_policy(name: str, env: gym.Env, env_id: str) -> Policy:
    if name == "random":
        return _UniformPolicy(env.action_space)
    from safefql.datasets.policies_safety_gym import make_safety_gym_policy

    return make_safety_gym_policy(name, env)


def _safefql_version() -> str:
    import safefql

    return safefql.__version__


__all__ = [
    "DEFAULT_KAPPA",
    "SAFETY_GYM_H_SOURCES",
    "CollectSummary",
    "EpisodeRecord",
    "WrittenDataset",
    "available_policies",
    "boat_starts",
    "collect",
    "dataset_path",
    "datasets_root",
    "default_dataset_id",
    "default_mixture",
    "refuse_existing",
    "validate_dataset_id",
    "write_minari_dataset",
]
