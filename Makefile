# The two commands of the README: `make demo` runs the stack and a demo; `make test` runs every test tier.
SHELL := /bin/bash
UV_VERSION := 0.13.8
# uv from PyPI, run as a module so that no PATH or pyenv shim is needed on a fresh machine.
UV := python3 -m uv
export UV_LINK_MODE := copy
# Installed packages get their bytecode at sync time. Without it (and with PYTHONDONTWRITEBYTECODE, as on this CI
# machine) every Python process compiles pandas, scipy and sklearn from source: a service took 3-4x the CPU to
# import (drift 12 s of CPU instead of 4), and the test tiers start dozens of service processes. Measured in
# CHANGELOG.md (Unreleased).
export UV_COMPILE_BYTECODE := 1

.PHONY: setup demo test lint chaos up down kafka

setup: ## Install Python (uv workspace, exact versions from uv.lock) and fetch the Kafka broker jars
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	bash scripts/install-system-deps.sh --broker-only
	$(UV) sync --frozen --all-packages
	$(UV) run --frozen vigil kafka fetch

demo: setup ## A local stack plus the demo on the bundled sample of real ICU stays
	$(UV) run --frozen vigil demo

test: setup ## Every tier: lint and types, unit, then integration (real Kafka, SQLite, PostgreSQL), e2e and the chaos suite in two lanes
	bash scripts/test.sh

lint: ## ruff (style, complexity, sleep-in-a-loop), mypy (strict on the common parts and the five services), import-linter (the package boundaries)
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy
	$(UV) run --frozen lint-imports

chaos: setup ## The chaos suite alone: faults mid-stream on a real three-broker cluster (about 7 minutes; also in `make test`)
	$(UV) run --frozen pytest -p no:cacheprovider -m chaos -rA

up: setup
	$(UV) run --frozen vigil up

down:
	$(UV) run --frozen vigil down
