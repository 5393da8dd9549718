#!/usr/bin/env python3
"""Measures the nmos-ref registry over loopback: the entry point of the package registry_bench beside this file.

`python benchmarks/bench_registry.py --help` lists the options; benchmarks/README.md says what it measures.
"""

import sys
from pathlib import Path

# The package sits beside this file. Put it on sys.path whatever the way this file was started: the websocket phase's
# heartbeat process is spawned (a fresh interpreter that copies sys.path) and imports registry_bench.heartbeats.
if (here := str(Path(__file__).resolve().parent)) not in sys.path:
    sys.path.insert(0, here)

from registry_bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
