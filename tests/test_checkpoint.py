"""Checkpoint file format: bit-identical round trips, corruption detection, header updates, space checks,
and the policy object (JAX and NumPy paths agree; input validation)."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import equinox as eqx
import gymnasium as gym
import jax
import numpy as np
import pytest

from safefql.envs import BOAT_ID
from safefql.training.calibration import Calibration
from safefql.training.checkpoint import (
    MAGIC,
    check_spaces,
    load_checkpoint,
    read_header,
    save_checkpoint,
    space_from_dict,
    space_to_dict,
    update_header,
)
from safefql.training.config import SafeFQLConfig
from safefql.training.policy import NumpyPolicy, SafeFQLPolicy
from safefql.training.safefql import (
    actor_actions,
    create_train_state,
    create_train_states,
    reward_q_value,
    safety_q_value,
    safety_value,
)

TINY = SafeFQLConfig(
    critic_hidden=(16,),
    value_hidden=(16,),
    actor_hidden=(16, 16),
    flow_hidden=(16,),
    batch_size=32,
    flow_steps=3,
    steps_per_call=10,
)
OBS_SPACE = gym.spaces.Box(np.array([-3.0, -2.0]), np.array([2.0, 2.0]), dtype=np.float64)
ACT_SPACE = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)


def _header(kind: str = "policy", **extra) -> dict:
    return dict(
        kind=kind,
        config=TINY.to_dict(),
        observation_space=space_to_dict(OBS_SPACE),
        action_space=space_to_dict(ACT_SPACE),
        env_id=BOAT_ID,
        dataset_id="test/boat-v0",
        training={"step": 0, "seed": 0},
        **extra,
    )


@pytest.fixture(scope="module")
def state():
    return create_train_state(TINY, 2, 2, jax.random.PRNGKey(3))


@pytest.fixture()
def policy_path(tmp_path, state) -> Path:
    return save_checkpoint(tmp_path / "policy.eqx", state.agent, _header())


def _leaves(tree) -> list:
    return jax.tree.leaves(eqx.filter(tree, eqx.is_array))


def _assert_identical(a, b) -> None:
    la, lb = _leaves(a), _leaves(b)
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb, strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype
        assert np.array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------------------------------ round trips
def test_policy_round_trip_is_bit_identical_and_header_complete(policy_path, state):
    agent, header = load_checkpoint(policy_path)
    _assert_identical(agent, state.agent)
    assert type(agent).__name__ == "SafeFQLAgent"
    assert header["kind"] == "policy" and header["format_version"] == 1
    assert header["calibration"] is None
    assert header["env_id"] == BOAT_ID and header["dataset_id"] == "test/boat-v0"
    assert set(header["versions"]) == {"safefql", "jax", "equinox", "numpy"}
    assert header["versions"]["jax"] == jax.__version__
    assert len(header["weights_sha256"]) == 64
    assert SafeFQLConfig.from_dict(header["config"]) == TINY
    assert header["observation_space"] == {
        "shape": [2],
        "dtype": "float64",
        "low": [-3.0, -2.0],
        "high": [2.0, 2.0],
    }
    assert not [p for p in policy_path.parent.iterdir() if p.name.endswith(".tmp")]  # atomic: no leftovers


def test_train_state_round_trip_single_and_vmapped(tmp_path, state):
    path = save_checkpoint(tmp_path / "ts.eqx", state, _header("train_state"))
    loaded, header = load_checkpoint(path)
    _assert_identical(loaded, state)
    assert loaded.config == TINY and int(loaded.step) == 0
    states = create_train_states(TINY, 2, 2, jax.random.split(jax.random.PRNGKey(1), 2))
    path = save_checkpoint(tmp_path / "ts2.eqx", states, _header("train_state", num_seeds=2))
    loaded, _ = load_checkpoint(path)
    _assert_identical(loaded, states)
    assert np.asarray(loaded.step).shape == (2,)


def test_weights_are_npy_records_without_pickle(policy_path):
    data = policy_path.read_bytes()
    assert data[:8] == MAGIC
    (hlen,) = struct.unpack("<Q", data[8:16])
    header = json.loads(data[48 : 48 + hlen])
    f = io.BytesIO(data[48 + hlen :])
    count = 0
    while f.tell() < header["weights_bytes"]:
        arr = np.load(f, allow_pickle=False)  # would raise on any object (pickled) record
        assert arr.dtype != object
        count += 1
    assert count == len(_leaves(load_checkpoint(policy_path)[0]))
    # and no module of ours (de)serialises with pickle
    import safefql.training as training_pkg

    root = Path(training_pkg.__file__).parent
    for name in ("checkpoint.py", "policy.py", "calibration.py", "trainer.py"):
        text = (root / name).read_text()
        assert "import pickle" not in text and "allow_pickle=True" not in text


def test_inf_bounds_survive_the_json_header(tmp_path, state):
    unbounded = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
    path = save_checkpoint(
        tmp_path / "p.eqx", state.agent, dict(_header(), observation_space=space_to_dict(unbounded))
    )
    text = path.read_bytes()
    assert b"Infinity" not in text and b"NaN" not in text  # strict JSON
    space = space_from_dict(read_header(path)["observation_space"])
    assert np.all(np.isinf(space.low)) and np.all(space.low < 0) and np.all(space.high > 0)


# ------------------------------------------------------------------------------------------ corruption
def test_corrupted_weight_byte_is_detected(policy_path):
    data = bytearray(policy_path.read_bytes())
    data[-5] ^= 0x01
    policy_path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"corrupted: checksum"):
        load_checkpoint(policy_path)


def test_corrupted_header_byte_is_detected(policy_path):
    data = bytearray(policy_path.read_bytes())
    data[60] ^= 0x01
    policy_path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"corrupted: header checksum"):
        load_checkpoint(policy_path)


@pytest.mark.parametrize("keep", [10, 100, -7])
def test_truncated_file_is_detected(policy_path, keep):
    data = policy_path.read_bytes()
    policy_path.write_bytes(data[:keep])
    with pytest.raises(ValueError, match=r"corrupted: truncated"):
        load_checkpoint(policy_path)


def test_bad_magic_and_missing_file(tmp_path, policy_path):
    data = policy_path.read_bytes()
    other = tmp_path / "not_a_checkpoint.eqx"
    other.write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(ValueError, match=r"not a safefql checkpoint"):
        load_checkpoint(other)
    missing = tmp_path / "nope" / "missing.eqx"
    with pytest.raises(FileNotFoundError, match=r"missing\.eqx"):
        load_checkpoint(missing)


def test_header_config_that_disagrees_with_weights(tmp_path, state):
    wider = TINY.replace(actor_hidden=(32, 16)).to_dict()
    path = save_checkpoint(tmp_path / "p.eqx", state.agent, dict(_header(), config=wider))
    with pytest.raises(ValueError, match=r"disagree|do not match"):
        load_checkpoint(path)


def test_save_validates_header(tmp_path, state):
    with pytest.raises(ValueError, match=r"kind"):
        save_checkpoint(tmp_path / "a.eqx", state.agent, dict(_header(), kind="weights"))
    with pytest.raises(ValueError, match=r"config"):
        save_checkpoint(tmp_path / "a.eqx", state.agent, dict(_header(), config="tiny"))


# ------------------------------------------------------------------------------------------ header updates
def test_update_header_stores_calibration_and_keeps_weights(policy_path, state):
    before = read_header(policy_path)
    cal = Calibration(delta=0.25, eps=0.05, beta=None, n=40, k=1, source="offline", guarantee="words")
    update_header(policy_path, calibration=cal.to_dict())
    agent, after = load_checkpoint(policy_path)
    _assert_identical(agent, state.agent)
    assert after["weights_sha256"] == before["weights_sha256"]
    assert Calibration.from_dict(after["calibration"]) == cal
    assert SafeFQLPolicy.load(policy_path).delta == 0.25
    with pytest.raises(ValueError, match=r"weights_sha256"):
        update_header(policy_path, weights_sha256="0" * 64)


# ------------------------------------------------------------------------------------------ spaces
def test_check_spaces_accepts_the_boat_and_names_both_on_mismatch(policy_path):
    header = read_header(policy_path)
    env = gym.make(BOAT_ID)
    check_spaces(header, env)  # same spaces: no error
    other = dict(
        header, observation_space=space_to_dict(gym.spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32))
    )
    with pytest.raises(ValueError, match=r"observation_space mismatch") as err:
        check_spaces(other, env)
    msg = str(err.value)
    assert "shape=(3,)" in msg and "shape=(2,)" in msg and "[-3.0, -2.0]" in msg
    moved = dict(header, action_space=space_to_dict(gym.spaces.Box(-2.0, 2.0, shape=(2,), dtype=np.float32)))
    with pytest.raises(ValueError, match=r"action_space mismatch"):
        check_spaces(moved, env)
    env.close()


# ------------------------------------------------------------------------------------------ policy object
def test_policy_matches_the_networks_and_numpy_path(policy_path, state):
    pol = SafeFQLPolicy.load(policy_path)
    npol = pol.numpy()
    assert isinstance(npol, NumpyPolicy)
    assert pol.delta == 0.0 and pol.calibration is None and pol.env_id == BOAT_ID
    assert pol.observation_space == OBS_SPACE and pol.action_space == ACT_SPACE
    rng = np.random.default_rng(0)
    obs = rng.uniform(OBS_SPACE.low, OBS_SPACE.high, size=(7, 2))
    act = rng.uniform(-1, 1, size=(7, 2)).astype(np.float32)
    o32 = obs.astype(np.float32)
    agent = state.agent
    expected = {
        "act": np.asarray(actor_actions(agent, o32, np.zeros((7, 2), np.float32))),
        "safety_value": np.asarray(safety_value(agent, o32)),
        "safety_q": np.asarray(safety_q_value(agent, o32, act)),
        "reward_q": np.asarray(reward_q_value(agent, o32, act)),
    }
    for impl in (pol, npol):
        got = {
            "act": impl.act(obs),
            "safety_value": impl.safety_value(obs),
            "safety_q": impl.safety_q(obs, act),
            "reward_q": impl.reward_q(obs, act),
        }
        for k, v in expected.items():
            np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
        # unbatched calls give the first row
        assert impl.act(obs[0]).shape == (2,)
        np.testing.assert_allclose(impl.act(obs[0]), expected["act"][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            impl.safety_q(obs[0], act[0]), expected["safety_q"][0], rtol=1e-5, atol=1e-6
        )
        assert np.ndim(impl.safety_value(obs[0])) == 0
    # noise: same Generator state -> same z on both paths, and z ~ N(0, I) changes the action
    a_jax = pol.act(obs, np.random.default_rng(5))
    a_np = npol.act(obs, np.random.default_rng(5))
    np.testing.assert_allclose(a_jax, a_np, rtol=1e-5, atol=1e-6)
    z = np.random.default_rng(5).standard_normal((7, 2), dtype=np.float32)
    np.testing.assert_allclose(a_np, np.asarray(actor_actions(agent, o32, z)), rtol=1e-5, atol=1e-6)
    assert not np.allclose(a_np, expected["act"])
    assert np.all(np.abs(a_np) <= 1.0)


@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("activation", ["gelu", "relu", "tanh", "silu"])
def test_numpy_path_matches_jax_for_every_activation(activation, layer_norm):
    """Folded activation scales, fused first layers, critic LayerNorms and the batch-1 ``safety_q_one``
    path reproduce JAX."""
    import dataclasses

    config = dataclasses.replace(
        TINY,
        activation=activation,
        critic_hidden=(16, 16),
        value_hidden=(16, 16),
        critic_layer_norm=layer_norm,
    )
    agent = create_train_state(config, 2, 2, jax.random.PRNGKey(7)).agent
    if layer_norm:  # non-trivial norm parameters, so that a skipped scale or offset shows
        keys = iter(jax.random.split(jax.random.PRNGKey(8), 16))
        for name in ("safety_q", "safety_v", "reward_q"):
            net = getattr(agent, name)
            new = tuple(
                eqx.tree_at(
                    lambda n: (n.weight, n.bias),
                    norm,
                    (
                        1.0 + 0.3 * jax.random.normal(next(keys), norm.weight.shape),
                        0.2 * jax.random.normal(next(keys), norm.bias.shape),
                    ),
                )
                for norm in net.norms
            )
            agent = eqx.tree_at(lambda g, name=name: getattr(g, name).norms, agent, new)
    header = _header() | {"config": config.to_dict()}
    npol = SafeFQLPolicy(agent, header).numpy()
    rng = np.random.default_rng(1)
    obs = rng.uniform(OBS_SPACE.low, OBS_SPACE.high, size=(9, 2)).astype(np.float32) * 3.0
    act = rng.uniform(-1, 1, size=(9, 2)).astype(np.float32)
    tol = dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(npol.act(obs), actor_actions(agent, obs, np.zeros_like(act)), **tol)
    np.testing.assert_allclose(npol.safety_value(obs), safety_value(agent, obs), **tol)
    np.testing.assert_allclose(npol.reward_q(obs, act), reward_q_value(agent, obs, act), **tol)
    expected_q = np.asarray(safety_q_value(agent, obs, act))
    np.testing.assert_allclose(npol.safety_q(obs, act), expected_q, **tol)
    one = [npol.safety_q_one(o, a) for o, a in zip(obs, act, strict=True)]
    assert all(isinstance(q, float) for q in one)
    np.testing.assert_allclose(one, expected_q, **tol)
    # the shield passes float64 arrays: the batch-1 path casts them while filling its input vector
    one64 = [
        npol.safety_q_one(o.astype(np.float64), a.astype(np.float64)) for o, a in zip(obs, act, strict=True)
    ]
    np.testing.assert_allclose(one64, expected_q, **tol)


def test_policy_input_validation(policy_path, tmp_path, state):
    pol = SafeFQLPolicy.load(policy_path)
    for impl in (pol, pol.numpy()):
        with pytest.raises(ValueError, match=r"obs has shape \(3,\)"):
            impl.act(np.zeros(3))
        with pytest.raises(ValueError, match=r"obs contains NaN"):
            impl.safety_value(np.array([0.0, np.nan]))
        with pytest.raises(ValueError, match=r"action has shape"):
            impl.safety_q(np.zeros(2), np.zeros(3))
        with pytest.raises(ValueError, match=r"batch shapes disagree"):
            impl.reward_q(np.zeros((4, 2)), np.zeros((3, 2)))
        with pytest.raises(ValueError, match=r"rng must be None"):
            impl.act(np.zeros(2), rng=0)
    ts = save_checkpoint(tmp_path / "ts.eqx", state, _header("train_state"))
    with pytest.raises(ValueError, match=r"kind 'policy'"):
        SafeFQLPolicy.load(ts)


@pytest.mark.parametrize("handled", [True, False])
def test_sigterm_inside_atomic_dir_leaves_no_temporary_directory(tmp_path, handled):
    """``exit_on_sigterm`` (installed by the CLI and the benchmarks) makes a killed write clean up after
    itself; without it Python dies on SIGTERM without unwinding and the hidden ``.tmp`` directory stays."""
    import subprocess
    import sys

    script = (
        "import os, signal, sys\n"
        "from safefql._io import atomic_dir, exit_on_sigterm\n"
        f"if {handled}: exit_on_sigterm()\n"
        "with atomic_dir(sys.argv[1]) as tmp:\n"
        "    (tmp / 'part').write_text('half a dataset')\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    signal.pause()\n"
    )
    target = tmp_path / "dataset"
    proc = subprocess.run([sys.executable, "-c", script, str(target)], timeout=60)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert not target.exists()
    if handled:
        assert proc.returncode == 143
        assert left == []
    else:  # the failure mode the handler exists for
        assert proc.returncode == -15
        assert len(left) == 1 and left[0].endswith(".tmp")
