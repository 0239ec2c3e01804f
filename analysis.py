"""What a trained boat model believes, compared with the ground truth: value maps and sign agreement."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from safefql.envs import boat


def box_grid(nx: int = 101, ny: int = 81) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(xs, ys, points (ny, nx, 2))``: a regular grid over the BoatNav-v0 box (edges included)."""
    if nx < 2 or ny < 2:
        raise ValueError(f"a grid needs at least 2 points per axis, got nx={nx}, ny={ny}")
    xs = np.linspace(boat.BOX_LOW[0], boat.BOX_HIGH[0], nx)
    ys = np.linspace(boat.BOX_LOW[1], boat.BOX_HIGH[1], ny)
    return xs, ys, np.stack(np.meshgrid(xs, ys), axis=-1)


def learned_value_grid(model: Any, points: np.ndarray, batch: int = 8192) -> np.ndarray:
    """``model.safety_value`` (V_h) on a grid of states, evaluated in batches; same leading shape."""
    flat = points.reshape(-1, points.shape[-1])
    chunks = [np.asarray(model.safety_value(flat[i : i + batch])) for i in range(0, len(flat), batch)]
    values = np.concatenate(chunks)
    return values.reshape(points.shape[:-1])


def sign_agreement(model: Any, oracle: Any, nx: int = 101, ny: int = 81, delta: float = 0.0) -> float:
    """Fraction of grid states where ``V_h + delta <= 0`` (learned: safe) matches ``oracle <= 0``."""
    _, _, pts = box_grid(nx, ny)
    learned_safe = learned_value_grid(model, pts) + delta <= 0.0
    true_safe = oracle.value(pts) <= 0.0
    return float(np.mean(learned_safe == true_safe))


def plot_value_maps(
    model: Any, oracle: Any, path: str | os.PathLike, *, delta: float = 0.0, nx: int = 101, ny: int = 81
) -> dict[str, float]:
    """Draw the learned V_h next to the oracle's HJ value, zero contours on both; returns the agreement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, ys, pts = box_grid(nx, ny)
    learned = learned_value_grid(model, pts)
    truth = oracle.value(pts)
    agree = float(np.mean((learned + delta <= 0.0) == (truth <= 0.0)))
    # Safe states mislabelled unsafe are harmless (conservative); unsafe states labelled safe are not.
    missed_unsafe = float(np.mean((learned + delta <= 0.0) & (truth > 0.0)))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)
    for ax, values, title in (
        (axes[0], learned, f"learned V_h (SafeFQL), delta = {delta:.3g}"),
        (axes[1], truth, "ground truth: HJ avoid value (grid DP)"),
    ):
        lim = float(np.nanmax(np.abs(values))) or 1.0
        mesh = ax.pcolormesh(xs, ys, values, cmap="RdBu_r", vmin=-lim, vmax=lim, shading="auto")
        ax.contour(xs, ys, values + (delta if values is learned else 0.0), levels=[0.0], colors="k")
        boat.plot_scene(ax, currents=False)
        ax.set_title(title)
        ax.set_xlabel("x")
        fig.colorbar(mesh, ax=ax, shrink=0.85)
    axes[0].contour(xs, ys, truth, levels=[0.0], colors="limegreen", linestyles="--")
    axes[0].set_ylabel("y")
    fig.suptitle(
        f"sign agreement {100 * agree:.1f}%  |  unsafe states judged safe {100 * missed_unsafe:.2f}%  "
        "(black: zero contour; green dashed: true boundary)"
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return {"sign_agreement": agree, "unsafe_judged_safe": missed_unsafe}
