#!/usr/bin/env python3
"""Measures the nmos-ref registry cluster on etcd over loopback (issue 14): the failover scenario and the cost beside
the in-memory store. `python benchmarks/bench_cluster.py --help`; benchmarks/README.md says what it measures."""

import sys
from pathlib import Path

# The package sits beside this file (the failover scenario's Node process is spawned and imports it again).
if (here := str(Path(__file__).resolve().parent)) not in sys.path:
    sys.path.insert(0, here)

from registry_bench.cluster_cli import main

if __name__ == "__main__":
    sys.exit(main())
