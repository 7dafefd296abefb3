// common.cpp — the shared helpers declared in common.h: the seeded shuffle, dtype conversion of
// arrays, and checked file I/O (atomic writes, size-checked reads, sha256). No GPU code, no globals.
#include "common.h"

#define XXH_INLINE_ALL  // header-only xxHash (Debian's libxxhash-dev): nothing to link
#include <openssl/evp.h>
#include <dirent.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <climits>
#include <cerrno>
#include <cstdlib>

int run_main(const char* prog, int (*body)(int, char**), int argc, char** argv) {
    try {
        return body(argc, argv);
    } catch (const InputError& e) {
        fprintf(stderr, "%s: %s\n", prog, e.what());
    } catch (const std::bad_alloc&) {
        fprintf(stderr, "%s: out of host memory (the model, data or settings need more than this machine has)\n", prog);
    } catch (const std::exception& e) {
        fprintf(stderr, "%s: %s\n", prog, e.what());
    }
    return 1;
}

void check_host_bytes(const char* what, double bytes) {
    const double ram = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    if (ram > 0 && bytes > ram)
        fail("%s need %.1f GiB of host memory, more than this machine's %.1f GiB", what, bytes / 1073741824.0,
             ram / 1073741824.0);
}

// ----------------------------------------------------------------------------------------------
// shuffle

std::vector<int64_t> shuffled_indices(int64_t n, Rng& rng) {
    std::vector<int64_t> order((size_t)n);
    for (int64_t i = 0; i < n; i++) order[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        const int64_t j = (int64_t)(rng.next() % (uint64_t)(i + 1));
        std::swap(order[i], order[j]);
    }
    return order;
}

// ----------------------------------------------------------------------------------------------
// dtypes

void convert_to_f32(float* dst, const void* src, int32_t d, size_t n) {
    if (d == DT_F32) {
        if (n) memcpy(dst, src, n * 4);  // n = 0 may come with null pointers (an empty vector's data())
    } else if (d == DT_F16) {
        const uint16_t* s = (const uint16_t*)src;
        for (size_t i = 0; i < n; i++) dst[i] = f16_to_f32(s[i]);
    } else if (d == DT_BF16) {
        const uint16_t* s = (const uint16_t*)src;
        for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32(s[i]);
    } else {
        ASSERT(false, "unknown dtype");
    }
}

void convert_from_f32(void* dst, const float* src, int32_t d, size_t n) {
    if (d == DT_F32) {
        if (n) memcpy(dst, src, n * 4);
    } else if (d == DT_F16) {
        uint16_t* o = (uint16_t*)dst;
        for (size_t i = 0; i < n; i++) o[i] = f32_to_f16(src[i]);
    } else if (d == DT_BF16) {
        uint16_t* o = (uint16_t*)dst;
        for (size_t i = 0; i < n; i++) o[i] = f32_to_bf16(src[i]);
    } else {
        ASSERT(false, "unknown dtype");
    }
}

int64_t first_nonfinite(const void* data, int32_t d, size_t n) {
    // all exponent bits set: Inf or NaN. The loop only ORs flags (vectorizes); the scan for the
    // index runs only when something was found.
    const uint32_t mask = d == DT_F32 ? 0x7f800000u : d == DT_F16 ? 0x7c00u : 0x7f80u;
    bool bad = false;
    if (d == DT_F32) {
        const uint32_t* p = (const uint32_t*)data;
        for (size_t i = 0; i < n; i++) bad |= (p[i] & mask) == mask;
    } else {
        const uint16_t* p = (const uint16_t*)data;
        for (size_t i = 0; i < n; i++) bad |= (p[i] & mask) == mask;
    }
    if (!bad) return -1;
    for (size_t i = 0; i < n; i++) {
        const uint32_t u = d == DT_F32 ? ((const uint32_t*)data)[i] : ((const uint16_t*)data)[i];
        if ((u & mask) == mask) return (int64_t)i;
    }
    return -1;
}

