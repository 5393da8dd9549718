"""The process's log output: where twistd would write it, without the events below the log level, from the process's
first line to its last.

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
from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LegacyLogObserverWrapper,
    LogLevel,
    LogLevelFilterPredicate,
    textFileLogObserver,
)


def filtered(observer: ILogObserver, level: str) -> ILogObserver:
    """`observer`, given only the events at `level` or above."""
    return FilteringLogObserver(observer, [LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))])


def twistd_output(config: Mapping[str, Any]) -> ILogObserver | None:
    """The observer twistd would make from its options `config`; None where twistd would refuse
    the options (a daemon logging to stdout): twistd then says so itself."""
    if config.get("syslog"):
        from twisted.python.syslog import SyslogObserver

        return LegacyLogObserverWrapper(SyslogObserver(config.get("prefix") or "twisted").emit)
    name = config.get("logfile")
    if name == "-" or (not name and config.get("nodaemon")):
        if not config.get("nodaemon"):
            return None
        return textFileLogObserver(sys.stdout)
    from twisted.python.logfile import LogFile

    log_file = LogFile.fromFullPath(name or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):  # as twistd: SIGUSR1 rotates the file, unless someone else took it
        from twisted.internet import reactor

        signal.signal(signal.SIGUSR1, lambda _signal, _frame: reactor.callFromThread(log_file.rotate))
    return textFileLogObserver(log_file)
