"""Calibrated SafeFQL checkpoints shipped with the package, looked up by Gymnasium env id.

The checkpoint files live beside this module (``boatnav_v0.eqx`` for ``safefql/BoatNav-v0``). A shield built
without ``checkpoint=`` asks :func:`pretrained_path` for the file that belongs to ``env.spec.id``.
"""

from __future__ import annotations

from pathlib import Path

PRETRAINED_DIR = Path(__file__).resolve().parent

#: env id -> checkpoint file name inside :data:`PRETRAINED_DIR`.
PRETRAINED_FILES: dict[str, str] = {
    "safefql/BoatNav-v0": "boatnav_v0.eqx",
    "safefql/BoatNavDynamic-v0": "boatnavdynamic_v0.eqx",
}


def pretrained_path(env_id: str) -> Path:
    """Path of the shipped checkpoint for ``env_id``.

    Raises:
        ValueError: no model is shipped for ``env_id`` (the message lists the ids that have one).
        FileNotFoundError: a model is registered for ``env_id`` but its file is not in this installation.

    >>> PRETRAINED_FILES["safefql/BoatNav-v0"]
    'boatnav_v0.eqx'
    >>> pretrained_path("CartPole-v1")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: no pretrained SafeFQL model is shipped for env id 'CartPole-v1' ...; pass checkpoint=...
    """
    hint = "pass checkpoint=<path to a .eqx file> (e.g. one written by `safefql train`) instead"
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"env id must be a non-empty string, got {env_id!r}; {hint}")
    name = PRETRAINED_FILES.get(env_id)
    if name is None:
        raise ValueError(
            f"no pretrained SafeFQL model is shipped for env id {env_id!r} "
            f"(shipped: {sorted(PRETRAINED_FILES)}); {hint}"
        )
    path = PRETRAINED_DIR / name
    if not path.is_file():
        raise FileNotFoundError(
            f"the pretrained model for env id {env_id!r} should be {path}, but that file is missing from "
            f"this installation; {hint}"
        )
    return path


__all__ = ["PRETRAINED_DIR", "PRETRAINED_FILES", "pretrained_path"]
