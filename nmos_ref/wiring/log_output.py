"""The process's log output: where twistd would write it, as text lines or one JSON object per line, without the
events below the log level, from the process's first line to its last.

twistd has no log level, and its observers start after `makeService`: a filter added to them when the services
start misses what was logged before (twistd replays it) and after the services stop. twistd does take the
observer of an application that offers one (`ILogObserver` component, as a .tac file can set), so the process
tree offers this one to the application it is added to (`nmos_ref.wiring.tree.ProcessTree`). It writes where
twistd would have written: stdout with `-n`, `--logfile` (rotated on SIGUSR1, as twistd does), or `--syslog`.
A `--logger` of the user's own replaces it, as it replaces twistd's: every event then goes there, unfiltered.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Mapping
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LegacyLogObserverWrapper,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    jsonFileLogObserver,
    textFileLogObserver,
)


def filtered(observer: ILogObserver, level: str) -> ILogObserver:
    """`observer`, given only the events at `level` or above."""
    return FilteringLogObserver(observer, [LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))])


def stream_observer(stream: IO[Any], log_format: str) -> ILogObserver:
    """Text lines as twistd writes them, or for log collectors one JSON object per line: twisted.logger's
    `eventAsJSON` (the format string and its fields, `log_level`, `log_namespace`, `log_time`, a failure's
    traceback; `eventFromJSON` reads it back) with the message as text added under `text`."""
    if log_format == "json":
        lines = jsonFileLogObserver(stream, recordSeparator="")  # "": newline-delimited, not RFC 7464's RS
        return lambda event: lines({**event, "text": formatEvent(event)})
    return textFileLogObserver(stream)


def twistd_output(config: Mapping[str, Any], log_format: str) -> ILogObserver | None:
    """The observer twistd would make from its options `config`, in `log_format`; None where twistd would refuse
    the options (a daemon logging to stdout): twistd then says so itself."""
    if config.get("syslog"):
        from twisted.python.syslog import SyslogObserver

        return LegacyLogObserverWrapper(SyslogObserver(config.get("prefix") or "twisted").emit)
    name = config.get("logfile")
    if name == "-" or (not name and config.get("nodaemon")):
        if not config.get("nodaemon"):
            return None
        return stream_observer(sys.stdout, log_format)
    from twisted.python.logfile import LogFile

    log_file = LogFile.fromFullPath(name or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):  # as twistd: SIGUSR1 rotates the file, unless someone else took it
        from twisted.internet import reactor

        signal.signal(signal.SIGUSR1, lambda _signal, _frame: reactor.callFromThread(log_file.rotate))
    return stream_observer(log_file, log_format)
