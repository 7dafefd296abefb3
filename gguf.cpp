// gguf.cpp — the GGUF writer and reader, Q8_0/Q4_0 blocks and the Llama 2 -> llama.cpp mapping
// declared in gguf.h. Written from the GGUF specification; no ggml code. Linked into
// ./merge_adapter and ./test_cpu (it uses sentencepiece for the vocabulary).
#include "gguf.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <map>
#include <set>

#include "chat.h"

static constexpr uint32_t GGUF_MAGIC = 0x46554747u;  // the bytes "GGUF" read as a little-endian u32
static constexpr uint32_t GGUF_VERSION = 3;

// ----------------------------------------------------------------------------------------------
// tensor types

const char* ggml_type_name(uint32_t t) {
    switch (t) {
        case GGML_F32: return "f32";
        case GGML_F16: return "f16";
        case GGML_BF16: return "bf16";
        case GGML_Q8_0: return "q8_0";
        case GGML_Q4_0: return "q4_0";
    }
    return "unknown";
}

bool ggml_type_known(uint32_t t) { return std::string(ggml_type_name(t)) != "unknown"; }

int64_t ggml_block_size(uint32_t t) { return t == GGML_Q8_0 || t == GGML_Q4_0 ? GGML_QK : 1; }

int64_t ggml_block_bytes(uint32_t t) {
    switch (t) {
        case GGML_F32: return 4;
        case GGML_F16:
        case GGML_BF16: return 2;
        case GGML_Q8_0: return (int64_t)sizeof(BlockQ8_0);
        case GGML_Q4_0: return (int64_t)sizeof(BlockQ4_0);
    }
    ASSERT(false, "known ggml type");
    return 0;
}

uint64_t ggml_tensor_bytes(uint32_t type, const std::vector<uint64_t>& ne) {
    uint64_t n = 1;
    for (uint64_t d : ne) n *= d;
    return n / (uint64_t)ggml_block_size(type) * (uint64_t)ggml_block_bytes(type);
}

int64_t GgufTensorInfo::numel() const {
    int64_t n = 1;
    for (uint64_t d : ne) n *= (int64_t)d;
    return n;
}

// ----------------------------------------------------------------------------------------------
// Q8_0 and Q4_0 (layouts in gguf.h)

void quantize_q8_0(const float* x, int64_t n, BlockQ8_0* out) {
    ASSERT(n % GGML_QK == 0, "whole blocks");
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < n / GGML_QK; b++) {
        const float* xb = x + b * GGML_QK;  // (32)
        float amax = 0.0f;
        for (int j = 0; j < GGML_QK; j++) amax = std::max(amax, std::fabs(xb[j]));
        out[b].d = f32_to_f16(amax / 127.0f);
        const float d = f16_to_f32(out[b].d);  // the scale the file holds: round with it
        for (int j = 0; j < GGML_QK; j++) {
            const float q = d != 0.0f ? roundf(xb[j] / d) : 0.0f;  // half away from zero, as ggml
            out[b].qs[j] = (int8_t)std::min(127.0f, std::max(-127.0f, q));
        }
    }
}

void dequantize_q8_0(const BlockQ8_0* in, int64_t n, float* x) {
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < n / GGML_QK; b++) {
        const float d = f16_to_f32(in[b].d);
        for (int j = 0; j < GGML_QK; j++) x[b * GGML_QK + j] = (float)in[b].qs[j] * d;
    }
}

void quantize_q4_0(const float* x, int64_t n, BlockQ4_0* out) {
    ASSERT(n % GGML_QK == 0, "whole blocks");
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < n / GGML_QK; b++) {
        const float* xb = x + b * GGML_QK;  // (32)
        float amax = 0.0f, m = 0.0f;        // m: the value of largest magnitude, its sign kept
        for (int j = 0; j < GGML_QK; j++)
            if (std::fabs(xb[j]) > amax) amax = std::fabs(xb[j]), m = xb[j];
        out[b].d = f32_to_f16(m / -8.0f);
        const float d = f16_to_f32(out[b].d);
        auto code = [&](float v) {  // nearest of -8 .. 7 steps, + 8
            const float c = d != 0.0f ? v / d + 8.5f : 8.5f;
            return (uint8_t)std::min(15.0f, std::max(0.0f, std::floor(c)));
        };
        for (int j = 0; j < GGML_QK / 2; j++) out[b].qs[j] = (uint8_t)(code(xb[j]) | code(xb[j + GGML_QK / 2]) << 4);
    }
}

