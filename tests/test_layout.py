"""The dependency rules of the architecture (../shared/docs/ARCHITECTURE.md), checked on the
source: every ``import`` and ``from ... import`` is read with ``ast``, those inside functions
(lazy imports) and under ``if TYPE_CHECKING`` included, so that the layout stays true.

- the device runtime (``edge/`` minus ``edge/commands``, ``edge/deploy``, ``edge/batch``,
  ``edge/image``)
  imports nothing heavier than numpy and one interpreter: no TensorFlow, Keras, SciPy,
  Fabric, Paramiko, Invoke, Ray; matplotlib only in ``edge/report.py``, inside a function
  (``screen --report``). The interpreter's last fallback, ``tensorflow.lite``, is taken by
  name through importlib in ``edge/interpreter.py`` (the architecture's third choice);
- the device runtime imports nothing from ``edge.commands``, ``edge.deploy``, ``edge.batch``,
  ``edge.image``; ``edge.deploy`` and ``edge.batch`` import neither each other nor
  ``edge.commands``; ``edge.image`` builds on ``edge.deploy`` (the bundle it installs) and
  imports no other host part;
- nothing under ``edge/`` imports ``train``, ``convert`` or ``firmware_bridge``, and only the
  command table (``edge/cli.py``) names their modules (as strings);
- no import circles among the project's modules (strongly connected components).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("edge", "train", "convert", "firmware_bridge")
HOST_PARTS = ("edge.commands", "edge.deploy", "edge.batch", "edge.image")
BUILDS_ON = {"edge.image": ("edge.deploy",)}  # host part -> host parts it may import
HEAVY = ("tensorflow", "tf_keras", "keras", "scipy", "fabric", "paramiko", "invoke", "ray",
         "matplotlib")
LAZY_MATPLOTLIB = "edge/report.py"
COMMAND_TABLE = "edge/cli.py"
OTHER_ROOMS = ("train", "convert", "firmware_bridge")
MODULE_NAME = re.compile(r"^(train|convert|firmware_bridge)(\.[A-Za-z_]\w*)+$")


def module_files(root: Path = REPO) -> dict[str, Path]:
    """Dotted name -> file of every module of the four packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported dotted name, line, at module level) for every import of a file; a
    ``from X import y`` gives both X and X.y (y may be a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            out.append((base, node.lineno, id(node) in top_level))
            out += [(f"{base}.{a.name}", node.lineno, id(node) in top_level)
                    for a in node.names]
    return out


def first_per_line(found: list[tuple[str, int, bool]]) -> list[tuple[str, int, bool]]:
    """One import per line (``from X import y`` gives X and X.y: X is enough to report)."""
    lines: set[int] = set()
    return [i for i in found if not (i[1] in lines or lines.add(i[1]))]


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def runtime_modules(files: dict[str, Path]) -> dict[str, Path]:
    return {n: p for n, p in files.items() if n.startswith("edge") and not _within(n, HOST_PARTS)}


def heavy_import_violations(files: dict[str, Path], root: Path = REPO) -> list[str]:
    bad = []
    for name, path in runtime_modules(files).items():
        heavy = [i for i in imports(name, path) if i[0].split(".")[0] in HEAVY]
        for target, line, top in first_per_line(heavy):
            lazy_report = _rel(path, root) == LAZY_MATPLOTLIB and not top
            if target.split(".")[0] == "matplotlib" and lazy_report:
                continue
            bad.append(f"{_rel(path, root)}:{line} imports {target} (the device runtime imports "
                       "no TensorFlow, Keras, SciPy, Fabric, Paramiko, Invoke, Ray; "
                       f"matplotlib only lazily in {LAZY_MATPLOTLIB})")
    return bad


def host_part_violations(files: dict[str, Path], root: Path = REPO) -> list[str]:
    bad = []
    for name, path in files.items():
        if not name.startswith("edge"):
            continue
        if _within(name, HOST_PARTS):
            own = next(p for p in HOST_PARTS if _within(name, (p,)))
            forbidden = tuple(p for p in HOST_PARTS
                              if p != own and p not in BUILDS_ON.get(own, ()))
            if own == "edge.commands":
                continue
            why = f"{own} may import the device runtime, never the other host parts"
        else:
            forbidden = HOST_PARTS
            why = "the device runtime never imports the host-side parts"
        bad += [f"{_rel(path, root)}:{line} imports {target} ({why})"
                for target, line, _ in first_per_line([i for i in imports(name, path)
                                                        if _within(i[0], forbidden)])]
    return bad


def other_room_violations(files: dict[str, Path], root: Path = REPO) -> list[str]:
    bad = []
    for name, path in files.items():
        if not name.startswith("edge"):
            continue
        bad += [f"{_rel(path, root)}:{line} imports {target} (nothing under edge/ imports train, "
                f"convert or firmware_bridge; name the module in {COMMAND_TABLE}'s table)"
                for target, line, _ in first_per_line([i for i in imports(name, path)
                                                        if _within(i[0], OTHER_ROOMS)])]
        if _rel(path, root) == COMMAND_TABLE:
            continue
        tree = ast.parse(path.read_text())
        bad += [f"{_rel(path, root)}:{node.lineno} names module {node.value!r} (only the command "
                f"table, {COMMAND_TABLE}, names train, convert or firmware_bridge modules)"
                for node in ast.walk(tree) if isinstance(node, ast.Constant)
                and isinstance(node.value, str) and MODULE_NAME.match(node.value)]
    return bad


def module_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> project modules it imports (a ``from package import name`` counts as the
    module ``package.name`` when there is one, else as ``package``)."""
    graph = {}
    for name, path in files.items():
        edges = set()
        for target, _, _ in imports(name, path):
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_device_runtime_imports_nothing_heavy():
    assert heavy_import_violations(module_files()) == []


def test_device_runtime_imports_no_host_side_part():
    assert host_part_violations(module_files()) == []


def test_only_the_command_table_names_train_convert_or_firmware_bridge():
    assert other_room_violations(module_files()) == []


def test_no_import_circles():
    assert circles(module_graph(module_files())) == []


def test_the_checks_see_a_violation(tmp_path):
    """Each rule fails on a copy of edge/ with one bad import inside a function."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "edge" / "tables.py").write_text(
        "def f():\n    import scipy\n    from edge import spec\n")
    (tmp_path / "edge" / "spec.py").write_text("from edge.tables import f\n")
    (tmp_path / "edge" / "screening.py").write_text(
        "def f():\n    from edge.deploy import remote\n    import train.baseline\n"
        "    return 'convert.tflm'\n")
    files = module_files(tmp_path)
    assert heavy_import_violations(files, tmp_path) == [
        "edge/tables.py:2 imports scipy (the device runtime imports no TensorFlow, Keras, "
        "SciPy, Fabric, Paramiko, Invoke, Ray; matplotlib only lazily in edge/report.py)"]
    assert [v.split(" (")[0] for v in host_part_violations(files, tmp_path)] == [
        "edge/screening.py:2 imports edge.deploy"]
    assert [v.split(" (")[0] for v in other_room_violations(files, tmp_path)] == [
        "edge/screening.py:3 imports train.baseline",
        "edge/screening.py:4 names module 'convert.tflm'"]
    assert circles(module_graph(files)) == [["edge.spec", "edge.tables"]]


def test_screening_from_the_cli_loads_no_host_side_module(tmp_path):
    """What a Raspberry Pi runs: `heartsound screen` imports none of the host parts."""
    wav = sorted((REPO / "examples").glob("*.wav"))[0]
    code = ("import sys; from edge.cli import main; "
            f"rc = main(['screen', {str(wav)!r}, '--no-log']); "
            f"print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} "
            f"or m.startswith({HOST_PARTS[1:] + OTHER_ROOMS!r}))); sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HEARTSOUND_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "LOADED []"
