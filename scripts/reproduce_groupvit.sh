#!/usr/bin/env bash
# Evaluate a GroupViT model folder on every zero-shot segmentation benchmark found under DATA_ROOT with
# the published protocol (cocu eval-seg defaults, ImageNet mean/std) and print one table:
# benchmark, mIoU, published, difference. A benchmark not under DATA_ROOT is reported as missing.
# Nothing is downloaded.
#
#   scripts/reproduce_groupvit.sh [--reference NAME] [--out DIR] DATA_ROOT MODEL [-- EVAL-SEG OPTIONS...]
#
#   --reference  published numbers to compare with: groupvit-gcc-yfcc (default), groupvit-cocu-paper,
#                cocu-paper (see src/cocu/resources/published.json)
#   --out DIR    the script's folder for each benchmark's JSON and log (its <benchmark>.json/.log/.missing/
#                .failed files are replaced; default: a new temporary folder, printed)
#   after --     extra `cocu eval-seg` options, e.g. -- --device cuda --batch-size 16 --local-consistency
#                (with --local-consistency the table compares with the paper's LC rows)
# Environment: PYTHON (default python3) must be able to import cocu.
# Exit status: 0 when every benchmark found was evaluated, 1 when one failed, 2 on a usage error.
set -euo pipefail

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

PYTHON=${PYTHON:-python3}
reference=groupvit-gcc-yfcc
out=""
positional=()
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --reference) [ $# -ge 2 ] || { usage >&2; exit 2; }; reference=$2; shift 2 ;;
    --out) [ $# -ge 2 ] || { usage >&2; exit 2; }; out=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    -*) echo "reproduce_groupvit.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) positional+=("$1"); shift ;;
  esac
done
if [ ${#positional[@]} -ne 2 ]; then
  usage >&2
  exit 2
fi
data_root=${positional[0]}
model=${positional[1]}
if [ ! -d "$data_root" ]; then
  echo "reproduce_groupvit.sh: DATA_ROOT $data_root is not a folder" >&2
  exit 2
fi
# one quick call: check the reference name, list every benchmark with "present" or "missing" under DATA_ROOT
listing=$("$PYTHON" -c 'import sys; from cocu.evaluation.published import SEGMENTATION_BENCHMARKS as all_, published_miou, present_benchmarks
published_miou(sys.argv[1], "voc"); found = present_benchmarks(sys.argv[2])
print("\n".join(b + (" present" if b in found else " missing") for b in all_))' "$reference" "$data_root") || exit 2
if [ -z "$out" ]; then
  out=$(mktemp -d "${TMPDIR:-/tmp}/reproduce_groupvit.XXXXXX")
fi
mkdir -p "$out"

failed=0
while read -r bench state; do
  rm -f "$out/$bench.missing" "$out/$bench.failed"
  if [ "$state" = missing ]; then
    rm -f "$out/$bench.json"
    : > "$out/$bench.missing"
    continue
  fi
  echo "$bench ..." >&2
  set +e
  "$PYTHON" -m cocu eval-seg --model "$model" --dataset "$bench" --root "$data_root" --out "$out/$bench.json" \
    --normalize imagenet --no-progress ${extra[@]+"${extra[@]}"} < /dev/null > "$out/$bench.log" 2>&1
  rc=$?
  set -e
  case $rc in
    0) ;;
    3) rm -f "$out/$bench.json"; : > "$out/$bench.missing" ;;
    *) rm -f "$out/$bench.json"; grep -E "error|Error" "$out/$bench.log" | tail -n 1 > "$out/$bench.failed" || true
       [ -s "$out/$bench.failed" ] || echo "cocu eval-seg exited with status $rc (see $out/$bench.log)" > "$out/$bench.failed"
       failed=1 ;;
  esac
done <<< "$listing"

"$PYTHON" -c 'import sys; from cocu.evaluation.published import comparison_from_folder; print(comparison_from_folder(*sys.argv[1:]))' \
  "$out" "$reference"
echo "results and logs: $out"
exit $failed
