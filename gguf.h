// gguf.h — GGUF, the one-file model format of llama.cpp, Ollama and the other ggml programs:
// a streamed writer, a small checked reader (the tests read every file ./merge_adapter writes
// back through it), the Q8_0 and Q4_0 block formats, and how a Llama 2 model maps onto what
// llama.cpp's "llama" architecture expects (tensor names, q/k row order, metadata keys, the
// vocabulary). Written from the GGUF specification (ggml's docs/gguf.md, version 3); implemented
// in gguf.cpp; tested in test/cpu_gguf.cpp.
//
// File layout, little-endian:
//   u32 magic "GGUF" | u32 version (3) | u64 tensor_count | u64 kv_count
//   kv_count    x  string key | u32 value type | value          string = u64 byte length + UTF-8
//   tensor_count x string name | u32 n_dims | u64 ne[n_dims] | u32 ggml type | u64 offset
//   zero bytes up to a multiple of general.alignment (32), then the tensor data: each tensor at
//   data start + offset, offsets multiples of the alignment, zero padding between tensors.
// ne[0] is the dimension that varies fastest: a row-major (rows, cols) matrix has ne = {cols, rows}.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "model.h"

// ----------------------------------------------------------------------------------------------
// tensor types (ggml_type) and their storage

enum GgmlType : uint32_t { GGML_F32 = 0, GGML_F16 = 1, GGML_Q4_0 = 2, GGML_Q8_0 = 8, GGML_BF16 = 30 };
const char* ggml_type_name(uint32_t type);           // "f32", "q8_0", ...; "unknown" otherwise
bool ggml_type_known(uint32_t type);                 // one of the five above
int64_t ggml_block_size(uint32_t type);              // elements per block: 32 for Q8_0/Q4_0, else 1
int64_t ggml_block_bytes(uint32_t type);             // bytes per block: 34, 18, or the element size
// Bytes of a tensor of `type` with dims ne (ne[0] a multiple of the block size).
uint64_t ggml_tensor_bytes(uint32_t type, const std::vector<uint64_t>& ne);

// The two block formats (ggml's reference layout; 32 elements a block, the scale an fp16):
//   Q8_0: d, then 32 int8 q:               x[j]      = q[j] * d
//   Q4_0: d, then 16 bytes of 4-bit codes:  x[j]      = ((qs[j] & 15) - 8) * d    j < 16
//                                           x[j + 16] = ((qs[j] >> 4) - 8) * d
// Q8_0's d = max|x| / 127; Q4_0's d = -m / 8 where m is the x of largest magnitude (so m itself
// is code 0, exactly). Unlike ggml's quantizer, which rounds x * (1/d) with the fp32 d, ours
// rounds x / d16 with the fp16 d16 the file stores, so every Q8_0 value is within half a step
// (d16 / 2) of x; a Q4_0 value too, except on the side opposite m, where codes stop at +7: there
// the error is |x| - 7 |d16|, about one step (|m| = 8 |d| and d16 is d rounded to fp16).
constexpr int GGML_QK = 32;
struct BlockQ8_0 {
    uint16_t d;     // fp16 scale
    int8_t qs[32];  // (32) codes
};
struct BlockQ4_0 {
    uint16_t d;      // fp16 scale
    uint8_t qs[16];  // (16) element j in the low nibble, element j + 16 in the high nibble
};
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18, "ggml's block sizes");
void quantize_q8_0(const float* x, int64_t n, BlockQ8_0* out);  // n % 32 == 0
void dequantize_q8_0(const BlockQ8_0* in, int64_t n, float* x);
void quantize_q4_0(const float* x, int64_t n, BlockQ4_0* out);
void dequantize_q4_0(const BlockQ4_0* in, int64_t n, float* x);
// n fp32 values (a whole tensor, row-major, rows of ne[0]) to / from `type`'s bytes.
void ggml_from_f32(uint32_t type, const float* x, int64_t n, uint8_t* out);
void ggml_to_f32(uint32_t type, const uint8_t* data, int64_t n, float* x);

