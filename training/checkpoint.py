"""Single-file checkpoints: a JSON header plus Equinox-serialised weights, written atomically.

File layout (all integers little-endian)::

    offset  size  content
    0       8     magic  b"SAFEFQL1"
    8       8     uint64 H, the byte length of the JSON header
    16      32    sha256 of the header bytes
    48      H     header, UTF-8 JSON (an object; see below)
    48 + H  ...   weights: ``eqx.tree_serialise_leaves`` bytes (a sequence of ``.npy`` records, no pickle)

The header holds ``format_version``, ``kind`` (``"policy"``: a ``SafeFQLAgent``; ``"train_state"``: a
``TrainState``, or ``num_seeds`` vmapped ones), ``config`` (``SafeFQLConfig.to_dict()``),
``observation_space`` / ``action_space`` (shape, dtype, low, high as lists; infinities as ``"inf"``),
``env_id``, ``dataset_id``, ``versions`` (safefql, jax, equinox, numpy), ``calibration`` (or null),
``weights_sha256`` / ``weights_bytes``, and ``training`` (steps, seed, wall time, ...). Loading checks both
checksums and rebuilds the template from the header's config, so no code object is ever unpickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import gymnasium as gym
import jax
import numpy as np

from safefql._io import atomic_write_bytes

MAGIC = b"SAFEFQL1"
FORMAT_VERSION = 1
KINDS = ("policy", "train_state")
_PREFIX = len(MAGIC) + 8 + 32


# ------------------------------------------------------------------------------------------------ spaces
def _enc(x: float) -> float | str:
    x = float(x)
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf" if x < 0 else "nan")


def space_to_dict(space: gym.spaces.Box) -> dict[str, Any]:
    """JSON-ready description of a Box space: shape, dtype, low, high (nested lists, inf as strings)."""
    if not isinstance(space, gym.spaces.Box):
        raise ValueError(f"only gymnasium Box spaces are supported, got {type(space).__name__}")
    enc = np.vectorize(_enc, otypes=[object])
    return {
        "shape": list(space.shape),
        "dtype": np.dtype(space.dtype).name,
        "low": enc(space.low.astype(np.float64)).tolist(),
        "high": enc(space.high.astype(np.float64)).tolist(),
    }


def space_from_dict(d: dict[str, Any]) -> gym.spaces.Box:
    """Rebuild the Box described by :func:`space_to_dict`."""
    try:
        shape = tuple(int(s) for s in d["shape"])
        dtype = np.dtype(d["dtype"])
        low = np.asarray(np.vectorize(float)(np.asarray(d["low"], dtype=object)), dtype=np.float64)
        high = np.asarray(np.vectorize(float)(np.asarray(d["high"], dtype=object)), dtype=np.float64)
    except (KeyError, TypeError) as e:
        raise ValueError(f"malformed space description {d!r}: {e}") from e
    if dtype.kind == "f":  # avoid gymnasium's precision-lowering warning; the header holds the cast values
        low, high = low.astype(dtype), high.astype(dtype)
    return gym.spaces.Box(low=low.reshape(shape), high=high.reshape(shape), shape=shape, dtype=dtype)


def _describe(d: dict[str, Any]) -> str:
    return f"Box(shape={tuple(d['shape'])}, dtype={d['dtype']}, low={d['low']}, high={d['high']})"


def _same_space(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if list(a["shape"]) != list(b["shape"]):
        return False
    if np.dtype(a["dtype"]).kind != np.dtype(b["dtype"]).kind:
        return False
    sa, sb = space_from_dict(a), space_from_dict(b)
    # Bounds are compared in float32, the precision the networks see.
    return bool(
        np.array_equal(sa.low.astype(np.float32), sb.low.astype(np.float32))
        and np.array_equal(sa.high.astype(np.float32), sb.high.astype(np.float32))
    )


def check_spaces(header: dict[str, Any], env: gym.Env) -> None:
    """Raise ValueError (naming both) if ``env``'s observation or action space differs from the checkpoint's.

    Shapes, dtype kinds (float vs int) and bounds (in float32) are compared.
    """
    for name in ("observation_space", "action_space"):
        if name not in header:
            raise ValueError(f"checkpoint header has no {name!r}")
        env_space = getattr(env, name, None)
        if not isinstance(env_space, gym.spaces.Box):
            raise ValueError(f"env {name} must be a gymnasium Box, got {type(env_space).__name__}")
        ours, theirs = header[name], space_to_dict(env_space)
        if not _same_space(ours, theirs):
            raise ValueError(
                f"{name} mismatch: the checkpoint (env_id={header.get('env_id')!r}) expects "
                f"{_describe(ours)} but the env ({getattr(getattr(env, 'spec', None), 'id', None)!r}) has "
                f"{_describe(theirs)}"
            )


# ------------------------------------------------------------------------------------------------ header
def library_versions() -> dict[str, str]:
    """Versions recorded in every header."""
    import safefql

    return {
        "safefql": safefql.__version__,
        "jax": jax.__version__,
        "equinox": eqx.__version__,
        "numpy": np.__version__,
    }


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return _enc(float(o))
    if isinstance(o, np.ndarray):
        return o.tolist()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"header value of type {type(o).__name__} is not JSON-serialisable")


def _sanitize(o: Any) -> Any:
    """Replace non-finite floats (which strict JSON cannot hold) by strings, recursively."""
    if isinstance(o, float):
        return _enc(o)
    if isinstance(o, dict):
        return {str(k): _sanitize(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_sanitize(v) for v in o]
    return o


def _encode_header(header: dict[str, Any]) -> bytes:
    text = json.dumps(_sanitize(json.loads(json.dumps(header, default=_json_default))), allow_nan=False)
    return text.encode("utf-8")


def _pack(header_bytes: bytes, weights: bytes) -> bytes:
    return b"".join(
        [
            MAGIC,
            struct.pack("<Q", len(header_bytes)),
            hashlib.sha256(header_bytes).digest(),
            header_bytes,
            weights,
        ]
    )


def _read(path: str | os.PathLike) -> tuple[dict[str, Any], bytes, Path]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    data = path.read_bytes()
    if len(data) < _PREFIX:
        raise ValueError(
            f"checkpoint {path} is corrupted: truncated ({len(data)} bytes, header prefix needs {_PREFIX})"
        )
    if data[: len(MAGIC)] != MAGIC:
        raise ValueError(
            f"{path} is not a safefql checkpoint (bad magic {data[: len(MAGIC)]!r}, expected {MAGIC!r})"
        )
    (hlen,) = struct.unpack("<Q", data[len(MAGIC) : len(MAGIC) + 8])
    if _PREFIX + hlen > len(data):
        raise ValueError(
            f"checkpoint {path} is corrupted: truncated (header says {hlen} header bytes, file has "
            f"{len(data) - _PREFIX} after the prefix)"
        )
    header_bytes = data[_PREFIX : _PREFIX + hlen]
    if hashlib.sha256(header_bytes).digest() != data[len(MAGIC) + 8 : _PREFIX]:
        raise ValueError(f"checkpoint {path} is corrupted: header checksum mismatch")
    header = json.loads(header_bytes.decode("utf-8"))
    weights = data[_PREFIX + hlen :]
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path} has format_version {header.get('format_version')!r}; this safefql reads "
            f"version {FORMAT_VERSION}"
        )
    if len(weights) != header.get("weights_bytes"):
        raise ValueError(
            f"checkpoint {path} is corrupted: truncated weights ({len(weights)} bytes, header says "
            f"{header.get('weights_bytes')})"
        )
    digest = hashlib.sha256(weights).hexdigest()
    if digest != header.get("weights_sha256"):
        raise ValueError(
            f"checkpoint {path} is corrupted: checksum of the weights is {digest}, header says "
            f"{header.get('weights_sha256')}"
        )
    return header, weights, path


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The verified JSON header of a checkpoint (weights checksum included), without building the model."""
    return _read(path)[0]


