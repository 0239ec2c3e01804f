"""The SafeFQL shield: a Gymnasium wrapper that filters actions with the calibrated safety critic.

DESIGN.md section 5. The wrapper needs only the policy protocol of ``safefql.training.policy``
(duck-typed): ``act(obs, rng=None)``, ``safety_q(obs, action)``, ``delta``, ``observation_space``,
``action_space`` and, optionally, ``numpy()`` (the JAX-free copy used on the hot path). So a checkpoint
path, a loaded ``SafeFQLPolicy`` and a small analytic model written by hand all work.

Modes:

- ``"shield"``: the agent proposes ``a``; it is first clipped to the action bounds (the env would clip it
  anyway, and the critic was trained on in-range actions only), then executed if
  ``Q_h(s, a) + delta <= 0``; otherwise a safe replacement is executed (see ``fallback``).
- ``"policy"``: the proposed action is ignored (``None`` is allowed) and the SafeFQL actor ``mu(s, z)``
  acts; the shield is then just a policy runner that still reports ``Q_h`` of what it did.

Fallbacks (what replaces an unsafe proposal):

- ``"nearest"`` (default): the candidates are ``K = num_candidates`` points on the segment from the
  proposal to the actor's action, ``a_k = a + (k / K) (a_actor - a)`` for ``k = 1..K`` (``a_K`` is the
  actor's action itself), plus ``M = num_spread`` fixed actions spread evenly over the action box
  (:func:`spread_candidates`), all scored in ONE batched ``safety_q`` call. The feasible candidate
  (``Q_h + delta <= 0``) nearest to the proposal is executed (ties go to the segment); if none is
  feasible, the one with the smallest ``Q_h`` (NaN counts as +inf). The spread candidates matter when the
  actor's own action is unsafe: the segment then may hold no safe action at all.
- ``"actor"``: the actor's action, whatever its ``Q_h``.
- ``"samples"``: the candidates are the actor's action ``mu(s, 0)`` and ``K = num_candidates`` draws
  ``mu(s, z_k)``, ``z_k ~ N(0, I)`` from the shield's generator (one batched actor call, one batched critic
  call); the feasible one nearest to the proposal is executed, else the one with the smallest ``Q_h``. The
  draws follow the distilled behaviour distribution, so every candidate lies where the critic was trained;
  the box-spread candidates of ``"nearest"`` do not. Seeded by ``rng`` or ``reset(seed=...)``. With a model
  whose ``act`` ignores the generator (e.g. ``BoatOracleModel``) every draw is the actor's action.
- ``"safest"``: the candidates of ``"samples"``, but the one with the smallest ``Q_h`` is executed,
  however far from the proposal. The most conservative replacement: where the critic's zero level set
  lies close to the failure set, "nearest feasible" keeps steering along its edge, "safest" steps back.
  Around the reward-greedy agent on PointGoal1 it removes more cost at fewer interventions than
  ``"samples"`` (84.6% at 0.74 interventions per step against 77.2% at 0.91, delta 0.2); on CarGoal1 the
  two are alike (README, Safety-Gymnasium).

Why ``"nearest"`` is the default. Measured on the boat with the ground-truth critic
(``safefql.shields.evaluate.BoatOracleModel``, delta 0.02), 200 oracle-safe starts, seed 1:

    agent    fallback  violating episodes      mean ||applied - proposed||     return
                       (unshielded: 43/34/33)  per intervention (interv./step)
    goal     nearest   0                       1.05 (0.048)                    -492
    goal     actor     0                       1.39 (0.047)                    -491
    random   nearest   0                       0.76 (0.027)                    -749
    random   actor     0                       1.24 (0.025)                    -747
    zero     nearest   0                       0.17 (0.035)                    -744
    zero     actor     0                       1.00 (0.034)                    -744

Both remove every violation; "nearest" stays closer to what the agent asked for, most of all when the
agent's intent differs from the actor's (random, zero). With a learned critic whose actor is itself unsafe
near the rocks, "nearest" is also the safer one (README, tuning notes). ``tests/test_shield.py::
test_boat_fallbacks_compared`` re-checks the ordering. The cost is one batched critic call of ``K + M``
rows, only on the steps that intervene (``"samples"``, ``"safest"``: one batched actor call and one critic
call).

The hot path calls ``model.numpy()`` once and then runs only NumPy per step (no JAX dispatch).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

MODES = ("shield", "policy")
FALLBACKS = ("nearest", "actor", "samples", "safest")
BACKENDS = ("auto", "numpy", "jax")
_REQUIRED = ("act", "safety_q", "observation_space", "action_space")
DEFAULT_NUM_SPREAD = 32  # fixed candidates spread over the action box, scored by the "nearest" fallback


# ------------------------------------------------------------------------------------------------ model
def resolve_model(checkpoint: Any, env_id: str | None) -> Any:
    """The shield's model: ``None`` -> the shipped model for ``env_id``; a path -> ``SafeFQLPolicy.load``;
    any object with ``act``, ``safety_q``, ``observation_space`` and ``action_space`` -> itself."""
    if checkpoint is None:
        if env_id is None:
            raise ValueError(
                "checkpoint=None asks for the shipped pretrained model of env.spec.id, but this env has no "
                "spec id (it was not built with gymnasium.make); pass checkpoint=<path or policy>"
            )
        from safefql.shields.pretrained import pretrained_path

        checkpoint = pretrained_path(env_id)
    if isinstance(checkpoint, str | os.PathLike):
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        from safefql.training.policy import SafeFQLPolicy

        return SafeFQLPolicy.load(path)
    missing = [name for name in _REQUIRED if not hasattr(checkpoint, name)]
    if missing:
        raise ValueError(
            f"checkpoint must be None, a path, or a policy object with {list(_REQUIRED)}; "
            f"{type(checkpoint).__name__} lacks {missing}"
        )
    return checkpoint


def _fast_model(model: Any, backend: str) -> Any:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    has_numpy = callable(getattr(model, "numpy", None))
    if backend == "numpy" and not has_numpy:
        raise ValueError(
            f"backend='numpy' needs a model with a .numpy() method; {type(model).__name__} has none"
        )
    return model.numpy() if has_numpy and backend != "jax" else model


def _model_delta(model: Any, delta: float | None) -> float:
    if delta is None:
        if not hasattr(model, "delta"):
            raise ValueError(f"{type(model).__name__} has no 'delta' attribute; pass delta= explicitly")
        delta = model.delta
    try:
        delta = float(delta)
    except (TypeError, ValueError) as e:
        raise ValueError(f"delta must be a number, got {delta!r}") from e
    if math.isnan(delta) or delta == -math.inf:
        raise ValueError(f"delta must be a number or +inf (nothing certified), got {delta}")
    return delta


def _describe(space: Any) -> str:
    if isinstance(space, gym.spaces.Box):
        return f"Box(shape={space.shape}, low={space.low.tolist()}, high={space.high.tolist()})"
    return repr(space)


def check_spaces(model: Any, observation_space: Any, action_space: Any, where: str = "env") -> None:
    """ValueError (naming both) unless the model's Box spaces match the env's in shape and bounds.

    Bounds are compared in float32, the precision the networks see.
    """
    pairs = (("observation_space", observation_space), ("action_space", action_space))
    for name, env_space in pairs:
        if not isinstance(env_space, gym.spaces.Box):
            raise ValueError(f"the shield needs a Box {name}; the {where} has {_describe(env_space)}")
    for name, env_space in pairs:
        model_space = getattr(model, name)
        if not isinstance(model_space, gym.spaces.Box):
            raise ValueError(f"the model's {name} must be a Box, got {_describe(model_space)}")
        same = model_space.shape == env_space.shape and all(
            np.array_equal(
                np.asarray(getattr(model_space, b), np.float32), np.asarray(getattr(env_space, b), np.float32)
            )
            for b in ("low", "high")
        )
        if not same:
            raise ValueError(
                f"{name} mismatch: the model expects {_describe(model_space)} but the {where} has "
                f"{_describe(env_space)}"
            )


def _check_options(mode: str, fallback: str, num_candidates: int, num_spread: int = 0) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    if isinstance(num_candidates, bool) or int(num_candidates) != num_candidates or num_candidates < 1:
        raise ValueError(f"num_candidates must be a positive integer, got {num_candidates!r}")
    if isinstance(num_spread, bool) or int(num_spread) != num_spread or num_spread < 0:
        raise ValueError(f"num_spread must be a non-negative integer, got {num_spread!r}")


def _as_rng(rng: Any) -> np.random.Generator:
    if rng is None or isinstance(rng, int | np.integer):
        return np.random.default_rng(rng)
    if isinstance(rng, np.random.Generator):
        return rng
    raise ValueError(f"rng must be None, an int seed or a numpy.random.Generator, got {type(rng).__name__}")


def _recordable(checkpoint: Any) -> Any:
    """What ``RecordConstructorArgs`` keeps for ``checkpoint``: a path or None, never the model itself
    (it deep-copies its kwargs, and so does ``Wrapper.spec``)."""
    if checkpoint is None or isinstance(checkpoint, str | os.PathLike):
        return None if checkpoint is None else str(checkpoint)
    header = getattr(checkpoint, "header", None)
    path = header.get("path") if isinstance(header, dict) else None
    return str(path) if path else f"<in-memory {type(checkpoint).__name__}: not reproducible from the spec>"


# ------------------------------------------------------------------------------------------------ core
def spread_candidates(action_space: gym.spaces.Box, num: int) -> np.ndarray:
    """``num`` fixed actions spread evenly over the action box (unscrambled Sobol points), float64.

    The ``"nearest"`` fallback scores them beside the proposal-to-actor segment, so that a safe replacement
    is found even where the actor's own action is unsafe.
    """
    shape = tuple(action_space.shape)
    if num == 0:
        return np.zeros((0, *shape))
    from scipy.stats import qmc

    d = int(np.prod(shape))
    with warnings.catch_warnings():  # Sobol warns when num is not a power of two: balance is irrelevant here
        warnings.simplefilter("ignore", UserWarning)
        unit = qmc.Sobol(d, scramble=False).random(num + 1)[1:]  # the first point is the low corner
    low = np.asarray(action_space.low, np.float64).ravel()
    high = np.asarray(action_space.high, np.float64).ravel()
    return (low + unit * (high - low)).reshape(num, *shape)


class _Decider:
    """The decision rule shared by the single and vector shields (batch 1 and batch N paths)."""

    def __init__(
        self,
        model: Any,
        fast: Any,
        action_space: gym.spaces.Box,
        mode: str,
        fallback: str,
        delta: float,
        num_candidates: int,
        stochastic: bool,
        rng: np.random.Generator,
        subset: bool,
        num_spread: int = 0,
    ) -> None:
        self.model, self.fast = model, fast
        self.mode, self.fallback, self.delta = mode, fallback, delta
        self.stochastic, self.rng = stochastic, rng
        self.subset = subset  # evaluate the fallback on the unsafe rows only (NumPy), or on all rows (JAX)
        self.shape = tuple(action_space.shape)
        self.dtype = np.dtype(action_space.dtype)
        self.low = np.asarray(action_space.low, np.float64)
        self.high = np.asarray(action_space.high, np.float64)
        # Small actions are range-checked in plain Python: cheaper than NumPy reductions at this size.
        self._bounds = list(zip(self.low.ravel().tolist(), self.high.ravel().tolist(), strict=True))
        self._small = self.low.size <= 32
        self.k = int(num_candidates)
        self.t = (np.arange(1, self.k + 1, dtype=np.float64) / self.k).reshape(
            1, self.k, *([1] * len(self.shape))
        )
        self.spread = spread_candidates(action_space, num_spread)  # (M, *shape), fixed for the shield's life
        # The batch-1 hot path skips re-validating what step() has already checked (NumpyPolicy has one).
        self._q_one = getattr(fast, "safety_q_one", None) or (lambda o, a: float(fast.safety_q(o, a)))

    # -- primitives
    def actor(self, obs: np.ndarray) -> np.ndarray:
        a = self.fast.act(obs, self.rng) if self.stochastic else self.fast.act(obs)
        a = np.asarray(a, dtype=np.float64)
        return np.minimum(np.maximum(a, self.low), self.high)

    def q(self, obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        return np.asarray(self.fast.safety_q(obs, action), dtype=np.float64)

    def proposal(self, action: Any, batch: tuple[int, ...] = ()) -> tuple[np.ndarray, bool]:
        """Float64 copy of ``action`` clipped to the bounds, and whether clipping changed it.

        ValueError on a wrong shape or NaN/inf.
        """
        try:
            a = np.array(action, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"proposed action must be numeric, got {action!r}") from e
        if a.shape != (*batch, *self.shape):
            raise ValueError(
                f"proposed action has shape {a.shape}; the action space needs {(*batch, *self.shape)}"
            )
        if self._small and not batch:
            for x, (lo, hi) in zip(a.ravel().tolist(), self._bounds, strict=True):
                if not lo <= x <= hi:  # out of range or NaN
                    break
            else:
                return a, False
        c = np.minimum(np.maximum(a, self.low), self.high)
        if (c == a).all():  # in range (NaN never compares equal, so it lands below)
            return a, False
        if not np.isfinite(a).all():
            raise ValueError(f"proposed action contains NaN or inf: {a.tolist()}")
        return c, True

    # -- batch path: obs (N, ...), proposed (N, *shape) already clipped
    def replace(self, obs: np.ndarray, proposed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fallback actions and their ``Q_h`` for the rows of ``obs`` (all treated as unsafe)."""
        actor = self.actor(obs)
        if self.fallback == "actor":
            return actor, self.q(obs, actor)
        n = obs.shape[0]
        if self.fallback in ("samples", "safest"):
            # mu(s, 0) and K draws mu(s, z_k), one batched call: candidates where the data (and critic) are
            mode = actor if not self.stochastic else np.asarray(self.fast.act(obs), dtype=np.float64)
            draws = np.asarray(self.fast.act(np.repeat(obs, self.k, axis=0), self.rng), dtype=np.float64)
            cands = np.concatenate([mode[:, None], draws.reshape(n, self.k, *self.shape)], axis=1)
            cands = np.minimum(np.maximum(cands, self.low), self.high)
        else:
            cands = proposed[:, None] + self.t * (actor - proposed)[:, None]
            cands[:, -1] = actor
            if self.spread.shape[0]:
                spread = np.broadcast_to(self.spread, (n, *self.spread.shape))
                cands = np.concatenate([cands, spread], axis=1)
        m = cands.shape[1]
        qc = self.q(np.repeat(obs, m, axis=0), cands.reshape(n * m, *self.shape)).reshape(n, m)
        qn = np.where(np.isnan(qc), np.inf, qc)
        rows = np.arange(n)
        if self.fallback == "safest":
            idx = qn.argmin(axis=1)
            return cands[rows, idx], qc[rows, idx]
        feasible = qn + self.delta <= 0.0
        # The segment comes first, ordered by distance; spread candidates win only when strictly nearer.
        dist = np.sqrt(((cands - proposed[:, None]) ** 2).reshape(n, m, -1).sum(-1))
        nearest = np.where(feasible, dist, np.inf).argmin(axis=1)
        idx = np.where(feasible.any(axis=1), nearest, qn.argmin(axis=1))
        return cands[rows, idx], qc[rows, idx]

    def decide_batch(
        self, obs: np.ndarray, action: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(proposed, applied, intervened, q_proposed, q_applied)`` for a batch of observations."""
        n = obs.shape[0]
        if self.mode == "policy":
            a = self.actor(obs)
            q = self.q(obs, a)
            return a, a.copy(), np.zeros(n, dtype=bool), q, q.copy()
        proposed, _ = self.proposal(action, (n,))
        q = self.q(obs, proposed)
        unsafe = ~(q + self.delta <= 0.0)
        applied, q_applied = proposed.copy(), q.copy()
        if unsafe.any():
            if self.subset:
                idx = np.flatnonzero(unsafe)
                applied[idx], q_applied[idx] = self.replace(obs[idx], proposed[idx])
            else:  # fixed shapes, so a jitted model compiles once
                rep, q_rep = self.replace(obs, proposed)
                applied[unsafe], q_applied[unsafe] = rep[unsafe], q_rep[unsafe]
        return proposed, applied, unsafe, q, q_applied

    # -- batch-1 path
    def decide_one(
        self, obs: np.ndarray, action: Any
    ) -> tuple[np.ndarray, np.ndarray, bool, float, float, bool]:
        """``(proposed, applied, intervened, q_proposed, q_applied, clipped)`` for one observation."""
        if self.mode == "policy":
            a = self.actor(obs)
            q = float(self.q(obs, a))
            return a, a, False, q, q, False
        a, clipped = self.proposal(action)
        q = self._q_one(obs, a)
        if q + self.delta <= 0.0:
            return a, a, False, q, q, clipped
        applied, q_applied = self.replace(obs[None], a[None])
        return a, applied[0], True, q, float(q_applied[0]), clipped


def _check_obs(obs: Any, where: str) -> np.ndarray:
    o = np.asarray(obs)
    if o.dtype.kind != "f":
        return o
    # Fast screen: a sum is NaN/inf if any entry is (or, rarely, on overflow: then the exact test decides).
    total = sum(o.ravel().tolist()) if o.size <= 64 else float(o.sum())
    if not math.isfinite(total) and not np.isfinite(o).all():
        raise ValueError(f"the env returned an observation with NaN or inf at {where}: {o.tolist()}")
    return o


# ------------------------------------------------------------------------------------------------ single
class SafeFQLShield(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Filter an agent's actions with a calibrated SafeFQL safety critic (or run the SafeFQL actor).

    Args:
        env: the environment; its Box observation and action spaces must match the model's.
        checkpoint: None (the shipped model for ``env.spec.id``), a checkpoint path, or a policy object
            (``act``, ``safety_q``, ``delta``, ``observation_space``, ``action_space``; see module doc).
        mode: ``"shield"`` (filter the proposed action) or ``"policy"`` (ignore it, run the actor).
        fallback: ``"nearest"``, ``"actor"``, ``"samples"`` or ``"safest"``: the replacement for an unsafe
            proposal (module doc).
        rng: seed or Generator for the actor noise (``stochastic``, and the sampled draws); if not
            given, ``reset(seed=s)`` re-seeds it with ``s``.
        stochastic: draw ``z ~ N(0, I)`` for the actor; default ``z = 0`` (deterministic actor).
        delta: override the model's calibrated ``delta``.
        num_candidates: ``K`` for the ``"nearest"``, ``"samples"`` and ``"safest"`` fallbacks.
        num_spread: ``M`` fixed candidates spread over the action box for the ``"nearest"`` fallback.
        backend: ``"auto"`` (``model.numpy()`` if it has one), ``"numpy"`` (require it) or ``"jax"`` (the
            model's own methods, JAX for a ``SafeFQLPolicy``).

    ``info["shield"]`` after every step: ``intervened`` (bool), ``proposed`` and ``applied`` (float64 arrays;
    ``proposed`` after clipping to the action bounds; in policy mode both are the actor's action),
    ``q_h_proposed``, ``q_h_applied``, ``delta`` (floats), ``mode`` (str), ``episode_steps`` and
    ``episode_interventions`` (ints, reset by ``reset``). ``reset`` reports the same keys (zeros, NaN
    values), so the info structure is constant. When nothing is replaced, the agent's own action object
    is passed to the env untouched (clipped copy if it was out of range).

    Example on the boat, with the ground-truth HJ critic (:class:`~safefql.shields.evaluate.BoatOracleModel`)
    standing in for a trained checkpoint, and a careless agent that always thrusts downstream:

    >>> import gymnasium as gym, numpy as np
    >>> import safefql
    >>> from safefql.shields.evaluate import BoatOracleModel
    >>> shield = SafeFQLShield(gym.make("safefql/BoatNav-v0"), checkpoint=BoatOracleModel())
    >>> obs, info = shield.reset(seed=0, options={"state": (-2.0, 0.5)})  # upstream of the upper rock
    >>> ahead = np.array([1.0, 0.0], dtype=np.float32)
    >>> obs, reward, terminated, truncated, info = shield.step(ahead)
    >>> info["shield"]["intervened"], info["shield"]["applied"].tolist()  # far from the rock: untouched
    (False, [1.0, 0.0])
    >>> worst_h = info["h"]
    >>> while not truncated:
    ...     obs, reward, terminated, truncated, info = shield.step(ahead)
    ...     worst_h = max(worst_h, info["h"])
    >>> bool(worst_h <= 0.0), info["shield"]["episode_interventions"] > 0  # never in a rock
    (True, True)
    >>> env = gym.make("safefql/BoatNav-v0")  # the same agent without the shield
    >>> obs, info = env.reset(seed=0, options={"state": (-2.0, 0.5)})
    >>> bool(max(env.step(ahead)[4]["h"] for _ in range(400)) > 0.0)
    True

    With the shipped checkpoint (skipped here: the file is produced by the release training run):

    >>> shield = SafeFQLShield(gym.make("safefql/BoatNav-v0"))  # doctest: +SKIP
    >>> shield.act(np.array([-2.0, 0.0]))  # the SafeFQL actor's action  # doctest: +SKIP
    """

    def __init__(
        self,
        env: gym.Env,
        checkpoint: Any = None,
        mode: str = "shield",
        fallback: str = "nearest",
        rng: Any = None,
        stochastic: bool = False,
        *,
        delta: float | None = None,
        num_candidates: int = 10,
        num_spread: int = DEFAULT_NUM_SPREAD,
        backend: str = "auto",
    ) -> None:
        _check_options(mode, fallback, num_candidates, num_spread)
        gym.utils.RecordConstructorArgs.__init__(
            self,
            checkpoint=_recordable(checkpoint),
            mode=mode,
            fallback=fallback,
            rng=rng if rng is None or isinstance(rng, int | np.integer) else None,
            stochastic=bool(stochastic),
            delta=delta,
            num_candidates=int(num_candidates),
            num_spread=int(num_spread),
            backend=backend,
        )
        gym.Wrapper.__init__(self, env)
        spec = getattr(env, "spec", None)
        self.model = resolve_model(checkpoint, getattr(spec, "id", None))
        check_spaces(self.model, env.observation_space, env.action_space)
        fast = _fast_model(self.model, backend)
        self._reseed = rng is None
        self._core = _Decider(
            self.model,
            fast,
            env.action_space,
            mode,
            fallback,
            _model_delta(self.model, delta),
            int(num_candidates),
            bool(stochastic),
            _as_rng(rng),
            subset=True,
            num_spread=int(num_spread),
        )
        self.mode, self.fallback = mode, fallback
        self._obs: np.ndarray | None = None
        self._steps = 0
        self._interventions = 0
        self._zeros = np.zeros(env.action_space.shape, dtype=np.float64)

    @property
    def delta(self) -> float:
        """The threshold in use: an action is safe when ``Q_h(s, a) + delta <= 0``."""
        return self._core.delta

    @property
    def fast_model(self) -> Any:
        """The object queried on the hot path (``model.numpy()`` unless ``backend="jax"``)."""
        return self._core.fast

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        """Reset the env and the per-episode counters; ``info["shield"]`` has zeros and NaN values."""
        obs, info = self.env.reset(seed=seed, options=options)
        if seed is not None and self._reseed:
            self._core.rng = np.random.default_rng(seed)
        self._obs = _check_obs(obs, "reset")
        self._steps = 0
        self._interventions = 0
        info["shield"] = {
            "intervened": False,
            "proposed": self._zeros.copy(),
            "applied": self._zeros.copy(),
            "q_h_proposed": math.nan,
            "q_h_applied": math.nan,
            "delta": self._core.delta,
            "mode": self.mode,
            "episode_steps": 0,
            "episode_interventions": 0,
        }
        return obs, info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict]:
        """Execute ``action`` if it is judged safe, else its replacement (policy mode: the actor's action)."""
        if self._obs is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        proposed, applied, intervened, q_p, q_a, clipped = self._core.decide_one(self._obs, action)
        if intervened or clipped or self.mode == "policy":
            executed = applied.astype(self._core.dtype)
        else:
            executed = action  # untouched: the agent's own object
        obs, reward, terminated, truncated, info = self.env.step(executed)
        self._obs = _check_obs(obs, "step")
        self._steps += 1
        self._interventions += intervened
        info["shield"] = {
            "intervened": intervened,
            "proposed": proposed,
            "applied": applied if intervened else proposed.copy(),
            "q_h_proposed": q_p,
            "q_h_applied": q_a,
            "delta": self._core.delta,
            "mode": self.mode,
            "episode_steps": self._steps,
            "episode_interventions": self._interventions,
        }
        return obs, reward, terminated, truncated, info

    def act(self, obs: Any) -> np.ndarray:
        """The SafeFQL actor's action for ``obs`` (one or a batch), so the shield is a plain policy too."""
        o = np.asarray(obs)
        if o.dtype.kind == "f" and not np.isfinite(o).all():
            raise ValueError(f"obs contains NaN or inf: {o.tolist()}")
        return self._core.actor(o).astype(self._core.dtype)

    def is_safe(self, obs: Any, action: Any) -> bool | np.ndarray:
        """``Q_h(obs, clip(action)) + delta <= 0`` for one pair (bool) or a batch (bool array)."""
        o = np.asarray(obs)
        if o.dtype.kind == "f" and not np.isfinite(o).all():
            raise ValueError(f"obs contains NaN or inf: {o.tolist()}")
        batch = o.shape[: o.ndim - len(self.env.observation_space.shape)]
        a, _ = self._core.proposal(action, batch)
        ok = self._core.q(o, a) + self._core.delta <= 0.0
        return bool(ok) if ok.ndim == 0 else ok

    @property
    def episode_steps(self) -> int:
        """Steps taken in the current episode."""
        return self._steps

    @property
    def episode_interventions(self) -> int:
        """Interventions in the current episode."""
        return self._interventions


