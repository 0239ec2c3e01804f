"""BoatNavDynamic-v0: a second-order boat (hull with mass and yaw inertia) in the BoatNav river scene.

Same box [-3, 2] x [-2, 2], rocks, goal and river current c(y) = 2 - 0.5 y^2 along +x as BoatNav-v0
(``safefql.envs.boat``), but the boat is a rigid planar hull: MuJoCo body with joints slide x, slide y
and hinge yaw psi; mass ``MASS``, yaw inertia ``YAW_INERTIA`` (about the centre of mass, which is the
joint origin, so the mass matrix is diag(m, m, I_z)).

Actuators (MuJoCo motors, action a in [-1, 1]^2, clipped):
  * surge thrust  F = THRUST_GAIN * a0, along the hull's axis (site transmission),
  * yaw torque    T = TORQUE_GAIN * a1.
Hydrodynamic drag acts on the velocity RELATIVE to the water. With psi the heading and the world
velocity (xdot, ydot), the body-frame relative velocity is
  u_r =  cos(psi) (xdot - c(y)) + sin(psi) ydot        (surge)
  v_r = -sin(psi) (xdot - c(y)) + cos(psi) ydot        (sway)
and the drag (body frame, then rotated to the world and written to ``qfrc_applied`` before every MuJoCo
substep) is
  X = -(SURGE_DRAG[0] u_r + SURGE_DRAG[1] |u_r| u_r)
  Y = -(SWAY_DRAG[0] v_r + SWAY_DRAG[1] |v_r| v_r)       (4x the surge drag: a hull resists sideways)
  N = -(YAW_DRAG[0] r + YAW_DRAG[1] |r| r)                (r = yaw rate)
So with zero action the boat relaxes to drifting with the current, and full thrust gives a surge speed
through the water of sqrt(1 + THRUST_GAIN) - 1 = 1.449 (drag = thrust). MuJoCo integrates (Euler,
timestep ``SUBSTEP_DT`` = 0.001 s); one control step spans ``N_SUBSTEPS`` = 5 substeps, so DT = 0.005 s
and an episode (400 steps) lasts 2 s, as in BoatNav-v0. The box is a wall: a coordinate that leaves it is
clipped back and its outward velocity set to 0 (after every substep).

Observation (float64, 7): x, y, sin(psi), cos(psi), u, v, r with (u, v) the body-frame velocity over
ground (surge, sway) and r the yaw rate. Failure set: the rocks and the river banks,
  h = max(rock margin(x, y), |y| - Y_BANK),  Y_BANK = 1.9,
h > 0 is failure; ``info = {"cost": float(h > 0), "h": h}``. Reward -||p - GOAL|| of the pre-step state.
``terminated`` is always False; ``truncated`` after 400 steps.

Reset: ``options={"state": s}`` with s = (x, y) [heading 0, drifting with the current], (x, y, psi)
[drifting], or (x, y, psi, xdot, ydot, r) [world-frame velocities]; ``{"start": "uniform"}``: position
uniform over the box, heading uniform in [-pi, pi), drifting; ``{"start": "safe"}``: position from
BoatNav-v0's HJ safe set (see ``safefql.envs.oracle``) at least ``SAFE_BANK_MARGIN`` inside the banks,
heading 0 (downstream), drifting. The kinematic boat's safe set is only a heuristic for this boat: it can
turn and thrust but not change direction instantly, so no HJ guarantee is claimed here.
"""

from __future__ import annotations

import math
from typing import Any

from safefql.envs import boat  # first: it picks MuJoCo's headless GL backend before mujoco is imported

# isort: split
import gymnasium as gym
import mujoco
import numpy as np

from safefql.envs.boat import (
    BOX_HIGH,
    BOX_LOW,
    CURRENT_CURVATURE,
    CURRENT_SPEED,
    EPISODE_STEPS,
    RENDER_HEIGHT,
    RENDER_WIDTH,
    START_MODES,
)

MASS = 1.0  # kg
YAW_INERTIA = 0.02  # kg m^2, about the vertical axis through the centre of mass
THRUST_GAIN = 5.0  # N of surge thrust at a0 = 1
TORQUE_GAIN = 0.3  # N m of yaw torque at a1 = 1
SURGE_DRAG = (2.0, 1.0)  # (linear N s/m, quadratic N s^2/m^2) along the hull
SWAY_DRAG = (8.0, 4.0)  # sideways: 4x the surge drag
YAW_DRAG = (0.1, 0.02)  # (linear N m s, quadratic N m s^2)
SUBSTEP_DT = 0.001  # MuJoCo timestep, s
N_SUBSTEPS = 5  # MuJoCo substeps per control step
DT = SUBSTEP_DT * N_SUBSTEPS  # 0.005 s, as BoatNav-v0
Y_BANK = 1.9  # |y| > Y_BANK is on the bank (failure)
SAFE_BANK_MARGIN = 0.1  # "safe" starts keep |y| <= Y_BANK - SAFE_BANK_MARGIN
SPEED_LIMIT = 10.0  # observation bound on |u|, |v| (m/s); reachable speeds stay below ~3.5
YAW_RATE_LIMIT = 20.0  # observation bound on |r| (rad/s); reachable rates stay below ~2.2

