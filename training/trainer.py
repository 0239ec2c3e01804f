"""The training loop behind ``safefql train``: data split, jitted update chunks, logging, evaluation,
checkpoints, exact resume and vmapped multi-seed training.

Determinism and resume. Updates run in chunks on a fixed grid of ``config.steps_per_call`` updates
(the last chunk may be shorter). The chunk starting at update ``s`` uses the key
``fold_in(run_key, s)`` (one ``run_key`` per seed, from ``PRNGKey(seed)``), so the random stream depends
only on the seed and the grid. Checkpoints are written at chunk boundaries, and ``resume=True`` from any
of them reproduces the uninterrupted run bit for bit (evaluation happens at the first chunk boundary at
or after each multiple of ``eval_every``). A run whose final step is not a multiple of
``steps_per_call`` and is later resumed to more steps follows a different (equally valid) stream.

Run directory contents::

    train_state.eqx          TrainState (or num_seeds vmapped states), for resume; at each eval and the end
    policy.eqx               the agent only (kind="policy"), single-seed runs, at the end
    policy_seed{i}.eqx       one per seed, multi-seed runs
    calib_episodes.npz       the held-out calibration episodes (arrays + metadata JSON; no pickle)
    metrics.csv              one row per chunk: step, wall time, every loss/info scalar, eval metrics
    training_curve.png       losses and eval metrics against updates
    summary.json             the TrainResult as JSON
    tensorboard/             scalar logs, only when tensorboardX or torch is importable

With ``config.normalize_observations`` the learner trains on ``(obs - mean) / std`` (the training split's
statistics, in the train state's header as ``observation_normalization``), so the agent inside
``train_state.eqx`` expects standardised observations; the policy checkpoints have the standardisation
folded into their first layers (``safefql.training.safefql.fold_observation_normalization``) and take raw
observations like any other policy.
"""

from __future__ import annotations

import csv
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

import equinox as eqx
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from safefql._io import atomic_write_bytes, atomic_write_text
from safefql.training.calibration import CALIB_EPISODES_FILE, boat_episodes
from safefql.training.checkpoint import (
    load_checkpoint,
    read_header,
    save_checkpoint,
    space_to_dict,
)

