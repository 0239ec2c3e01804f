"""The ``safefql`` command line (typer). Subcommands call library functions and hold no logic."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Safe Flow Q-Learning: offline safe RL.")


@app.command()
def version() -> None:
    """Print the installed safefql version."""
    import safefql

    typer.echo(safefql.__version__)


def main() -> None:
    app()
