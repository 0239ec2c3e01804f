"""The ``safefql`` command line (typer). Subcommands parse arguments and call library functions.

Heavy imports (JAX, MuJoCo, Minari) happen inside the commands so that ``safefql --help`` is instant.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    help="Safe Flow Q-Learning: learn a safe policy from logged data and use it as a Gymnasium shield.",
)

BOAT = "safefql/BoatNav-v0"


class Source(StrEnum):
    offline = "offline"
    rollout = "rollout"


class Mode(StrEnum):
    shield = "shield"
    policy = "policy"


class Starts(StrEnum):
    safe = "safe"
    uniform = "uniform"


class Fallback(StrEnum):  # safefql.shields.wrapper.FALLBACKS (a test keeps the two equal)
    nearest = "nearest"
    actor = "actor"
    samples = "samples"
    safest = "safest"


def _fail(exc: Exception) -> typer.Exit:
    """Print a library error as one readable line and exit non-zero (no traceback for user mistakes)."""
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError)


@app.command()
def version() -> None:
    """Print the installed safefql version."""
    import safefql

    typer.echo(safefql.__version__)


@app.command()
def policies(env_id: Annotated[str, typer.Argument(help="Gymnasium env id.")] = BOAT) -> None:
    """List the scripted behaviour policies available for collecting data on ENV_ID."""
    import safefql  # noqa: F401  (registers envs)
    from safefql.datasets.collect import available_policies, default_mixture

    try:
        names = available_policies(env_id)
        mixture = default_mixture(env_id)
    except USER_ERRORS as exc:
        raise _fail(exc) from exc
    for name, text in names.items():
        typer.echo(f"{name:24s} {text}")
    typer.echo(f"\ndefault mixture: {mixture}")


@app.command()
def collect(
    env_id: Annotated[str, typer.Argument(help="Gymnasium env id, e.g. safefql/BoatNav-v0.")] = BOAT,
    policy: Annotated[
        str | None, typer.Option(help='Behaviour mixture "name:weight,..." (default: the env\'s mixture).')
    ] = None,
    episodes: Annotated[int, typer.Option(help="Number of episodes.")] = 2500,
    seed: Annotated[int, typer.Option(help="Seed of the whole collection.")] = 0,
    dataset_id: Annotated[str | None, typer.Option(help="Minari dataset id (default: from env).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset with this id.")] = False,
    kappa: Annotated[float, typer.Option(help="Surrogate margin h for binary-cost envs.")] = 25.0,
    action_hold: Annotated[
        int | None,
        typer.Option(help="Steps each behaviour decision is held for (default: 10 on the boat, else 1)."),
    ] = None,
    margin: Annotated[
        str,
        typer.Option(
            help="Safety-Gymnasium h: 'surrogate' (kappa if cost > 0 else -1) or 'hazard_distance' (Goal1)."
        ),
    ] = "surrogate",
) -> None:
    """Roll out scripted behaviour policies and write a Minari dataset with cost and h signals."""
    import safefql  # noqa: F401
    from safefql.datasets.collect import collect as run_collect

    try:
        summary = run_collect(
            env_id,
            policy,
            episodes,
            seed,
            dataset_id,
            overwrite=overwrite,
            kappa=kappa,
            action_hold=action_hold,
            margin=margin,
        )
    except USER_ERRORS as exc:
        raise _fail(exc) from exc
    summary.print()


@app.command("import-hdf5")
def import_hdf5(
    file: Annotated[Path, typer.Argument(help="DSRL-style HDF5 file.")],
    env_id: Annotated[str, typer.Option(help="Gymnasium env id the data comes from.")],
    dataset_id: Annotated[str, typer.Option(help="Minari dataset id to create.")],
    kappa: Annotated[float, typer.Option(help="Surrogate margin h = kappa if cost > 0 else -1.")] = 25.0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset with this id.")] = False,
) -> None:
    """Convert a DSRL-style HDF5 file into a Minari dataset (episodes split at terminals/timeouts)."""
    import safefql  # noqa: F401
    from safefql.datasets.hdf5_import import import_hdf5 as run_import

    try:
        result = run_import(file, env_id, dataset_id, kappa=kappa, overwrite=overwrite)
    except USER_ERRORS as exc:
        raise _fail(exc) from exc
    if hasattr(result, "print"):
        result.print()
    else:
        typer.echo(f"wrote dataset {dataset_id}")


@app.command()
def train(
    dataset: Annotated[str, typer.Option(help="Minari dataset id (or path) to train on.")],
    out: Annotated[Path, typer.Option(help="Run directory (checkpoints, metrics.csv, plots).")] = Path(
        "runs/safefql"
    ),
    steps: Annotated[int | None, typer.Option(help="Gradient steps (default: the env's config).")] = None,
    seed: Annotated[int, typer.Option(help="Training seed (first seed with --seeds).")] = 0,
    seeds: Annotated[int, typer.Option(help="Train this many seeds at once (vmapped).")] = 1,
    resume: Annotated[bool, typer.Option(help="Continue the interrupted run in --out.")] = False,
    eval_every: Annotated[int | None, typer.Option(help="Evaluate every N steps (0: at the end).")] = None,
    eval_episodes: Annotated[int, typer.Option(help="Episodes per evaluation.")] = 20,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config field, e.g. --set alpha=1.0 (repeatable)."),
    ] = None,
) -> None:
    """Train SafeFQL (critics, flow teacher, one-step actor) on an offline dataset."""
    import safefql  # noqa: F401
    from safefql.training.trainer import train as run_train

    try:
        config = _config_with_overrides(dataset, set_ or [])
        result = run_train(
            dataset,
            config=config,
            steps=steps,
            seed=seed,
            seeds=seeds,
            out_dir=out,
            resume=resume,
            eval_every=eval_every,
            eval_episodes=eval_episodes,
        )
    except USER_ERRORS as exc:
        raise _fail(exc) from exc
    paths = ", ".join(str(p) for p in result.policy_paths)
    typer.echo(f"checkpoints: {paths}")


def _config_with_overrides(dataset: str, overrides: list[str]):
    """The dataset env's default config with ``key=value`` overrides (values parsed as JSON when possible)."""
    if not overrides:
        return None
    from safefql.datasets.load import dataset_env_id
    from safefql.training.config import default_config, parse_overrides

    changes = parse_overrides(overrides)  # bad syntax fails before the dataset is opened
    return default_config(dataset_env_id(dataset)).replace(**changes)


