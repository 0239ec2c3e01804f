"""Training loop: run directory contents, evaluation, exact resume, multi-seed, divergence, validation."""

from __future__ import annotations

import csv
import functools
import json
import types

import equinox as eqx
import jax
import numpy as np
import pytest

from safefql.datasets.load import Transitions
from safefql.envs import BOAT_ID, boat
from safefql.training.checkpoint import load_checkpoint, read_header
from safefql.training.config import SafeFQLConfig
from safefql.training.policy import SafeFQLPolicy
from safefql.training.trainer import (
    TrainingDivergedError,
    evaluate_policy,
    finished_run,
    load_calib_episodes,
    train,
)

TINY = SafeFQLConfig(
    critic_hidden=(16,),
    value_hidden=(16,),
    actor_hidden=(16,),
    flow_hidden=(16,),
    batch_size=32,
    flow_steps=3,
    steps_per_call=10,
)


def boat_transitions(
    episodes: int = 8, length: int = 20, seed: int = 0, reward_scale: float = 1.0
) -> Transitions:
    """Random-action boat episodes built with the reference NumPy dynamics."""
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {k: [] for k in ("obs", "act", "h", "worst")}
    for _ in range(episodes):
        p = rng.uniform(boat.BOX_LOW, boat.BOX_HIGH)
        states, acts = [p], []
        for _ in range(length):
            a = rng.uniform(-1, 1, 2)
            p = boat.step_state(p, a)
            acts.append(a)
            states.append(p)
        s = np.array(states)
        h = boat.margin(s)
        cols["obs"].append(s)
        cols["act"].append(np.array(acts))
        cols["h"].append(h[:-1])
        cols["worst"].append(np.maximum.accumulate(h[::-1])[::-1][:-1])
    obs = np.concatenate([o[:-1] for o in cols["obs"]]).astype(np.float32)
    nxt = np.concatenate([o[1:] for o in cols["obs"]]).astype(np.float32)
    h = np.concatenate(cols["h"]).astype(np.float32)
    n = obs.shape[0]
    zeros = np.zeros(n, np.float32)
    timeouts = zeros.copy()
    timeouts[length - 1 :: length] = 1
    return Transitions(
        observations=obs,
        actions=np.concatenate(cols["act"]).astype(np.float32),
        rewards=(boat.reward(obs.astype(np.float64)) * reward_scale).astype(np.float32),
        costs=(h > 0).astype(np.float32),
        h=h,
        next_observations=nxt,
        terminals=zeros,
        masks=zeros + 1,
        timeouts=timeouts,
        episode_ids=np.repeat(np.arange(episodes, dtype=np.int64), length),
        future_worst_h=np.concatenate(cols["worst"]).astype(np.float32),
        metadata={"env_id": BOAT_ID, "dataset_id": "test/boat-random-v0"},
    )


@pytest.fixture(scope="module")
def data() -> Transitions:
    # 4 full-length episodes: the same array shapes as a collected 4-episode boat dataset, so every test
    # shares one compiled update program
    return boat_transitions(episodes=4, length=400)


