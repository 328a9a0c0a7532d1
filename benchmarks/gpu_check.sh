#!/usr/bin/env bash
# petite-fl's GPU check: what the CUDA path does on one GPU, in at most ~6 minutes, from a bare machine.
#
#   bash benchmarks/gpu_check.sh                    # on the GPU machine, from the repository root
#   GPU_CHECK_TINY=1 bash benchmarks/gpu_check.sh   # CPU dry run of the same code paths, tiny sizes
#
# Parts (benchmarks/gpu_check.py): machine; train (paper-size UNETR steps, PETITE and full
# fine-tuning, float32 and mixed precision); federated (five synthetic scanners, paper-size UNETR,
# fedavg rounds over the plain loop, from data generation on); tests (the project's tests that run
# on CUDA: test_metrics' cuda cases, test_jobs' jobs on the auto device). Each part runs under its
# own time limit and reports its own failure; the next one runs anyway. Writes OUT/gpu_check.json
# (rewritten after every part) and OUT/gpu_check.log; OUT defaults to ./gpu-out.
# Wheels in .whl/ (packages the machine lacks) are installed to /tmp/site first; torch is the machine's.
set -uo pipefail   # no -e: a failed part is recorded and the next part runs

cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
rm -rf "$OUT/parts" && mkdir -p "$OUT/parts"
export PYTHONUNBUFFERED=1
exec > >(tee "$OUT/gpu_check.log") 2>&1
PY=${PYTHON:-python3}
SCALE=${GPU_CHECK_TIME_SCALE:-1}   # × every time limit (a slow CPU dry run)
START=$(date +%s)
DEADLINE=$((START + SCALE * ${GPU_CHECK_BUDGET:-350}))   # seconds for everything, wheels included
echo "gpu-check: start $(date -u +%FT%TZ), OUT=$OUT, tiny=${GPU_CHECK_TINY:-0}, budget $((DEADLINE - START)) s"

if compgen -G ".whl/*.whl" >/dev/null; then
    SITE=${GPU_CHECK_SITE:-/tmp/site}
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl; then
        export PYTHONPATH=$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}
        echo "gpu-check: installed $(ls .whl | wc -l) wheels to $SITE"
    else
        echo "gpu-check: installing .whl/*.whl FAILED; going on with what the machine has"
        export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    fi
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
# A fresh cache: data generation and pretraining are part of what is measured, never reused.
export PETITE_FL_HOME=$(mktemp -d "${TMPDIR:-/tmp}/petite-gpu-check.XXXXXX")

collect() { "$PY" benchmarks/gpu_check.py collect "$OUT" || echo "gpu-check: collect FAILED"; }

# part NAME WANT RESERVE CMD...: run CMD for at most WANT seconds, leaving RESERVE seconds of the budget.
part() {
    local name=$1 want=$(($2 * SCALE)) reserve=$(($3 * SCALE)); shift 3
    local left=$((DEADLINE - $(date +%s) - reserve)) rc begin
    local limit=$((want < left ? want : left))
    begin=$(date +%s)
    if ((limit < 10)); then
        echo "=== part $name: SKIPPED, no time left in the budget"
        rc=-2
    else
        echo "=== part $name (limit ${limit} s) ==="
        timeout -k 10 "$limit" "$@" 2>&1 | tee "$OUT/parts/$name.out"
        rc=${PIPESTATUS[0]}
        case $rc in
            0) echo "=== part $name: ok in $(($(date +%s) - begin)) s" ;;
            124) echo "=== part $name: TIMED OUT at ${limit} s" ;;
            137) echo "=== part $name: KILLED (its time limit + 10 s, or out of memory)" ;;
            *) echo "=== part $name: FAILED (exit $rc)" ;;
        esac
    fi
    printf '{"rc": %d, "seconds": %d, "limit": %d}\n' "$rc" "$(($(date +%s) - begin))" "$limit" \
        >"$OUT/parts/$name.status.json"
    collect
}

if [[ -n ${GPU_CHECK_TINY:-} && ${GPU_CHECK_TINY} != 0 ]]; then
    TESTS=${GPU_CHECK_TESTS:-tests/test_metrics.py}
else
    TESTS=${GPU_CHECK_TESTS:-tests/test_metrics.py tests/test_jobs.py}
fi

# Limits (s): each part's own, and what it must leave to the parts after it (federated: 170, tests: 45).
part machine 40 300 "$PY" benchmarks/gpu_check.py machine "$OUT"
part train 100 215 "$PY" benchmarks/gpu_check.py train "$OUT"
part federated 200 45 "$PY" benchmarks/gpu_check.py federated "$OUT"
# shellcheck disable=SC2086  # TESTS is a list of paths
part tests 60 3 "$PY" -m pytest -v -p no:cacheprovider $TESTS

# The federated run's own files (summary, per-round logs, CSV) beside the JSON; the cache goes.
RUN=$PETITE_FL_HOME/runs/federated/gpu-check
[[ -d $RUN ]] && mkdir -p "$OUT/federated-run" && cp "$RUN"/*.json "$RUN"/*.csv "$OUT/federated-run/" 2>/dev/null
rm -rf "$PETITE_FL_HOME"
echo "gpu-check: done in $(($(date +%s) - START)) s; $OUT/gpu_check.json and $OUT/gpu_check.log"
"$PY" - "$OUT/gpu_check.json" <<'EOF' || true
import json, sys
r = json.load(open(sys.argv[1]))
print("parts:", ", ".join(f"{k}: {v['status']}" for k, v in r["parts"].items()))
for row in (r.get("train") or {}).get("rows", []):
    mem = row.get("cuda_max_allocated_bytes", row["peak_rss_bytes"]) / 2**30
    print(f"  train {row['arm']:<26} {row['step_seconds'] * 1000:8.1f} ms/step  {mem:6.2f} GiB  "
          f"trainable {row['trainable_percent']:.3f} %")
for row in (r.get("train") or {}).get("ratios", []):
    print(f"  {row['compare']:<40} time x{row['step_time_ratio']:.2f}  memory x{row['peak_memory_ratio']:.2f}")
fed = r.get("federated") or {}
for row in fed.get("rounds_table", []):
    v, b = row.get("val"), row.get("bytes_all_sites", {})
    val = f"val PSNR {v['psnr']:.2f} dB, SSIM {v['ssim']:.4f}" if v else "no validation"
    print(f"  round {row['round']}: {val}; bytes over all sites {b}")
if fed.get("val_change"):
    print("  val change:", fed["val_change"])
if (fed.get("summary") or {}).get("test_mean"):
    print("  final test (whole volume):", fed["summary"]["test_mean"])
if r.get("tests"):
    print("  tests:", r["tests"]["summary"] or r["tests"]["counts"])
EOF
