// common.h — what every part of the project needs and none of it owns: the error types and check
// macros, the splitmix64 random numbers (one stream on every platform, CPU and GPU), a seeded
// shuffle, fp16/bf16 <-> fp32 on the host, and checked file I/O (atomic writes, size-checked reads,
// sha256). Implemented in common.cpp. CPU code (g++) and GPU code (nvcc) both include it; the
// CUDA-only helpers live in kernels/common.cuh.
//
// Errors: bad input throws InputError("<path>: <what is wrong>"); every main() catches it, prints
// that one line and exits 1. A broken invariant (a bug, not bad input) is an ASSERT: file:line, abort.
#pragma once

#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

// ----------------------------------------------------------------------------------------------
// errors

// Bad input (a file, a flag, a mismatch). The message is one line: "path: what is wrong".
struct InputError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

[[noreturn]] inline void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
[[noreturn]] inline void fail(const char* fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    throw InputError(msg);
}

// A program's main: runs body and turns whatever escapes it into one line on stderr and exit 1 --
// "prog: <message>" for bad input, "prog: out of memory ..." for an allocation that failed, and the
// text of any other exception. Nothing escapes as an abort or a terminate().
int run_main(const char* prog, int (*body)(int, char**), int argc, char** argv);

// Internal invariant (a bug, not bad input): print file:line and abort.
#define ASSERT(cond, hint)                                                                    \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "%s:%d: internal error: %s (%s)\n", __FILE__, __LINE__, #cond, hint); \
            abort();                                                                          \
        }                                                                                     \
    } while (0)

#ifdef __CUDACC__
#define HOST_DEVICE __host__ __device__
#else
#define HOST_DEVICE
#endif

// ----------------------------------------------------------------------------------------------
// random numbers: splitmix64, tiny and portable, so the CPU and the GPU (and every platform) draw
// the same sequence from the same seed; std:: distributions differ between standard libraries.

HOST_DEVICE inline uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

struct Rng {
    uint64_t state;
    explicit Rng(uint64_t seed) : state(seed) {}
    uint64_t next() {  // Vigna's splitmix64 stream: state advances by the golden gamma
        const uint64_t r = splitmix64(state);
        state += 0x9e3779b97f4a7c15ull;
        return r;
    }
    float uniform() { return (float)(next() >> 40) * (1.0f / 16777216.0f); }  // [0, 1), 24 bits
    float normal() {  // Box-Muller
        float u1 = ((float)(next() >> 40) + 1.0f) * (1.0f / 16777217.0f), u2 = uniform();
        return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853071795864f * u2);
    }
};

// 0 .. n-1 in a Fisher-Yates order drawn from rng: the same permutation on every machine
// (std::shuffle's differs between standard libraries). The modulo bias is (i+1)/2^64, far below
// anything measurable for the few thousand items it shuffles.
std::vector<int64_t> shuffled_indices(int64_t n, Rng& rng);

// Refuses (InputError) an allocation larger than this machine's memory before it is attempted, so
// an absurd shape or header ends in one line saying what needed how much, not in std::bad_alloc.
void check_host_bytes(const char* what, double bytes);

// ----------------------------------------------------------------------------------------------
// numbers: fp16 / bf16 <-> fp32 on the host (round to nearest even, NaN kept NaN)

inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
    return (uint16_t)(u >> 16);
}
inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, u;
    if (exp == 0) {
        if (mant == 0) {
            u = sign;
        } else {  // subnormal: renormalise
            int e = -1;
            do { e++; mant <<= 1; } while (!(mant & 0x400));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mant & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (mant << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline uint16_t f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000;
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u) return (uint16_t)(sign | 0x7e00);           // NaN
    if (absu >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);          // rounds to >= 65520: Inf
    if (absu < 0x38800000u) {                                           // below fp16's normal range
        if (absu < 0x33000000u) return (uint16_t)sign;                  // < half the smallest subnormal
        uint32_t mant = (absu & 0x7fffff) | 0x800000;
        int shift = 126 - (int)(absu >> 23);  // 14..24 so that the result is mant >> (shift)
        uint32_t r = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = absu - 0x38000000u;  // rebias exponent 127 -> 15
    r += 0xfffu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
}

// dtypes of stored tensors
enum DType : int32_t { DT_F32 = 0, DT_F16 = 1, DT_BF16 = 2 };
inline const char* dtype_name(int32_t d) {
    return d == DT_F32 ? "f32" : d == DT_F16 ? "f16" : d == DT_BF16 ? "bf16" : "unknown";
}
inline size_t dtype_size(int32_t d) { return d == DT_F32 ? 4 : 2; }
// Convert n stored elements of dtype `d` at `src` to fp32.
void convert_to_f32(float* dst, const void* src, int32_t d, size_t n);
// Convert n fp32 values to dtype `d` (round to nearest even).
void convert_from_f32(void* dst, const float* src, int32_t d, size_t n);
// Index of the first NaN or Inf among n stored values of dtype `d`, or -1 (an exponent test on the
// raw bits: fast enough to run over every weight of a model as it loads).
int64_t first_nonfinite(const void* data, int32_t d, size_t n);

// ----------------------------------------------------------------------------------------------
// files. All throw InputError naming the path.

// A file written under a temporary name and renamed over `path` only by commit(), so a crash or
// an error never leaves a half-written file where a good one was.
struct AtomicFile {
    std::string path, tmp_path;
    FILE* f = nullptr;
    explicit AtomicFile(const std::string& path);
    ~AtomicFile();  // removes the temporary file unless committed
    void write(const void* data, size_t bytes);
    void write_at(int64_t offset, const void* data, size_t bytes);  // over bytes already written
    void commit();
    AtomicFile(const AtomicFile&) = delete;
    AtomicFile& operator=(const AtomicFile&) = delete;
};

// XXH3-64 (xxHash) of a byte stream fed in pieces: the payload checksum every file the project
// writes carries in its header. ~20 GB/s, so checking a 13.5 GB model costs well under a second.
class PayloadHash {
   public:
    PayloadHash();
    ~PayloadHash();
    void update(const void* data, size_t bytes);
    uint64_t digest() const;
    PayloadHash(const PayloadHash&) = delete;
    PayloadHash& operator=(const PayloadHash&) = delete;

   private:
    void* state_;  // XXH3_state_t
};
uint64_t payload_hash(const void* data, size_t bytes);
// The checksum a project file carries in its header: the XXH3-64 of the header itself (with the
// checksum field read as zero) seeded with the payload's hash, so a change anywhere in the file,
// a header field that still looks valid included (fp16 for bf16, say), is noticed.
uint64_t file_checksum(const void* header, size_t header_bytes, size_t checksum_offset, uint64_t payload_hash);
bool all_zero(const void* data, size_t bytes);

// A file opened for reading with every read checked against its size.
struct InFile {
    std::string path;
    FILE* f = nullptr;
    int64_t size = 0;
    explicit InFile(const std::string& path);  // throws "path: cannot open (...)"
    ~InFile();
    void read(void* dst, size_t bytes, const char* what);  // throws "path: truncated while reading <what>"
    void read_at(int64_t offset, void* dst, size_t bytes, const char* what);
    InFile(const InFile&) = delete;
    InFile& operator=(const InFile&) = delete;
};

std::string read_text_file(const std::string& path);
// The lines of `text` without their '\n', numbered from 1 by index + 1 (a '\n' at the very end
// starts no further line; a '\r' before it stays).
std::vector<std::string> split_lines(const std::string& text);
bool file_exists(const std::string& path);  // anything at path (file, directory, ...)
bool is_directory(const std::string& path);
bool is_regular_file(const std::string& path);
void make_dirs(const std::string& path);    // mkdir -p
// Writes `bytes` to `path` through an AtomicFile (temporary name, then rename).
void write_file_atomic(const std::string& path, const std::string& bytes);
// The names in directory `dir` (not "." or ".."), sorted; throws InputError if it cannot be read.
std::vector<std::string> list_directory(const std::string& dir);
// Removes a directory that holds only plain files (what the tools create), then the directory;
// quietly does nothing if it is not there. Used to clean up a half-written output directory.
void remove_flat_directory(const std::string& dir);
// The absolute, symlink-free path `path` names, whether or not it exists yet: the longest prefix
// that exists goes through realpath(3), the rest is appended with "." and ".." folded, so two
// spellings of one file (a symlink, "./x", "d/../x") compare equal.
std::string resolved_path(const std::string& path);
void sha256_file(const std::string& path, uint8_t out[32]);

// The one output-path guard every tool runs before any work starts: an output that resolves to an
// input, or to another output, is refused, whatever its spelling (../, //, symbolic or hard links:
// existing files are compared by device and inode, others by their resolved path); and an output
// that exists but is the wrong kind (a directory where a file is written, or the reverse) is too.
// `what` names the flag or role in the message ("-o", "--val-out", "checkpoint file").
struct IoPaths {
    struct Entry {
        std::string what, path;
        bool dir;
    };
    std::vector<Entry> inputs, outputs;
    void input(const std::string& what, const std::string& path) { inputs.push_back({what, path, false}); }
    void output_file(const std::string& what, const std::string& path) { outputs.push_back({what, path, false}); }
    void output_dir(const std::string& what, const std::string& path) { outputs.push_back({what, path, true}); }
    void check() const;  // throws InputError "path: ..." naming both sides
};
std::string hex_digest(const uint8_t d[32]);
bool digest_is_zero(const uint8_t d[32]);
