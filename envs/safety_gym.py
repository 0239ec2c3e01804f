"""Safety-Gymnasium on the modern Gymnasium / MuJoCo / NumPy stack (DESIGN.md section 8).

safety-gymnasium 1.0.0 (the only release) was written for gymnasium 0.28 and mujoco 2.3; installed beside
gymnasium 1.x it fails on import. This module fixes that without editing the installed package:

- :func:`apply_compat_patches` applies the fixes. Fixes that must exist *before* ``safety_gymnasium`` is
  imported (module aliases, EnvSpec defaults) are applied at once; fixes to safety_gymnasium's own modules
  are applied by a small import hook right after each of those modules executes (or at once, when they are
  already imported). Every fix is idempotent and only touches the names listed in ``_FIXES``.
- :func:`import_safety_gymnasium` applies the patches and returns the imported module.
- :func:`register_safety_gym_envs` registers every ``Safety*Gymnasium-v*`` id with a *lazy* entry point
  (:func:`make_safety_gym_env`), so ``import safefql`` stays fast and ``gym.make(id)`` imports
  safety_gymnasium on first use. The env made that way reports ``info["cost"]`` and the surrogate margin
  ``info["h"]`` at reset and at every step (:class:`SafetyGymCostInfo`).

Which env ``check_env`` is meaningful on: the 5-tuple env returned by ``gym.make(id)`` (or by
:func:`make_safety_gym_env`). ``env.unwrapped`` is safety_gymnasium's ``Builder``, whose ``step`` returns the
6-tuple ``(obs, reward, cost, terminated, truncated, info)`` and fails Gymnasium's checker by design.
"""

from __future__ import annotations

import contextvars
import copy
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import math
import os
import sys
import types
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec

SAFETY_GYM_KAPPA = 25.0
"""Default surrogate margin for a binary cost: ``h = kappa if cost > 0 else -1`` (FISOR, SafeFQL)."""

SAFETY_GYM_MARGINS = ("surrogate", "hazard_distance")
"""What ``info["h"]`` is: the binary-cost surrogate, or minus the signed distance to the hazards."""

ENTRY_POINT = "safefql.envs.safety_gym:make_safety_gym_env"

# ---------------------------------------------------------------------------------------------------------
# The ids safety_gymnasium 1.0.0 registers for Gymnasium (mirrors safety_gymnasium/__init__.py, so that they
# can be registered without importing it; tests compare this table with the package's own registry).
# ---------------------------------------------------------------------------------------------------------
_ROBOTS = ("Point", "Car", "Doggo", "Racecar", "Ant")
_DEBUG_ROBOTS = ("Point", "Car", "Racecar")
_NAV_TASKS: dict[str, int] = {
    **{f"Button{i}": 1000 for i in range(3)},
    **{f"Push{i}": 1000 for i in range(3)},
    **{f"Goal{i}": 1000 for i in range(3)},
    **{f"Circle{i}": 500 for i in range(3)},
    "Run0": 500,
    **{f"Race{i}": 500 for i in range(3)},
    **{f"FadingEasy{i}": 1000 for i in range(3)},
    **{f"FadingHard{i}": 1000 for i in range(3)},
}
_VELOCITY_TASKS: dict[str, float | None] = {  # name -> reward_threshold
    "HalfCheetah": 4800.0,
    "Hopper": 3800.0,
    "Swimmer": 360.0,
    "Walker2d": None,
    "Ant": 6000.0,
    "Humanoid": None,
}


def _safety_gym_table() -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for task, steps in _NAV_TASKS.items():
        for robot in _ROBOTS:
            variants = ("", "Vision", "Debug") if robot in _DEBUG_ROBOTS else ("", "Vision")
            for variant in variants:
                table[f"Safety{robot}{task}{variant}Gymnasium-v0"] = {"max_episode_steps": steps}
    for version in ("v0", "v1"):
        for name, threshold in _VELOCITY_TASKS.items():
            table[f"Safety{name}VelocityGymnasium-{version}"] = {
                "max_episode_steps": 1000,
                "reward_threshold": threshold,
            }
    return table


