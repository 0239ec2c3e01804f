"""BoatNav-v0: the boat-navigation problem of the SafeFQL paper (DESIGN.md section 6).

A boat at p = (x, y) in the box [-3, 2] x [-2, 2] crosses a river that flows along +x. The action
a in [-1, 1]^2 is first clipped to [-1, 1]^2, then normalised to a thrust direction u = a / ||a||
(unit speed; u = 0 when ||a|| = 0)::

    dx/dt = u1 + 2 - 0.5 y^2        dy/dt = u2

integrated by forward Euler with DT = 0.005 (400 steps = 2 s per episode), the state clipped to the box
after every step. Two rocks (circles ``OBSTACLES`` = [cx, cy, r]) form the failure set; the margin
h(p) = max_i (r_i - ||p - c_i||) is positive inside a rock. Reward -||p - GOAL|| of the pre-step state.

The NumPy functions below (``margin``, ``velocity``, ``step_state``, ``reward``) are batched over leading
axes and are the reference equations. ``BoatNavEnv`` carries the scene as an MJCF model and lets MuJoCo
integrate the state (slide joints x, y; Euler integrator; no gravity, contacts or damping); its
transitions equal ``step_state`` to float precision. ``BoatNavVectorEnv`` steps many boats with the NumPy
equations in one call, for fast dataset generation.
"""

from __future__ import annotations

import ctypes.util
import math
import os
import sys
from typing import Any


def _default_headless_gl() -> None:
    """On Linux without a display, default MUJOCO_GL to "egl" when libEGL is present.

    MuJoCo's default backend (glfw) cannot render without a display; EGL can. This only sets a default
    (an explicit MUJOCO_GL wins) and only takes effect if mujoco has not been imported yet.
    """
    if "MUJOCO_GL" in os.environ or not sys.platform.startswith("linux"):
        return
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or "mujoco" in sys.modules:
        return
    if ctypes.util.find_library("EGL"):
        os.environ["MUJOCO_GL"] = "egl"


_default_headless_gl()

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium.vector.utils import batch_space  # noqa: E402

BOX_LOW = np.array([-3.0, -2.0])
BOX_HIGH = np.array([2.0, 2.0])
OBSTACLES = np.array([[-0.5, 0.5, 0.4], [-1.0, -1.2, 0.5]])  # rows: (cx, cy, r)
GOAL = np.array([1.5, 0.0])
DT = 0.005
EPISODE_STEPS = 400
CURRENT_SPEED = 2.0  # current along +x at y = 0
CURRENT_CURVATURE = 0.5  # current(y) = CURRENT_SPEED - CURRENT_CURVATURE * y^2
START_MODES = ("uniform", "safe")

for _arr in (BOX_LOW, BOX_HIGH, OBSTACLES, GOAL):
    _arr.setflags(write=False)

# Plain-float copies for the scalar hot path.
_XLO, _YLO = float(BOX_LOW[0]), float(BOX_LOW[1])
_XHI, _YHI = float(BOX_HIGH[0]), float(BOX_HIGH[1])
_OBS = tuple((float(cx), float(cy), float(r)) for cx, cy, r in OBSTACLES)
_GX, _GY = float(GOAL[0]), float(GOAL[1])


def _as_points(p: Any, name: str = "p") -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.ndim == 0 or p.shape[-1] != 2:
        raise ValueError(f"{name} must have shape (..., 2), got {p.shape}")
    return p


def current(y: Any) -> np.ndarray:
    """River current speed along +x at height ``y``: ``2 - 0.5 y^2`` (batched)."""
    y = np.asarray(y, dtype=np.float64)
    return CURRENT_SPEED - CURRENT_CURVATURE * (y * y)


def margin(p: Any) -> np.ndarray:
    """Safety margin h(p) = max_i (r_i - ||p - c_i||), > 0 inside a rock. ``p``: (..., 2) -> (...)."""
    p = _as_points(p)
    dx = p[..., 0, None] - OBSTACLES[:, 0]
    dy = p[..., 1, None] - OBSTACLES[:, 1]
    return np.max(OBSTACLES[:, 2] - np.sqrt(dx * dx + dy * dy), axis=-1)