// ----------------------------------------------------------------------------------------------
// metadata values

enum GgufValueType : uint32_t {
    GGUF_UINT8 = 0, GGUF_INT8 = 1, GGUF_UINT16 = 2, GGUF_INT16 = 3, GGUF_UINT32 = 4, GGUF_INT32 = 5,
    GGUF_FLOAT32 = 6, GGUF_BOOL = 7, GGUF_STRING = 8, GGUF_ARRAY = 9, GGUF_UINT64 = 10, GGUF_INT64 = 11,
    GGUF_FLOAT64 = 12,
};
const char* gguf_value_type_name(uint32_t type);

// One value of any type. Only the field of its kind is used: u for unsigned types and bool, i for
// signed ones, f for floats (a float32 is kept exactly), s for a string, elem_type + array for an
// array (of any type, arrays included).
struct GgufValue {
    GgufValueType type = GGUF_UINT8;
    uint64_t u = 0;
    int64_t i = 0;
    double f = 0;
    std::string s;
    GgufValueType elem_type = GGUF_UINT8;
    std::vector<GgufValue> array;
    bool operator==(const GgufValue& o) const;
    bool operator!=(const GgufValue& o) const { return !(*this == o); }
    std::string str() const;  // short human form, for messages: 4096, "llama", [32000 x string]
};
GgufValue gguf_u32(uint32_t v);
GgufValue gguf_i32(int32_t v);
GgufValue gguf_f32(float v);
GgufValue gguf_bool(bool v);
GgufValue gguf_str(const std::string& v);
GgufValue gguf_array(GgufValueType elem_type, std::vector<GgufValue> elems);
using GgufKVs = std::vector<std::pair<std::string, GgufValue>>;  // in file order

struct GgufTensorInfo {
    std::string name;         // at most 64 bytes (ggml's limit)
    std::vector<uint64_t> ne; // 1 to 4 dims, ne[0] fastest
    uint32_t type = GGML_F32; // GgmlType
    uint64_t offset = 0;      // from the start of the data section
    uint64_t bytes() const { return ggml_tensor_bytes(type, ne); }
    int64_t numel() const;
};

// ----------------------------------------------------------------------------------------------
// writer and reader

// A GGUF file written one tensor at a time (only the tensor in hand is in memory): metadata and
// tensor infos up front (offsets are assigned here), then write() takes each tensor's bytes in
// info order. The file appears at `path` only on commit() (AtomicFile).
class GgufWriter {
   public:
    GgufWriter(const std::string& path, const GgufKVs& kvs, std::vector<GgufTensorInfo> tensors,
               uint32_t alignment = 32);
    void write(const void* data);  // the next tensor's data, tensors()[i].bytes() of it
    void commit();
    const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }

   private:
    std::vector<GgufTensorInfo> tensors_;
    uint32_t alignment_;
    size_t next_ = 0;
    AtomicFile out_;
};

// A GGUF file opened for reading. The constructor reads and checks everything but the tensor
// data: magic, version (2 or 3), every key and value (types, lengths within the file, bools 0/1,
// no duplicate keys), general.alignment, every tensor info (name, 1-4 dims, a known type, rows
// whole blocks, offset aligned, data inside the file, no overlaps, no duplicate names). A bad file
// throws InputError("<path>: <problem>").
struct GgufFile {
    std::string path;
    uint32_t version = 0;
    uint32_t alignment = 32;
    GgufKVs kvs;
    std::vector<GgufTensorInfo> tensors;
    int64_t data_start = 0;  // absolute offset of the data section
    explicit GgufFile(const std::string& path);
    const GgufValue* find(const std::string& key) const;   // nullptr when absent
    const GgufTensorInfo& tensor(const std::string& name) const;  // throws when absent
    std::vector<uint8_t> read(const GgufTensorInfo& t);    // its bytes
    std::vector<float> read_f32(const GgufTensorInfo& t);  // dequantized / widened

