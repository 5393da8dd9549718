"""The distribution lists every package, so an installed copy has all of the code (tests/ itself is not shipped);
the source keeps to the layer contract in .importlinter."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.cases import SkipTest, UnitTest

ROOT = Path(__file__).resolve().parents[1]


def require_source_tree() -> None:
    if not (ROOT / "setup.cfg").is_file() or not (ROOT / "nmos_ref").is_dir():
        raise SkipTest("runs from the source tree only (CI also runs the tests against an installed copy)")


def lint_imports() -> str:
    """The lint-imports command of this interpreter's environment (a venv need not be activated), else of PATH."""
    beside = Path(sys.executable).parent / "lint-imports"
    found = str(beside) if beside.is_file() else shutil.which("lint-imports")
    if found is None:
        raise SkipTest("lint-imports (import-linter) is not installed")
    return found


class PackagingTests(UnitTest):
    def test_every_package_is_listed_in_setup_cfg(self) -> None:
        require_source_tree()
        from setuptools.config.setupcfg import read_configuration

        listed = set(read_configuration(str(ROOT / "setup.cfg"))["options"]["packages"])
        found = {".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "nmos_ref").rglob("__init__.py")}
        assert found - listed == set(), "add these to [options] packages in setup.cfg"
        assert "twisted.plugins" in listed

    def test_imports_keep_to_the_layer_contract(self) -> None:
        """STYLE.md §1: imports run only downward through the rooms, and no two modules import each other."""
        require_source_tree()
        config = ROOT / ".importlinter"
        if not config.is_file():
            raise SkipTest("runs from the source tree only: no .importlinter beside setup.cfg")
        # From the root, so lint-imports analyses this tree's nmos_ref; no cache folder left in the work tree.
        done = subprocess.run([lint_imports(), "--no-cache", str(config)], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"lint-imports failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        assert "0 broken" in done.stdout, done.stdout