void dequantize_q4_0(const BlockQ4_0* in, int64_t n, float* x) {
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < n / GGML_QK; b++) {
        const float d = f16_to_f32(in[b].d);
        for (int j = 0; j < GGML_QK / 2; j++) {
            x[b * GGML_QK + j] = (float)((in[b].qs[j] & 15) - 8) * d;
            x[b * GGML_QK + j + GGML_QK / 2] = (float)((in[b].qs[j] >> 4) - 8) * d;
        }
    }
}

void ggml_from_f32(uint32_t type, const float* x, int64_t n, uint8_t* out) {
    switch (type) {
        case GGML_F32: convert_from_f32(out, x, DT_F32, (size_t)n); return;
        case GGML_F16: convert_from_f32(out, x, DT_F16, (size_t)n); return;
        case GGML_BF16: convert_from_f32(out, x, DT_BF16, (size_t)n); return;
        case GGML_Q8_0: quantize_q8_0(x, n, (BlockQ8_0*)out); return;
        case GGML_Q4_0: quantize_q4_0(x, n, (BlockQ4_0*)out); return;
    }
    ASSERT(false, "known ggml type");
}

void ggml_to_f32(uint32_t type, const uint8_t* data, int64_t n, float* x) {
    switch (type) {
        case GGML_F32: convert_to_f32(x, data, DT_F32, (size_t)n); return;
        case GGML_F16: convert_to_f32(x, data, DT_F16, (size_t)n); return;
        case GGML_BF16: convert_to_f32(x, data, DT_BF16, (size_t)n); return;
        case GGML_Q8_0: dequantize_q8_0((const BlockQ8_0*)data, n, x); return;
        case GGML_Q4_0: dequantize_q4_0((const BlockQ4_0*)data, n, x); return;
    }
    ASSERT(false, "known ggml type");
}

// ----------------------------------------------------------------------------------------------
// values

const char* gguf_value_type_name(uint32_t t) {
    static const char* names[] = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
                                  "bool", "string", "array", "uint64", "int64", "float64"};
    return t <= GGUF_FLOAT64 ? names[t] : "unknown";
}

// bytes of a fixed-size scalar type; 0 for string and array (and unknown types)
static size_t gguf_scalar_size(uint32_t t) {
    switch (t) {
        case GGUF_UINT8: case GGUF_INT8: case GGUF_BOOL: return 1;
        case GGUF_UINT16: case GGUF_INT16: return 2;
        case GGUF_UINT32: case GGUF_INT32: case GGUF_FLOAT32: return 4;
        case GGUF_UINT64: case GGUF_INT64: case GGUF_FLOAT64: return 8;
    }
    return 0;
}

static bool gguf_is_signed(uint32_t t) { return t == GGUF_INT8 || t == GGUF_INT16 || t == GGUF_INT32 || t == GGUF_INT64; }

bool GgufValue::operator==(const GgufValue& o) const {
    if (type != o.type) return false;
    if (type == GGUF_STRING) return s == o.s;
    if (type == GGUF_ARRAY) return elem_type == o.elem_type && array == o.array;
    if (type == GGUF_FLOAT32 || type == GGUF_FLOAT64) return memcmp(&f, &o.f, sizeof(f)) == 0;  // NaN == NaN
    return gguf_is_signed(type) ? i == o.i : u == o.u;
}