def _arrays(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(eqx.filter(model, eqx.is_array))]


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_train_writes_a_complete_run_directory(tmp_path, data):
    run = tmp_path / "run"
    result = train(data, out_dir=run, config=TINY, steps=20, eval_every=10, eval_episodes=4, progress=True)
    # files
    for name in ("policy.eqx", "train_state.eqx", "metrics.csv", "calib_episodes.npz", "training_curve.png"):
        assert (run / name).is_file(), name
    assert (run / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["eval"] == result.eval
    # metrics: one row per chunk, losses and eval columns
    rows = _rows(run / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [10, 20]
    assert {"critic/safety_q_loss", "actor/actor_loss", "flow/flow_loss", "eval/return", "eval/cost"} <= set(
        rows[0]
    )
    assert all(np.isfinite(float(r["critic/reward_q_loss"])) for r in rows)
    assert rows[1]["eval/return"] != ""
    # evaluation = the documented protocol on the saved policy
    pol = SafeFQLPolicy.load(run / "policy.eqx")
    assert evaluate_policy(pol.numpy(), BOAT_ID, 4) == pytest.approx(result.eval)
    assert result.eval["return"] < 0 and 0 <= result.eval["violation_rate"] <= 1
    # headers
    header = read_header(run / "policy.eqx")
    assert header["kind"] == "policy" and header["env_id"] == BOAT_ID
    assert header["dataset_id"] == "test/boat-random-v0"
    assert header["training"]["step"] == 20 and header["training"]["seed"] == 0
    assert header["training"]["compile_time_s"] >= 0 and header["training"]["updates_per_s"] > 0
    assert result.updates_per_s > 0 and result.compile_time_s >= 0
    state, st_header = load_checkpoint(run / "train_state.eqx")
    assert int(state.step) == 20 and st_header["kind"] == "train_state"
    # the held-out episodes: saved, disjoint from training, as recorded in the header
    calib = load_calib_episodes(run / "calib_episodes.npz")
    ids = np.unique(calib.episode_ids)
    assert ids.tolist() == header["split"]["calib_episode_ids"] and ids.size == 1  # at least one episode
    assert header["split"]["train_episodes"] == 3
    np.testing.assert_array_equal(calib.observations, data.observations[data.episode_ids == ids[0]])
    # the policy's networks are the trained state's
    for a, b in zip(_arrays(pol.agent), _arrays(state.agent), strict=True):
        assert np.array_equal(a, b)


def test_resume_reproduces_an_uninterrupted_run(tmp_path, data):
    full = train(
        data, out_dir=tmp_path / "full", config=TINY, steps=30, eval_every=10, eval_episodes=2, progress=False
    )
    part = train(
        data, out_dir=tmp_path / "part", config=TINY, steps=10, eval_every=10, eval_episodes=2, progress=False
    )
    assert part.steps == 10
    at_10, _ = load_checkpoint(part.policy_paths[0])
    resumed = train(
        data, out_dir=tmp_path / "part", steps=30, eval_every=10, eval_episodes=2, resume=True, progress=False
    )
    assert resumed.steps == 30
    a, _ = load_checkpoint(full.policy_paths[0])
    b, _ = load_checkpoint(resumed.policy_paths[0])
    for x, y in zip(_arrays(a), _arrays(b), strict=True):
        assert np.array_equal(x, y)
    # the weights really moved between updates 10 and 30, so the comparison is not vacuous
    assert not all(np.array_equal(x, y) for x, y in zip(_arrays(at_10), _arrays(b), strict=True))
    ra, rb = _rows(tmp_path / "full" / "metrics.csv"), _rows(tmp_path / "part" / "metrics.csv")
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == ["10", "20", "30"]
    for x, y in zip(ra, rb, strict=True):
        assert {k: v for k, v in x.items() if k != "wall_time_s"} == {
            k: v for k, v in y.items() if k != "wall_time_s"
        }
    assert full.eval == resumed.eval


def test_safe_episode_weights_train_and_resume_exactly(tmp_path):
    from safefql.datasets.sampler import DeviceDataset
    from safefql.training import safefql as sf

    d = boat_transitions(episodes=8, length=20, seed=5)
    assert (d.future_worst_h[::20] > 0).sum() == 2  # 2 of the 8 episodes enter a rock
    cfg = TINY.replace(reward_episodes="safe", flow_episodes="safe")
    kw = dict(config=cfg, eval_episodes=0, calib_fraction=0.0, progress=False)
    full = train(d, out_dir=tmp_path / "full", steps=20, **kw)
    train(d, out_dir=tmp_path / "part", steps=10, **kw)
    resumed = train(d, out_dir=tmp_path / "part", steps=20, resume=True, **kw)
    a, b = load_checkpoint(full.policy_paths[0])[0], load_checkpoint(resumed.policy_paths[0])[0]
    assert all(np.array_equal(x, y) for x, y in zip(_arrays(a), _arrays(b), strict=True))
    plain = train(d, out_dir=tmp_path / "plain", steps=20, **{**kw, "config": TINY})
    c = load_checkpoint(plain.policy_paths[0])[0]
    assert not all(np.array_equal(x, y) for x, y in zip(_arrays(a), _arrays(c), strict=True))
    state = sf.create_train_state(cfg, 2, 2, jax.random.key(0))
    with pytest.raises(ValueError, match="reward_episodes='safe' but the dataset has no reward_weights"):
        sf.train_steps(state, DeviceDataset.from_arrays(d), jax.random.key(1), 10)


def test_normalized_observations_are_folded_into_the_saved_policy(tmp_path):
    from safefql.training import safefql as sf

    d = boat_transitions(episodes=8, length=20, seed=7)
    d.observations[:] = d.observations * np.float32([1.0, 50.0]) + np.float32([0.0, 100.0])  # off-scale y
    d.next_observations[:] = d.next_observations * np.float32([1.0, 50.0]) + np.float32([0.0, 100.0])
    cfg = TINY.replace(normalize_observations=True)
    kw = dict(config=cfg, eval_episodes=0, calib_fraction=0.0, progress=False)
    full = train(d, out_dir=tmp_path / "full", steps=20, **kw)
    state, st_header = load_checkpoint(tmp_path / "full" / "train_state.eqx")
    mean, std = sf.observation_stats(d.observations)
    assert st_header["observation_normalization"] == {"mean": mean.tolist(), "std": std.tolist()}
    assert std[1] > 10 and std[1] == pytest.approx(d.observations[:, 1].std(), rel=1e-4)
    # the policy on raw observations == the learner's networks on standardised ones
    policy = SafeFQLPolicy.load(full.policy_paths[0])
    obs, act = d.observations[::7], d.actions[::7]
    scaled = (obs - mean) / std
    np.testing.assert_allclose(
        policy.safety_q(obs, act), sf.safety_q_value(state.agent, scaled, act), atol=1e-5
    )
    np.testing.assert_allclose(policy.safety_value(obs), sf.safety_value(state.agent, scaled), atol=1e-5)
    zero = np.zeros_like(act)
    np.testing.assert_allclose(
        policy.numpy().act(obs), sf.actor_actions(state.agent, scaled, zero), atol=1e-5
    )
    # exact resume, and a resume whose split has other statistics is refused
    train(d, out_dir=tmp_path / "part", steps=10, **kw)
    resumed = train(d, out_dir=tmp_path / "part", steps=20, resume=True, **kw)
    a, b = load_checkpoint(full.policy_paths[0])[0], load_checkpoint(resumed.policy_paths[0])[0]
    assert all(np.array_equal(x, y) for x, y in zip(_arrays(a), _arrays(b), strict=True))
    with pytest.raises(ValueError, match="observation statistics of this call's training split differ"):
        train(
            boat_transitions(episodes=8, length=20, seed=8),
            out_dir=tmp_path / "part",
            steps=30,
            resume=True,
            **kw,
        )
    # the option is not a no-op
    plain = train(d, out_dir=tmp_path / "plain", steps=20, **{**kw, "config": TINY})
    assert not np.allclose(
        policy.safety_value(obs), SafeFQLPolicy.load(plain.policy_paths[0]).safety_value(obs)
    )
    assert "observation_normalization" not in read_header(tmp_path / "plain" / "train_state.eqx")


def test_resume_and_overwrite_rules(tmp_path, data):
    with pytest.raises(FileNotFoundError, match=r"cannot resume"):
        train(data, out_dir=tmp_path / "none", config=TINY, steps=10, resume=True, progress=False)
    run = tmp_path / "run"
    train(data, out_dir=run, config=TINY, steps=10, eval_episodes=0, progress=False)
    with pytest.raises(ValueError, match=r"already holds a training run"):
        train(data, out_dir=run, config=TINY, steps=10, eval_episodes=0, progress=False)
    with pytest.raises(ValueError, match=r"seed: saved 0, now 1"):
        train(data, out_dir=run, steps=20, seed=1, eval_episodes=0, resume=True, progress=False)
    with pytest.raises(ValueError, match=r"config differs"):
        train(data, out_dir=run, config=TINY.replace(alpha=3.0), steps=20, resume=True, progress=False)
    with pytest.raises(ValueError, match=r"below the 10 updates"):
        train(data, out_dir=run, steps=5, eval_episodes=0, resume=True, progress=False)
    (run / "policy_seed3.eqx").write_bytes(b"stale")
    again = train(data, out_dir=run, config=TINY, steps=10, eval_episodes=0, overwrite=True, progress=False)
    assert again.steps == 10 and not (run / "policy_seed3.eqx").exists()


def test_train_from_a_collected_dataset_then_calibrate(tmp_path, monkeypatch):
    from safefql.datasets.collect import collect
    from safefql.training.calibration import calibrate

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    collect(BOAT_ID, None, 4, 0, "test/boat-tiny-v0", progress=False)
    run = tmp_path / "run"
    result = train("test/boat-tiny-v0", out_dir=run, config=TINY, steps=10, eval_episodes=0, progress=False)
    header = read_header(result.policy_paths[0])
    assert header["dataset_id"] == "test/boat-tiny-v0" and header["env_id"] == BOAT_ID
    assert header["split"]["train_transitions"] == 3 * 400
    cal = calibrate(result.policy_paths[0], "offline", eps=0.5, seed=0)
    assert cal.n == 1 and np.isfinite(cal.delta)
    # reuse=True finds the finished run from the dataset's metadata alone: the arrays are not loaded
    import safefql.datasets.load as load_module

    def no_load(*args, **kwargs):
        raise AssertionError("reuse loaded the dataset")

    with monkeypatch.context() as m:
        m.setattr(load_module, "load_transitions", no_load)
        again = train("test/boat-tiny-v0", out_dir=run, config=TINY, steps=10, eval_episodes=0, reuse=True)
    assert again.reused and again.policy_paths == result.policy_paths
    # without the saved file, the episodes are found again through the dataset id and the saved ids
    (run / "calib_episodes.npz").unlink()
    assert calibrate(result.policy_paths[0], "offline", eps=0.5, seed=0) == cal
    # held-action critics: the boat data holds each decision for 10 steps, so k = 10 (or 5) blocks exist
    train_held = functools.partial(
        train, config=TINY.replace(action_repeat=10), steps=10, eval_episodes=0, progress=False
    )
    held = train_held("test/boat-tiny-v0", out_dir=tmp_path / "held")
    assert read_header(held.policy_paths[0])["config"]["action_repeat"] == 10
    collect(BOAT_ID, "noisy_goal:1", 2, 0, "test/boat-unheld-v0", action_hold=1, progress=False)
    with pytest.raises(
        ValueError, match=r"action_repeat=10 needs actions held .* collect the data with action_hold"
    ):
        train_held("test/boat-unheld-v0", out_dir=tmp_path / "unheld")
    arrays = types.SimpleNamespace(**boat_transitions(episodes=2, length=20).as_dict())
    with pytest.raises(ValueError, match="action_repeat=10 needs episode structure"):
        train_held(arrays, out_dir=tmp_path / "x", calib_fraction=0)


def test_divergence_stops_with_the_loss_name_and_keeps_the_last_good_state(tmp_path):
    # finite data whose squared TD error overflows float32
    bad = boat_transitions(episodes=4, length=400, reward_scale=1e30)
    run = tmp_path / "run"
    with pytest.raises(
        TrainingDivergedError, match=r"'critic/reward_q_loss' became (inf|NaN) during updates 0\.\.10"
    ):
        train(bad, out_dir=run, config=TINY, steps=30, eval_episodes=0, progress=False)
    state, header = load_checkpoint(run / "train_state.eqx")
    assert header["training"]["step"] == 0 and int(state.step) == 0
    assert all(np.all(np.isfinite(x)) for x in _arrays(state))
    assert not (run / "policy.eqx").exists()


@pytest.mark.slow
def test_multi_seed_training_writes_one_policy_per_seed(tmp_path, data):
    result = train(
        data, out_dir=tmp_path / "m", config=TINY, steps=10, seeds=2, eval_episodes=3, progress=False
    )
    assert [p.name for p in result.policy_paths] == ["policy_seed0.eqx", "policy_seed1.eqx"]
    assert len(result.per_seed_eval) == 2 and {"return_std", "cost_std", "violation_rate_std"} <= set(
        result.eval
    )
    returns = [m["return"] for m in result.per_seed_eval]
    assert result.eval["return"] == pytest.approx(np.mean(returns))
    assert result.eval["return_std"] == pytest.approx(np.std(returns, ddof=1))
    p0, p1 = (SafeFQLPolicy.load(p) for p in result.policy_paths)
    assert read_header(result.policy_paths[1])["seed_index"] == 1
    assert not np.allclose(p0.act(np.array([0.0, 0.0])), p1.act(np.array([0.0, 0.0])))  # different seeds
    for i, p in enumerate((p0, p1)):
        assert evaluate_policy(p.numpy(), BOAT_ID, 3)["return"] == pytest.approx(returns[i])
    state, header = load_checkpoint(tmp_path / "m" / "train_state.eqx")
    assert header["num_seeds"] == 2 and np.asarray(state.step).tolist() == [10, 10]
    # finished_run finds this run for the same call, and nothing for any call that would train another
    same = {"steps": 10, "seeds": 2, "seed": 0, "dataset_id": "test/boat-random-v0", "calib_fraction": 0.1}
    found = finished_run(tmp_path / "m", TINY, **same)
    assert found is not None and found.policy_paths == result.policy_paths and found.eval == result.eval
    changes = ({"steps": 20}, {"seeds": 1}, {"seed": 1}, {"dataset_id": "x/y-v0"}, {"calib_fraction": 0.2})
    for change in changes:
        assert finished_run(tmp_path / "m", TINY, **(same | change)) is None, change
    assert finished_run(tmp_path / "m", TINY.replace(w_safe=2.0), **same) is None
    assert finished_run(tmp_path / "missing", TINY, **same) is None
    # train(reuse=True) returns that run without training; another call is refused unless overwrite=True
    before = result.policy_paths[0].stat().st_mtime_ns
    again = train(data, out_dir=tmp_path / "m", config=TINY, steps=10, seeds=2, reuse=True, progress=False)
    assert again.reused and not result.reused and again.eval == result.eval
    assert result.policy_paths[0].stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="holds a training run of another call"):
        train(data, out_dir=tmp_path / "m", config=TINY, steps=20, seeds=2, reuse=True, progress=False)
    with pytest.raises(ValueError, match="pass only one"):
        train(data, out_dir=tmp_path / "m", config=TINY, resume=True, reuse=True, progress=False)
    result.policy_paths[1].unlink()
    assert finished_run(tmp_path / "m", TINY, **same) is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, r"steps must be a positive integer"),
        ({"seeds": 0}, r"seeds must be an integer >= 1"),
        ({"calib_fraction": 1.0}, r"calib_fraction must lie in \[0, 1\)"),
        ({"eval_every": -5}, r"eval_every must be a non-negative integer"),
        ({"eval_episodes": -1}, r"eval_episodes must be an integer >= 0"),
        ({"config": {"alpha": 1.0}}, r"config must be a SafeFQLConfig"),
    ],
)
def test_train_validates_arguments(tmp_path, data, kwargs, match):
    args = {"out_dir": tmp_path / "x", "config": TINY, "steps": 10, "progress": False} | kwargs
    with pytest.raises(ValueError, match=match):
        train(data, **args)


def test_evaluate_policy_rejects_unknown_env_and_bad_episodes():
    class Zero:
        def act(self, obs, rng=None):
            return np.zeros(2, np.float32)

    with pytest.raises(ValueError, match=r"not registered"):
        evaluate_policy(Zero(), "NoSuchEnv-v9", 1)
    with pytest.raises(ValueError, match=r"episodes must be a positive integer"):
        evaluate_policy(Zero(), BOAT_ID, 0)
