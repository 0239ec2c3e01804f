"""safefql.datasets.hdf5_import: DSRL-style flat HDF5 -> Minari dataset with cost/h infos."""

from __future__ import annotations

from pathlib import Path

import h5py
import minari
import numpy as np
import pytest

from safefql.datasets.hdf5_import import episode_ends, import_hdf5
from safefql.datasets.load import load_transitions
from safefql.envs import BOAT_ID, boat

LENGTHS = (5, 7, 4)  # episode lengths; the 2nd ends in a terminal, the others in timeouts


def _dsrl_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Three boat episodes in DSRL's flat layout (costs[t] belongs to next_observations[t])."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {k: [] for k in ("observations", "actions", "rewards", "next_observations")}
    terminals, timeouts = [], []
    for e, n in enumerate(LENGTHS):
        p = rng.uniform([-1.0, -1.5], [0.0, 1.0])
        for t in range(n):
            a = rng.uniform(-1, 1, 2).astype(np.float32)
            q = boat.step_state(p, a) if t else np.array([-0.5, 0.45])  # first step lands in a rock
            parts["observations"].append(p)
            parts["actions"].append(a)
            parts["rewards"].append(float(boat.reward(p)))
            parts["next_observations"].append(q)
            terminals.append(e == 1 and t == n - 1)
            timeouts.append(e != 1 and t == n - 1)
            p = q
    out = {k: np.asarray(v) for k, v in parts.items()}
    out["costs"] = (boat.margin(out["next_observations"]) > 0).astype(np.float32)
    out["terminals"] = np.asarray(terminals, np.float32)
    out["timeouts"] = np.asarray(timeouts, np.float32)
    return out


