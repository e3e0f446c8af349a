"""docs/design.md stays true to the code: every module is on the map with what it imports,
and the core imports none of the tooling."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pathoai_memobs"
DOC = (ROOT / "docs" / "design.md").read_text()


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def _is_module(name: str) -> bool:
    base = PACKAGE.joinpath(*name.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists() or name == "_rest"


def _typing_only(tree: ast.Module) -> set[int]:
    """Line numbers inside ``if TYPE_CHECKING:`` blocks (imports there never run)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def imports() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports when it runs."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "_assets" in path.parts:
            continue
        name = _module(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        skip = _typing_only(tree)
        deps: set[str] = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or not node.level or node.lineno in skip:
                continue
            base = [p for p in package.split(".") if p and p != "__init__"]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join([*base, *([node.module] if node.module else [])])
            if node.module is None:
                deps |= {f"{target}.{a.name}".lstrip(".") for a in node.names}
            else:
                deps.add(target)
        found[name] = {d for d in deps if _is_module(d) and d != name}
    return found


def _documented() -> dict[str, set[str]]:
    rows: dict[str, set[str]] = {}
    for line in DOC.splitlines():
        m = re.match(r"\| `([a-z_.]+)(?:\.py|/)?` \|[^|]*\| ([^|]*) \|", line)
        if m:
            cell = m.group(2).strip()
            rows[m.group(1)] = set() if cell == "—" else {d.strip() for d in cell.split(",")}
    return rows


def test_every_module_is_on_the_map_with_its_imports() -> None:
    real, documented = imports(), _documented()
    assert set(documented) == set(real), (set(real) - set(documented), set(documented) - set(real))
    for name, deps in real.items():
        assert documented[name] == deps, f"{name}: map says {documented[name]}, code {deps}"


def test_the_core_imports_no_tooling() -> None:
    for name, deps in imports().items():
        if not name.startswith("tools") and name != "__main__":
            assert not {d for d in deps if d.startswith("tools")}, name
