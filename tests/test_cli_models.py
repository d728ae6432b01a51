"""The CLI's model commands: --version, models, info (contract JSON), one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from unetpp import __version__


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unetpp", *args], capture_output=True, text=True, timeout=300)


def test_version():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"unetpp {__version__}"


def test_models_json():
    r = run_cli("models", "--json")
    assert r.returncode == 0
    assert set(json.loads(r.stdout)) == {"unetpp", "unet", "wide-unet"}


def test_info_json_matches_contract():
    r = run_cli("info", "unetpp", "--preset", "paper", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["arch"] == "unetpp" and data["preset"] == "paper" and data["dims"] == 2
    assert data["params"] == {"total": 9041700, "levels": {"1": 100961, "2": 511105, "3": 2204961, "4": 9041601}}
    flops = [data["flops"][k] for k in "1234"]
    assert flops == sorted(flops)


def test_info_wide_unet_3d():
    r = run_cli("info", "unet", "--dims", "3", "--json", "--size", "32")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["params"]["levels"] == {"4": 22575329}


@pytest.mark.parametrize("args,needle", [
    (("info", "vnet"), "arch must be one of"),
    (("info", "unetpp", "--dims", "5"), "dims must be 2 or 3, got 5"),
    (("info", "unetpp", "--size", "0"), "--size must be in"),
])
def test_info_errors_are_one_line(args, needle):
    r = run_cli(*args)
    assert r.returncode == 1
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args,needle", [
    (("train", "somewhere", "--bogus"), "unetpp train: No such option: --bogus"),
    (("train", "somewhere"), "unetpp train: Missing option '--out'"),
    (("info", "unetpp", "--dims", "two"), "unetpp info: Invalid value for '--dims'"),
    (("nocommand",), "unetpp: No such command 'nocommand'"),
])
def test_usage_errors_exit_1_with_one_line(args, needle):
    """The contract: exit 1 on bad usage, one line naming the option (click alone exits 2
    and draws a box)."""
    r = run_cli(*args)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
    assert "--help'" in lines[0] and "╭" not in r.stderr


def test_no_arguments_prints_help():
    r = run_cli()
    assert r.returncode == 0 and "Usage: " in r.stdout + r.stderr and "compare" in r.stdout + r.stderr


def test_command_list_summaries_are_one_paragraph_on_one_line():
    from unetpp.cli.app import app

    infos = list(app.registered_commands)
    infos += [c for g in app.registered_groups for c in g.typer_instance.registered_commands]
    assert len(infos) == 16  # 11 commands, and the data group's list, fetch, check, prepare, plan
    for info in infos:
        assert info.short_help and "\n" not in info.short_help, info.name
    prune = next(i for i in infos if i.name == "prune")
    assert prune.short_help.startswith("Score every level") and "  " not in prune.short_help
