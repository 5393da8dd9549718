"""Every test leaves the reactor as it found it, as Trial's janitor requires: none of its DelayedCalls still pending
and none of its sockets still open, after the reactor has had two turns to finish what was already under way. A
test that breaks this fails here (so the suite keeps to what Trial expects of tests, though pytest runs it)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task


def _pending() -> set[Any]:
    return {call for call in reactor.getDelayedCalls() if call.active()}


def _open() -> set[Any]:
    internal = getattr(reactor, "_internalReaders", set())  # the reactor's own wakers
    return {selectable for selectable in (*reactor.getReaders(), *reactor.getWriters())
            if selectable not in internal}


@pytest.fixture(autouse=True)
def clean_reactor() -> Iterator[None]:
    calls, selectables = _pending(), _open()
    yield
    left_calls, left_open = _pending() - calls, _open() - selectables
    for _ in range(2):
        if not (left_calls or left_open):
            break
        # One reactor turn (a zero delay: no time passes), as Trial's janitor runs reactor.iterate(0) twice before
        # its check; it lets a close already under way (a client's FIN reaching the server) complete.
        pytest_twisted.blockon(task.deferLater(reactor, 0, lambda: None))
        left_calls, left_open = _pending() - calls, _open() - selectables
    assert not left_calls, f"the test left DelayedCalls pending: {sorted(map(str, left_calls))}"
    assert not left_open, f"the test left connections or ports open: {sorted(map(repr, left_open))}"
