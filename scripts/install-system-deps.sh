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
