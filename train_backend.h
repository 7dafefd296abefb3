// train_backend.h — the one interface ./train's loop drives, with two implementations: the CPU
// reference (fp32, train_backend.cpp) and the CUDA model (train_backend_gpu.cpp, linked only into
// a CUDA build; make_gpu_backend is then non-null). Both start from the same LoRA initialisation,
// drawn on the host, so a CPU run and a GPU run of the same settings start equal.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "llama2_cpu.h"
#include "model.h"
#include "train_config.h"

// Where the frozen base weights come from.
struct BaseSource {
    enum Kind { HOST, FILE, RANDOM } kind = HOST;
    std::vector<float> host;  // HOST: fp32 values in file order (the demo's)
    std::string path;         // FILE: a model file from ./export_hf
    bool file_is_nf4 = false; // FILE: its linears are pre-quantized NF4 records
    uint64_t seed = 0;        // RANDOM: benchmark weights drawn from a seed
};

struct Backend {
    virtual ~Backend() {}
    virtual const char* name() const = 0;
    // the optimizer's state (LoRA params, AdamW moments), LoraLayout order
    virtual void set_lora_state(const std::vector<float>& params, const std::vector<float>& m,
                                const std::vector<float>& v) = 0;
    virtual void get_lora_state(std::vector<float>& params, std::vector<float>& m, std::vector<float>& v) = 0;
    virtual void zero_grads() = 0;
    // forward + backward of one packed row; gradients accumulate; loss_scale = 1 / targets in the step
    virtual void forward_backward(const CpuBatch& b, float loss_scale, uint64_t dropout_seed) = 0;
    // sum of per-position cross-entropy of one row, no dropout, no gradients
    virtual double eval_loss_sum(const CpuBatch& b) = 0;
    // clip + AdamW at 0-based step k with learning rate lr; returns the step's summed CE and the
    // gradient norm before clipping (a NaN/Inf norm leaves the weights untouched)
    virtual void optimizer_step(int64_t k, float lr, const TrainSettings& s, double* loss_sum, float* grad_norm) = 0;
    // The per-phase profile of one step (GPU): begin before its first forward, end after its
    // optimizer step gives one line of phase shares ("" where there is no profile).
    virtual void begin_profile() {}
    virtual std::string end_profile() { return ""; }
    virtual double memory_in_use_gib() = 0;  // device memory in use (NaN on the CPU)
    virtual double peak_flops() = 0;         // the card's bf16 peak (0: unknown, no MFU)
};

// The CPU reference. With s.quant (QLoRA) and a dense base, the linears go through NF4 and back
// (bf16), so the CPU trains on exactly the weights the GPU dequantizes.
std::unique_ptr<Backend> make_cpu_backend(const Config& cfg, BaseSource base, const TrainSettings& s);
// The GPU, for micro-batches of up to `capacity` tokens; nullptr symbol in a build without CUDA.
std::unique_ptr<Backend> make_gpu_backend(const Config& cfg, const BaseSource& base, const TrainSettings& s,
                                          int recompute, int64_t capacity) __attribute__((weak));
// The memory plan of a GPU run (--memory auto): the micro-batch token budget and recompute level
// of the fastest step that fits, and the device memory it is predicted to take at its peak.
struct MemoryPlan {
    int64_t micro_tokens = 0;
    int recompute = 0;         // Recompute (llama2_gpu.h)
    double predicted_gib = 0;  // device memory in use at the peak (model load included)
    double budget_gib = 0;     // --max-mem, or what the card holds
    std::string summary;       // one line for the log
};
// Chooses the plan for this model, LoRA and data (its longest conversation) within max_mem_gib
// (0: the card's memory). micro_tokens > 0 / recompute >= 0 fix those choices (given as flags).
// A request that cannot fit throws InputError saying the smallest budget that would.
// nullptr symbol in a build without CUDA.
MemoryPlan plan_gpu_memory(const Config& cfg, const TrainSettings& s, int64_t longest, double max_mem_gib,
                           int64_t micro_tokens, int recompute) __attribute__((weak));
// Whether a GPU can be used now (fills why otherwise); nullptr symbol in a build without CUDA.
bool gpu_backend_usable(std::string* why) __attribute__((weak));
