"""Per-action latency on the boat, one process: one-step actor vs flow teacher vs FISOR-style sampler.

What is timed (each call timed alone with ``perf_counter_ns``; the table shows the median, p10 and p90):

- ``actor``: SafeFQL's one-step actor ``clip(mu(s, z))``, one network call (z = 0);
- ``flow``: the flow teacher it was distilled from, ``--flow-steps`` Euler steps (default: the config's 10);
- ``fisor``: the FISOR-style sampler, ``--fisor-candidates`` (16) DDPM samples of ``--fisor-steps`` (5)
  denoising steps each, scored by the twin safety Q nets, lowest ``Q_h`` kept.

Paths: ``jax`` (one ``jax.jit`` function per method and batch shape, weights as jit constants, NumPy in,
``block_until_ready`` out), ``numpy`` (actor: the library's ``NumpyPolicy``; flow: a NumPy MLP written here
and checked against JAX; FISOR: none) and ``api`` (what a user calls: ``SafeFQLPolicy.act`` and the FISOR
baseline's ``make_policy(state).act`` with a Generator, validation and key drawing included). Batches 1 and
``--batch`` (1024). Also the wall time of one 400-step boat episode at batch 1 (policy plus the NumPy boat
step ``safefql.envs.boat.step_state``) per method and path, the quantity the SafeFQL paper reports
(0.14 s for SafeFQL, 0.33-0.35 s for FISOR with 16 candidates, on their hardware).

Networks have the boat default sizes (``default_config("safefql/BoatNav-v0")``, ``FisorConfig()``); with
``--checkpoint PATH`` (or ``pretrained``) the actor and flow come from that SafeFQL policy checkpoint, else
they get random weights of the same sizes (latency does not depend on the weights). FISOR's networks always
get random weights of the ``FisorConfig`` sizes (the baseline has no checkpoint format). The JSON says which.
Writes ``<out-dir>/latency.json``::

    OPENBLAS_NUM_THREADS=1 uv run python benchmarks/bench_latency.py
    OPENBLAS_NUM_THREADS=1 uv run python benchmarks/bench_latency.py --quick --out-dir /tmp/lat
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "results"
BOAT_ID = "safefql/BoatNav-v0"
TARGET_RATIO = 10.0  # the paper's claim: the one-step actor is >= 10x faster than FISOR-style sampling
PUBLISHED_EPISODE_S = {"actor": 0.14, "fisor": [0.33, 0.35]}  # SafeFQL paper, their hardware
SINGLE_OBS = np.array([-2.5, 1.5], dtype=np.float32)


# ------------------------------------------------------------------------------------------- NumPy MLP
def _gelu(x: np.ndarray) -> np.ndarray:  # tanh approximation, as jax.nn.gelu(approximate=True)
    return 0.5 * x * (1.0 + np.tanh(np.float32(math.sqrt(2.0 / math.pi)) * (x + np.float32(0.044715) * x**3)))


_NP_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, 0.0),
    "tanh": np.tanh,
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "gelu": _gelu,
}


def numpy_mlp(mlp: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A NumPy forward of a (non-ensemble) ``safefql.training.networks.MLP`` on batched float32 inputs."""
    layers = [
        (np.ascontiguousarray(np.asarray(l.weight, np.float32).T), np.asarray(l.bias, np.float32))
        for l in mlp.layers  # noqa: E741
    ]
    act = _NP_ACTIVATIONS[mlp.activation]
    squeeze = bool(mlp.squeeze)

    def forward(x: np.ndarray) -> np.ndarray:
        for w, b in layers[:-1]:
            x = act(x @ w + b)
        w, b = layers[-1]
        x = x @ w + b
        return x[..., 0] if squeeze else x

    return forward


def numpy_flow(flow: Any, steps: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """NumPy version of ``safefql.training.safefql.flow_actions`` (Euler from z at t=0 to t=1, then clip)."""
    net = numpy_mlp(flow)

    def sample(obs: np.ndarray, z: np.ndarray) -> np.ndarray:
        x = z.astype(np.float32, copy=True)
        t = np.empty((obs.shape[0], 1), np.float32)
        for i in range(steps):
            t.fill(i / steps)
            x = x + net(np.concatenate([obs, x, t], axis=-1)) / np.float32(steps)
        return np.clip(x, -1.0, 1.0)

    return sample


# ------------------------------------------------------------------------------------------- timing
def time_calls(fn: Callable[[], Any], min_calls: int, max_calls: int, budget_s: float) -> dict[str, float]:
    """Per-call wall times of ``fn`` (after 2 warm-up calls): median/p10/p90 in microseconds and the count.

    Calls until ``max_calls`` or until ``budget_s`` seconds have passed, but at least ``min_calls``.
    """
    fn()
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t0) / 1e3)
    arr = np.asarray(times)
    return {
        "median_us": float(np.median(arr)),
        "p10_us": float(np.percentile(arr, 10)),
        "p90_us": float(np.percentile(arr, 90)),
        "calls": len(times),
    }


