// bench/bench_util.h — the start shared by the benchmarks that build a random Llama-2-shaped model
// on the GPU (bench_step.cu, bench_decode.cu): --model names the shape, and the run needs a GPU.
// Included by those .cu files; nothing to run on its own.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

#include "../cli.h"
#include "../llama2_gpu.h"

// The shape --model names (7b, 13b, 70b or layers=..,dim=..; anything else is a usage error, exit 2)
// and, in *prop, the card it runs on; without a usable GPU: one line, exit 1.
inline Config bench_setup(const char* prog, const std::string& model, cudaDeviceProp* prop) {
    Config c;
    try {
        c = llama2_preset(model);
    } catch (const InputError& e) {
        cli_usage_error(prog, std::string("--model: ") + e.what());
    }
    std::string why;
    if (!gpu_available(&why)) {
        fprintf(stderr, "%s: needs a GPU (%s)\n", prog, why.c_str());
        exit(1);
    }
    cudaCheck(cudaGetDeviceProperties(prop, 0));
    return c;
}
