"""Regenerate the README's results section from ``benchmarks/results/*.json``.

Replaces the text between ``<!-- results:start -->`` and ``<!-- results:end -->`` in ``README.md`` with one
subsection per benchmark JSON that exists (envs, collect, boat, latency, shield, safety_gym); a missing one
gets a line naming the command that produces it. Each table states the command that reproduces it and the
machine it ran on (both read from the JSON), and PNGs in the results folder are linked where they exist.
Safety-Gymnasium runs stored under a tag (variants of a task's main run) get one summary row each in the
README; their full tables go to ``docs/safety_gym_variants.md``, which is generated too.
Every number comes from the JSON files; missing keys render as ``n/a``. The output depends only on those
files, so ``--check`` can tell whether the README or the variants page is stale (exit 1) without writing::

    uv run python benchmarks/make_readme.py            # rewrite the section (atomically)
    uv run python benchmarks/make_readme.py --check    # exit 1 if the section differs from what it writes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_RESULTS = HERE / "results"
DEFAULT_README = HERE.parent / "README.md"
START = "<!-- results:start -->"
END = "<!-- results:end -->"
SELF_COMMAND = "uv run python benchmarks/make_readme.py"


# ------------------------------------------------------------------------------------------- helpers
def _get(d: Any, *keys: Any, default: Any = None) -> Any:
    """``d[k1][k2]...`` or ``default`` when any level is missing or not a mapping/list."""
    for k in keys:
        try:
            d = d[k]
        except (KeyError, IndexError, TypeError):
            return default
    return d


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, int | float):
        return float(x)
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            return None
    return None


def _f(x: Any, spec: str = ".3g") -> str:
    """Format a number (``n/a`` if missing or not numeric; ``inf`` as written)."""
    v = _num(x)
    if v is None:
        return "n/a" if x is None or not isinstance(x, str) else _cell(x)
    if not math.isfinite(v):
        return str(v)
    return format(v, spec)


def _pm(agg: Any, key: str, spec: str = ".1f") -> str:
    """``mean ± std`` from ``{key}_mean`` / ``{key}_std`` of an aggregate dict."""
    mean, std = _get(agg, f"{key}_mean"), _get(agg, f"{key}_std")
    if _num(mean) is None:
        return "n/a"
    return _f(mean, spec) + ("" if _num(std) is None else f" ± {_f(std, spec)}")


def _cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def md_table(headers: list[str], rows: list[list[Any]], align: str | None = None) -> list[str]:
    """A GitHub markdown table; ``align`` is one char per column (``l`` or ``r``; default: first l)."""
    align = align or ("l" + "r" * (len(headers) - 1))
    sep = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def machine_line(d: dict[str, Any]) -> str:
    """One line describing the machine a JSON was produced on."""
    m = _get(d, "machine", default={}) or {}
    if not isinstance(m, dict) or not m:
        return "Machine: not recorded."
    parts = []
    if m.get("platform"):
        parts.append(str(m["platform"]))
    if m.get("processor"):
        parts.append(str(m["processor"]))
    cpus = m.get("cpu_count", m.get("cpus"))
    if cpus is not None:
        parts.append(f"{cpus} CPUs")
    for key, name in (("python", "Python"), ("numpy", "NumPy"), ("jax", "JAX"), ("mujoco", "MuJoCo")):
        if m.get(key):
            parts.append(f"{name} {m[key]}")
    if m.get("jax_backend"):
        parts.append(f"JAX backend {m['jax_backend']}")
    blas = m.get("blas_threads_env")
    if isinstance(blas, dict) and blas.get("OPENBLAS_NUM_THREADS"):
        parts.append(f"OPENBLAS_NUM_THREADS={blas['OPENBLAS_NUM_THREADS']}")
    versions = d.get("versions")
    if isinstance(versions, dict):
        parts += [f"{k} {v}" for k, v in sorted(versions.items())]
    stamp = d.get("timestamp")
    return "Machine: " + ", ".join(parts) + (f" ({stamp})." if stamp else ".")


# ------------------------------------------------------------------------------------------- renderers
def render_envs(d: dict[str, Any]) -> list[str]:
    rows = []
    for name, r in sorted((_get(d, "results", default={}) or {}).items()):
        if not isinstance(r, dict):
            continue
        if "steps_per_s" in r:
            rows.append(
                [
                    name,
                    f"{_f(r.get('steps'), ',.0f')} steps",
                    _f(r["steps_per_s"], ",.0f"),
                    f"{_f(r.get('us_per_step'), '.1f')} us/step",
                ]
            )
        else:
            rows.append(
                [
                    name,
                    f"{_f(r.get('transitions'), ',.0f')} transitions ({_f(r.get('num_envs'), '.0f')} envs)",
                    _f(r.get("transitions_per_s"), ",.0f"),
                    f"{_f(r.get('seconds_per_1M'), '.2f')} s per 1M",
                ]
            )
    return md_table(["env", "measured", "per second", "note"], rows)


def render_collect(d: dict[str, Any]) -> list[str]:
    sec = _get(d, "seconds", default={}) or {}
    rows = [
        ["episodes / transitions", f"{_f(d.get('episodes'), ',.0f')} / {_f(d.get('transitions'), ',.0f')}"],
        ["behaviour mixture", _cell(d.get("mixture", "n/a"))],
        ["collect, total (s)", _f(sec.get("collect_total"), ".2f")],
        ["  simulate (s)", _f(sec.get("simulate"), ".2f")],
        ["  Minari write (s)", _f(sec.get("minari_write"), ".2f")],
        ["transitions/s (collect)", _f(d.get("transitions_per_second_collect"), ",.0f")],
        ["load_transitions, hdf5 reader (s)", _f(sec.get("load_transitions_hdf5"), ".2f")],
        ["load_transitions, minari reader (s)", _f(sec.get("load_transitions_minari"), ".2f")],
        ["dataset size (MB)", _f(d.get("dataset_mb"), ".1f")],
        ["violating episodes (fraction)", _f(d.get("violating_fraction"), ".3f")],
        [
            "mean return / mean episode cost",
            f"{_f(d.get('mean_return'), '.1f')} / {_f(d.get('mean_cost'), '.2f')}",
        ],
    ]
    return md_table(["quantity", "value"], rows)


_BOAT_PUBLISHED = {"safefql": "SafeFQL", "fisor": "FISOR"}


def render_boat(d: dict[str, Any]) -> list[str]:
    methods = _get(d, "methods", default={}) or {}
    cfg = _get(d, "config", default={}) or {}
    published = _get(d, "published", default={}) or {}
    lines: list[str] = []
    protocols = [p for p in ("safe", "uniform") if p in (_get(d, "starts", default={}) or {})] or ["safe"]
    titles = {
        "safe": f"{_f(cfg.get('starts'), '.0f')} fixed oracle-safe starts (the protocol)",
        "uniform": f"{_f(cfg.get('starts'), '.0f')} seeded uniform starts over the box "
        "(some cannot avoid a rock)",
    }
    for proto in protocols:
        rows = []
        for name, m in methods.items():
            label = _get(m, "label", default=name)
            if not isinstance(m, dict) or "aggregate" not in m:
                rows.append([label, "n/a", "failed" if _get(m, "error") else "n/a", "", "", ""])
                continue
            agg = _get(m, "aggregate", proto, default={})
            pub = published.get(_BOAT_PUBLISHED.get(name, ""))
            pub_s = (
                f"{_f(_get(pub, 'return'), '.0f')} / {_f(_get(pub, 'cost'), 'g')}"
                if isinstance(pub, dict) and proto == "safe"
                else ""
            )
            rows.append(
                [
                    label,
                    _f(_get(agg, "seeds"), ".0f"),
                    _pm(agg, "return"),
                    _pm(agg, "cost", ".2f"),
                    _pm(agg, "violation_rate", ".3f"),
                    pub_s,
                ]
            )
        shielded = _get(methods, "safefql", "aggregate", f"{proto}/actor_shielded", default=None)
        if isinstance(shielded, dict):
            rows.append(
                [
                    "SafeFQL actor + its own shield (calibrated delta)",
                    _f(_get(shielded, "seeds"), ".0f"),
                    _pm(shielded, "return"),
                    _pm(shielded, "cost", ".2f"),
                    _pm(shielded, "violation_rate", ".3f"),
                    "",
                ]
            )
        lines += [f"Policy mode, {titles[proto]}; mean ± std over training seeds.", ""]
        headers = ["method", "seeds", "return", "episode cost", "violation rate"]
        lines += md_table(headers + ["published return / cost (paper)"], rows)
        lines.append("")
    rows = []
    for name, m in methods.items():
        lat, tr = _get(m, "latency", default={}) or {}, _get(m, "training", default={}) or {}
        if not lat and not tr:
            continue
        rows.append(
            [
                _get(m, "label", default=name),
                f"{_f(lat.get('latency_us'), ',.1f')} ({lat.get('best_path', 'n/a')})" if lat else "n/a",
                _f(lat.get("episode_400_s"), ".3f") if lat else "n/a",
                _f(tr.get("train_time_s"), ",.0f"),
                _f(tr.get("updates_per_s"), ",.1f"),
                _f(tr.get("steps"), ".0f"),
            ]
        )
    if rows:
        headers = ["method", "latency, batch 1 (us, path)", "400-step episode (s)", "training (s, all seeds)"]
        lines += md_table(headers + ["updates/s", "updates"], rows)
        lines += [
            "",
            "SafeFQL trains all its seeds in one vmapped program (its time is the total for all seeds, and "
            "each of its updates updates every seed); each baseline trains one run per seed (times summed). "
            "Latency: the seed-0 model, median of individually timed calls, fastest available path.",
            "",
        ]
    shield = _get(methods, "safefql", "shield", default=None)
    if isinstance(shield, dict):
        rows = []
        for proto in protocols:
            alone = _get(shield, "goal_alone", proto, default={}) or {}
            rows.append(
                [
                    proto,
                    "goal agent alone",
                    _f(alone.get("mean_return"), ".1f"),
                    _f(alone.get("mean_cost"), ".2f"),
                    _f(alone.get("violation_rate"), ".3f"),
                    "-",
                ]
            )
            for variant, label in (("delta_0", "delta = 0"), ("calibrated", "calibrated delta")):
                agg = _get(shield, "aggregate", f"{proto}/{variant}", default={})
                rows.append(
                    [
                        proto,
                        f"goal + SafeFQL shield ({label})",
                        _pm(agg, "return"),
                        _pm(agg, "cost", ".2f"),
                        _pm(agg, "violation_rate", ".3f"),
                        _pm(agg, "intervention_rate", ".4f"),
                    ]
                )
        delta = _get(shield, "aggregate", "calibrated_delta", default={})
        lines += [
            "Shield mode: a goal-greedy agent (thrust straight at the goal) filtered by each seed's SafeFQL "
            f"critic, uncalibrated (delta = 0) and with the offline-calibrated delta (eps = "
            f"{_f(cfg.get('eps'), 'g')}; delta {_pm(delta, 'd', '.4f')} over seeds).",
            "",
        ]
        lines += md_table(
            ["starts", "run", "return", "episode cost", "violation rate", "interventions/step"],
            rows,
            "llrrrr",
        )
        lines.append("")
    sign = _get(methods, "safefql", "aggregate", "sign_agreement_delta_0", default=None)
    if isinstance(sign, dict) and _num(sign.get("v_mean")) is not None:
        lines += [
            f"Learned V_h vs the HJ oracle: sign agreement {_pm(sign, 'v', '.3f')} over the box grid "
            "(delta = 0, mean ± std over seeds).",
            "",
        ]
    pub_rows = [
        [
            name,
            _f(_get(p, "return"), ".0f"),
            _f(_get(p, "cost"), "g"),
            _cell(_get(p, "episode_s", default="-")),
        ]
        for name, p in published.items()
        if isinstance(p, dict)
    ]
    if pub_rows:
        lines += [
            "Published in the SafeFQL paper (5 seeds, its own start distribution and implementation; "
            "context, not a like-for-like comparison):",
            "",
        ]
        lines += md_table(["method", "return", "episode cost", "400-step episode (s)"], pub_rows)
        lines.append("")
    ds = _get(d, "dataset", default={}) or {}
    if ds:
        lines.append(
            f"Data: `{ds.get('id', 'n/a')}`, {_f(ds.get('episodes'), ',.0f')} episodes "
            f"({_f(ds.get('transitions'), ',.0f')} transitions, "
            f"{_f(ds.get('violating_episode_fraction'), '.3f')} of episodes violating); "
            f"{_f(ds.get('train_episodes'), ',.0f')} for training, "
            f"{_f(ds.get('calib_episodes'), ',.0f')} held out for calibration. Updates per method: "
            f"{_cell(cfg.get('steps', 'n/a'))}."
        )
    return lines


def render_latency(d: dict[str, Any]) -> list[str]:
    rows_in = [r for r in (_get(d, "rows", default=[]) or []) if isinstance(r, dict)]
    big = max((int(_num(r.get("batch")) or 0) for r in rows_in), default=0)
    episodes = {
        (e.get("method"), e.get("path")): e
        for e in (_get(d, "episode_400", default=[]) or [])
        if isinstance(e, dict)
    }
    keys: list[tuple[Any, Any]] = []
    for r in rows_in:
        if (r.get("method"), r.get("path")) not in keys:
            keys.append((r.get("method"), r.get("path")))
    rows = []
    for method, path in keys:
        by_batch = {r.get("batch"): r for r in rows_in if (r.get("method"), r.get("path")) == (method, path)}
        rows.append(
            [
                method,
                path,
                _f(_get(by_batch, 1, "median_us"), ",.1f"),
                _f(_get(by_batch, big, "median_us"), ",.0f"),
                _f(_get(by_batch, big, "per_state_us"), ".3g"),
                _f(_get(episodes, (method, path), "seconds"), ".3f"),
            ]
        )
    lines = md_table(
        ["method", "path", "batch 1 (us)", f"batch {big} (us)", f"us/state at {big}", "400-step episode (s)"],
        rows,
        "llrrrr",
    )
    ratios = _get(d, "ratios", default={}) or {}
    sizes = _get(d, "sizes", default={}) or {}
    pub = _get(d, "published_episode_s", default={}) or {}
    fisor_pub = pub.get("fisor")
    fisor_pub = "-".join(_f(x, "g") for x in fisor_pub) if isinstance(fisor_pub, list) else _f(fisor_pub, "g")
    lines += [
        "",
        f"actor: one call of an MLP {sizes.get('actor_hidden', 'n/a')}; "
        f"flow: {sizes.get('flow_steps', 'n/a')} Euler steps of an MLP {sizes.get('flow_hidden', 'n/a')}; "
        f"fisor: {sizes.get('fisor_candidates', 'n/a')} candidates x "
        f"{sizes.get('fisor_diffusion_steps', 'n/a')} denoising steps (residual width "
        f"{sizes.get('fisor_noise_width', 'n/a')}, {sizes.get('fisor_noise_blocks', 'n/a')} blocks) "
        f"+ the twin safety Qs. Weights: {_cell(_get(d, 'weights', 'safefql', default='n/a'))}.",
        "",
        f"FISOR-style / one-step actor at batch 1: {_f(ratios.get('fisor_jax_over_actor_jax_b1'), '.1f')}x "
        f"(both JAX), {_f(ratios.get('fisor_jax_over_actor_best_b1'), '.1f')}x (actor's fastest path, "
        f"{ratios.get('actor_best_path_b1', 'n/a')}); target >= {_f(ratios.get('target'), 'g')}x. "
        f"Published 400-step episode times (paper, its hardware): SafeFQL {_f(pub.get('actor'), 'g')} s, "
        f"FISOR {fisor_pub} s.",
    ]
    return lines


def render_shield(d: dict[str, Any]) -> list[str]:
    rows = [[f"batch 1: {k}", _f(v, ",.1f")] for k, v in (_get(d, "batch1", default={}) or {}).items()]
    vec = _get(d, "vector", default={}) or {}
    batch = _f(vec.get("batch"), ".0f")
    rows += [[f"batch {batch}: {k}", _f(v, ",.3f")] for k, v in vec.items() if k != "batch"]
    lines = [
        f"Model: {_cell(d.get('model', 'n/a'))}, backend {_cell(d.get('backend', 'n/a'))}; "
        f"{_cell(d.get('units', 'microseconds'))}.",
        "",
    ]
    return lines + md_table(["measurement", "value"], rows)


def render_demo(d: dict[str, Any]) -> list[str]:
    """``safefql demo`` end to end: phase timings against the budget, then what it reported."""
    t = _get(d, "timings_s", default={}) or {}
    wall = d.get("wall_s")
    budget, aim = (None if _num(d.get(k)) is None else _num(d.get(k)) / 60 for k in ("budget_s", "aim_s"))
    sizes = _get(d, "sizes", default={}) or {}
    size_note = "the demo's own sizes" if d.get("full_size") else "REDUCED sizes (not the demo's)"
    lines = [
        f"{_f(sizes.get('episodes'), ',.0f')} episodes collected, "
        f"{_f(sizes.get('updates'), ',.0f')} updates, "
        f"{_f(sizes.get('eval_episodes'), '.0f')} oracle-safe evaluation starts ({size_note}); "
        f"budget {_f(budget, '.0f')} min, aim {_f(aim, '.0f')} min.",
        "",
    ]
    rows = [[k.removesuffix("_s"), _f(v, ",.1f")] for k, v in t.items()]
    rows.append(["wall (whole call)", _f(wall, ",.1f")])
    lines += md_table(["phase", "seconds"], rows) + [""]
    results = [
        [
            r.get("what"),
            _f(r.get("return"), ".1f"),
            _f(r.get("violating_episodes"), ".0f"),
            "-" if r.get("intervention_rate") is None else _f(r.get("intervention_rate"), ".3f"),
        ]
        for r in d.get("rows") or []
        if isinstance(r, dict)
    ]
    lines += md_table(["run", "return", "violating episodes", "interventions/step"], results)
    lines += [
        "",
        f"Calibrated delta (offline, eps 0.05): {_f(d.get('calibration_delta'), '.4g')}; "
        f"sign agreement of the learned V_h with the oracle: {_f(d.get('sign_agreement'), '.3f')}.",
    ]
    return lines


def render_generic(d: dict[str, Any]) -> list[str]:
    """Any benchmark JSON: a ``rows`` list of dicts, a ``results`` mapping of dicts, or top-level scalars."""
    rows_in = _get(d, "rows")
    if isinstance(rows_in, list) and rows_in and all(isinstance(r, dict) for r in rows_in):
        cols: list[str] = []
        for r in rows_in:
            cols += [k for k, v in r.items() if k not in cols and not isinstance(v, dict | list)]
        return md_table(cols, [[_scalar(r.get(c)) for c in cols] for r in rows_in])
    results = _get(d, "results")
    if isinstance(results, dict) and results and all(isinstance(v, dict) for v in results.values()):
        cols = []
        for r in results.values():
            cols += [k for k, v in r.items() if k not in cols and not isinstance(v, dict | list)]
        rows = [[name, *(_scalar(r.get(c)) for c in cols)] for name, r in results.items()]
        return md_table(["name", *cols], rows)
    skip = {"benchmark", "command", "machine", "timestamp"}
    rows = [[k, _scalar(v)] for k, v in d.items() if k not in skip and not isinstance(v, dict | list)]
    return md_table(["quantity", "value"], rows) if rows else ["(no tabular results in this file)"]


def _pm_plain(agg: Any, key: str, spec: str) -> str:
    """``mean ± std`` from ``key`` / ``key_std`` (the safety_gym layout; std only with several seeds)."""
    mean, std = _get(agg, key), _get(agg, f"{key}_std")
    if _num(mean) is None:
        return "n/a"
    several = (_num(_get(agg, "seeds")) or 1) > 1
    return _f(mean, spec) + (f" ± {_f(std, spec)}" if several and _num(std) is not None else "")


def render_safety_gym_entry(key: str, e: dict[str, Any]) -> list[str]:
    """The full block of one run: command, machine, data, evaluation (normalised), training, shield."""
    lines = [f"#### {key}", ""]
    if isinstance(e.get("command"), str):
        lines.append(f"Reproduce: `{e['command']}`  ")
    promoted = e.get("promoted")
    if isinstance(promoted, dict):  # a variant made the main run (promote_safety_gym_run.py)
        old = (
            f" The previous main run is the variant `{_cell(promoted['previous_main'])}`."
            if promoted.get("previous_main")
            else ""
        )
        lines.append(
            f"Stored as `{_cell(promoted.get('from'))}` by that command, made the main run on "
            f"{_cell(promoted.get('at'))}: {_cell(promoted.get('reason'))}.{old}  "
        )
    for ext in e.get("extensions") or []:  # baselines added later on the same data (bench --extend)
        if isinstance(ext, dict) and isinstance(ext.get("command"), str):
            methods = ", ".join(str(m) for m in ext.get("methods") or [])
            when = f" ({_cell(ext['timestamp'])})" if ext.get("timestamp") else ""
            if ext.get("error"):
                lines.append(
                    f"Then adding {methods or 'nothing'} on the same data failed{when} "
                    f"({_cell(ext['error'])}): `{ext['command']}`  "
                )
            else:
                lines.append(f"Then {methods} added on the same data{when}: `{ext['command']}`  ")
    lines += [machine_line(e), ""]
    if e.get("error"):
        lines += [f"Failed: {_cell(e['error'])}", ""]
        return lines
    data = _get(e, "data", default={}) or {}
    if isinstance(data, dict) and data.get("transitions") is not None:
        cost = _get(data, "episode_cost", default={}) or {}
        collected = _get(data, "collection", "seconds")
        if not data.get("reused"):
            how = f"collected in {_f(collected, ',.0f')} s"
        elif isinstance(collected, int | float):  # carried over from the run that collected it
            how = f"reused; collected in {_f(collected, ',.0f')} s by an earlier run"
        else:
            how = "reused"
        lines += [
            f"Data: `{_cell(data.get('dataset_id'))}`, {_f(data.get('num_episodes'), ',.0f')} episodes, "
            f"{_f(data.get('transitions'), ',.0f')} transitions ({how}); episode cost mean "
            f"{_f(_get(cost, 'mean'), '.2f')}, median {_f(_get(cost, 'median'), '.1f')}, max "
            f"{_f(_get(cost, 'max'), '.0f')}; episodes with cost "
            f"{_f(_get(cost, 'fraction_with_cost'), '.2f')}, over the cost limit "
            f"{_f(_get(cost, 'fraction_over_cost_limit'), '.2f')}.",
            "",
        ]
    norm = _get(e, "normalization", default={}) or {}
    rows = []
    evaluation = _get(e, "evaluation", default={}) or {}
    for name, m in (_get(evaluation, "methods", default={}) or {}).items():
        a = _get(m, "aggregate", default={})
        rows.append(
            [
                f"{_get(m, 'label', default=name)}{_standardised_note(e, name)}",
                _f(_get(a, "seeds"), ".0f"),
                _pm_plain(a, "return", ".2f"),
                _pm_plain(a, "cost", ".2f"),
                _pm_plain(a, "r_norm", ".3f"),
                _pm_plain(a, "c_norm", ".3f"),
                _pm_plain(a, "violation_rate", ".2f"),
            ]
        )
    for name, a in (_get(evaluation, "references", default={}) or {}).items():
        rows.append(
            [
                f"scripted {name}",
                "-",
                _f(_get(a, "return"), ".2f"),
                _f(_get(a, "cost"), ".2f"),
                _f(_get(a, "r_norm"), ".3f"),
                _f(_get(a, "c_norm"), ".3f"),
                _f(_get(a, "violation_rate"), ".2f"),
            ]
        )
    if rows:
        lines += [
            f"Policy mode, {_f(evaluation.get('episodes_per_seed'), '.0f')} episodes per seed, the same "
            f"seeded starts for every method; r_norm = (R - {_f(norm.get('r_min'), '.2f')}) / "
            f"({_f(norm.get('r_max'), '.2f')} - {_f(norm.get('r_min'), '.2f')}) (dataset min/max episode "
            f"return), c_norm = C / {_f(norm.get('cost_limit'), 'g')}.",
            "",
        ]
        headers = ["method", "seeds", "return", "cost", "r_norm", "c_norm", "violation rate"]
        lines += md_table(headers, rows) + [""]
    rows = []
    for name, t in (_get(e, "training", default={}) or {}).items():
        if not isinstance(t, dict):
            continue
        if "skipped" in t:
            rows.append([name, "skipped", "", ""])
            continue
        rows.append(
            [
                name,
                _f(t.get("steps"), ".0f"),
                _f(t.get("updates_per_s"), ",.1f"),
                _f(t.get("wall_time_s"), ",.0f"),
            ]
        )
    if rows:
        lines += md_table(["training", "updates", "updates/s", "wall (s)"], rows) + [""]
    shield = _get(e, "shield", default={}) or {}
    if isinstance(shield.get("alone"), dict):
        a = shield["alone"]
        rows = [
            [
                "agent alone",
                "-",
                "-",
                _f(a.get("return"), ".2f"),
                _f(a.get("cost"), ".2f"),
                _f(a.get("violation_rate"), ".2f"),
                "-",
                "-",
            ]
        ]
        # every shield run bench_safety_gym stored: "<variant>" (nearest fallback) or "<fallback>_<variant>"
        for variant, v in shield.items():
            if variant != "alone" and isinstance(v, dict) and "cost_reduction" in v:
                fallback = str(v.get("fallback", "nearest"))
                red = _num(v.get("cost_reduction"))
                rows.append(
                    [
                        f"shielded ({variant.removeprefix(f'{fallback}_')})",
                        _cell(fallback),
                        _f(v.get("delta"), ".3g"),
                        _f(v.get("return"), ".2f"),
                        _f(v.get("cost"), ".2f"),
                        _f(v.get("violation_rate"), ".2f"),
                        "n/a" if red is None else f"{100 * red:.1f}%" + _pm_percent(v, "cost_reduction"),
                        _f(v.get("intervention_rate"), ".3f"),
                    ]
                )
        ckpts = shield.get("checkpoints")
        seeds = len(ckpts) if isinstance(ckpts, list) else 0
        over = f" with each of {seeds} seeds' checkpoints (mean ± std over seeds; calibrated: own delta each)"
        agent, episodes = _cell(shield.get("agent", "n/a")), _f(shield.get("episodes"), ".0f")
        lines += [f"Shield: {agent}, {episodes} episodes{over if seeds > 1 else ''}.", ""]
        headers = [
            "run",
            "fallback",
            "delta",
            "return",
            "cost",
            "violation rate",
            "cost reduction",
            "interventions/step",
        ]
        lines += md_table(headers, rows, align="ll" + "r" * (len(headers) - 2)) + [""]
    elif isinstance(shield.get("note"), str):  # a run whose shield results were withdrawn says why
        lines += [f"Shield: {_cell(shield['note'])}.", ""]
    return lines


def _pm_percent(v: dict[str, Any], key: str) -> str:
    """`` ± std`` in percentage points when a multi-seed run stored ``<key>_std``, else nothing."""
    std, seeds = _num(v.get(f"{key}_std")), _num(v.get("seeds"))
    return "" if std is None or seeds is None or seeds < 2 else f" ± {100 * std:.1f}"


def _split_key(key: str) -> tuple[str, str]:
    """``"<env> [tag]"`` -> ``("<env>", "tag")``; an untagged key has tag ``""``."""
    env, sep, tag = key.partition(" [")
    return env, tag.removesuffix("]") if sep else ""


def _natural(text: str) -> tuple:
    """Sort key that orders the numbers inside a name by value: "alpha30" before "alpha100"."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


