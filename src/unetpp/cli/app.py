"""The ``unetpp`` command: one typer app, commands registered from one module per concern.

Errors the user can fix (:class:`~unetpp.errors.UnetppError`, ``ValueError`` from bad
arguments) print one line per problem and exit 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import sys

import typer

from .. import __version__
from . import commands_data, commands_experiment, commands_inference, commands_models, commands_train
from .common import fail

app = typer.Typer(name="unetpp", help="UNet++ for medical image segmentation: train, prune, predict.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

_DEBUG = {"on": False}


def _version(value: bool) -> None:
    if value:
        print(f"unetpp {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit."),
          debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")) -> None:
    _DEBUG["on"] = debug


for module in (commands_models, commands_data, commands_train, commands_inference, commands_experiment):
    module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``unetpp`` script."""
    from ..errors import UnetppError

    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        app(args=argv, standalone_mode=True)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    except (UnetppError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as e:
        if debug:
            raise
        problems = e.problems if isinstance(e, UnetppError) else [str(e)]
        fail(problems)
