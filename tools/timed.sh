#!/usr/bin/env bash
# timed.sh PHASE COMMAND...: run COMMAND and append "seconds<TAB>PHASE" to $LAB_PHASE_TIMES.
set -uo pipefail
phase=$1
shift
start=$(date +%s)
"$@"
status=$?
[ -z "${LAB_PHASE_TIMES:-}" ] || printf '%s\t%s\n' "$(($(date +%s) - start))" "$phase" >>"$LAB_PHASE_TIMES"
exit $status
