"""Environments: the boat-navigation problems of the SafeFQL paper, and Safety-Gymnasium on modern Gymnasium.

Importing this module registers ``safefql/BoatNav-v0`` and ``safefql/BoatNavDynamic-v0``.
"""

import gymnasium as gym

BOAT_ID = "safefql/BoatNav-v0"
BOAT_DYNAMIC_ID = "safefql/BoatNavDynamic-v0"

if BOAT_ID not in gym.registry:
    gym.register(BOAT_ID, entry_point="safefql.envs.boat:BoatNavEnv", max_episode_steps=400)
if BOAT_DYNAMIC_ID not in gym.registry:
    gym.register(
        BOAT_DYNAMIC_ID, entry_point="safefql.envs.boat_dynamic:BoatNavDynamicEnv", max_episode_steps=400
    )

__all__ = ["BOAT_ID", "BOAT_DYNAMIC_ID"]

# Safety-Gymnasium ids (Safety*Gymnasium-v*): lazy entry points, safety_gymnasium is imported on gym.make.
from safefql.envs.safety_gym import register_safety_gym_envs  # noqa: E402

register_safety_gym_envs()
