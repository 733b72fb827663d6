#!/usr/bin/env bash
# The project's test command (`make test`): installs what the tiers need, then runs lint, types and every tier.
# System packages (PostgreSQL for the registry tier) are installed with apt-get when missing and root allows.
set -euo pipefail
cd "$(dirname "$0")/.."
UV="python3 -m uv"
ARGS=("$@")  # extra pytest arguments, for every tier

# side_by_side TITLE BACKGROUND FOREGROUND: runs two functions at once, BACKGROUND's output held back and printed
# once both have ended (so the log reads lane by lane); fails if either failed.
side_by_side() {
  local title="$1" background="$2" foreground="$3" log bg=0 fg=0
  log="$(mktemp)"
  "$background" > "$log" 2>&1 &
  BACKGROUND_PID=$!
  trap 'kill "$BACKGROUND_PID" 2>/dev/null || true' EXIT
  "$foreground" || fg=$?
  wait "$BACKGROUND_PID" || bg=$?
  trap - EXIT
  echo "== $title (ran beside; exit $bg) $(date -u +%T)"
  cat "$log"
  rm -f "$log"
  if [ "$fg" -ne 0 ] || [ "$bg" -ne 0 ]; then
    echo "$title: exit $bg; the run beside it: exit $fg" >&2
    exit 1
  fi
}

echo "== system packages $(date -u +%T)"
bash scripts/install-system-deps.sh

# The fast lane first: lint, types, import contracts and the unit tier; any failure there stops the run before a
# broker starts (set -e). Types (mypy, about 90 s of one core from a cold cache) run beside the unit tier (one
# core too) rather than before it; ruff, seconds, runs first so that style fails at once.
echo "== lint $(date -u +%T)"
$UV run --frozen ruff check .
$UV run --frozen ruff format --check .

echo "== fast lane: types and import contracts | beside them: the unit tier $(date -u +%T)"
types_and_contracts() { $UV run --frozen mypy && $UV run --frozen lint-imports; }
unit_tier() { $UV run --frozen pytest -p no:cacheprovider -m unit -x "${ARGS[@]}"; }
side_by_side "types and import contracts" types_and_contracts unit_tier

echo "== slow lane: integration and e2e $(date -u +%T)"
# The broker tier must run, never skip: the session fixture starts a native broker and fails if it cannot.
# The chaos suite (marker `chaos`; `make chaos`) is not in it. It ran in a second lane beside this one, with the tests
# that start brokers of their own (marker `own_cluster`), in six fresh-clone CI runs (24.7-27.3 minutes in all).
# It failed twice. In the first failure, the scale-out scenario caught a real fault: a consumer dropped from its group
# wrote older state over the new owner's. That is fixed (vigil_runtime.changelog.confirm_membership). In the second
# failure (30 Nov 2026), the controller scenario's shadow group did not commit to the end of its input within 90 s
# after the controller was killed; the cause is not found. A suite that fails at random cannot gate every commit.
# One lane, as it ran green before: less load on the timing-sensitive tests.
# The slowest tests are listed at the end, so that CI time stays visible as tests are added.
$UV run --frozen pytest -p no:cacheprovider -m "not unit and not chaos" --durations=20 "${ARGS[@]}"
