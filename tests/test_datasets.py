"""safefql.datasets: boat policies, mixtures, Minari collection, loading and episode splits."""

from __future__ import annotations

import dataclasses
import json
import os

import gymnasium as gym
import h5py
import minari
import numpy as np
import pytest

from safefql.datasets import collect as collect_mod
from safefql.datasets import policies as pol
from safefql.datasets.collect import CollectSummary, EpisodeRecord, collect, write_minari_dataset
from safefql.datasets.load import (
    Transitions,
    dataset_env_id,
    dataset_identity,
    held_action_transitions,
    load_transitions,
    split_episodes,
)
from safefql.envs import BOAT_ID, boat
from safefql.envs.oracle import load_boat_oracle

EPISODES = 40
DATASET = "safefql/boat-test-v0"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory):
    """A Minari root holding one 40-episode default-mixture boat dataset (collected once per module)."""
    path = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(path))
        summary = collect(BOAT_ID, None, EPISODES, 0, DATASET, progress=False)
    return path, summary


@pytest.fixture
def env_root(root, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root[0]))
    return root


@pytest.fixture
def empty_root(tmp_path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(path))
    return path


# ------------------------------------------------------------------------------------------------
# Policies and mixtures
# ------------------------------------------------------------------------------------------------
def test_goal_and_random_policies():
    rng = np.random.default_rng(0)
    obs = np.array([[-2.0, 0.0], [1.5, 1.0], [0.0, -1.0]])
    a = pol.GoalPolicy()(obs, rng)
    assert a.dtype == np.float32 and a.shape == (3, 2)
    want = (boat.GOAL - obs) / np.linalg.norm(boat.GOAL - obs, axis=1, keepdims=True)
    np.testing.assert_allclose(a, want, atol=1e-6)
    noisy = pol.GoalPolicy(noise_std=0.5)(obs, rng)
    np.testing.assert_allclose(np.linalg.norm(noisy, axis=1), 1.0, atol=1e-6)
    assert not np.allclose(noisy, a)
    r = pol.RandomPolicy()(np.zeros((1000, 2)), rng)
    assert r.dtype == np.float32 and r.min() >= -1 and r.max() <= 1 and r.min() < -0.95 and r.max() > 0.95
    assert pol.GoalPolicy()(np.zeros((0, 2)), rng).shape == (0, 2)


def test_safe_expert_choice_and_safety():
    oracle = load_boat_oracle()
    expert = pol.SafeExpertPolicy(oracle=oracle)
    rng = np.random.default_rng(0)
    starts = oracle.safe_starts(60, seed=3)
    ang = expert.direction_angles(starts)
    nxt = boat.step_state(starts, np.stack([np.cos(ang), np.sin(ang)], -1))
    goal_ang = np.arctan2(*(boat.GOAL - starts).T[::-1])
    goal_next = boat.step_state(starts, np.stack([np.cos(goal_ang), np.sin(goal_ang)], -1))
    free = oracle.value(goal_next) <= -expert.margin
    np.testing.assert_allclose(ang[free], goal_ang[free])  # goal direction kept wherever admissible
    # Brute force over the candidates: the most goal-ward admissible one, else the lowest value.
    cand = np.concatenate([goal_ang[:, None], np.tile(2 * np.pi * np.arange(32) / 32, (60, 1))], axis=1)
    values = oracle.value(boat.step_state(starts[:, None], np.stack([np.cos(cand), np.sin(cand)], -1)))
    gap = np.abs(np.angle(np.exp(1j * (cand - goal_ang[:, None]))))
    ok = values <= -expert.margin
    chosen_gap = np.abs(np.angle(np.exp(1j * (ang - goal_ang))))
    chosen_value = oracle.value(nxt)
    has = ok.any(axis=1)
    assert 0 < has.sum() and (~free).sum() > 0
    np.testing.assert_allclose(chosen_gap[has], np.where(ok, gap, np.inf).min(axis=1)[has], atol=1e-12)
    assert np.all(chosen_value[has] <= -expert.margin)
    np.testing.assert_allclose(chosen_value[~has], values.min(axis=1)[~has])
    # From safe starts the expert never enters a rock in a whole episode; the goal policy does.
    for policy, crashes in ((expert, False), (pol.GoalPolicy(), True)):
        p, worst = starts.copy(), boat.margin(starts)
        for _ in range(boat.EPISODE_STEPS):
            p = boat.step_state(p, policy(p, rng))
            worst = np.maximum(worst, boat.margin(p))
        assert bool(np.any(worst > 0)) == crashes


