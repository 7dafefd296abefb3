// test/cpu_kill.cpp — the checkpoint set survives SIGKILL at any instant (checkpoint.h): the CPU
// demo, saving after every step, is killed 24 times at instants that span its run (a random time
// in loading or the first step; inside a save, when a half-written set is seen; right after
// `latest` switched), each time resumed from what the kill left, run after run. After
// every kill the run directory must hold one consistent set: adapter.bin, adapter/ (PEFT) and
// state.bin all from the step `latest` names, the PEFT copy holding exactly adapter.bin's values
// and adapter.bin the fp16 rounding of state.bin's parameters. The next start must remove every
// leftover of an interrupted save, and the run finished in pieces must equal the uninterrupted
// one byte for byte (resume is bitwise). Every child has a deadline and is killed at it.
// Run from the repo root after `make NO_CUDA=1 train test_cpu`:
//   ./test_cpu -tc="kill*"
#include <doctest/doctest.h>
#include <unistd.h>

#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <set>

#include "../checkpoint.h"
#include "../hf.h"
#include "proc_util.h"
#include "test_util.h"

namespace {

const int kSteps = 10;

std::vector<std::string> train_argv(const std::string& dir, bool resume) {
    std::vector<std::string> a = {"./train", "--device", "cpu", "--steps", std::to_string(kSteps), "--batch", "2",
                                  "--save-every", "1", "--eval-every", "0", "-o", dir};
    if (resume) a.push_back("--resume");
    return a;
}

// Names under dir (recursively) that hold ".tmp.": what an interrupted save leaves.
void tmp_leftovers(const std::string& dir, const std::string& rel, std::vector<std::string>& out) {
    for (const std::string& n : list_dir(dir + rel, "")) {
        if (n == "." || n == "..") continue;
        if (n.find(".tmp.") != std::string::npos) out.push_back(rel + "/" + n);
        struct stat st;
        if (lstat((dir + rel + "/" + n).c_str(), &st) == 0 && S_ISDIR(st.st_mode)) tmp_leftovers(dir, rel + "/" + n, out);
    }
}

// The step of the set in dir, checked for consistency; -1 when there is no set yet.
int64_t check_set(const std::string& dir) {
    char buf[4096];
    const ssize_t n = readlink((dir + "/latest").c_str(), buf, sizeof(buf) - 1);
    if (n <= 0) {
        // no set switched in yet: none of the three names may resolve to anything
        CHECK_MESSAGE(!path_exists(dir + "/state.bin"), "state.bin without latest");
        CHECK_MESSAGE(!path_exists(dir + "/adapter.bin"), "adapter.bin without latest");
        return -1;
    }
    const std::string target(buf, (size_t)n);
    long long named = -1;
    REQUIRE_MESSAGE(sscanf(target.c_str(), "checkpoints/step-%lld", &named) == 1, target);
    const TrainState st = read_state(dir + "/state.bin");  // every reader checks its checksum
    const Adapter a = read_adapter(dir + "/adapter.bin");
    InFile mf(dir + "/model.bin");
    const ModelHeader mh = read_model_header(mf);
    const Adapter peft = read_peft_adapter(dir + "/adapter", mh.config);
    CHECK(st.header.step == named);
    CHECK(st.header.total_steps == kSteps);
    REQUIRE(a.params.size() == st.params.size());
    bool rounded = true;
    for (size_t i = 0; i < st.params.size(); i++) rounded = rounded && f16_to_f32(f32_to_f16(st.params[i])) == a.params[i];
    CHECK_MESSAGE(rounded, "adapter.bin is not state.bin's step " << named);
    CHECK_MESSAGE(peft.params == a.params, "the PEFT copy differs from adapter.bin at step " << named);
    return named;
}

void remove_tree_for_test(const std::string& path) {
    struct stat st;
    if (lstat(path.c_str(), &st) != 0) return;
    if (S_ISDIR(st.st_mode)) {
        for (const std::string& n : list_dir(path, ""))
            if (n != "." && n != "..") remove_tree_for_test(path + "/" + n);
        rmdir(path.c_str());
    } else {
        unlink(path.c_str());
    }
}

}  // namespace

