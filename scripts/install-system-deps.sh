#!/usr/bin/env bash
# What the test tiers need from the OS: a JDK and Maven (native Kafka broker), PostgreSQL (registry tier),
# the Compose client (compose.yaml validation), Chromium (reports checked in a real headless browser), Prometheus
# (promtool: metrics and alert rules checked).
set -euo pipefail
need=()
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
if [[ "${1:-}" != "--broker-only" ]]; then
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
# Debian's Compose client validates compose.yaml (there is no Docker engine on CI machines).
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
# Headless Chromium renders the HTML reports in the browser tier.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# promtool checks every service's /metrics and unit-tests the alert rules; the Prometheus server of the same
# package scrapes a running stack in the dashboard test.
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# npm packs the pinned axe-core for the console's accessibility check (below).
command -v npm >/dev/null 2>&1 || need+=(npm)
fi
if ((${#need[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    echo "installing: ${need[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing system packages (install them, or run as root): ${need[*]}" >&2
    exit 1
  fi
fi

# axe-core, pinned, for the console's browser test (tests/e2e/test_console.py injects it into each page). It is
# fetched with `npm pack` from the npm registry into tests/support/axe/ (git-ignored; no node_modules).
AXE_VERSION=4.10.3
if [[ "${1:-}" != "--broker-only" ]]; then
  axe_dir="$(dirname "$0")/../tests/support/axe"
  if [[ ! -f "$axe_dir/axe.min.js" || "$(cat "$axe_dir/VERSION" 2>/dev/null)" != "$AXE_VERSION" ]]; then
    mkdir -p "$axe_dir"
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "axe-core@$AXE_VERSION" >/dev/null && tar -xzf "axe-core-$AXE_VERSION.tgz" package/axe.min.js)
    mv "$tmp/package/axe.min.js" "$axe_dir/axe.min.js"
    echo "$AXE_VERSION" > "$axe_dir/VERSION"
    rm -rf "$tmp"
  fi
fi

# kustomize and kubeconform for the offline check of the Kubernetes manifests (tests/integration/test_k8s.py).
if [[ "${1:-}" != "--broker-only" ]]; then
  bash "$(dirname "$0")/install-k8s-tools.sh"
fi