SAFETY_GYM_SPECS: dict[str, dict[str, Any]] = _safety_gym_table()
"""Gymnasium id -> registration settings (``max_episode_steps``, ``reward_threshold``)."""
SAFETY_GYM_IDS: tuple[str, ...] = tuple(SAFETY_GYM_SPECS)


# ---------------------------------------------------------------------------------------------------------
# Compatibility patches
# ---------------------------------------------------------------------------------------------------------
_PATCHED_MARK = "_safefql_patched"


class _HashableArray(np.ndarray):
    """An ndarray that Python 3.11 dataclasses accept as a field default (identity hash)."""

    __hash__ = object.__hash__


class _RemovedEnvCompatibility:
    """Stand-in for ``gymnasium.wrappers.compatibility.EnvCompatibility`` (removed in gymnasium 1.0)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError(
            "apply_api_compatibility=True needs gymnasium.wrappers.EnvCompatibility, which gymnasium 1.x "
            "removed; Safety-Gymnasium envs already use the current step API, so leave it off"
        )


def _alias_module(name: str, doc: str, **attrs: Any) -> list[str]:
    if name in sys.modules:
        return []
    module = types.ModuleType(name, doc)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return [f"alias {name}"]


def _patch_gymnasium_aliases() -> list[str]:
    """Fix 1: the gymnasium 0.28 wrapper modules safety_gymnasium imports, as aliases of their 1.x homes."""
    from gymnasium.wrappers import (
        Autoreset,
        NormalizeObservation,
        NormalizeReward,
        PassiveEnvChecker,
        TimeLimit,
    )
    from gymnasium.wrappers.utils import RunningMeanStd

    doc = (
        "Alias made by safefql.envs.safety_gym for safety-gymnasium 1.0.0 (module removed in gymnasium 1.0)."
    )
    applied = _alias_module(
        "gymnasium.wrappers.compatibility", doc, EnvCompatibility=_RemovedEnvCompatibility
    )
    applied += _alias_module("gymnasium.wrappers.autoreset", doc, AutoResetWrapper=Autoreset)
    applied += _alias_module("gymnasium.wrappers.env_checker", doc, PassiveEnvChecker=PassiveEnvChecker)
    applied += _alias_module(
        "gymnasium.wrappers.normalize",
        doc,
        NormalizeObservation=NormalizeObservation,
        NormalizeReward=NormalizeReward,
        RunningMeanStd=RunningMeanStd,
    )
    applied += _alias_module("gymnasium.wrappers.time_limit", doc, TimeLimit=TimeLimit)
    return applied


def _patch_envspec_defaults() -> list[str]:
    """Fix 4a: gymnasium 1.x EnvSpec lost ``apply_api_compatibility`` and ``autoreset``, which
    safety_gymnasium.make reads; class-level defaults (both off) restore the reads without new fields."""
    applied = []
    for attr in ("apply_api_compatibility", "autoreset"):
        if not hasattr(EnvSpec, attr):
            setattr(EnvSpec, attr, False)
            applied.append(f"EnvSpec.{attr}")
    return applied


def _fix_color(module: types.ModuleType) -> list[str]:
    """Fix 2: ``color: np.array = COLOR[...]`` dataclass defaults are rejected by Python 3.11 (an ndarray is
    unhashable, hence treated as mutable); make the colour arrays hashable before the geoms are defined."""
    colors = module.COLOR
    if all(isinstance(v, _HashableArray) for v in colors.values()):
        return []
    for key, value in colors.items():
        colors[key] = np.asarray(value).view(_HashableArray)
    return ["hashable COLOR arrays"]


class _EnvSpecCompatMeta(type):
    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, EnvSpec)


class _EnvSpecCompat(metaclass=_EnvSpecCompatMeta):
    """Builds a gymnasium 1.x EnvSpec, dropping the two arguments it no longer accepts."""

    def __new__(cls, *args: Any, autoreset: Any = None, apply_api_compatibility: Any = None, **kwargs: Any):
        return EnvSpec(*args, **kwargs)


def _fix_registration(module: types.ModuleType) -> list[str]:
    """Fix 4b: safety_gymnasium.make constructs ``EnvSpec(autoreset=..., apply_api_compatibility=...)``."""
    if module.EnvSpec is _EnvSpecCompat:
        return []
    module.EnvSpec = _EnvSpecCompat
    return ["registration.EnvSpec"]


def _offscreen_viewer_class() -> type:
    from gymnasium.envs.mujoco.mujoco_rendering import OffScreenViewer

    class SizedOffScreenViewer(OffScreenViewer):
        """gymnasium 1.x ``OffScreenViewer`` requires width/height; default them to the model's offscreen
        buffer size, which safety_gymnasium's ``render`` sets just before creating the viewer."""

        def __init__(self, model: Any, data: Any, width: int | None = None, height: int | None = None, **kw):
            width = int(model.vis.global_.offwidth) if width is None else width
            height = int(model.vis.global_.offheight) if height is None else height
            super().__init__(model, data, width, height, **kw)

    return SizedOffScreenViewer