def test_policy_errors():
    with pytest.raises(ValueError, match="noise_std"):
        pol.GoalPolicy(noise_std=-1.0)
    with pytest.raises(ValueError, match="margin"):
        pol.SafeExpertPolicy(margin=float("nan"))
    with pytest.raises(ValueError, match="n_candidates"):
        pol.SafeExpertPolicy(n_candidates=2)
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        pol.GoalPolicy()(np.zeros((3, 4)), np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown boat policy 'nope'"):
        pol.make_boat_policy("nope")
    assert set(pol.list_boat_policies()) == {
        "goal",
        "noisy_goal",
        "safe_expert",
        "noisy_safe_expert",
        "random",
    }


def test_mixture_parse_and_assign():
    m = pol.Mixture.parse("goal:3, random:1", available=pol.BOAT_POLICIES)
    assert m.names == ("goal", "random") and m.weights == (0.75, 0.25)
    assert pol.Mixture.parse("goal").to_dict() == {"goal": 1.0}
    idx = m.assign(10, np.random.default_rng(0))
    assert np.bincount(idx, minlength=2).tolist() in ([8, 2], [7, 3])
    idx = pol.Mixture.parse(pol.DEFAULT_BOAT_MIXTURE).assign(1000, np.random.default_rng(1))
    np.testing.assert_array_equal(np.bincount(idx), [300, 250, 100, 150, 200])
    assert np.array_equal(m.assign(50, np.random.default_rng(5)), m.assign(50, np.random.default_rng(5)))
    assert pol.Mixture.parse(str(m)) == m


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("goal:0.5,,random:0.5", "empty entry"),
        ("goal:abc", "not a number: 'abc'"),
        ("goal:-1", "must be a finite number > 0"),
        ("goal:nan", "must be a finite number > 0"),
        ("goal:0", "must be a finite number > 0"),
        ("goal:1,goal:2", "more than once"),
        (":1", "no policy name"),
        ("goal:1,teleport:1", "unknown policy 'teleport'.*available: goal"),
    ],
)
def test_mixture_errors(text, match):
    with pytest.raises(ValueError, match=match):
        pol.Mixture.parse(text, available=pol.BOAT_POLICIES)


# ------------------------------------------------------------------------------------------------
# Collection
# ------------------------------------------------------------------------------------------------
def test_collect_writes_a_listed_minari_dataset(env_root):
    path, summary = env_root
    assert DATASET in minari.list_local_datasets()
    ds = minari.load_dataset(DATASET)
    assert ds.total_episodes == EPISODES and ds.total_steps == EPISODES * boat.EPISODE_STEPS
    assert summary.episodes == EPISODES and summary.transitions == EPISODES * boat.EPISODE_STEPS
    assert summary.path == str(path / DATASET)
    ep = ds[3]
    assert ep.observations.shape == (401, 2) and ep.actions.shape == (400, 2)
    assert not ep.terminations.any() and ep.truncations[-1] and not ep.truncations[:-1].any()
    # the env can be recovered from the dataset
    env = ds.recover_environment()
    assert env.spec.id == BOAT_ID
    env.close()


def test_infos_cost_and_h_at_reset_and_steps(env_root):
    ds = minari.load_dataset(DATASET)
    returns, costs, violating = [], [], 0
    for ep in ds.iterate_episodes():
        assert set(ep.infos) == {"cost", "h"}
        assert ep.infos["h"].shape == (401,) and ep.infos["cost"].shape == (401,)
        np.testing.assert_array_equal(ep.infos["h"], boat.margin(ep.observations))
        np.testing.assert_array_equal(ep.infos["cost"], (ep.infos["h"] > 0).astype(float))
        np.testing.assert_array_equal(ep.rewards, boat.reward(ep.observations[:-1]))
        returns.append(ep.rewards.sum())
        costs.append(ep.infos["cost"][1:].sum())
        violating += bool(ep.infos["cost"].max() > 0)
    _, summary = env_root
    assert summary.mean_return == pytest.approx(np.mean(returns))
    assert summary.mean_cost == pytest.approx(np.mean(costs))
    assert summary.violating_episodes == violating
    # the default mixture gives both safe and violating episodes
    assert 0 < violating < EPISODES


def test_collected_transitions_equal_the_env(env_root):
    ds = minari.load_dataset(DATASET)
    env = gym.make(BOAT_ID)
    policies = [m["policy"] for m in ds.storage.get_episode_metadata(range(EPISODES))]
    picks = [policies.index(name) for name in ("safe_expert", "noisy_goal", "random")]
    for i in picks:
        ep = ds[i]
        obs, info = env.reset(options={"state": ep.observations[0]})
        obs_l, rew_l, h_l, cost_l = [obs], [], [info["h"]], [info["cost"]]
        for t in range(400):
            obs, r, term, trunc, info = env.step(ep.actions[t])
            obs_l.append(obs)
            rew_l.append(r)
            h_l.append(info["h"])
            cost_l.append(info["cost"])
            assert not term and trunc == (t == 399)
        np.testing.assert_allclose(np.array(obs_l), ep.observations, rtol=0, atol=1e-10)
        np.testing.assert_allclose(rew_l, ep.rewards, rtol=0, atol=1e-10)
        np.testing.assert_allclose(h_l, ep.infos["h"], rtol=0, atol=1e-10)
        np.testing.assert_array_equal(cost_l, ep.infos["cost"])
    env.close()


