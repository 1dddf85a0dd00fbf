#!/usr/bin/env bash
# Every GPU check a person with one GPU needs, results and a summary in one folder: the
# gpu-marked tests, then `lmloss check --device cuda -j N` on this project's loss, PyTorch's,
# torch.compile's, lmloss's Triton kernel (when triton imports) and Liger's (when installed);
# then the loss kernels'
# speed benchmarks (benchmarks/run_gpu.sh), whose JSON and plot land in OUT/benchmarks/ (copy the
# JSON to benchmarks/results/ to keep it). Installs nothing.
#
#   bash benchmarks/gpu_check.sh [OUT]            # OUT: default gpu-check-<date>
#   STEP_SECONDS=50 BENCH_SECONDS=150 bash benchmarks/gpu_check.sh OUT   # at most 8 steps: ~9 minutes
#
# Each step has a time limit (STEP_SECONDS; BENCH_SECONDS for the benchmarks) so the whole stays
# bounded; a check stopped by its limit keeps what it found in its JSON ("complete": false).
# Settings, for a dry run on a CPU among others: DEVICE (cuda), JOBS (the CPU count), PROFILE
# (quick), STEP_SECONDS (90), KERNELS (space-separated SPECs), CLAUSES (space-separated IDs;
# default every clause), PYTEST_MARK (gpu; empty to skip pytest), BENCH (1; 0 skips the
# benchmarks), BENCH_SECONDS (600), BENCH_SELECT (a pytest -k expression; default every benchmark).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:-.}"

out="${1:-gpu-check-$(date +%Y%m%d-%H%M%S)}"
device="${DEVICE:-cuda}"
jobs="${JOBS:-$(nproc)}"
profile="${PROFILE:-quick}"
step_seconds="${STEP_SECONDS:-90}"
pytest_mark="${PYTEST_MARK-gpu}"
bench="${BENCH:-1}"
bench_seconds="${BENCH_SECONDS:-600}"
bench_select="${BENCH_SELECT:-}"
default_kernels="lmloss:cross_entropy torch.nn.functional:cross_entropy properties.kernels.real:compiled_cross_entropy"
if python -c "import triton" 2>/dev/null; then
    default_kernels="$default_kernels lmloss:triton_cross_entropy"
fi
if python -c "import liger_kernel" 2>/dev/null; then
    default_kernels="$default_kernels properties.kernels.real:liger_cross_entropy"
fi
kernels="${KERNELS:-$default_kernels}"
clause_options=()
for clause in ${CLAUSES:-}; do clause_options+=(--clause "$clause"); done

mkdir -p "$out"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    python - <<'PYTHON'
import importlib, torch
print(f"torch: {torch.__version__}")
for name in ("triton", "liger_kernel", "hypothesis"):
    try:
        module = importlib.import_module(name)
        print(f"{name}: {getattr(module, '__version__', 'installed')}")
    except ImportError:
        print(f"{name}: not installed")
print(f"card: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device'}")
PYTHON
} > "$out/versions.txt" 2>&1

summary="$out/summary.txt"
cat "$out/versions.txt" > "$summary"
echo "device $device · profile $profile · $jobs jobs · $step_seconds s per step" >> "$summary"

if [ -n "$pytest_mark" ]; then
    start=$SECONDS
    timeout "$step_seconds" python -m pytest -q -p no:cacheprovider -m "$pytest_mark" properties \
        > "$out/pytest-$pytest_mark.txt" 2>&1
    code=$?
    echo "pytest -m $pytest_mark: exit $code ($((SECONDS - start)) s): $(tail -n 1 "$out/pytest-$pytest_mark.txt")" >> "$summary"
fi

for spec in $kernels; do
    name="${spec//[^A-Za-z0-9_.-]/_}"
    start=$SECONDS
    timeout "$step_seconds" python -m lmloss check "$spec" --device "$device" -j "$jobs" \
        --profile "$profile" "${clause_options[@]}" --json "$out/$name.json" \
        > "$out/$name.txt" 2>&1
    code=$?
    echo "lmloss check $spec: exit $code ($((SECONDS - start)) s)" >> "$summary"
done

if [ "$bench" != 0 ]; then
    start=$SECONDS
    selection=()
    if [ -n "$bench_select" ]; then selection=(-k "$bench_select"); fi
    BENCH_DEVICE="$device" timeout "$bench_seconds" bash benchmarks/run_gpu.sh "$out/benchmarks" \
        "${selection[@]}" > "$out/benchmarks.txt" 2>&1
    code=$?
    outcome=$(grep -E "[0-9]+ (passed|failed|skipped|error)" "$out/benchmarks.txt" | tail -n 1)
    echo "kernel benchmarks: exit $code ($((SECONDS - start)) s): ${outcome:-$(tail -n 1 "$out/benchmarks.txt")}" >> "$summary"
fi

# One line per kernel and dtype from the JSON reports (a stopped check says so).
python - "$out" >> "$summary" 2>&1 <<'PYTHON'
import collections, json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    report = json.loads(path.read_text())
    state = "complete" if report["complete"] else "STOPPED before the end"
    for kernel in report["kernels"]:
        for dtype in kernel["dtypes"]:
            results = [r for r in kernel["results"] if r["dtype"] == dtype]
            counts = collections.Counter(r["status"] for r in results)
            failing = ", ".join(r["clause"] for r in results if r["status"] != "holds" and r["status"] != "not applicable")
            words = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
            print(f"{kernel['name']} {dtype}: {words or 'nothing checked'} ({state})" + (f"; not holding: {failing}" if failing else ""))
PYTHON
cat "$summary"
