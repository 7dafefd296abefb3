// schedule.cpp — the data schedule, packing, learning-rate schedule and FLOP count of ./train
// (declarations and the why in schedule.h). No GPU code, no globals.
#include "schedule.h"

#include <algorithm>
#include <cmath>

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
    // one stream per epoch; the seed's bits and the epoch's are mixed so that nearby seeds differ
    Rng rng(splitmix64(seed) ^ splitmix64(0x5eed0000ull + (uint64_t)epoch));
    return shuffled_indices(n, rng);
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