@app.command()
def calibrate(
    checkpoint: Annotated[Path, typer.Argument(help="Policy checkpoint (policy.eqx) to calibrate in place.")],
    source: Annotated[Source, typer.Option(help="offline or rollout (simulator).")] = Source.offline,
    eps: Annotated[float, typer.Option(help="Allowed miscoverage / violation rate.")] = 0.05,
    beta: Annotated[float, typer.Option(help="Rollout source: 1 - confidence of the bound.")] = 1e-6,
    starts: Annotated[int, typer.Option(help="Rollout source: number of simulated start states.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed for the state picks / start states.")] = 0,
) -> None:
    """Conformally calibrate the safety threshold delta and store it in the checkpoint header."""
    import safefql  # noqa: F401
    from safefql.training.calibration import calibrate as run_calibrate

    try:
        calibration = run_calibrate(
            checkpoint, source=source.value, eps=eps, beta=beta, num_starts=starts, seed=seed
        )
    except USER_ERRORS as exc:
        raise _fail(exc) from exc
    from rich.console import Console

    Console().print(calibration.summary_table())


@app.command()
def evaluate(
    env_id: Annotated[str, typer.Argument(help="Gymnasium env id.")] = BOAT,
    agent: Annotated[str, typer.Option(help="random | zero | goal | module:callable")] = "goal",
    shield: Annotated[
        str, typer.Option(help="Checkpoint path, 'pretrained', 'none', or 'oracle' (boat ground truth).")
    ] = "pretrained",
    episodes: Annotated[int, typer.Option(help="Episodes (start states), the same with and without.")] = 100,
    starts: Annotated[Starts, typer.Option(help="Boat start states: oracle-safe or uniform.")] = Starts.safe,
    seed: Annotated[int, typer.Option(help="Seed of the start states and the random agent.")] = 0,
    mode: Annotated[Mode, typer.Option(help="shield: filter the agent; policy: run the SafeFQL actor.")] = (
        Mode.shield
    ),
    fallback: Annotated[
        Fallback | None,
        typer.Option(help="What replaces an unsafe action (shields.wrapper module doc); default nearest."),
    ] = None,
    delta: Annotated[
        float | None, typer.Option(help="Safety threshold; default: the checkpoint's calibrated delta.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for the JSON report (and plot on the boat).")] = Path(
        "runs/evaluate"
    ),
) -> None:
    """Run an agent with and without the shield from the same start states, side by side."""
    import safefql  # noqa: F401
    from safefql.shields.evaluate import BoatOracleModel
    from safefql.shields.evaluate import evaluate as run_evaluate

    shield_arg = {"none": None, "oracle": BoatOracleModel() if shield == "oracle" else None}.get(
        shield, shield
    )
    shielding = shield_arg is not None and mode == Mode.shield
    if not shielding and (fallback is not None or delta is not None):
        why = "--shield none" if shield_arg is None else "--mode policy"
        raise _fail(
            ValueError(f"--fallback and --delta filter an agent's actions; they have no effect with {why}")
        )
    try:
        report = run_evaluate(
            env_id,
            agent,
            shield=shield_arg,
            episodes=episodes,
            starts=starts.value,
            seed=seed,
            mode=mode.value,
            fallback=(fallback or Fallback.nearest).value,
            delta=delta,
        )
    except USER_ERRORS as exc:
        raise _fail(exc) from exc
    from rich.console import Console

    Console().print(report.table())
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{env_id.replace('/', '_')}_{agent.replace(':', '_')}"
    report.to_json(out / f"{stem}.json")
    typer.echo(f"report: {out / (stem + '.json')}")
    if env_id == BOAT:
        report.plot(out / f"{stem}.png")
        typer.echo(f"trajectories: {out / (stem + '.png')}")


