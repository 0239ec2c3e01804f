"""Shield latency on BoatNav-v0: what the shield adds per step at batch 1, and per env-step at batch 1024.

Measured (medians over ``--repeats`` blocks of ``--steps`` steps; microseconds):

- ``env_step``: raw ``env.step`` of ``gym.make("safefql/BoatNav-v0")`` (MuJoCo), a safe constant action;
- ``shield_step_pass``: ``SafeFQLShield.step`` when the proposal is accepted (forced with ``delta = -1e9``);
  ``added_pass`` = the difference;
- ``shield_step_intervene``: the same with ``delta = +inf`` so every step takes the fallback (worst case);
- ``policy_step``: policy mode (actor + its Q_h);
- ``decision_accept`` / ``decision_intervene``: the shield's decision alone (no env), both cases;
- ``model_safety_q`` / ``model_act``: one batch-1 call of the model (the NumPy path unless ``--backend jax``);
- batch ``--batch`` (1024): ``BoatNavVectorEnv.step`` alone vs under ``SafeFQLVectorShield`` (the model's
  own ``delta``) with uniform random proposals, per step and per env-step, and the intervention rate seen.

Model (``--checkpoint``): ``pretrained`` (the shipped BoatNav-v0 checkpoint; default), a checkpoint path,
``random`` (an untrained policy with the default boat network sizes: same cost per call as a trained one),
or ``oracle`` (the ground-truth ``BoatOracleModel``, not a network). Prints a table and writes JSON
(default ``benchmarks/results/shield.json``). Timings belong on a quiet machine. The OpenBLAS thread
setting matters for the batched calls (recorded in the JSON); for single-env control loops one thread
(``OPENBLAS_NUM_THREADS=1``) is what a deployment would use.

    OPENBLAS_NUM_THREADS=1 uv run python benchmarks/bench_shield.py --checkpoint pretrained
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import safefql
from safefql._io import atomic_write_text
from safefql.envs import boat
from safefql.shields.wrapper import SafeFQLShield, SafeFQLVectorShield, resolve_model

ENV_ID = "safefql/BoatNav-v0"
SAFE_START = (-2.5, 1.5)  # far from the rocks: a constant downstream action stays safe for a whole episode
SAFE_ACTION = np.array([1.0, 0.0], dtype=np.float32)


def _random_policy(tmp: Path) -> Any:
    """An untrained policy checkpoint with the default boat config (timings do not depend on the weights)."""
    import jax

    from safefql.training.checkpoint import save_checkpoint, space_to_dict
    from safefql.training.config import default_config
    from safefql.training.safefql import create_train_state

    env = gym.make(ENV_ID)
    cfg = default_config(ENV_ID)
    state = create_train_state(cfg, 2, 2, jax.random.PRNGKey(0))
    header = {
        "kind": "policy",
        "config": cfg.to_dict(),
        "observation_space": space_to_dict(env.observation_space),
        "action_space": space_to_dict(env.action_space),
        "env_id": ENV_ID,
    }
    path = save_checkpoint(tmp / "random_boat.eqx", state.agent, header)
    return resolve_model(path, ENV_ID)


def load_model(spec: str, tmp: Path) -> tuple[Any, str]:
    """The model named by ``--checkpoint`` and a description of it."""
    if spec == "pretrained":
        return resolve_model(None, ENV_ID), "pretrained"
    if spec == "random":
        return _random_policy(tmp), "random-init policy (default boat config)"
    if spec == "oracle":
        from safefql.shields.evaluate import BoatOracleModel

        return BoatOracleModel(), "BoatOracleModel (HJ grid, not a network)"
    return resolve_model(spec, ENV_ID), str(spec)


def _median_us(fn, steps: int, repeats: int) -> float:
    """Median over ``repeats`` of the mean time per call of ``fn`` over ``steps`` calls, in microseconds."""
    fn(min(steps, 50))  # warm-up (compiles a jitted model, fills caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn(steps)
        times.append((time.perf_counter_ns() - t0) / steps / 1e3)
    return float(np.median(times))


def _env_loop(env: gym.Env, action: Any) -> Any:
    def run(n: int) -> None:
        env.reset(options={"state": SAFE_START})
        left = boat.EPISODE_STEPS
        for _ in range(n):
            if left == 0:
                env.reset(options={"state": SAFE_START})
                left = boat.EPISODE_STEPS
            env.step(action)
            left -= 1

    return run


def bench_single(model: Any, backend: str, steps: int, repeats: int) -> dict[str, float]:
    """Batch-1 timings (microseconds per step or call)."""
    out: dict[str, float] = {}
    env = gym.make(ENV_ID)
    out["env_step"] = _median_us(_env_loop(env, SAFE_ACTION), steps, repeats)
    # delta = -1e9 / +inf force the accept / fallback path whatever the weights say (the cost is the same).
    shield = SafeFQLShield(gym.make(ENV_ID), checkpoint=model, backend=backend, delta=-1e9)
    out["shield_step_pass"] = _median_us(_env_loop(shield, SAFE_ACTION), steps, repeats)
    always = SafeFQLShield(gym.make(ENV_ID), checkpoint=model, backend=backend, delta=math.inf)
    out["shield_step_intervene"] = _median_us(_env_loop(always, SAFE_ACTION), steps, repeats)
    policy = SafeFQLShield(gym.make(ENV_ID), checkpoint=model, backend=backend, mode="policy")
    out["policy_step"] = _median_us(_env_loop(policy, None), steps, repeats)
    out["added_pass"] = out["shield_step_pass"] - out["env_step"]
    out["added_intervene"] = out["shield_step_intervene"] - out["env_step"]
    out["added_policy"] = out["policy_step"] - out["env_step"]

    obs = np.array(SAFE_START)
    core, core_inf = shield._core, always._core

    def decide(c):
        def run(n: int) -> None:
            for _ in range(n):
                c.decide_one(obs, SAFE_ACTION)

        return run

    out["decision_accept"] = _median_us(decide(core), steps, repeats)
    out["decision_intervene"] = _median_us(decide(core_inf), steps, repeats)
    fast = shield.fast_model

    def q_only(n: int) -> None:
        for _ in range(n):
            fast.safety_q(obs, SAFE_ACTION)

    def act_only(n: int) -> None:
        for _ in range(n):
            fast.act(obs)

    out["model_safety_q"] = _median_us(q_only, steps, repeats)
    out["model_act"] = _median_us(act_only, steps, repeats)
    return out


def bench_vector(
    model: Any, backend: str, batch: int, steps: int, repeats: int, seed: int
) -> dict[str, float]:
    """Batch-``batch`` timings: microseconds per vector step and per env-step, raw and shielded."""
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1.0, 1.0, size=(steps, batch, 2)).astype(np.float32)

    def loop(venv: Any) -> Any:
        def run(n: int) -> None:
            venv.reset(seed=seed, options={"start": "safe"})
            for t in range(n):
                venv.step(actions[t % steps])

        return run

    raw = boat.BoatNavVectorEnv(batch)
    shielded = SafeFQLVectorShield(boat.BoatNavVectorEnv(batch), checkpoint=model, backend=backend)
    interventions = []

    def count(n: int) -> None:
        shielded.reset(seed=seed, options={"start": "safe"})
        for t in range(n):
            interventions.append(float(shielded.step(actions[t % steps])[4]["shield"]["intervened"].mean()))

    count(min(steps, 100))
    out = {
        "batch": float(batch),
        "vector_step_raw": _median_us(loop(raw), steps, repeats),
        "vector_step_shield": _median_us(loop(shielded), steps, repeats),
        "intervention_rate": float(np.mean(interventions)),
    }
    out["vector_added_per_step"] = out["vector_step_shield"] - out["vector_step_raw"]
    out["shield_per_env_step"] = out["vector_step_shield"] / batch
    out["added_per_env_step"] = out["vector_added_per_step"] / batch
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="pretrained", help="pretrained | random | oracle | PATH")
    parser.add_argument("--backend", default="auto", choices=["auto", "numpy", "jax"])
    parser.add_argument("--steps", type=int, default=2000, help="steps per timed block (batch 1)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--vector-steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "shield.json"))
    args = parser.parse_args(argv)
    for name in ("steps", "repeats", "batch", "vector_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")

    with tempfile.TemporaryDirectory() as tmp:
        model, described = load_model(args.checkpoint, Path(tmp))
        single = bench_single(model, args.backend, args.steps, args.repeats)
        vector = bench_vector(model, args.backend, args.batch, args.vector_steps, args.repeats, args.seed)

    result = {
        "benchmark": "shield",
        "env_id": ENV_ID,
        "model": described,
        "backend": args.backend,
        "units": "microseconds",
        "batch1": single,
        "vector": vector,
        "settings": {k: getattr(args, k) for k in ("steps", "repeats", "batch", "vector_steps", "seed")},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "safefql": safefql.__version__,
            # Small batched matmuls (the fallback candidates, batch 1024) are much slower with several
            # OpenBLAS threads on a busy machine; record the setting the numbers were taken with.
            "blas_threads_env": {
                k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
            },
        },
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Shield latency on {ENV_ID} ({described}, backend {args.backend}), microseconds")
    table.add_column("measurement")
    table.add_column("us", justify="right")
    for key, value in single.items():
        table.add_row(f"batch 1: {key}", f"{value:.1f}")
    for key, value in vector.items():
        table.add_row(f"batch {args.batch}: {key}", f"{value:.3f}" if key != "batch" else f"{value:.0f}")
    Console().print(table)
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
