// schedule.h — what each optimizer step of ./train computes, as plain functions of the settings
// and the step number (so a resumed run redraws exactly what an uninterrupted one would): the data
// order (a seeded shuffle per epoch), the packing of a step's conversations into micro-batches
// without padding, the learning-rate schedule, and the model FLOPs that MFU counts. Implemented in
// schedule.cpp; tested in test/cpu_schedule.cpp.
#pragma once

#include <vector>

#include "model.h"
#include "train_config.h"

// ----------------------------------------------------------------------------------------------
// data schedule: a step takes the next `batch` conversations of its epoch's shuffled order

struct DataPlan {
    int64_t n_conversations;
    int64_t steps_per_epoch;  // ceil(n_conversations / batch)
    int64_t total_steps;      // settings.steps, or epochs * steps_per_epoch
};
DataPlan plan_data(const TrainSettings& s, int64_t n_conversations);
// The conversation order of one epoch: Fisher-Yates with a splitmix64 stream of (seed, epoch).
std::vector<int64_t> epoch_order(int64_t n_conversations, uint64_t seed, int64_t epoch);
// The conversations of 0-based step k (epochs repeat past the last when --steps asks for more).
std::vector<int64_t> step_conversations(const TrainSettings& s, const DataPlan& p, int64_t step);
// Packs conversations, in the given order, into rows of at most `budget` tokens: a conversation
// joins the current row if it fits, else starts the next. No padding, no conversation split.
// A conversation longer than the budget gets a row of its own (the caller sizes buffers for it).
std::vector<std::vector<int64_t>> pack_rows(const Dataset& d, const std::vector<int64_t>& convs, int64_t budget);
// number of positions with a target (tokens predicted under the loss mask) in these conversations
int64_t count_targets(const Dataset& d, const std::vector<int64_t>& convs);

// ----------------------------------------------------------------------------------------------
// learning rate at 0-based optimizer step k, as transformers' schedulers with warm-up:
// warm-up k / W for k < W (W = ceil(warmup * total)), then constant, linear decay to 0, or
// cosine decay to 0 over the remaining steps.
float lr_at(const TrainSettings& s, int64_t step, int64_t total_steps);

// ----------------------------------------------------------------------------------------------
// model FLOPs of a LoRA/QLoRA training step (what MFU counts; recompute excluded): per token
// 4 x frozen linear params (forward + input-gradient backward; frozen weights get no weight
// gradient), 6 r (in + out) per LoRA linear, 4 V C for the LM head; plus 12 D per visible
// (query, key) pair per head per layer for causal attention (4 D forward, 8 D backward).
// attention_pairs = sum over conversations of len (len + 1) / 2.
double training_flops(const Config& c, const LoraConfig& lc, double tokens, double attention_pairs);