_XLO, _YLO = float(BOX_LOW[0]), float(BOX_LOW[1])
_XHI, _YHI = float(BOX_HIGH[0]), float(BOX_HIGH[1])
_GX, _GY = float(boat.GOAL[0]), float(boat.GOAL[1])
_SU, _SUQ = SURGE_DRAG
_SV, _SVQ = SWAY_DRAG
_SR, _SRQ = YAW_DRAG

_ROLL_PITCH = 0.6 * YAW_INERTIA  # unused (no roll/pitch joints); only has to satisfy A + B >= C
_HULL_BODY = f"""    <body name="boat" pos="0 0 0.05">
      <joint name="x" type="slide" axis="1 0 0"/>
      <joint name="y" type="slide" axis="0 1 0"/>
      <joint name="yaw" type="hinge" axis="0 0 1"/>
      <inertial pos="0 0 0" mass="{MASS!r}" diaginertia="{_ROLL_PITCH!r} {_ROLL_PITCH!r} {YAW_INERTIA!r}"/>
      <geom name="hull" type="ellipsoid" size="0.14 0.055 0.04" mass="0" material="hull"/>
      <geom name="bow" type="sphere" size="0.025" pos="0.11 0 0.04" mass="0" rgba="1 1 1 1"/>
      <site name="thruster" pos="0 0 0"/>
    </body>"""

_ACTUATORS = f"""  <actuator>
    <motor name="surge" site="thruster" gear="{THRUST_GAIN!r} 0 0 0 0 0" ctrllimited="true" ctrlrange="-1 1"/>
    <motor name="yaw_torque" joint="yaw" gear="{TORQUE_GAIN!r}" ctrllimited="true" ctrlrange="-1 1"/>
  </actuator>"""


def boat_dynamic_xml() -> str:
    """MJCF of BoatNavDynamic-v0: the river scene plus the hull (slide x, slide y, hinge yaw) and motors."""
    return boat.scene_xml(_HULL_BODY, timestep=SUBSTEP_DT, extra=_ACTUATORS)


def failure_margin(p: Any) -> np.ndarray:
    """h = max(rock margin, |y| - Y_BANK) for positions ``p`` (..., 2); > 0 is failure."""
    p = np.asarray(p, dtype=np.float64)
    return np.maximum(boat.margin(p), np.abs(p[..., 1]) - Y_BANK)


def _h(x: float, y: float) -> float:
    h = boat._margin_scalar(x, y)
    bank = abs(y) - Y_BANK
    return bank if bank > h else h


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


