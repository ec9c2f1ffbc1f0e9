#!/usr/bin/env bash
# Sets up a virtualenv, installs phase1 with its test tools, then lints, type-checks, checks the
# layers' import contracts (import-linter) and runs the tests.
# Works on a machine with no Redis or PostgreSQL: the tests then start embedded ones.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade 'pip>=24' 2>/dev/null
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
.venv/bin/pytest "$@"
