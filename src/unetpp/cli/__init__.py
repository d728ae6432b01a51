"""The ``unetpp`` command line; see :mod:`unetpp.cli.app`."""

from .app import app, main

__all__ = ["app", "main"]
