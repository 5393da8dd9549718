#!/usr/bin/env bash
# Run the AMWA conformance suites (nmos-testing) against nmos-ref's registry, one harness run per IS-04
# version, through the team's harness (../shared/tools/conformance; see docs/conformance.md).
#
# usage: scripts/conformance.sh [SUITE ...] [-- extra run.sh args]
#   SUITE       default IS-04-02 (the only suite with an nmos-ref recipe so far: the registry)
#   after --     anything run.sh takes (--set KEY=VALUE, --ignore T.., --selection S, --timeout S, ...), plus
#                --version V [V ...]  the IS-04 versions to run, one run each (default v1.0 v1.1 v1.2 v1.3)
#                --out DIR            results folder (default $NMOS_SCRATCH/conformance-results/nmos-ref-<time>)
#                --https              BCP-003-01: everything over TLS (the tool's ENABLE_HTTPS), see below
#                --cluster            issue 14: the registry under test is one member of a cluster (three etcd
#                                     members, three nmos-ref members on PORT, PORT+10 and PORT+20 sharing them,
#                                     scripts/conformance_cluster.sh), and the seeder registers at PORT+10
# Each run starts, inside the harness's network namespace:
#   twistd -n --pidfile= --logfile=OUT/VER/registry.log nmos-ref registry --listen tcp:8235:interface=127.0.0.1
#   scripts/conformance_seed.py: registers one Node (node, device, source, flow, sender, receiver) at the
#     version under test and heartbeats it every 5 s, so the tool's /{id} auto tests have something to GET
# and the tool starts once both are ready. The working tree's code is used (PYTHONPATH=<repo>).
# With --auth after -- (the tool's ENABLE_AUTH): the registry runs with --auth, trusting the tool's two mock
# authorization servers (127.0.0.1:5010 and :5011) and answering to nmos-ref.local; the seeder is then nmos-ref's
# own Node (twistd nmos-ref node, Node API on 8236, demo resources, registering at the version under test), which
# gets its tokens from the mock (private_key_jwt: the tool's JWKS_URI is set to the Node's key set), and the tool
# waits MOCK_SERVICES_WARM_UP_DELAY=30 s after starting its mocks unless told otherwise. The usual seeder runs
# as well, with tokens from the same mock, for its persistent subscription.
# With --https: the registry (and the Node) listen with TLS on the same ports, with the tool's RSA and ECDSA
# certificates for api.testsuite.nmos.tv (test_data/BCP00301, which the netns resolves to 127.0.0.1), trust the
# tool's CA for its mocks, and the tool runs with ENABLE_HTTPS=True against https://api.testsuite.nmos.tv.
# Prints per version the totals line and the tests that did not pass; everything else is in the results folder.
#
# env: NMOS_SCRATCH (default ~/nmos-scratch; the harness's setup.sh made nmos-testing/ in it), NMOS_HARNESS,
#      NMOS_REF_PORT (8235), NMOS_SEED_READY_PORT (18235), NMOS_VERSIONS, TWISTD (twistd), PYTHON (python3)
# Exit: worst over the runs: 0 all pass, 1 a Warning, 2 a Fail, 3 a run produced no results; 64 bad usage/setup.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HARNESS=${NMOS_HARNESS:-$ROOT/../shared/tools/conformance}
export NMOS_SCRATCH=${NMOS_SCRATCH:-$HOME/nmos-scratch}
WORK=${NMOS_TESTING_DIR:-$NMOS_SCRATCH/nmos-testing}
PORT=${NMOS_REF_PORT:-8235}
READY_PORT=${NMOS_SEED_READY_PORT:-18235}
TWISTD=${TWISTD:-twistd}
PYTHON=${PYTHON:-python3}
read -r -a VERSIONS <<<"${NMOS_VERSIONS:-v1.0 v1.1 v1.2 v1.3}"
OUT=""
https=0
cluster=0

die() { echo "conformance.sh: $*" >&2; exit 64; }

suites=()
while (($#)); do
  case "$1" in
    --) shift; break ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) die "unknown option $1 (run.sh options go after --)" ;;
    *) suites+=("$1"); shift ;;
  esac