# ------------------------------------------------------------------------------------------------ vector
class SafeFQLVectorShield(gym.vector.VectorWrapper):
    """The shield for a ``gymnasium.vector.VectorEnv``: a whole batch of proposals per step, one batched
    critic call (plus the fallback's calls for the unsafe rows).

    Same arguments as :class:`SafeFQLShield` (the spaces checked are the env's single spaces). With the
    deterministic actor and a deterministic fallback (``"nearest"``, ``"actor"``), each sub-env gets exactly
    the decisions a :class:`SafeFQLShield` would make for it; the sampled draws (``"samples"``, ``"safest"``)
    come from one generator for the batch (NumPy backend: for the unsafe rows only; JAX backend: for every
    row), so they differ.
    ``info["shield"]`` holds the same keys as arrays over the sub-envs (``delta`` and ``mode`` scalars).
    Autoreset: in next-step mode the step that resets a sub-env ignores its action, so it reports
    ``intervened=False``, ``applied == proposed`` and NaN ``Q_h`` values; the counters of a sub-env restart at
    the reset (same-step mode: after the step that ends the episode, which still reports the finished
    episode's totals; disabled mode: at ``reset(options={"reset_mask": ...})``).

    >>> import numpy as np
    >>> from safefql.envs import boat
    >>> from safefql.shields.evaluate import BoatOracleModel
    >>> venv = boat.BoatNavVectorEnv(3)
    >>> shield = SafeFQLVectorShield(venv, checkpoint=BoatOracleModel())
    >>> obs, info = shield.reset(options={"state": [[-1.25, 0.5], [-2.5, 1.5], [0.5, 0.0]]})
    >>> obs, r, term, trunc, info = shield.step(np.array([[1.0, 0.0]] * 3, dtype=np.float32))
    >>> info["shield"]["intervened"].tolist()  # only the first boat is about to hit a rock
    [True, False, False]
    >>> q = info["shield"]; bool(q["q_h_proposed"][0] + q["delta"] > 0 >= q["q_h_applied"][0] + q["delta"])
    True
    """

    def __init__(
        self,
        env: gym.vector.VectorEnv,
        checkpoint: Any = None,
        mode: str = "shield",
        fallback: str = "nearest",
        rng: Any = None,
        stochastic: bool = False,
        *,
        delta: float | None = None,
        num_candidates: int = 10,
        num_spread: int = DEFAULT_NUM_SPREAD,
        backend: str = "auto",
    ) -> None:
        _check_options(mode, fallback, num_candidates, num_spread)
        super().__init__(env)
        spec = getattr(env, "spec", None)
        self.model = resolve_model(checkpoint, getattr(spec, "id", None))
        check_spaces(self.model, env.single_observation_space, env.single_action_space, where="vector env")
        fast = _fast_model(self.model, backend)
        self._reseed = rng is None
        self._core = _Decider(
            self.model,
            fast,
            env.single_action_space,
            mode,
            fallback,
            _model_delta(self.model, delta),
            int(num_candidates),
            bool(stochastic),
            _as_rng(rng),
            subset=backend != "jax",
            num_spread=int(num_spread),
        )
        self.mode, self.fallback = mode, fallback
        mode_value = env.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
        self._autoreset_mode = gym.vector.AutoresetMode(mode_value)
        n = self.num_envs
        self._obs: np.ndarray | None = None
        self._steps = np.zeros(n, dtype=np.int64)
        self._interventions = np.zeros(n, dtype=np.int64)
        self._pending = np.zeros(n, dtype=bool)  # next step autoresets these (next-step mode)

    @property
    def delta(self) -> float:
        """The threshold in use: an action is safe when ``Q_h(s, a) + delta <= 0``."""
        return self._core.delta

    def _empty_info(self) -> dict[str, Any]:
        n = self.num_envs
        zeros = np.zeros((n, *self._core.shape))
        return {
            "intervened": np.zeros(n, dtype=bool),
            "proposed": zeros,
            "applied": zeros.copy(),
            "q_h_proposed": np.full(n, np.nan),
            "q_h_applied": np.full(n, np.nan),
            "delta": self._core.delta,
            "mode": self.mode,
            "episode_steps": self._steps.copy(),
            "episode_interventions": self._interventions.copy(),
        }

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        """Reset (all sub-envs, or those in ``options["reset_mask"]``) and their counters."""
        mask = None if options is None else options.get("reset_mask")
        obs, info = self.env.reset(seed=seed, options=options)
        if isinstance(seed, int | np.integer) and self._reseed:
            self._core.rng = np.random.default_rng(seed)
        self._obs = _check_obs(obs, "reset")
        if mask is None:
            self._steps[:] = 0
            self._interventions[:] = 0
            self._pending[:] = False
        else:
            mask = np.asarray(mask, dtype=bool)
            self._steps[mask] = 0
            self._interventions[mask] = 0
            self._pending[mask] = False
        info = dict(info)
        info["shield"] = self._empty_info()
        return obs, info

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict]:
        """Filter ``actions`` (num_envs, *action_shape) in one batched decision, then step every sub-env."""
        if self._obs is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        proposed, applied, intervened, q_p, q_a = self._core.decide_batch(self._obs, actions)
        pending = self._pending
        if pending.any():  # these sub-envs reset now and ignore their action
            intervened = intervened & ~pending
            applied[pending] = proposed[pending]
            q_p[pending] = np.nan
            q_a[pending] = np.nan
        obs, rewards, terminated, truncated, info = self.env.step(applied.astype(self._core.dtype))
        self._obs = _check_obs(obs, "step")
        live = ~pending
        self._steps[live] += 1
        self._interventions[live] += intervened[live]
        self._steps[pending] = 0
        self._interventions[pending] = 0
        steps, interventions = self._steps.copy(), self._interventions.copy()
        done = np.asarray(terminated) | np.asarray(truncated)
        if self._autoreset_mode == gym.vector.AutoresetMode.NEXT_STEP:
            self._pending = done.copy()
        elif self._autoreset_mode == gym.vector.AutoresetMode.SAME_STEP:
            self._steps[done] = 0
            self._interventions[done] = 0
        info = dict(info)
        info["shield"] = {
            "intervened": intervened,
            "proposed": proposed,
            "applied": applied,
            "q_h_proposed": q_p,
            "q_h_applied": q_a,
            "delta": self._core.delta,
            "mode": self.mode,
            "episode_steps": steps,
            "episode_interventions": interventions,
        }
        return obs, rewards, terminated, truncated, info

    def act(self, obs: Any) -> np.ndarray:
        """The SafeFQL actor's actions for a batch of observations."""
        o = np.asarray(obs)
        if o.dtype.kind == "f" and not np.isfinite(o).all():
            raise ValueError("obs contains NaN or inf")
        return self._core.actor(o).astype(self._core.dtype)


__all__ = [
    "BACKENDS",
    "FALLBACKS",
    "MODES",
    "SafeFQLShield",
    "SafeFQLVectorShield",
    "check_spaces",
    "resolve_model",
]