TEST_CASE("kill: SIGKILL at 24 instants of saving runs leaves one consistent set each time; resumed, a run ends bitwise as a straight one") {
    TempDir tmp;
    // the straight run: the reference, and how long a whole run takes here
    const double t0 = monotonic_seconds();
    const ProcResult ref = run_argv(train_argv(tmp / "ref", false), 120);
    const double full = monotonic_seconds() - t0;
    REQUIRE_MESSAGE(ref.exit_code == 0, ref.err);

    const std::string dir = tmp / "run";
    auto latest = [&] {
        char buf[4096];
        const ssize_t n = readlink((dir + "/latest").c_str(), buf, sizeof(buf) - 1);
        return n > 0 ? std::string(buf, (size_t)n) : std::string();
    };
    auto saving = [&] {  // a set being written: checkpoints/step-N.tmp.<pid>
        for (const std::string& n : list_dir(dir + "/checkpoints", "step-"))
            if (n.find(".tmp.") != std::string::npos) return true;
        return false;
    };
    // Three kinds of instant, in turn (timing alone would depend on this machine's speed): a
    // seeded random time in the first 0.4 s (loading, the first step); in the middle of a save,
    // the first moment a half-written set is seen after the run's j-th switch; right after the
    // j-th switch of `latest` (cleaning the previous set). j = 1..3 so that each run moves on.
    int kills = 0, finished = 0, left_tmp = 0, cycles = 0, in_save = 0;
    std::set<int64_t> steps_seen;
    Rng rng(7);
    for (int k = 0; kills < 24 && k < 60; k++) {
        CAPTURE(k);
        const int kind = k % 3, j = 1 + (k / 3) % 3;
        const double random_delay = 0.4 * rng.uniform();
        const pid_t pid = spawn_child(train_argv(dir, path_exists(dir + "/state.bin")), tmp / "log.txt");
        REQUIRE(pid > 0);
        const double start = monotonic_seconds();
        std::string seen = latest();
        int switches = 0, status = 0;
        bool alive = true, saw_save = false;
        while (alive && monotonic_seconds() - start < 30) {
            if (waitpid(pid, &status, WNOHANG) == pid) {
                alive = false;
                break;
            }
            const std::string now = latest();
            if (now != seen) seen = now, switches++;
            if (kind == 0 && monotonic_seconds() - start >= random_delay) break;
            if (kind == 1 && switches >= j && saving()) {
                saw_save = true;
                break;
            }
            if (kind == 2 && switches >= j) break;
            usleep(100);
        }
        if (alive) {
            kill(pid, SIGKILL);
            bool timed_out = false;
            wait_child(pid, 30, &timed_out);
            CHECK_FALSE(timed_out);
            kills++;
            in_save += saw_save;
        } else {
            CHECK_MESSAGE(decode_status(status) == 0, text_for_message(tmp / "log.txt"));
            finished++;
        }
        steps_seen.insert(check_set(dir));
        std::vector<std::string> left;
        tmp_leftovers(dir, "", left);
        left_tmp += !left.empty();
        if (!alive) {
            // a run that got to its end through kills and resumes: bitwise the straight run; then again
            REQUIRE_MESSAGE(path_exists(dir + "/state.bin"), text_for_message(tmp / "log.txt"));
            REQUIRE(read_state(dir + "/state.bin").header.step == kSteps);
            CHECK(read_bytes(dir + "/state.bin") == read_bytes(tmp / "ref/state.bin"));
            CHECK(read_bytes(dir + "/adapter.bin") == read_bytes(tmp / "ref/adapter.bin"));
            remove_tree_for_test(dir);
            cycles++;
        }
    }
    MESSAGE(kills << " kills (" << in_save << " inside a save), " << cycles << " runs completed in pieces, sets seen at "
                  << steps_seen.size() << " distinct steps, " << left_tmp << " kills left a half-written save; a whole run takes "
                  << full << " s");
    CHECK(kills >= 24);
    CHECK(steps_seen.size() >= 6);  // the kills fell at many points of the run, not all before the first save
    CHECK(in_save >= 3);            // and several inside a save

    // the next start cleans what the kills left and finishes the run
    ProcResult r = run_argv(train_argv(dir, path_exists(dir + "/state.bin")), 120);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CHECK(check_set(dir) == kSteps);
    std::vector<std::string> left;
    tmp_leftovers(dir, "", left);
    CHECK_MESSAGE(left.empty(), left.size() << " leftovers, first " << (left.empty() ? "" : left[0]));
    std::vector<std::string> sets;
    for (const std::string& n : list_dir(dir + "/checkpoints", "step-")) sets.push_back(n);
    CHECK(sets == std::vector<std::string>{"step-00000010"});  // only the set `latest` names
    // resumed in pieces, bitwise the straight run
    CHECK(read_bytes(dir + "/adapter.bin") == read_bytes(tmp / "ref/adapter.bin"));
    CHECK(read_bytes(dir + "/state.bin") == read_bytes(tmp / "ref/state.bin"));
    CHECK(read_bytes(dir + "/adapter/adapter_model.safetensors") == read_bytes(tmp / "ref/adapter/adapter_model.safetensors"));
    const std::vector<LogRow> la = read_log(dir + "/log.csv"), lb = read_log(tmp / "ref/log.csv");
    REQUIRE(la.size() == lb.size());
    for (size_t i = 0; i < la.size(); i++) CHECK(la[i].loss == lb[i].loss);
}
