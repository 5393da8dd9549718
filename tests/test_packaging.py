"""The distribution lists every package, so an installed copy has all of the code (tests/ itself is not shipped)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_setup_cfg() -> None:
    if not (ROOT / "setup.cfg").is_file() or not (ROOT / "nmos_ref").is_dir():
        pytest.skip("runs from the source tree only (CI also runs the tests against an installed copy)")
    from setuptools.config.setupcfg import read_configuration

    listed = set(read_configuration(str(ROOT / "setup.cfg"))["options"]["packages"])
    found = {".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "nmos_ref").rglob("__init__.py")}
    assert found - listed == set(), "add these to [options] packages in setup.cfg"
    assert "twisted.plugins" in listed
