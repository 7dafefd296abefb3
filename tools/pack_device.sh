#!/usr/bin/env bash
# tools/pack_device.sh — packs what a run on a lent GPU machine needs into .device/ (git-ignored):
# the GPU binaries built here with `make`, stripped (a device call carries at most 64 MiB), the
# shared libraries they load that a CUDA image may lack (sentencepiece, OpenSSL's libcrypto), and a
# copy of ../shared/fixtures for the fixture tests. Then, on the device:
#   PREBUILT=.device/now FIXTURES_DIR=.device/fixtures bash tools/gpu_check.sh
# Run from anywhere: bash tools/pack_device.sh [binaries...]   (default: the GPU_TARGETS below)
set -euo pipefail
cd "$(dirname "$0")/.."
bins="${*:-test_gpu bench_quant bench_step bench_decode train sample export_hf}"
out=.device/now
rm -rf "$out"
mkdir -p "$out/lib"
for b in $bins; do
    [ -x "$b" ] || { echo "pack_device: ./$b is not built (run make first)" >&2; exit 1; }
    strip -o "$out/$b" "$b"
done
for lib in libsentencepiece.so.0 libcrypto.so.3; do
    p=$(ldconfig -p | awk -v l="$lib" '$1 == l { print $NF; exit }')
    [ -n "$p" ] && cp -L "$p" "$out/lib/"
done
if [ -d ../shared/fixtures ] && [ ! -d .device/fixtures ]; then cp -r ../shared/fixtures .device/fixtures; fi
du -sh .device/* | sed 's/^/pack_device: /'
