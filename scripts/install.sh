#!/usr/bin/env bash
# Install solidrl into ./.venv: the CPU torch wheel first (a plain `torch` requirement could pull a
# multi-GB CUDA build), then the package in editable mode with the dev, trl, tensorboard and wandb
# extras (their tests run in the default suite: the TRL integration, --report-to read-backs; torch is
# already satisfied, so pip keeps it). trackio (a slow test) is not installed: add '.[trackio]'. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q torch==2.13.0
if ! .venv/bin/pip install -q -e ".[dev,trl,tensorboard,wandb]" > .venv/pip-install.log 2>&1; then
  grep -v "^WARNING: Location" .venv/pip-install.log | tail -30
  echo "scripts/install.sh: pip install -e '.[dev,trl,tensorboard,wandb]' failed (full log: .venv/pip-install.log)" >&2
  exit 1
fi
.venv/bin/pip install -q -e ".[peers]" >> .venv/pip-install.log 2>&1 && .venv/bin/pip install -q --no-deps verl==0.9.1 >> .venv/pip-install.log 2>&1 || { echo "scripts/install.sh: the [peers] extra or verl==0.9.1 failed (log: .venv/pip-install.log)" >&2; exit 1; }
.venv/bin/python -c "import solidrl.trainer, solidrl.probes, solidrl.theory, trl, hypothesis, nbclient, tensorboard, wandb"
echo "solidrl installed in .venv"
