// checkpoint.cpp — state.bin, the adapter set and log.csv of ./train (declarations in checkpoint.h).
#include "checkpoint.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <sstream>

#include "hf.h"

// ----------------------------------------------------------------------------------------------
// state.bin

uint64_t dataset_hash(const Dataset& d) {
    uint64_t h = 1469598103934665603ull;  // FNV-1a over tokens and mask: cheap, and any edit shows
    auto mix = [&](const void* p, size_t n) {
        const uint8_t* b = (const uint8_t*)p;
        for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    };
    mix(d.tokens.data(), d.tokens.size() * 4);
    mix(d.loss_mask.data(), d.loss_mask.size());
    return h;
}

void write_state(const std::string& path, const TrainState& s) {
    const size_t n = s.params.size();
    ASSERT(s.m.size() == n && s.v.size() == n, "state arrays agree");
    StateHeader h = s.header;
    PayloadWriter out(path, sizeof(h));
    out.write(s.params.data(), n * 4);
    out.write(s.m.data(), n * 4);
    out.write(s.v.data(), n * 4);
    out.commit(h);
}

// The index of the first value that is not finite (or, with non_negative, below 0), or -1.
static int64_t first_bad(const std::vector<float>& x, bool non_negative) {
    for (size_t i = 0; i < x.size(); i++)
        if (!std::isfinite(x[i]) || (non_negative && x[i] < 0.0f)) return (int64_t)i;
    return -1;
}

TrainState read_state(const std::string& path) {
    InFile in(path);
    TrainState s;
    StateHeader& h = s.header;
    if (in.size < (int64_t)sizeof(h)) fail("%s: truncated file (%lld bytes, shorter than the state header)", path.c_str(), (long long)in.size);
    in.read(&h, sizeof(h), "header");
    if (h.magic != STATE_MAGIC) fail("%s: not a train state file (wrong magic); ./train writes one in its -o directory", path.c_str());
    if (h.version != STATE_VERSION)
        fail("%s: state file version %u, this build reads version %u", path.c_str(), h.version, STATE_VERSION);
    validate_config(h.base, path.c_str());
    validate_lora_config(h.lora, path.c_str());
    const TrainSettings& st = h.settings;
    const LoraConfig settings_lora = st.lora();
    if (memcmp(&h.lora, &settings_lora, sizeof(LoraConfig)) != 0 || st.reserved0 != 0 || st.batch <= 0 ||
        st.micro_tokens <= 0 || st.epochs <= 0 || st.steps < 0 || (st.quant != 0 && st.quant != 1) ||
        st.schedule < SCHEDULE_CONSTANT || st.schedule > SCHEDULE_LINEAR || !std::isfinite(st.lr) || st.lr < 0 ||
        h.n_conversations <= 0 || h.n_tokens <= 0 || h.total_steps <= 0 || h.base.reserved0 != 0)
        fail("%s: corrupt header (settings inconsistent with each other)", path.c_str());
    if (!all_zero(h.reserved, sizeof(h.reserved))) fail("%s: corrupt header (reserved bytes are not zero)", path.c_str());
    const int64_t n = lora_layout(h.base, h.lora).total;
    const int64_t want = (int64_t)sizeof(h) + 3 * n * 4;
    if (in.size != want)
        fail("%s: %s file (%lld bytes, the header implies %lld)", path.c_str(), in.size < want ? "truncated" : "oversized",
             (long long)in.size, (long long)want);
    if (h.step < 0 || h.step > h.total_steps) fail("%s: corrupt step counter %lld", path.c_str(), (long long)h.step);
    s.params.resize((size_t)n);
    s.m.resize((size_t)n);
    s.v.resize((size_t)n);
    in.read(s.params.data(), (size_t)n * 4, "LoRA parameters");
    in.read(s.m.data(), (size_t)n * 4, "AdamW first moments");
    in.read(s.v.data(), (size_t)n * 4, "AdamW second moments");
    PayloadHash hash;
    for (const std::vector<float>* a : {&s.params, &s.m, &s.v}) hash.update(a->data(), a->size() * 4);
    if (file_checksum(&h, sizeof(h), offsetof(StateHeader, checksum), hash.digest()) != h.checksum)
        fail("%s: checksum mismatch (the file is corrupt, or was changed after it was written)", path.c_str());
    const struct {
        const std::vector<float>* x;
        const char* what;
        bool non_negative;
    } arrays[] = {{&s.params, "LoRA parameter", false}, {&s.m, "AdamW first moment", false},
                  {&s.v, "AdamW second moment", true}};
    for (const auto& a : arrays) {
        const int64_t i = first_bad(*a.x, a.non_negative);
        if (i >= 0)
            fail("%s: %s %lld is %g (must be finite%s)", path.c_str(), a.what, (long long)i, (double)(*a.x)[i],
                 a.non_negative ? " and >= 0" : "");
    }
    return s;
}