def _fix_underlying(module: types.ModuleType) -> list[str]:
    """Fix 6: rendering creates ``OffScreenViewer(model, data)`` without width/height."""
    if getattr(module.OffScreenViewer, _PATCHED_MARK, False):
        return []
    viewer = _offscreen_viewer_class()
    setattr(viewer, _PATCHED_MARK, True)
    module.OffScreenViewer = viewer
    return ["underlying.OffScreenViewer"]


class _ScalarIndexModel:
    """Delegates to an MjModel; ``jnt(i)`` also accepts the 1-element index arrays safety_gymnasium passes."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def jnt(self, key: Any) -> Any:
        if isinstance(key, np.ndarray) and key.size == 1:
            key = int(key.reshape(()))
        return self._model.jnt(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _fix_base_agent(module: types.ModuleType) -> list[str]:
    """Fix 5: ``model.jnt(sensor.objid)`` passes a 1-element array; NumPy deprecated its int() conversion
    (a DeprecationWarning on 2.3, an error from 2.4). Only ``_init_jnt_sensors`` sees the index adapter.

    Also: the action Box is built from float32 bounds with dtype float64, which makes gymnasium 1.x's bound
    check emit a spurious "overflow encountered in cast" RuntimeWarning; build it from float64 bounds
    (same values: MuJoCo ctrlrange limits)."""
    cls = module.BaseAgent
    original = cls._init_jnt_sensors
    if getattr(original, _PATCHED_MARK, False):
        return []

    def _build_action_space(self: Any) -> gym.spaces.Box:
        low, high = np.array(self.engine.model.actuator_ctrlrange, dtype=np.float32).astype(np.float64).T
        return gym.spaces.Box(low=low, high=high, dtype=np.float64)

    def _init_jnt_sensors(self: Any) -> None:
        engine = self.engine
        model = engine.model
        engine.model = _ScalarIndexModel(model)
        try:
            original(self)
        finally:
            engine.model = model

    setattr(_init_jnt_sensors, _PATCHED_MARK, True)
    _init_jnt_sensors.__wrapped__ = original
    cls._init_jnt_sensors = _init_jnt_sensors
    cls._build_action_space = _build_action_space
    return ["BaseAgent._init_jnt_sensors", "BaseAgent._build_action_space"]


# Fix 7 (speed): every reset recompiles the world XML, and ~95% of that time is MuJoCo decoding the six
# "star_hd" skybox PNGs (24 MB); compiling without them takes ~40 ms instead of ~0.5-1 s. The skybox only
# colours rendered pixels, so envs that never render (no render_mode, no vision observations) get a small
# builtin gradient skybox instead: same physics, same observation vectors (tested). The assets.yaml that is
# re-parsed on every reset is also parsed once and copied.
_PLAIN_SKYBOX: contextvars.ContextVar[bool] = contextvars.ContextVar("safefql_plain_skybox", default=False)
_PLAIN_SKYBOX_TEXTURE = {
    "@type": "skybox",
    "@builtin": "gradient",
    "@rgb1": "0.2 0.3 0.4",
    "@rgb2": "0 0 0",
    "@width": "32",
    "@height": "32",
}


class _AssetsYaml:
    """Stands in for ``yaml`` inside ``safety_gymnasium.world``: caches assets.yaml, swaps the skybox."""

    def __init__(self, real_yaml: Any) -> None:
        self._yaml = real_yaml
        self._cache: dict[str, Any] = {}

    def load(self, stream: Any, Loader: Any = None) -> Any:  # noqa: N803 (yaml's own keyword)
        """``yaml.load``; the assets config comes from the cache, with a plain skybox when requested."""
        name = getattr(stream, "name", None)
        if not (isinstance(name, str) and name.endswith(os.path.join("configs", "assets.yaml"))):
            return self._yaml.load(stream, Loader=Loader)
        if name not in self._cache:
            self._cache[name] = self._yaml.load(stream, Loader=Loader)
        config = copy.deepcopy(self._cache[name])
        if _PLAIN_SKYBOX.get():
            config["textures"]["skybox"] = dict(_PLAIN_SKYBOX_TEXTURE)
        return config

    def __getattr__(self, name: str) -> Any:  # FullLoader, ...
        return getattr(self._yaml, name)


def _fix_world(module: types.ModuleType) -> list[str]:
    """Fix 7: see ``_PLAIN_SKYBOX``."""
    if isinstance(module.yaml, _AssetsYaml):
        return []
    module.yaml = _AssetsYaml(module.yaml)
    return ["world.yaml"]


def _gymnasium_robotics_available() -> bool:
    try:
        importlib.import_module("gymnasium_robotics.envs.multiagent_mujoco.mujoco_multi")
    except ImportError:
        return False
    return True


def _multi_agent_stub(module: types.ModuleType) -> None:
    """Fix 3 (fallback): without gymnasium_robotics only the multi-agent tasks are unavailable."""

    def make_ma(*args: Any, **kwargs: Any) -> Any:
        raise ImportError(
            "Safety-Gymnasium's multi-agent tasks need gymnasium-robotics>=1.4 (pip install "
            "'gymnasium-robotics>=1.4'); single-agent tasks work without it"
        )

    module.make_ma = make_ma
    module.SafeMAEnv = None
    module.__doc__ = "safefql stub: gymnasium_robotics is not installed."


# Fixes to safety_gymnasium's own modules, applied right after each module executes.
_FIXES: dict[str, Callable[[types.ModuleType], list[str]]] = {
    "safety_gymnasium.assets.color": _fix_color,
    "safety_gymnasium.utils.registration": _fix_registration,
    "safety_gymnasium.bases.underlying": _fix_underlying,
    "safety_gymnasium.bases.base_agent": _fix_base_agent,
    "safety_gymnasium.world": _fix_world,
}
_MULTI_AGENT = "safety_gymnasium.tasks.safe_multi_agent.safe_mujoco_multi"
_HOOKED = frozenset({"safety_gymnasium", _MULTI_AGENT, *_FIXES})


def _pop_our_specs() -> dict[str, EnvSpec]:
    return {i: gym.registry.pop(i) for i in SAFETY_GYM_IDS if i in gym.registry and _is_ours(gym.registry[i])}


def _is_ours(spec: EnvSpec) -> bool:
    return spec.entry_point == ENTRY_POINT


class _PatchingLoader(importlib.abc.Loader):
    """Runs the real loader, then the module's fix; for the package itself, keeps our registrations."""

    def __init__(self, loader: Any, name: str) -> None:
        self._loader = loader
        self._name = name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        if self._name == _MULTI_AGENT and not _gymnasium_robotics_available():
            _multi_agent_stub(module)
            return
        if self._name != "safety_gymnasium":
            self._loader.exec_module(module)
            if self._name in _FIXES:
                _FIXES[self._name](module)
            return
        _patch_gymnasium_aliases()
        _patch_envspec_defaults()
        # safety_gymnasium registers its own "...Gymnasium-v0" ids; take ours out while it runs (no
        # "Overriding environment" warnings), then put ours back so gym.make keeps the cost/h wrapper.
        ours = _pop_our_specs()
        try:
            self._loader.exec_module(module)
        finally:
            gym.registry.update(ours)

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ...
        return getattr(self._loader, name)


