// train_util.cpp — data schedule, packing, learning-rate schedule, state.bin and log.csv for
// ./train (declarations and the why in train_util.h). No GPU code, no globals.
#include "train_util.h"

#include <cmath>
#include <fstream>
#include <sstream>

const char* schedule_name(int32_t s) {
    return s == SCHEDULE_CONSTANT ? "constant" : s == SCHEDULE_COSINE ? "cosine" : s == SCHEDULE_LINEAR ? "linear" : "?";
}

// ----------------------------------------------------------------------------------------------
// data schedule

DataPlan plan_data(const TrainSettings& s, int64_t n_conversations) {
    ASSERT(n_conversations > 0 && s.batch > 0, "data and batch");
    DataPlan p;
    p.n_conversations = n_conversations;
    p.steps_per_epoch = (n_conversations + s.batch - 1) / s.batch;
    p.total_steps = s.steps > 0 ? s.steps : (int64_t)s.epochs * p.steps_per_epoch;
    return p;
}

std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch) {
    std::vector<int64_t> order((size_t)n);
    for (int64_t i = 0; i < n; i++) order[i] = i;
    // one stream per epoch; the seed's bits and the epoch's are mixed so that nearby seeds differ
    Rng rng(splitmix64(seed) ^ splitmix64(0x5eed0000ull + (uint64_t)epoch));
    for (int64_t i = n - 1; i > 0; i--) {
        const int64_t j = (int64_t)(rng.next() % (uint64_t)(i + 1));
        std::swap(order[i], order[j]);
    }
    return order;
}

std::vector<int64_t> step_conversations(const TrainSettings& s, const DataPlan& p, int64_t step) {
    const int64_t epoch = step / p.steps_per_epoch, k = step % p.steps_per_epoch;
    std::vector<int64_t> order = epoch_order(p.n_conversations, s.seed, epoch);
    const int64_t begin = k * s.batch, end = std::min<int64_t>(begin + s.batch, p.n_conversations);
    return std::vector<int64_t>(order.begin() + begin, order.begin() + end);
}

std::vector<std::vector<int64_t>> pack_rows(const Dataset& d, const std::vector<int64_t>& convs, int64_t budget) {
    std::vector<std::vector<int64_t>> rows;
    int64_t used = 0;
    for (int64_t c : convs) {
        const int64_t len = d.conv_len(c);
        if (rows.empty() || used + len > budget) {
            rows.push_back({});
            used = 0;
        }
        rows.back().push_back(c);
        used += len;
    }
    return rows;
}

int64_t count_targets(const Dataset& d, const std::vector<int64_t>& convs) {
    int64_t n = 0;
    for (int64_t c : convs)  // position j predicts token j+1 of the same conversation when it is in the mask
        for (int64_t j = d.conv_offsets[c] + 1; j < d.conv_offsets[c + 1]; j++) n += d.loss_mask[j];
    return n;
}

// ----------------------------------------------------------------------------------------------
// learning rate

float lr_at(const TrainSettings& s, int64_t step, int64_t total) {
    // ceil(warmup * total) as transformers computes it in double; the fraction is stored as a float
    // (0.1f = 0.100000001...), so a hair of tolerance keeps 0.1 x 100 at 10 steps, not 11
    const int64_t warm = (int64_t)std::ceil((double)s.warmup * (double)total - 1e-4);
    if (step < warm) return s.lr * (float)step / (float)std::max<int64_t>(1, warm);
    if (s.schedule == SCHEDULE_CONSTANT) return s.lr;
    const double progress = (double)(step - warm) / (double)std::max<int64_t>(1, total - warm);
    if (s.schedule == SCHEDULE_LINEAR) return (float)(s.lr * std::max(0.0, 1.0 - progress));
    return (float)(s.lr * 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, progress))));  // cosine
}

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

const char* LOG_HEADER = "step,epoch,loss,val_loss,lr,grad_norm,tokens_per_s,mfu,peak_mem_gib";

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
                num(r.tokens_per_s, "%.1f") + "," + num(r.mfu, "%.4f") + "," + num(r.peak_gib, "%.3f") + "\n";
    AtomicFile out(path);
    out.write(text.data(), text.size());
    out.commit();
}

std::vector<LogRow> read_log(const std::string& path) {
    std::istringstream in(read_text_file(path));
    std::string line;
    if (!std::getline(in, line) || line != LOG_HEADER) fail("%s: not a log.csv written by ./train (unexpected header)", path.c_str());
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
// FLOPs

double training_flops(const Config& c, const LoraConfig& lc, double tokens, double attention_pairs) {
    double linear = 0, lora = 0;
    for (int t = 0; t < NUM_LORA_TARGETS; t++) {
        const double in = (double)lora_in_dim(c, t), out = (double)lora_out_dim(c, t);
        linear += in * out;
        if (lc.rank > 0 && lc.has(t)) lora += 6.0 * lc.rank * (in + out);
    }
    const double per_token = c.n_layers * (4.0 * linear + lora) + 4.0 * (double)c.vocab_size * c.dim;
    return tokens * per_token + attention_pairs * 12.0 * c.head_dim * c.n_heads * c.n_layers;
}
