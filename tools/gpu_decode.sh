#!/usr/bin/env bash
# tools/gpu_decode.sh — the decoder issue's runs on a GPU machine, after
# `bash tools/pack_device.sh test_gpu bench_decode export_hf train`:
#   bash tools/gpu_decode.sh OUT_DIR [sanitize|memcheck|profile|timeline]
# 1. the decode tests (GPU decoder against the CPU decoder; greedy on the trained demo model);
# 2. bench_decode, 7B: NF4 + LoRA r=64 unmerged at a 128-token prompt, a 2,048-token prompt
#    (prefill) and a 4,000-token prompt (long context); batches of 8 and 16; bf16 merged; 3. with `sanitize`,
#    compute-sanitizer memcheck and racecheck over the decode tests (`memcheck`: memcheck alone); with `profile`, ncu's occupancy,
#    warp-stall and memory sections for the fused mat-vec launches of one NF4 decode step
#    (ncu.txt); with `timeline`, every kernel of one decode step timed alone by ncu, summed by
#    kernel (tools/kernel_times.py). A table ends the output.
set -u
cd "$(dirname "$0")/.."
OUT="${1:-build/decode}"
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$PWD/.device/now/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for b in .device/now/*; do [ -f "$b" ] && [ -x "$b" ] && cp "$b" .; done
FIXTURES_DIR=.device/fixtures ./test_gpu -tc="decode*" -s > "$OUT/test_decode.log" 2>&1
echo "decode tests exit $?: $(grep -E '^\[doctest\] test cases' "$OUT/test_decode.log")"
grep -E "logits rel err|greedy" "$OUT/test_decode.log" | grep -v CHECK | sed 's/^.*MESSAGE: //' | head -20
if { [ "${2:-}" = sanitize ] || [ "${2:-}" = memcheck ]; } && command -v compute-sanitizer >/dev/null; then
    tools="memcheck racecheck"; [ "${2:-}" = memcheck ] && tools=memcheck
    for tool in $tools; do
        limit=250; [ $tool = racecheck ] && limit=900  # racecheck of the batched case alone took > 480 s
        [ "${2:-}" = memcheck ] && limit=200
        FIXTURES_DIR=.device/fixtures timeout $limit compute-sanitizer --tool $tool --error-exitcode 9 ./test_gpu -tc="decode: the GPU decoder equals*,decode: batched*" > "$OUT/$tool.log" 2>&1
        echo "compute-sanitizer $tool exit $?: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/$tool.log" | tail -1)"
    done
fi
if [ "${2:-}" = profile ] && command -v ncu >/dev/null; then
    timeout 300 ncu --kernel-name regex:matvec_mma --launch-skip 400 --launch-count 4 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        --section MemoryWorkloadAnalysis_Chart --metrics l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,dram__bytes_read.sum \
        ./bench_decode --model 7b --new 32 > "$OUT/ncu.txt" 2>&1
    echo "ncu exit $?: $(grep -c 'matvec_mma' "$OUT/ncu.txt") kernel reports in ncu.txt"
    timeout 300 ncu --kernel-name regex:"matvec_mma|lora_a|attention_split" --launch-skip 700 --launch-count 8 \
        --section SpeedOfLight --section Occupancy --section WarpStateStats \
        ./bench_decode --model 7b --new 16 --batch 16 > "$OUT/ncu16.txt" 2>&1
    echo "ncu (batch 16) exit $?"
fi
if [ "${2:-}" = timeline ] && command -v ncu >/dev/null; then
    # every kernel of the last decode step timed alone (ncu serializes launches): where a step's time goes
    for args in "--quant nf4" "--quant nf4 --batch 16"; do
        name=$(echo "$args" | tr -d ' -')
        timeout 240 ncu --profile-from-start off --csv --page raw --print-units base --cache-control none --clock-control none \
            --metrics gpu__time_duration.sum,dram__bytes_read.sum ./bench_decode --model 7b --new 3 $args > "$OUT/k_$name.csv" 2> "$OUT/k_$name.err"
        echo "ncu timeline $args (exit $?):"
        python3 tools/kernel_times.py "$OUT/k_$name.csv" > "$OUT/k_$name.txt" 2>&1
        head -14 "$OUT/k_$name.txt" | sed 's/^/   /'
    done
fi
if { [ "${2:-}" = profile ] || [ "${2:-}" = timeline ]; } && command -v cuobjdump >/dev/null; then  # the fused mat-vec's instruction mix, per instance
    cuobjdump -sass bench_decode > "$OUT/sass.txt" 2>&1
    awk '/Function : .*matvec_mma_kernel/ {f=$3} /Function : / && !/matvec_mma_kernel/ {f=""} f && /\/\*[0-9a-f]+\*\// {n[f]++; for (i = 1; i <= NF; i++) if ($i ~ /^(LDS|PRMT|HMMA|LDG|STS|SHF|LOP3|IMAD|LEA|FFMA|BAR)/) { split($i, o, "."); c[f, o[1]]++ } }
         END { for (k in n) { printf "sass %s: %d instructions;", k, n[k]; for (x in c) { split(x, p, SUBSEP); if (p[1] == k) printf " %s %d", p[2], c[x] } print "" } }' "$OUT/sass.txt"
fi
for args in "--quant nf4 --prompt 128" "--quant nf4 --prompt 128 --batch 16" "--quant nf4 --prompt 128 --batch 8" "--quant nf4 --prompt 2048 --new 128" "--quant nf4 --prompt 4000 --new 128" "--quant bf16 --merge" "--quant bf16 --merge --batch 16" "--quant nf4 --rank 0"; do
    name=$(echo "$args" | tr -d ' -')
    timeout 200 ./bench_decode --model 7b $args > "$OUT/decode_$name.log" 2>&1
    echo "bench_decode $args (exit $?):"
    grep -E "prefill|decode [0-9]|bytes per token" "$OUT/decode_$name.log" | sed 's/^/   /'
done
echo "| case | prefill tok/s | decode tok/s (all sequences) | bytes/step | % of copy BW |"
grep -h '^RESULT decode' "$OUT"/decode_*.log | sed -E 's/.*quant=([a-z0-9]+) rank=([0-9]+) merge=([01]) prompt=([0-9]+) batch=([0-9]+) prefill_tok_s=([0-9]+) decode_tok_s=([0-9.]+) bytes_per_step=([0-9]+) bw_pct=([0-9.]+)/| \1 r=\2 merge=\3 prompt=\4 batch=\5 | \6 | \7 | \8 | \9 |/'