def episode_seconds(policy_b1: Callable[[np.ndarray], np.ndarray], steps: int, repeats: int) -> float:
    """Median wall time of one ``steps``-step boat episode at batch 1: ``a = policy(p); p = step(p, a)``."""
    from safefql.envs import boat

    out = []
    for _ in range(repeats):
        p = np.array([[-2.5, 1.5]])
        t0 = time.perf_counter()
        for _ in range(steps):
            a = policy_b1(p.astype(np.float32))
            p = boat.step_state(p, np.asarray(a, dtype=np.float64))
        out.append(time.perf_counter() - t0)
    return float(np.median(out))


# ------------------------------------------------------------------------------------------- models
def random_like(shapes: Any, seed: int) -> Any:
    """Fill a tree of ``jax.ShapeDtypeStruct`` with random float arrays (``U(-1, 1) / sqrt(last dim)``, the
    scale of Equinox's default init) and zero integer arrays. Used instead of the initialisers, whose
    compilation costs more than the benchmark (FISOR's: ~16 s of CPU time here); the latency of a network
    does not depend on its values.
    """
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)

    def fill(x: Any) -> Any:
        if not isinstance(x, jax.ShapeDtypeStruct):
            return x
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.zeros(x.shape, x.dtype)
        scale = 1.0 / math.sqrt(x.shape[-1]) if x.shape else 1.0
        return jnp.asarray(rng.uniform(-scale, scale, x.shape), dtype=x.dtype)

    return jax.tree.map(fill, shapes)


def build_models(checkpoint: str | None, fisor_overrides: dict[str, int]) -> dict[str, Any]:
    """The SafeFQL agent (checkpoint or fresh, boat default config) and a fresh FISOR-style state."""
    import equinox as eqx
    import gymnasium as gym
    import jax

    import safefql.envs  # noqa: F401  (registers the boat)
    from safefql.training.baselines import fisor
    from safefql.training.checkpoint import space_to_dict
    from safefql.training.config import SafeFQLConfig, default_config
    from safefql.training.policy import SafeFQLPolicy
    from safefql.training.safefql import create_train_state

    if checkpoint:
        if checkpoint == "pretrained":
            from safefql.shields.pretrained import pretrained_path

            checkpoint = str(pretrained_path(BOAT_ID))
        policy = SafeFQLPolicy.load(checkpoint)
        config = SafeFQLConfig.from_dict(policy.header["config"])
        weights = f"trained checkpoint {checkpoint}"
    else:
        config = default_config(BOAT_ID)
        env = gym.make(BOAT_ID)
        header = {
            "kind": "policy",
            "config": config.to_dict(),
            "observation_space": space_to_dict(env.observation_space),
            "action_space": space_to_dict(env.action_space),
            "env_id": BOAT_ID,
        }
        env.close()
        state = random_like(eqx.filter_eval_shape(create_train_state, config, 2, 2, jax.random.PRNGKey(0)), 0)
        policy = SafeFQLPolicy.from_agent(state.agent, header)
        weights = "freshly initialised, random weights of the default boat config sizes (not trained)"
    fisor_config = fisor.FisorConfig(**fisor_overrides)
    fisor_state = random_like(
        eqx.filter_eval_shape(fisor.create_fisor_state, fisor_config, 2, 2, jax.random.PRNGKey(1)), seed=1
    )
    return {
        "policy": policy,
        "config": config,
        "weights": weights,
        "fisor_state": fisor_state,
        "fisor_config": fisor_config,
    }


