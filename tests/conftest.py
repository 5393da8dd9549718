"""One suite for both runners: every test is a twisted.trial test case (tests/support/cases.py), which Trial runs
and pytest collects through its unittest support. A test that only pytest would run (a plain function, a class that
is not a TestCase) fails the collection here, so the two runners always count the same tests. The clean-reactor
check is Trial's own: its janitor for `SocketTest`, and `UnitTest`'s check for tests without the reactor."""

from __future__ import annotations

import unittest
from typing import Any

import pytest


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    strays = [item.nodeid for item in items if not isinstance(getattr(item, "instance", None), unittest.TestCase)
              and not (getattr(item, "cls", None) and issubclass(item.cls, unittest.TestCase))]
    if strays:
        raise pytest.UsageError("tests that Trial would not run (make them methods of a tests.support.cases "
                                f"UnitTest or SocketTest): {', '.join(strays[:10])}")