done
((${#suites[@]})) || suites=(IS-04-02)
extra=()
while (($#)); do
  case "$1" in
    --version|--versions)
      shift; VERSIONS=()
      while (($#)) && [[ $1 != -* ]]; do VERSIONS+=("$1"); shift; done
      ((${#VERSIONS[@]})) || die "--version needs at least one version" ;;
    --out) OUT=${2:?--out needs a folder}; shift 2 ;;
    --port|--host|--start|--wait) die "$1 is set by this script (see NMOS_REF_PORT)" ;;
    --https) https=1; shift ;;
    --cluster) cluster=1; shift ;;
    *) extra+=("$1"); shift ;;
  esac
done
for s in "${suites[@]}"; do
  case "$s" in
    IS-04-02) ;;
    *) die "no nmos-ref recipe for suite $s yet (registry suites: IS-04-02)" ;;
  esac
done
for v in "${VERSIONS[@]}"; do [[ $v =~ ^v1\.[0-3]$ ]] || die "unknown IS-04 version $v"; done

# ---- preflight: fail early with the fix, not after a timed-out run
[[ $EUID == 0 ]] || die "needs root: the harness makes and enters a network namespace"
[[ -x $HARNESS/run.sh ]] || die "no harness at $HARNESS (set NMOS_HARNESS)"
[[ -f $WORK/nmos-test.py ]] ||
  die "no nmos-testing work area at $WORK: run NMOS_MIRRORS=... NMOS_SCRATCH=$NMOS_SCRATCH $HARNESS/setup.sh"
# absolute paths: the IUT commands run under bash in the netns, where an activated venv should still win
TWISTD=$(command -v "$TWISTD") || die "no twistd on PATH (activate the project's venv, or set TWISTD)"
PYTHON=$(command -v "$PYTHON") || die "no $PYTHON on PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
plugins=$(cd "$ROOT" && "$TWISTD" --help 2>&1 || true)  # (not piped into grep -q: pipefail + SIGPIPE)
[[ $plugins == *nmos-ref* ]] || die "'$TWISTD --help' does not list nmos-ref (install the project: pip install -e .)"
if ! check=$(cd "$ROOT" && "$TWISTD" nmos-ref registry --help 2>&1); then
  printf '%s\n' "$check" | tail -5 >&2
  die "'$TWISTD nmos-ref registry --help' failed"
fi
unset PYTHONPATH  # the tool must not see the project; the IUT commands below set it themselves

OUT=${OUT:-$NMOS_SCRATCH/conformance-results/nmos-ref-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "no commit")
dirty=$(git -C "$ROOT" status --porcelain 2>/dev/null | head -1)
echo "nmos-ref $rev${dirty:+ (uncommitted changes)} | ${suites[*]} at ${VERSIONS[*]} | results $OUT"

auth=0
for arg in ${extra[@]+"${extra[@]}"}; do [[ $arg == --auth ]] && auth=1; done
if ((cluster)); then
  ((auth || https)) && die "--cluster runs without --auth and --https so far"
  command -v etcd >/dev/null || die "--cluster needs etcd on PATH (Debian package etcd-server)"
fi
NODE_PORT=${NMOS_REF_NODE_PORT:-8236}
auth_extra=()
if ((https)); then
  PKI=$WORK/test_data/BCP00301/ca
  CA=$PKI/certs/ca.cert.pem
  [[ -f $CA ]] || die "no test CA at $CA"
  SCHEME=https HOST=api.testsuite.nmos.tv MOCKS=https://nmos-mocks.local
  LISTEN="ssl:$PORT:interface=127.0.0.1" NODE_LISTEN="ssl:$NODE_PORT:interface=127.0.0.1"
  AUTH_FQDN=$HOST
  auth_extra+=(--set ENABLE_HTTPS=True --host "$HOST")
  SEED_CA=(--ca "$CA")
else
  SCHEME=http HOST=127.0.0.1 MOCKS=http://127.0.0.1
  LISTEN="tcp:$PORT:interface=127.0.0.1" NODE_LISTEN="tcp:$NODE_PORT:interface=127.0.0.1"
  AUTH_FQDN=nmos-ref.local
  SEED_CA=()
fi
AUTH_FLAGS=(--auth --auth-issuers "$MOCKS:5010,$MOCKS:5011" --auth-fqdn "$AUTH_FQDN")
if ((auth)); then
  auth_extra+=(--set "JWKS_URI='$SCHEME://$HOST:$NODE_PORT/x-authorization/jwks'")
  # The seeders get their first tokens once the tool's mock authorization server is up; give them time.
  [[ " ${extra[*]} " == *MOCK_SERVICES_WARM_UP_DELAY=* ]] || auth_extra+=(--set MOCK_SERVICES_WARM_UP_DELAY=30)
fi

worst=0
seeder2=""
for ver in "${VERSIONS[@]}"; do
  out=$OUT/$ver
  mkdir -p "$out"
  config=()
  if ((https)); then  # the certificates, the CA and the name in hrefs, for the registry and the Node
    cat >"$out/nmos-ref.json" <<JSON
{"tls_certificates": [
   {"certificate": "$PKI/intermediate/certs/rsa.api.testsuite.nmos.tv.cert.chain.pem",
    "key": "$PKI/intermediate/private/rsa.api.testsuite.nmos.tv.key.pem"},
   {"certificate": "$PKI/intermediate/certs/ecdsa.api.testsuite.nmos.tv.cert.chain.pem",
    "key": "$PKI/intermediate/private/ecdsa.api.testsuite.nmos.tv.key.pem"}],
 "tls_ca": "$CA", "host_name": "$HOST"}
JSON
    config=(--config "$out/nmos-ref.json")
  fi
  registry=$(printf 'cd %q && PYTHONPATH=%q exec %q -n --pidfile= --logfile=%q nmos-ref' \
    "$ROOT" "$ROOT" "$TWISTD" "$out/registry.log")
  registry+=$(printf ' %q' ${config[@]+"${config[@]}"} registry --listen "$LISTEN")
  seed_at="$SCHEME://$HOST:$PORT"
  if ((cluster)); then  # three members on one etcd cluster; the seeder's Node registers at another member
    registry=$(printf 'cd %q && PYTHONPATH=%q TWISTD=%q exec %q %q %q %q %q' "$ROOT" "$ROOT" "$TWISTD" \
      "$ROOT/scripts/conformance_cluster.sh" "$out/cluster" "$PORT" "$((PORT + 10))" "$((PORT + 20))")
    seed_at="$SCHEME://$HOST:$((PORT + 10))"
  fi
  if ((auth)); then
    registry+=$(printf ' %q' "${AUTH_FLAGS[@]}")
    seeder=$(printf 'cd %q && PYTHONPATH=%q exec %q -n --pidfile= --logfile=%q nmos-ref' \
      "$ROOT" "$ROOT" "$TWISTD" "$out/node.log")
    seeder+=$(printf ' %q' ${config[@]+"${config[@]}"} "${AUTH_FLAGS[@]}" --auth-state-dir "$out/oauth" \
      --dns-sd off node --listen "$NODE_LISTEN" --registry "$SCHEME://$HOST:$PORT/x-nmos/registration/$ver" \
      --seed conformance-seed)
    ready="127.0.0.1:$NODE_PORT"
    # ... and the usual seeder too, with tokens of its own, for its persistent subscription (no ready port: the
    # mock authorization server it waits for starts with the tool, after the harness's --wait).
    seeder2=$(printf 'exec %q %q --registry %q --version %q --auth-server %q --wait-timeout 180' \
      "$PYTHON" "$ROOT/scripts/conformance_seed.py" "$SCHEME://$HOST:$PORT" "$ver" "$MOCKS:5010")
    if ((${#SEED_CA[@]})); then seeder2+=$(printf ' %q' "${SEED_CA[@]}"); fi
  else
    seeder=$(printf 'exec %q %q --registry %q --version %q --ready-port %q' \
      "$PYTHON" "$ROOT/scripts/conformance_seed.py" "$seed_at" "$ver" "$READY_PORT")
    if ((${#SEED_CA[@]})); then seeder+=$(printf ' %q' "${SEED_CA[@]}"); fi
    ready="127.0.0.1:$READY_PORT"
  fi
  echo "==> ${suites[*]} $ver (full output: $out/run.txt)"
  rc=0
  "$HARNESS/run.sh" "${suites[@]}" --port "$PORT" --version "$ver" --out "$out" \
    --start "$registry" --start "$seeder" ${seeder2:+--start "$seeder2"} --wait "127.0.0.1:$PORT" --wait "$ready" \
    ${extra[@]+"${extra[@]}"} ${auth_extra[@]+"${auth_extra[@]}"} >"$out/run.txt" 2>&1 || rc=$?
  # The harness exits 0..3; anything else is the harness itself failing (bad option, setup missing).
  if ((rc > 3)); then
    tail -5 "$out/run.txt" >&2
    echo "  harness failed (exit $rc)"
    rc=3
  fi
  ((rc > worst)) && worst=$rc
  "$PYTHON" - "$HARNESS" "$out" <<'EOF' || true
import glob, json, os, sys
harness, out = sys.argv[1:3]
sys.path.insert(0, harness)
import summarise  # the harness's reader of the tool's JSON and of its own JUnit XML (which has suite errors)

seconds = {}
try:
    with open(os.path.join(out, "summary.json")) as f:
        seconds = {s["suite"]: s["seconds"] for s in json.load(f)["suites"]}
except (OSError, ValueError, KeyError):
    pass
ORDER = ["Error", "Fail", "Warning", "Could Not Test", "Not Implemented"]  # shown with the tool's detail
NAMES_ONLY = {"Not Applicable": "n/a", "Manual": "manual", "Test Disabled": "disabled"}  # expected per version/config
for xml in sorted(glob.glob(os.path.join(out, "*.xml"))):
    js = xml[:-4] + ".json"  # the tool's own results: exact states, and which path each auto_* test hit
    res = summarise.load(js if os.path.exists(js) else xml)
    tests = [r for r in res["results"] if r["name"] not in summarise.BOOKKEEPING]
    took = seconds.get(res["suite"])
    print("  " + summarise.totals_line(res) + ("  [{:.0f} s]".format(took) if took is not None else ""))
    w = max([len(r["name"]) for r in tests] + [8])
    for state in ORDER + sorted({r["state"] for r in tests} - set(ORDER) - set(NAMES_ONLY) - {"Pass"}):
        for r in tests:
            if r["state"] == state:
                detail = " ".join(str(r["detail"]).split())
                if r["name"].startswith("auto_") and r["description"]:
                    detail = "[{}] {}".format(r["description"], detail)
                print("    {:<{w}}  {:<15}  {}".format(r["name"], state, detail, w=w))
    for state, short in NAMES_ONLY.items():
        names = [r["name"] for r in tests if r["state"] == state]
        if names:
            print("    {}: {}".format(short, " ".join(names)))

def lines(path, words):
    try:
        with open(path, errors="replace") as f:
            return [ln.rstrip() for ln in f if any(w in ln for w in words)]
    except OSError:
        return []

# problems outside the tool's results: the harness (IUT died, port not up), the seeder, the registry
for ln in lines(os.path.join(out, "run.txt"), ["WARNING:"]):
    print("  harness: " + ln.strip())
for seeder_log in ("iut-1.log", "iut-2.log"):  # iut-2: the token-using seeder of --auth runs
    for ln in lines(os.path.join(out, seeder_log), ["ERROR", "WARNING", "heartbeats answered"]):
        print("  seeder:  " + ln.strip())
reg_log = os.path.join(out, "registry.log")
if any(r["state"] == "Error" for x in glob.glob(os.path.join(out, "*.xml")) for r in summarise.load(x)["results"]):
    for path in (os.path.join(out, "iut-0.log"), reg_log):
        try:
            with open(path, errors="replace") as f:
                tail = f.read().splitlines()[-8:]
        except OSError:
            continue
        if tail:
            print("  last lines of {}:".format(path))
            print("\n".join("    " + t for t in tail))
EOF
done
echo "results: $OUT (exit $worst)"
exit "$worst"
