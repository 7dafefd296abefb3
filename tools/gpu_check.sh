#!/usr/bin/env bash
# tools/gpu_check.sh — the one script the project runs on a GPU machine (CI has no GPU): builds the
# GPU binaries for Hopper, runs the GPU test suite, runs the benchmarks, and prints a short table
# of the results last. Exit status 0 only if the build and every test passed.
# Run from anywhere: bash tools/gpu_check.sh   (ARCH=sm_80 bash tools/gpu_check.sh for an A100;
# TEST_GPU_ARGS='-ts=nf4*' passes doctest filters to ./test_gpu; SANITIZE=1 also runs
# compute-sanitizer memcheck on the kernel and step tests and racecheck on the attention kernels;
# BENCH_STEP=0 skips the 7B training-step benchmarks; TRAIN=1 runs ./train's demo on the GPU and
# checks that 10 steps + --resume + 10 equal 20 straight, bit for bit; LIMA_DIR=dir (holding
# lima.bin, lima_val.bin from ./prepare_lima) trains a 7B-shaped random model LIMA_EPOCHS (3) epochs)
#
# The build needs the same headers as the CPU build (doctest, nlohmann-json, OpenSSL) and
# libcrypto. A GPU image without them can be given a folder holding include/ and lib/ copies:
# GPU_DEPS=path (default build/gpu_deps); it is used only for what the machine lacks.
# PREBUILT=dir skips the build and runs the binaries in dir (made elsewhere with `make`, e.g. by
# tools/pack_device.sh; shared libraries they need may sit in dir/lib). BEFORE=dir also runs that
# folder's bench_step and bench_decode, alternating with the current ones in the same call, and
# prints both (for "within 3% of before" checks).
# Later issues add their binaries to GPU_TARGETS and their benchmarks to the list below.
set -u
cd "$(dirname "$0")/.."
ARCH="${ARCH:-sm_90}"
JOBS="${JOBS:-16}"
GPU_DEPS="${GPU_DEPS:-build/gpu_deps}"
GPU_TARGETS="test_gpu bench_quant bench_step bench_decode train sample export_hf"
LOG_DIR="${LOG_DIR:-build/gpu_check}"
mkdir -p "$LOG_DIR"

BIN="."
if [ -n "${PREBUILT:-}" ]; then
    # the tests run ./export_hf, ./train and friends from the repo root: the binaries go there
    for b in "$PREBUILT"/*; do [ -f "$b" ] && [ -x "$b" ] && cp "$b" .; done
    [ -d "$PREBUILT/lib" ] && export LD_LIBRARY_PATH="$PWD/$PREBUILT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

# ---- build dependencies the machine may lack
missing=""
for h in doctest/doctest.h nlohmann/json.hpp openssl/evp.h; do
    echo "#include <$h>" | g++ -std=c++17 -x c++ -E - >/dev/null 2>&1 || missing="$missing $h"
done
echo 'int main(){}' | g++ -x c++ - -lcrypto -o /dev/null 2>/dev/null || missing="$missing libcrypto"
if [ -n "$missing" ] && [ -z "${PREBUILT:-}" ]; then
    if [ -d "$GPU_DEPS/include" ]; then
        echo "gpu_check: this machine lacks$missing; using $GPU_DEPS"
        export CPATH="$PWD/$GPU_DEPS/include${CPATH:+:$CPATH}"
        export LIBRARY_PATH="$PWD/$GPU_DEPS/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
        export LD_LIBRARY_PATH="$PWD/$GPU_DEPS/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    else
        echo "gpu_check: this machine lacks$missing and there is no $GPU_DEPS (see the header of $0)" >&2
        exit 1
    fi
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
# The fixture tests read ${FIXTURES_DIR:-../shared/fixtures}; on a machine without ../shared, copy the
# fixtures into a folder that travels with the tree and point FIXTURES_DIR at it.
fixtures="${FIXTURES_DIR:-../shared/fixtures}"
[ -d "$fixtures" ] || echo "gpu_check: WARNING: no fixtures at $fixtures (set FIXTURES_DIR); fixture tests will fail" >&2

# ---- build
t0=$(date +%s)
if [ -n "${PREBUILT:-}" ]; then
    build="prebuilt ($PREBUILT)"
elif make ARCH="$ARCH" -j"$JOBS" $GPU_TARGETS >"$LOG_DIR/build.log" 2>&1; then
    build="ok ($(( $(date +%s) - t0 )) s)"
else
    tail -n 40 "$LOG_DIR/build.log"
    echo "gpu_check: build failed (full log: $LOG_DIR/build.log)" >&2
    exit 1
fi

# ---- tests (TESTS=0 skips them and the NF4 benchmark, for a run that only trains)
test_rc=0; bench_rc=0; tests="skipped"; asserts="skipped"
if [ "${TESTS:-1}" = 1 ]; then
# shellcheck disable=SC2086  # TEST_GPU_ARGS is a list of doctest flags
"$BIN"/test_gpu ${TEST_GPU_ARGS:-} 2>&1 | tee "$LOG_DIR/test_gpu.log"
test_rc=${PIPESTATUS[0]}
tests=$(grep -E '^\[doctest\] test cases:' "$LOG_DIR/test_gpu.log" | sed 's/\[doctest\] test cases: *//')
asserts=$(grep -E '^\[doctest\] assertions:' "$LOG_DIR/test_gpu.log" | sed 's/\[doctest\] assertions: *//')

