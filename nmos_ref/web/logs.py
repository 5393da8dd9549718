"""Debug events that cost nothing while the process logs above debug.

twisted.logger decides levels in its observers: `Logger.debug` builds the event, publishes it, and only then does the
level filter (`nmos_ref.wiring.log_output`) drop it, about 9 µs each time. On the paths every Node takes
all the time (a registration, an authorized heartbeat) that was a few percent of the registry's CPU (issue #13).
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.logger import Logger as TwistedLogger
from twisted.logger import LogLevel


class Logger(TwistedLogger):
    """twisted.logger's Logger, whose `debug` returns at once while debug events are not wanted."""

    # Set by the service that knows the process's log level (DebugEvents) while it runs; True otherwise, so that
    # tests and embedders see every event as before.
    debug_wanted: ClassVar[bool] = True

    def debug(self, format: str | None = None, **kwargs: Any) -> None:
        if Logger.debug_wanted:
            self.emit(LogLevel.debug, format, **kwargs)
