"""safefql: Safe Flow Q-Learning for offline safe reinforcement learning.

Importing the package registers the boat environments (``safefql/BoatNav-v0``,
``safefql/BoatNavDynamic-v0``) and the Safety-Gymnasium ids that work on the modern
Gymnasium/MuJoCo stack. JAX is imported lazily, by the training and shield modules.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("safefql")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

from safefql import envs as envs  # noqa: E402  (registers the environments)

__all__ = ["__version__", "envs"]
