// test/test_util.h — helpers shared by the test files (test/cpu_*.cpp, and test/gpu_*.cu): where
// the fixtures are, a scratch directory per test, whole-file reads and writes, running a built tool
// as a subprocess and capturing its exit code and output, the message of an expected InputError,
// and error metrics.
#pragma once

#include <dirent.h>
#include <doctest/doctest.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "../model.h"

// $FIXTURES_DIR, default ../shared/fixtures (tests run from the repo root)
inline std::string fixtures_dir() {
    const char* e = getenv("FIXTURES_DIR");
    return e && *e ? e : "../shared/fixtures";
}
inline std::string shared_dir() { return "../shared"; }

inline bool path_exists(const std::string& p) {
    struct stat st;
    return stat(p.c_str(), &st) == 0;
}

// Sorted entries of `dir` whose names start with `prefix` and end with `suffix`.
inline std::vector<std::string> list_dir(const std::string& dir, const std::string& prefix, const std::string& suffix = "") {
    std::vector<std::string> out;
    DIR* d = opendir(dir.c_str());
    if (!d) return out;
    while (dirent* e = readdir(d)) {
        std::string n = e->d_name;
        if (n.size() >= prefix.size() + suffix.size() && n.compare(0, prefix.size(), prefix) == 0 &&
            n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0)
            out.push_back(n);
    }
    closedir(d);
    std::sort(out.begin(), out.end());
    return out;
}

// Every tiny_* fixture directory under fixtures_dir(), as a path. A suite with no fixture would
// pass vacuously: refuse.
inline std::vector<std::string> tiny_fixtures() {
    std::vector<std::string> dirs;
    for (const std::string& n : list_dir(fixtures_dir(), "tiny_")) {
        struct stat st;
        std::string p = fixtures_dir() + "/" + n;
        if (stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) dirs.push_back(p);
    }
    REQUIRE_MESSAGE(!dirs.empty(), "no tiny_* fixture directory under " << fixtures_dir());
    return dirs;
}

inline std::string base_name(const std::string& p) { return p.substr(p.find_last_of('/') + 1); }

inline std::string absolute(const std::string& p) {
    char buf[PATH_MAX];
    REQUIRE_MESSAGE(realpath(p.c_str(), buf), "realpath " << p);
    return buf;
}

// The whole file; a file that cannot be opened fails the test (it never reads as "").
inline std::string text_for_message(const std::string& path);
inline std::string read_bytes(const std::string& path) {
    FILE* f = fopen(path.c_str(), "rb");
    REQUIRE_MESSAGE(f, "cannot open " << path);
    fclose(f);
    return text_for_message(path);
}

// The file's text for a failure message: never asserts (doctest builds messages inside its
// reporter, and an assertion there re-enters the reporter's lock and hangs the run).
inline std::string text_for_message(const std::string& path) {
    FILE* f = fopen(path.c_str(), "rb");
    if (!f) return "(cannot open " + path + ")";
    std::string s;
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0) s.append(buf, n);
    fclose(f);
    return s;
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
    FILE* f = fopen(path.c_str(), "wb");
    REQUIRE_MESSAGE(f, "cannot create " << path);
    REQUIRE(fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size());
    fclose(f);
}

// The bytes of a project file that a test edited, with the header's checksum (at hash_offset,
// e.g. offsetof(ModelHeader, checksum)) recomputed: a reader then gets past the checksum to the
// deeper check the test is after.
inline std::string rehashed(std::string bytes, size_t hash_offset) {
    const uint64_t h = file_checksum(bytes.data(), 256, hash_offset, payload_hash(bytes.data() + 256, bytes.size() - 256));
    memcpy(&bytes[hash_offset], &h, 8);
    return bytes;
}

// The InputError message `f` throws, or "" when it throws none (so find(...) checks then fail).
inline std::string input_error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const InputError& e) {
        return e.what();
    }
    return "";
}

// A fresh scratch directory under /tmp, removed at scope exit.
struct TempDir {
    std::string path;
    TempDir() {
        char tmpl[] = "/tmp/l2test.XXXXXX";
        char* p = mkdtemp(tmpl);
        if (!p) abort();
        path = p;
    }
    ~TempDir() { (void)!system(("rm -rf '" + path + "'").c_str()); }
    std::string operator/(const std::string& name) const { return path + "/" + name; }
};

struct CmdResult {
    int exit_code;
    std::string output;  // stdout and stderr together
};
// Run a shell command from the repo root; returns its exit code and combined output.
inline CmdResult run_cmd(const std::string& cmd) {
    CmdResult r{-1, ""};
    FILE* p = popen((cmd + " 2>&1").c_str(), "r");
    if (!p) return r;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.output.append(buf, n);
    int st = pclose(p);
    r.exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    return r;
}

inline int count_lines(const std::string& s) {
    int n = 0;
    for (char c : s) n += c == '\n';
    if (!s.empty() && s.back() != '\n') n++;
    return n;
}

// A tool run that must fail cleanly: exit `code`, one line starting with "<tool>: " that contains
// every string of `says`.
inline void check_one_line_failure(const CmdResult& r, const std::string& tool, int code,
                                   const std::vector<std::string>& says) {
    CHECK_MESSAGE(r.exit_code == code, r.output);
    CHECK_MESSAGE(count_lines(r.output) == 1, r.output);
    CHECK_MESSAGE(r.output.rfind(tool + ": ", 0) == 0, r.output);
    for (const std::string& s : says) CHECK_MESSAGE(r.output.find(s) != std::string::npos, "'" << s << "' not in: " << r.output);
}

// max |a - b| / max |b|: the error relative to the reference's scale
inline double max_rel_err(const float* a, const float* b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = std::fabs((double)a[i] - (double)b[i]);
        if (!(d == d)) return INFINITY;  // NaN never passes
        num = std::max(num, d);
        den = std::max(den, std::fabs((double)b[i]));
    }
    return den > 0 ? num / den : num;
}
