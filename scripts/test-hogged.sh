#!/usr/bin/env bash
# make test's suite RUNS times in a row with a busy loop on every core beside it: the load a
# cluster build puts on a CI machine. A test that depends on timing fails here first.
#   scripts/test-hogged.sh [RUNS]        (make test-hogged RUNS=10; ~5 minutes a run on 2 cores)
# One line per run (exit code, seconds, pytest's summary, load average); exit 1 if any run failed.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
hogs=()
stop_hogs() { [[ ${#hogs[@]} -gt 0 ]] && kill "${hogs[@]}" 2>/dev/null; wait "${hogs[@]}" 2>/dev/null; }
trap stop_hogs EXIT
for _ in $(seq "$(nproc)"); do
  python3 -c 'while True: pass' &
  hogs+=($!)
done
logs=$(mktemp -d)
failed=0
for i in $(seq "$runs"); do
  start=$(date +%s)
  timeout 1800 .venv/bin/python -m pytest -q -p no:cacheprovider tests/unit tests/integration tests/browser \
    >"$logs/run-$i.log" 2>&1
  rc=$?
  [[ $rc -eq 0 ]] || failed=1
  echo "run $i/$runs: rc=$rc $(($(date +%s) - start)) s, $(tail -1 "$logs/run-$i.log"), load $(cut -d' ' -f1-3 /proc/loadavg)"
  [[ $rc -eq 0 ]] || grep -E '^(FAILED|ERROR) ' "$logs/run-$i.log"
done
echo "logs in $logs"
exit $failed
