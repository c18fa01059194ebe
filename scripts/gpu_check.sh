#!/usr/bin/env bash
# The GPU check, one command on a CUDA machine (`make gpu-check` or `scripts/gpu_check.sh [OUT_DIR]`):
#   1. the CUDA tests: the Triton cell in float32 and bfloat16 against the float64 parallel form, forward and
#      backward, and "auto" choosing it;
#   2. `vil bench --device cuda`: ViL-T and ViL-S against DeiT-T and DeiT-S (timm), bf16 autocast, training and
#      inference, eager and torch.compile'd, at 224 px batch 128, 1024 px batch 8 and 2048 px batch 1: one bench
#      process per image size, each stopped after STAGE_SECONDS, and one table of all rows at the end (images/s
#      and peak torch.cuda.max_memory_allocated).
# Meant to finish in under 8 minutes; it has not run yet (no GPU was lent while it was written), so the stage
# limits are estimates: a stage that runs out of time is named under the table instead of its rows.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check}
STAGE_SECONDS=${STAGE_SECONDS:-130}
SIZES=${SIZES:-"224:128 1024:8 2048:1"}
mkdir -p "$OUT"
python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device here')"

python -m pytest -q -p no:cacheprovider tests/test_triton_cell.py -k cuda -rs

for size in $SIZES; do
  echo "== vil bench at $size (at most ${STAGE_SECONDS}s)" >&2
  timeout "$STAGE_SECONDS" python -m vil bench --device cuda --dtype bfloat16 \
    --model vil2_tiny_patch16_224 --model vil2_small_patch16_224 --vil-runs auto \
    --sizes "$size" --modes train,infer --compile both --repeats 3 --warmup 2 \
    --json "$OUT/bench_${size/:/x}.json" >"$OUT/bench_${size/:/x}.log" \
    || echo "   stage $size stopped (exit $?): see $OUT/bench_${size/:/x}.log" >&2
done

python - "$OUT" $SIZES <<'PY'
import json, sys
from pathlib import Path
from vil.bench.speed import Row, markdown_table

out, sizes = Path(sys.argv[1]), sys.argv[2:]
rows, context, missing = [], None, []
for size in sizes:
    path = out / f"bench_{size.replace(':', 'x')}.json"
    if not path.exists():
        missing.append(size)
        continue
    data = json.loads(path.read_text())
    context = context or data["context"]
    rows += [Row(**row) for row in data["rows"]]
print("context: " + ", ".join(f"{k}={v}" for k, v in (context or {}).items()))
print(markdown_table(rows))
for size in missing:
    print(f"- {size}: no rows (the stage ran out of time or failed)")
(out / "bench.md").write_text(markdown_table(rows) + "\n")
PY
