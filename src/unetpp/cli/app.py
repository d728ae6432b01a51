"""The ``unetpp`` command: one typer app, commands registered from one module per concern.

Errors the user can fix (:class:`~unetpp.errors.UnetppError`, ``ValueError`` from bad
arguments) print one line per problem and exit 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import inspect
import sys

import typer

from .. import __version__
from . import (commands_data, commands_experiment, commands_inference, commands_models, commands_package,
               commands_train)
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


for module in (commands_models, commands_data, commands_train, commands_inference, commands_package,
               commands_experiment):
    module.register(app)


def _one_line_summaries(typer_app: typer.Typer) -> None:
    """The command list shows each docstring's first paragraph; typer's rich help keeps its
    line breaks there, so give every command that paragraph on one line as its short help."""
    for info in typer_app.registered_commands:
        doc = inspect.cleandoc(info.help or (info.callback.__doc__ if info.callback else "") or "")
        if doc and not info.short_help:
            info.short_help = " ".join(doc.split("\n\n")[0].split())
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _one_line_summaries(group.typer_instance)


_one_line_summaries(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``unetpp`` script.

    Every failure ends in one line per problem on stderr and exit status 1 (130 for Ctrl-C),
    never a traceback, unless ``--debug`` is given: errors about the input (UnetppError,
    ValueError), the file system (a missing or unwritable path, a full disk), memory, and
    even unexpected ones (reported as a probable bug, with the hint to use ``--debug``).
    """
    from ..errors import UnetppError

    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 must not crash a print
        try:
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            pass
    try:
        # not standalone: click would print usage errors in a box and exit 2, and Ctrl-C as "Aborted!"
        code = app(args=argv, standalone_mode=False)
    except SystemExit:
        raise
    except (KeyboardInterrupt, typer.Abort) as e:
        interrupted = isinstance(e, KeyboardInterrupt) or isinstance(e.__cause__, KeyboardInterrupt)
        fail("interrupted" if interrupted else "aborted", code=130 if interrupted else 1)
    except _CLICK_ERROR as e:  # usage: unknown option, missing argument, bad value of an option
        if type(e).__name__ == "NoArgsIsHelpError":  # plain `unetpp`: the help, nothing wrong
            e.show()
            raise SystemExit(0) from None
        fail(usage_line(e))
    except Exception as e:  # noqa: BLE001 - the CLI's one place that turns errors into lines
        if debug:
            raise
        fail(error_lines(e))
    raise SystemExit(code if isinstance(code, int) else 0)


#: click's base class of usage errors; typer re-exports only a subclass (and newer typer
#: vendors click, so ``import click`` is not the same class or not installed at all).
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def usage_line(e: Exception) -> str:
    """``unetpp train: No such option: --bogus; see 'unetpp train --help'`` (one line)."""
    ctx = getattr(e, "ctx", None)
    where = ctx.command_path if ctx is not None else "unetpp"
    message = " ".join(e.format_message().split()).rstrip(".")  # type: ignore[attr-defined]
    return f"{where}: {message}; see '{where} --help'"


def error_lines(e: BaseException) -> list[str]:
    """One line per problem for any exception (see :func:`main`)."""
    import errno

    import torch

    from ..errors import UnetppError

    if isinstance(e, UnetppError):
        return e.problems
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return ["the GPU ran out of memory; use a smaller --batch-size or --patch-size, or --device cpu"]
    if isinstance(e, MemoryError):
        return ["out of memory; use smaller inputs, a smaller --batch-size or --patch-size"]
    if isinstance(e, OSError):
        where = e.filename if e.filename is not None else ""
        what = e.strerror or str(e)
        if e.errno == errno.ENOSPC:
            what += " (files already written are complete: every file is written atomically)"
        return [f"{where}: {what}" if where else what]
    if isinstance(e, ValueError):
        return [line for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
    detail = " ".join(str(e).split())[:300]
    return [f"unexpected {type(e).__name__}: {detail} (probably a bug in unetpp: run again with --debug "
            "for the traceback and please report it)"]
