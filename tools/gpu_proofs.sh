#!/usr/bin/env bash
# tools/gpu_proofs.sh — the speed and memory-plan proof runs of the performance issue, on a GPU
# machine, after tools/pack_device.sh (binaries in .device/now, LIMA data files in .device/lima):
#   bash tools/gpu_proofs.sh OUT_DIR [tests] [bench] [train] [caps] [kernels]   (none named: the first four)
# 1. the GPU test suite; 2. bench_step, 10 timed steps each: 7B NF4 with the profile, 7B NF4 on two
# rows (4,096 tokens, ./train's micro-batch), 7B bf16, 7B NF4 with full recompute, 13B NF4;
# 3. ./train on real LIMA, random 7B, defaults (memory plan on), 40 steps;
# 4. the memory plan under --max-mem 22, 14 and 10 (7B QLoRA, 10 steps each) and 70B under
# --max-mem 76: each prints its plan and predicted peak; the table at the end gives the measured
# peak (largest memory in use of any step, log.csv) against the cap and the prediction;
# 5. kernels: ncu times every kernel of one step of a 2-layer 7B-shaped NF4 model alone
# (tools/kernel_times.py: time, DRAM bytes, instructions, SM busy per kernel and grid).
set -u
cd "$(dirname "$0")/.."
OUT="${1:-build/proofs}"
shift || true
parts=" ${*:-tests bench train caps} "
want() { [[ "$parts" == *" $1 "* ]]; }
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$PWD/.device/now/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" NCCL_NVLS_ENABLE=0
for b in .device/now/*; do [ -f "$b" ] && [ -x "$b" ] && cp "$b" .; done
if want tests; then
FIXTURES_DIR=.device/fixtures ./test_gpu > "$OUT/test_gpu.log" 2>&1
echo "test_gpu exit $?: $(grep -E '^\[doctest\] test cases' "$OUT/test_gpu.log")"
fi
want bench && for args in "--model 7b --quant nf4 --profile" "--model 7b --quant nf4 --rows 2" "--model 7b --quant bf16" \
    "--model 7b --quant nf4 --recompute full" "--model 13b --quant nf4"; do
    name=$(echo "$args" | tr -d ' -')
    ./bench_step --seq 2048 --rank 64 --steps 10 $args > "$OUT/step_$name.log" 2>&1
    echo "bench_step $args: $(grep -E '^RESULT model' "$OUT/step_$name.log" | sed 's/^RESULT //')"
done
lima=".device/lima/lima.bin"
run_train() {  # name, then ./train flags
    local name=$1; shift
    rm -rf "$OUT/$name"
    timeout 400 ./train -i "$lima" -m "$@" -o "$OUT/$name" --save-every 0 --eval-every 0 > "$OUT/$name.log" 2>&1
    local rc=$?
    local plan=$(grep -oE 'predicted peak [0-9.]+ GiB' "$OUT/$name.log" | grep -oE '[0-9.]+' | head -1)
    local load=$(grep -oE 'loading the model: [0-9.]+' "$OUT/$name.log" | grep -oE '[0-9.]+$')
    local stats=$(awk -F, 'NR>1 { n++; s+=$7; if ($9>m) m=$9 } END { if (n) printf "%d steps, %.0f tok/s average, in use at step ends up to %.2f GiB", n, s/n, m }' "$OUT/$name/log.csv" 2>/dev/null)
    echo "train $name (exit $rc): predicted peak ${plan:-?} GiB, measured peak (load) ${load:-?} GiB; $stats; $(grep -E 'memory plan' "$OUT/$name.log" | sed 's/train: //')"
}
want train && run_train lima7b random:7b --steps 40
want caps && {
run_train cap22 random:7b --steps 10 --max-mem 22
run_train cap14 random:7b --steps 10 --max-mem 14
run_train cap10 random:7b --steps 10 --max-mem 10
run_train cap76_70b random:70b --steps 10 --max-mem 76
}
want kernels && command -v ncu >/dev/null && {
    timeout 300 ncu --csv --page raw --print-units base --cache-control none --clock-control none \
        --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,sm__inst_executed.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed,launch__grid_size \
        ./bench_step --model layers=2,dim=4096,hidden=11008,heads=32,kv=32 --quant nf4 --seq 2048 --rank 64 --steps 1 \
        > "$OUT/ncu_step.csv" 2> "$OUT/ncu_step.err"
    echo "ncu step (exit $?):"
    python3 tools/kernel_times.py "$OUT/ncu_step.csv" | tee "$OUT/kernels.md" | head -45
}
grep -h "profile of this step" "$OUT"/lima7b.log 2>/dev/null | head -1