@app.command()
def rollout(
    env_id: Annotated[str, typer.Argument(help="Gymnasium env id.")] = BOAT,
    agent: Annotated[str, typer.Option(help="random | zero | goal | module:callable")] = "goal",
    episodes: Annotated[int, typer.Option(help="Episodes.")] = 20,
    starts: Annotated[Starts, typer.Option(help="Boat start states: oracle-safe or uniform.")] = Starts.safe,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    out: Annotated[Path, typer.Option(help="Folder for the JSON report and trajectory plot.")] = Path(
        "runs/rollout"
    ),
) -> None:
    """Roll out an agent without any shield: return, cost and violations (and a trajectory plot)."""
    evaluate(env_id, agent=agent, shield="none", episodes=episodes, starts=starts, seed=seed, out=out)


@app.command()
def info(checkpoint: Annotated[Path, typer.Argument(help="A safefql checkpoint file.")]) -> None:
    """Print a checkpoint's header: config, spaces, env, dataset, versions and calibration."""
    from safefql.training.checkpoint import read_header

    try:
        header = read_header(checkpoint)
    except USER_ERRORS as exc:
        raise _fail(exc) from exc
    typer.echo(json.dumps(header, indent=2, sort_keys=True))


@app.command()
def oracle(
    plot: Annotated[Path, typer.Option(help="Where to write the value-map PNG.")] = Path("runs/oracle.png"),
) -> None:
    """Compute (or load from cache) the ground-truth HJ safe set of BoatNav-v0 and plot it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from safefql.envs.oracle import load_boat_oracle

    orc = load_boat_oracle()
    fig, ax = plt.subplots(figsize=(7, 5))
    orc.plot(ax)
    ax.set_title("BoatNav-v0: ground-truth HJ avoid value (zero contour = safe-set boundary)")
    plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot, dpi=120, bbox_inches="tight")
    typer.echo(f"oracle plot: {plot} (safe fraction of the box: {(orc.values <= 0).mean():.1%})")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the dataset summary, run, tables and plots.")] = Path(
        "runs/demo"
    ),
    seed: Annotated[int, typer.Option(help="Seed of the whole demo.")] = 0,
    quick: Annotated[bool, typer.Option(help="A much smaller run (about a minute).")] = False,
) -> None:
    """Collect a boat dataset, train and calibrate SafeFQL, then evaluate it as a policy and as a shield."""
    from safefql.demo import run_demo

    try:
        run_demo(out, seed=seed, quick=quick)
    except USER_ERRORS as exc:
        raise _fail(exc) from exc


def main() -> None:
    # The models are small: multi-threaded BLAS only adds synchronisation cost (and thrashes on busy
    # machines). Set before NumPy is imported by any command; an explicit user setting wins.
    import os

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from safefql._io import exit_on_sigterm

    exit_on_sigterm()  # a killed `safefql collect` / `train` then removes its temporary directories
    app()