def thrust_direction(a: Any) -> np.ndarray:
    """Unit thrust direction of action ``a`` (..., 2): clip to [-1, 1], then a/||a|| (0 if ||a|| = 0)."""
    a = np.clip(_as_points(a, "a"), -1.0, 1.0)
    n = np.sqrt(a[..., 0] * a[..., 0] + a[..., 1] * a[..., 1])[..., None]
    return np.divide(a, n, out=np.zeros_like(a), where=n > 0.0)


def velocity(p: Any, a: Any) -> np.ndarray:
    """dp/dt = (u1 + 2 - 0.5 y^2, u2) with u = ``thrust_direction(a)``; batched, (..., 2)."""
    p = _as_points(p)
    u = thrust_direction(a)
    y = p[..., 1]
    return np.stack(
        np.broadcast_arrays(u[..., 0] + CURRENT_SPEED - CURRENT_CURVATURE * (y * y), u[..., 1]), -1
    )


def step_state(p: Any, a: Any) -> np.ndarray:
    """One forward-Euler step of length ``DT``, then clip to the box. (..., 2) -> (..., 2)."""
    p = _as_points(p)
    return np.clip(p + DT * velocity(p, a), BOX_LOW, BOX_HIGH)


def reward(p: Any) -> np.ndarray:
    """Reward -||p - GOAL|| (of the pre-step state). (..., 2) -> (...)."""
    d = _as_points(p) - GOAL
    return -np.sqrt(d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1])


def in_box(p: Any) -> np.ndarray:
    """True where ``p`` (..., 2) lies in the closed box [BOX_LOW, BOX_HIGH]."""
    p = _as_points(p)
    return np.all((p >= BOX_LOW) & (p <= BOX_HIGH), axis=-1)


def _margin_scalar(x: float, y: float) -> float:
    h = -math.inf
    for cx, cy, r in _OBS:
        dx = x - cx
        dy = y - cy
        v = r - math.sqrt(dx * dx + dy * dy)
        if v > h:
            h = v
    return h


# --------------------------------------------------------------------------------------------------
# Scene (MJCF), shared with the second-order boat.

RENDER_WIDTH = 480
RENDER_HEIGHT = 384


def scene_xml(boat_body: str, *, timestep: float, extra: str = "") -> str:
    """MJCF of the river scene (water, banks, rocks, goal, current marks) plus ``boat_body``.

    ``boat_body`` is the ``<body>`` element of the boat; ``extra`` is appended inside ``<mujoco>``
    (actuators, ...). Nothing collides: every geom has contype = conaffinity = 0 and contacts are off.
    """
    cx, cy = (BOX_LOW + BOX_HIGH) / 2
    hx, hy = (BOX_HIGH - BOX_LOW) / 2
    rocks = "\n".join(
        f'    <geom name="rock{i}" type="cylinder" size="{r} 0.15" pos="{x} {y} 0.15" material="rock"/>'
        for i, (x, y, r) in enumerate(OBSTACLES)
    )
    marks = []
    for j, y in enumerate(np.linspace(BOX_LOW[1] + 0.3, BOX_HIGH[1] - 0.3, 7)):
        length = 0.12 * float(current(y))
        for k, x in enumerate(np.linspace(BOX_LOW[0] + 0.4, BOX_HIGH[0] - 0.4, 5)):
            marks.append(
                f'    <geom name="current{j}_{k}" type="box" size="{length:.4f} 0.008 0.001" '
                f'pos="{x:.4f} {y:.4f} 0.002" material="current"/>'
            )
    marks_xml = "\n".join(marks)
    return f"""<mujoco model="boatnav">
  <compiler angle="radian"/>
  <option timestep="{timestep!r}" integrator="Euler" gravity="0 0 0">
    <flag contact="disable"/>
  </option>
  <visual>
    <global offwidth="1280" offheight="1024"/>
    <headlight ambient="0.25 0.25 0.25" diffuse="0.35 0.35 0.35" specular="0 0 0"/>
  </visual>
  <default>
    <geom contype="0" conaffinity="0"/>
  </default>
  <asset>
    <material name="water" rgba="0.2 0.4 0.7 1" specular="0"/>
    <material name="bank" rgba="0.35 0.6 0.3 1"/>
    <material name="rock" rgba="0.45 0.42 0.4 1"/>
    <material name="goal" rgba="0.2 0.85 0.3 0.8"/>
    <material name="current" rgba="0.75 0.85 1 0.5"/>
    <material name="hull" rgba="0.95 0.55 0.1 1"/>
  </asset>
  <worldbody>
    <light pos="{cx} {cy} 5" dir="0 0 -1" directional="true" diffuse="0.4 0.4 0.4" specular="0.1 0.1 0.1"/>
    <camera name="top" pos="{cx} {cy} 6.2" xyaxes="1 0 0 0 1 0" fovy="40"/>
    <geom name="water" type="plane" size="{hx} {hy} 0.1" pos="{cx} {cy} 0" material="water"/>
    <geom name="bank_south" type="box" size="{hx + 0.3} 0.15 0.05" pos="{cx} {BOX_LOW[1] - 0.15} 0.05"
          material="bank"/>
    <geom name="bank_north" type="box" size="{hx + 0.3} 0.15 0.05" pos="{cx} {BOX_HIGH[1] + 0.15} 0.05"
          material="bank"/>
{rocks}
    <geom name="goal" type="cylinder" size="0.1 0.005" pos="{GOAL[0]} {GOAL[1]} 0.005" material="goal"/>
{marks_xml}
{boat_body}
  </worldbody>
{extra}
</mujoco>
"""


