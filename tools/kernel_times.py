#!/usr/bin/env python3
# tools/kernel_times.py — per-kernel GPU time of the last decode or training step in an ncu CSV, to
# see where a step's time goes. ncu times each kernel alone, with its own launch and drain, so the sum is not
# the step time (a few microseconds a launch more for the tiny ones: it came out above the step
# time bench_decode measures) but it ranks the kernels and gives each its bandwidth.
# Run (on a GPU machine: tools/gpu_decode.sh timeline; tools/gpu_proofs.sh kernels for a training step):
#   ncu --csv --page raw --print-units base --metrics gpu__time_duration.sum,dram__bytes_read.sum ./bench_decode ... > k.csv
#   python3 tools/kernel_times.py k.csv
# The last step is every launch after the last embedding_forward_kernel (the first kernel of a decode
# step and of a training step's forward); DRAM write, instructions, SM busy and grid size are used when
# the CSV has them (dram__bytes_write.sum, sm__inst_executed.sum, sm__throughput..., launch__grid_size);
# bench_decode brackets its last step with cudaProfilerStart/Stop, so `ncu --profile-from-start off`
# sees that step alone.
import csv
import sys


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: kernel_times.py NCU_RAW.csv")
    with open(sys.argv[1], newline="") as f:
        lines = [l for l in f if l.startswith('"')]  # ncu's own messages are not quoted
    rows = [r for r in csv.DictReader(lines) if r.get("ID", "").isdigit()]  # drops the units row
    if not rows:
        sys.exit("kernel_times: no kernel rows in " + sys.argv[1])
    starts = [i for i, r in enumerate(rows) if "embedding_forward_kernel" in r["Kernel Name"]]
    if not starts:
        sys.exit("kernel_times: no embedding_forward_kernel launch in " + sys.argv[1])
    step = rows[starts[-1]:]
    def num(r, key):
        return float((r.get(key) or "0").replace(",", "") or 0)

    # kernels are told apart by name and grid (cuBLASLt runs the same kernel for frozen and LoRA shapes)
    by = {}
    total = 0.0
    for r in step:
        name = r["Kernel Name"].split("(")[0]
        if name.startswith("void "):
            name = name[5:]
        if r.get("launch__grid_size"):
            name += " grid " + r["launch__grid_size"].replace(",", "")
        ns = num(r, "gpu__time_duration.sum")
        e = by.setdefault(name, [0, 0.0, 0.0, 0.0, 0.0])
        e[0] += 1
        e[1] += ns
        e[2] += num(r, "dram__bytes_read.sum") + num(r, "dram__bytes_write.sum")
        e[3] += num(r, "sm__inst_executed.sum")
        e[4] += num(r, "sm__throughput.avg.pct_of_peak_sustained_elapsed") * ns
        total += ns
    print(f"last step: {len(step)} launches, {total / 1e3:.1f} us of kernel time (ncu, each alone)")
    print("| kernel | launches | us | share | us/launch | DRAM MB (read, + write if measured) | GB/s | instructions (M) | SM busy |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, (n, ns, nbytes, inst, sm) in sorted(by.items(), key=lambda kv: -kv[1][1]):
        print(f"| {name[:80]} | {n} | {ns / 1e3:.1f} | {100 * ns / total:.1f}% | {ns / 1e3 / n:.2f} | {nbytes / 1e6:.1f} | "
              f"{nbytes / ns:.0f} | {inst / 1e6:.1f} | {sm / ns:.0f}% |")


main()