// ----------------------------------------------------------------------------------------------
// checksums

PayloadHash::PayloadHash() : state_(XXH3_createState()) {
    ASSERT(state_ && XXH3_64bits_reset((XXH3_state_t*)state_) == XXH_OK, "xxhash state");
}
PayloadHash::~PayloadHash() { XXH3_freeState((XXH3_state_t*)state_); }
void PayloadHash::update(const void* data, size_t bytes) {
    if (bytes) XXH3_64bits_update((XXH3_state_t*)state_, data, bytes);
}
uint64_t PayloadHash::digest() const { return XXH3_64bits_digest((const XXH3_state_t*)state_); }
uint64_t payload_hash(const void* data, size_t bytes) { return XXH3_64bits(data, bytes); }

uint64_t file_checksum(const void* header, size_t header_bytes, size_t checksum_offset, uint64_t payload_hash) {
    std::vector<uint8_t> h((const uint8_t*)header, (const uint8_t*)header + header_bytes);
    memset(h.data() + checksum_offset, 0, 8);
    return XXH3_64bits_withSeed(h.data(), h.size(), payload_hash);
}

bool all_zero(const void* data, size_t bytes) {
    const uint8_t* p = (const uint8_t*)data;
    for (size_t i = 0; i < bytes; i++)
        if (p[i]) return false;
    return true;
}

// ----------------------------------------------------------------------------------------------
// files

AtomicFile::AtomicFile(const std::string& p) : path(p) {
    tmp_path = path + ".tmp." + std::to_string(getpid());
    f = fopen(tmp_path.c_str(), "wb");
    if (!f) fail("%s: cannot create (%s)", path.c_str(), strerror(errno));
}

AtomicFile::~AtomicFile() {
    if (f) {
        fclose(f);
        remove(tmp_path.c_str());
    }
}

void AtomicFile::write(const void* data, size_t bytes) {
    if (bytes && fwrite(data, 1, bytes, f) != bytes) fail("%s: write failed (%s)", path.c_str(), strerror(errno));
}

void AtomicFile::write_at(int64_t offset, const void* data, size_t bytes) {
    const off_t end = ftello(f);
    if (end < 0 || offset < 0 || offset + (int64_t)bytes > (int64_t)end || fseeko(f, offset, SEEK_SET) != 0)
        fail("%s: write failed (seek)", path.c_str());
    write(data, bytes);
    if (fseeko(f, end, SEEK_SET) != 0) fail("%s: write failed (seek)", path.c_str());
}

void AtomicFile::commit() {
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) fail("%s: write failed (%s)", path.c_str(), strerror(errno));
    int rc = fclose(f);
    f = nullptr;
    if (rc != 0) {
        remove(tmp_path.c_str());
        fail("%s: write failed (%s)", path.c_str(), strerror(errno));
    }
    if (rename(tmp_path.c_str(), path.c_str()) != 0) {
        int e = errno;
        remove(tmp_path.c_str());
        fail("%s: cannot rename into place (%s)", path.c_str(), strerror(e));
    }
}

InFile::InFile(const std::string& p) : path(p) {
    struct stat st;
    if (stat(p.c_str(), &st) != 0) fail("%s: cannot open (%s)", p.c_str(), strerror(errno));
    if (S_ISDIR(st.st_mode)) fail("%s: is a directory, expected a file", p.c_str());
    f = fopen(p.c_str(), "rb");
    if (!f) fail("%s: cannot open (%s)", p.c_str(), strerror(errno));
    size = (int64_t)st.st_size;
}

InFile::~InFile() {
    if (f) fclose(f);
}

void InFile::read(void* dst, size_t bytes, const char* what) {
    if (bytes && fread(dst, 1, bytes, f) != bytes) fail("%s: truncated file (while reading %s)", path.c_str(), what);
}