# ---- benchmarks (not tests: they report, they do not fail the check unless they crash)
"$BIN"/bench_quant 2>&1 | tee "$LOG_DIR/bench_quant.log"
bench_rc=${PIPESTATUS[0]}
fi
result() { grep -E "^RESULT $1 " "$LOG_DIR"/bench_*.log 2>/dev/null | head -n 1 | sed "s/^.*RESULT $1 //"; }
step_rc=0
if [ "${BENCH_STEP:-1}" = 1 ]; then
    for q in nf4 bf16; do
        "$BIN"/bench_step --model 7b --quant $q --seq 2048 --rank 64 --steps 3 2>&1 | tee "$LOG_DIR/bench_step_$q.log"
        [ "${PIPESTATUS[0]}" -eq 0 ] || step_rc=1
        if [ -n "${BEFORE:-}" ]; then
            "$BEFORE"/bench_step --model 7b --quant $q --seq 2048 --rank 64 --steps 3 2>&1 | tee "$LOG_DIR/before_step_$q.log"
            "$BIN"/bench_step --model 7b --quant $q --seq 2048 --rank 64 --steps 3 2>&1 | tee -a "$LOG_DIR/bench_step_$q.log"
        fi
    done
fi
# PROFILE=1: the per-phase profile of the 7B NF4 step, for each attention query-block size
if [ "${PROFILE:-0}" = 1 ]; then
    for w in 8 4; do
        "$BIN"/bench_step --model 7b --quant nf4 --seq 2048 --rank 64 --steps 3 --profile --att-warps $w 2>&1 |
            tee "$LOG_DIR/profile_nf4_w$w.log"
    done
fi
if [ "${BENCH_DECODE:-1}" = 1 ]; then
    for rep in 1 2; do
        "$BIN"/bench_decode --model 7b --quant nf4 --rank 64 2>&1 | tee -a "$LOG_DIR/bench_decode_nf4.log"
        [ "${PIPESTATUS[0]}" -eq 0 ] || step_rc=1
        "$BIN"/bench_decode --model 7b --quant bf16 --rank 64 --merge 2>&1 | tee -a "$LOG_DIR/bench_decode_bf16.log"
        [ "${PIPESTATUS[0]}" -eq 0 ] || step_rc=1
        if [ -n "${BEFORE:-}" ]; then
            "$BEFORE"/bench_decode --model 7b --quant nf4 --rank 64 2>&1 | tee -a "$LOG_DIR/before_decode_nf4.log"
            "$BEFORE"/bench_decode --model 7b --quant bf16 --rank 64 --merge 2>&1 | tee -a "$LOG_DIR/before_decode_bf16.log"
        fi
        [ -n "${BEFORE:-}" ] || break
    done
fi
train_demo="not run"; train_resume="not run"; train_lima="not run"; train_before="not run"
if [ "${TRAIN:-0}" = 1 ]; then
    rm -rf "$LOG_DIR/demo" build/resume_a build/resume_b
    "$BIN"/train -o "$LOG_DIR/demo" 2>&1 | tee "$LOG_DIR/train_demo.log" | grep -E "^step (1|20|40|60)/|^train:"
    train_demo=$(awk -F, 'NR==2{a=$3} END{print "loss " a " -> " $3 ", val " $4}' "$LOG_DIR/demo/log.csv" 2>/dev/null)
    # ./sample on the demo's model and adapter, on the GPU
    "$BIN"/sample -m "$LOG_DIR/demo/model.bin" -a "$LOG_DIR/demo/adapter.bin" -p "What is the capital of France?" --greedy \
        2>&1 | tee "$LOG_DIR/sample_demo.log" | tail -n 4
    "$BIN"/train --steps 20 --eval-every 10 -o build/resume_a >/dev/null 2>&1
    "$BIN"/train --steps 20 --eval-every 10 --stop-at 10 -o build/resume_b >/dev/null 2>&1
    "$BIN"/train --steps 20 --eval-every 10 --resume -o build/resume_b >/dev/null 2>&1
    if [ -n "${BEFORE:-}" ]; then  # the same run by the binary before the change: bitwise the same adapter
        rm -rf build/resume_before
        "$BEFORE"/train --steps 20 --eval-every 10 -o build/resume_before >/dev/null 2>&1
        if cmp -s build/resume_a/adapter.bin build/resume_before/adapter.bin &&
            [ "$(cut -d, -f1-6 build/resume_a/log.csv)" = "$(cut -d, -f1-6 build/resume_before/log.csv)" ]; then
            train_before="GPU demo --steps 20: adapter.bin and losses bitwise identical to BEFORE's"
        else
            train_before="FAILED: GPU demo differs from BEFORE's"
            step_rc=1
        fi
    fi
    if cmp -s build/resume_a/adapter.bin build/resume_b/adapter.bin && cmp -s build/resume_a/state.bin build/resume_b/state.bin &&
        [ "$(cut -d, -f1-6 build/resume_a/log.csv)" = "$(cut -d, -f1-6 build/resume_b/log.csv)" ]; then
        train_resume="20 steps == 10 + resume + 10: adapter, state and losses bitwise identical"
    else
        train_resume="FAILED: resumed run differs"
        step_rc=1
    fi
