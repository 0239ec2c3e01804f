"""Shield tries on a Safety-Gymnasium Goal task, beside ``bench_safety_gym.py``'s shield stage.

The README's "sixth session" notes. Loads the finished SafeFQL run of the benchmark (``--run-dir``, the
``policy_seed{i}.eqx`` of ``--seeds`` seeds) and runs, on the benchmark's evaluation starts
(``bench_safety_gym.EVAL_SEED`` onwards), each ``--try`` for every seed's checkpoint:

- ``FALLBACK:DELTA[:K]``: the goal_lidar agent inside ``SafeFQLShield(fallback=FALLBACK, delta=DELTA,
  num_candidates=K)`` (K default 10);
- ``ensemble:FALLBACK:DELTA[:K]``: the same with a pessimistic ensemble as the model: ``Q_h`` is the max
  over all seeds' critics, the actor is the seed's own;
- ``self:FALLBACK:DELTA[:K]``: the SafeFQL actor itself (z = 0) as the agent, inside its own shield;
- ``teacher:FALLBACK:DELTA[:K]``: the goal_lidar agent inside a shield whose candidate actions come from
  the checkpoint's flow teacher (``flow_steps`` Euler steps from ``z``; ``z = 0`` for the mode) instead of
  the one-step actor, ``Q_h`` the seed's own.

Each try reports the cost reduction against its agent alone on the same starts, the intervention rate and
the normalized return and cost (``--r-min``/``--r-max``: the dataset's episode-return range, as in the
benchmark's JSON; the benchmark's default cost limit, 25). Results go under ``--tag`` into ``--out``
(JSON, with the command)::

    uv run python benchmarks/safety_gym_shield_tries.py --env car \\
        --run-dir /tmp/sgbench/car/SafetyCarGoal1Gymnasium-v0/safefql --r-min -3.55 --r-max 27.20 \\
        --try safest:0.1:32 --try ensemble:safest:0.1 --tag car-shield-tries
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

ENVS = {"point": "SafetyPointGoal1Gymnasium-v0", "car": "SafetyCarGoal1Gymnasium-v0"}
KEYS = ("r_norm", "c_norm", "cost", "intervention_rate")  # of bench_safety_gym.summarize, kept per seed


class MaxEnsemble:
    """A shield model from several checkpoints: ``Q_h`` = max over their critics, ``act`` = one member's."""

    delta = 0.0

    def __init__(self, members: list[Any], lead: int) -> None:
        self.members, self.lead = members, lead
        self.observation_space = members[0].observation_space
        self.action_space = members[0].action_space

    def act(self, obs: Any, rng: np.random.Generator | None = None) -> np.ndarray:
        return self.members[self.lead].act(obs, rng)

    def safety_q(self, obs: Any, action: Any) -> np.ndarray:
        return np.max([m.safety_q(obs, action) for m in self.members], axis=0)


class TeacherSource:
    """A shield model whose ``act`` samples the flow teacher of a policy (``Q_h`` is the policy's)."""

    delta = 0.0

    def __init__(self, policy: Any) -> None:
        import jax

        from safefql.training.safefql import flow_actions

        self.policy, self.fast = policy, policy.numpy()
        self.observation_space, self.action_space = policy.observation_space, policy.action_space
        agent, steps = policy.agent, int(policy.header["config"]["flow_steps"])
        self._sample = jax.jit(lambda obs, z: flow_actions(agent, obs, z, steps))

    def act(self, obs: Any, rng: np.random.Generator | None = None) -> np.ndarray:
        o = np.asarray(obs, np.float32)
        batch = o.reshape(-1, o.shape[-1])
        shape = (batch.shape[0], *self.action_space.shape)
        z = np.zeros(shape, np.float32) if rng is None else rng.standard_normal(shape, dtype=np.float32)
        a = np.asarray(self._sample(batch, z))
        return a[0] if o.ndim == 1 else a

    def safety_q(self, obs: Any, action: Any) -> np.ndarray:
        return self.fast.safety_q(obs, action)


