# The two commands of the README: `make demo` runs the stack and a demo; `make test` runs every test tier.
SHELL := /bin/bash
UV_VERSION := 0.13.8
export UV_LINK_MODE := copy

.PHONY: setup demo test lint up down kafka

setup: ## Install Python (uv workspace, exact versions from uv.lock) and fetch the Kafka broker jars
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet "uv==$(UV_VERSION)"
	uv sync --frozen --all-packages
	uv run --frozen vigil kafka fetch

demo: setup ## A local stack plus the demo on the bundled sample of real ICU stays
	uv run --frozen vigil demo

test: setup ## Every tier: lint and types, unit, integration (real Kafka, SQLite, PostgreSQL), e2e
	bash scripts/test.sh

lint:
	uv run --frozen ruff check .
	uv run --frozen ruff format --check .
	uv run --frozen mypy

up: setup
	uv run --frozen vigil up

down:
	uv run --frozen vigil down
