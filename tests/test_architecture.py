"""The house: imports point down the floors, no import circle, no source file too long.

Floors, lowest first (a module may import its own floor and those below):

    0  errors, io, console, metrics      ground floor: no unetpp imports but each other
    1  models, data                      networks; datasets and files
    2  runtime, run                      how the hardware is used; the run folder
    3  training, inference               the loop; the engine, predictor, evaluate, prune, export
    4  experiment                        compare, demo
    5  cli, __main__, napari             the command line; the napari plugin beside it

Imports inside functions count too: a lazy import is still an arrow.

The data room is split the same way: its rooms, lowest first, are files, samples, cases,
planning and loading, and above them the modules at the top of ``data/`` (open, io and the
public face in ``__init__``); a room imports only the rooms before it.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "unetpp"
FLOORS = {"errors": 0, "io": 0, "console": 0, "metrics": 0, "models": 1, "data": 1, "runtime": 2, "run": 2,
          "training": 3, "inference": 3, "experiment": 4, "cli": 5, "__main__": 5,
          "napari": 5}
MAX_LINES = 420
DATA_ROOMS = {"files": 0, "samples": 1, "cases": 2, "planning": 3, "loading": 4}
DATA_TOP = len(DATA_ROOMS)  # open.py, io.py and the package's __init__: above every room
MAX_DATA_TOP_MODULES = 8


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every ``unetpp.*`` module that ``path`` imports, resolved to absolute names."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("unetpp")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("unetpp"):
                found.add(target)
                for alias in node.names:  # "from . import runtime" imports a module
                    if (SRC.parent / (target + "." + alias.name).replace(".", "/")).with_suffix(".py").exists():
                        found.add(target + "." + alias.name)
    return found


def floor_of(module: str) -> int | None:
    parts = module.split(".")
    return FLOORS.get(parts[1]) if len(parts) > 1 else None


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in SRC.rglob("*.py")}


def test_imports_point_down():
    problems = []
    for module, targets in graph().items():
        mine = floor_of(module)
        if mine is None:  # unetpp/__init__.py: the public API re-exports every floor
            continue
        for target in targets:
            theirs = floor_of(target)
            if theirs is not None and theirs > mine:
                problems.append(f"{module} (floor {mine}) imports {target} (floor {theirs})")
    assert not problems, "\n".join(sorted(problems))


def test_no_import_circle():
    modules = graph()
    known = set(modules)

    def resolve(name: str) -> str | None:  # a package import counts as its __init__
        return name if name in known else None

    edges = {m: {t for t in (resolve(x) for x in targets) if t and t != m} for m, targets in modules.items()}
    # a package's __init__ re-exporting its own modules is not a circle: drop parent -> child
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in edges.items()}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_no_source_file_too_long():
    long = [f"{p.relative_to(SRC)}: {n} lines" for p in SRC.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES]
    assert not long, "\n".join(long)


def data_room(module: str) -> int | None:
    parts = module.split(".")
    if parts[:2] != ["unetpp", "data"]:
        return None
    return DATA_ROOMS.get(parts[2], DATA_TOP) if len(parts) > 2 else DATA_TOP


def test_data_rooms_import_only_the_rooms_below():
    problems = []
    for module, targets in graph().items():
        mine = data_room(module)
        for target in targets if mine is not None else ():
            theirs = data_room(target)
            if theirs is not None and theirs > mine:
                problems.append(f"{module} (data room {mine}) imports {target} (data room {theirs})")
    assert not problems, "\n".join(sorted(problems))


def test_data_top_is_small_and_every_room_says_what_it_may_import():
    data = SRC / "data"
    top = sorted(p.name for p in data.glob("*.py"))
    assert len(top) <= MAX_DATA_TOP_MODULES, top
    rooms = sorted(p.name for p in data.iterdir() if (p / "__init__.py").is_file())
    assert rooms == sorted(DATA_ROOMS)
    for room in rooms:
        doc = ast.get_docstring(ast.parse((data / room / "__init__.py").read_text(encoding="utf-8")))
        assert doc and "May import:" in doc, f"data/{room}/__init__.py: say what lives there and what it may import"