class BoatNavDynamicEnv(gym.Env):
    """Second-order boat in the BoatNav scene (see the module docstring for equations and parameters).

    Args:
        render_mode: None or "rgb_array".
        start: reset distribution without options, "uniform" or "safe".
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
        if start not in START_MODES:
            raise ValueError(f"start must be one of {START_MODES}, got {start!r}")
        if not (0 < int(width) <= 1280 and 0 < int(height) <= 1024):
            raise ValueError(f"render size must be within 1280 x 1024, got {width} x {height}")
        self.render_mode, self.start = render_mode, start
        self.width, self.height = int(width), int(height)
        vmax = [SPEED_LIMIT, SPEED_LIMIT, YAW_RATE_LIMIT]
        self.observation_space = gym.spaces.Box(
            np.array([*BOX_LOW, -1.0, -1.0, *(-np.array(vmax))]),
            np.array([*BOX_HIGH, 1.0, 1.0, *vmax]),
            dtype=np.float64,
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.model = mujoco.MjModel.from_xml_string(boat_dynamic_xml())
        self.data = mujoco.MjData(self.model)
        self._qpos, self._qvel = self.data.qpos, self.data.qvel
        self._ctrl, self._qfrc = self.data.ctrl, self.data.qfrc_applied
        self._renderer: mujoco.Renderer | None = None
        self._t = -1

    # ---------------------------------------------------------------------------------------------
    def _obs(self) -> np.ndarray:
        x, y, psi = self._qpos.tolist()
        xd, yd, r = self._qvel.tolist()
        c, s = math.cos(psi), math.sin(psi)
        return np.array((x, y, s, c, c * xd + s * yd, -s * xd + c * yd, r))

    def _info(self) -> dict[str, float]:
        h = _h(float(self._qpos[0]), float(self._qpos[1]))
        return {"cost": 1.0 if h > 0.0 else 0.0, "h": h}

    def _initial_state(self, options: dict[str, Any] | None) -> np.ndarray:
        kind, value = boat.parse_reset_options(options, state_lengths=(2, 3, 6))
        rng = self.np_random
        if kind == "state":
            s = value
            psi = float(s[2]) if s.size >= 3 else 0.0
            if s.size == 6:
                xd, yd, r = (float(v) for v in s[3:])
                c, sn = math.cos(psi), math.sin(psi)
                if (
                    max(abs(c * xd + sn * yd), abs(-sn * xd + c * yd)) > SPEED_LIMIT
                    or abs(r) > YAW_RATE_LIMIT
                ):
                    raise ValueError(
                        f"options['state'] velocity {s[3:].tolist()} exceeds the observation bounds "
                        f"(|u|, |v| <= {SPEED_LIMIT}, |r| <= {YAW_RATE_LIMIT})"
                    )
                return np.array([s[0], s[1], _wrap(psi), xd, yd, r])
            return np.array([s[0], s[1], _wrap(psi), float(boat.current(s[1])), 0.0, 0.0])
        mode = value if kind == "start" else self.start
        if mode == "uniform":
            p = rng.uniform(BOX_LOW, BOX_HIGH)
            psi = rng.uniform(-math.pi, math.pi)
        else:
            for _ in range(100_000):
                p = boat.sample_start(rng, "safe")
                if abs(p[1]) <= Y_BANK - SAFE_BANK_MARGIN:
                    break
            else:  # pragma: no cover - the accepted region is most of the box
                raise RuntimeError("could not sample a safe start")
            psi = 0.0
        return np.array([p[0], p[1], psi, float(boat.current(p[1])), 0.0, 0.0])

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Reset (see the module docstring for ``options``); returns the observation and the info."""
        super().reset(seed=seed)
        state = self._initial_state(options)
        mujoco.mj_resetData(self.model, self.data)
        self._qpos[:] = state[:3]
        self._qvel[:] = state[3:]
        self._t = 0
        return self._obs(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, float]]:
        """Apply thrust/torque for DT = N_SUBSTEPS MuJoCo substeps with drag relative to the current."""
        if self._t < 0:
            raise gym.error.ResetNeeded("call reset() before step()")
        a = np.asarray(action)
        if a.shape != (2,):
            raise ValueError(f"action must have shape (2,), got {a.shape}")
        a0, a1 = (float(v) for v in a.tolist())
        if not (math.isfinite(a0) and math.isfinite(a1)):
            raise ValueError(f"action contains NaN or inf: {[a0, a1]}")
        qpos, qvel, qfrc = self._qpos, self._qvel, self._qfrc
        x, y, _ = qpos.tolist()
        dx, dy = x - _GX, y - _GY
        rew = -math.sqrt(dx * dx + dy * dy)
        self._ctrl[0] = -1.0 if a0 < -1.0 else (1.0 if a0 > 1.0 else a0)
        self._ctrl[1] = -1.0 if a1 < -1.0 else (1.0 if a1 > 1.0 else a1)
        model, data = self.model, self.data
        for _ in range(N_SUBSTEPS):
            x, y, psi = qpos.tolist()
            xd, yd, r = qvel.tolist()
            c, s = math.cos(psi), math.sin(psi)
            rx = xd - (CURRENT_SPEED - CURRENT_CURVATURE * (y * y))
            ur = c * rx + s * yd
            vr = -s * rx + c * yd
            fx = -(_SU * ur + _SUQ * abs(ur) * ur)
            fy = -(_SV * vr + _SVQ * abs(vr) * vr)
            qfrc[0] = c * fx - s * fy
            qfrc[1] = s * fx + c * fy
            qfrc[2] = -(_SR * r + _SRQ * abs(r) * r)
            mujoco.mj_step(model, data)
            x, y = qpos[0], qpos[1]
            if x < _XLO or x > _XHI:
                qpos[0] = _XLO if x < _XLO else _XHI
                qvel[0] = 0.0
            if y < _YLO or y > _YHI:
                qpos[1] = _YLO if y < _YLO else _YHI
                qvel[1] = 0.0
        qpos[2] = _wrap(float(qpos[2]))
        self._t += 1
        return self._obs(), rew, False, self._t >= EPISODE_STEPS, self._info()

    @property
    def state(self) -> np.ndarray:
        """(x, y, psi, xdot, ydot, r): MuJoCo's qpos and qvel (a copy)."""
        return np.concatenate([self._qpos, self._qvel])

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
                raise boat._render_error(e) from e
        mujoco.mj_forward(self.model, self.data)
        self._renderer.update_scene(self.data, camera="top")
        return self._renderer.render()

    def close(self) -> None:
        """Free the renderer (if one was created)."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        super().close()


__all__ = [
    "DT",
    "MASS",
    "N_SUBSTEPS",
    "SUBSTEP_DT",
    "SURGE_DRAG",
    "SWAY_DRAG",
    "THRUST_GAIN",
    "TORQUE_GAIN",
    "YAW_DRAG",
    "YAW_INERTIA",
    "Y_BANK",
    "BoatNavDynamicEnv",
    "boat_dynamic_xml",
    "failure_margin",
]
