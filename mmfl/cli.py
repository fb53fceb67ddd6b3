"""The ``mmfl`` console command: one entry point with a sub-command per user."""

from __future__ import annotations

import sys

import typer

from mmfl import __version__
from mmfl.errors import MmflError

app = typer.Typer(
    help="mmfl: federated multimodal training where sites share representations, never data or weights.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"mmfl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version"
    ),
) -> None:
    """Sub-commands for researchers (simulate), operators (server), sites (client, adapt)."""


def _register() -> None:
    from mmfl.client.cli import app as client_app
    from mmfl.data.cli import app as data_app
    from mmfl.server.cli import app as server_app
    from mmfl.server.runs_cli import app as runs_app
    from mmfl.simulation.cli import app as simulate_app

    app.add_typer(simulate_app, name="simulate")
    app.add_typer(server_app, name="server")
    app.add_typer(data_app, name="data")
    app.add_typer(client_app, name="client")
    app.add_typer(runs_app, name="runs")

    from mmfl.adaptation.cli import adapt_cmd, train_unimodal_cmd

    app.command("adapt")(adapt_cmd)
    app.command("train-unimodal")(train_unimodal_cmd)

    from mmfl.inference.cli import embed_cmd, evaluate_cmd, export_cmd

    app.command("evaluate")(evaluate_cmd)
    app.command("embed")(embed_cmd)
    app.command("export")(export_cmd)


_register()


def main() -> None:
    """Run the CLI; a user-facing failure prints one line and exits with status 2."""
    try:
        app()
    except MmflError as err:
        print(f"mmfl: error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if err.filename is None:
            raise
        # A file mmfl may not read or write (a read-only ledger, a full disk): name it, no trace.
        print(f"mmfl: error: {err.strerror or type(err).__name__}: {err.filename}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("mmfl: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