class _SafetyGymFinder(importlib.abc.MetaPathFinder):
    _safefql_safety_gym_hook = True

    def find_spec(
        self, fullname: str, path: Any, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _HOOKED:
            return None
        for finder in sys.meta_path:
            if getattr(finder, "_safefql_safety_gym_hook", False) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _PatchingLoader(spec.loader, fullname)
        return spec


def _install_import_hook() -> list[str]:
    if any(getattr(f, "_safefql_safety_gym_hook", False) for f in sys.meta_path):
        return []
    sys.meta_path.insert(0, _SafetyGymFinder())
    return ["import hook"]


def apply_compat_patches() -> tuple[str, ...]:
    """Apply the DESIGN.md section 8 fixes; idempotent. Returns the names of the fixes applied by this call.

    Gymnasium-side fixes (module aliases, EnvSpec defaults) are applied now; the fixes to safety_gymnasium's
    modules are applied by an import hook as they load, or now if they are already imported. Importing
    safety_gymnasium afterwards (directly or via :func:`import_safety_gymnasium`) then works.
    """
    applied = _install_import_hook()
    applied += _patch_gymnasium_aliases()
    applied += _patch_envspec_defaults()
    for name, fix in _FIXES.items():
        module = sys.modules.get(name)
        if module is not None:
            applied += fix(module)
    return tuple(applied)


def import_safety_gymnasium() -> types.ModuleType:
    """Return the ``safety_gymnasium`` module, imported with the compatibility patches applied."""
    apply_compat_patches()
    if "safety_gymnasium" not in sys.modules and importlib.util.find_spec("safety_gymnasium") is None:
        raise ImportError(
            "safety_gymnasium is not installed; install it without its outdated pins: "
            "`uv sync` (pyproject overrides) or `pip install --no-deps safety-gymnasium==1.0.0 xmltodict "
            "pyyaml imageio`"
        )
    module = importlib.import_module("safety_gymnasium")
    # If it was imported before our hook existed, its Gymnasium ids may have replaced ours.
    register_safety_gym_envs()
    return module


# ---------------------------------------------------------------------------------------------------------
# Wrappers and the lazy entry point
# ---------------------------------------------------------------------------------------------------------
class SafetyToGymnasium(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Turns safety_gymnasium's 6-tuple ``step`` into Gymnasium's 5-tuple, with ``info["cost"]`` (float).

    Actions are passed on as ndarrays (the Builder calls ``np.array(action, copy=False)``, which NumPy 2
    refuses for lists and other array types). ``plain_skybox=True`` rebuilds the world at reset with a
    builtin skybox instead of the 24 MB of skybox PNGs (about 10x faster resets); use it only for envs that
    never render pixels (:func:`make_safety_gym_env` decides).
    """

    def __init__(self, env: gym.Env, plain_skybox: bool = False) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, plain_skybox=bool(plain_skybox))
        gym.Wrapper.__init__(self, env)
        self.plain_skybox = bool(plain_skybox)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Reset; with a seed also seed ``unwrapped.np_random`` (the Builder never calls ``Env.reset``)."""
        if seed is not None:
            gym.Env.reset(self.env.unwrapped, seed=seed)
        token = _PLAIN_SKYBOX.set(self.plain_skybox)
        try:
            return self.env.reset(seed=seed, options=options)
        finally:
            _PLAIN_SKYBOX.reset(token)

    def step(self, action: Any):
        """Step the 6-tuple env; its cost moves into ``info["cost"]``."""
        obs, reward, cost, terminated, truncated, info = self.env.step(np.asarray(action))
        info = dict(info)
        info["cost"] = float(cost)
        return obs, float(reward), bool(terminated), bool(truncated), info


class SafetyGymCostInfo(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Adds ``info["cost"]`` and a safety margin ``info["h"]`` at reset and at every step.

    ``margin="surrogate"`` (the default, DESIGN.md section 1): ``h = kappa if cost > 0 else -1.0``.
    ``margin="hazard_distance"``: ``h = max_i (r_i - d_i)``, with ``d_i`` the planar distance from the agent
    to hazard ``i`` and ``r_i`` its radius, i.e. minus the signed distance to the union of the hazard disks
    (:func:`hazard_distance_margin`). It is exact only where the hazards are the task's only constrained
    objects (the ``Goal1`` tasks), so other tasks are refused; ``h > 0`` exactly when the agent is inside a
    hazard, which is when Safety-Gymnasium charges the hazard cost.

    The info dict has the same keys and types at reset and step (Minari needs that): ``cost`` (float),
    ``h`` (float), ``goal_met`` (bool, from the inner step info, False when absent). Other inner info keys
    are dropped because they vary from step to step. The wrapped env must report a step-time
    ``info["cost"]``; the reset cost is the reset info's ``cost`` if present, else Safety-Gymnasium's own
    reset cost (``unwrapped.cost["cost_sum"]``), else 0.0.
    """

    def __init__(self, env: gym.Env, kappa: float = SAFETY_GYM_KAPPA, margin: str = "surrogate") -> None:
        kappa = float(kappa)
        if not math.isfinite(kappa) or kappa <= 0.0:
            raise ValueError(
                f"kappa must be a finite positive float (h = kappa inside the failure set), got {kappa}"
            )
        if margin not in SAFETY_GYM_MARGINS:
            raise ValueError(f"margin must be one of {SAFETY_GYM_MARGINS}, got {margin!r}")
        gym.utils.RecordConstructorArgs.__init__(self, kappa=kappa, margin=margin)
        gym.Wrapper.__init__(self, env)
        self.kappa = kappa
        self.margin = margin
        if margin == "hazard_distance":
            check_hazard_distance_task(env.unwrapped)

    def _info(self, cost: float, goal_met: bool) -> dict[str, Any]:
        if self.margin == "hazard_distance":
            h = hazard_distance_margin(self.env.unwrapped)
        else:
            h = self.kappa if cost > 0.0 else -1.0
        return {"cost": cost, "h": h, "goal_met": goal_met}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Reset; the info carries the initial state's cost and margin."""
        obs, info = self.env.reset(seed=seed, options=options)
        if "cost" in info:
            cost = float(info["cost"])
        else:
            inner = getattr(self.env.unwrapped, "cost", None)
            cost = float(inner.get("cost_sum", 0.0)) if isinstance(inner, dict) else 0.0
        return obs, self._info(cost, False)

    def step(self, action: Any):
        """Step; the info carries the new state's cost and margin."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        if "cost" not in info:
            raise ValueError(
                f"SafetyGymCostInfo needs info['cost'] from every step of {self.env}, but the step info "
                f"has keys {sorted(info)}; wrap a Safety-Gymnasium env (gym.make('Safety...Gymnasium-v0'))"
            )
        new_info = self._info(float(info["cost"]), bool(info.get("goal_met", False)))
        return obs, reward, terminated, truncated, new_info


def _task_objects(builder: Any) -> dict[str, Any]:
    task = getattr(builder, "task", None)
    if task is None:
        raise ValueError(
            f"margin 'hazard_distance' needs a Safety-Gymnasium navigation env (env.unwrapped.task), got "
            f"{type(builder).__name__}"
        )
    objects: dict[str, Any] = {}
    for group in ("_geoms", "_free_geoms", "_mocaps"):
        objects.update(getattr(task, group, None) or {})
    return objects


def check_hazard_distance_task(builder: Any) -> None:
    """Raise unless the task's only constrained objects are hazards (then the hazard margin is exact)."""
    constrained = sorted(name for name, obj in _task_objects(builder).items() if obj.is_constrained)
    if constrained != ["hazards"]:
        task = type(builder.task).__name__
        raise ValueError(
            f"margin 'hazard_distance' is exact only when the hazards are the task's only constrained "
            f"objects; {task} constrains {constrained or 'nothing'}. Use margin='surrogate' for this task"
        )


def hazard_distance_margin(builder: Any) -> float:
    """``max_i (r_i - d_i)`` over the hazards of a Safety-Gymnasium ``Builder``'s current state.

    Positive inside a hazard, and minus the planar distance to the nearest hazard disk outside.
    """
    task = builder.task
    hazards = _task_objects(builder)["hazards"]
    agent_xy = np.asarray(task.agent.pos, dtype=np.float64)[:2]
    centres = np.asarray(hazards.pos, dtype=np.float64).reshape(-1, 3)[:, :2]
    return float(np.max(float(hazards.size) - np.linalg.norm(centres - agent_xy, axis=1)))


def make_safety_gym_env(
    env_id: str,
    kappa: float = SAFETY_GYM_KAPPA,
    fast_reset: bool = True,
    margin: str = "surrogate",
    **kwargs: Any,
) -> gym.Env:
    """Entry point of the registered ``Safety*Gymnasium-v*`` ids: a 5-tuple env with cost/h infos.

    ``kappa`` and ``margin`` choose ``info["h"]`` (:class:`SafetyGymCostInfo`).

    ``kwargs`` go to the Safety-Gymnasium constructor (``render_mode``, ``width``, ``height``,
    ``camera_name``, ...). ``fast_reset`` swaps the skybox images for a builtin one when the env can never
    render pixels (no ``render_mode``, no vision observations); physics and observations are unchanged.
    Called through ``gym.make(env_id)``, Gymnasium adds the time limit, the passive checker and the order
    enforcing, and sets ``env.spec.id = env_id``.
    """
    name, dash, version = env_id.partition("-")
    if env_id not in SAFETY_GYM_SPECS or not dash:
        raise ValueError(
            f"unknown Safety-Gymnasium id {env_id!r}; see safefql.envs.safety_gym.SAFETY_GYM_IDS"
        )
    import_safety_gymnasium()
    safe_spec = gym.registry[f"{name[: -len('Gymnasium')]}-{version}"]
    creator = gym.envs.registration.load_env_creator(safe_spec.entry_point)
    env = creator(**{**copy.deepcopy(safe_spec.kwargs), **kwargs})
    renders = kwargs.get("render_mode") is not None or getattr(
        getattr(env, "task", None), "observe_vision", False
    )
    return SafetyGymCostInfo(
        SafetyToGymnasium(env, plain_skybox=bool(fast_reset) and not renders), kappa=kappa, margin=margin
    )


def register_safety_gym_envs() -> tuple[str, ...]:
    """Register every ``Safety*Gymnasium-v*`` id lazily (no safety_gymnasium import); idempotent.

    Also installs the import hook, so a later ``import safety_gymnasium`` is patched and neither warns about
    duplicate ids nor replaces these registrations. Returns the ids (re)registered by this call.
    """
    _install_import_hook()
    registered = []
    for env_id, settings in SAFETY_GYM_SPECS.items():
        current = gym.registry.get(env_id)
        if current is not None and _is_ours(current):
            continue
        # Direct assignment: replacing safety_gymnasium's own spec for this id is intended, not a clash.
        gym.registry[env_id] = EnvSpec(
            id=env_id, entry_point=ENTRY_POINT, kwargs={"env_id": env_id}, **settings
        )
        registered.append(env_id)
    return tuple(registered)


__all__ = [
    "ENTRY_POINT",
    "SAFETY_GYM_IDS",
    "SAFETY_GYM_KAPPA",
    "SAFETY_GYM_MARGINS",
    "SAFETY_GYM_SPECS",
    "SafetyGymCostInfo",
    "SafetyToGymnasium",
    "apply_compat_patches",
    "check_hazard_distance_task",
    "hazard_distance_margin",
    "import_safety_gymnasium",
    "make_safety_gym_env",
    "register_safety_gym_envs",
]
