"""Import a DSRL-style flat HDF5 file as a Minari dataset with cost/h infos.

Expected datasets in the file (N transitions, concatenated episodes): ``observations (N, d)``,
``actions (N, a)``, ``rewards (N,)``, ``costs (N,)``, ``terminals (N,)``, ``timeouts (N,)``,
``next_observations (N, d)``, optionally ``h (N,)``.

Alignment (as in DSRL, which stores what ``env.step`` returned): ``costs[t]`` and ``h[t]`` describe the
state the step led to, ``next_observations[t]``. In Minari's layout (``infos[i]`` describes
``observations[i]``) they become ``infos["cost"][t + 1]`` and ``infos["h"][t + 1]``. A DSRL file has no
value for the reset state of an episode; it gets cost 0 and h = -1 (Safety-Gymnasium resets the agent
outside the hazards), recorded in the metadata as ``reset_state_h``.

Without an ``h`` key the margin is the binary-cost surrogate ``h = kappa if cost > 0 else -1`` (FISOR /
SafeFQL, kappa = 25 by default), recorded as ``kappa`` and ``h_source = "surrogate"``.

Episodes end at ``terminals`` or ``timeouts``; also where ``next_observations[t] != observations[t + 1]``
without a flag (an unflagged break, stored as a truncation and counted in ``unflagged_breaks``), and at
the end of the file (a truncation when the last flag is missing).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from safefql.datasets.collect import (
    DEFAULT_KAPPA,
    CollectSummary,
    EpisodeRecord,
    _summary_from_written,
    refuse_existing,
    validate_dataset_id,
    write_minari_dataset,
)

REQUIRED_KEYS = ("observations", "actions", "rewards", "costs", "terminals", "timeouts", "next_observations")
RESET_STATE_H = -1.0


def _open_h5(path: Path) -> Any:
    import h5py

    if not path.exists():
        raise FileNotFoundError(f"HDF5 file not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {e}") from e


def read_dsrl_arrays(file: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read and validate the DSRL keys of ``file`` (``h`` included when present)."""
    path = Path(file).expanduser()
    f = _open_h5(path)
    try:
        out: dict[str, np.ndarray] = {}
        for key in (*REQUIRED_KEYS, "h"):
            if key not in f:
                if key == "h":
                    continue
                raise ValueError(f"{path}: missing key {key!r} (found keys: {sorted(f.keys())})")
            obj = f[key]
            if not hasattr(obj, "dtype"):
                raise ValueError(f"{path}: {key!r} is a group, expected an array")
            try:
                out[key] = obj[()]
            except OSError as e:
                raise ValueError(f"{path}: cannot read {key!r} (truncated or corrupt file?): {e}") from e
    finally:
        f.close()
    n = out["observations"].shape[0] if out["observations"].ndim >= 1 else -1
    for key, arr in out.items():
        want_ndim = 2 if key in ("observations", "next_observations", "actions") else 1
        if key in ("rewards", "costs", "terminals", "timeouts", "h") and arr.ndim == 2 and arr.shape[1] == 1:
            arr = out[key] = arr[:, 0]
        if arr.ndim != want_ndim:
            raise ValueError(f"{path}: {key!r} must have {want_ndim} dimension(s), got shape {arr.shape}")
        if arr.shape[0] != n:
            raise ValueError(f"{path}: {key!r} has length {arr.shape[0]}, but 'observations' has {n}")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise ValueError(f"{path}: {key!r} must be numeric, got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{path}: {key!r} has non-finite values")
    if n == 0:
        raise ValueError(f"{path}: the file has no transitions")
    if out["next_observations"].shape != out["observations"].shape:
        raise ValueError(
            f"{path}: 'next_observations' has shape {out['next_observations'].shape}, "
            f"'observations' has {out['observations'].shape}"
        )
    return out


