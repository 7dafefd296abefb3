// hf.h — everything that speaks Hugging Face's formats: safetensors files (read and write),
// config.json of a Llama checkpoint (old and new forms), a whole checkpoint (one file or shards),
// and PEFT LoRA adapters (adapter_config.json + adapter_model.safetensors).
// Used by export_hf, convert_adapter, the trainer's PEFT export and the tests.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model.h"

// ----------------------------------------------------------------------------------------------
// safetensors: 8-byte little-endian header length N, N bytes of JSON
// {"name": {"dtype": "F16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
// then the data; offsets are relative to the end of the header.

struct StTensor {
    std::string name;
    std::string dtype;           // "F32", "F16", "BF16", "I32", "U8", ...
    std::vector<int64_t> shape;
    int64_t begin = 0, end = 0;  // absolute byte offsets in the file
    int64_t numel() const;
};

// Bytes per element of a safetensors dtype string; 0 if unknown.
size_t st_dtype_size(const std::string& dtype);
// "F32"/"F16"/"BF16" -> DType; -1 for anything else
int st_dtype_to_dtype(const std::string& dtype);
const char* dtype_to_st(int32_t d);

// An opened safetensors file. The constructor checks the whole header against the file: JSON,
// dtypes, shapes (overflow-checked), that every tensor's byte range has exactly the size its shape
// implies, and that the ranges tile the data section with no gap, overlap or trailing bytes (as the
// reference implementation requires). Tensors are read on demand (nothing is held in memory).
struct SafeTensors {
    std::string path;
    InFile file;
    int64_t data_start = 0;
    std::map<std::string, StTensor> tensors;
    std::map<std::string, std::string> metadata;

    explicit SafeTensors(const std::string& path);
    bool has(const std::string& name) const { return tensors.count(name) != 0; }
    const StTensor& get(const std::string& name) const;  // throws "path: no tensor named X"
    void read_raw(const StTensor& t, void* dst);
    // F32/F16/BF16 tensor as fp32; `shape` (if non-empty) must match
    std::vector<float> read_f32(const std::string& name, const std::vector<int64_t>& shape = {});
    std::vector<int32_t> read_i32(const std::string& name);  // I32 or I64 tensor
    std::vector<uint8_t> read_u8(const std::string& name);
};

struct StWrite {
    std::string name;
    std::string dtype;
    std::vector<int64_t> shape;
    const void* data;
};
// Writes a safetensors file atomically (temporary name, then rename).
void write_safetensors(const std::string& path, const std::vector<StWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// What a streamed safetensors file will hold: a tensor's name, dtype and shape (no data yet).
struct StSpec {
    std::string name;
    std::string dtype;
    std::vector<int64_t> shape;
    int64_t bytes() const;  // numel * element size
};
// A safetensors file written one tensor at a time, so nothing but the tensor in hand is in
// memory (a 70B checkpoint is 138 GB): the header is made from the specs up front, then write()
// takes each tensor's bytes in spec order. Atomic like write_safetensors: the file appears at
// `path` only on commit(), after every tensor was written.
class SafeTensorsWriter {
   public:
    SafeTensorsWriter(const std::string& path, std::vector<StSpec> specs,
                      const std::map<std::string, std::string>& metadata = {});
    void write(const void* data);  // the next tensor's data, specs[i].bytes() of it
    void commit();
    const std::string& path() const { return out_.path; }

   private:
    std::vector<StSpec> specs_;
    size_t next_ = 0;
    AtomicFile out_;
};

std::string shape_str(const std::vector<int64_t>& s);  // "[4096, 11008]"

// ----------------------------------------------------------------------------------------------
// a Llama checkpoint directory: config.json + model.safetensors or model.safetensors.index.json

// Reads a Llama config.json (both forms). `dtype` receives the checkpoint's declared dtype
// (DT_F16/DT_BF16/DT_F32), or -1 when the file names none.
Config parse_hf_config(const std::string& config_json_path, int32_t* dtype);

// The config.json transformers reads for LlamaForCausalLM of config `c`, tensors in `dtype`
// (DT_F32/DT_F16/DT_BF16): both forms at once (torch_dtype and dtype; rope_theta at the top level
// and in rope_parameters), so that old and new transformers (and parse_hf_config) read it alike.
std::string hf_config_json(const Config& c, int32_t dtype);
// model.safetensors.index.json for a sharded checkpoint: "metadata": {"total_size": bytes of all
// tensors}, "weight_map": tensor name -> file name; file_of[i] is the file of specs[i].
std::string hf_shard_index_json(const std::vector<StSpec>& specs, const std::vector<std::string>& file_of);
// HF's shard names: "model-00001-of-00003.safetensors"; one shard is plain "model.safetensors".
std::string hf_shard_name(int index, int count);

struct HfCheckpoint {
    std::string dir;
    Config config;
    int32_t dtype = -1;  // declared in config.json (-1: not declared)
    std::vector<std::unique_ptr<SafeTensors>> shards;
    std::map<std::string, std::pair<SafeTensors*, const StTensor*>> index;  // tensor name -> where

    // Opens and validates: every tensor a Llama of this config needs is present with the right
    // shape and a float dtype; nothing unexpected is present (rotary_emb.inv_freq is ignored).
    explicit HfCheckpoint(const std::string& dir);
    // Read weight `id` of layer `layer` converted to fp32 (rows*cols elements).
    void read_f32(int id, int layer, float* dst);
    // Read it converted to `dtype` (DT_F32/DT_F16/DT_BF16), exact when the dtypes agree.
    void read_as(int id, int layer, int32_t dtype, void* dst);
    // All weights as fp32 in file order (for the CPU reference and the tests).
    std::vector<float> load_all_f32();
    // Every file of the checkpoint that is read (config.json, the index, the shards), for IoPaths.
    std::vector<std::string> files() const;
};

// ----------------------------------------------------------------------------------------------
// PEFT adapters

// Reads a PEFT LoRA adapter directory made for a Llama with config `base`. Supports plain LoRA
// (no DoRA, no rsLoRA, no per-layer rank/alpha patterns, no biases); anything else is an error.
Adapter read_peft_adapter(const std::string& dir, const Config& base);
// Writes adapter_config.json + adapter_model.safetensors into `dir` (created if missing), LoRA
// tensors in `dtype` (DT_F32 or DT_F16). Refuses NaN/Inf and, for fp16, values beyond its range,
// before anything is created. An empty base name is written as null (PEFT's default).
void write_peft_adapter(const std::string& dir, const Adapter& a, int32_t dtype,
                        const std::string& base_model_name_or_path);
