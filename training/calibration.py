"""Conformal calibration of the safety critic (DESIGN.md section 4).

Two sources, each with the guarantee it carries stated in words in :class:`Calibration.guarantee`:

- **offline** (:func:`offline_scores` + :func:`offline_conformal_delta`): held-out calibration episodes
  never used in training. One state per episode (exchangeability is per episode), score
  ``e_i = R_i - Q_h(s_i, a_i)`` with ``R_i`` the worst future margin along the logged continuation, and
  ``delta`` the ``ceil((n + 1)(1 - eps))``-th smallest score. Then ``P(R <= Q_h(s, a) + delta) >= 1 - eps``
  for a new episode exchangeable with the calibration episodes (i.e. under the behaviour policy).
- **rollout** (:func:`rollout_calibrate`): N start states rolled out with the final policy in the boat
  simulator; a start is judged safe at level ``delta`` when ``V_h(s0) + delta <= 0``; among the ``n``
  judged-safe starts, ``k`` violate. ``eps = Beta.ppf(1 - beta', k + 1, n - k)`` (Clopper-Pearson upper
  bound) with ``beta' = beta / len(delta_grid)`` (Bonferroni, so the bound holds simultaneously over the
  grid and choosing ``delta`` with the same rollouts keeps confidence ``1 - beta``). The chosen ``delta``
  is the smallest grid value whose ``eps <= eps_target``.

:func:`calibrate` is the driver behind ``safefql calibrate CKPT --source offline|rollout``: it loads the
policy, computes the calibration and stores it in the checkpoint header (atomically).
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import scipy.stats

SOURCES = ("offline", "rollout")
CALIB_EPISODES_FILE = "calib_episodes.npz"
DEFAULT_DELTA_GRID = tuple(float(x) for x in np.round(np.linspace(-0.5, 1.0, 61), 6))


class _SafetyPolicy(Protocol):
    def act(self, obs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray: ...

    def safety_value(self, obs: np.ndarray) -> np.ndarray: ...

    def safety_q(self, obs: np.ndarray, action: np.ndarray) -> np.ndarray: ...


def _check_eps(eps: float, name: str = "eps") -> float:
    eps = float(eps)
    if not (0.0 < eps < 1.0) or math.isnan(eps):
        raise ValueError(f"{name} must lie in the open interval (0, 1), got {eps}")
    return eps


def _float_to_json(x: float) -> float | str:
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf" if x < 0 else "nan")


def _float_from_json(x: float | str) -> float:
    return float(x)


@dataclass(frozen=True)
class Calibration:
    """A calibrated threshold and the guarantee it carries.

    ``delta`` is added to the safety value before the test ``V_h + delta <= 0`` (or ``Q_h + delta <= 0``);
    ``eps`` the allowed miscoverage / violation fraction; ``beta`` the confidence parameter (rollout
    source; ``None`` for offline, whose guarantee is marginal); ``n`` the number of calibration samples
    (offline: episodes; rollout: judged-safe starts at the chosen ``delta``); ``k`` the number of
    violations among them (rollout) or of scores above ``delta`` (offline); ``details`` extra numbers
    (per-grid counts for the rollout source, the score quantiles for offline).
    """

    delta: float
    eps: float
    beta: float | None
    n: int
    k: int
    source: str
    guarantee: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"calibration source must be one of {SOURCES}, got {self.source!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite floats become the strings ``"inf"``/``"-inf"``)."""
        d = asdict(self)
        d["delta"] = _float_to_json(float(self.delta))
        d["eps"] = _float_to_json(float(self.eps))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict`."""
        missing = {"delta", "eps", "beta", "n", "k", "source", "guarantee"} - set(d)
        if missing:
            raise ValueError(f"calibration dict is missing keys {sorted(missing)}")
        return cls(
            delta=_float_from_json(d["delta"]),
            eps=_float_from_json(d["eps"]),
            beta=None if d["beta"] is None else float(d["beta"]),
            n=int(d["n"]),
            k=int(d["k"]),
            source=str(d["source"]),
            guarantee=str(d["guarantee"]),
            details=dict(d.get("details") or {}),
        )

    def summary_table(self):  # -> rich.table.Table
        """A rich table for printing (the CLI prints this)."""
        from rich.table import Table

        table = Table(title=f"safefql calibration ({self.source})", show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value")
        table.add_row("delta", f"{self.delta:.6g}")
        table.add_row("eps", f"{self.eps:.6g}")
        table.add_row("beta", "-" if self.beta is None else f"{self.beta:.3g}")
        table.add_row("n", str(self.n))
        table.add_row("k", str(self.k))
        table.add_row("guarantee", self.guarantee)
        return table


# --------------------------------------------------------------------------------------------- offline
def offline_conformal_delta(scores: np.ndarray | Sequence[float], eps: float) -> float:
    """Split-conformal threshold: the ``ceil((n + 1)(1 - eps))``-th smallest of ``scores``.

    With exchangeable scores, a new score ``e`` satisfies ``P(e <= delta) >= 1 - eps`` (and, without ties,
    ``<= 1 - eps + 1 / (n + 1)``). When ``ceil((n + 1)(1 - eps)) > n`` there are too few scores for this
    ``eps`` (need ``n >= 1 / eps - 1``): the function warns and returns ``+inf`` (nothing is certified).
    """
    eps = _check_eps(eps)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be a 1-D array, got shape {s.shape}")
    if s.size == 0:
        raise ValueError("scores is empty: need at least one calibration score")
    if not np.all(np.isfinite(s)):
        bad = int(np.sum(~np.isfinite(s)))
        raise ValueError(f"scores contain {bad} NaN/inf value(s); conformal calibration needs finite scores")
    n = s.size
    # Guard against float error in (n + 1) * (1 - eps) landing just above an integer.
    rank = math.ceil(round((n + 1) * (1.0 - eps), 9))
    if rank > n:
        warnings.warn(
            f"n = {n} calibration scores are too few for eps = {eps}: the rank ceil((n+1)(1-eps)) = {rank} "
            f"exceeds n (need n >= {math.ceil(1.0 / eps - 1.0)}); returning delta = +inf",
            RuntimeWarning,
            stacklevel=2,
        )
        return math.inf
    return float(np.partition(s, rank - 1)[rank - 1])


def select_episode_states(episode_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of one uniformly random step per episode (episodes in order of first appearance)."""
    ep = np.asarray(episode_ids)
    if ep.ndim != 1 or ep.size == 0:
        raise ValueError(f"episode_ids must be a non-empty 1-D array, got shape {ep.shape}")
    _, first, counts = np.unique(ep, return_index=True, return_counts=True)
    order = np.argsort(ep, kind="stable")  # steps grouped by episode, groups in sorted-id order
    offsets = np.r_[0, np.cumsum(counts)[:-1]]
    picks = order[offsets + np.floor(rng.random(counts.size) * counts).astype(np.int64)]
    return picks[np.argsort(first, kind="stable")]


def offline_scores(policy: _SafetyPolicy, calib_transitions: Any, rng: np.random.Generator) -> np.ndarray:
    """Nonconformity scores ``e_i = R_i - Q_h(s_i, a_i)``, one random state per calibration episode.

    ``calib_transitions`` needs ``observations``, ``actions``, ``episode_ids`` and ``future_worst_h``
    (``R = max_{t' >= t} h(s_t')`` along the logged continuation), as in ``safefql.datasets.load``.
    """
    for name in ("observations", "actions", "episode_ids", "future_worst_h"):
        if not hasattr(calib_transitions, name):
            raise ValueError(f"calibration transitions have no field {name!r}")
    ep = np.asarray(calib_transitions.episode_ids)
    idx = select_episode_states(ep, rng)
    obs = np.asarray(calib_transitions.observations)[idx]
    act = np.asarray(calib_transitions.actions)[idx]
    realized = np.asarray(calib_transitions.future_worst_h, dtype=np.float64)[idx]
    q = np.asarray(policy.safety_q(obs, act), dtype=np.float64).reshape(-1)
    return realized - q


def offline_calibrate(
    policy: _SafetyPolicy, calib_transitions: Any, eps: float, rng: np.random.Generator
) -> Calibration:
    """Offline split-conformal calibration from held-out episodes (see the module docstring)."""
    eps = _check_eps(eps)
    scores = offline_scores(policy, calib_transitions, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        delta = offline_conformal_delta(scores, eps)
    n = scores.size
    if not math.isfinite(delta):
        warnings.warn(
            f"offline calibration: {n} calibration episodes are too few for eps = {eps} "
            f"(need at least {math.ceil(1.0 / eps - 1.0)}); delta = +inf certifies nothing",
            RuntimeWarning,
            stacklevel=2,
        )
    guarantee = (
        f"For a new episode exchangeable with the {n} held-out calibration episodes (i.e. drawn from the "
        f"behaviour policy's data distribution) and a uniformly random state-action (s, a) in it, the worst "
        f"future margin R along the logged continuation satisfies P(R <= Q_h(s, a) + delta) >= {1 - eps:.6g}"
        " (marginal over calibration and test episodes)."
    )
    return Calibration(
        delta=delta,
        eps=eps,
        beta=None,
        n=int(n),
        k=int(np.sum(scores > delta)),
        source="offline",
        guarantee=guarantee,
        details={
            "score_quantiles": {
                str(q): float(np.quantile(scores, q)) for q in (0.0, 0.5, 0.9, 0.95, 0.99, 1.0)
            },
            "score_mean": float(scores.mean()),
        },
    )


# --------------------------------------------------------------------------------------------- rollout
def rollout_epsilon(k: int, n: int, beta: float) -> float:
    """Clopper-Pearson upper bound ``Beta.ppf(1 - beta, k + 1, n - k)`` on a violation rate (1 if k = n).

    With probability ``>= 1 - beta`` over ``n`` i.i.d. trials with ``k`` violations, the true violation
    probability is at most the returned ``eps``. For ``k = 0`` this is ``1 - beta ** (1 / n)``.
    """
    if isinstance(k, bool) or isinstance(n, bool) or int(k) != k or int(n) != n:
        raise ValueError(f"k and n must be integers, got k={k!r}, n={n!r}")
    k, n = int(k), int(n)
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    beta = _check_eps(beta, "beta")
    if k == n:
        return 1.0
    return float(scipy.stats.beta.ppf(1.0 - beta, k + 1, n - k))


def blas_single_thread() -> contextlib.AbstractContextManager:
    """Limit BLAS to one thread when ``threadpoolctl`` is installed (else a no-op).

    Batched NumPy forwards are small matrix products; OpenBLAS's worker threads make them up to ~50x
    slower on a busy 2-core machine (measured: 100 boat episodes 6.2 s threaded vs 0.13 s single-threaded).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def boat_episodes(
    policy: _SafetyPolicy,
    starts: np.ndarray,
    *,
    steps: int | None = None,
    rng: np.random.Generator | None = None,
    batch_size: int = 4096,
) -> dict[str, np.ndarray]:
    """Batched boat episodes from ``starts`` (N, 2) with ``policy.act``; per-start NumPy arrays.

    Matches ``BoatNavEnv``: the return sums ``-||p_t - GOAL||`` over the pre-step states, the episode cost
    counts post-step states with ``h > 0`` (reset cost excluded, as the env reports it at reset), and
    ``worst_h`` is the largest margin over every visited state, the start included. Uses the NumPy
    dynamics ``safefql.envs.boat.step_state`` (equal to the MuJoCo env to float precision). ``rng`` None
    runs the deterministic actor (z = 0), as the shield does; a Generator draws z ~ N(0, I) every step.
    """
    from safefql.envs import boat

    starts = np.asarray(starts, dtype=np.float64)
    if starts.ndim != 2 or starts.shape[1] != 2:
        raise ValueError(f"starts must have shape (N, 2) for the boat, got {starts.shape}")
    if not np.all(np.isfinite(starts)):
        raise ValueError("starts contain NaN/inf")
    steps = int(boat.EPISODE_STEPS if steps is None else steps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    n = starts.shape[0]
    out = {"return": np.zeros(n), "cost": np.zeros(n), "worst_h": np.zeros(n)}
    with blas_single_thread():
        _boat_loop(policy, starts, steps, rng, batch_size, out)
    return out


def _boat_loop(policy: Any, starts: np.ndarray, steps: int, rng: Any, batch_size: int, out: dict) -> None:
    from safefql.envs import boat

    for lo in range(0, starts.shape[0], batch_size):
        p = starts[lo : lo + batch_size].copy()
        worst = boat.margin(p)
        ret = np.zeros(p.shape[0])
        cost = np.zeros(p.shape[0])
        for _ in range(steps):
            a = np.asarray(policy.act(p, rng), dtype=np.float64)
            ret += boat.reward(p)
            p = boat.step_state(p, a)
            h = boat.margin(p)
            cost += h > 0
            np.maximum(worst, h, out=worst)
        out["return"][lo : lo + batch_size] = ret
        out["cost"][lo : lo + batch_size] = cost
        out["worst_h"][lo : lo + batch_size] = worst


def rollout_violations(
    policy: _SafetyPolicy,
    starts: np.ndarray,
    *,
    steps: int | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """True where the boat episode from that start visits a state with ``h > 0`` (the start included)."""
    return boat_episodes(policy, starts, steps=steps, rng=rng)["worst_h"] > 0


def rollout_calibrate(
    policy: _SafetyPolicy,
    starts: np.ndarray,
    delta_grid: Sequence[float] | np.ndarray = DEFAULT_DELTA_GRID,
    eps_target: float = 0.05,
    beta: float = 1e-6,
    *,
    steps: int | None = None,
    rng: np.random.Generator | None = None,
    violations: np.ndarray | None = None,
    start_distribution: str = "the sampled start distribution",
) -> Calibration:
    """Choose ``delta`` on a grid from simulator rollouts (policy-mode guarantee, see the module docstring).

    Each start ``s0`` is judged safe at level ``delta`` when ``V_h(s0) + delta <= 0``. For every grid
    value, ``n`` judged-safe starts and ``k`` violations among them give ``eps = rollout_epsilon(k, n,
    beta / G)`` (G = grid size, Bonferroni). Choice rule: the smallest grid ``delta`` with
    ``eps <= eps_target``. If no grid value qualifies, a RuntimeWarning says so and the returned
    calibration has ``delta = +inf`` (nothing judged safe, nothing certified), ``eps = 1`` and
    ``details["met_target"] = False``. ``violations`` may be passed to reuse earlier rollouts.
    """
    eps_target = _check_eps(eps_target, "eps_target")
    beta = _check_eps(beta, "beta")
    grid = np.asarray(delta_grid, dtype=np.float64).reshape(-1)
    if grid.size == 0 or not np.all(np.isfinite(grid)):
        raise ValueError("delta_grid must be a non-empty list of finite numbers")
    grid = np.unique(grid)  # sorted ascending
    starts = np.asarray(starts, dtype=np.float64)
    if starts.ndim != 2 or starts.shape[0] == 0:
        raise ValueError(f"starts must be a non-empty (N, obs_dim) array, got shape {starts.shape}")
    if violations is None:
        violations = rollout_violations(policy, starts, steps=steps, rng=rng)
    violations = np.asarray(violations, dtype=bool)
    if violations.shape != (starts.shape[0],):
        raise ValueError(f"violations must have shape ({starts.shape[0]},), got {violations.shape}")
    values = np.asarray(policy.safety_value(starts), dtype=np.float64).reshape(-1)
    beta_each = beta / grid.size
    ns, ks, epss = [], [], []
    for d in grid:
        judged = values + d <= 0
        n, k = int(judged.sum()), int((judged & violations).sum())
        ns.append(n)
        ks.append(k)
        epss.append(rollout_epsilon(k, n, beta_each))
    epss_arr = np.asarray(epss)
    ok = np.flatnonzero(epss_arr <= eps_target)
    details: dict[str, Any] = {
        "delta_grid": grid.tolist(),
        "n_judged_safe": ns,
        "k_violations": ks,
        "eps": epss_arr.tolist(),
        "num_starts": int(starts.shape[0]),
        "violations_total": int(violations.sum()),
        "beta_per_grid_point": beta_each,
        "eps_target": eps_target,
        "noise": "z = 0 (deterministic actor)" if rng is None else "z ~ N(0, I) per step",
        "start_distribution": start_distribution,
    }
    N = starts.shape[0]
    if ok.size == 0:
        best = int(np.argmin(epss_arr))
        warnings.warn(
            f"rollout calibration: no delta on the grid [{grid[0]:.3g}, {grid[-1]:.3g}] reaches eps <= "
            f"{eps_target} at confidence 1 - {beta:g}; the best was eps = {epss_arr[best]:.4g} at delta = "
            f"{grid[best]:.4g} (n = {ns[best]}, k = {ks[best]}). Returning delta = +inf: nothing is "
            "certified. Use more starts, a wider grid, or a larger eps.",
            RuntimeWarning,
            stacklevel=2,
        )
        details["met_target"] = False
        return Calibration(
            delta=math.inf,
            eps=1.0,
            beta=beta,
            n=0,
            k=0,
            source="rollout",
            guarantee=(
                f"None: no delta on the grid reached eps <= {eps_target} with confidence 1 - {beta:g} "
                f"from {N} rollouts (best eps {epss_arr[best]:.4g} at delta {grid[best]:.4g})."
            ),
            details=details,
        )
    i = int(ok[0])
    details["met_target"] = True
    guarantee = (
        f"With confidence at least 1 - {beta:g} over the {N} sampled start states, the probability that a "
        f"start from {start_distribution} which is judged safe (V_h(s0) + delta <= 0) still enters the "
        f"failure set when the policy (actor, {details['noise']}) runs for an episode is at most "
        f"eps = {epss_arr[i]:.4g} "
        f"(Clopper-Pearson, {ks[i]} violations among {ns[i]} judged-safe starts; Bonferroni over "
        f"{grid.size} grid values)."
    )
    return Calibration(
        delta=float(grid[i]),
        eps=float(epss_arr[i]),
        beta=beta,
        n=ns[i],
        k=ks[i],
        source="rollout",
        guarantee=guarantee,
        details=details,
    )


# --------------------------------------------------------------------------------------------- driver
def calibrate(
    checkpoint_path: str | os.PathLike,
    source: str = "offline",
    eps: float = 0.05,
    beta: float = 1e-6,
    *,
    seed: int = 0,
    num_starts: int = 1000,
    start: str = "uniform",
    delta_grid: Sequence[float] | None = None,
    noise: bool = False,
    calib_path: str | os.PathLike | None = None,
    store: bool = True,
    print_summary: bool = False,
) -> Calibration:
    """Calibrate a policy checkpoint and store the result in its header (``safefql calibrate``).

    ``source="offline"`` uses the run's held-out calibration episodes: ``calib_path``, else the
    ``calib_episodes.npz`` the trainer saved next to the checkpoint, else the dataset id and calibration
    episode ids recorded in the header; ``beta`` is unused (the guarantee is marginal). ``source="rollout"``
    (boat only) rolls the actor out from ``num_starts`` starts drawn with ``seed`` (``start="uniform"``
    over the box, the env's reset distribution, or ``"safe"``: the oracle's safe set), with ``z = 0`` unless
    ``noise``, and picks ``delta`` on ``delta_grid`` (default ``DEFAULT_DELTA_GRID``) for ``eps`` at
    confidence ``1 - beta``. With ``store`` the calibration is written into the checkpoint atomically.
    """
    from safefql.training.checkpoint import read_header, update_header
    from safefql.training.policy import SafeFQLPolicy

    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    eps = _check_eps(eps)
    beta = _check_eps(beta, "beta")
    path = Path(checkpoint_path)
    header = read_header(path)  # FileNotFoundError / ValueError (corruption) before any work
    policy = SafeFQLPolicy.load(path).numpy()
    if source == "offline":
        calib = _calibration_episodes(path, header, calib_path)
        cal = offline_calibrate(policy, calib, eps, np.random.default_rng(seed))
    else:
        from safefql.envs import BOAT_ID, boat

        if header.get("env_id") != BOAT_ID:
            raise ValueError(
                f"rollout calibration needs the boat simulator ({BOAT_ID}); checkpoint {path} is for env "
                f"{header.get('env_id')!r}. Use source='offline'."
            )
        if not isinstance(num_starts, int) or num_starts < 1:
            raise ValueError(f"num_starts must be a positive integer, got {num_starts!r}")
        if start == "uniform":
            starts = np.random.default_rng(seed).uniform(boat.BOX_LOW, boat.BOX_HIGH, size=(num_starts, 2))
            described = "the uniform distribution over the box (the env's default reset)"
        elif start == "safe":
            from safefql.envs.oracle import load_boat_oracle

            starts = load_boat_oracle().safe_starts(num_starts, seed=seed)
            described = "the uniform distribution over the oracle's safe set"
        else:
            raise ValueError(f"start must be 'uniform' or 'safe', got {start!r}")
        cal = rollout_calibrate(
            policy,
            starts,
            DEFAULT_DELTA_GRID if delta_grid is None else delta_grid,
            eps,
            beta,
            rng=np.random.default_rng(seed + 1) if noise else None,
            start_distribution=described,
        )
    if store:
        update_header(path, calibration=cal.to_dict())
    if print_summary:
        from rich.console import Console

        Console().print(cal.summary_table())
    return cal


def _calibration_episodes(path: Path, header: dict[str, Any], calib_path: str | os.PathLike | None) -> Any:
    from safefql.training.trainer import load_calib_episodes

    if calib_path is not None:
        return load_calib_episodes(calib_path)
    split = header.get("split") or {}
    saved = path.parent / (split.get("calib_file") or CALIB_EPISODES_FILE)
    if saved.is_file():
        return load_calib_episodes(saved)
    ids, dataset_id = split.get("calib_episode_ids"), header.get("dataset_id")
    if ids and dataset_id:
        from safefql.datasets.load import load_transitions

        return load_transitions(dataset_id).select_episodes(ids)
    raise FileNotFoundError(
        f"no calibration episodes for {path}: {saved} does not exist and the header records no dataset id "
        "with calibration episode ids (train with calib_fraction > 0, or pass calib_path)"
    )


# Names used in docs/ARCHITECTURE.md.
offline_conformal = offline_conformal_delta
rollout_bound = rollout_epsilon