def episode_ends(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    """Indices of each episode's last transition, whether it ended by truncation, and unflagged breaks."""
    term = arrays["terminals"].astype(bool)
    tout = arrays["timeouts"].astype(bool)
    obs, nxt = arrays["observations"], arrays["next_observations"]
    n = term.shape[0]
    cont = np.zeros(n, dtype=bool)
    if n > 1:
        same = np.all(np.isclose(nxt[:-1], obs[1:], rtol=1e-5, atol=1e-6), axis=1)
        cont[:-1] = same
    flagged = term | tout
    unflagged = ~flagged & ~cont
    unflagged[-1] = False
    ends = np.flatnonzero(flagged | unflagged | (np.arange(n) == n - 1))
    truncated = ~term[ends]
    return ends, truncated, int(unflagged.sum())


def import_hdf5(
    file: str | os.PathLike,
    env_id: str,
    dataset_id: str,
    *,
    kappa: float = DEFAULT_KAPPA,
    overwrite: bool = False,
    progress: bool = True,
) -> CollectSummary:
    """Convert the DSRL-style HDF5 ``file`` recorded on ``env_id`` into the Minari dataset ``dataset_id``.

    Raises FileNotFoundError for a missing file; ValueError naming the file and key for a non-HDF5,
    truncated or corrupt file, a missing key, a length/shape mismatch, an unknown env id or a bad kappa;
    FileExistsError for an existing dataset id without ``overwrite``.
    """
    t0 = time.perf_counter()
    path = Path(file).expanduser()
    if not (isinstance(kappa, int | float) and math.isfinite(kappa) and kappa > 0):
        raise ValueError(f"kappa must be a finite number > 0, got {kappa!r}")
    validate_dataset_id(dataset_id)
    if not isinstance(env_id, str) or env_id not in gym.registry:
        raise ValueError(f"unknown env id {env_id!r}: not in the gymnasium registry")
    refuse_existing(dataset_id, overwrite)
    arrays = read_dsrl_arrays(path)

    env = gym.make(env_id)
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    if not isinstance(obs_space, gym.spaces.Box) or not isinstance(act_space, gym.spaces.Box):
        raise ValueError(f"env {env_id!r}: only Box observation and action spaces are supported")
    for key, space in (("observations", obs_space), ("next_observations", obs_space), ("actions", act_space)):
        if arrays[key].shape[1:] != space.shape:
            raise ValueError(
                f"{path}: {key!r} rows have shape {arrays[key].shape[1:]}, but {env_id} expects {space.shape}"
            )

    has_h = "h" in arrays
    costs = arrays["costs"].astype(np.float64)
    h = arrays["h"].astype(np.float64) if has_h else np.where(costs > 0, float(kappa), -1.0)
    obs = arrays["observations"].astype(obs_space.dtype)
    nxt = arrays["next_observations"].astype(obs_space.dtype)
    act = arrays["actions"].astype(act_space.dtype)
    rew = arrays["rewards"].astype(np.float64)
    term = arrays["terminals"].astype(bool)
    ends, truncated, breaks = episode_ends(arrays)

    def episodes() -> Iterator[EpisodeRecord]:
        start = 0
        for end, trunc in zip(ends, truncated, strict=True):
            sl = slice(start, end + 1)
            steps = end + 1 - start
            truncs = np.zeros(steps, dtype=bool)
            truncs[-1] = bool(trunc)
            yield EpisodeRecord(
                observations=np.concatenate([obs[sl], nxt[end : end + 1]]),
                actions=act[sl],
                rewards=rew[sl],
                terminations=term[sl],
                truncations=truncs,
                cost=np.concatenate([[0.0], costs[sl]]),
                h=np.concatenate([[RESET_STATE_H], h[sl]]),
            )
            start = end + 1

    meta = {
        "collector": "hdf5_import (DSRL layout)",
        "source_file": str(path.resolve()),
        "kappa": float(kappa) if not has_h else None,
        "h_source": "file" if has_h else "surrogate",
        "cost_alignment": "file costs[t] / h[t] describe next_observations[t] (infos index t + 1)",
        "reset_state_h": RESET_STATE_H,
        "reset_state_cost": 0.0,
        "unflagged_breaks": breaks,
        "source_transitions": int(obs.shape[0]),
        "env_version": gym.spec(env_id).version,
    }
    written = write_minari_dataset(
        dataset_id,
        episodes(),
        env_id=env_id,
        observation_space=obs_space,
        action_space=act_space,
        metadata=meta,
        overwrite=overwrite,
        algorithm_name=f"safefql import-hdf5: {path.name}",
        description=f"imported from {path.name} ({env_id})",
        total=int(ends.size),
        progress=progress,
    )
    return _summary_from_written(written, time.perf_counter() - t0)


__all__ = ["REQUIRED_KEYS", "episode_ends", "import_hdf5", "read_dsrl_arrays"]