void check_state_matches(const StateHeader& h, const char* path, const Config& base, const TrainSettings& s,
                         const Dataset& d, int64_t total_steps) {
    const LoraConfig lora = s.lora();
    if (!same_architecture(h.base, base))
        fail("%s: the run being resumed trained %s, not this model (%s)", path, config_summary(h.base).c_str(),
             config_summary(base).c_str());
    if (h.n_conversations != d.header.n_conversations || h.n_tokens != d.header.n_tokens || h.data_hash != dataset_hash(d))
        fail("%s: the run being resumed used other training data (%lld conversations, %lld tokens)", path,
             (long long)h.n_conversations, (long long)h.n_tokens);
    if (memcmp(&h.lora, &lora, sizeof(lora)) != 0 || memcmp(&h.settings, &s, sizeof(s)) != 0)
        fail("%s: the run being resumed used other settings (LoRA %s r=%d alpha=%g, lr %g, batch %d, seed %llu, ...); "
             "resume with the same flags",
             path, lora_targets_string(h.lora.target_mask).c_str(), h.lora.rank, h.lora.alpha, h.settings.lr,
             h.settings.batch, (unsigned long long)h.settings.seed);
    if (h.total_steps != total_steps || h.step > total_steps)
        fail("%s: the state is at step %lld of %lld, but this run has %lld steps (corrupt, or another run)", path,
             (long long)h.step, (long long)h.total_steps, (long long)total_steps);
}

// ----------------------------------------------------------------------------------------------
// log.csv

const char* LOG_HEADER = "step,epoch,loss,val_loss,lr,grad_norm,tokens_per_s,mfu,mem_gib";
// the header of logs written before the last column was renamed (it always held memory in use, not a peak)
static const char* LOG_HEADER_V1 = "step,epoch,loss,val_loss,lr,grad_norm,tokens_per_s,mfu,peak_mem_gib";

static std::string num(double v, const char* fmt) {
    if (std::isnan(v)) return "";
    char b[64];
    snprintf(b, sizeof(b), fmt, v);
    return b;
}

void write_log(const std::string& path, const std::vector<LogRow>& rows) {
    std::string text = std::string(LOG_HEADER) + "\n";
    for (const LogRow& r : rows)
        text += std::to_string(r.step) + "," + num(r.epoch, "%.4f") + "," + num(r.loss, "%.6f") + "," +
                num(r.val_loss, "%.6f") + "," + num(r.lr, "%.6g") + "," + num(r.grad_norm, "%.6g") + "," +
                num(r.tokens_per_s, "%.1f") + "," + num(r.mfu, "%.4f") + "," + num(r.mem_in_use_gib, "%.3f") + "\n";
    AtomicFile out(path);
    out.write(text.data(), text.size());
    out.commit();
}

std::vector<LogRow> read_log(const std::string& path) {
    std::istringstream in(read_text_file(path));
    std::string line;
    if (!std::getline(in, line) || (line != LOG_HEADER && line != LOG_HEADER_V1)) fail("%s: not a log.csv written by ./train (unexpected header)", path.c_str());
    std::vector<LogRow> rows;
    int lineno = 1;
    while (std::getline(in, line)) {
        lineno++;
        if (line.empty()) continue;
        std::vector<std::string> f;
        std::stringstream ss(line);
        std::string cell;
        while (std::getline(ss, cell, ',')) f.push_back(cell);
        while (f.size() < 9) f.push_back("");  // trailing empty cells
        if (f.size() != 9) fail("%s:%d: expected 9 columns", path.c_str(), lineno);
        auto d = [&](const std::string& s) { return s.empty() ? NAN : std::stod(s); };
        try {
            rows.push_back({std::stoll(f[0]), d(f[1]), d(f[2]), d(f[3]), d(f[4]), d(f[5]), d(f[6]), d(f[7]), d(f[8])});
        } catch (const std::exception&) {
            fail("%s:%d: not a number", path.c_str(), lineno);
        }
    }
    return rows;
}


// ----------------------------------------------------------------------------------------------
// the checkpoint set

StateHeader make_state_header(const Config& base, const TrainSettings& s, int64_t step, int64_t total_steps,
                              const Dataset& train) {
    StateHeader h;
    memset((void*)&h, 0, sizeof(h));  // reserved bytes and any padding are stored: zeros
    h.magic = STATE_MAGIC;
    h.version = STATE_VERSION;
    h.base = base;
    h.lora = s.lora();
    h.settings = s;
    h.step = step;
    h.total_steps = total_steps;
    h.n_conversations = train.header.n_conversations;
    h.n_tokens = train.header.n_tokens;
    h.data_hash = dataset_hash(train);
    return h;
}

// rm -rf of a path inside the run directory (only files and directories this code made)
static void remove_tree(const std::string& path) {
    struct stat st;
    if (lstat(path.c_str(), &st) != 0) return;
    if (S_ISDIR(st.st_mode)) {
        if (DIR* d = opendir(path.c_str())) {
            while (dirent* e = readdir(d)) {
                const std::string name = e->d_name;
                if (name != "." && name != "..") remove_tree(path + "/" + name);
            }
            closedir(d);
        }
        rmdir(path.c_str());
    } else {
        unlink(path.c_str());
    }
}