# ------------------------------------------------------------------------------------------------ save/load
def serialise_model(model: Any) -> bytes:
    """``eqx.tree_serialise_leaves`` into bytes."""
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, model)
    return buf.getvalue()


def save_checkpoint(path: str | os.PathLike, model: Any, header: dict[str, Any]) -> Path:
    """Write ``model`` and ``header`` to one file atomically; returns the path.

    ``header`` must hold ``kind`` (``"policy"`` or ``"train_state"``) and ``config`` (a dict); this function
    adds ``format_version``, ``versions``, ``weights_sha256`` and ``weights_bytes`` and defaults
    ``calibration`` to null. Non-finite floats are stored as strings (strict JSON).
    """
    if not isinstance(header, dict):
        raise ValueError(f"header must be a dict, got {type(header).__name__}")
    if header.get("kind") not in KINDS:
        raise ValueError(f"header['kind'] must be one of {KINDS}, got {header.get('kind')!r}")
    if not isinstance(header.get("config"), dict):
        raise ValueError("header['config'] must be a dict (SafeFQLConfig.to_dict())")
    weights = serialise_model(model)
    full = dict(header)
    full.setdefault("calibration", None)
    full["format_version"] = FORMAT_VERSION
    full["versions"] = library_versions()
    full["weights_sha256"] = hashlib.sha256(weights).hexdigest()
    full["weights_bytes"] = len(weights)
    return atomic_write_bytes(path, _pack(_encode_header(full), weights))


