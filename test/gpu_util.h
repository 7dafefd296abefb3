// test/gpu_util.h — helpers shared by the GPU test files (test/gpu_*.cu): a device buffer that frees
// itself, uploads and downloads, and poisoning (filling outputs with a byte pattern before a launch,
// so that anything a kernel fails to write shows up as a mismatch instead of as stale right answers).
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

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
