"""The code base's own rules, checked in CI: ruff is clean (with its growth gates), no module over 350 lines, and
raycredit's modules import without a circle."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "raycredit"


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or pytest.fail("ruff is not installed (it is in the [test] extra)")
    p = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:]


MAX_MODULE_LINES = 350


def test_no_module_outgrows_one_room():
    """A growth gate beside ruff's (C901, PLR0915 in pyproject.toml): no module of raycredit/ over 350 lines."""
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in sorted(PACKAGE.rglob("*.py"))}
    assert not {p: n for p, n in sizes.items() if n > MAX_MODULE_LINES}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """raycredit modules that `path` imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names}
            out |= (subs & modules) or ({node.module} & modules)
    return out


def test_no_import_circle():
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    graph = {module_name(f): imports(f, modules) - {module_name(f)} for f in files}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        if state.get(m) == 1:
            pytest.fail("import circle: " + " -> ".join(path[path.index(m):] + [m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for n in sorted(graph[m]):  # a package's __init__ is a module like the others: its imports are edges
            visit(n, path + [m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])


def test_the_config_imports_no_torch_and_no_rule():
    """The knobs are declared without the machinery that uses them: importing raycredit.config (and with it the
    package's __init__) loads neither torch nor a rule."""
    code = "import sys, raycredit.config; print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(" \
           "('raycredit.rules', 'raycredit.train', 'raycredit.engine', 'raycredit.tracking'))))"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "[]", p.stdout


def test_the_readme_layout_names_every_module():
    """The README's Layout table names every module of raycredit/ (a package by its folder)."""
    text = (ROOT / "README.md").read_text()
    layout = text[text.index("## Layout"):text.index("## Learning rules")]
    missing = [p.name for p in sorted(PACKAGE.iterdir())
               if (p.suffix == ".py" and p.name != "__init__.py" and f"raycredit/{p.name}" not in layout)
               or (p.is_dir() and (p / "__init__.py").exists() and f"raycredit/{p.name}/" not in layout)]
    for package in ("engine", "tracking"):
        row = next(line for line in layout.splitlines() if f"raycredit/{package}/" in line)
        missing += [f"{package}/{p.name}" for p in sorted((PACKAGE / package).glob("*.py"))
                    if p.name != "__init__.py" and f"`{p.name}`" not in row]
    assert not missing, missing


def test_user_facing_texts_cite_nothing_a_user_cannot_open():
    """The README, the searches' and analyses' texts and the package name the reference study by that name: no
    "the seeds" (its notes' file names), no "SPEC §" (a development document) and no issue numbers."""
    import re

    banned = re.compile(r"SPEC §|the seeds'|the seeds (found|ran|tuned|checkpointed)|issue #\d")
    texts = [ROOT / "README.md", *sorted((ROOT / "searches").glob("*.py")), *sorted((ROOT / "analysis").glob("*.py")),
             *sorted(PACKAGE.rglob("*.py"))]
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()[:80]}" for p in texts
            for i, line in enumerate(p.read_text().splitlines(), 1) if banned.search(line)]
    assert not hits, hits
