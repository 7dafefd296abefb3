// train_demo.h — the built-in demo of ./train: with no -i and no -m it fine-tunes a tiny random-init
// Llama (2 layers, width 128, byte-level tokens, so no download is needed) on the few dozen
// conversations of data/demo.jsonl, in seconds on a GPU and about a minute on a CPU. Implemented
// in train_demo.cpp; run by test/cpu_train.cpp and tools/gpu_check.sh.
#pragma once

#include <string>
#include <vector>

#include "model.h"

// The demo model's shape: head_dim 128 as every Llama 2 (the GPU attention kernels are built for it).
Config demo_config();
// Its random base weights (fp32, file order) for a seed.
std::vector<float> demo_weights(const Config& c, uint64_t seed);
// data/demo.jsonl (LIMA's format; embedded in the binary at build time, so ./train runs from any
// directory) with the Llama 2 chat template over byte tokens; every `val_every`-th conversation
// goes to the held-out set.
void demo_datasets(int val_every, Dataset& train, Dataset& val);
// Writes the demo's base model (fp32 weights stored as bf16), for ./sample to load beside the adapter.
void write_model_bf16(const std::string& path, const Config& c, const std::vector<float>& w);
