// fuzz/fuzz_util.h — the harness every libFuzzer target in fuzz/ shares (fuzz_*.cpp), and the
// pieces the seed generator (make_corpus.cpp) must agree on with the targets:
//   - a per-process scratch directory (the readers take paths, so each input becomes a file there;
//     the files of one execution are removed after it, the directory at exit);
//   - fuzz_one(): the size cap (inputs over FUZZ_MAX_INPUT are skipped, so one execution stays
//     fast), and the verdict: InputError is the expected outcome for a bad file; any other exception
//     is a finding (printed, then abort(), so libFuzzer records the input as a crash);
//   - FUZZ_EXPECT_VALID=1 in the environment turns a rejected input into a finding too: `make
//     fuzz-smoke` runs the valid_* seeds that way, so a seed corpus left stale by a format change
//     (every seed rejected at the magic/version check, fuzzing nothing deeper) fails loudly;
//   - the tiny model shape the seeds are made for and fuzz_peft reads against;
//   - the framing of a PEFT directory (two files) in one input.
// Build and run: see fuzz/README.md (make fuzz, make fuzz-smoke).
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <typeinfo>
#include <vector>

#include "../model.h"

constexpr size_t FUZZ_MAX_INPUT = 1 << 20;  // 1 MiB

struct FuzzScratch {
    std::string dir;
    std::vector<std::string> files;    // written during the current execution
    std::vector<std::string> subdirs;  // made once, removed at exit
    std::string last_error;            // the InputError of the current execution, if any
};

inline FuzzScratch& fuzz_scratch() {
    static FuzzScratch s;
    return s;
}

inline void fuzz_remove_files() {
    FuzzScratch& s = fuzz_scratch();
    for (const std::string& f : s.files) unlink(f.c_str());
    s.files.clear();
}

inline void fuzz_remove_scratch() {
    FuzzScratch& s = fuzz_scratch();
    fuzz_remove_files();
    for (auto it = s.subdirs.rbegin(); it != s.subdirs.rend(); ++it) rmdir(it->c_str());
    if (!s.dir.empty()) rmdir(s.dir.c_str());
}

// The per-process scratch directory under $TMPDIR (default /tmp), made on first use.
inline const std::string& fuzz_dir() {
    FuzzScratch& s = fuzz_scratch();
    if (s.dir.empty()) {
        const char* t = getenv("TMPDIR");
        std::string tmpl = std::string(t && *t ? t : "/tmp") + "/llama2-fuzz.XXXXXX";
        if (!mkdtemp(&tmpl[0])) {
            perror("fuzz: mkdtemp");
            abort();
        }
        s.dir = tmpl;
        atexit(fuzz_remove_scratch);
    }
    return s.dir;
}

// A subdirectory of the scratch directory (for readers that take a directory), made once.
inline std::string fuzz_subdir(const std::string& name) {
    const std::string p = fuzz_dir() + "/" + name;
    FuzzScratch& s = fuzz_scratch();
    for (const std::string& d : s.subdirs)
        if (d == p) return p;
    if (mkdir(p.c_str(), 0700) != 0) {
        perror("fuzz: mkdir");
        abort();
    }
    s.subdirs.push_back(p);
    return p;
}

// Writes `size` bytes to `path` (replacing it); it is removed when the execution ends.
inline void fuzz_write_at(const std::string& path, const void* data, size_t size) {
    FILE* f = fopen(path.c_str(), "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
        perror(("fuzz: writing " + path).c_str());
        abort();
    }
    fuzz_scratch().files.push_back(path);
}

// The same for a file named `name` in the scratch directory; returns its path.
inline std::string fuzz_write(const std::string& name, const void* data, size_t size) {
    const std::string p = fuzz_dir() + "/" + name;
    fuzz_write_at(p, data, size);
    return p;
}

// Reports `what`, removes the scratch directory (abort() skips atexit), and aborts, so that
// libFuzzer records the input as a crash.
[[noreturn]] inline void fuzz_abort(const std::string& what) {
    fprintf(stderr, "fuzz: %s\n", what.c_str());
    fuzz_remove_scratch();
    abort();
}

// Runs one reader call. Returns true if it accepted the input, false if it threw InputError (the
// expected outcome for a bad file). Anything else thrown is a finding: reported, then abort().
template <class F>
bool fuzz_accepts(F&& reader_call) {
    try {
        reader_call();
        return true;
    } catch (const InputError& e) {
        fuzz_scratch().last_error = e.what();
        return false;
    } catch (const std::exception& e) {
        fuzz_abort("FINDING: uncaught " + std::string(typeid(e).name()) + ": " + e.what());
    } catch (...) {
        fuzz_abort("FINDING: uncaught exception of a non-std type");
    }
}

// One libFuzzer execution: `body(data, size)` writes the input's file(s) and runs the reader(s)
// through fuzz_accepts, returning whether any accepted it. Returns libFuzzer's verdict: -1 (do not
// add to the corpus) for an input over the size cap, 0 otherwise.
template <class F>
int fuzz_one(const uint8_t* data, size_t size, F&& body) {
    if (size > FUZZ_MAX_INPUT) return -1;
    fuzz_scratch().last_error.clear();
    const bool accepted = body(data, size);
    fuzz_remove_files();
    static const bool expect_valid = getenv("FUZZ_EXPECT_VALID") && *getenv("FUZZ_EXPECT_VALID") == '1';
    if (expect_valid && !accepted) {
        fuzz_abort("FUZZ_EXPECT_VALID=1 but the input was rejected: " + fuzz_scratch().last_error);
    }
    return 0;
}

// libFuzzer's entry point: every input goes through fuzz_one with `body`, a function
// (const uint8_t* data, size_t size) -> bool that writes the file(s) and calls the reader(s).
#define FUZZ_TARGET(body)                                                        \
    extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) { \
        return fuzz_one(data, size, body);                                      \
    }

// The model shape every seed is made for, and the base fuzz_peft reads adapters against: two
// layers, grouped-query attention (2 heads, 1 kv head), head_dim 8, vocabulary 32.
inline Config fuzz_tiny_config() { return llama2_config(2, 16, 32, 2, 1, 32); }

// A PEFT adapter directory in one input: a 4-byte little-endian length n, n bytes of
// adapter_config.json, then adapter_model.safetensors (the rest). A length beyond the input, or
// an input shorter than 4 bytes, gives a config.json of whatever there is and an empty
// safetensors file.
struct PeftInput {
    std::string config_json, safetensors;
};

inline PeftInput split_peft_input(const uint8_t* data, size_t size) {
    if (size < 4) return {std::string((const char*)data, size), ""};
    const size_t n = (size_t)data[0] | (size_t)data[1] << 8 | (size_t)data[2] << 16 | (size_t)data[3] << 24;
    const size_t cfg = n < size - 4 ? n : size - 4;
    return {std::string((const char*)data + 4, cfg), std::string((const char*)data + 4 + cfg, size - 4 - cfg)};
}

inline std::string join_peft_input(const PeftInput& p) {
    const uint32_t n = (uint32_t)p.config_json.size();
    std::string out;
    for (int i = 0; i < 4; i++) out += (char)(n >> (8 * i) & 0xff);
    return out + p.config_json + p.safetensors;
}
