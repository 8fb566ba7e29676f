#!/usr/bin/env bash
# The GPU in one prepared run (BSRN x4, bundled weights), about 8 minutes on one H100/H200:
#   1. tests marked cuda (tests/test_cuda.py; through a small runner when pytest is absent)
#   2. inference speed (benchmarks/gpu_speed.py): eager, fast, CUDA graphs, fp16, bf16
#   3. the NTIRE 2022 runtime protocol (benchmarks/gpu_ntire.py) on synthesised DIV2K-size images
#   4. training iterations/s (benchmarks/train_throughput.py)
#   5. torch.compile, 6. TensorRT through ONNX Runtime's TensorRT provider, where installed
# Each part is time-boxed and may fail without stopping the others; after every part the
# results so far are written to $OUT/summary.md and $OUT/summary.json ($OUT defaults to
# ./gpu_out). Logs: $OUT/<part>.log.
#
#   bash benchmarks/gpu_suite.sh             # on a CUDA machine, from the repository root
#   bash benchmarks/gpu_suite.sh --dry-run   # every part on tiny sizes on the CPU (no CUDA needed)
#   BSRN_GPU_SUITE_DEVICE=cpu bash benchmarks/gpu_suite.sh      # the same
# Environment: OUT, PYTHON (default python3), SUITE_BUDGET (seconds for all parts, default 470).
set -u

cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT" || exit 1
PY=${PYTHON:-python3}
DEVICE=${BSRN_GPU_SUITE_DEVICE:-cuda}
if [ "${1:-}" = "--dry-run" ]; then DEVICE=cpu; fi
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export BSRN_BACKEND=torch
if [ "$DEVICE" = cpu ]; then DRY=1; BUDGET=${SUITE_BUDGET:-3000}; else DRY=0; BUDGET=${SUITE_BUDGET:-470}; fi
START=$(date +%s)
: >"$OUT/parts.tsv"

# part NAME LIMIT_S CMD...: run CMD with a time limit (capped by what is left of the budget),
# log to $OUT/NAME.log, record the status, and rewrite the summary.
part() {
  local name=$1 limit=$2 t0 rc left status
  shift 2
  left=$(( BUDGET - ($(date +%s) - START) ))
  if [ "$left" -lt 15 ]; then
    printf '%s\t%s\t%s\t%s\n' "$name" "skipped (suite budget spent)" 0 "" >>"$OUT/parts.tsv"
    report; return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s)"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="timed out after ${limit}s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - t0 ))" "$*" >>"$OUT/parts.tsv"
  echo "   $status; last lines:"
  tail -n 5 "$OUT/$name.log" | sed 's/^/   | /'
  report
}

# report: summary.md (status table + every part's markdown / log tail) and summary.json.
report() {
  "$PY" - "$OUT" <<'EOF' || { echo "summary writer failed; see $OUT/parts.tsv" >&2; cp "$OUT/parts.tsv" "$OUT/summary.md"; }
import json, os, sys
out = sys.argv[1]
parts = [l.rstrip("\n").split("\t") for l in open(os.path.join(out, "parts.tsv")) if l.strip()]
md = ["# bsrn GPU suite", "", "| part | status | seconds |", "|---|---|---|"]
md += [f"| {p[0]} | {p[1]} | {p[2]} |" for p in parts]
env = os.path.join(out, "env.json")
summary = {"env": json.load(open(env)) if os.path.exists(env) else None, "parts": []}
for p in parts:
    entry = {"part": p[0], "status": p[1], "seconds": int(p[2] or 0), "command": p[3]}
    js, pm = os.path.join(out, p[0] + ".json"), os.path.join(out, p[0] + ".md")
    if os.path.exists(js):
        try:
            entry["result"] = json.load(open(js))
        except ValueError:
            entry["result"] = "unreadable JSON"
    md += ["", f"## {p[0]}", ""]
    if os.path.exists(pm):
        md.append(open(pm).read())
    else:
        log = os.path.join(out, p[0] + ".log")
        tail = open(log, errors="replace").read().splitlines()[-40:] if os.path.exists(log) else []
        md += ["```", *tail, "```"]
    summary["parts"].append(entry)
for name, text in (("summary.md", "\n".join(md) + "\n"),
                   ("summary.json", json.dumps(summary, indent=2) + "\n")):
    tmp = os.path.join(out, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(out, name))
EOF
}