def make_paths(models: dict[str, Any], flow_steps: int) -> dict[tuple[str, str], Callable[..., Any]]:
    """``{(method, path): fn(obs (N, 2) float32) -> actions (N, 2)}`` for every method and path."""
    import jax
    import jax.numpy as jnp

    from safefql.training import safefql as sf
    from safefql.training.baselines import fisor

    policy = models["policy"]
    agent = policy.agent
    fstate, fcfg = models["fisor_state"], models["fisor_config"]
    f_actor, f_safety_q = fstate.actor_target, fstate.critics.safety_q_target

    actor_jit = jax.jit(lambda o: sf.actor_actions(agent, o, jnp.zeros_like(o)))
    flow_jit = jax.jit(lambda o, z: sf.flow_actions(agent, o, z, flow_steps))
    fisor_jit = jax.jit(
        lambda o, k: fisor.select_lowest_q_h(*fisor.fisor_candidates(f_actor, f_safety_q, o, k, fcfg))
    )
    key = jax.random.key(0)
    np_policy = policy.numpy()
    np_flow = numpy_flow(agent.flow, flow_steps)
    fisor_policy = fisor.make_policy(fstate)
    rng = np.random.default_rng(0)

    def zeros(o: np.ndarray) -> np.ndarray:
        return np.zeros((o.shape[0], 2), np.float32)

    return {
        ("actor", "jax"): lambda o: actor_jit(o).block_until_ready(),
        ("actor", "numpy"): lambda o: np_policy.act(o),
        ("actor", "api"): lambda o: policy.act(o),
        ("flow", "jax"): lambda o: flow_jit(o, zeros(o)).block_until_ready(),
        ("flow", "numpy"): lambda o: np_flow(o, zeros(o)),
        ("fisor", "jax"): lambda o: fisor_jit(o, key).block_until_ready(),
        ("fisor", "api"): lambda o: fisor_policy(o, rng),
    }


def check_numpy_paths(
    paths: dict[tuple[str, str], Callable[..., Any]], batch: int, seed: int
) -> dict[str, float]:
    """Largest |NumPy - JAX| action difference over ``batch`` random states, per method with both paths."""
    from safefql.envs import boat

    obs = np.random.default_rng(seed).uniform(boat.BOX_LOW, boat.BOX_HIGH, (batch, 2)).astype(np.float32)
    out = {}
    for method in ("actor", "flow"):
        a_np = np.asarray(paths[(method, "numpy")](obs))
        a_jax = np.asarray(paths[(method, "jax")](obs))
        out[method] = float(np.max(np.abs(a_np - a_jax)))
    return out


