#!/usr/bin/env bash
# Install, then run the default test suite (fast; slow end-to-end tests are deselected: -m slow runs them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/pytest -n 2 "$@"
