// model.h — the project's shared vocabulary: the Llama 2 config and its presets, every on-disk
// header (model, data, adapter; the train state's is in checkpoint.h), and the weight and LoRA
// tensor layouts. CPU code (g++) and GPU code (nvcc) both include it; the file readers and writers
// live in model.cpp. Errors, random numbers, number conversion and file I/O are in common.h.
//
// Conventions (see ../shared/DESIGN.md):
// - Weights follow Hugging Face's layout: a linear layer's weight is (out, in), row-major; q/k rows
//   are in HF's permuted order, so RoPE is HF's rotate_half.
// - Every binary file is: a fixed-size typed header (magic, version, ...) then raw little-endian
//   arrays in a fixed order. Readers check magic, version, the header's own consistency and the
//   exact file size, and throw InputError("<path>: <problem>") when anything is off.
// - Bad input throws InputError; every main() catches it, prints one line and exits 1.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common.h"

// ----------------------------------------------------------------------------------------------
// the model's configuration (one struct, stored verbatim in model and adapter headers)

struct Config {
    int32_t dim;             // C: hidden_size
    int32_t hidden_dim;      // F: intermediate_size of the SwiGLU MLP
    int32_t n_layers;        // L
    int32_t n_heads;         // H: query heads
    int32_t n_kv_heads;      // KV: key/value heads (KV < H is grouped-query attention)
    int32_t head_dim;        // D: usually C / H
    int32_t vocab_size;      // V
    int32_t max_seq_len;     // max_position_embeddings
    int32_t bos_id;
    int32_t eos_id;
    int32_t tie_embeddings;  // 1: the LM head is the embedding matrix (no lm_head tensor stored)
    int32_t reserved0;
    float rope_theta;        // RoPE base (10000 for Llama 2)
    float norm_eps;          // RMSNorm epsilon (1e-5 for Llama 2, read from config.json)
};
static_assert(sizeof(Config) == 56, "Config is stored verbatim on disk");

// Throws InputError("<what>: ...") if the numbers cannot describe a Llama model.
void validate_config(const Config& c, const char* what);
std::string config_summary(const Config& c);  // "L=32 C=4096 F=11008 H=32 KV=32 D=128 V=32000"
bool same_architecture(const Config& a, const Config& b);
// A Llama config of the given shape with Llama 2's other settings: head_dim = dim / heads, context
// 4096, bos 1, eos 2, RoPE theta 10000, RMSNorm eps 1e-5, an untied LM head. Every config the
// project writes by hand starts here (the presets, the demo, the tests), then sets what differs.
Config llama2_config(int layers, int dim, int hidden, int heads, int kv_heads, int vocab);
// Llama 2's published shapes: "7b", "13b", "70b" (GQA, 8 kv heads), or a custom shape
// "layers=4,dim=1024,hidden=2752,heads=8,kv=2[,vocab=32000]"; throws InputError otherwise.
Config llama2_preset(const std::string& name);

// ----------------------------------------------------------------------------------------------
// frozen base weights: the tensors of a Llama model, in file order (= memory order).
// Per-layer tensors of one kind are stacked over layers, llm.c style, so a layer's slice is
// base + l * (size of one layer's tensor).

enum WeightId : int {
    W_EMBED,       // (V, C)          model.embed_tokens.weight
    W_ATTN_NORM,   // (L, C)          model.layers.{l}.input_layernorm.weight
    W_Q,           // (L, H*D, C)     model.layers.{l}.self_attn.q_proj.weight
    W_K,           // (L, KV*D, C)    model.layers.{l}.self_attn.k_proj.weight
    W_V,           // (L, KV*D, C)    model.layers.{l}.self_attn.v_proj.weight
    W_O,           // (L, C, H*D)     model.layers.{l}.self_attn.o_proj.weight
    W_MLP_NORM,    // (L, C)          model.layers.{l}.post_attention_layernorm.weight
    W_GATE,        // (L, F, C)       model.layers.{l}.mlp.gate_proj.weight
    W_UP,          // (L, F, C)       model.layers.{l}.mlp.up_proj.weight
    W_DOWN,        // (L, C, F)       model.layers.{l}.mlp.down_proj.weight
    W_FINAL_NORM,  // (C)             model.norm.weight
    W_LM_HEAD,     // (V, C)          lm_head.weight (absent when tie_embeddings)
    NUM_WEIGHTS
};