void InFile::read_at(int64_t offset, void* dst, size_t bytes, const char* what) {
    if (offset < 0 || offset + (int64_t)bytes > size) fail("%s: truncated file (while reading %s)", path.c_str(), what);
    if (fseeko(f, offset, SEEK_SET) != 0) fail("%s: seek failed (%s)", path.c_str(), strerror(errno));
    read(dst, bytes, what);
}

std::string read_text_file(const std::string& path) {
    InFile in(path);
    std::string s((size_t)in.size, '\0');
    in.read(&s[0], s.size(), "text");
    return s;
}

std::vector<std::string> split_lines(const std::string& text) {
    std::vector<std::string> lines;
    for (size_t pos = 0; pos < text.size();) {
        size_t end = text.find('\n', pos);
        if (end == std::string::npos) end = text.size();
        lines.push_back(text.substr(pos, end - pos));
        pos = end + 1;
    }
    return lines;
}

void sha256_file(const std::string& path, uint8_t out[32]) {
    InFile in(path);
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    ASSERT(ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) == 1, "openssl sha256 init");
    std::vector<uint8_t> buf(1 << 20);
    for (int64_t done = 0; done < in.size;) {
        size_t n = (size_t)std::min<int64_t>((int64_t)buf.size(), in.size - done);
        in.read(buf.data(), n, "contents");
        EVP_DigestUpdate(ctx, buf.data(), n);
        done += (int64_t)n;
    }
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx, out, &len);
    EVP_MD_CTX_free(ctx);
    ASSERT(len == 32, "sha256 is 32 bytes");
}

std::string hex_digest(const uint8_t d[32]) {
    static const char* hx = "0123456789abcdef";
    std::string s;
    for (int i = 0; i < 32; i++) {
        s += hx[d[i] >> 4];
        s += hx[d[i] & 15];
    }
    return s;
}

bool digest_is_zero(const uint8_t d[32]) {
    for (int i = 0; i < 32; i++)
        if (d[i]) return false;
    return true;
}

bool file_exists(const std::string& p) {
    struct stat st;
    return stat(p.c_str(), &st) == 0;
}