std::string GgufValue::str() const {
    char buf[64];
    switch (type) {
        case GGUF_STRING: return "\"" + (s.size() > 40 ? s.substr(0, 40) + "..." : s) + "\"";
        case GGUF_ARRAY: return "[" + std::to_string(array.size()) + " x " + gguf_value_type_name(elem_type) + "]";
        case GGUF_BOOL: return u ? "true" : "false";
        case GGUF_FLOAT32:
        case GGUF_FLOAT64: snprintf(buf, sizeof(buf), "%.9g", f); return buf;
        default: return gguf_is_signed(type) ? std::to_string(i) : std::to_string(u);
    }
}

GgufValue gguf_u32(uint32_t v) { GgufValue x; x.type = GGUF_UINT32; x.u = v; return x; }
GgufValue gguf_i32(int32_t v) { GgufValue x; x.type = GGUF_INT32; x.i = v; return x; }
GgufValue gguf_f32(float v) { GgufValue x; x.type = GGUF_FLOAT32; x.f = v; return x; }
GgufValue gguf_bool(bool v) { GgufValue x; x.type = GGUF_BOOL; x.u = v ? 1 : 0; return x; }
GgufValue gguf_str(const std::string& v) { GgufValue x; x.type = GGUF_STRING; x.s = v; return x; }
GgufValue gguf_array(GgufValueType elem_type, std::vector<GgufValue> elems) {
    GgufValue x;
    x.type = GGUF_ARRAY;
    x.elem_type = elem_type;
    for (const GgufValue& e : elems) ASSERT(e.type == elem_type, "array elements of one type");
    x.array = std::move(elems);
    return x;
}

// ----------------------------------------------------------------------------------------------
// writer

// Appends the little-endian encoding of a value (without its type tag) to `out`.
static void put_bytes(std::string& out, const void* p, size_t n) { out.append((const char*)p, n); }
static void put_u32(std::string& out, uint32_t v) { put_bytes(out, &v, 4); }
static void put_u64(std::string& out, uint64_t v) { put_bytes(out, &v, 8); }
static void put_string(std::string& out, const std::string& s) {
    put_u64(out, s.size());
    out += s;
}
static void put_value(std::string& out, const GgufValue& v) {
    switch (v.type) {
        case GGUF_STRING: put_string(out, v.s); return;
        case GGUF_ARRAY:
            put_u32(out, v.elem_type);
            put_u64(out, v.array.size());
            for (const GgufValue& e : v.array) put_value(out, e);
            return;
        case GGUF_FLOAT32: { const float f = (float)v.f; put_bytes(out, &f, 4); return; }
        case GGUF_FLOAT64: put_bytes(out, &v.f, 8); return;
        default: {
            // integers and bool: the low bytes of the 64-bit field (little-endian)
            const uint64_t bits = gguf_is_signed(v.type) ? (uint64_t)v.i : v.u;
            put_bytes(out, &bits, gguf_scalar_size(v.type));
        }
    }
}

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

GgufWriter::GgufWriter(const std::string& path, const GgufKVs& kvs, std::vector<GgufTensorInfo> tensors,
                       uint32_t alignment)
    : tensors_(std::move(tensors)), alignment_(alignment), out_(path) {
    std::string head;
    put_u32(head, GGUF_MAGIC);
    put_u32(head, GGUF_VERSION);
    put_u64(head, tensors_.size());
    put_u64(head, kvs.size());
    for (const auto& kv : kvs) {
        put_string(head, kv.first);
        put_u32(head, kv.second.type);
        put_value(head, kv.second);
    }
    uint64_t offset = 0;
    for (GgufTensorInfo& t : tensors_) {
        ASSERT(t.name.size() <= 64 && !t.ne.empty() && t.ne.size() <= 4, "a tensor llama.cpp can load");
        ASSERT(t.ne[0] % (uint64_t)ggml_block_size(t.type) == 0, "rows of whole blocks");
        t.offset = offset;
        offset = align_up(offset + t.bytes(), alignment_);
        put_string(head, t.name);
        put_u32(head, (uint32_t)t.ne.size());
        for (uint64_t d : t.ne) put_u64(head, d);
        put_u32(head, t.type);
        put_u64(head, t.offset);
    }
    head.resize(align_up(head.size(), alignment_), '\0');
    out_.write(head.data(), head.size());
}