struct WeightInfo {
    bool per_layer;   // stacked over L layers
    int64_t rows;     // per layer: out features (1 for a norm vector)
    int64_t cols;     // per layer: in features (C for a norm vector)
    int64_t numel() const { return rows * cols; }  // per layer
};
WeightInfo weight_info(const Config& c, int id);
// HF tensor name for weight `id` of layer `layer` (layer ignored for global tensors).
std::string weight_hf_name(int id, int layer);
// number of elements stored for weight `id` (all layers); 0 for a tied lm_head
int64_t weight_numel(const Config& c, int id);
int64_t total_weight_numel(const Config& c);

// Named pointers into one buffer holding all base weights in file order.
template <typename T>
struct Weights {
    T* embed;       // (V, C)
    T* attn_norm;   // (L, C)
    T* wq;          // (L, H*D, C)
    T* wk;          // (L, KV*D, C)
    T* wv;          // (L, KV*D, C)
    T* wo;          // (L, C, H*D)
    T* mlp_norm;    // (L, C)
    T* w_gate;      // (L, F, C)
    T* w_up;        // (L, F, C)
    T* w_down;      // (L, C, F)
    T* final_norm;  // (C)
    T* lm_head;     // (V, C); == embed when tied
    T** ptr(int id) { return &embed + id; }
    T* const* ptr(int id) const { return &embed + id; }
};
static_assert(sizeof(Weights<float>) == NUM_WEIGHTS * sizeof(float*), "one pointer per WeightId");

template <typename T>
Weights<T> carve_weights(const Config& c, T* base) {
    Weights<T> w;
    T* p = base;
    for (int id = 0; id < NUM_WEIGHTS; id++) {
        *w.ptr(id) = p;
        p += weight_numel(c, id);
    }
    if (c.tie_embeddings) w.lm_head = w.embed;
    return w;
}

// ----------------------------------------------------------------------------------------------
// LoRA: a low-rank delta on each of the seven linear layers.
// y = x W^T + (alpha / r) * (dropout(x) A^T) B^T,  A: (r, in), B: (out, r)  (PEFT's shapes)

enum LoraTarget : int { LT_Q, LT_K, LT_V, LT_O, LT_GATE, LT_UP, LT_DOWN, NUM_LORA_TARGETS };
inline const char* lora_target_name(int t) {  // PEFT's module names
    static const char* names[NUM_LORA_TARGETS] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                  "gate_proj", "up_proj", "down_proj"};
    return names[t];
}
inline const char* lora_target_parent(int t) { return t <= LT_O ? "self_attn" : "mlp"; }
inline int lora_target_weight(int t) {  // the frozen weight a target adapts
    static const int ids[NUM_LORA_TARGETS] = {W_Q, W_K, W_V, W_O, W_GATE, W_UP, W_DOWN};
    return ids[t];
}
inline int64_t lora_in_dim(const Config& c, int t) { return weight_info(c, lora_target_weight(t)).cols; }
inline int64_t lora_out_dim(const Config& c, int t) { return weight_info(c, lora_target_weight(t)).rows; }
constexpr uint32_t LORA_ALL_TARGETS = (1u << NUM_LORA_TARGETS) - 1;
// "q,k,v,o,gate,up,down" (short or PEFT names) -> bit mask; throws InputError on an unknown name
uint32_t parse_lora_targets(const std::string& list);
std::string lora_targets_string(uint32_t mask);  // "q,k,v,o,gate,up,down"