def _slug(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped (but ``-`` and ``_``), spaces to ``-``."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


# settings that make a variant differ from its task's main run (overrides are listed one by one), with the
# value that means "unchanged" when the main run predates the setting
_VARIANT_SETTINGS = {
    "episodes": None,
    "steps": None,
    "eval_episodes": None,
    "kappa": None,
    "action_hold": 1,
    "switch_every": 0,
    "mixture": None,
    "margin": "surrogate",
    "shield_candidates": 10,
}


def _setting(settings: dict[str, Any], name: str, unchanged: Any) -> Any:
    """A recorded setting; one not recorded (the run predates it) had the value that means unchanged."""
    value = settings.get(name)
    return unchanged if value is None else value


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else _scalar(value)


def _config_changes(mine: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """``key=value`` for each SafeFQL config field where ``mine`` differs from ``base``; a field a run
    predates takes the current default."""
    from safefql.training.config import SafeFQLConfig

    defaults = json.loads(json.dumps(SafeFQLConfig().to_dict()))  # tuples as the JSON lists runs record
    parts = []
    for name in sorted(set(mine) | set(base)):
        value, main_value = mine.get(name, defaults.get(name)), base.get(name, defaults.get(name))
        if value != main_value:
            parts.append(f"{name}={_shown(value)}")
    return parts


def variant_changes(e: dict[str, Any], main: dict[str, Any] | None) -> str:
    """What a variant's settings change with respect to the main run of its task (``key=value; ...``).

    The benchmark settings first, then the SafeFQL config: field by field when both runs recorded their
    config (so a run under older defaults shows what differs from today's main run), else the ``--set``
    overrides that differ.
    """
    mine, base = _get(e, "settings"), _get(main, "settings", default={}) or {}
    if not isinstance(mine, dict):
        return "n/a"  # not recorded
    base = base if isinstance(base, dict) else {}
    parts = []
    for name, unchanged in _VARIANT_SETTINGS.items():
        value = _setting(mine, name, unchanged)
        if value is not None and value != _setting(base, name, unchanged):
            parts.append(f"{name}={_scalar(value)}")
    mine_cfg, base_cfg = (_get(x, "training", "safefql", "config") for x in (e, main))
    if isinstance(mine_cfg, dict) and isinstance(base_cfg, dict):
        parts += _config_changes(mine_cfg, base_cfg)
    else:
        over, base_over = mine.get("overrides") or {}, base.get("overrides") or {}
        if isinstance(over, dict):
            for name, value in over.items():
                if not isinstance(base_over, dict) or base_over.get(name) != value:
                    parts.append(f"{name}={_shown(value)}")
    recollected = _recollected(e, main)
    if recollected:
        parts.append(recollected)
    return "; ".join(parts) if parts else "(same settings)"


def _recollected(e: dict[str, Any], main: dict[str, Any] | None) -> str:
    """Say so when a variant ran on a dataset of the main run's id with other contents (collected again,
    e.g. on another machine), since its numbers are then not on the main run's data."""
    mine, base = _get(e, "data", default={}) or {}, _get(main, "data", default={}) or {}
    if (
        not isinstance(mine, dict)
        or not isinstance(base, dict)
        or mine.get("dataset_id") != base.get("dataset_id")
    ):
        return ""
    (r, c), (r0, c0) = [
        [_num(_get(d, k, "mean")) for k in ("episode_return", "episode_cost")] for d in (mine, base)
    ]
    if None in (r, c, r0, c0) or (math.isclose(r, r0) and math.isclose(c, c0)):
        return ""
    return (
        f"data collected again (episode return / cost mean {r:.2f} / {c:.2f}; main run {r0:.2f} / {c0:.2f})"
    )


def _standardised_note(e: dict[str, Any], method: str) -> str:
    """`` (standardised inputs)`` for a baseline trained on standardised observations, else nothing."""
    return " (standardised inputs)" if _get(e, "training", method, "normalize_observations") is True else ""


def best_acting_shield(shield: Any) -> str:
    """The largest cost reduction among shield runs where the agent still acts (interventions <= 0.9, the
    rule of ``bench_safety_gym.MAX_INTERVENTION_RATE``)."""
    if str(HERE) not in sys.path:  # the other scripts of this folder (it is not a package)
        sys.path.insert(0, str(HERE))
    from bench_safety_gym import MAX_INTERVENTION_RATE as max_rate

    best: tuple[float, str] | None = None
    for v in shield.values() if isinstance(shield, dict) else []:
        if not isinstance(v, dict):
            continue
        red, rate = _num(v.get("cost_reduction")), _num(v.get("intervention_rate"))
        if red is None or rate is None or rate > max_rate:
            continue
        how = f"{_cell(v.get('fallback', 'nearest'))}, delta {_f(v.get('delta'), '.3g')}, {rate:.2f}"
        text = f"{100 * red:.1f}%{_pm_percent(v, 'cost_reduction')} ({how})"
        if best is None or red > best[0]:
            best = (red, text)
    return "n/a" if best is None else best[1]


def render_safety_gym(d: dict[str, Any], variants_link: str = "docs/safety_gym_variants.md") -> list[str]:
    """Per task: the main run in full, then one summary row per variant (full tables in ``variants_link``)."""
    envs = _get(d, "envs", default=None)
    if not isinstance(envs, dict) or not envs:
        return render_generic(d)
    by_env: dict[str, dict[str, dict[str, Any]]] = {}
    for key, e in envs.items():
        if isinstance(e, dict):
            env, tag = _split_key(key)
            by_env.setdefault(env, {})[tag] = e
    lines: list[str] = []
    for env in sorted(by_env):
        runs = by_env[env]
        if "" in runs:
            lines += render_safety_gym_entry(env, runs[""])
        else:
            lines += [f"#### {env}", ""]
        tags = sorted((t for t in runs if t), key=_natural)  # "hold10" before "hold10-kappa1"
        if not tags:
            continue
        rows = []
        for tag in tags:
            e = runs[tag]
            methods = _get(e, "evaluation", "methods", default={}) or {}
            safefql = _get(methods, "safefql", "aggregate", default={})
            others = [
                f"{_get(m, 'label', default=name)}{_standardised_note(e, name)} "
                f"{_f(_get(m, 'aggregate', 'r_norm'), '.2f')} / {_f(_get(m, 'aggregate', 'c_norm'), '.2f')}"
                for name, m in methods.items()
                if name != "safefql"
            ]
            rows.append(
                [
                    f"[{tag}]({variants_link}#{_slug(f'{env} [{tag}]')})",
                    "failed" if e.get("error") else variant_changes(e, runs.get("")),
                    _f(_get(safefql, "seeds"), ".0f"),
                    _pm_plain(safefql, "r_norm", ".3f"),
                    _pm_plain(safefql, "c_norm", ".3f"),
                    "; ".join(others) or "-",
                    best_acting_shield(_get(e, "shield")),
                ]
            )
        lines += [
            f"Variants of this task (full tables and commands in [{variants_link}]({variants_link})):",
            "",
        ]
        headers = [
            "variant",
            "changed from the main run",
            "seeds",
            "SafeFQL r_norm",
            "SafeFQL c_norm",
            "other methods (r_norm / c_norm)",
            "best shield cost reduction with interventions <= 0.9 (fallback, delta, interventions/step)",
        ]
        lines += md_table(headers, rows, align="llrrrll") + [""]
    return lines


def render_safety_gym_variants(d: dict[str, Any]) -> list[str] | None:
    """The full tables of every tagged Safety-Gymnasium run (``None`` when there is none)."""
    envs = _get(d, "envs", default=None)
    if not isinstance(envs, dict):
        return None
    tagged = sorted(
        (k for k, e in envs.items() if _split_key(k)[1] and isinstance(e, dict)),
        key=lambda k: tuple(map(_natural, _split_key(k))),
    )
    if not tagged:
        return None
    lines = [
        "# Safety-Gymnasium variants",
        "",
        f"Generated by `{SELF_COMMAND}` from `benchmarks/results/safety_gym.json`; do not edit by hand. "
        "These are the runs stored under a tag (`bench_safety_gym.py --tag`): one change each to the data "
        "or the settings of a task's main run, which is in the README with a summary row per variant. Each "
        "table names the command that reproduces it and the machine it ran on.",
        "",
    ]
    for key in tagged:
        lines += render_safety_gym_entry(key, envs[key])
    return lines


def _scalar(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool | str):
        return _cell(v)
    return _f(v, ".4g")


# name -> (title, renderer, default command); safety_gym records command and machine per task
PER_ENTRY = {"safety_gym"}
SECTIONS: dict[str, tuple[str, Callable[[dict[str, Any]], list[str]], str]] = {
    "demo": ("`safefql demo`, end to end", render_demo, "uv run python benchmarks/bench_demo.py"),
    "envs": ("Environment throughput", render_envs, "uv run python benchmarks/bench_envs.py"),
    "collect": ("Dataset collection (boat)", render_collect, "uv run python benchmarks/bench_collect.py"),
    "boat": ("Boat: SafeFQL and baselines", render_boat, "uv run python benchmarks/bench_boat.py"),
    "latency": (
        "Per-action latency: one-step actor vs flow teacher vs FISOR-style sampling",
        render_latency,
        "OPENBLAS_NUM_THREADS=1 uv run python benchmarks/bench_latency.py",
    ),
    "shield": (
        "Shield overhead",
        render_shield,
        "OPENBLAS_NUM_THREADS=1 uv run python benchmarks/bench_shield.py --checkpoint pretrained",
    ),
    "safety_gym": ("Safety-Gymnasium", render_safety_gym, "uv run python benchmarks/bench_safety_gym.py"),
}


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()


def default_variants_doc(readme: Path) -> Path:
    return readme.parent / "docs" / "safety_gym_variants.md"


def render_section(results_dir: Path, readme: Path, variants_doc: Path | None = None) -> str:
    """The markdown between the markers (without them), from whatever JSON exists in ``results_dir``."""
    base = readme.parent
    variants_link = _rel(variants_doc or default_variants_doc(readme), base)
    pngs = sorted(results_dir.glob("*.png")) if results_dir.is_dir() else []
    claimed: set[Path] = set()
    out = [
        f"Generated by `{SELF_COMMAND}` from `{_rel(results_dir, base)}/*.json`; do not edit by hand. "
        "Each table names the command that reproduces it and the machine it ran on.",
        "",
    ]
    missing = []
    for name, (title, render, default_cmd) in SECTIONS.items():
        path = results_dir / f"{name}.json"
        if not path.is_file():
            missing.append((name, default_cmd))
            continue
        out += [f"### {title}", ""]
        try:
            d = json.loads(path.read_text())
            if not isinstance(d, dict):
                raise ValueError("top level is not an object")
        except (ValueError, OSError) as e:
            out += [f"`{name}.json` could not be read ({_cell(e)}); rerun `{default_cmd}`.", ""]
            continue
        command = d.get("command") if isinstance(d.get("command"), str) else default_cmd
        if name not in PER_ENTRY or "command" in d or "machine" in d:
            out += [f"Reproduce: `{command}`  ", machine_line(d), ""]
        else:
            out += [f"Reproduce: `{command}` (options per task below).", ""]
        try:
            out += render_safety_gym(d, variants_link) if name == "safety_gym" else render(d)
        except Exception as e:  # noqa: BLE001 - a malformed file must not break the whole README
            out += [f"(`{name}.json` has an unexpected layout: {type(e).__name__}: {_cell(e)})"]
        out.append("")
        figs = [p for p in pngs if p.name.startswith(name)]
        for p in figs:
            claimed.add(p)
            out += [f"![{p.stem}]({_rel(p, base)})", ""]
    others = [p for p in pngs if p not in claimed]
    if others:
        out += ["### Other figures", ""]
        for p in others:
            out += [f"![{p.stem}]({_rel(p, base)})", ""]
    if missing:
        out += ["Not measured yet (no JSON in the results folder):", ""]
        out += [f"- `{name}.json`: `{cmd}`" for name, cmd in missing]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def render_variants_doc(results_dir: Path) -> str | None:
    """The whole variants page, or ``None`` when ``safety_gym.json`` is missing, unreadable or has no tag."""
    try:
        d = json.loads((results_dir / "safety_gym.json").read_text())
        lines = render_safety_gym_variants(d) if isinstance(d, dict) else None
    except (ValueError, OSError):
        return None
    return None if lines is None else "\n".join(lines).rstrip() + "\n"


def splice(text: str, section: str) -> str:
    """``text`` with the part between the markers replaced by ``section``; ValueError without markers."""
    i, j = text.find(START), text.find(END)
    if i < 0 or j < 0 or j < i:
        raise ValueError(f"the README must contain {START} followed by {END}")
    return text[: i + len(START)] + "\n" + section + text[j:]


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or ``--check``) the README's results section; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS, help="folder of benchmark JSON")
    parser.add_argument("--readme", type=Path, default=DEFAULT_README, help="README to update")
    parser.add_argument(
        "--variants-doc",
        type=Path,
        default=None,
        help="page of the tagged Safety-Gym runs (default: docs/ by the README)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if anything is stale; write nothing")
    args = parser.parse_args(argv)
    from safefql._io import atomic_write_text

    if not args.readme.is_file():
        print(f"README not found: {args.readme}", file=sys.stderr)
        return 2
    doc_path = args.variants_doc or default_variants_doc(args.readme)
    text = args.readme.read_text()
    try:
        new = splice(text, render_section(args.results_dir, args.readme, doc_path))
    except ValueError as e:
        print(f"{args.readme}: {e}", file=sys.stderr)
        return 2
    targets = [(args.readme, text, new)]
    doc = render_variants_doc(args.results_dir)
    if doc is not None:
        targets.append((doc_path, doc_path.read_text() if doc_path.is_file() else None, doc))
    stale = [path for path, old, fresh in targets if old != fresh]
    if args.check:
        for path in stale:
            print(f"{path}: stale; run `{SELF_COMMAND}`", file=sys.stderr)
        if stale:
            return 1
        print(", ".join(str(path) for path, _, _ in targets) + ": up to date")
        return 0
    for path, _, fresh in targets:
        if path in stale:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, fresh)
            print(f"updated {path}")
        else:
            print(f"{path}: already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