void GgufWriter::write(const void* data) {
    ASSERT(next_ < tensors_.size(), "no more tensors than infos");
    const uint64_t n = tensors_[next_++].bytes();
    out_.write(data, (size_t)n);
    static const char zeros[64] = {};
    out_.write(zeros, (size_t)(align_up(n, alignment_) - n));
}

void GgufWriter::commit() {
    ASSERT(next_ == tensors_.size(), "every tensor written before commit");
    out_.commit();
}

// ----------------------------------------------------------------------------------------------
// reader

// Reads the metadata and tensor infos through a window of the file, every read checked against
// the file's size (a lying length field is an error, never a huge allocation or a read past the end).
struct GgufCursor {
    InFile& in;
    int64_t pos = 0;
    std::vector<uint8_t> window;
    int64_t window_at = 0;
    explicit GgufCursor(InFile& f) : in(f) {}
    int64_t left() const { return in.size - pos; }
    void need(uint64_t n, const char* what) {
        if (n > (uint64_t)left())
            fail("%s: truncated or corrupt GGUF (%s needs %llu bytes at offset %lld, %lld left)", in.path.c_str(), what,
                 (unsigned long long)n, (long long)pos, (long long)left());
    }
    void get(void* dst, size_t n, const char* what) {
        need(n, what);
        uint8_t* d = (uint8_t*)dst;
        while (n > 0) {
            if (pos < window_at || pos >= window_at + (int64_t)window.size()) {
                window_at = pos;
                window.resize((size_t)std::min<int64_t>(1 << 20, left()));
                in.read_at(window_at, window.data(), window.size(), what);
            }
            const size_t k = std::min(n, (size_t)(window_at + (int64_t)window.size() - pos));
            memcpy(d, window.data() + (pos - window_at), k);
            d += k, pos += (int64_t)k, n -= k;
        }
    }
    uint32_t u32(const char* what) { uint32_t v; get(&v, 4, what); return v; }
    uint64_t u64(const char* what) { uint64_t v; get(&v, 8, what); return v; }
    std::string string(const char* what) {
        const uint64_t n = u64(what);
        need(n, what);
        std::string s((size_t)n, '\0');
        get(&s[0], (size_t)n, what);
        return s;
    }
    GgufValue value(uint32_t type, const std::string& key, int depth) {
        GgufValue v;
        v.type = (GgufValueType)type;
        const char* P = in.path.c_str();
        if (type == GGUF_STRING) {
            v.s = string(key.c_str());
        } else if (type == GGUF_ARRAY) {
            if (depth > 8) fail("%s: key '%s': arrays nested too deep", P, key.c_str());
            v.elem_type = (GgufValueType)u32(key.c_str());
            const uint64_t n = u64(key.c_str());
            if (v.elem_type > GGUF_FLOAT64) fail("%s: key '%s': unknown array element type %u", P, key.c_str(), v.elem_type);
            need(n, key.c_str());  // every element takes at least one byte
            v.array.reserve((size_t)n);
            for (uint64_t k = 0; k < n; k++) v.array.push_back(value(v.elem_type, key, depth + 1));
        } else if (const size_t sz = gguf_scalar_size(type)) {
            uint64_t bits = 0;
            get(&bits, sz, key.c_str());
            if (type == GGUF_FLOAT32) { float f; memcpy(&f, &bits, 4); v.f = f; }
            else if (type == GGUF_FLOAT64) memcpy(&v.f, &bits, 8);
            else if (gguf_is_signed(type)) v.i = sz == 8 ? (int64_t)bits : (int64_t)(bits << (64 - 8 * sz)) >> (64 - 8 * sz);  // sign-extend
            else v.u = bits;
            if (type == GGUF_BOOL && bits > 1) fail("%s: key '%s': bool value %llu (must be 0 or 1)", P, key.c_str(), (unsigned long long)bits);
        } else {
            fail("%s: key '%s' has unknown value type %u", P, key.c_str(), type);
        }
        return v;
    }
};