// LoRA dropout as a pure function of (seed, mask id, element index): the forward and the backward
// (and the CPU and the GPU) agree on the mask without storing it. The mask id names the
// (layer, target). dropout_key is the per-(seed, mask id) part, for kernels that hoist it out of
// their loops; dropout_keep(seed, id, idx, p) == dropout_keep_keyed(dropout_key(seed, id), idx, p).
// One 64-bit hash decides four neighbouring elements (idx / 4), 16 bits each, kept when the bits are
// at least p * 65536: hashing every element alone was ~35 integer instructions an element, three
// times a step (u, dA, dx), and made the LoRA kernels issue-bound. The drop probability is p to
// within 2^-17 (p = 0.05 drops 3277/65536 = 0.050003); the kept values are scaled by 1 / (1 - p).
HOST_DEVICE inline uint64_t dropout_key(uint64_t seed, uint64_t mask_id) {
    return splitmix64(seed ^ (mask_id * 0x9e3779b97f4a7c15ull));
}
HOST_DEVICE inline uint32_t dropout_threshold(float p) { return (uint32_t)(p * 65536.0f + 0.5f); }
// bit e (0..3) set: element 4 * group + e is kept
HOST_DEVICE inline uint32_t dropout_keep4(uint64_t key, uint64_t group, uint32_t threshold) {
    const uint64_t h = splitmix64(key + group);
    uint32_t bits = 0;
    for (int e = 0; e < 4; e++) bits |= (uint32_t)(((h >> (16 * e)) & 0xffffu) >= threshold) << e;
    return bits;
}
HOST_DEVICE inline bool dropout_keep_keyed(uint64_t key, uint64_t idx, float p) {
    return (dropout_keep4(key, idx / 4, dropout_threshold(p)) >> (idx % 4)) & 1u;
}
HOST_DEVICE inline bool dropout_keep(uint64_t seed, uint64_t mask_id, uint64_t idx, float p) {
    return dropout_keep_keyed(dropout_key(seed, mask_id), idx, p);
}

struct LoraConfig {
    int32_t rank;          // r
    float alpha;           // lora_alpha; the delta is scaled by alpha / r
    float dropout;         // dropout probability on the LoRA input
    uint32_t target_mask;  // bit t set: target t carries a LoRA delta
    float scaling() const { return alpha / (float)rank; }
    bool has(int t) const { return (target_mask >> t) & 1u; }
};
static_assert(sizeof(LoraConfig) == 16, "LoraConfig is stored verbatim on disk");
void validate_lora_config(const LoraConfig& lc, const char* what);

// LoRA parameters, in file order: for each target t (in LoraTarget order, enabled ones only)
// A_t (L, r, in_t) then B_t (L, out_t, r). Gradients and AdamW moments use the same layout,
// so the optimizer is one flat loop.
struct LoraLayout {
    int64_t a_offset[NUM_LORA_TARGETS];  // element offset of A_t, -1 when disabled
    int64_t b_offset[NUM_LORA_TARGETS];
    int64_t total;                        // elements in all
};
LoraLayout lora_layout(const Config& c, const LoraConfig& lc);
// PEFT's tensor name, e.g. base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight
std::string lora_peft_name(int t, int layer, bool is_b);

// ----------------------------------------------------------------------------------------------
// file formats. All headers are 256 bytes: typed fields, then zero padding (reserved for later
// versions; readers refuse non-zero reserved bytes). Arrays follow the header back to back. Every
// header carries `checksum`, over the header and everything after it (common.h: file_checksum),
// written by PayloadWriter below and checked by every reader once it has read the payload.

constexpr uint32_t fourcc(const char s[5]) {
    return (uint32_t)s[0] | (uint32_t)s[1] << 8 | (uint32_t)s[2] << 16 | (uint32_t)s[3] << 24;
}

// Model file (export_hf): header, then every WeightId in order (lm_head absent when tied), each
// stacked over layers. With LINEAR_DENSE every tensor is stored in `dtype`. With LINEAR_NF4 the
// seven linear weights (W_Q..W_DOWN) are stored pre-quantized: for each of them, L NF4 records
// (quant.h: Nf4Layout) of nf4_layout(rows * cols).bytes back to back, the same bytes the GPU holds;
// embeddings, norms and the LM head stay in `dtype`, which is then f16 or bf16 (as bitsandbytes +
// transformers keep them). model_weight_bytes() gives each weight's size in the file.
constexpr uint32_t MODEL_MAGIC = fourcc("L2MD");
constexpr uint32_t MODEL_VERSION = 2;  // 2: payload checksum
enum LinearFormat : int32_t { LINEAR_DENSE = 0, LINEAR_NF4 = 1 };
struct ModelHeader {
    uint32_t magic;
    uint32_t version;
    Config config;
    int32_t dtype;                 // DType of every stored tensor (of the non-linear ones under NF4)
    int32_t linear_format;         // LinearFormat of W_Q..W_DOWN (0 in files made before it existed)
    uint8_t tokenizer_sha256[32];  // of the tokenizer.model checked at export; zeros if none
    uint64_t checksum;         // file_checksum of the header and every byte after it
    uint8_t reserved[256 - 8 - sizeof(Config) - 4 - 4 - 32 - 8];
};
static_assert(sizeof(ModelHeader) == 256, "header is 256 bytes");
static_assert(offsetof(ModelHeader, checksum) % 8 == 0, "no padding before the checksum");
// A header for `c` with every tensor stored as `dtype` (LINEAR_DENSE, no tokenizer hash), zeroed
// first so the reserved bytes (and the padding) on disk are zeros.
inline ModelHeader make_model_header(const Config& c, int32_t dtype) {
    ModelHeader h;
    memset(&h, 0, sizeof(h));
    h.magic = MODEL_MAGIC;
    h.version = MODEL_VERSION;
    h.config = c;
    h.dtype = dtype;
    h.linear_format = LINEAR_DENSE;
    return h;
}

