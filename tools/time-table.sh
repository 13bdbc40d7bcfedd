#!/usr/bin/env bash
# Print the time table of a `make test` run from $LAB_PHASE_TIMES, phases in the order they ran.
set -euo pipefail
times=${LAB_PHASE_TIMES:?}
[ -s "$times" ] || exit 0
echo "== time table (seconds)"
awk -F '\t' '{ printf "%6d  %s\n", $1, $2; total += $1 } END { printf "%6d  total\n", total }' "$times"