GgufFile::GgufFile(const std::string& p) : path(p), file_(p) {
    const char* P = path.c_str();
    GgufCursor c(file_);
    if (file_.size < 24) fail("%s: not a GGUF file (%lld bytes)", P, (long long)file_.size);
    if (c.u32("magic") != GGUF_MAGIC) fail("%s: not a GGUF file (wrong magic)", P);
    version = c.u32("version");
    if (version != 2 && version != 3) fail("%s: GGUF version %u, this reader reads versions 2 and 3", P, version);
    const uint64_t n_tensors = c.u64("tensor count"), n_kv = c.u64("metadata count");
    // each key/value takes at least 13 bytes, each tensor info at least 28: a larger count lies
    if (n_kv > (uint64_t)file_.size / 13 || n_tensors > (uint64_t)file_.size / 28)
        fail("%s: corrupt GGUF header (%llu keys, %llu tensors in %lld bytes)", P, (unsigned long long)n_kv,
             (unsigned long long)n_tensors, (long long)file_.size);
    std::set<std::string> keys;
    for (uint64_t k = 0; k < n_kv; k++) {
        std::string key = c.string("metadata key");
        if (key.empty()) fail("%s: metadata key %llu is empty", P, (unsigned long long)k);
        if (!keys.insert(key).second) fail("%s: metadata key '%s' appears twice", P, key.c_str());
        const uint32_t type = c.u32(key.c_str());
        kvs.emplace_back(key, c.value(type, key, 0));
    }
    if (const GgufValue* a = find("general.alignment")) {
        if (a->type != GGUF_UINT32 || a->u == 0 || a->u % 8 != 0)
            fail("%s: general.alignment is %s %s (must be a uint32 multiple of 8)", P, gguf_value_type_name(a->type), a->str().c_str());
        alignment = (uint32_t)a->u;
    }
    std::set<std::string> names;
    for (uint64_t k = 0; k < n_tensors; k++) {
        GgufTensorInfo t;
        t.name = c.string("tensor name");
        const char* N = t.name.c_str();
        if (t.name.empty() || t.name.size() > 64) fail("%s: tensor %llu has a name of %zu bytes (1 to 64)", P, (unsigned long long)k, t.name.size());
        if (!names.insert(t.name).second) fail("%s: tensor '%s' appears twice", P, N);
        const uint32_t n_dims = c.u32(N);
        if (n_dims < 1 || n_dims > 4) fail("%s: tensor '%s' has %u dims (1 to 4)", P, N, n_dims);
        uint64_t numel = 1;
        for (uint32_t d = 0; d < n_dims; d++) {
            t.ne.push_back(c.u64(N));
            if (t.ne.back() == 0 || __builtin_mul_overflow(numel, t.ne.back(), &numel) || numel > ((uint64_t)1 << 50))
                fail("%s: tensor '%s' has invalid dims", P, N);
        }
        t.type = c.u32(N);
        if (!ggml_type_known(t.type)) fail("%s: tensor '%s' has ggml type %u, which this reader does not know", P, N, t.type);
        if (t.ne[0] % (uint64_t)ggml_block_size(t.type) != 0)
            fail("%s: tensor '%s': %s rows of %llu elements are not whole blocks", P, N, ggml_type_name(t.type), (unsigned long long)t.ne[0]);
        t.offset = c.u64(N);
        if (t.offset % alignment != 0) fail("%s: tensor '%s' offset %llu is not a multiple of the alignment %u", P, N, (unsigned long long)t.offset, alignment);
        tensors.push_back(t);
    }
    data_start = (int64_t)align_up((uint64_t)c.pos, alignment);
    // every tensor inside the file, none overlapping another
    std::vector<const GgufTensorInfo*> by_offset;
    for (const GgufTensorInfo& t : tensors) by_offset.push_back(&t);
    std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
    uint64_t end = 0;
    for (const GgufTensorInfo* t : by_offset) {
        if (t->offset < end) fail("%s: tensor '%s' overlaps the tensor before it", P, t->name.c_str());
        end = t->offset + t->bytes();
        if ((uint64_t)data_start + end > (uint64_t)file_.size)
            fail("%s: truncated GGUF (tensor '%s' ends at byte %llu, the file has %lld)", P, t->name.c_str(),
                 (unsigned long long)(data_start + end), (long long)file_.size);
    }
}