def _write(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
    return path


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


def test_import_with_surrogate_h(tmp_path, root):
    arrays = _dsrl_arrays()
    src = _write(tmp_path / "boat.hdf5", arrays)
    s = import_hdf5(src, BOAT_ID, "imp/boat-v0", kappa=10.0, progress=False)
    assert s.episodes == 3 and s.transitions == sum(LENGTHS)
    assert "imp/boat-v0" in minari.list_local_datasets()
    ds = minari.load_dataset("imp/boat-v0")
    start = 0
    for ep, n in zip(ds.iterate_episodes(), LENGTHS, strict=True):
        sl = slice(start, start + n)
        np.testing.assert_array_equal(ep.observations[:-1], arrays["observations"][sl])
        np.testing.assert_array_equal(ep.observations[1:], arrays["next_observations"][sl])
        np.testing.assert_array_equal(ep.actions, arrays["actions"][sl])
        np.testing.assert_array_equal(ep.rewards, arrays["rewards"][sl])
        # costs[t] describes next_observations[t] -> infos index t + 1; the reset state gets 0 / -1
        np.testing.assert_array_equal(ep.infos["cost"], np.r_[0.0, arrays["costs"][sl]])
        np.testing.assert_array_equal(
            ep.infos["h"], np.r_[-1.0, np.where(arrays["costs"][sl] > 0, 10.0, -1.0)]
        )
        np.testing.assert_array_equal(ep.terminations, arrays["terminals"][sl].astype(bool))
        np.testing.assert_array_equal(ep.truncations, arrays["timeouts"][sl].astype(bool))
        start += n
    meta = ds.storage.metadata["safefql"]
    assert meta["kappa"] == 10.0 and meta["h_source"] == "surrogate" and meta["reset_state_h"] == -1.0
    assert meta["source_file"] == str(src.resolve()) and meta["unflagged_breaks"] == 0
    assert meta["violating_episodes"] == 3  # each episode's first step lands in a rock
    t = load_transitions("imp/boat-v0")
    assert len(t) == sum(LENGTHS) and t.metadata["kappa"] == 10.0
    np.testing.assert_array_equal(t.masks, 1 - arrays["terminals"])
    np.testing.assert_array_equal(t.next_observations, arrays["next_observations"].astype(np.float32))
    assert t.h[0] == -1.0 and t.h[1] == 10.0 and t.future_worst_h[0] == 10.0


def test_import_uses_h_from_file_and_splits_unflagged_breaks(tmp_path, root):
    arrays = _dsrl_arrays()
    arrays["h"] = boat.margin(arrays["next_observations"])
    arrays["timeouts"][4] = 0.0  # the 1st episode's end is no longer flagged: found by the obs break
    src = _write(tmp_path / "h.hdf5", arrays)
    import_hdf5(src, BOAT_ID, "imp/h-v0", progress=False)
    ds = minari.load_dataset("imp/h-v0")
    assert ds.total_episodes == 3
    ep = ds[0]
    np.testing.assert_allclose(ep.infos["h"][1:], boat.margin(ep.observations[1:]))
    assert ep.truncations[-1] and not ep.terminations.any()
    meta = ds.storage.metadata["safefql"]
    assert meta["h_source"] == "file" and meta["kappa"] is None and meta["unflagged_breaks"] == 1
    # the file's end closes the last episode even without a flag
    ends, truncated, breaks = episode_ends({**arrays, "timeouts": np.zeros_like(arrays["timeouts"])})
    np.testing.assert_array_equal(ends, [4, 11, 15])
    np.testing.assert_array_equal(truncated, [True, False, True])
    assert breaks == 1  # index 4; the file end is not counted as a break


def test_import_refuses_existing_id(tmp_path, root):
    src = _write(tmp_path / "boat.hdf5", _dsrl_arrays())
    import_hdf5(src, BOAT_ID, "imp/x-v0", progress=False)
    with pytest.raises(FileExistsError, match="'imp/x-v0' already exists"):
        import_hdf5(src, BOAT_ID, "imp/x-v0", progress=False)
    import_hdf5(src, BOAT_ID, "imp/x-v0", overwrite=True, kappa=3.0, progress=False)
    assert minari.load_dataset("imp/x-v0").storage.metadata["safefql"]["kappa"] == 3.0


def test_import_file_errors(tmp_path, root):
    missing = tmp_path / "missing.hdf5"
    with pytest.raises(FileNotFoundError, match="missing.hdf5"):
        import_hdf5(missing, BOAT_ID, "imp/e-v0", progress=False)
    text = tmp_path / "notes.hdf5"
    text.write_text("not an hdf5 file\n" * 100)
    with pytest.raises(ValueError, match=r"notes.hdf5: not a readable HDF5 file"):
        import_hdf5(text, BOAT_ID, "imp/e-v0", progress=False)
    # a real file cut in half
    good = _write(tmp_path / "good.hdf5", _dsrl_arrays())
    data = good.read_bytes()
    cut = tmp_path / "cut.hdf5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut.hdf5: .*(truncated or corrupt)"):
        import_hdf5(cut, BOAT_ID, "imp/e-v0", progress=False)
    with pytest.raises(ValueError, match="is not a file"):
        import_hdf5(tmp_path, BOAT_ID, "imp/e-v0", progress=False)
    assert not (root / "imp" / "e-v0").exists()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a: a.pop("costs"), r"missing key 'costs' \(found keys: \['actions'"),
        (lambda a: a.pop("timeouts"), "missing key 'timeouts'"),
        (
            lambda a: a.update(rewards=a["rewards"][:-1]),
            r"'rewards' has length 15, but 'observations' has 16",
        ),
        (lambda a: a.update(h=np.zeros(3)), r"'h' has length 3"),
        (
            lambda a: a.update(actions=a["actions"][:, :1]),
            r"'actions' rows have shape \(1,\).*expects \(2,\)",
        ),
        (
            lambda a: a.update(observations=a["observations"][:, None]),
            r"'observations' must have 2 dimension",
        ),
        (lambda a: a.update(costs=np.full(16, np.nan)), "'costs' has non-finite values"),
    ],
)
def test_import_content_errors(tmp_path, root, change, match):
    arrays = _dsrl_arrays()
    change(arrays)
    src = _write(tmp_path / "bad.hdf5", arrays)
    with pytest.raises(ValueError, match=match) as info:
        import_hdf5(src, BOAT_ID, "imp/e-v0", progress=False)
    assert "bad.hdf5" in str(info.value)
    assert not (root / "imp" / "e-v0").exists()


def test_import_argument_errors(tmp_path, root):
    src = _write(tmp_path / "boat.hdf5", _dsrl_arrays())
    with pytest.raises(ValueError, match="unknown env id 'Nope-v3'"):
        import_hdf5(src, "Nope-v3", "imp/e-v0", progress=False)
    with pytest.raises(ValueError, match="kappa must be a finite number > 0"):
        import_hdf5(src, BOAT_ID, "imp/e-v0", kappa=-1.0, progress=False)
    with pytest.raises(ValueError, match="invalid dataset id"):
        import_hdf5(src, BOAT_ID, "no version", progress=False)
    with h5py.File(tmp_path / "group.hdf5", "w") as f:
        for k, v in _dsrl_arrays().items():
            f.create_dataset(k, data=v)
        del f["rewards"]
        f.create_group("rewards")
    with pytest.raises(ValueError, match="'rewards' is a group"):
        import_hdf5(tmp_path / "group.hdf5", BOAT_ID, "imp/e-v0", progress=False)
