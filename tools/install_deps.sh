#!/usr/bin/env bash
# tools/install_deps.sh — installs the Debian packages the build needs (idempotent; uses sudo when
# not root). The CUDA toolkit (nvcc, cuBLASLt, NCCL) is expected in /usr/local/cuda, as NVIDIA's
# installer puts it; it is not in Debian's main archive.
# Run: tools/install_deps.sh
set -euo pipefail
# libxxhash-dev: the files' checksums (header-only use); clang-14 + libfuzzer-14-dev: the fuzz targets
pkgs="build-essential pkg-config libsentencepiece-dev doctest-dev nlohmann-json3-dev libssl-dev libxxhash-dev gnuplot-nox clang-14 libfuzzer-14-dev"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    echo "installing:$missing"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing
fi
if ! command -v nvcc >/dev/null 2>&1 && [ ! -x /usr/local/cuda/bin/nvcc ]; then
    echo "note: nvcc not found; install the CUDA toolkit for the GPU binaries, or build with 'make NO_CUDA=1'" >&2
fi
echo "dependencies ok"
