// test/test_gpu.cu — the doctest main of the GPU suite (needs an NVIDIA GPU; CI has none, so it runs
// on a GPU machine through tools/gpu_check.sh). The cases live in test/gpu_*.cu, one file per area.
// Run: make test-gpu   (or ./test_gpu -tc="nf4*" for a subset; FIXTURES_DIR overrides ../shared/fixtures)
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "../kernels/common.cuh"
#include "../model.h"

int main(int argc, char** argv) {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
        fprintf(stderr, "test_gpu: no usable CUDA device (%s); the GPU suite needs an NVIDIA GPU\n",
                err != cudaSuccess ? cudaGetErrorString(err) : "none found");
        return 1;
    }
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    printf("test_gpu on %s (sm_%d%d, %d SMs, %.0f GiB)\n", prop.name, prop.major, prop.minor,
           prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0);
    doctest::Context context(argc, argv);
    return context.run();
}