def test_collect_metadata(env_root):
    ds = minari.load_dataset(DATASET)
    meta = ds.storage.metadata["safefql"]
    raw = json.loads((env_root[0] / DATASET / "data" / "metadata.json").read_text())
    assert raw["safefql"] == meta  # plain JSON in Minari's metadata.json
    assert meta["env_id"] == BOAT_ID and meta["env_version"] == 0 and meta["seed"] == 0
    assert meta["behavior_policies"] == pol.Mixture.parse(pol.DEFAULT_BOAT_MIXTURE).to_dict()
    assert meta["total_episodes"] == EPISODES and meta["total_steps"] == EPISODES * 400
    assert meta["kappa"] is None and meta["h_source"] == "env"
    starts = meta["start_distribution"]
    assert starts["safe_starts"] == 8 and starts["uniform_starts"] == 32
    assert meta["violating_fraction"] + meta["safe_fraction"] == pytest.approx(1.0)
    per = meta["per_policy"]
    assert sum(v["episodes"] for v in per.values()) == EPISODES
    assert sum(v["violating_episodes"] for v in per.values()) == meta["violating_episodes"]
    ep_meta = list(ds.storage.get_episode_metadata(range(EPISODES)))
    counts = {name: sum(m["policy"] == name for m in ep_meta) for name in per}
    assert counts == {name: v["episodes"] for name, v in per.items()}
    np.testing.assert_array_equal(ep_meta[5]["options"]["state"], ds[5].observations[0])
    # safe starts (V <= -0.05) are as many as promised
    first = np.array([m["options"]["state"] for m in ep_meta])
    assert np.sum(load_boat_oracle().value(first) <= -0.05) >= 8


def test_collect_is_deterministic(empty_root):
    a = collect(BOAT_ID, "noisy_goal:1,random:1", 6, 7, "tt/a-v0", progress=False)
    b = collect(BOAT_ID, "noisy_goal:1,random:1", 6, 7, "tt/b-v0", progress=False)
    c = collect(BOAT_ID, "noisy_goal:1,random:1", 6, 8, "tt/c-v0", progress=False)
    ta, tb, tc = (load_transitions(x) for x in ("tt/a-v0", "tt/b-v0", "tt/c-v0"))
    for key in ("observations", "actions", "h"):
        np.testing.assert_array_equal(getattr(ta, key), getattr(tb, key))
    assert not np.array_equal(ta.observations, tc.observations)
    assert a.mean_return == b.mean_return != c.mean_return


def test_collect_refuses_existing_unless_overwrite(empty_root):
    collect(BOAT_ID, "goal:1", 2, 0, "tt/x-v0", progress=False)
    with pytest.raises(FileExistsError, match="'tt/x-v0' already exists"):
        collect(BOAT_ID, "goal:1", 3, 0, "tt/x-v0", progress=False)
    assert minari.load_dataset("tt/x-v0").total_episodes == 2
    s = collect(BOAT_ID, "goal:1", 3, 0, "tt/x-v0", overwrite=True, progress=False)
    assert s.episodes == 3 and minari.load_dataset("tt/x-v0").total_episodes == 3


def _raising_random(after_calls: int):
    calls = {"n": 0}

    class Boom(pol.RandomPolicy):
        def __call__(self, obs, rng):
            calls["n"] += 1
            if calls["n"] > after_calls:
                raise KeyboardInterrupt("simulated Ctrl-C")
            return super().__call__(obs, rng)

    return pol.PolicySpec(lambda **kw: Boom(), "raises mid-way")