def update_header(path: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """Replace top-level header fields of an existing checkpoint (weights untouched), atomically.

    The weights checksum is verified first; ``kind``, ``format_version`` and the weight fields cannot be
    changed this way. Returns the new header.
    """
    protected = {"kind", "format_version", "weights_sha256", "weights_bytes"} & set(fields)
    if protected:
        raise ValueError(f"update_header cannot change {sorted(protected)}")
    header, weights, path = _read(path)
    header.update(fields)
    header_bytes = _encode_header(header)
    atomic_write_bytes(path, _pack(header_bytes, weights))
    return json.loads(header_bytes)


def _check_like(loaded: Any, like: Any, path: Path) -> None:
    a_leaves = jax.tree_util.tree_leaves(eqx.filter(loaded, eqx.is_array))
    b_leaves = jax.tree_util.tree_leaves(
        eqx.filter(like, lambda x: isinstance(x, jax.ShapeDtypeStruct | jax.Array | np.ndarray))
    )
    if len(a_leaves) != len(b_leaves):
        raise ValueError(
            f"checkpoint {path}: {len(a_leaves)} arrays loaded, the template has {len(b_leaves)}"
        )
    for i, (a, b) in enumerate(zip(a_leaves, b_leaves, strict=True)):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(
                f"checkpoint {path}: array {i} has shape {a.shape} {a.dtype}, the model built from the "
                f"header's config expects {b.shape} {b.dtype} (header config and weights disagree)"
            )


def _deserialise(weights: bytes, like: Any, path: Path) -> Any:
    f = io.BytesIO(weights)
    try:
        model = eqx.tree_deserialise_leaves(f, like)
    except Exception as e:  # noqa: BLE001 - any parse failure means the weights do not fit the template
        raise ValueError(
            f"checkpoint {path}: weights do not match the model built from its header: {e}"
        ) from e
    if f.tell() != len(weights):
        raise ValueError(
            f"checkpoint {path}: {len(weights) - f.tell()} weight bytes left over after loading; header "
            "config and weights disagree"
        )
    _check_like(model, like, path)
    return model


def template_from_header(header: dict[str, Any]) -> Any:
    """An abstract (``filter_eval_shape``) model matching the header: agent, train state or vmapped states."""
    from safefql.training.config import SafeFQLConfig
    from safefql.training.safefql import create_train_state, create_train_states

    config = SafeFQLConfig.from_dict(header["config"])
    obs_dim = int(np.prod(header["observation_space"]["shape"]))
    act_dim = int(np.prod(header["action_space"]["shape"]))
    kind = header.get("kind")
    num_seeds = int(header.get("num_seeds", 1) or 1)
    key = jax.random.PRNGKey(0)
    if kind == "train_state" and num_seeds > 1:
        keys = jax.random.split(key, num_seeds)
        return eqx.filter_eval_shape(create_train_states, config, obs_dim, act_dim, keys)
    state = eqx.filter_eval_shape(create_train_state, config, obs_dim, act_dim, key)
    if kind == "train_state":
        return state
    if kind == "policy":
        return state.agent
    raise ValueError(f"checkpoint header has unknown kind {kind!r}; expected one of {KINDS}")


def load_checkpoint(
    path: str | os.PathLike, like: Any | Callable[[dict[str, Any]], Any] | None = None
) -> tuple[Any, dict[str, Any]]:
    """Load ``(model, header)``. The template is rebuilt from the header's config unless ``like`` is given
    (a model of the right structure, or a function ``header -> model``).

    Raises FileNotFoundError for a missing file and ValueError for a bad magic, truncation, a checksum
    mismatch, or weights that do not fit the template.
    """
    header, weights, path = _read(path)
    if like is None:
        like = template_from_header(header)
    elif callable(like) and not isinstance(like, eqx.Module):
        like = like(header)
    return _deserialise(weights, like, path), header
