#!/usr/bin/env bash
# fuzz/run.sh — runs the libFuzzer targets of build/fuzz/ (make fuzz) on their seed corpora
# (fuzz/corpus/<target>/), one at a time. Every run is bounded: -timeout per input (a hang is a
# finding), an RSS and a malloc limit (a reader allocating what no input of 1 MiB justifies is a
# finding), and `timeout` around the whole process, so a stuck target fails instead of hanging.
# New inputs go to build/fuzz/work/<target>/ (the committed seeds are never touched; smoke and long
# runs start with it empty), crash reproducers to build/fuzz/artifacts/; inputs are written to
# files under $TMPDIR (default /dev/shm where writable).
#
#   fuzz/run.sh smoke [SECONDS]     every target SECONDS (default 8) after checking that each
#                                   valid_* seed is accepted; exit 1 on any finding (make fuzz-smoke)
#   fuzz/run.sh long [RUNS]         every target for RUNS executions (default 1000000); per-target
#                                   logs and a summary table in build/fuzz/long/
#   fuzz/run.sh TARGET [ARGS...]    one target with extra libFuzzer flags, e.g. -runs=1000
# Targets: model data adapter state safetensors config peft.
set -uo pipefail
cd "$(dirname "$0")/.."
B=build/fuzz
TARGETS="model data adapter state safetensors config peft"
LIMITS="-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024"
export UBSAN_OPTIONS="print_stacktrace=1:${UBSAN_OPTIONS:-}"
# the targets write every input to a file: in memory when the machine has /dev/shm
[ -n "${TMPDIR:-}" ] || { [ -w /dev/shm ] && export TMPDIR=/dev/shm; }

for t in $TARGETS; do
    [ -x "$B/fuzz_$t" ] || { echo "fuzz/run.sh: $B/fuzz_$t missing: run make fuzz first" >&2; exit 2; }
done

# fuzz TARGET WALL_LIMIT_S LOG [libFuzzer flags...]: one bounded run; returns libFuzzer's status
fuzz() {
    local t=$1 wall=$2 log=$3
    shift 3
    mkdir -p "$B/work/$t" "$B/artifacts"
    timeout -k 10 "$wall" "$B/fuzz_$t" $LIMITS -artifact_prefix="$B/artifacts/$t-" -print_final_stats=1 "$@" \
        "$B/work/$t" "fuzz/corpus/$t" >"$log" 2>&1
}

mode=${1:-smoke}
# smoke and long runs start from the seeds alone, so that their figures are reproducible
case "$mode" in smoke | long) rm -rf "$B/work" ;; esac
case "$mode" in
smoke)
    secs=${2:-8}
    mkdir -p "$B/smoke"
    failed=""
    for t in $TARGETS; do
        # the valid seeds must still be valid: a stale corpus (a format change) fuzzes nothing deep
        if ! FUZZ_EXPECT_VALID=1 timeout -k 10 60 "$B/fuzz_$t" $LIMITS fuzz/corpus/$t/valid_* >"$B/smoke/$t.seeds.log" 2>&1; then
            echo "FAIL $t: a valid_* seed is rejected or crashes (remake them: make fuzz-corpus)"
            tail -n 5 "$B/smoke/$t.seeds.log"
            failed="$failed $t"
            continue
        fi
        if fuzz "$t" $((secs + 60)) "$B/smoke/$t.log" -max_total_time="$secs"; then
            echo "ok   $t: $(grep -m1 -o 'stat::number_of_executed_units: [0-9]*' "$B/smoke/$t.log" | grep -o '[0-9]*$') executions in ${secs} s"
        else
            echo "FAIL $t (exit $?): see $B/smoke/$t.log"
            grep -E 'ERROR|FINDING|SUMMARY|Test unit written' "$B/smoke/$t.log" | head -n 10
            failed="$failed $t"
        fi
    done
    [ -z "$failed" ] || { echo "fuzz-smoke: findings in:$failed"; exit 1; }
    echo "fuzz-smoke: all targets ok"
    ;;
long)
    runs=${2:-1000000}
    mkdir -p "$B/long"
    summary="$B/long/summary.md"
    touch "$B/long/.start"  # reproducers newer than this are this run's
    echo "| target | executions | exec/s | crashes | final corpus (units / bytes) | files written to work/ (files / bytes) | cov / ft | seconds | peak RSS MB |" >"$summary"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |" >>"$summary"
    for t in $TARGETS; do
        start=$(date +%s)
        fuzz "$t" 7200 "$B/long/$t.log" -runs="$runs"
        rc=$?
        secs=$(($(date +%s) - start))
        figure() { grep -m1 -o "stat::$1: *[0-9]*" "$B/long/$t.log" | grep -o '[0-9]*$'; }
        last=$(grep -E '^#[0-9]+' "$B/long/$t.log" | tail -n 1)
        corp=$(grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' <<<"$last" | cut -d' ' -f2)
        cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' <<<"$last" | awk '{print $2 " / " $4}')
        written=$(find "$B/work/$t" -type f -printf "%s\n" | awk '{n++; b += $1} END {print n + 0 " / " b + 0}')
        crashes=$(find "$B/artifacts" -name "$t-*" -newer "$B/long/.start" | wc -l)
        echo "| $t | $(figure number_of_executed_units) | $(figure average_exec_per_sec) | $crashes (exit $rc) | $corp | $written | $cov | $secs | $(figure peak_rss_mb) |" | tee -a "$summary"
    done
    ;;
*)
    t=$mode
    shift
    fuzz "$t" 7200 /dev/stdout "$@"
    ;;
esac