# ------------------------------------------------------------------------------------------- main
def machine_info() -> dict[str, Any]:
    """Platform, CPU count, versions and the JAX backend (recorded with every result)."""
    import jax

    import safefql

    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "safefql": safefql.__version__,
        "blas_threads_env": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")},
    }


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _command(argv: list[str]) -> str:
    return "OPENBLAS_NUM_THREADS=1 uv run python benchmarks/bench_latency.py" + (
        " " + shlex.join(argv) if argv else ""
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables, write ``latency.json``; returns the result dict."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="SafeFQL policy checkpoint, or 'pretrained' (the shipped boat model); default: fresh init",
    )
    parser.add_argument("--batch", type=int, default=1024, help="the large batch size (default 1024)")
    parser.add_argument("--calls", type=int, default=None, help="max timed calls at batch 1 (default 2000)")
    parser.add_argument("--calls-large", type=int, default=None, help="max timed calls at --batch (200)")
    parser.add_argument("--budget-s", type=float, default=None, help="time budget per measurement (3 s)")
    parser.add_argument("--episode-repeats", type=int, default=None, help="400-step episodes timed (3)")
    parser.add_argument("--flow-steps", type=int, default=None, help="Euler steps (default: config's)")
    parser.add_argument("--fisor-candidates", type=int, default=None, help="FISOR candidates (default 16)")
    parser.add_argument("--fisor-steps", type=int, default=None, help="FISOR denoising steps (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random batch of states")
    parser.add_argument("--quick", action="store_true", help="few calls: checks that the script works")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="where latency.json goes")
    args = parser.parse_args(argv)
    quick = {"calls": 30, "calls_large": 3, "budget_s": 0.3, "episode_repeats": 1}
    full = {"calls": 2000, "calls_large": 200, "budget_s": 3.0, "episode_repeats": 3}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("batch", "calls", "calls_large", "episode_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not args.budget_s > 0:
        parser.error("--budget-s must be > 0")

    from rich.console import Console
    from rich.table import Table

    from safefql._io import atomic_write_text
    from safefql.envs import boat

    fisor_overrides = {}
    if args.fisor_candidates is not None:
        fisor_overrides["num_candidates"] = args.fisor_candidates
    if args.fisor_steps is not None:
        fisor_overrides["diffusion_steps"] = args.fisor_steps
    models = build_models(args.checkpoint, fisor_overrides)
    config, fcfg = models["config"], models["fisor_config"]
    flow_steps = int(args.flow_steps or config.flow_steps)
    paths = make_paths(models, flow_steps)
    numpy_error = check_numpy_paths(paths, args.batch, args.seed + 1)

    obs1 = SINGLE_OBS[None]
    obs_big = (
        np.random.default_rng(args.seed)
        .uniform(boat.BOX_LOW, boat.BOX_HIGH, (args.batch, 2))
        .astype(np.float32)
    )
    rows = []
    for (method, path), fn in paths.items():
        for batch, obs, max_calls in ((1, obs1, args.calls), (args.batch, obs_big, args.calls_large)):
            r = time_calls(lambda fn=fn, obs=obs: fn(obs), min(5, max_calls), max_calls, args.budget_s)
            r |= {"method": method, "path": path, "batch": batch, "per_state_us": r["median_us"] / batch}
            rows.append(r)
    episodes = []
    for (method, path), fn in paths.items():
        secs = episode_seconds(fn, boat.EPISODE_STEPS, args.episode_repeats)
        episodes.append({"method": method, "path": path, "steps": boat.EPISODE_STEPS, "seconds": secs})

    def b1(method: str, path: str) -> float:
        return next(r["median_us"] for r in rows if (r["method"], r["path"], r["batch"]) == (method, path, 1))

    best_actor = min(("jax", "numpy"), key=lambda p: b1("actor", p))
    ratios = {
        "fisor_jax_over_actor_jax_b1": b1("fisor", "jax") / b1("actor", "jax"),
        "fisor_jax_over_actor_best_b1": b1("fisor", "jax") / b1("actor", best_actor),
        "actor_best_path_b1": best_actor,
        "flow_jax_over_actor_jax_b1": b1("flow", "jax") / b1("actor", "jax"),
        "target": TARGET_RATIO,
    }
    ratios["meets_target_same_path"] = ratios["fisor_jax_over_actor_jax_b1"] >= TARGET_RATIO
    ratios["meets_target_best_path"] = ratios["fisor_jax_over_actor_best_b1"] >= TARGET_RATIO

    result = {
        "benchmark": "latency",
        "command": _command(list(sys.argv[1:] if argv is None else argv)),
        "env_id": BOAT_ID,
        "weights": {
            "safefql": models["weights"],
            "fisor": "random weights of the FisorConfig shapes (bench_latency.random_like; not trained)",
        },
        "sizes": {
            "actor_hidden": list(config.actor_hidden),
            "flow_hidden": list(config.flow_hidden),
            "activation": config.activation,
            "flow_steps": flow_steps,
            "fisor_noise_width": fcfg.noise_width,
            "fisor_noise_blocks": fcfg.noise_blocks,
            "fisor_diffusion_steps": fcfg.diffusion_steps,
            "fisor_candidates": fcfg.num_candidates,
            "fisor_critic_hidden": list(fcfg.critic_hidden),
        },
        "units": "microseconds per call (median of individually timed calls)",
        "rows": rows,
        "episode_400": episodes,
        "ratios": ratios,
        "numpy_vs_jax_max_abs_diff": numpy_error,
        "published_episode_s": PUBLISHED_EPISODE_S,
        "settings": {
            k: getattr(args, k)
            for k in ("batch", "calls", "calls_large", "budget_s", "episode_repeats", "seed", "quick")
        },
        "machine": machine_info(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

    console = Console(width=max(Console().width, 120))
    table = Table(title=f"Per-action latency on {BOAT_ID} ({models['weights'].split(';')[0]})")
    for col in ("method", "path", "batch", "median us", "p10 us", "p90 us", "us / state", "calls"):
        table.add_column(col, justify="left" if col in ("method", "path") else "right")
    for r in rows:
        table.add_row(
            r["method"],
            r["path"],
            str(r["batch"]),
            f"{r['median_us']:,.1f}",
            f"{r['p10_us']:,.1f}",
            f"{r['p90_us']:,.1f}",
            f"{r['per_state_us']:,.3g}",
            str(r["calls"]),
        )
    console.print(table)
    ep = Table(title="One 400-step episode at batch 1 (policy + NumPy boat step), seconds")
    for col in ("method", "path", "seconds", "published (paper, their machine)"):
        ep.add_column(col, justify="left" if col in ("method", "path") else "right")
    for e in episodes:
        pub = PUBLISHED_EPISODE_S.get(e["method"])
        pub_s = "-" if pub is None else (f"{pub[0]}-{pub[1]}" if isinstance(pub, list) else f"{pub}")
        ep.add_row(e["method"], e["path"], f"{e['seconds']:.3f}", pub_s)
    console.print(ep)
    console.print(
        f"FISOR / actor at batch 1: {ratios['fisor_jax_over_actor_jax_b1']:.1f}x (both JAX), "
        f"{ratios['fisor_jax_over_actor_best_b1']:.1f}x (actor's fastest path, {best_actor}); "
        f"target >= {TARGET_RATIO:.0f}x: {_met(ratios['meets_target_same_path'])} (same path), "
        f"{_met(ratios['meets_target_best_path'])} (best path). "
        f"NumPy vs JAX max |diff|: actor {numpy_error['actor']:.2e}, flow {numpy_error['flow']:.2e}"
    )
    out = args.out_dir / "latency.json"
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    console.print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