// Data file (prepare_lima): header, tokens int32[n_tokens], loss_mask uint8[n_tokens],
// conv_offsets int64[n_conversations + 1] (conversation i is tokens[off[i], off[i+1])).
// loss_mask[j] = 1 when token j is part of an assistant answer (or its </s>): the model is
// trained to predict it from the tokens before it.
constexpr uint32_t DATA_MAGIC = fourcc("L2DT");
constexpr uint32_t DATA_VERSION = 2;  // 2: payload checksum
enum ChatTemplate : int32_t { TEMPLATE_LLAMA2 = 0, TEMPLATE_PLAIN = 1 };
struct DataHeader {
    uint32_t magic;
    uint32_t version;
    int64_t n_tokens;
    int64_t n_conversations;
    int64_t n_turns;               // user/assistant pairs kept
    int64_t n_loss_tokens;         // sum of loss_mask
    int64_t n_truncated;           // conversations shortened to max_len
    int64_t n_dropped;             // conversations left out (not even one turn fits max_len)
    int32_t vocab_size;            // of the tokenizer
    int32_t bos_id;
    int32_t eos_id;
    int32_t max_len;               // the --max-len the file was made with
    int32_t chat_template;         // ChatTemplate
    int32_t reserved0;
    uint8_t tokenizer_sha256[32];  // of tokenizer.model
    uint64_t checksum;         // file_checksum of the header, tokens, loss_mask and conv_offsets
    uint8_t reserved[256 - 8 - 6 * 8 - 6 * 4 - 32 - 8];
};
static_assert(sizeof(DataHeader) == 256, "header is 256 bytes");

// Adapter file: header, then the LoRA tensors in LoraLayout order, fp16.
constexpr uint32_t ADAPTER_MAGIC = fourcc("L2AD");
constexpr uint32_t ADAPTER_VERSION = 2;  // 2: payload checksum, trained_on
// What the frozen base looked like while the adapter trained: a merge must fold it into the same
// weights (an NF4-trained adapter into the NF4-dequantized base).
enum TrainedOn : int32_t { TRAINED_ON_UNKNOWN = -1, TRAINED_ON_BF16 = 0, TRAINED_ON_NF4 = 1 };
struct AdapterHeader {
    uint32_t magic;
    uint32_t version;
    Config base;                   // the base model it was trained on
    LoraConfig lora;
    int32_t dtype;                 // DT_F16
    uint8_t tokenizer_sha256[32];  // of the data's tokenizer; zeros if unknown
    int32_t trained_on;            // TrainedOn
    uint64_t checksum;         // file_checksum of the header and the fp16 tensors
    uint8_t reserved[256 - 8 - sizeof(Config) - sizeof(LoraConfig) - 4 - 32 - 4 - 8];
};
static_assert(sizeof(AdapterHeader) == 256, "header is 256 bytes");
static_assert(offsetof(AdapterHeader, checksum) % 8 == 0 && offsetof(DataHeader, checksum) % 8 == 0,
              "no padding before the checksums");

// Writes header + payload atomically: the payload is hashed as it streams, and commit() puts the
// file's checksum into the header before the header goes to the front and the file into place.
struct PayloadWriter {
    AtomicFile file;
    PayloadHash hash;
    size_t header_bytes;
    PayloadWriter(const std::string& path, size_t header_bytes);  // reserves the header's bytes
    void write(const void* data, size_t bytes);                   // payload
    template <typename Header>
    void commit(Header& h) {
        static_assert(sizeof(Header) == 256, "a file header");
        ASSERT(sizeof(h) == header_bytes, "the header reserved at the start");
        h.checksum = file_checksum(&h, sizeof(h), offsetof(Header, checksum), hash.digest());
        file.write_at(0, &h, sizeof(h));
        file.commit();
    }
};