const GgufValue* GgufFile::find(const std::string& key) const {
    for (const auto& kv : kvs)
        if (kv.first == key) return &kv.second;
    return nullptr;
}

const GgufTensorInfo& GgufFile::tensor(const std::string& name) const {
    for (const GgufTensorInfo& t : tensors)
        if (t.name == name) return t;
    fail("%s: no tensor named '%s'", path.c_str(), name.c_str());
}

std::vector<uint8_t> GgufFile::read(const GgufTensorInfo& t) {
    std::vector<uint8_t> bytes((size_t)t.bytes());
    file_.read_at(data_start + (int64_t)t.offset, bytes.data(), bytes.size(), t.name.c_str());
    return bytes;
}

std::vector<float> GgufFile::read_f32(const GgufTensorInfo& t) {
    const std::vector<uint8_t> bytes = read(t);
    std::vector<float> x((size_t)t.numel());
    ggml_to_f32(t.type, bytes.data(), t.numel(), x.data());
    return x;
}

// ----------------------------------------------------------------------------------------------
// Llama 2 -> llama.cpp

const char* gguf_file_type_name(uint32_t ft) {
    return ft == GGUF_FILE_F16 ? "f16" : ft == GGUF_FILE_Q8_0 ? "q8_0" : ft == GGUF_FILE_Q4_0 ? "q4_0" : "unknown";
}

std::string gguf_llama_tensor_name(int id, int layer) {
    static const char* names[NUM_WEIGHTS] = {"token_embd", "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                             "ffn_norm", "ffn_gate", "ffn_up", "ffn_down", "output_norm", "output"};
    if (id == W_EMBED || id == W_FINAL_NORM || id == W_LM_HEAD) return std::string(names[id]) + ".weight";
    return "blk." + std::to_string(layer) + "." + names[id] + ".weight";
}

std::vector<uint64_t> gguf_llama_tensor_ne(const Config& c, int id) {
    const WeightInfo wi = weight_info(c, id);
    if (wi.rows == 1) return {(uint64_t)wi.cols};
    return {(uint64_t)wi.cols, (uint64_t)wi.rows};
}

uint32_t gguf_llama_tensor_type(const Config& c, int id, uint32_t file_type) {
    const WeightInfo wi = weight_info(c, id);
    if (wi.rows == 1) return GGML_F32;  // norms
    uint32_t type = GGML_F16;
    const bool is_output = id == W_LM_HEAD || (id == W_EMBED && c.tie_embeddings);
    if (file_type == GGUF_FILE_Q8_0) type = GGML_Q8_0;
    if (file_type == GGUF_FILE_Q4_0) type = is_output ? GGML_Q8_0 : GGML_Q4_0;
    if (wi.cols % ggml_block_size(type) != 0) type = GGML_F16;
    return type;
}

void gguf_permute_qk_rows(const float* src, float* dst, int n_heads, int head_dim, int64_t cols) {
    const int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++)
        for (int i = 0; i < half; i++)
            for (int j = 0; j < 2; j++) {
                const int64_t to = (int64_t)h * head_dim + 2 * i + j, from = (int64_t)h * head_dim + j * half + i;
                memcpy(dst + to * cols, src + from * cols, (size_t)cols * sizeof(float));
            }
}

