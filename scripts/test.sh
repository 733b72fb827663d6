#!/usr/bin/env bash
# The project's test command (`make test`): installs what the tiers need, then runs lint, types and every tier.
# System packages (PostgreSQL for the registry tier) are installed with apt-get when missing and root allows.
set -euo pipefail
cd "$(dirname "$0")/.."
UV="python3 -m uv"

echo "== system packages $(date -u +%T)"
bash scripts/install-system-deps.sh

# The fast lane first: lint, types, import contracts and the unit tier; any failure there stops the run before a
# broker starts (set -e). Types (mypy, about 90 s of one core from a cold cache) run beside the unit tier (one
# core too) rather than before it; ruff, seconds, runs first so that style fails at once.
echo "== lint $(date -u +%T)"
$UV run --frozen ruff check .
$UV run --frozen ruff format --check .

echo "== fast lane: types and import contracts | beside them: the unit tier $(date -u +%T)"
types_log="$(mktemp)"
( $UV run --frozen mypy && $UV run --frozen lint-imports ) > "$types_log" 2>&1 &
types_pid=$!
trap 'kill "$types_pid" 2>/dev/null || true' EXIT
unit=0
$UV run --frozen pytest -p no:cacheprovider -m unit -x "$@" || unit=$?
types=0
wait "$types_pid" || types=$?
trap - EXIT
echo "== types and import contracts (exit $types)"
cat "$types_log"
rm -f "$types_log"
if [ "$unit" -ne 0 ] || [ "$types" -ne 0 ]; then
  echo "unit tier exit $unit, types and import contracts exit $types" >&2
  exit 1
fi

echo "== slow lanes: integration and e2e (the session broker) | beside it: the chaos suite and own-cluster tests $(date -u +%T)"
# Two pytest processes. Lane A: every integration and e2e test on the session broker (the fixture starts a native
# one and fails if it cannot: the broker tier must run, never skip). Lane B: the chaos suite (marker `chaos`, a
# three-broker cluster of its own) and the tests that start brokers of their own (marker `own_cluster`), so that it
# never starts a session broker. Both mostly wait on brokers, services and paced feeds. One after the other they
# took about 31 minutes of CI (30 Nov 2026: setup 3.5, unit 3.5, slow lane 23.4), not well under 30. Each on its
# own ports (tests/conftest.py, the modules' PORT comments). Lane B's output is printed when both are done.
# The slowest tests are listed at the end of each lane, so that CI time stays visible as tests are added.
lane_b_log="$(mktemp)"
$UV run --frozen pytest -p no:cacheprovider -m "chaos or own_cluster" -rA --durations=10 "$@" > "$lane_b_log" 2>&1 &
lane_b_pid=$!
trap 'kill "$lane_b_pid" 2>/dev/null || true' EXIT
lane_a=0
$UV run --frozen pytest -p no:cacheprovider -m "not unit and not chaos and not own_cluster" --durations=20 "$@" \
  || lane_a=$?
lane_b=0
wait "$lane_b_pid" || lane_b=$?
trap - EXIT
echo "== lane B: the chaos suite and own-cluster tests (ran beside lane A; exit $lane_b) $(date -u +%T)"
cat "$lane_b_log"
rm -f "$lane_b_log"
if [ "$lane_a" -ne 0 ] || [ "$lane_b" -ne 0 ]; then
  echo "lane A exit $lane_a, lane B exit $lane_b" >&2
  exit 1
fi
