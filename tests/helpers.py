"""What several test files share (imported by name: the tests folder is on sys.path)."""

from __future__ import annotations

from unetpp.cli import main


def cli(argv, capsys) -> tuple[int, str, str]:
    """Run the command line in this process: ``(exit code, stdout, stderr)``."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err