def test_interrupted_collection_leaves_no_dataset(empty_root, monkeypatch):
    # chunks of 2 episodes: the policy (asked every 10 steps: 40 calls a chunk) fails in the 3rd chunk,
    # after 2 chunks were written to the temp dir
    monkeypatch.setitem(pol.BOAT_POLICIES, "random", _raising_random(after_calls=2 * 40 + 1))
    with pytest.raises(KeyboardInterrupt):
        collect(BOAT_ID, "random:1", 8, 0, "tt/broken-v0", progress=False, chunk_episodes=2)
    assert not (empty_root / "tt" / "broken-v0").exists()
    assert "tt/broken-v0" not in minari.list_local_datasets()
    assert [p.name for p in (empty_root / "tt").iterdir()] == ["namespace_metadata.json"]
    # an interrupted overwrite keeps the old dataset intact
    monkeypatch.setitem(pol.BOAT_POLICIES, "random", pol.PolicySpec(lambda **kw: pol.RandomPolicy(), ""))
    collect(BOAT_ID, "random:1", 2, 0, "tt/kept-v0", progress=False)
    monkeypatch.setitem(pol.BOAT_POLICIES, "random", _raising_random(after_calls=40 + 1))
    with pytest.raises(KeyboardInterrupt):
        collect(BOAT_ID, "random:1", 6, 0, "tt/kept-v0", progress=False, chunk_episodes=2, overwrite=True)
    assert minari.load_dataset("tt/kept-v0").total_episodes == 2
    assert sorted(p.name for p in (empty_root / "tt").iterdir()) == ["kept-v0", "namespace_metadata.json"]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"env_id": "NoSuchEnv-v9"}, ValueError, "unknown env id 'NoSuchEnv-v9'"),
        ({"mixture": "goal:1,warp:1"}, ValueError, "unknown policy 'warp'"),
        ({"mixture": "goal:-2"}, ValueError, "finite number > 0"),
        ({"episodes": 0}, ValueError, "episodes must be a positive integer"),
        ({"seed": -1}, ValueError, "seed must be a non-negative integer"),
        ({"dataset_id": "no-version"}, ValueError, "invalid dataset id 'no-version'"),
        ({"kappa": 0.0}, ValueError, "kappa must be"),
        ({"safe_start_fraction": 1.5}, ValueError, "safe_start_fraction"),
        ({"chunk_episodes": 0}, ValueError, "chunk_episodes"),
        ({"action_hold": 0}, ValueError, "action_hold must be a positive integer"),
    ],
)
def test_collect_errors(empty_root, kwargs, exc, match):
    args = {"env_id": BOAT_ID, "mixture": "goal:1", "episodes": 2, "seed": 0, "dataset_id": "tt/e-v0"}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        collect(**args, progress=False)
    assert not (empty_root / "tt" / "e-v0").exists()


def test_policy_returning_bad_actions_is_named(empty_root, monkeypatch):
    bad = pol.PolicySpec(lambda **kw: lambda obs, rng: np.full((len(obs), 2), 2.0, np.float32), "")
    monkeypatch.setitem(pol.BOAT_POLICIES, "random", bad)
    with pytest.raises(ValueError, match="policy 'random' returned actions outside"):
        collect(BOAT_ID, "random:1", 2, 0, "tt/bad-v0", progress=False)