bool is_directory(const std::string& p) {
    struct stat st;
    return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_regular_file(const std::string& p) {
    struct stat st;
    return stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// ----------------------------------------------------------------------------------------------
// the output-path guard

namespace {
struct Resolved {
    bool exists = false;
    dev_t dev = 0;
    ino_t ino = 0;
    std::string path;  // absolute, no symbolic links, no . or ..
};

// realpath() of the deepest existing ancestor, then the rest of the path as written (it does not
// exist yet, so no link can hide in it); a trailing '/' and '.' components are dropped
Resolved resolve(const std::string& p) {
    Resolved r;
    struct stat st;
    if (stat(p.c_str(), &st) == 0) {
        r.exists = true;
        r.dev = st.st_dev;
        r.ino = st.st_ino;
    }
    std::string head = p.empty() ? "." : p, tail;
    while (true) {
        char buf[PATH_MAX];
        if (realpath(head.c_str(), buf)) {
            r.path = buf;
            if (!tail.empty()) r.path += (r.path == "/" ? "" : "/") + tail;
            return r;
        }
        const size_t slash = head.find_last_of('/');
        const std::string name = slash == std::string::npos ? head : head.substr(slash + 1);
        if (name != "." && !name.empty()) tail = tail.empty() ? name : name + "/" + tail;
        if (slash == std::string::npos) head = ".";
        else head = slash == 0 ? "/" : head.substr(0, slash);
    }
}

bool same_file(const Resolved& a, const Resolved& b) {
    return (a.exists && b.exists) ? (a.dev == b.dev && a.ino == b.ino) : a.path == b.path;
}
}  // namespace

void IoPaths::check() const {
    std::vector<Resolved> in, out;
    for (const Entry& e : inputs) in.push_back(resolve(e.path));
    for (const Entry& e : outputs) out.push_back(resolve(e.path));
    for (size_t i = 0; i < outputs.size(); i++) {
        const Entry& o = outputs[i];
        if (out[i].exists) {
            if (o.dir && !is_directory(o.path))
                fail("%s: %s names an existing file, but a directory is written there", o.path.c_str(), o.what.c_str());
            if (!o.dir && is_directory(o.path))
                fail("%s: %s names a directory, but a file is written there", o.path.c_str(), o.what.c_str());
        }
        for (size_t j = 0; j < inputs.size(); j++)
            if (same_file(out[i], in[j]))
                fail("%s: %s would overwrite an input (%s %s); choose another output", o.path.c_str(), o.what.c_str(),
                     inputs[j].what.c_str(), inputs[j].path.c_str());
        for (size_t j = 0; j < i; j++)
            if (same_file(out[i], out[j]))
                fail("%s: %s and %s are the same file", o.path.c_str(), o.what.c_str(), outputs[j].what.c_str());
    }
}

void make_dirs(const std::string& path) {
    for (size_t i = 1; i <= path.size(); i++) {
        if (i < path.size() && path[i] != '/') continue;
        const std::string part = path.substr(0, i);
        if (mkdir(part.c_str(), 0755) != 0 && errno != EEXIST) fail("%s: cannot create directory (%s)", part.c_str(), strerror(errno));
    }
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
    AtomicFile out(path);
    out.write(bytes.data(), bytes.size());
    out.commit();
}

std::vector<std::string> list_directory(const std::string& dir) {
    DIR* d = opendir(dir.c_str());
    if (!d) fail("%s: cannot read directory (%s)", dir.c_str(), strerror(errno));
    std::vector<std::string> names;
    while (dirent* e = readdir(d)) {
        const std::string n = e->d_name;
        if (n != "." && n != "..") names.push_back(n);
    }
    closedir(d);
    std::sort(names.begin(), names.end());
    return names;
}

void remove_flat_directory(const std::string& dir) {
    DIR* d = opendir(dir.c_str());
    if (!d) return;
    while (dirent* e = readdir(d)) {
        const std::string n = e->d_name;
        if (n != "." && n != "..") unlink((dir + "/" + n).c_str());
    }
    closedir(d);
    rmdir(dir.c_str());
}

// "/a//b/c" -> {"a", "b", "c"}
static std::vector<std::string> path_components(const std::string& p) {
    std::vector<std::string> parts;
    for (size_t pos = 0; pos <= p.size();) {
        size_t end = p.find('/', pos);
        if (end == std::string::npos) end = p.size();
        if (end > pos) parts.push_back(p.substr(pos, end - pos));
        pos = end + 1;
    }
    return parts;
}

std::string resolved_path(const std::string& path) {
    std::string full = path;  // absolute: relative paths start at the working directory
    if (full.empty() || full[0] != '/') {
        char cwd[PATH_MAX];
        if (!getcwd(cwd, sizeof(cwd))) fail("%s: cannot resolve (working directory: %s)", path.c_str(), strerror(errno));
        full = std::string(cwd) + "/" + full;
    }
    const std::vector<std::string> parts = path_components(full);
    // the longest existing prefix through realpath, the rest folded lexically
    std::vector<std::string> out;
    size_t k = parts.size();
    for (; k > 0; k--) {
        std::string prefix;
        for (size_t i = 0; i < k; i++) prefix += "/" + parts[i];
        char buf[PATH_MAX];
        if (realpath(prefix.c_str(), buf)) {
            out = path_components(buf);
            break;
        }
    }
    for (size_t i = k; i < parts.size(); i++) {
        if (parts[i] == "..") {
            if (!out.empty()) out.pop_back();
        } else if (parts[i] != ".") {
            out.push_back(parts[i]);
        }
    }
    std::string r;
    for (const std::string& p : out) r += "/" + p;
    return r.empty() ? "/" : r;
}
