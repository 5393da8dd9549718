"""`nmos-ref` (also `python -m nmos_ref`): the service tree of `twistd -n nmos-ref`, run without twistd's own stacks.

twistd imports, before any plugin code runs, the standard library's TLS and OpenSSL hash modules (`ssl`, `_ssl`,
`_hashlib`, which map the system's libcrypto), its plugin cache (which imports Trial and with it `unittest`), `pdb`
and its application machinery: about 6 MB of an idle registry's resident memory that a registry without TLS never
uses (issue 13, idle footprint; benchmarks/README.md has the figures). This launcher takes the same arguments and
builds the same tree with the same `makeService`, in the foreground, logging to standard output in twistd's format.

A process whose settings may need TLS (an `ssl:` listener, `--auth`, or a Node: `nmos_ref.wiring.footprint`) gets
the whole standard library: the launcher parses the arguments with the TLS modules hidden (parsing needs none), and
when the settings turn out to need TLS it starts itself again with nothing hidden.
"""

from __future__ import annotations

import os
import sys
from typing import Any

# Set by the launcher when it starts itself again for settings that need TLS: then nothing is hidden.
WHOLE_STDLIB = "NMOS_REF_WHOLE_STDLIB"
# The C modules behind `ssl` and the OpenSSL constructors of `hashlib`. Hidden (None in sys.modules), `ssl` fails to
# import, which urllib, http.client and Werkzeug expect and handle, and `hashlib` and `hmac` use Python's own
# implementations of the same hashes (what the WebSocket handshake's SHA-1 needs).
TLS_MODULES = ("_ssl", "_hashlib")


def hide_tls_modules() -> bool:
    """Hide the standard library's TLS modules from this process unless asked not to or already imported."""
    if os.environ.get(WHOLE_STDLIB) or any(sys.modules.get(name) is not None for name in TLS_MODULES + ("ssl",)):
        return False
    for name in TLS_MODULES:
        sys.modules[name] = None  # type: ignore[assignment]  # `import _ssl` now raises ImportError
    return True


def main(argv: list[str] | None = None) -> int:
    """Run nmos-ref until it is stopped (SIGINT or SIGTERM: a clean stop, exit status 0); 1 if it could not start,
    2 for a usage error."""
    arguments = sys.argv[1:] if argv is None else argv
    hidden = hide_tls_modules()  # before anything imports Twisted

    from twisted.python import usage

    from nmos_ref.service import Options
    from nmos_ref.wiring.footprint import uses_tls

    options = Options()
    try:
        options.parse(arguments)
    except BrokenPipeError:  # --help or --version into `| head`: what was read was enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (Python's own flush at exit would fail too)
        return 0
    except usage.UsageError as exc:
        command = "nmos-ref" + (f" {options.subCommand}" if options.subCommand else "")
        print(f"{command}: {exc}\nSee '{command} --help' for the options.", file=sys.stderr)
        return 2
    if hidden and uses_tls(options["settings"], node="node" in options["parts"]):
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-m", "nmos_ref", *arguments], {**os.environ, WHOLE_STDLIB: "1"})
    return run(options)


def run(options: Any) -> int:
    """Log to standard output from the configured level up, build the tree, start it on the global reactor and run
    the reactor."""
    from twisted.internet import reactor
    from twisted.logger import Logger, globalLogBeginner

    from nmos_ref.service import makeService
    from nmos_ref.wiring.log_output import filtered, stream_observer

    settings = options["settings"]
    output = filtered(stream_observer(sys.stdout, settings.log_format), settings.log_level)
    globalLogBeginner.beginLoggingTo([output], redirectStandardIO=False)
    log = Logger(namespace="nmos_ref.launcher")
    service = makeService(options)
    status = [0]

    def failed(exc: BaseException) -> None:
        if not isinstance(exc, SystemExit):  # a CannotStart has said why in one line already
            log.critical("nmos-ref cannot start: {error}", error=exc)
        status[0] = 1

    def start() -> None:
        try:
            service.startService()
        except (Exception, SystemExit) as exc:
            failed(exc)
            reactor.stop()

    try:
        service.privilegedStartService()  # the listeners listen here
    except (Exception, SystemExit) as exc:
        failed(exc)
        return 1
    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return status[0]
