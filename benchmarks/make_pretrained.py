"""Reproduce the shipped, calibrated BoatNav-v0 checkpoint (shields/pretrained/boatnav_v0.eqx).

    uv run python benchmarks/make_pretrained.py

Collects the default 1M-transition mixed dataset (seed 0), trains SafeFQL with the boat default config
(seed 0), calibrates delta offline on the held-out episodes (eps = 0.05) and copies the checkpoint into
the package. Every step is the library's own code; the command prints the same tables as the CLI.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import safefql
from safefql.datasets.collect import collect, default_action_hold
from safefql.datasets.load import load_transitions
from safefql.training.calibration import calibrate
from safefql.training.trainer import train

BOAT = "safefql/BoatNav-v0"
DATASET = "safefql/BoatNav-mixed-v0"
TARGET = Path(safefql.__file__).parent / "shields" / "pretrained" / "boatnav_v0.eqx"


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--seed", type=int, default=0, help="dataset and training seed")
    parser.add_argument("--steps", type=int, default=None, help="updates (default: the boat config's)")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/pretrained_boat"), help="training run dir")
    parser.add_argument("--target", type=Path, default=TARGET, help="where the checkpoint is copied")
    args = parser.parse_args()

    try:
        held = load_transitions(DATASET).metadata.get("action_hold", 1)
    except FileNotFoundError:
        held = None
    if held != default_action_hold(BOAT):  # missing, or collected before actions were held
        collect(BOAT, None, 2500, args.seed, DATASET, overwrite=True).print()
    result = train(DATASET, out_dir=args.run_dir, steps=args.steps, seed=args.seed, overwrite=True)
    checkpoint = result.policy_paths[0]
    calibrate(checkpoint, "offline", eps=0.05, seed=args.seed, print_summary=True)
    args.target.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.target.with_suffix(".eqx.tmp")
    shutil.copyfile(checkpoint, tmp)
    tmp.replace(args.target)
    print(f"shipped checkpoint: {args.target}")


if __name__ == "__main__":
    main()
