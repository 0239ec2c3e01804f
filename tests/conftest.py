"""Test-session settings: hermetic dataset and cache folders, CPU JAX, headless MuJoCo rendering."""

import os
import tempfile
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="safefql-tests-"))
os.environ["MINARI_DATASETS_PATH"] = str(_SESSION_DIR / "minari")
os.environ.setdefault("SAFEFQL_CACHE", str(_SESSION_DIR / "cache"))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small matrices: threads only add contention


@pytest.fixture(scope="session")
def trained_boat_checkpoint() -> Path:
    """The calibrated BoatNav-v0 checkpoint shipped inside the package."""
    from safefql.shields.pretrained import pretrained_path

    return pretrained_path("safefql/BoatNav-v0")
