#!/usr/bin/env bash
# The loss kernels' speed benchmarks on this machine's GPU, kept as one JSON per run:
#
#   bash benchmarks/run_gpu.sh [RESULTS] [PYTEST OPTIONS...]     # RESULTS: default benchmarks/results
#
# writes RESULTS/<card>-<date>-<commit>.json (pytest-benchmark's --benchmark-json), shows it
# beside the latest JSON of the same card already in RESULTS (pytest-benchmark's comparison;
# FAIL_ON=median:10% makes a slower median fail the run), and draws RESULTS/<same name>.png
# when matplotlib is installed. BENCH_DEVICE=cpu runs the CPU's tiny shapes instead (a dry run;
# tox -e bench is the CPU's usual way). Installs nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:-.}"

results="${1:-benchmarks/results}"
shift || true
device="${BENCH_DEVICE:-cuda}"
if [ "$device" = cuda ] && ! python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "run_gpu.sh: torch sees no CUDA device (tox -e bench runs the CPU's tiny shapes)" >&2
    exit 2
fi
mkdir -p "$results"
read -r card stem < <(python -c "from benchmarks._machine import card_slug, result_stem
print(card_slug('$device'), result_stem('$device'))")
# Names sort by date within one card: the latest kept run is the last.
previous=$(ls "$results"/"$card"-[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]-*.json 2>/dev/null | sort | tail -n 1)

compare=()
if [ -n "$previous" ]; then
    compare+=(--benchmark-compare="$previous")
    if [ -n "${FAIL_ON:-}" ]; then compare+=(--benchmark-compare-fail="$FAIL_ON"); fi
    echo "compared with $previous"
fi
python -m pytest -p no:cacheprovider benchmarks/test_kernel_speed.py --benchmark-only \
    --bench-device "$device" --benchmark-columns=min,median,rounds \
    --benchmark-json "$results/$stem.json" "${compare[@]}" "$@"
code=$?
if [ -f "$results/$stem.json" ] && python -c "import matplotlib" 2>/dev/null; then
    python benchmarks/plot.py "$results/$stem.json" -o "$results/$stem.png"
fi
echo "kept $results/$stem.json"
exit $code
