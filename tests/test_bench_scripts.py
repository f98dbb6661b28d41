"""The benchmark scripts against the library they measure.

No test runs them (each takes minutes), and they import chainrule's names inside functions too, so
a name the library moves or drops breaks a script only when it reaches that line: `speed.py` once
crashed at start-up on `from chainrule.data.mnist import DataError` after that module stopped
re-exporting it. Every `from chainrule... import name` in bench/, at any depth, must resolve.
"""

import ast
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _chainrule_imports(script: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) of each `from chainrule... import name` in `script`, wherever it stands."""
    return [(node.lineno, node.module, alias.name) for node in ast.walk(ast.parse(script.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "chainrule"
            for alias in node.names]


def _exists(module: str, name: str) -> bool:
    """Whether `from module import name` would work: an attribute, or a package's submodule."""
    found = importlib.import_module(module)
    return hasattr(found, name) or (hasattr(found, "__path__")
                                     and importlib.util.find_spec(f"{module}.{name}") is not None)


@pytest.mark.parametrize("script", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_every_name_a_bench_script_imports_from_chainrule_exists(script):
    missing = [f"{script.name}:{line}: {module}.{name}" for line, module, name in _chainrule_imports(script)
               if not _exists(module, name)]
    assert not missing, missing
