// checkpoint.h — what ./train leaves in its -o directory and reads back: the train state
// (state.bin: LoRA parameters and AdamW moments, with the settings and data it belongs to, for a
// bitwise --resume), the adapter (adapter.bin and its PEFT copy adapter/), and log.csv. Implemented
// in checkpoint.cpp; tested in test/cpu_checkpoint.cpp.
#pragma once

#include <string>
#include <vector>

#include "model.h"
#include "train_config.h"

// ----------------------------------------------------------------------------------------------
// train state (state.bin): header, then LoRA params, AdamW m, v (fp32, LoraLayout order each)

constexpr uint32_t STATE_MAGIC = fourcc("L2ST");
constexpr uint32_t STATE_VERSION = 2;  // 2: payload checksum
struct StateHeader {
    uint32_t magic;
    uint32_t version;
    Config base;              // the model trained
    LoraConfig lora;
    TrainSettings settings;
    int64_t step;             // optimizer steps done
    int64_t total_steps;
    int64_t n_conversations;  // of the training data
    int64_t n_tokens;
    uint64_t data_hash;       // FNV-1a of the training tokens and mask
    uint64_t checksum;        // file_checksum of the header, params, m, v
    uint8_t reserved[256 - 8 - sizeof(Config) - sizeof(LoraConfig) - sizeof(TrainSettings) - 6 * 8];
};
static_assert(sizeof(StateHeader) == 256, "header is 256 bytes");

struct TrainState {
    StateHeader header;
    std::vector<float> params, m, v;  // (LoraLayout total) each
};
uint64_t dataset_hash(const Dataset& d);
void write_state(const std::string& path, const TrainState& s);
// Checks the header against itself (settings sane, step <= total, reserved zero), the payload
// against its checksum, every value finite and every second moment >= 0.
TrainState read_state(const std::string& path);
// Throws InputError naming the state file if it belongs to another model, data, settings or length
// of run (total_steps: the run's, from the settings and data).
void check_state_matches(const StateHeader& h, const char* state_path, const Config& base, const TrainSettings& s,
                         const Dataset& d, int64_t total_steps);

// ----------------------------------------------------------------------------------------------
// log.csv: one row per optimizer step; val_loss empty where no eval ran

struct LogRow {
    int64_t step;
    double epoch;
    double loss;
    double val_loss;  // NaN: no eval this step
    double lr;
    double grad_norm;
    double tokens_per_s;
    double mfu;       // fraction of the card's bf16 peak; NaN on the CPU
    double mem_in_use_gib;  // device memory in use at the end of the step; NaN on the CPU
};
extern const char* LOG_HEADER;  // "step,epoch,loss,val_loss,lr,grad_norm,tokens_per_s,mfu,mem_gib"
void write_log(const std::string& path, const std::vector<LogRow>& rows);  // atomic rewrite
std::vector<LogRow> read_log(const std::string& path);                    // throws on a foreign file


// ----------------------------------------------------------------------------------------------
// the checkpoint set in a run's -o directory
//
// A checkpoint is one set, adapter.bin + adapter/ (PEFT) + state.bin of the same step, and it is
// switched as one: the set is written into checkpoints/step-NNNNNNNN.tmp.<pid>/, renamed to
// checkpoints/step-NNNNNNNN/, then the symbolic link `latest` is replaced (an atomic rename) to point
// at it. adapter.bin, adapter and state.bin in -o are links through `latest`, so at any instant
// (a kill, a full disk) the three names resolve to one complete set: the new one or the previous.
// Leftovers of an interrupted save (temporary files, directories `latest` does not name) are
// removed when the next run starts in that directory.

struct RunFiles {
    std::string dir, state, log, adapter, peft_dir, loss_curve, demo_model, checkpoints, latest;
    explicit RunFiles(const std::string& out_dir)
        : dir(out_dir), state(out_dir + "/state.bin"), log(out_dir + "/log.csv"), adapter(out_dir + "/adapter.bin"),
          peft_dir(out_dir + "/adapter"), loss_curve(out_dir + "/loss_curve.png"), demo_model(out_dir + "/model.bin"),
          checkpoints(out_dir + "/checkpoints"), latest(out_dir + "/latest") {}
};

// The state header of a run at optimizer step `step` (the arrays are filled by the caller).
StateHeader make_state_header(const Config& base, const TrainSettings& s, int64_t step, int64_t total_steps,
                              const Dataset& train);
// Removes what an interrupted save left in the run directory (see above). Call before training.
void clean_run_dir(const RunFiles& f);
// Writes the set for st.header.step and switches `latest` to it (see above); base_name goes into
// adapter_config.json. The PEFT copy holds exactly adapter.bin's fp16 values.
void save_checkpoint(const RunFiles& f, const TrainState& st, const uint8_t tokenizer_sha256[32],
                     const std::string& base_name);
// The step of the checkpoint -o holds now (through `latest`), or -1 when there is none.
int64_t checkpoint_step(const RunFiles& f);
