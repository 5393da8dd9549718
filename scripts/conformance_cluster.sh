#!/usr/bin/env bash
# A registry cluster for the conformance runs (scripts/conformance.sh --cluster; docs/cluster.md): three etcd
# members and three nmos-ref registry members sharing them, all on loopback, in the foreground until SIGTERM.
#
# usage: scripts/conformance_cluster.sh OUT PORT [PORT ...] [-- extra nmos-ref registry flags]
#   OUT     folder for the etcd data and every member's log (etcd-N/, etcd-N.log, registry-PORT.log)
#   PORT    one nmos-ref member per port (tcp:PORT:interface=127.0.0.1), each naming every etcd member
# etcd member N (1..3) listens for clients on port N2379 (12379, 22379, 32379) and for its peers on N2380.
# env: TWISTD (twistd), ETCD (etcd)
# Stops everything it started, by PID, when it gets SIGTERM or SIGINT or when one of them exits.
set -euo pipefail

OUT=${1:?usage: conformance_cluster.sh OUT PORT [PORT ...] [-- flags]}
shift
ports=()
while (($#)) && [[ $1 != -- ]]; do ports+=("$1"); shift; done
[[ ${1:-} == -- ]] && shift
((${#ports[@]})) || { echo "conformance_cluster.sh: no PORT" >&2; exit 64; }
TWISTD=${TWISTD:-twistd}
ETCD=${ETCD:-etcd}
mkdir -p "$OUT"

pids=()
stop() {
  trap - TERM INT EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap 'stop; exit 0' TERM INT
trap stop EXIT

cluster="" clients=()
for i in 1 2 3; do
  cluster+="${cluster:+,}e$i=http://127.0.0.1:${i}2380"
  clients+=("127.0.0.1:${i}2379")
done
for i in 1 2 3; do
  rm -rf "$OUT/etcd-$i"
  "$ETCD" --name "e$i" --data-dir "$OUT/etcd-$i" \
    --listen-client-urls "http://127.0.0.1:${i}2379" --advertise-client-urls "http://127.0.0.1:${i}2379" \
    --listen-peer-urls "http://127.0.0.1:${i}2380" --initial-advertise-peer-urls "http://127.0.0.1:${i}2380" \
    --initial-cluster "$cluster" --initial-cluster-token nmos-ref-conformance --initial-cluster-state new \
    --auto-compaction-mode periodic --auto-compaction-retention 10m \
    >"$OUT/etcd-$i.log" 2>&1 &
  pids+=($!)
done
# etcd answers /health with {"health":"true"} once its member has a leader
for client in "${clients[@]}"; do
  for _ in $(seq 100); do
    curl -sf --noproxy '*' "http://$client/health" 2>/dev/null | grep -q '"health":"true"' && break
    sleep 0.2
  done
done
store="etcd://$(IFS=,; echo "${clients[*]}")"
for port in "${ports[@]}"; do
  "$TWISTD" -n --pidfile= --logfile="$OUT/registry-$port.log" nmos-ref registry \
    --listen "tcp:$port:interface=127.0.0.1" --store "$store" "$@" &
  pids+=($!)
done
echo "conformance_cluster.sh: etcd at ${clients[*]}; nmos-ref members at ${ports[*]}"
wait -n "${pids[@]}"
echo "conformance_cluster.sh: a member exited; stopping the rest" >&2
exit 1