LlamaVocab load_llama_vocab(const std::string& path) {
    const std::string bytes = read_text_file(path);  // "cannot open" etc. name the file
    sentencepiece::SentencePieceProcessor sp;
    // (sentencepiece's own message for bytes that are not its protobuf is a source location)
    if (!sp.LoadFromSerializedProto(bytes).ok())
        fail("%s: not a sentencepiece tokenizer model (it does not parse as one)", path.c_str());
    LlamaVocab v;
    const int n = sp.GetPieceSize();
    for (int id = 0; id < n; id++) {
        int32_t type = 1;  // normal
        if (sp.IsUnknown(id)) type = 2;
        else if (sp.IsControl(id)) type = 3;
        else if (sp.IsUnused(id)) type = 5;
        else if (sp.IsByte(id)) type = 6;
        v.tokens.push_back(sp.IdToPiece(id));
        v.scores.push_back(sp.GetScore(id));
        v.types.push_back(type);
    }
    v.bos = sp.bos_id(), v.eos = sp.eos_id(), v.unk = sp.unk_id(), v.pad = sp.pad_id();
    return v;
}

GgufKVs gguf_llama_metadata(const Config& c, uint32_t file_type, const std::string& name, const LlamaVocab& vocab) {
    std::vector<GgufValue> tokens, scores, types;
    for (size_t k = 0; k < vocab.tokens.size(); k++) {
        tokens.push_back(gguf_str(vocab.tokens[k]));
        scores.push_back(gguf_f32(vocab.scores[k]));
        types.push_back(gguf_i32(vocab.types[k]));
    }
    GgufKVs kv = {
        {"general.architecture", gguf_str("llama")},
        {"general.type", gguf_str("model")},
        {"general.name", gguf_str(name)},
        {"general.file_type", gguf_u32(file_type)},
        {"general.quantization_version", gguf_u32(2)},  // ggml's current Q8_0/Q4_0 layout
        {"general.alignment", gguf_u32(32)},
        {"llama.vocab_size", gguf_u32((uint32_t)c.vocab_size)},
        {"llama.context_length", gguf_u32((uint32_t)c.max_seq_len)},
        {"llama.embedding_length", gguf_u32((uint32_t)c.dim)},
        {"llama.block_count", gguf_u32((uint32_t)c.n_layers)},
        {"llama.feed_forward_length", gguf_u32((uint32_t)c.hidden_dim)},
        {"llama.rope.dimension_count", gguf_u32((uint32_t)c.head_dim)},
        {"llama.attention.head_count", gguf_u32((uint32_t)c.n_heads)},
        {"llama.attention.head_count_kv", gguf_u32((uint32_t)c.n_kv_heads)},
        {"llama.attention.layer_norm_rms_epsilon", gguf_f32(c.norm_eps)},
        {"llama.rope.freq_base", gguf_f32(c.rope_theta)},
    };
    if (c.head_dim * c.n_heads != c.dim) {  // llama.cpp assumes dim / heads otherwise
        kv.push_back({"llama.attention.key_length", gguf_u32((uint32_t)c.head_dim)});
        kv.push_back({"llama.attention.value_length", gguf_u32((uint32_t)c.head_dim)});
    }
    const GgufKVs tok = {
        {"tokenizer.ggml.model", gguf_str("llama")},
        {"tokenizer.ggml.pre", gguf_str("default")},
        {"tokenizer.ggml.tokens", gguf_array(GGUF_STRING, std::move(tokens))},
        {"tokenizer.ggml.scores", gguf_array(GGUF_FLOAT32, std::move(scores))},
        {"tokenizer.ggml.token_type", gguf_array(GGUF_INT32, std::move(types))},
        {"tokenizer.ggml.bos_token_id", gguf_u32((uint32_t)c.bos_id)},
        {"tokenizer.ggml.eos_token_id", gguf_u32((uint32_t)c.eos_id)},
    };
    kv.insert(kv.end(), tok.begin(), tok.end());
    if (vocab.unk >= 0) kv.push_back({"tokenizer.ggml.unknown_token_id", gguf_u32((uint32_t)vocab.unk)});
    if (vocab.pad >= 0) kv.push_back({"tokenizer.ggml.padding_token_id", gguf_u32((uint32_t)vocab.pad)});
    kv.push_back({"tokenizer.ggml.add_bos_token", gguf_bool(true)});
    kv.push_back({"tokenizer.ggml.add_eos_token", gguf_bool(false)});
    kv.push_back({"tokenizer.chat_template", gguf_str(llama2_chat_template_jinja())});
    return kv;
}