static std::vector<std::string> dir_entries(const std::string& dir) {
    std::vector<std::string> out;
    if (DIR* d = opendir(dir.c_str())) {
        while (dirent* e = readdir(d)) {
            const std::string name = e->d_name;
            if (name != "." && name != "..") out.push_back(name);
        }
        closedir(d);
    }
    return out;
}

static void fsync_dir(const std::string& dir) {
    const int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY);
    if (fd < 0) return;
    fsync(fd);
    close(fd);
}

// where `latest` points ("checkpoints/step-00000017"), or "" when there is no link
static std::string latest_target(const RunFiles& f) {
    char buf[4096];
    const ssize_t n = readlink(f.latest.c_str(), buf, sizeof(buf) - 1);
    return n > 0 ? std::string(buf, (size_t)n) : "";
}

// a symbolic link name -> target, replacing whatever is at name (atomically when it is a link)
static void replace_link(const std::string& target, const std::string& name) {
    const std::string tmp = name + ".tmp." + std::to_string(getpid());
    unlink(tmp.c_str());
    if (symlink(target.c_str(), tmp.c_str()) != 0) fail("%s: cannot create a link (%s)", tmp.c_str(), strerror(errno));
    struct stat st;
    if (lstat(name.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) remove_tree(name);  // a directory of an old layout
    if (rename(tmp.c_str(), name.c_str()) != 0) {
        const int e = errno;
        unlink(tmp.c_str());
        fail("%s: cannot switch the link (%s)", name.c_str(), strerror(e));
    }
}

static bool is_tmp_name(const std::string& name) { return name.find(".tmp.") != std::string::npos; }

void clean_run_dir(const RunFiles& f) {
    for (const std::string& name : dir_entries(f.dir))
        if (is_tmp_name(name)) remove_tree(f.dir + "/" + name);
    const std::string keep = latest_target(f);
    for (const std::string& name : dir_entries(f.checkpoints))
        if ("checkpoints/" + name != keep) remove_tree(f.checkpoints + "/" + name);
}

int64_t checkpoint_step(const RunFiles& f) {
    if (latest_target(f).empty() || !file_exists(f.state)) return -1;
    InFile in(f.state);
    StateHeader h;
    if (in.size < (int64_t)sizeof(h)) return -1;
    in.read(&h, sizeof(h), "header");
    return h.magic == STATE_MAGIC ? h.step : -1;
}

void save_checkpoint(const RunFiles& f, const TrainState& st, const uint8_t tokenizer_sha256[32],
                     const std::string& base_name) {
    char name[64];
    snprintf(name, sizeof(name), "step-%08lld", (long long)st.header.step);
    const std::string rel = std::string("checkpoints/") + name, final_dir = f.dir + "/" + rel;
    if (latest_target(f) == rel) return;  // this very step is the checkpoint already
    const std::string tmp = final_dir + ".tmp." + std::to_string(getpid());
    make_dirs(f.checkpoints);
    remove_tree(tmp);
    remove_tree(final_dir);  // a set of this step that `latest` never named (an interrupted save)
    make_dirs(tmp);
    try {
        Adapter ad;
        ad.base = st.header.base;
        ad.lora = st.header.lora;
        ad.trained_on = st.header.settings.quant ? TRAINED_ON_NF4 : TRAINED_ON_BF16;
        memcpy(ad.tokenizer_sha256, tokenizer_sha256, 32);
        ad.params = st.params;
        write_adapter(tmp + "/adapter.bin", ad);
        // the PEFT copy holds exactly adapter.bin's fp16 values, so both load the same model
        for (float& x : ad.params) x = f16_to_f32(f32_to_f16(x));
        write_peft_adapter(tmp + "/adapter", ad, DT_F16, base_name);
        write_state(tmp + "/state.bin", st);
        fsync_dir(tmp + "/adapter");
        fsync_dir(tmp);
        if (rename(tmp.c_str(), final_dir.c_str()) != 0)
            fail("%s: cannot rename into place (%s)", final_dir.c_str(), strerror(errno));
    } catch (...) {
        remove_tree(tmp);  // the previous set stays as it was
        throw;
    }
    fsync_dir(f.checkpoints);
    const std::string previous = latest_target(f);
    // The names go through `latest`, and are made before it: on a first save they dangle until the
    // switch, so a kill between the two leaves no set (not `latest` without state.bin).
    for (const auto& [link, target] : {std::pair<std::string, std::string>{f.adapter, "latest/adapter.bin"},
                                       {f.peft_dir, "latest/adapter"},
                                       {f.state, "latest/state.bin"}}) {
        char buf[256];
        const ssize_t n = readlink(link.c_str(), buf, sizeof(buf) - 1);
        if (n <= 0 || std::string(buf, (size_t)n) != target) replace_link(target, link);
    }
    fsync_dir(f.dir);
    replace_link(rel, f.latest);  // the switch: from here on every name above resolves to the new set
    fsync_dir(f.dir);
    if (!previous.empty() && previous != rel) remove_tree(f.dir + "/" + previous);
}