   private:
    InFile file_;
};

// ----------------------------------------------------------------------------------------------
// Llama 2 as llama.cpp's "llama" architecture

// general.file_type ("mostly" type of the 2-D weights): what --type f16|q8_0|q4_0 selects.
enum GgufFileType : uint32_t { GGUF_FILE_F16 = 1, GGUF_FILE_Q4_0 = 2, GGUF_FILE_Q8_0 = 7 };
const char* gguf_file_type_name(uint32_t file_type);  // "f16", "q4_0", "q8_0"

// llama.cpp's name for weight `id` of layer `layer`: token_embd.weight, blk.N.attn_q.weight, ...
std::string gguf_llama_tensor_name(int id, int layer);
// Its dims in GGUF order: {cols, rows} for a matrix, {C} for a norm.
std::vector<uint64_t> gguf_llama_tensor_ne(const Config& c, int id);
// The type each tensor gets in a file of `file_type`, following llama.cpp: norms stay F32 (its
// converter keeps every 1-D tensor F32); with f16 every matrix is F16; with q8_0 every matrix is
// Q8_0, token_embd and output too (what convert_hf_to_gguf.py --outtype q8_0 writes); with q4_0
// the seven linears and token_embd are Q4_0 and output is Q8_0 (llama-quantize keeps output at a
// higher precision, Q6_K, and falls back to Q8_0 where it cannot use a k-quant; we write no
// k-quants). A matrix whose rows are not whole blocks of 32 falls back to F16, as the converter
// does. With tied embeddings token_embd is also the output, so it gets output's type.
uint32_t gguf_llama_tensor_type(const Config& c, int id, uint32_t file_type);
// Reorders the rows of a q (n_heads = H) or k (n_heads = KV) weight from Hugging Face's order to
// llama.cpp's, as its converter does for HF Llama checkpoints: HF applies RoPE with rotate_half,
// pairing dimension i of a head with i + D/2; llama.cpp pairs 2i with 2i + 1. So within each head,
// row h*D + 2i + j (j = 0, 1) of dst is row h*D + j*D/2 + i of src. src, dst: (n_heads * D, cols).
void gguf_permute_qk_rows(const float* src, float* dst, int n_heads, int head_dim, int64_t cols);

// A sentencepiece tokenizer.model as llama.cpp's vocabulary: every piece, its score and its type
// (tokenizer.ggml.token_type: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte),
// mapped from sentencepiece's IsUnknown/IsControl/IsUnused/IsByte in that order as llama.cpp's
// converter does (which types user-defined only the added tokens of tokenizer_config.json; a
// tokenizer.model alone has none, so no piece is 4 here either).
struct LlamaVocab {
    std::vector<std::string> tokens;  // (V) pieces, "▁" for a space as sentencepiece spells them
    std::vector<float> scores;        // (V)
    std::vector<int32_t> types;       // (V)
    int32_t bos = -1, eos = -1, unk = -1, pad = -1;  // -1: the tokenizer has none
};
LlamaVocab load_llama_vocab(const std::string& tokenizer_path);  // throws InputError naming it

// Every metadata key llama.cpp reads for a Llama 2 model, in the order written: general.*
// (architecture "llama", name, file_type, quantization_version 2, alignment 32), llama.* (vocab
// and context length, embedding/feed-forward length, block count, heads, kv heads, rope dimension
// count and base, RMSNorm epsilon; key/value length only when head_dim != dim / heads), and
// tokenizer.* (model "llama", pre "default", tokens, scores, token types, bos/eos/unk (and pad
// when there is one) ids, add_bos true, add_eos false, the Llama 2 chat template of chat.h).
GgufKVs gguf_llama_metadata(const Config& c, uint32_t file_type, const std::string& name, const LlamaVocab& vocab);
