// checkpoint.cpp — state.bin, the adapter set and log.csv of ./train (declarations in checkpoint.h).
#include "checkpoint.h"

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
    AtomicFile out(path);
    out.write(&s.header, sizeof(s.header));
    out.write(s.params.data(), n * 4);
    out.write(s.m.data(), n * 4);
    out.write(s.v.data(), n * 4);
    out.commit();
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
    return s;
}

void check_state_matches(const StateHeader& h, const char* path, const Config& base, const LoraConfig& lora,
                         const TrainSettings& s, const Dataset& d) {
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

void save_checkpoint(const RunFiles& f, const TrainState& st, const uint8_t tokenizer_sha256[32],
                     const std::string& base_name) {
    Adapter ad;
    ad.base = st.header.base;
    ad.lora = st.header.lora;
    memcpy(ad.tokenizer_sha256, tokenizer_sha256, 32);
    ad.params = st.params;
    write_adapter(f.adapter, ad);
    // the PEFT copy holds exactly adapter.bin's fp16 values, so both load the same model
    for (float& x : ad.params) x = f16_to_f32(f32_to_f16(x));
    write_peft_adapter(f.peft_dir, ad, DT_F16, base_name);
    write_state(f.state, st);
}