def parse_try(spec: str) -> dict[str, Any]:
    parts = spec.split(":")
    kind = parts.pop(0) if parts[0] in ("ensemble", "self", "teacher") else "goal"
    if len(parts) not in (2, 3):
        raise SystemExit(f"--try {spec!r}: expected [ensemble:|self:|teacher:]FALLBACK:DELTA[:K]")
    return {
        "kind": kind,
        "fallback": parts[0],
        "delta": float(parts[1]),
        "k": int(parts[2]) if parts[2:] else 10,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import bench_safety_gym as bench

    from safefql._io import atomic_write_text
    from safefql.datasets.policies_safety_gym import make_safety_gym_policy
    from safefql.shields.wrapper import SafeFQLShield
    from safefql.training.policy import SafeFQLPolicy

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", choices=sorted(ENVS), required=True)
    p.add_argument("--run-dir", required=True, help="a finished bench_safety_gym SafeFQL run directory")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--r-min", type=float, required=True)
    p.add_argument("--r-max", type=float, required=True)
    p.add_argument("--try", dest="tries", action="append", required=True, help="see the module doc")
    p.add_argument("--tag", required=True)
    p.add_argument("--out", default=str(HERE / "results" / "safety_gym_shield_tries.json"))
    args = p.parse_args(argv)
    env_id = ENVS[args.env]
    tries = [parse_try(t) for t in args.tries]
    models = [SafeFQLPolicy.load(Path(args.run_dir) / f"policy_seed{i}.eqx") for i in range(args.seeds)]
    fast = [m.numpy() for m in models]
    goal = make_safety_gym_policy("goal_lidar", bench._make_env(env_id))
    agents = {"goal": lambda _seed: lambda o: goal(o, None)}
    agents["self"] = lambda seed: fast[seed].act

    def norm(ep: dict[str, Any]) -> dict[str, float]:
        s = bench.summarize(ep, args.r_min, args.r_max, bench.DEFAULT_COST_LIMIT)
        return {k: s[k] for k in KEYS}

    def make(env_id: str = env_id) -> Any:
        return bench._make_env(env_id)

    t0 = time.perf_counter()
    alone: dict[tuple[str, int], dict[str, float]] = {}  # goal_lidar is the same agent for every seed
    rows = []
    for t in tries:
        agent_kind = "self" if t["kind"] == "self" else "goal"
        per_seed = []
        for seed in range(args.seeds):
            act = agents[agent_kind](seed)
            key = (agent_kind, seed if agent_kind == "self" else 0)
            if key not in alone:
                alone[key] = norm(bench.run_episodes(make, act, args.episodes, bench.EVAL_SEED, None))
            if t["kind"] == "ensemble":
                model = MaxEnsemble(fast, seed)
            elif t["kind"] == "teacher":
                model = TeacherSource(models[seed])
            else:
                model = models[seed]

            def shielded(model: Any = model, t: dict[str, Any] = t) -> Any:
                return SafeFQLShield(
                    make(), checkpoint=model, delta=t["delta"], fallback=t["fallback"], num_candidates=t["k"]
                )

            s = norm(bench.run_episodes(shielded, act, args.episodes, bench.EVAL_SEED, None))
            base = alone[key]["cost"]
            s["cost_reduction"] = float(1.0 - s["cost"] / base) if base > 0 else float("nan")
            s["alone"] = alone[key]
            per_seed.append(s)
        red = np.array([s["cost_reduction"] for s in per_seed])
        row = t | {
            "cost_reduction": float(red.mean()),
            "cost_reduction_std": float(red.std()),
            **{
                k: float(np.mean([s[k] for s in per_seed])) for k in ("r_norm", "c_norm", "intervention_rate")
            },
            "per_seed": per_seed,
        }
        rows.append(row)
        print(
            f"{t['kind']:>8} {t['fallback']:>8} delta {t['delta']:<5g} K {t['k']:<3d}: cost reduction "
            f"{row['cost_reduction']:.1%} ± {row['cost_reduction_std']:.1%}, interventions/step "
            f"{row['intervention_rate']:.2f}, r_norm {row['r_norm']:.3f}, c_norm {row['c_norm']:.3f}",
            flush=True,
        )
    entry = {
        "env_id": env_id,
        "run_dir": args.run_dir,
        "episodes": args.episodes,
        "seeds": args.seeds,
        "tries": rows,
        "wall_s": time.perf_counter() - t0,
        "machine": bench.machine_info(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": "uv run python benchmarks/safety_gym_shield_tries.py " + shlex.join(argv or sys.argv[1:]),
    }
    out = Path(args.out)
    data = (
        json.loads(out.read_text()) if out.is_file() else {"benchmark": "safety_gym_shield_tries", "runs": {}}
    )
    data["runs"][args.tag] = entry
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(data, indent=1) + "\n")
    print(f"wrote {out} [{args.tag}]")
    return entry


if __name__ == "__main__":
    from safefql._io import exit_on_sigterm

    exit_on_sigterm()
    main()
