// kernels/device.cu — questions the host asks about the card: is a GPU usable at all, its dense
// bf16 peak (for MFU), the device memory in use. No kernels; nothing here runs on the GPU.
#include <cstring>
#include <string>

#include "ops.h"

bool gpu_available(std::string* why) {
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess || n == 0) {
        if (why) *why = err != cudaSuccess ? cudaGetErrorString(err) : "no CUDA device";
        cudaGetLastError();  // clear the sticky error so the CPU path runs clean
        return false;
    }
    return true;
}

double gpu_peak_bf16_flops() {
    cudaDeviceProp p;
    int dev = 0;
    cudaCheck(cudaGetDevice(&dev));
    cudaCheck(cudaGetDeviceProperties(&p, dev));
    // dense bf16 tensor-core peaks from the vendor's datasheets (SXM parts)
    if (strstr(p.name, "H100") || strstr(p.name, "H200")) return 989.4e12;
    if (strstr(p.name, "A100")) return 312e12;
    return 0.0;
}

double gpu_memory_in_use_gib() {
    size_t free_b = 0, total_b = 0;
    cudaCheck(cudaMemGetInfo(&free_b, &total_b));
    return (double)(total_b - free_b) / 1073741824.0;
}