_BOAT_BODY = """    <body name="boat" pos="0 0 0.05">
      <joint name="x" type="slide" axis="1 0 0"/>
      <joint name="y" type="slide" axis="0 1 0"/>
      <geom name="hull" type="ellipsoid" size="0.12 0.06 0.04" mass="1" material="hull"/>
    </body>"""


def boat_xml() -> str:
    """MJCF of BoatNav-v0: the scene plus a point boat on slide joints x and y."""
    return scene_xml(_BOAT_BODY, timestep=DT)


# --------------------------------------------------------------------------------------------------
# Reset options, shared by the single, vector and second-order envs.


def parse_reset_options(
    options: dict[str, Any] | None, state_lengths: tuple[int, ...] = (2,)
) -> tuple[str, Any]:
    """Validate reset ``options``: returns ``("state", array)``, ``("start", mode)`` or ``("default", None)``.

    Accepted: ``{"state": (x, y)}`` (finite, inside the box; ``state_lengths`` lists the accepted lengths,
    the first two entries are always x, y) or ``{"start": "uniform" | "safe"}``. Anything else is a
    ValueError naming the problem.
    """
    if options is None:
        return "default", None
    if not isinstance(options, dict):
        raise ValueError(f"options must be a dict or None, got {type(options).__name__}")
    unknown = set(options) - {"state", "start"}
    if unknown:
        raise ValueError(f"unknown reset option(s) {sorted(unknown)}; expected 'state' or 'start'")
    if "state" in options and "start" in options:
        raise ValueError("reset options 'state' and 'start' are mutually exclusive")
    if "start" in options:
        mode = options["start"]
        if mode not in START_MODES:
            raise ValueError(f"options['start'] must be one of {START_MODES}, got {mode!r}")
        return "start", mode
    if "state" in options:
        try:
            state = np.array(options["state"], dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"options['state'] must be numeric, got {options['state']!r}") from e
        if state.ndim != 1 or state.shape[0] not in state_lengths:
            raise ValueError(f"options['state'] must have length in {state_lengths}, got shape {state.shape}")
        if not np.all(np.isfinite(state)):
            raise ValueError(f"options['state'] contains NaN or inf: {state.tolist()}")
        if not in_box(state[:2]):
            raise ValueError(
                f"options['state'] position {state[:2].tolist()} is outside the box "
                f"[{BOX_LOW.tolist()}, {BOX_HIGH.tolist()}]"
            )
        return "state", state
    return "default", None


def _check_start(start: str) -> str:
    if start not in START_MODES:
        raise ValueError(f"start must be one of {START_MODES}, got {start!r}")
    return start


