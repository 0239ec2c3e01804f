"""Make another Safety-Gymnasium run the task's main run; the old main run becomes a variant.

``bench_safety_gym.py`` stores a task's main run under ``"<env id>"`` and variants under
``"<env id> [<tag>]"``. When a variant turns out to be the better benchmark (say, a larger dataset), this
moves it to the main key without running anything again: the entry keeps every number and the command that
made it (with its ``--tag``), and gains a ``promoted`` record (where it was stored, when, why, where the
old main run went) that the README names. ``--source FILE`` takes the run from another results file (a
bench run written with ``--out FILE``; without ``--tag``, that file's main run of the task). ::

    uv run python benchmarks/promote_safety_gym_run.py SafetyCarGoal1Gymnasium-v0 --tag mix450 \\
        --old-main-tag mix150 --reason "150 episodes were too few: the policy target was missed"
    uv run python benchmarks/make_readme.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

DEFAULT_RESULTS = Path(__file__).resolve().parent / "results" / "safety_gym.json"


def promote(
    results: dict[str, Any],
    env_id: str,
    tag: str,
    old_main_tag: str,
    reason: str,
    when: str,
    source: dict[str, Any] | None = None,
    source_name: str = "",
) -> dict:
    """``results`` with ``"<env_id> [<tag>]"`` moved to ``env_id``, the old main to ``[<old_main_tag>]``.

    With ``source`` (another results dict, named ``source_name``) the run is taken from there instead, and
    ``tag`` may be empty (the source's main run of the task).
    """
    envs = dict(results.get("envs") or {})
    pool = envs if source is None else dict(source.get("envs") or {})
    variant = f"{env_id} [{tag}]" if tag else env_id
    demoted = f"{env_id} [{old_main_tag}]"
    if source is None and not tag:
        raise ValueError("--tag must name the variant to promote (or pass --source)")
    if variant not in pool:
        where = f" in {source_name}" if source_name else ""
        known = sorted(k for k in pool if k.startswith(env_id))
        raise ValueError(f"no run {variant!r} to promote{where} (runs of the task: {known})")
    if pool[variant].get("error"):
        raise ValueError(f"{variant!r} is a failed run ({pool[variant]['error']}); promote a finished one")
    if not old_main_tag or (source is None and old_main_tag == tag):
        raise ValueError("--old-main-tag must name a new tag for the old main run")
    if demoted in envs:
        raise ValueError(f"{demoted!r} exists already; pick another --old-main-tag")
    if not reason.strip():
        raise ValueError("--reason must say why the variant becomes the main run")
    run = dict(pool[variant])
    if source is None:
        del envs[variant]
    if env_id in envs:  # the old main keeps its history, but is no longer "the main run since ..."
        old = dict(envs.pop(env_id))
        if "promoted" in old:
            old["promotion_history"] = [*old.get("promotion_history", []), old.pop("promoted")]
        envs[demoted] = old
    envs[env_id] = run | {
        "promoted": {
            "from": variant if source is None else f"{variant} in {source_name}",
            "at": when,
            "reason": reason.strip().rstrip("."),
            "previous_main": demoted if demoted in envs else None,
        }
    }
    return dict(results) | {"envs": envs, "updated": when}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("env_id", help="the task, e.g. SafetyCarGoal1Gymnasium-v0")
    parser.add_argument("--tag", default="", help="the variant that becomes the main run")
    parser.add_argument("--old-main-tag", required=True, help="the tag the old main run is stored under")
    parser.add_argument("--reason", required=True, help="why (shown in the README)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--source", type=Path, default=None, help="take the run from this results file")
    args = parser.parse_args(argv)
    from safefql._io import atomic_write_text

    if not args.results.is_file():
        parser.error(f"no results file {args.results}")
    results = json.loads(args.results.read_text())
    source = None
    if args.source is not None:
        if not args.source.is_file():
            parser.error(f"no source results file {args.source}")
        source = json.loads(args.source.read_text())
    when = time.strftime("%Y-%m-%d")
    name = str(args.source or "")
    try:
        new = promote(results, args.env_id, args.tag, args.old_main_tag, args.reason, when, source, name)
    except ValueError as e:
        parser.error(str(e))
    atomic_write_text(args.results, json.dumps(new, indent=1) + "\n")
    print(f"{new['envs'][args.env_id]['promoted']['from']} is now the main run of {args.env_id}")
    return args.results


if __name__ == "__main__":
    main()
