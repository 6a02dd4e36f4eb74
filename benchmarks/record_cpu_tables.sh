#!/usr/bin/env bash
# The CPU tables of benchmarks/RESULTS.md, in both regimes, and the demo check -- on an IDLE machine.
#
#   benchmarks/record_cpu_tables.sh                 # from the repository root, in the package's environment
#   PYTHON=.venv/bin/python benchmarks/record_cpu_tables.sh
#
# Runs, one after the other (about 25 minutes on 2 cores the first time, most of it compiling; inductor keeps
# the graphs on disk, so a second run compiles in a few minutes):
#   1. fuxi-linear bench, CPU defaults, every model compiled  -> results/cpu-2core-compiled.{json,txt}
#   2. fuxi-linear bench, CPU defaults, every model eager     -> results/cpu-2core-eager.{json,txt}
#   3. fuxi-linear demo (its default regime: every model eager), timed -> results/cpu-2core-demo.txt
# Each .txt is the command's output as printed (the table to paste into RESULTS.md, its spread table, the
# load before and after, and the closing warning if any row was noisy). Plots go to $PLOTS (default
# /tmp/fuxi-cpu-tables). The header of each .txt has the date, the commit and the command.
#
# The done-when checks of issue 18 read these files: no "WARNING:" line in any of them (no noisy row), and the
# demo's "done in N s" under ~120 s. A run on a busy machine says so itself (the warning, and the load lines):
# re-run then, rather than record it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=benchmarks/results
PLOTS=${PLOTS:-/tmp/fuxi-cpu-tables}
mkdir -p "$OUT" "$PLOTS"
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then COMMIT="$COMMIT + local changes"; fi

run() {  # run NAME COMMAND...: the command's output (stdout and stderr) to $OUT/NAME.txt, after a header
    local name=$1; shift
    {
        echo "date: $(date -u +%F) | commit: $COMMIT | load before: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a)"
        echo "command: $*"
        echo
        "$@" 2>&1
    } | tee "$OUT/$name.txt"
}

run cpu-2core-compiled "$PY" -m fuxi_linear bench --device cpu --compile on --no-progress \
    --json "$OUT/cpu-2core-compiled.json" --plot "$PLOTS/cpu-2core-compiled.png"
run cpu-2core-eager "$PY" -m fuxi_linear bench --device cpu --compile off --no-progress \
    --json "$OUT/cpu-2core-eager.json" --plot "$PLOTS/cpu-2core-eager.png"
run cpu-2core-demo "$PY" -m fuxi_linear demo --output "$PLOTS/demo" --no-progress

echo
echo "== checks"
for f in cpu-2core-compiled cpu-2core-eager cpu-2core-demo; do
    if grep -q "^WARNING:" "$OUT/$f.txt"; then echo "$f: NOISY rows (see its WARNING line): re-run on an idle machine"
    else echo "$f: no noisy row"; fi
done
grep -h "^done in" "$OUT/cpu-2core-demo.txt" || true
