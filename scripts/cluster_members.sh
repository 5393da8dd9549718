#!/usr/bin/env bash
# A registry cluster on one machine (docs/cluster.md): three etcd members (client ports 12379, 22379, 32379) and
# three nmos-ref registries sharing them, on 127.0.0.1:8235 (with DNS-SD as configured) and 8245, 8255 (DNS-SD
# off). Runs in the foreground until stopped (SIGTERM or Ctrl-C), then stops everything it started, by PID.
#
# usage: scripts/cluster_members.sh [LOG_FOLDER]     (default: a new folder under /tmp; its etcd data goes there too)
# env:   TWISTD (twistd), ETCD (etcd); the working tree's nmos_ref is used (PYTHONPATH=<repo>)
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$(mktemp -d /tmp/nmos-ref-cluster-XXXXXX)}
mkdir -p "$out"
TWISTD=${TWISTD:-twistd}
ETCD=${ETCD:-etcd}
pids=()
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait; exit 0; }
trap stop TERM INT
peers=e1=http://127.0.0.1:12380,e2=http://127.0.0.1:22380,e3=http://127.0.0.1:32380
for i in 1 2 3; do
  "$ETCD" --name "e$i" --data-dir "$out/etcd-$i" \
    --listen-client-urls "http://127.0.0.1:${i}2379" --advertise-client-urls "http://127.0.0.1:${i}2379" \
    --listen-peer-urls "http://127.0.0.1:${i}2380" --initial-advertise-peer-urls "http://127.0.0.1:${i}2380" \
    --initial-cluster "$peers" --initial-cluster-token "nmos-ref-$$" --initial-cluster-state new \
    > "$out/etcd-$i.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 200); do
  python3 -c 'import sys, urllib.request as u; sys.exit(b"true" not in u.build_opener(u.ProxyHandler({})).open(
      "http://127.0.0.1:12379/health", timeout=1).read())' 2>/dev/null && break
  sleep 0.1
done
store=etcd://127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379
for port in 8245 8255 8235; do
  dns=(); [[ $port == 8235 ]] || dns=(--dns-sd off)
  (cd "$ROOT" && PYTHONPATH="$ROOT" exec "$TWISTD" -n --pidfile= --logfile="$out/registry-$port.log" nmos-ref \
     registry --listen "tcp:$port:interface=127.0.0.1" ${dns[@]+"${dns[@]}"} --store "$store") &
  pids+=($!)
done
echo "cluster: etcd ${store#etcd://}; registries 127.0.0.1:8235, :8245, :8255; logs in $out"
wait