// ----------------------------------------------------------------------------------------------
// readers and writers (model.cpp). All throw InputError naming the file on bad input.

// model file
// The seven linear weights W_Q..W_DOWN (the ones LoRA adapts and NF4 quantizes).
inline bool weight_is_linear(int id) { return id >= W_Q && id <= W_DOWN && id != W_MLP_NORM; }
// Bytes weight `id` (all layers) takes in a model file with header h; 0 for a tied lm_head.
int64_t model_weight_bytes(const ModelHeader& h, int id);
// Checks one NF4 record of weight `tensor` (an HF name) read from `path`: offset and second-level
// scales finite, scales >= 0 (nf4_from_record's rule; any code byte is valid). Throws
// "path: tensor: corrupt NF4 record (...)". Cheap: it does not touch the packed codes.
void check_nf4_record(const uint8_t* record, int64_t numel, const std::string& path, const std::string& tensor);
// checks magic, version, config, dtype, linear_format, reserved bytes and the exact file size (not
// the payload: a reader that streams the weights checks them and their checksum as it goes)
ModelHeader read_model_header(InFile& in);
// Throws "path: tensor: element i is NaN or Inf" when n stored values of dtype hold one.
void check_dense_weights(const void* data, int32_t dtype, int64_t n, const std::string& path, const std::string& tensor);
// Throws "path: checksum mismatch" unless h and the hash of the payload streamed after it agree with
// h.checksum (call after streaming every byte).
void check_model_payload(const ModelHeader& h, uint64_t payload_hash, const std::string& path);
// Writes a dense model file: header h (its checksum filled in) and the weights, already in
// h.dtype, file order (the demo's base model; tests).
void write_model(const std::string& path, ModelHeader h, const void* weights, size_t bytes);
// Where one layer's slice of weight `id` lies in a model file with header h (layer 0 for the
// global tensors), and its size: a (rows, cols) array of h.dtype, or one NF4 record.
int64_t model_tensor_offset(const ModelHeader& h, int id, int layer);
int64_t model_tensor_bytes(const ModelHeader& h, int id);
// Reads that slice's bytes as stored (model_tensor_bytes of them) into `raw`.
// With `hash`, the bytes also go through it (tensors read in file order stream the whole payload).
void read_model_tensor_raw(InFile& in, const ModelHeader& h, int id, int layer, std::vector<uint8_t>& raw,
                           PayloadHash* hash = nullptr);
// Reads it as fp32 (rows * cols values), NF4 records checked and dequantized to bf16 first, dense
// values checked finite, as load_model_f32 does. `raw` is scratch (reused between calls).
void read_model_tensor_f32(InFile& in, const ModelHeader& h, int id, int layer, float* dst, std::vector<uint8_t>& raw,
                           PayloadHash* hash = nullptr);
// Reads the whole file once to check its checksum (for readers that take tensors out of order).
void verify_model_file(const std::string& path);
// Load all weights of a model file as fp32 (CPU reference). Returns the header. NF4 linears are
// dequantized to bf16 (nf4_dequantize_dq_cpu), then widened: the numbers the GPU computes with.
ModelHeader load_model_f32(const std::string& path, std::vector<float>& weights);

// data file
struct Dataset {
    DataHeader header = {};  // zero until read or filled in
    std::vector<int32_t> tokens;         // (n_tokens)
    std::vector<uint8_t> loss_mask;      // (n_tokens)
    std::vector<int64_t> conv_offsets;   // (n_conversations + 1)
    int64_t conv_len(int64_t i) const { return conv_offsets[i + 1] - conv_offsets[i]; }
};
void write_dataset(const std::string& path, const Dataset& d);
Dataset read_dataset(const std::string& path);
// Throws if a data file cannot be used with a model (vocab, special ids, tokenizer hash).
void check_data_matches_model(const DataHeader& d, const char* data_path, const ModelHeader& m,
                              const char* model_path);

// adapter file: LoRA parameters as fp32 in LoraLayout order (stored as fp16)
struct Adapter {
    Config base;
    LoraConfig lora;
    int32_t trained_on = TRAINED_ON_UNKNOWN;
    uint8_t tokenizer_sha256[32] = {};
    std::vector<float> params;  // (lora_layout(base, lora).total)
};
void write_adapter(const std::string& path, const Adapter& a);
Adapter read_adapter(const std::string& path);
void check_adapter_matches_model(const Adapter& a, const char* adapter_path, const Config& model,
                                 const char* model_path);