class _TinyCostEnv(gym.Env):
    """A 1-D walk with a binary cost and no h (so the collector builds the kappa surrogate)."""

    observation_space = gym.spaces.Box(-10.0, 10.0, (1,), np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = float(self.np_random.uniform(-1, 1))
        return np.array([self.x]), {"cost": float(self.x > 0.5)}

    def step(self, action):
        self.x = float(np.clip(self.x + float(action[0]), -10, 10))
        return np.array([self.x]), -abs(self.x), False, False, {"cost": float(self.x > 0.5)}


def test_live_env_path_with_surrogate_h(empty_root):
    if "safefql_test/TinyCost-v0" not in gym.registry:
        gym.register("safefql_test/TinyCost-v0", entry_point=_TinyCostEnv, max_episode_steps=7)
    s = collect("safefql_test/TinyCost-v0", None, 5, 1, "tt/tiny-v0", kappa=4.0, progress=False)
    assert s.episodes == 5 and s.transitions == 35
    ds = minari.load_dataset("tt/tiny-v0")
    for ep in ds.iterate_episodes():
        np.testing.assert_array_equal(ep.infos["cost"], (ep.observations[:, 0] > 0.5).astype(float))
        np.testing.assert_array_equal(ep.infos["h"], np.where(ep.observations[:, 0] > 0.5, 4.0, -1.0))
        assert ep.truncations[-1]
    meta = ds.storage.metadata["safefql"]
    assert meta["kappa"] == 4.0 and meta["h_source"] == "surrogate"
    assert ds.env_spec is None  # a callable entry point cannot be stored; the id is in our metadata
    assert load_transitions("tt/tiny-v0").metadata["env_id"] == "safefql_test/TinyCost-v0"
    assert meta["behavior_policies"] == {"random": 1.0}
    with pytest.raises(ValueError, match="unknown policy 'goal'"):
        collect("safefql_test/TinyCost-v0", "goal:1", 1, 0, "tt/tiny2-v0", progress=False)


def test_summary_table_and_dict(env_root):
    from rich.console import Console

    _, summary = env_root
    d = summary.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert CollectSummary(**d) == summary
    console = Console(record=True, width=120)
    summary.print(console)
    text = console.export_text()
    assert "safe_expert" in text and f"{summary.violating_fraction:.3f}" in text and str(EPISODES) in text


# ------------------------------------------------------------------------------------------------
# Loading and splitting
# ------------------------------------------------------------------------------------------------
def test_load_transitions_arrays(env_root):
    t = load_transitions(DATASET)
    n = EPISODES * 400
    assert len(t) == n and t.num_episodes == EPISODES and t.obs_dim == 2 and t.act_dim == 2
    assert t.observations.dtype == np.float32 and t.episode_ids.dtype == np.int64
    same_ep = t.episode_ids[1:] == t.episode_ids[:-1]
    np.testing.assert_array_equal(t.next_observations[:-1][same_ep], t.observations[1:][same_ep])
    np.testing.assert_array_equal(t.masks, 1.0 - t.terminals)
    assert t.terminals.sum() == 0 and t.timeouts.sum() == EPISODES
    np.testing.assert_array_equal(np.flatnonzero(t.timeouts), np.arange(1, EPISODES + 1) * 400 - 1)
    np.testing.assert_allclose(t.h, boat.margin(t.observations.astype(np.float64)), atol=1e-6)
    np.testing.assert_array_equal(t.costs, (t.h > 0).astype(np.float32))
    assert t.metadata["env_id"] == BOAT_ID and t.metadata["dataset_id"] == DATASET
    assert t.metadata["behavior_policies"]["safe_expert"] == pytest.approx(0.3)
    # future_worst_h against a brute force on one episode (states t..T, the final one included)
    ds = minari.load_dataset(DATASET)
    ep = ds[7]
    brute = np.array([ep.infos["h"][i:].max() for i in range(400)], dtype=np.float32)
    np.testing.assert_array_equal(t.future_worst_h[t.episode_ids == 7], brute)
    # both readers agree
    tm = load_transitions(DATASET, reader="minari")
    for key in Transitions.__dataclass_fields__:
        if key != "metadata":
            np.testing.assert_array_equal(getattr(t, key), getattr(tm, key), err_msg=key)
    # paths work too
    tp = load_transitions(env_root[0] / DATASET / "data" / "main_data.hdf5")
    np.testing.assert_array_equal(tp.actions, t.actions)
    assert set(t.as_dict()) == set(Transitions.__dataclass_fields__) - {"metadata"}


def _write_episodes(dataset_id: str, episodes: list[EpisodeRecord]) -> None:
    write_minari_dataset(
        dataset_id,
        episodes,
        env_id=BOAT_ID,
        observation_space=gym.spaces.Box(-5, 5, (2,), np.float64),
        action_space=gym.spaces.Box(-1, 1, (2,), np.float32),
        metadata={"note": "hand-made"},
        progress=False,
    )


def _episode(h: list[float], terminal: bool = False) -> EpisodeRecord:
    steps = len(h) - 1
    obs = np.stack([np.arange(steps + 1.0), np.zeros(steps + 1)], -1)
    term = np.zeros(steps, bool)
    trunc = np.zeros(steps, bool)
    (term if terminal else trunc)[-1] = True
    return EpisodeRecord(
        observations=obs,
        actions=np.zeros((steps, 2), np.float32),
        rewards=-np.arange(steps, dtype=float),
        terminations=term,
        truncations=trunc,
        cost=(np.array(h) > 0).astype(float),
        h=np.array(h, float),
    )


def test_future_worst_h_and_masks_on_hand_made_episodes(empty_root):
    _write_episodes(
        "tt/hand-v0", [_episode([-1, 2, 0.5, -3, -2, -4]), _episode([-3, -5, 1.5], terminal=True)]
    )
    t = load_transitions("tt/hand-v0")
    np.testing.assert_array_equal(t.future_worst_h, [2, 2, 0.5, -2, -2, 1.5, 1.5])
    np.testing.assert_array_equal(t.h, [-1, 2, 0.5, -3, -2, -3, -5])
    np.testing.assert_array_equal(t.costs, [0, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(t.terminals, [0, 0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(t.masks, [1, 1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(t.timeouts, [0, 0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(t.episode_ids, [0, 0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(t.next_observations[:, 0], [1, 2, 3, 4, 5, 1, 2])
    assert t.metadata["note"] == "hand-made"


def test_held_action_transitions_on_hand_made_episodes(empty_root):
    _write_episodes(
        "tt/hold-v0", [_episode([-1, 2, 0.5, -3, -2, -4]), _episode([-3, -5, 1.5], terminal=True)]
    )
    t = load_transitions("tt/hold-v0")
    # k = 2: blocks at steps 0 and 2 of episode 0 (its 1-step tail ends in a truncation: dropped), and
    # the whole episode 1, whose last step is terminal.
    b = held_action_transitions(t, 2, gamma=0.5)
    np.testing.assert_array_equal(b["observations"][:, 0], [0, 2, 0])
    np.testing.assert_array_equal(b["next_observations"][:, 0], [2, 4, 2])
    np.testing.assert_array_equal(b["rewards"], [0 - 0.5 * 1, -2 - 0.5 * 3, 0 - 0.5 * 1])
    np.testing.assert_array_equal(b["h"], [[-1, 2], [0.5, -3], [-3, -5]])
    np.testing.assert_array_equal(b["masks"], [1, 1, 0])
    np.testing.assert_array_equal(b["costs"], [1, 1, 0])
    np.testing.assert_array_equal(b["episode_ids"], [0, 0, 1])
    # k = 3: episode 1 is shorter than a block and ends in a terminal, so it is padded with its last margin.
    b = held_action_transitions(t, 3, gamma=0.5)
    np.testing.assert_array_equal(b["h"], [[-1, 2, 0.5], [-3, -5, -5]])
    np.testing.assert_array_equal(b["rewards"], [0 - 0.5 * 1 - 0.25 * 2, -0.5])
    np.testing.assert_array_equal(b["masks"], [1, 0])
    plain = held_action_transitions(t, 1, gamma=0.5)
    np.testing.assert_array_equal(plain["h"][:, 0], t.h)
    np.testing.assert_array_equal(plain["rewards"], t.rewards)
    # an action that changes inside a block: the data was not collected with held actions
    actions = t.actions.copy()
    actions[1] = 0.5
    moved = dataclasses.replace(t, actions=actions)
    with pytest.raises(ValueError, match=r"action_repeat=2 .* episode 0 changes its action .* step 0"):
        held_action_transitions(moved, 2, gamma=0.5)
    held_action_transitions(moved, 1, gamma=0.5)  # one step per block: nothing to hold
    with pytest.raises(ValueError, match="positive integer"):
        held_action_transitions(t, 0, gamma=0.5)


def test_device_dataset_safe_episode_weights(empty_root):
    from safefql.training.config import SafeFQLConfig
    from safefql.training.trainer import device_dataset

    # episode 0 enters the failure set at step 1; episode 2 only in its final (terminal) next state
    _write_episodes(
        "tt/rw-v0",
        [
            _episode([-1, 2, 0.5, -3, -2]),
            _episode([-3, -5, -2, -1, -4]),
            _episode([-1, -2, 1.5], terminal=True),
        ],
    )
    t = load_transitions("tt/rw-v0")
    plain = SafeFQLConfig(reward_episodes="safe")
    d = device_dataset(t, plain)
    np.testing.assert_array_equal(np.asarray(d.reward_weights), [0, 0, 0, 0, 1, 1, 1, 1, 0, 0])
    held = device_dataset(t, plain.replace(action_repeat=2))  # blocks: 2 of episode 0, 2 of 1, 1 of 2
    np.testing.assert_array_equal(np.asarray(held.reward_weights), [0, 0, 1, 1, 0])
    assert device_dataset(t, SafeFQLConfig()).reward_weights is None  # the default: every episode
    assert held.flow_weights is None
    flow = device_dataset(t, SafeFQLConfig(flow_episodes="safe"))
    assert flow.reward_weights is None
    np.testing.assert_array_equal(np.asarray(flow.flow_weights), np.asarray(d.reward_weights))
    arrays = {
        k: getattr(t, k) for k in ("observations", "actions", "rewards", "h", "next_observations", "masks")
    }
    with pytest.raises(ValueError, match="reward_episodes='safe' needs episode structure"):
        device_dataset(arrays, plain)
    _write_episodes("tt/rw-bad-v0", [_episode([-1, 2, -1]), _episode([1, -1])])
    with pytest.raises(ValueError, match="every episode of the dataset enters the failure set"):
        device_dataset(load_transitions("tt/rw-bad-v0"), plain)
    with pytest.raises(ValueError, match="flow_episodes='safe' needs episode structure"):
        device_dataset(arrays, SafeFQLConfig(flow_episodes="safe"))
    # "recovering": the safe episodes plus the steps inside the failure set that lower h
    # (episode 0: 2 -> 0.5 and 0.5 -> -3; episode 2's step into 1.5 goes in, not out)
    recovering = SafeFQLConfig(flow_episodes="recovering")
    rec = device_dataset(t, recovering)
    np.testing.assert_array_equal(np.asarray(rec.flow_weights), [0, 1, 1, 0, 1, 1, 1, 1, 0, 0])
    assert rec.reward_weights is None
    from types import SimpleNamespace

    from safefql.training.trainer import recovery_steps

    rows = SimpleNamespace(h=np.array([1.0, 0.5, 2.0, 0.1]), episode_ids=np.array([0, 0, 0, 1]))
    np.testing.assert_array_equal(recovery_steps(rows), [1, 0, 0, 0])  # no step across episodes
    with pytest.raises(ValueError, match="'recovering' weighs single steps; it needs action_repeat=1"):
        device_dataset(t, recovering.replace(action_repeat=2))
    with pytest.raises(ValueError, match="reward_episodes must be one of"):
        SafeFQLConfig(reward_episodes="recovering")


def test_collected_boat_actions_are_held(env_root):
    t = load_transitions(DATASET)
    assert t.metadata["action_hold"] == collect_mod.BOAT_ACTION_HOLD == 10
    blocks = t.actions.reshape(EPISODES, 400 // 10, 10, 2)
    assert np.all(blocks == blocks[:, :, :1])  # constant inside every 10-step block
    assert np.mean(np.any(blocks[:, 1:, 0] != blocks[:, :-1, 0], axis=-1)) > 0.5  # and re-decided between
    b = held_action_transitions(t, 5, gamma=0.99)  # any divisor of the hold works
    assert b["h"].shape == (EPISODES * 80, 5)
    with pytest.raises(ValueError, match="collect the data with action_hold=4"):
        held_action_transitions(t, 4, gamma=0.99)


def test_collect_action_hold_one_redecides_every_step(empty_root):
    collect(BOAT_ID, "noisy_goal:1", 2, 0, "tt/nohold-v0", action_hold=1, progress=False)
    t = load_transitions("tt/nohold-v0")
    assert t.metadata["action_hold"] == 1
    assert np.all(np.any(t.actions[1:] != t.actions[:-1], axis=1))


def test_split_episodes(env_root):
    t = load_transitions(DATASET)
    train, calib = split_episodes(t, 0.25, seed=3)
    tr_ids, ca_ids = set(np.unique(train.episode_ids)), set(np.unique(calib.episode_ids))
    assert not tr_ids & ca_ids and tr_ids | ca_ids == set(range(EPISODES))
    assert calib.num_episodes == 10 and train.num_episodes == 30
    assert len(train) + len(calib) == len(t)
    again = split_episodes(t, 0.25, seed=3)[1]
    np.testing.assert_array_equal(again.episode_ids, calib.episode_ids)
    assert not np.array_equal(split_episodes(t, 0.25, seed=4)[1].episode_ids, calib.episode_ids)
    # transitions stay whole episodes, in order
    sel = t.select_episodes([4, 2])
    np.testing.assert_array_equal(sel.observations, t.observations[np.isin(t.episode_ids, [2, 4])])
    np.testing.assert_array_equal(sel.episode_starts(), [0, 400])
    with pytest.raises(ValueError, match=r"not in these transitions: \[99\]"):
        t.select_episodes([1, 99])
    for frac in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="calib_fraction must lie strictly between 0 and 1"):
            split_episodes(t, frac, seed=0)
    with pytest.raises(ValueError, match="cannot split 1 episode"):
        split_episodes(t.select_episodes([0]), 0.5, seed=0)


def test_load_errors(env_root, tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"'safefql/nope-v0' not found.*local datasets: .*boat-test-v0"
    ):
        load_transitions("safefql/nope-v0")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a Minari dataset directory"):
        load_transitions(tmp_path / "empty")
    with pytest.raises(ValueError, match="reader must be"):
        load_transitions(DATASET, reader="fast")


def test_dataset_identity_reads_only_the_metadata(env_root, tmp_path):
    assert dataset_identity(DATASET) == (DATASET, BOAT_ID)
    assert dataset_env_id(DATASET) == BOAT_ID
    bare = tmp_path / "bare" / "data"
    bare.mkdir(parents=True)
    (bare / "metadata.json").write_text(json.dumps({"dataset_id": "bare-v0", "env_spec": None}))
    assert dataset_identity(tmp_path / "bare") == ("bare-v0", None)
    with pytest.raises(ValueError, match="dataset 'bare-v0' does not record its env id"):
        dataset_env_id(tmp_path / "bare")
    (bare / "metadata.json").write_text("{not json")
    with pytest.raises(ValueError, match="metadata.json: not valid JSON"):
        dataset_env_id(tmp_path / "bare")


@pytest.mark.filterwarnings("ignore:env_spec is None")
def test_load_rejects_datasets_without_signals_or_with_bad_shapes(empty_root):
    from minari.data_collector import EpisodeBuffer

    obs = np.zeros((4, 2))
    buf = EpisodeBuffer(
        observations=obs,
        actions=np.zeros((3, 2), np.float32),
        rewards=np.zeros(3),
        terminations=np.zeros(3, bool),
        truncations=np.array([False, False, True]),
        infos={"other": np.zeros(4)},
    )
    spaces = {
        "observation_space": gym.spaces.Box(-5, 5, (2,), np.float64),
        "action_space": gym.spaces.Box(-1, 1, (2,), np.float32),
        "algorithm_name": "x",
        "author": "x",
        "author_email": "x",
        "code_permalink": "x",
        "description": "x",
        "eval_env": BOAT_ID,
    }
    minari.create_dataset_from_buffers("tt/nosig-v0", [buf], **spaces)
    for reader in ("hdf5", "minari"):
        with pytest.raises(ValueError, match=r"dataset tt/nosig-v0 has no cost/h signals.*--kappa"):
            load_transitions("tt/nosig-v0", reader=reader)
    # infos["h"] one entry short
    _write_episodes("tt/short-v0", [_episode([-1, -1, -1])])
    f = empty_root / "tt" / "short-v0" / "data" / "main_data.hdf5"
    with h5py.File(f, "a") as hf:
        del hf["episode_0/infos/h"]
        hf["episode_0/infos/h"] = np.zeros(2)
    with pytest.raises(ValueError, match=r"'infos/h' has shape \(2,\), expected \(3,\)"):
        load_transitions("tt/short-v0")


def test_writer_validates_episodes(empty_root):
    bad = _episode([-1, -1, -1])
    bad.cost = np.zeros(2)
    with pytest.raises(ValueError, match=r"episode 0: 'infos/cost' has shape \(2,\)"):
        _write_episodes("tt/w-v0", [bad])
    assert not (empty_root / "tt" / "w-v0").exists()
    with pytest.raises(ValueError, match="no episodes"):
        _write_episodes("tt/w-v0", [])
    assert not (empty_root / "tt" / "w-v0").exists()


def test_transitions_validation():
    n = 3
    arrays = {k: np.zeros(n, np.float32) for k in Transitions.__dataclass_fields__ if k != "metadata"}
    for k in ("observations", "actions", "next_observations"):
        arrays[k] = np.zeros((n, 2), np.float32)
    Transitions(**arrays)
    with pytest.raises(ValueError, match=r"Transitions.rewards has length 2, expected 3"):
        Transitions(**{**arrays, "rewards": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match=r"Transitions.next_observations has shape \(3, 4\)"):
        Transitions(**{**arrays, "next_observations": np.zeros((3, 4), np.float32)})
    with pytest.raises(ValueError, match="Transitions.h must have 1 dimensions"):
        Transitions(**{**arrays, "h": np.zeros((3, 1), np.float32)})


def test_dataset_ids_and_default_id():
    assert collect_mod.default_dataset_id(BOAT_ID) == "safefql/BoatNav-mixed-v0"
    assert (
        collect_mod.default_dataset_id("SafetyPointGoal1Gymnasium-v0")
        == "safefql/SafetyPointGoal1Gymnasium-mixed-v0"
    )
    for good in ("a-v0", "ns/a-v12", "x/y/z_1-v3"):
        assert collect_mod.validate_dataset_id(good) == good
    for bad in ("a", "a-v", "/a-v0", "a b-v0", "a-v0/"):
        with pytest.raises(ValueError, match="invalid dataset id"):
            collect_mod.validate_dataset_id(bad)
    assert os.fspath(collect_mod.datasets_root()) != ""


@pytest.mark.slow
def test_safety_gym_live_collection(empty_root):
    """One PointGoal1 episode through gym.make with a scripted policy; kappa reaches the env's surrogate h."""
    env_id = "SafetyPointGoal1Gymnasium-v0"
    assert "hazard_aware" in collect_mod.available_policies(env_id)
    s = collect(env_id, "hazard_aware:1", 1, 0, "tt/pg-v0", kappa=7.0, progress=False)
    assert s.episodes == 1 and s.transitions == 1000
    ds = minari.load_dataset("tt/pg-v0")
    ep = ds[0]
    assert ep.observations.shape == (1001, 60) and ep.infos["h"].shape == (1001,)
    np.testing.assert_array_equal(ep.infos["h"], np.where(ep.infos["cost"] > 0, 7.0, -1.0))
    assert ep.truncations[-1]
    meta = ds.storage.metadata["safefql"]
    assert meta["kappa"] == 7.0 and meta["h_source"].startswith("surrogate")
    assert list(ds.storage.get_episode_metadata([0]))[0]["policy"] == "hazard_aware"