def sample_start(rng: np.random.Generator, mode: str) -> np.ndarray:
    """A start position (2,): uniform over the box, or ("safe") uniform over the oracle's safe set.

    "safe" is rejection sampling with ``rng`` against ``load_boat_oracle().value(p) <= -SAFE_START_MARGIN``.
    """
    if mode == "uniform":
        return rng.uniform(BOX_LOW, BOX_HIGH)
    if mode != "safe":
        raise ValueError(f"start mode must be one of {START_MODES}, got {mode!r}")
    from safefql.envs.oracle import SAFE_START_MARGIN, load_boat_oracle

    oracle = load_boat_oracle()
    for _ in range(100_000):
        p = rng.uniform(BOX_LOW, BOX_HIGH)
        if oracle.value(p) <= -SAFE_START_MARGIN:
            return p
    raise RuntimeError("could not sample a safe start in 100000 tries")  # the safe set is ~90% of the box


def _render_error(e: Exception) -> RuntimeError:
    return RuntimeError(
        f"MuJoCo offscreen rendering failed ({type(e).__name__}: {e}). On a headless machine set "
        "MUJOCO_GL=egl (or osmesa) before mujoco is imported."
    )


# --------------------------------------------------------------------------------------------------
# Environments.


class BoatNavEnv(gym.Env):
    """The paper's boat, integrated by MuJoCo. Observation (x, y) float64; action in [-1, 1]^2 float32.

    Out-of-range actions are clipped to [-1, 1]^2 (then normalised to unit thrust); NaN/inf or a shape
    other than (2,) raises ValueError. ``terminated`` is always False; ``truncated`` becomes True after
    ``EPISODE_STEPS`` = 400 steps, also without the TimeLimit wrapper. ``info = {"cost": float(h > 0),
    "h": h}`` describes the returned observation.

    Args:
        render_mode: None or "rgb_array" (top-down camera, lazily created ``mujoco.Renderer``).
        start: reset distribution when ``reset`` gets no option: "uniform" over the box or "safe"
            (oracle safe set, see ``sample_start``).
        width, height: rendered image size (at most 1280 x 1024).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": int(round(1 / DT))}

    def __init__(
        self,
        render_mode: str | None = None,
        start: str = "uniform",
        width: int = RENDER_WIDTH,
        height: int = RENDER_HEIGHT,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}"
            )
        if not (0 < int(width) <= 1280 and 0 < int(height) <= 1024):
            raise ValueError(f"render size must be within 1280 x 1024, got {width} x {height}")
        self.render_mode = render_mode
        self.start = _check_start(start)
        self.width, self.height = int(width), int(height)
        self.observation_space = gym.spaces.Box(BOX_LOW.copy(), BOX_HIGH.copy(), dtype=np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.model = mujoco.MjModel.from_xml_string(boat_xml())
        self.data = mujoco.MjData(self.model)
        self._qpos = self.data.qpos  # views into MjData, kept to avoid attribute lookups in step
        self._qvel = self.data.qvel
        self._renderer: mujoco.Renderer | None = None
        self._x = self._y = 0.0
        self._t = -1  # -1: reset not called yet

    def _set_state(self, x: float, y: float) -> None:
        self._x, self._y = x, y
        self._qpos[0] = x
        self._qpos[1] = y
        self._qvel[:] = 0.0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Reset to ``options["state"]`` or to a start drawn by ``options["start"]`` (default: ``start``)."""
        super().reset(seed=seed)
        kind, value = parse_reset_options(options)
        p = (
            value
            if kind == "state"
            else sample_start(self.np_random, value if kind == "start" else self.start)
        )
        self._set_state(float(p[0]), float(p[1]))
        self._t = 0
        h = _margin_scalar(self._x, self._y)
        return np.array((self._x, self._y)), {"cost": 1.0 if h > 0.0 else 0.0, "h": h}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, float]]:
        """Advance DT: qvel = the boat's velocity, ``mj_step`` (qpos += DT * qvel), clip to the box."""
        if self._t < 0:
            raise gym.error.ResetNeeded("call reset() before step()")
        a = np.asarray(action)
        if a.shape != (2,):
            raise ValueError(f"action must have shape (2,), got {a.shape}")
        a0, a1 = a.tolist()
        a0, a1 = float(a0), float(a1)
        if not (math.isfinite(a0) and math.isfinite(a1)):
            raise ValueError(f"action contains NaN or inf: {[a0, a1]}")
        a0 = -1.0 if a0 < -1.0 else (1.0 if a0 > 1.0 else a0)
        a1 = -1.0 if a1 < -1.0 else (1.0 if a1 > 1.0 else a1)
        n = math.sqrt(a0 * a0 + a1 * a1)
        if n > 0.0:
            u0, u1 = a0 / n, a1 / n
        else:
            u0 = u1 = 0.0
        x, y = self._x, self._y
        dx, dy = x - _GX, y - _GY
        rew = -math.sqrt(dx * dx + dy * dy)
        qpos, qvel = self._qpos, self._qvel
        qvel[0] = u0 + CURRENT_SPEED - CURRENT_CURVATURE * (y * y)
        qvel[1] = u1
        mujoco.mj_step(self.model, self.data)
        x, y = qpos.tolist()
        x = _XLO if x < _XLO else (_XHI if x > _XHI else x)
        y = _YLO if y < _YLO else (_YHI if y > _YHI else y)
        qpos[0] = x
        qpos[1] = y
        self._x, self._y = x, y
        self._t += 1
        h = _margin_scalar(x, y)
        return (
            np.array((x, y)),
            rew,
            False,
            self._t >= EPISODE_STEPS,
            {"cost": 1.0 if h > 0.0 else 0.0, "h": h},
        )

    @property
    def state(self) -> np.ndarray:
        """Current (x, y) (a copy)."""
        return np.array((self._x, self._y))

    def render(self) -> np.ndarray | None:
        """An (height, width, 3) uint8 top-down image in "rgb_array" mode; None (with a warning) otherwise."""
        if self.render_mode is None:
            gym.logger.warn(
                "render() called without render_mode; pass render_mode='rgb_array' to the constructor"
            )
            return None
        if self._renderer is None:
            try:
                self._renderer = mujoco.Renderer(self.model, self.height, self.width)
            except Exception as e:  # the GL backend raises assorted types
                raise _render_error(e) from e
        mujoco.mj_forward(self.model, self.data)  # positions of geoms and the camera
        self._renderer.update_scene(self.data, camera="top")
        return self._renderer.render()

    def close(self) -> None:
        """Free the renderer (if one was created)."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        super().close()


class BoatNavVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` BoatNav-v0 boats stepped together with the NumPy equations (no MuJoCo): for datasets.

    Semantics equal a ``gym.vector.SyncVectorEnv`` of ``BoatNavEnv`` (next-step autoreset): after a
    boat's episode truncates (400 steps), its next ``step`` ignores the action and resets it, returning
    the start state with reward 0. Infos are arrays ``{"cost", "h"}`` with gymnasium's ``"_cost"``/``"_h"``
    masks. ``reset(seed=s)`` seeds boat i with ``s + i`` (as SyncVectorEnv does); each boat keeps its own
    Generator, so the draws equal those of the single envs. Autoresets draw from the constructor's ``start``.
    """

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, num_envs: int, start: str = "uniform") -> None:
        if int(num_envs) != num_envs or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs}")
        self.num_envs = int(num_envs)
        self.start = _check_start(start)
        self.render_mode = None
        self.single_observation_space = gym.spaces.Box(BOX_LOW.copy(), BOX_HIGH.copy(), dtype=np.float64)
        self.single_action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._rngs: list[np.random.Generator | None] = [None] * self.num_envs
        self._state = np.zeros((self.num_envs, 2))
        self._t = np.zeros(self.num_envs, dtype=np.int64)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)
        self._ones = np.ones(self.num_envs, dtype=bool)
        self._ready = False

    def _rng(self, i: int) -> np.random.Generator:
        if self._rngs[i] is None:
            self._rngs[i], _ = gym.utils.seeding.np_random()
        return self._rngs[i]

    def _infos(self, h: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "cost": (h > 0.0).astype(np.float64),
            "_cost": self._ones.copy(),
            "h": h,
            "_h": self._ones.copy(),
        }

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Reset every boat. ``options``: ``{"state": (2,) or (num_envs, 2)}`` or ``{"start": mode}``."""
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, int | np.integer):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"seed list must have length num_envs={self.num_envs}, got {len(seeds)}")
        for i, s in enumerate(seeds):
            if s is not None:
                self._rngs[i], _ = gym.utils.seeding.np_random(s)
        if options is not None and "state" in options:
            states = np.asarray(options["state"], dtype=np.float64)
            if states.ndim == 2:
                if states.shape != (self.num_envs, 2):
                    raise ValueError(
                        f"options['state'] must have shape (2,) or ({self.num_envs}, 2), got {states.shape}"
                    )
                rows = [parse_reset_options({**options, "state": row})[1] for row in states]
            else:
                rows = [parse_reset_options(options)[1]] * self.num_envs
            self._state = np.array(rows, dtype=np.float64).reshape(self.num_envs, 2)
        else:
            kind, mode = parse_reset_options(options)
            mode = mode if kind == "start" else self.start
            self._state = np.array([sample_start(self._rng(i), mode) for i in range(self.num_envs)])
        self._t[:] = 0
        self._autoreset[:] = False
        self._ready = True
        return self._state.copy(), self._infos(margin(self._state))

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Step every boat (``actions`` (num_envs, 2)); boats whose episode ended are reset instead."""
        if not self._ready:
            raise gym.error.ResetNeeded("call reset() before step()")
        a = np.asarray(actions, dtype=np.float64)
        if a.shape != (self.num_envs, 2):
            raise ValueError(f"actions must have shape ({self.num_envs}, 2), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError("actions contain NaN or inf")
        rewards = reward(self._state)
        state = step_state(self._state, a)
        self._t += 1
        truncated = self._t >= EPISODE_STEPS
        if self._autoreset.any():
            idx = np.flatnonzero(self._autoreset)
            for i in idx:
                state[i] = sample_start(self._rng(i), self.start)
            rewards[idx] = 0.0
            truncated[idx] = False
            self._t[idx] = 0
        self._state = state
        self._autoreset = truncated.copy()
        return (
            state.copy(),
            rewards,
            np.zeros(self.num_envs, dtype=bool),
            truncated,
            self._infos(margin(state)),
        )


# --------------------------------------------------------------------------------------------------
# Plotting.


def plot_scene(ax: Any, *, currents: bool = True, goal: bool = True) -> None:
    """Draw the box, the rocks (circles), the goal and (lightly) the current field on a matplotlib ``ax``."""
    from matplotlib.patches import Circle, Rectangle

    ax.add_patch(
        Rectangle(tuple(BOX_LOW), *(BOX_HIGH - BOX_LOW), fill=False, edgecolor="0.3", linewidth=1.0, zorder=1)
    )
    for i, (cx, cy, r) in enumerate(OBSTACLES):
        ax.add_patch(
            Circle(
                (cx, cy),
                r,
                facecolor="0.55",
                edgecolor="0.2",
                alpha=0.9,
                zorder=3,
                label="rock" if i == 0 else None,
            )
        )
    if goal:
        ax.plot(*GOAL, marker="*", markersize=14, color="tab:green", zorder=4, linestyle="none", label="goal")
    if currents:
        gx, gy = np.meshgrid(np.linspace(-2.75, 1.75, 10), np.linspace(-1.8, 1.8, 9))
        ax.quiver(gx, gy, current(gy), np.zeros_like(gy), color="tab:blue", alpha=0.25, zorder=2, width=0.003)
    ax.set_xlim(BOX_LOW[0] - 0.05, BOX_HIGH[0] + 0.05)
    ax.set_ylim(BOX_LOW[1] - 0.05, BOX_HIGH[1] + 0.05)
    ax.set_aspect("equal")


__all__ = [
    "BOX_HIGH",
    "BOX_LOW",
    "CURRENT_CURVATURE",
    "CURRENT_SPEED",
    "DT",
    "EPISODE_STEPS",
    "GOAL",
    "OBSTACLES",
    "BoatNavEnv",
    "BoatNavVectorEnv",
    "boat_xml",
    "current",
    "in_box",
    "margin",
    "parse_reset_options",
    "plot_scene",
    "reward",
    "sample_start",
    "scene_xml",
    "step_state",
    "thrust_direction",
    "velocity",
]