# environment (device, versions, what is installed)
"$PY" - "$OUT/env.json" "$DEVICE" <<'EOF' 2>"$OUT/env.log" || echo "could not describe the environment; see $OUT/env.log"
import importlib.util, json, platform, sys
import torch
env = {"python": platform.python_version(), "torch": torch.__version__,
       "cuda_available": torch.cuda.is_available(), "suite_device": sys.argv[2],
       "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
       "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
       "installed": {m: importlib.util.find_spec(m) is not None
                     for m in ("pytest", "triton", "onnxruntime", "openvino", "tensorrt")}}
try:
    import onnxruntime as ort
    env["onnxruntime_providers"] = ort.get_available_providers()
except ImportError:
    pass
json.dump(env, open(sys.argv[1], "w"), indent=2)

EOF
cat "$OUT/env.json" 2>/dev/null; echo

if [ "$DRY" = 1 ]; then
  SPEED=(--device cpu --threads 1 --sizes 16x24 --reps 2 --warmup 1)
  NTIRE=(--device cpu --threads 1 --images 3 --lr-size 12x16)
  TRAIN=(--device cpu --threads 1 --batch 2 --patch 16 --iters 1 --reps 1 --warmup 1 --loaders "")
  L_TEST=600; L_SPEED=900; L_NTIRE=600; L_TRAIN=300; L_COMPILE=60; L_TRT=120
else
  SPEED=(--device cuda --sizes 180x320,339x510 --reps 20 --warmup 3)
  NTIRE=(--device cuda --images 100)
  TRAIN=(--device cuda --iters 10 --reps 3 --warmup 2 --loaders "")
  L_TEST=100; L_SPEED=90; L_NTIRE=120; L_TRAIN=40; L_COMPILE=90; L_TRT=120
fi

# 1. tests marked cuda
if "$PY" -c "import pytest" 2>/dev/null; then
  part cuda_tests "$L_TEST" "$PY" -m pytest -q -m cuda tests/test_cuda.py -rs -p no:cacheprovider
else
  part cuda_tests "$L_TEST" "$PY" benchmarks/run_tests_without_pytest.py tests/test_cuda.py \
    --json "$OUT/cuda_tests.json"
fi
# 2. inference speed (torch.compile and TensorRT apart: compiling or building engines may take
#    minutes, and a time-out there must not cost the main table)
part speed "$L_SPEED" "$PY" benchmarks/gpu_speed.py "${SPEED[@]}" --skip compiled,tensorrt \
  --json "$OUT/speed.json" --md "$OUT/speed.md"
# 3. NTIRE runtime protocol
part ntire "$L_NTIRE" "$PY" benchmarks/gpu_ntire.py "${NTIRE[@]}" \
  --json "$OUT/ntire.json" --md "$OUT/ntire.md"
# 4. training iterations/s
part train "$L_TRAIN" "$PY" benchmarks/train_throughput.py "${TRAIN[@]}"
# 5. torch.compile (CPU dry run: not supported with the CPU rewrites, reported as skipped)
part compiled "$L_COMPILE" "$PY" benchmarks/gpu_speed.py "${SPEED[@]}" --only compiled \
  --json "$OUT/compiled.json" --md "$OUT/compiled.md"
# 6. TensorRT through ONNX Runtime, where present
part tensorrt "$L_TRT" "$PY" benchmarks/gpu_speed.py "${SPEED[@]}" --only tensorrt \
  --json "$OUT/tensorrt.json" --md "$OUT/tensorrt.md"

echo "== done in $(( $(date +%s) - START ))s; results in $OUT/summary.md and $OUT/summary.json"
# exit status: 0 when every part finished, 1 when one failed or timed out (results are kept)
if cut -f2 "$OUT/parts.tsv" | grep -qv '^ok$'; then exit 1; fi
exit 0