TRAIN_STATE_FILE = "train_state.eqx"
POLICY_FILE = "policy.eqx"
METRICS_FILE = "metrics.csv"
CURVE_FILE = "training_curve.png"
SUMMARY_FILE = "summary.json"
EVAL_START_SEED = 0  # the fixed seed of the evaluation start states (the same for every run and seed)
_EVAL_KEYS = ("return", "cost", "violation_rate")
_LIVE_KEYS = (
    ("critic/reward_q_loss", "Qr"),
    ("critic/safety_q_loss", "Qh"),
    ("actor/actor_loss", "actor"),
    ("flow/flow_loss", "flow"),
)


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or infinite; the message names the loss, the update range and the kept checkpoint."""


def policy_file(seed_index: int | None) -> str:
    """``policy.eqx`` for single-seed runs, ``policy_seed{i}.eqx`` for seed ``i`` of a multi-seed run."""
    return POLICY_FILE if seed_index is None else f"policy_seed{seed_index}.eqx"


@dataclass
class TrainResult:
    """What a training run produced. ``eval`` holds the final evaluation means over seeds (``*_std`` the
    spread across seeds when ``num_seeds > 1``); ``per_seed_eval`` one dict per seed."""

    run_dir: Path
    policy_paths: list[Path]
    train_state_path: Path
    steps: int
    num_seeds: int
    seed: int
    env_id: str | None
    dataset_id: str | None
    eval: dict[str, float] = field(default_factory=dict)
    per_seed_eval: list[dict[str, float]] = field(default_factory=list)
    updates_per_s: float = float("nan")
    compile_time_s: float = 0.0
    wall_time_s: float = 0.0
    eval_time_s: float = 0.0
    final_losses: dict[str, float] = field(default_factory=dict)
    reused: bool = False  # True: train(reuse=True) returned this finished run instead of training

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings)."""
        d = dict(self.__dict__)
        d["run_dir"] = str(self.run_dir)
        d["train_state_path"] = str(self.train_state_path)
        d["policy_paths"] = [str(p) for p in self.policy_paths]
        return d

    def summary_table(self):  # -> rich.table.Table
        """A rich table of the run (what ``train`` prints at the end)."""
        from rich.table import Table

        table = Table(title=f"safefql training: {self.run_dir}", show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value")
        table.add_row("env / dataset", f"{self.env_id} / {self.dataset_id}")
        table.add_row("updates", f"{self.steps} x {self.num_seeds} seed(s), seed {self.seed}")
        per = f" (each updates all {self.num_seeds} seeds)" if self.num_seeds > 1 else ""
        table.add_row("updates/s", f"{self.updates_per_s:.1f}{per}")
        table.add_row("compile time", f"{self.compile_time_s:.2f} s")
        table.add_row("wall time", f"{self.wall_time_s:.1f} s (eval {self.eval_time_s:.1f} s)")
        for key in _EVAL_KEYS:
            if key in self.eval:
                spread = self.eval.get(f"{key}_std")
                text = f"{self.eval[key]:.4g}" + (
                    "" if spread is None else f" ± {spread:.3g} (std over seeds)"
                )
                table.add_row(f"eval {key}", text)
        for key, short in _LIVE_KEYS:
            if key in self.final_losses:
                table.add_row(f"final {short} loss", f"{self.final_losses[key]:.4g}")
        for p in self.policy_paths:
            table.add_row("policy", str(p))
        return table


# --------------------------------------------------------------------------------------------- evaluation
def device_dataset(transitions: Any, config: Any) -> Any:
    """The learner's ``DeviceDataset``: plain, or k-step held-action transitions if ``action_repeat > 1``.

    With ``config.reward_episodes == "safe"`` it carries ``reward_weights``, with ``config.flow_episodes ==
    "safe"`` ``flow_weights``: 1 on the transitions of the episodes whose margin never exceeds 0 (final
    state included), 0 elsewhere; the reward critic and value, or the flow teacher, learn from those only.
    ``flow_episodes == "recovering"`` also weighs 1 the steps out of the failure set: ``h(s_t) > 0`` and
    ``h(s_{t+1}) < h(s_t)`` within an episode (an episode's last step, whose next margin is not stored,
    is left out).
    """
    from safefql.datasets.load import Transitions, held_action_transitions
    from safefql.datasets.sampler import OPTIONAL_KEYS, REQUIRED_KEYS, DeviceDataset
    from safefql.training.config import EPISODE_WEIGHTS

    weighted_fields = {name: key for name, key in EPISODE_WEIGHTS.items() if getattr(config, name) != "all"}
    weighted = [f"{name}={getattr(config, name)!r}" for name in weighted_fields]
    if config.action_repeat == 1 and not weighted:
        return DeviceDataset.from_arrays(transitions)
    if not isinstance(transitions, Transitions):
        why = f"action_repeat={config.action_repeat}" if config.action_repeat > 1 else weighted[0]
        raise ValueError(
            f"{why} needs episode structure: pass a dataset id or "
            f"safefql.datasets.load.Transitions, not {type(transitions).__name__}"
        )
    if config.action_repeat > 1:
        if config.flow_episodes == "recovering":
            raise ValueError(
                "flow_episodes='recovering' weighs single steps; it needs action_repeat=1, "
                f"got {config.action_repeat}"
            )
        arrays = held_action_transitions(transitions, config.action_repeat, config.gamma)
    else:
        names = (*REQUIRED_KEYS, *OPTIONAL_KEYS, "episode_ids")
        arrays = {k: getattr(transitions, k) for k in names if getattr(transitions, k, None) is not None}
    if weighted:
        weights = (~np.isin(arrays["episode_ids"], unsafe_episode_ids(transitions))).astype(np.float32)
        if not weights.any():
            raise ValueError(
                f"{', '.join(weighted)}: every episode of the dataset enters the failure set (h > 0), so "
                "there are no safe transitions to learn from; use 'all'"
            )
        arrays = {**arrays, **dict.fromkeys(weighted_fields.values(), weights)}
        if config.flow_episodes == "recovering":
            arrays["flow_weights"] = np.maximum(weights, recovery_steps(transitions)).astype(np.float32)
    return DeviceDataset.from_arrays(arrays)


def unsafe_episode_ids(transitions: Any) -> np.ndarray:
    """The ids of the episodes that enter the failure set (``h > 0`` at some state)."""
    # future_worst_h covers every state of an episode, its last next-observation included
    return np.unique(np.asarray(transitions.episode_ids)[np.asarray(transitions.future_worst_h) > 0])


def recovery_steps(transitions: Any) -> np.ndarray:
    """1.0 on the steps out of the failure set, ``h(s_t) > 0`` and ``h(s_{t+1}) < h(s_t)`` in one episode."""
    h, ids = np.asarray(transitions.h), np.asarray(transitions.episode_ids)
    same_episode = np.append(ids[1:] == ids[:-1], False)  # the next row continues this episode
    next_h = np.append(h[1:], np.inf)
    return ((h > 0) & same_episode & (next_h < h)).astype(np.float32)


def _ensure_registered(env_id: str | None) -> bool:
    if not env_id:
        return False
    if env_id not in gym.registry and "safety" in env_id.lower():
        try:  # Safety-Gymnasium ids are registered by our compatibility module
            importlib.import_module("safefql.envs.safety_gym")
        except Exception:  # noqa: BLE001 - optional stack; evaluation is skipped without it
            return False
    return env_id in gym.registry


def evaluate_policy(
    policy: Any, env_id: str, episodes: int, *, seed: int = EVAL_START_SEED
) -> dict[str, float]:
    """Mean episode return, mean episode cost and violation rate (episodes with any cost) of ``policy.act``.

    The boat (``safefql/BoatNav-v0``) runs one batched NumPy rollout from ``episodes`` fixed oracle-safe
    starts (``load_boat_oracle().safe_starts(episodes, seed)``), equal to the MuJoCo env; other registered
    ids run ``episodes`` sequential env episodes (``reset(seed=seed + i)``) with the deterministic actor.
    """
    if not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be a positive integer, got {episodes!r}")
    from safefql.envs import BOAT_ID

    if env_id == BOAT_ID:
        from safefql.envs.oracle import load_boat_oracle

        starts = load_boat_oracle().safe_starts(episodes, seed=seed)
        ep = boat_episodes(policy, starts)
        returns, costs = ep["return"], ep["cost"]
    else:
        if not _ensure_registered(env_id):
            raise ValueError(f"env id {env_id!r} is not registered with gymnasium; cannot evaluate")
        env = gym.make(env_id)
        returns, costs = np.zeros(episodes), np.zeros(episodes)
        try:
            for i in range(episodes):
                obs, _ = env.reset(seed=seed + i)
                done = False
                while not done:
                    obs, r, term, trunc, info = env.step(policy.act(obs))
                    returns[i] += float(r)
                    costs[i] += float(info.get("cost", 0.0))
                    done = term or trunc
        finally:
            env.close()
    return {
        "return": float(returns.mean()),
        "cost": float(costs.mean()),
        "violation_rate": float(np.mean(costs > 0)),
    }


# --------------------------------------------------------------------------------------------- helpers
def _spaces(env_id: str | None, obs_dim: int, act_dim: int) -> tuple[gym.spaces.Box, gym.spaces.Box]:
    """The env's spaces when the id is registered, else unbounded observations and [-1, 1] actions."""
    if _ensure_registered(env_id):
        env = gym.make(env_id)
        try:
            obs_space, act_space = env.observation_space, env.action_space
        finally:
            env.close()
        if not isinstance(obs_space, gym.spaces.Box) or not isinstance(act_space, gym.spaces.Box):
            raise ValueError(f"env {env_id!r} must have Box observation and action spaces")
        if obs_space.shape != (obs_dim,) or act_space.shape != (act_dim,):
            raise ValueError(
                f"dataset shapes (obs {obs_dim}, action {act_dim}) do not match env {env_id!r} spaces "
                f"(obs {obs_space.shape}, action {act_space.shape})"
            )
        return obs_space, act_space
    obs_space = gym.spaces.Box(-np.inf, np.inf, shape=(obs_dim,), dtype=np.float32)
    return obs_space, gym.spaces.Box(-1.0, 1.0, shape=(act_dim,), dtype=np.float32)


def save_calib_episodes(path: str | os.PathLike, calib: Any) -> None:
    """Write calibration ``Transitions`` as ``.npz`` (arrays + metadata JSON, no pickle), atomically."""
    from safefql.datasets.load import ARRAY_KEYS

    buf = io.BytesIO()
    arrays = {k: np.asarray(getattr(calib, k)) for k in ARRAY_KEYS}
    meta = json.dumps(dict(getattr(calib, "metadata", {}) or {}), default=str)
    np.savez_compressed(buf, **arrays, metadata_json=np.array(meta))
    atomic_write_bytes(path, buf.getvalue())


def load_calib_episodes(path: str | os.PathLike) -> Any:
    """The calibration ``Transitions`` a training run saved (``calib_episodes.npz``; no pickle)."""
    from safefql.datasets.load import ARRAY_KEYS, Transitions

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"calibration episodes file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ARRAY_KEYS}
            meta = json.loads(str(z["metadata_json"]))
    except KeyError as e:
        raise ValueError(f"{path} is not a calibration-episodes file: missing array {e}") from e
    return Transitions(**arrays, metadata=meta)


def _index(tree: Any, i: int) -> Any:
    return jax.tree.map(lambda x: x[i], tree)


def _finite_or_raise(info: dict[str, np.ndarray], start: int, stop: int, kept: Path) -> None:
    bad = [k for k in sorted(info) if not np.all(np.isfinite(np.asarray(info[k])))]
    if not bad:
        return
    bad.sort(key=lambda k: "loss" not in k)  # name a loss first; gradient norms follow from it
    first = np.asarray(info[bad[0]])
    others = f" (also non-finite: {', '.join(bad[1:])})" if len(bad) > 1 else ""
    raise TrainingDivergedError(
        f"loss/metric {bad[0]!r} became {'NaN' if np.isnan(first).any() else 'inf'} during updates "
        f"{start}..{stop} (chunk mean){others}; training stopped. The last good state (update {start}) is "
        f"kept in {kept}. Lower the learning rates, set grad_clip, or check the data."
    )


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _read_csv(path: Path, up_to_step: int) -> tuple[list[dict[str, Any]], list[str]]:
    if not path.is_file():
        return [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = []
        for row in reader:
            if int(row["step"]) > up_to_step:
                continue
            rows.append({k: (v if v == "" else float(v)) for k, v in row.items()})
    for row in rows:
        row["step"] = int(row["step"])
    return rows, columns


def _tensorboard(run_dir: Path) -> Any | None:
    """A SummaryWriter when tensorboardX or torch is importable, else None (TensorBoard is optional)."""
    for module in ("tensorboardX", "torch.utils.tensorboard"):
        try:
            return importlib.import_module(module).SummaryWriter(str(run_dir / "tensorboard"))
        except Exception:  # noqa: BLE001 - any import/initialisation failure means "no TensorBoard"
            continue
    return None


def plot_training_curves(rows: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Losses and evaluation metrics against updates, as a PNG (matplotlib Agg), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str) -> tuple[np.ndarray, np.ndarray]:
        pts = [(r["step"], r[key]) for r in rows if r.get(key, "") != ""]
        return (np.array([p[0] for p in pts]), np.array([p[1] for p in pts], dtype=float))

    critic = ("reward_q_loss", "reward_v_loss", "safety_q_loss", "safety_v_loss")
    panels = [
        ("critic losses", [f"critic/{k}" for k in critic], True),
        ("actor / flow losses", ["actor/actor_loss", "actor/distill_loss", "flow/flow_loss"], False),
        ("safety gate", ["actor/gate_frac", "critic/safe_frac_v"], False),
        ("evaluation", ["eval/cost", "eval/violation_rate"], False),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, (title, keys, log) in zip(axes.ravel(), panels, strict=True):
        for key in keys:
            x, y = series(key)
            if x.size:
                ax.plot(x, y, marker="o" if key.startswith("eval/") else None, ms=3, label=key.split("/")[-1])
                log = log and bool(np.all(y > 0))
        if title == "evaluation":
            x, y = series("eval/return")
            if x.size:
                twin = ax.twinx()
                twin.plot(x, y, color="k", marker="s", ms=3, label="return")
                twin.set_ylabel("return")
                twin.legend(fontsize=8, loc="lower right")
        if ax.get_lines():
            ax.legend(fontsize=8, loc="upper right")
            if log:
                ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("update")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


class _Progress:
    """A rich progress bar with live losses, or nothing."""

    def __init__(self, enabled: bool, total: int, start: int):
        self._p = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._p = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[live]}"),
            )
            self._p.start()
            self._task = self._p.add_task("train", total=total, completed=start, rate="", live="compiling...")

    def update(self, step: int, rate: float, live: str) -> None:
        if self._p is not None:
            self._p.update(self._task, completed=step, rate=f"{rate:.0f} upd/s", live=live)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()


_PROGRAMS: dict[Any, Callable] = {}
_MAX_PROGRAMS = 8


def _compiled(fn: Any, args: tuple) -> tuple[Callable, float]:
    """AOT-compiled ``fn`` for these argument shapes, cached per process; returns (program, compile seconds).

    The cache key is the argument tree structure (static fields such as the config included) and every
    array leaf's shape and dtype, so a second run with the same config and data shapes compiles nothing.
    """
    leaves, treedef = jax.tree_util.tree_flatten(eqx.filter(args, eqx.is_array))
    key = (getattr(fn, "__wrapped__", fn), treedef, tuple((x.shape, str(x.dtype)) for x in leaves), args[-1])
    if key in _PROGRAMS:
        return _PROGRAMS[key], 0.0
    t0 = time.perf_counter()
    program = fn.lower(*args).compile()
    took = time.perf_counter() - t0
    if len(_PROGRAMS) >= _MAX_PROGRAMS:
        _PROGRAMS.pop(next(iter(_PROGRAMS)))
    _PROGRAMS[key] = program
    return program, took


# --------------------------------------------------------------------------------------------- train
def finished_run(
    run_dir: str | os.PathLike,
    config: Any,
    *,
    steps: int | None,
    seeds: int,
    seed: int,
    dataset_id: str | None,
    calib_fraction: float | None = None,
) -> TrainResult | None:
    """The finished run in ``run_dir`` if ``train`` with these arguments would make the same one, else None.

    Reads the run's ``summary.json`` and its first policy header: same updates, seeds, seed, dataset,
    config (keys added to ``SafeFQLConfig`` since the run take their defaults) and held-out fraction.
    Benchmarks use it to evaluate a long run again without training it again.
    """
    from safefql.training.config import SafeFQLConfig

    run_dir = Path(run_dir)
    try:
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
        paths = [Path(p) for p in summary["policy_paths"]]
        header = read_header(paths[0])
        same_config = SafeFQLConfig.from_dict(header["config"]) == config
    except (FileNotFoundError, KeyError, IndexError, TypeError, ValueError):
        return None
    want = {"steps": steps or config.num_updates, "num_seeds": seeds, "seed": seed, "dataset_id": dataset_id}
    if not same_config or any(summary.get(k) != v for k, v in want.items()) or len(paths) != seeds:
        return None
    split = header.get("split") or {}
    if calib_fraction is not None and split.get("calib_fraction") != calib_fraction:
        return None
    if not all(p.is_file() for p in paths):
        return None
    fields = set(TrainResult.__dataclass_fields__)
    kwargs = {k: v for k, v in summary.items() if k in fields}
    kwargs |= {"run_dir": Path(summary["run_dir"]), "policy_paths": paths}
    kwargs["train_state_path"] = Path(summary["train_state_path"])
    return TrainResult(**kwargs)


def train(
    data: str | Any,
    *,
    out_dir: str | os.PathLike,
    config: Any | None = None,
    steps: int | None = None,
    seed: int = 0,
    seeds: int = 1,
    calib_fraction: float = 0.1,
    eval_every: int | None = None,
    eval_episodes: int = 10,
    resume: bool = False,
    overwrite: bool = False,
    reuse: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train SafeFQL on a dataset id (or a ``Transitions``) and write a run directory (module docstring).

    ``config`` defaults to ``default_config(env_id)``; ``steps`` to ``config.num_updates``. ``seeds > 1``
    trains that many agents in one vmapped program (seed keys split from ``seed``) and reports the mean and
    spread of the eval metrics; its agent ``i`` is therefore not the run ``seed=i`` would make, and all
    agents share ``seed``'s calibration split. ``calib_fraction`` of the episodes (0 disables the split)
    are held out and saved for ``safefql calibrate``. ``eval_every`` (updates; None: about 10 evaluations
    per run, 0: only at the end) and ``eval_episodes`` (0 disables evaluation) control evaluation, which
    runs when the dataset's env id is registered. ``resume=True`` continues the run in ``out_dir``
    exactly; an existing run is otherwise refused unless ``overwrite=True``. ``reuse=True`` returns the
    finished run in ``out_dir`` without training when this call would make the same one
    (:func:`finished_run`, looked up from the dataset's metadata before its arrays are loaded; its
    evaluation is the run's own). Raises :class:`TrainingDivergedError` on NaN/inf.
    """
    from safefql.training import safefql as sf
    from safefql.training.config import SafeFQLConfig, default_config

    t_call = time.perf_counter()
    # ---- arguments
    for name, value, lo in (("seed", seed, 0), ("seeds", seeds, 1), ("eval_episodes", eval_episodes, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if eval_every is not None and (
        not isinstance(eval_every, int) or isinstance(eval_every, bool) or eval_every < 0
    ):
        raise ValueError(f"eval_every must be a non-negative integer or None, got {eval_every!r}")
    if not isinstance(calib_fraction, int | float) or not (0.0 <= calib_fraction < 1.0):
        raise ValueError(f"calib_fraction must lie in [0, 1), got {calib_fraction!r}")
    if config is not None and not isinstance(config, SafeFQLConfig):
        raise ValueError(f"config must be a SafeFQLConfig or None, got {type(config).__name__}")
    run_dir = Path(out_dir)
    state_path = run_dir / TRAIN_STATE_FILE
    if resume and not state_path.is_file():
        raise FileNotFoundError(f"cannot resume: no {TRAIN_STATE_FILE} in {run_dir}")
    if resume and reuse:
        raise ValueError("resume=True continues a run, reuse=True returns a finished one: pass only one")
    if not resume and not overwrite and not reuse and state_path.exists():
        raise ValueError(f"{run_dir} already holds a training run; pass resume=True or overwrite=True")

    # ---- data (a finished run to reuse is looked up first: loading a large dataset takes a while)
    from_disk = isinstance(data, str | os.PathLike)
    if from_disk:
        from safefql.datasets.load import dataset_identity, load_transitions

        dataset_id, env_id = dataset_identity(data)
    else:
        metadata = dict(getattr(data, "metadata", None) or {})
        dataset_id, env_id = metadata.get("dataset_id"), metadata.get("env_id")
    if reuse:
        found = finished_run(
            run_dir,
            config or default_config(env_id or ""),
            steps=steps,
            seeds=seeds,
            seed=seed,
            dataset_id=dataset_id,
            calib_fraction=calib_fraction,
        )
        if found is not None:
            found.reused = True
            return found
        if not overwrite and state_path.exists():
            raise ValueError(
                f"{run_dir} already holds a training run of another call; pass resume=True or overwrite=True"
            )
    transitions = load_transitions(data) if from_disk else data
    metadata = dict(getattr(transitions, "metadata", None) or {})
    if calib_fraction > 0:
        from safefql.datasets.load import split_episodes

        train_t, calib_t = split_episodes(transitions, float(calib_fraction), seed)
        calib_ids = [int(i) for i in np.unique(calib_t.episode_ids)]
    else:
        train_t, calib_t, calib_ids = transitions, None, []
    obs_dim, act_dim = int(train_t.observations.shape[1]), int(train_t.actions.shape[1])
    obs_space, act_space = _spaces(env_id, obs_dim, act_dim)

    # ---- state: fresh or resumed
    prior: dict[str, Any] = {}
    if resume:
        prior = read_header(state_path)
        tr = prior.get("training", {})
        saved_config = SafeFQLConfig.from_dict(prior["config"])
        if config is not None and config != saved_config:
            raise ValueError(f"resume: config differs from the run's saved config in {run_dir}")
        config = saved_config
        mismatches = {
            "seed": (tr.get("seed"), seed),
            "num_seeds": (tr.get("num_seeds"), seeds),
            "dataset_id": (prior.get("dataset_id"), dataset_id),
            "calib_episode_ids": (prior.get("split", {}).get("calib_episode_ids"), calib_ids),
        }
        bad = {k: v for k, v in mismatches.items() if v[0] != v[1]}
        if bad:
            details = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in bad.items())
            raise ValueError(f"resume: this call does not match the run in {run_dir} ({details})")
        state, _ = load_checkpoint(state_path)
        start = int(tr["step"])
        done_steps = int(np.max(np.asarray(state.step)))
        if done_steps != start:
            raise ValueError(f"resume: {state_path} holds update {done_steps} but its header says {start}")
    else:
        config = config or default_config(env_id or "")
        start = 0
        init_key = jax.random.split(jax.random.PRNGKey(seed))[0]
        if seeds == 1:
            state = sf.create_train_state(config, obs_dim, act_dim, init_key)
        else:
            # Stacked single-seed states, equal to create_train_states (its vmapped init recompiles per call).
            keys = jax.random.split(init_key, seeds)
            parts = [sf.create_train_state(config, obs_dim, act_dim, k) for k in keys]
            state = jax.tree.map(lambda *xs: jnp.stack(xs), *parts)
    dataset = device_dataset(train_t, config)
    # the learner sees (obs - mean) / std; saved policies get it folded into their weights
    stats = sf.observation_stats(train_t.observations) if config.normalize_observations else None
    obs_norm = None if stats is None else {"mean": stats[0].tolist(), "std": stats[1].tolist()}
    if stats is not None:
        mean, std = stats
        if resume and prior.get("observation_normalization") != obs_norm:
            raise ValueError(
                f"resume: the observation statistics of this call's training split differ from those "
                f"saved in {state_path}"
            )
        dataset = dataset.standardized(mean, std)

    def exported(agent: Any) -> Any:
        """The agent as a policy checkpoint holds it: on raw observations."""
        return agent if stats is None else sf.fold_observation_normalization(agent, *stats)

    total = int(steps if steps is not None else config.num_updates)
    if total < start:
        raise ValueError(f"steps={total} is below the {start} updates the run in {run_dir} already made")
    run_key = jax.random.split(jax.random.PRNGKey(seed))[1]
    run_keys = jax.random.split(run_key, seeds) if seeds > 1 else None
    chunk = config.steps_per_call
    do_eval = eval_episodes > 0 and _ensure_registered(env_id)
    if eval_every is None:
        eval_every = max(chunk, -(-total // 10))
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:  # overwrite: drop the previous run's outputs so no stale file survives
        stale = [TRAIN_STATE_FILE, POLICY_FILE, METRICS_FILE, CURVE_FILE, SUMMARY_FILE, CALIB_EPISODES_FILE]
        for p in [*(run_dir / n for n in stale), *run_dir.glob("policy_seed*.eqx")]:
            p.unlink(missing_ok=True)
    if calib_t is not None and not resume:
        save_calib_episodes(run_dir / CALIB_EPISODES_FILE, calib_t)

    base_header = {
        "config": config.to_dict(),
        "observation_space": space_to_dict(obs_space),
        "action_space": space_to_dict(act_space),
        "env_id": env_id,
        "dataset_id": dataset_id,
        "split": {
            "calib_fraction": float(calib_fraction),
            "seed": seed,
            "calib_episode_ids": calib_ids,
            "calib_file": CALIB_EPISODES_FILE if calib_t is not None else None,
            "train_episodes": int(np.unique(train_t.episode_ids).size),
            "train_transitions": int(train_t.observations.shape[0]),
        },
    }
    prior_training = prior.get("training", {})
    wall_before = float(prior_training.get("wall_time_s", 0.0))
    compile_s, train_s, eval_s, trained = 0.0, 0.0, 0.0, 0
    last_eval: dict[str, Any] = dict(prior_training.get("eval") or {})
    per_seed_eval: list[dict[str, float]] = list(prior_training.get("per_seed_eval") or [])

    def training_block(step: int) -> dict[str, Any]:
        return {
            "step": step,
            "steps_target": total,
            "seed": seed,
            "num_seeds": seeds,
            "run_key": np.asarray(run_key).tolist(),
            "chunk_size": chunk,
            "wall_time_s": wall_before + time.perf_counter() - t_call,
            "updates_per_s": trained / train_s if train_s > 0 else None,
            "compile_time_s": compile_s,
            "eval": last_eval,
            "per_seed_eval": per_seed_eval,
        }

    def save_state(st: Any, step: int) -> None:
        header = dict(base_header, kind="train_state", num_seeds=seeds, training=training_block(step))
        if obs_norm is not None:
            header["observation_normalization"] = obs_norm
        save_checkpoint(state_path, st, header)

    def run_eval(st: Any) -> dict[str, float]:
        nonlocal per_seed_eval
        from safefql.training.policy import SafeFQLPolicy

        header = dict(base_header, kind="policy")
        agents = [st.agent] if seeds == 1 else [_index(st.agent, i) for i in range(seeds)]
        per_seed_eval = [
            evaluate_policy(SafeFQLPolicy.from_agent(exported(a), header).numpy(), env_id, eval_episodes)
            for a in agents
        ]
        out = {}
        for key in _EVAL_KEYS:
            vals = np.array([m[key] for m in per_seed_eval])
            out[key] = float(vals.mean())
            if seeds > 1:
                out[f"{key}_std"] = float(vals.std(ddof=1))
        return out

    # ---- logging
    csv_path = run_dir / METRICS_FILE
    rows, columns = _read_csv(csv_path, start) if resume else ([], [])
    writer = _tensorboard(run_dir)
    bar = _Progress(progress, total, start)
    step = start
    last_info: dict[str, float] = {}
    try:
        while step < total:
            stop = min(total, (step // chunk + 1) * chunk)
            n = stop - step
            if seeds == 1:
                key = jax.random.fold_in(run_key, step)
                fn, args = sf.train_steps, (state, dataset, key, n)
            else:
                key = jax.vmap(jax.random.fold_in, in_axes=(0, None))(run_keys, step)
                fn, args = sf.train_steps_multi, (state, dataset, key, n)
            program, took = _compiled(fn, args)
            compile_s += took
            t0 = time.perf_counter()
            new_state, info = program(*args)
            info = jax.device_get(info)
            jax.block_until_ready(new_state)
            train_s += time.perf_counter() - t0
            try:
                _finite_or_raise(info, step, stop, state_path)
            except TrainingDivergedError:
                save_state(state, step)  # keep the last good state; nothing later overwrites it
                if rows:
                    _write_csv(csv_path, rows, columns)
                raise
            state, trained, prev, step = new_state, trained + n, step, stop
            last_info = {k: float(np.mean(v)) for k, v in info.items()}
            row: dict[str, Any] = {"step": step, "wall_time_s": wall_before + time.perf_counter() - t_call}
            row |= last_info
            is_eval_point = step == total or (eval_every > 0 and prev // eval_every < step // eval_every)
            if is_eval_point and do_eval:
                t0 = time.perf_counter()
                last_eval = run_eval(state)
                eval_s += time.perf_counter() - t0
                row |= {f"eval/{k}": v for k, v in last_eval.items()}
            for k in row:
                if k not in columns:
                    columns.append(k)
            rows.append(row)
            if writer is not None:
                for k, v in row.items():
                    if k != "step":
                        writer.add_scalar(k, v, step)
            if is_eval_point:
                save_state(state, step)
                _write_csv(csv_path, rows, columns)
            live = "  ".join(f"{short} {last_info[k]:.3g}" for k, short in _LIVE_KEYS if k in last_info)
            if "return" in last_eval:
                live += f"  | eval R {last_eval['return']:.4g} C {last_eval['cost']:.3g}"
            bar.update(step, trained / train_s if train_s > 0 else 0.0, live)
    finally:
        bar.close()
        if writer is not None:
            writer.close()

    # ---- final outputs
    if trained == 0:  # resumed a finished run: refresh the outputs only
        if do_eval and not last_eval:
            last_eval = run_eval(state)
    save_state(state, step)
    if rows:
        _write_csv(csv_path, rows, columns)
    final_training = training_block(step)
    policy_paths = []
    for i in range(seeds):
        agent = state.agent if seeds == 1 else _index(state.agent, i)
        header = dict(base_header, kind="policy", calibration=None, training=final_training)
        if obs_norm is not None:  # provenance only: the weights already take raw observations
            header["observation_normalization"] = {**obs_norm, "folded": True}
        if seeds > 1:
            header["seed_index"] = i
        path = run_dir / policy_file(None if seeds == 1 else i)
        policy_paths.append(save_checkpoint(path, exported(agent), header))
    curve = plot_training_curves(rows, run_dir / CURVE_FILE) if rows else None
    result = TrainResult(
        run_dir=run_dir,
        policy_paths=policy_paths,
        train_state_path=state_path,
        steps=step,
        num_seeds=seeds,
        seed=seed,
        env_id=env_id,
        dataset_id=dataset_id,
        eval=dict(last_eval),
        per_seed_eval=list(per_seed_eval),
        updates_per_s=(trained / train_s) if train_s > 0 else float("nan"),
        compile_time_s=compile_s,
        wall_time_s=wall_before + time.perf_counter() - t_call,
        eval_time_s=eval_s,
        final_losses=last_info,
    )
    d = result.to_dict()
    d["curve_png"] = None if curve is None else str(curve)
    atomic_write_text(run_dir / SUMMARY_FILE, json.dumps(_finite_json(d), indent=2))
    if progress:
        from rich.console import Console

        Console().print(result.summary_table())
    return result


def _finite_json(o: Any) -> Any:
    """Strict-JSON copy: NumPy scalars to Python, non-finite floats to strings."""
    if isinstance(o, dict):
        return {str(k): _finite_json(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_finite_json(v) for v in o]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    return o


__all__ = [
    "TrainResult",
    "TrainingDivergedError",
    "evaluate_policy",
    "finished_run",
    "load_calib_episodes",
    "save_calib_episodes",
    "plot_training_curves",
    "policy_file",
    "train",
]