fi
if [ -n "${LIMA_DIR:-}" ]; then
    rm -rf "$LOG_DIR/lima7b"
    "$BIN"/train -i "$LIMA_DIR/lima.bin" -v "$LIMA_DIR/lima_val.bin" -m random:7b --epochs "${LIMA_EPOCHS:-3}" --eval-every 21 \
        -o "$LOG_DIR/lima7b" 2>&1 | tee "$LOG_DIR/train_lima.log" | awk 'NR<=2 || /val/ || /^train:/'
    [ "${PIPESTATUS[0]}" -eq 0 ] || step_rc=1
    train_lima=$(tail -n 1 "$LOG_DIR/lima7b/log.csv" 2>/dev/null | awk -F, '{print "step " $1 " loss " $3 " val " $4 ", " $7 " tok/s, MFU " $8 ", " $9 " GiB"}')
fi
san="not run"
if [ "${SANITIZE:-0}" = 1 ]; then
    san_rc=0
    compute-sanitizer --tool memcheck --error-exitcode 9 "$BIN"/test_gpu -tc='kernel*,step*,decode*' >"$LOG_DIR/memcheck.log" 2>&1 || san_rc=1
    compute-sanitizer --tool racecheck --error-exitcode 9 "$BIN"/test_gpu -tc='*attention*' >"$LOG_DIR/racecheck.log" 2>&1 || san_rc=1
    tail -n 3 "$LOG_DIR/memcheck.log" "$LOG_DIR/racecheck.log"
    san=$([ $san_rc -eq 0 ] && echo "memcheck + racecheck clean" || echo "FAILED (see $LOG_DIR/*check.log)")
fi

# ---- summary table
echo
echo "| gpu_check ($ARCH)          | result |"
echo "| --- | --- |"
echo "| card                       | $(result card) |"
echo "| build                      | $build |"
echo "| test_gpu (exit $test_rc)            | ${tests:-none} / assertions ${asserts:-none} |"
echo "| NF4 dequantize -> bf16     | $(result dequant_gbs_4096x4096) / $(result dequant_gbs_11008x4096) / $(result dequant_gbs_4096x11008) GB/s (4096x4096 / 11008x4096 / 4096x11008) |"
echo "| NF4 quantize 7B linears    | $(result quantize_7b_ms) ms, $(result bits_per_param) bits/param (bench exit $bench_rc) |"
# every RESULT line of a log, tokens/s only, joined (several runs: several numbers)
rates() { grep -E "^RESULT" "$1" 2>/dev/null | grep -oE "(tokens_per_s|prefill_tok_s|decode_tok_s)=[0-9.]+" | tr '\n' ' '; }
step_line() { grep -E "^RESULT model=7b quant=$1 " "$LOG_DIR/bench_step_$1.log" 2>/dev/null | head -n 1 | sed 's/^RESULT //'; }
echo "| 7B QLoRA step (NF4), seq 2048 | $(step_line nf4) |"
echo "| 7B LoRA step (bf16), seq 2048 | $(step_line bf16) |"
dec_line() { grep -E "^RESULT decode model=7b quant=$1 " "$LOG_DIR/bench_decode_$1.log" 2>/dev/null | head -n 1 | sed 's/^RESULT decode //'; }
echo "| 7B decode, NF4 + LoRA r=64 unmerged | $(dec_line nf4) |"
echo "| 7B decode, bf16 + LoRA merged | $(dec_line bf16) |"
for w in 8 4; do
    [ -f "$LOG_DIR/profile_nf4_w$w.log" ] && echo "| profile, attention $w warps | $(grep -E '^RESULT model' "$LOG_DIR/profile_nf4_w$w.log" | sed 's/^RESULT //') |"
done
if [ -n "${BEFORE:-}" ]; then
    for q in nf4 bf16; do
        echo "| step $q: now / before      | $(rates "$LOG_DIR/bench_step_$q.log") / $(rates "$LOG_DIR/before_step_$q.log") |"
        echo "| decode $q: now / before    | $(rates "$LOG_DIR/bench_decode_$q.log") / $(rates "$LOG_DIR/before_decode_$q.log") |"
    done
    echo "| GPU demo vs before         | $train_before |"
fi
echo "| train demo (GPU)           | $train_demo |"
echo "| train resume (GPU)         | $train_resume |"
echo "| train LIMA, random 7B NF4  | $train_lima |"
echo "| compute-sanitizer          | $san |"
[ "$test_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$step_rc" -eq 0 ]
