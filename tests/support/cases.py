"""Test case bases that both `python -m twisted.trial tests` and `python -m pytest` run, one item per case.

- `UnitTest` (twisted.trial SynchronousTestCase): no reactor, no sockets; `Clock`, `StubTreq`, `successResultOf`.
- `SocketTest` (twisted.trial TestCase): real loopback sockets; trial's janitor checks the reactor is left clean
  (under pytest too, since trial's own `run` does it). Marked `sockets` for `pytest -m "not sockets"`.
- `@cases("a, b", [(1, 2), ...], ids=[...])` replaces a test method by one method per case, named
  `<test>__<id>`, so both runners see and count every case.
- `Bodies`: test methods shared by several of those classes (one per store: tests/support/backends.py).
- Fixtures are attributes: what `setUp` (or `asyncSetUp` for SocketTest: an `async def setUp`) stores as
  `self.<name>` is passed to a test method's parameter of that name, so the bodies of former pytest functions
  keep their parameters. `tmp_path` is a fresh folder per test; `self.patch` replaces monkeypatch.setattr.
"""
from __future__ import annotations

import functools
import inspect
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

__all__ = ["Bodies", "SkipTest", "SocketTest", "UnitTest", "cases", "skip_case"]


class skip_case:  # noqa: N801  (a value, like pytest.param(..., marks=skip))
    def __init__(self, *values: Any, reason: str) -> None:
        self.values, self.reason = values, reason


def _slug(value: Any) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", str(value)).strip("_")[:50] or "x"


def cases(names: str, rows: Iterable[Any], ids: Sequence[str] | None = None) -> Callable[[Any], Any]:
    keys = [name.strip() for name in names.split(",") if name.strip()]

    def mark(test: Any) -> Any:
        found = []
        for i, row in enumerate(rows):
            reason = None
            if isinstance(row, skip_case):
                reason, row = row.reason, row.values if len(row.values) > 1 else row.values[0]
            values = tuple(row) if len(keys) > 1 else (row,)
            label = ids[i] if ids is not None else "_".join(_slug(v) for v in values)
            found.append((label, dict(zip(keys, values)), reason))
        test.__dict__.setdefault("_cases", []).insert(0, found)  # stacked @cases multiply, like parametrize
        return test
    return mark


def _product(layers: list[list[tuple[str, dict[str, Any], str | None]]]) -> list[tuple[str, dict[str, Any], Any]]:
    combined: list[tuple[str, dict[str, Any], Any]] = [("", {}, None)]
    for layer in layers:
        combined = [((f"{a}_{b}" if a else b), {**x, **y}, r1 or r2) for a, x, r1 in combined for b, y, r2 in layer]
    return combined


def _bound(test: Any, given: dict[str, Any]) -> Any:
    wanted = [name for name in list(inspect.signature(test).parameters)[1:] if name not in given]

    @functools.wraps(test)
    def run(self: Any) -> Any:
        return test(self, **given, **{name: getattr(self, name) for name in wanted})
    run.__signature__ = inspect.Signature([inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)])
    return run


class _Expand:
    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, test in list(vars(cls).items()):
            if not (name.startswith("test") and callable(test)):
                continue
            layers = test.__dict__.get("_cases")
            if layers is None:
                if len(inspect.signature(test).parameters) > 1:
                    setattr(cls, name, _bound(test, {}))
                continue
            delattr(cls, name)
            seen: set[str] = set()
            for label, given, reason in _product(layers):
                method = _bound(test, given)
                method_name = f"{name}__{label}"
                if method_name in seen or hasattr(cls, method_name):  # two cases with the same id: number them
                    method_name = f"{name}__{len(seen)}_{label}"
                assert method_name not in seen, method_name
                seen.add(method_name)
                method.__name__ = method.__qualname__ = method_name
                if reason is not None:
                    method.skip = reason  # trial's per-method skip; pytest runs trial's run(), which honours it
                setattr(cls, method.__name__, method)

    @functools.cached_property
    def tmp_path(self) -> Path:
        """A fresh folder, removed after the test. Not `self.mktemp()`: under pytest that writes below the
        working directory (trial runs in _trial_temp, pytest in the repository)."""
        path = Path(tempfile.mkdtemp(prefix="nmos-ref-test-"))
        self.addCleanup(shutil.rmtree, path, True)  # type: ignore[attr-defined]
        return path


def pending_calls() -> set[Any]:
    """The global reactor's active DelayedCalls."""
    from twisted.internet import reactor

    return {call for call in reactor.getDelayedCalls() if call.active()}


def open_selectables() -> set[Any]:
    """The global reactor's sockets and other selectables, its own wakers aside."""
    from twisted.internet import reactor

    internal = getattr(reactor, "_internalReaders", set())  # the reactor's own wakers
    return {selectable for selectable in (*reactor.getReaders(), *reactor.getWriters()) if selectable not in internal}


class Bodies(_Expand):
    """Test methods without a runner of their own, for several test case classes to share (mixed in before a
    `UnitTest` or `SocketTest` base): their `@cases` are expanded here, once, and inherited as they are.
    tests/support/backends.py runs the same bodies on the in-memory and the etcd store this way."""


class UnitTest(_Expand, SynchronousTestCase):
    """A test without the reactor: it must leave the global reactor as it found it (no DelayedCall, no socket), as
    trial's janitor demands of `SocketTest`s."""

    def _runFixturesAndTest(self, result: Any) -> None:
        calls, selectables = pending_calls(), open_selectables()
        super()._runFixturesAndTest(result)
        left = sorted(map(str, pending_calls() - calls)) + sorted(map(repr, open_selectables() - selectables))
        if left:
            result.addError(self, Failure(AssertionError(f"the test left the reactor dirty: {left}")))


class SocketTest(_Expand, TestCase):
    pytestmark = [pytest.mark.sockets]
