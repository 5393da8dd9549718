"""nmos_ref.web.logs: debug events are emitted while they are wanted, and not even built while they are not."""

from __future__ import annotations

from typing import Any

from twisted.logger import LogLevel, LogPublisher

from nmos_ref.web.logs import Logger
from tests.support.cases import UnitTest


class LoggerTests(UnitTest):
    def _logger(self) -> tuple[Logger, list[dict[str, Any]]]:
        seen: list[dict[str, Any]] = []
        publisher = LogPublisher(seen.append)
        return Logger(observer=publisher), seen

    def test_debug_events_while_wanted(self) -> None:
        log, seen = self._logger()
        log.debug("one {n}", n=1)
        assert [(e["log_level"], e["log_format"], e["n"]) for e in seen] == [(LogLevel.debug, "one {n}", 1)]
        assert seen[0]["log_namespace"] == __name__  # named after the module that made it, as twisted's Logger

    def test_no_debug_event_while_not_wanted_and_other_levels_as_ever(self) -> None:
        log, seen = self._logger()
        self.patch(Logger, "debug_wanted", False)
        log.debug("one {n}", n=1)
        log.info("two")
        log.error("three")
        assert [e["log_format"] for e in seen] == ["two", "three"]
