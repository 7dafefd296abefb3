// test/gpu_util.h — helpers shared by the GPU test files (test/gpu_*.cu): a device buffer that frees
// itself, uploads and downloads, poisoning (filling outputs with a byte pattern before a launch,
// so that anything a kernel fails to write shows up as a mismatch instead of as stale right answers),
// and the relative L2 error the GPU results are judged by.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../kernels/common.cuh"
#include "../model.h"

struct DeviceBuffer {
    void* ptr = nullptr;
    size_t bytes = 0;
    DeviceBuffer() = default;
    explicit DeviceBuffer(size_t n) : bytes(n) { cudaCheck(cudaMalloc(&ptr, n ? n : 1)); }
    ~DeviceBuffer() {
        if (ptr) cudaFree(ptr);
    }
    DeviceBuffer(DeviceBuffer&& o) noexcept : ptr(o.ptr), bytes(o.bytes) { o.ptr = nullptr; }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    template <typename T>
    T* as() const { return static_cast<T*>(ptr); }
    void poison(uint8_t byte = 0xA5) { cudaCheck(cudaMemset(ptr, byte, bytes)); }
};

inline void upload(DeviceBuffer& d, const void* src, size_t bytes) {
    cudaCheck(cudaMemcpy(d.ptr, src, bytes, cudaMemcpyHostToDevice));
}
template <typename T>
std::vector<T> download(const void* src, size_t count) {
    std::vector<T> out(count);
    cudaCheck(cudaDeviceSynchronize());
    cudaCheck(cudaMemcpy(out.data(), src, count * sizeof(T), cudaMemcpyDeviceToHost));
    return out;
}

// Index of the first byte where a and b differ, or -1.
inline int64_t first_diff(const void* a, const void* b, size_t bytes) {
    const uint8_t *p = (const uint8_t*)a, *q = (const uint8_t*)b;
    for (size_t i = 0; i < bytes; i++)
        if (p[i] != q[i]) return (int64_t)i;
    return -1;
}

// ||a - b||_2 / ||b||_2 over n values, b the reference (||a - b||_2 when b is all zero). A NaN
// anywhere (a poisoned or unwritten output) gives INFINITY, so it never passes a tolerance.
inline double rel_l2(const float* a, const float* b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = (double)a[i] - (double)b[i];
        if (!(d == d)) return INFINITY;
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}
