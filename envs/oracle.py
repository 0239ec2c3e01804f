"""Ground-truth safety for BoatNav-v0: the Hamilton-Jacobi avoid value on a grid over the box.

    V(p) = min over controls u(.) in the unit ball of  sup_{t >= 0} h(p(t)),
    dp/dt = f(p, u) = (u1 + 2 - 0.5 y^2, u2),  p(t) clipped to the box as in the env.

V has the sign of h: V(p) > 0 means that even the best control enters a rock; V(p) <= 0 means some
control keeps the boat out of the rocks forever. It is computed by a semi-Lagrangian dynamic program::

    V_0 = h,   V_{k+1}(p) = max(h(p), min_u V_k(clip(p + tau f(p, u))))

with bilinear interpolation of V_k on a regular grid and u over ``n_directions`` unit vectors plus u = 0.
The iteration is monotone (V_k increases with k) and is run **to convergence** (max change < ``tol``):
the fixed point is the infinite-horizon value, which is stationary (the env's observation carries no
time, like the learned V_h), and its safe set is contained in the 2 s (episode-horizon) safe set, so a
start it calls safe is also safe for a whole episode. Converged here in a few hundred iterations.

Accuracy, measured against a reference solve on a grid of half the spacing (0.01, tau = 0.005 s), on
200k uniform points of the box: default grid (0.02 spacing, tau = 0.02 s, 32 directions; 133 iterations,
~1 s) max |V - V_ref| = 0.0095, safe/unsafe labels disagree on 0.012% of the box, and no point with
V <= -0.05 (``SAFE_START_MARGIN``) is unsafe for the reference. Half the default resolution (0.04 spacing)
gives max |V - V_ref| = 0.030 (0.02% disagreement); 64 directions change nothing measurable.
``tests/test_oracle.py`` re-checks a coarse-vs-default comparison.

``load_boat_oracle()`` computes the grid once per process and caches it on disk as ``.npz`` (no pickle)
under ``$SAFEFQL_CACHE`` or ``~/.cache/safefql``, keyed by a hash of every grid and dynamics parameter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from safefql._io import atomic_write_bytes
from safefql.envs import boat

ORACLE_VERSION = 1  # bump when the algorithm changes: it is part of the cache key
SAFE_START_MARGIN = 0.05  # default buffer for safe starts: V <= -0.05, a few grid cells inside the set


@dataclasses.dataclass(frozen=True)
class OracleParams:
    """Grid and solver settings of the boat's HJ oracle (all part of the cache key)."""

    nx: int = 251  # grid points along x over [-3, 2] (spacing 0.02)
    ny: int = 201  # grid points along y over [-2, 2] (spacing 0.02)
    n_directions: int = 32  # unit control directions on the circle (u = 0 is always added)
    tau: float = 0.02  # semi-Lagrangian time step, seconds (moves at most 3 cells per iteration)
    tol: float = 1e-7  # convergence: stop when max |V_{k+1} - V_k| < tol
    max_iters: int = 20000  # give up (ValueError) after this many iterations

    def __post_init__(self) -> None:
        if self.nx < 3 or self.ny < 3:
            raise ValueError(f"grid must be at least 3 x 3, got nx={self.nx}, ny={self.ny}")
        if self.n_directions < 4:
            raise ValueError(f"n_directions must be >= 4, got {self.n_directions}")
        if not (self.tau > 0 and np.isfinite(self.tau)):
            raise ValueError(f"tau must be a positive finite number, got {self.tau}")
        if not self.tol > 0:
            raise ValueError(f"tol must be positive, got {self.tol}")
        if self.max_iters < 1:
            raise ValueError(f"max_iters must be >= 1, got {self.max_iters}")

    def cache_key(self) -> str:
        """Hex digest of these settings plus the boat's dynamics constants."""
        payload = {
            "version": ORACLE_VERSION,
            "params": dataclasses.asdict(self),
            "box": [boat.BOX_LOW.tolist(), boat.BOX_HIGH.tolist()],
            "obstacles": boat.OBSTACLES.tolist(),
            "current": [boat.CURRENT_SPEED, boat.CURRENT_CURVATURE],
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _bilinear(xs: np.ndarray, ys: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices (..., 4) and weights (..., 4) of the bilinear stencil of ``pts`` (inside the grid)."""
    nx, ny = xs.size, ys.size
    hx = (xs[-1] - xs[0]) / (nx - 1)
    hy = (ys[-1] - ys[0]) / (ny - 1)
    gx = (pts[..., 0] - xs[0]) / hx
    gy = (pts[..., 1] - ys[0]) / hy
    ix = np.clip(np.floor(gx).astype(np.int64), 0, nx - 2)
    iy = np.clip(np.floor(gy).astype(np.int64), 0, ny - 2)
    fx = np.clip(gx - ix, 0.0, 1.0)
    fy = np.clip(gy - iy, 0.0, 1.0)
    i00 = iy * nx + ix
    idx = np.stack([i00, i00 + 1, i00 + nx, i00 + nx + 1], axis=-1)
    w = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], axis=-1)
    return idx, w


def _controls(n_directions: int) -> np.ndarray:
    ang = 2 * np.pi * np.arange(n_directions) / n_directions
    return np.concatenate([np.stack([np.cos(ang), np.sin(ang)], -1), np.zeros((1, 2))], axis=0)


def compute_value_grid(params: OracleParams) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Run the dynamic program. Returns ``(xs, ys, values (ny, nx), iterations)``."""
    xs = np.linspace(boat.BOX_LOW[0], boat.BOX_HIGH[0], params.nx)
    ys = np.linspace(boat.BOX_LOW[1], boat.BOX_HIGH[1], params.ny)
    px, py = np.meshgrid(xs, ys)  # (ny, nx)
    pts = np.stack([px.ravel(), py.ravel()], -1)  # (N, 2), flat index iy * nx + ix
    n = pts.shape[0]
    h = boat.margin(pts)
    drift = boat.current(pts[:, 1])
    ctrl = _controls(params.n_directions)  # (M, 2)
    nxt = np.empty((ctrl.shape[0], n, 2))
    nxt[..., 0] = pts[:, 0] + params.tau * (ctrl[:, None, 0] + drift)
    nxt[..., 1] = pts[:, 1] + params.tau * ctrl[:, None, 1]
    nxt = np.clip(nxt, boat.BOX_LOW, boat.BOX_HIGH)
    idx, w = _bilinear(xs, ys, nxt)  # (M, N, 4)
    rows = np.repeat(np.arange(ctrl.shape[0] * n), 4)
    interp = sp.csr_matrix((w.ravel(), (rows, idx.ravel())), shape=(ctrl.shape[0] * n, n))
    v = h.copy()
    for it in range(1, params.max_iters + 1):
        v_new = np.maximum(h, (interp @ v).reshape(ctrl.shape[0], n).min(axis=0))
        change = float(np.max(np.abs(v_new - v)))
        v = v_new
        if change < params.tol:
            return xs, ys, v.reshape(params.ny, params.nx), it
    raise ValueError(
        f"HJ value iteration did not converge in max_iters={params.max_iters} (last change {change})"
    )


class BoatOracle:
    """HJ avoid value of BoatNav-v0 on a grid; ``value`` interpolates bilinearly (batched).

    Attributes for plotting: ``xs`` (nx,), ``ys`` (ny,), ``values`` (ny, nx) so that
    ``ax.contour(oracle.xs, oracle.ys, oracle.values, [0])`` draws the safe-set boundary.
    """

    def __init__(self, xs: np.ndarray, ys: np.ndarray, values: np.ndarray, params: OracleParams) -> None:
        xs, ys, values = (np.asarray(a, dtype=np.float64) for a in (xs, ys, values))
        if xs.ndim != 1 or ys.ndim != 1 or values.shape != (ys.size, xs.size):
            raise ValueError(
                f"values must have shape (len(ys), len(xs)) = ({ys.size}, {xs.size}), got {values.shape}"
            )
        if not np.all(np.isfinite(values)):
            raise ValueError("values contain NaN or inf")
        self.xs, self.ys, self.values, self.params = xs, ys, values, params
        self._flat = values.ravel()
        for a in (self.xs, self.ys, self.values):
            a.setflags(write=False)

    def _check_points(self, points: Any) -> np.ndarray:
        p = np.asarray(points, dtype=np.float64)
        if p.ndim == 0 or p.shape[-1] != 2:
            raise ValueError(f"points must have shape (..., 2), got {p.shape}")
        if not np.all(np.isfinite(p)):
            raise ValueError("points contain NaN or inf")
        tol = 1e-9
        if np.any(p < boat.BOX_LOW - tol) or np.any(p > boat.BOX_HIGH + tol):
            raise ValueError(f"points outside the box [{boat.BOX_LOW.tolist()}, {boat.BOX_HIGH.tolist()}]")
        return p

    def value(self, points: Any) -> np.ndarray:
        """HJ avoid value at ``points`` (..., 2) -> (...); > 0 means a rock cannot be avoided."""
        p = self._check_points(points)
        idx, w = _bilinear(self.xs, self.ys, p)
        return np.sum(self._flat[idx] * w, axis=-1)

    def is_safe(self, points: Any, margin: float = 0.0) -> np.ndarray:
        """True where ``value(points) <= -margin`` (``margin >= 0`` shrinks the safe set)."""
        if not (np.isfinite(margin) and margin >= 0):
            raise ValueError(f"margin must be a finite number >= 0, got {margin}")
        return self.value(points) <= -margin

    def safe_starts(self, n: int, seed: int = 0, margin: float = SAFE_START_MARGIN) -> np.ndarray:
        """``n`` starts (n, 2) uniform over {V <= -margin} (rejection sampling); deterministic in ``seed``."""
        if int(n) != n or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n}")
        if not (np.isfinite(margin) and margin >= 0):
            raise ValueError(f"margin must be a finite number >= 0, got {margin}")
        n = int(n)
        if n > 0 and not np.any(self.values <= -margin):
            raise ValueError(f"no grid point has value <= -{margin}: the safe set at this margin is empty")
        rng = np.random.default_rng(seed)
        out = np.empty((0, 2))
        while out.shape[0] < n:
            cand = rng.uniform(boat.BOX_LOW, boat.BOX_HIGH, size=(max(2 * n, 64), 2))
            out = np.concatenate([out, cand[self.value(cand) <= -margin]])
        return out[:n]

    def plot(self, ax: Any, *, cmap: str = "RdBu_r", scene: bool = True) -> Any:
        """Draw the value map, its zero contour (and the scene) on a matplotlib ``ax``; returns the image."""
        lim = float(np.max(np.abs(self.values)))
        im = ax.imshow(
            self.values,
            origin="lower",
            extent=(self.xs[0], self.xs[-1], self.ys[0], self.ys[-1]),
            cmap=cmap,
            vmin=-lim,
            vmax=lim,
            aspect="equal",
        )
        ax.contour(self.xs, self.ys, self.values, levels=[0.0], colors="k", linewidths=1.5)
        if scene:
            boat.plot_scene(ax, currents=False)
        return im

    def to_bytes(self) -> bytes:
        """Serialise to ``.npz`` bytes (arrays and a JSON header, no pickle)."""
        buf = io.BytesIO()
        header = json.dumps({"params": dataclasses.asdict(self.params), "key": self.params.cache_key()})
        np.savez(buf, xs=self.xs, ys=self.ys, values=self.values, header=np.array(header))
        return buf.getvalue()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> BoatOracle:
        """Load an oracle written by ``to_bytes`` (``allow_pickle=False``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"oracle file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(str(z["header"]))
                params = OracleParams(**header["params"])
                if header["key"] != params.cache_key():
                    raise ValueError(f"{path}: stale oracle (computed with other dynamics or solver version)")
                return cls(z["xs"], z["ys"], z["values"], params)
        except (KeyError, zipfile.BadZipFile, json.JSONDecodeError, TypeError, OSError, EOFError) as e:
            raise ValueError(f"{path}: not a valid oracle file ({e})") from e


def compute_boat_oracle(params: OracleParams | None = None) -> BoatOracle:
    """Solve the HJ avoid problem on the grid (no caching)."""
    params = params or OracleParams()
    xs, ys, values, _ = compute_value_grid(params)
    return BoatOracle(xs, ys, values, params)


def cache_dir() -> Path:
    """``$SAFEFQL_CACHE`` if set, else ``~/.cache/safefql``."""
    env = os.environ.get("SAFEFQL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "safefql"


_PROCESS_CACHE: dict[tuple[str, str], BoatOracle] = {}


def load_boat_oracle(params: OracleParams | None = None, *, refresh: bool = False) -> BoatOracle:
    """The boat oracle: from this process's memory, else the disk cache, else computed (and cached).

    The cache file is ``<cache_dir()>/boat_oracle_<hash>.npz``; a changed parameter changes the hash and
    recomputes. An unreadable cache file is recomputed and replaced. ``refresh=True`` always recomputes.
    """
    params = params or OracleParams()
    key = params.cache_key()
    path = cache_dir() / f"boat_oracle_{key[:20]}.npz"
    mem_key = (key, str(path))
    if not refresh and mem_key in _PROCESS_CACHE:
        return _PROCESS_CACHE[mem_key]
    oracle = None
    if not refresh and path.is_file():
        try:
            oracle = BoatOracle.from_file(path)
        except ValueError as e:
            warnings.warn(f"recomputing the boat oracle: {e}", stacklevel=2)
    if oracle is None:
        oracle = compute_boat_oracle(params)
        atomic_write_bytes(path, oracle.to_bytes())
    _PROCESS_CACHE[mem_key] = oracle
    return oracle


__all__ = [
    "SAFE_START_MARGIN",
    "BoatOracle",
    "OracleParams",
    "cache_dir",
    "compute_boat_oracle",
    "compute_value_grid",
    "load_boat_oracle",
]
