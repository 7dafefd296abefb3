// model.cpp — the config checks and presets, the weight and LoRA layouts declared in model.h, and
// the readers and writers of the project's binary files (model, data, adapter). Linked into every
// binary; no GPU code here.
#include "model.h"

#include <sstream>

#include "quant.h"

// ----------------------------------------------------------------------------------------------
// config

void validate_config(const Config& c, const char* what) {
    auto bad = [&](const char* field, long long v) { fail("%s: invalid config: %s = %lld", what, field, v); };
    if (c.dim <= 0 || c.dim > (1 << 16)) bad("dim", c.dim);
    if (c.hidden_dim <= 0 || c.hidden_dim > (1 << 18)) bad("hidden_dim", c.hidden_dim);
    if (c.n_layers <= 0 || c.n_layers > 1024) bad("n_layers", c.n_layers);
    if (c.n_heads <= 0 || c.n_heads > 1024) bad("n_heads", c.n_heads);
    if (c.n_kv_heads <= 0 || c.n_kv_heads > c.n_heads || c.n_heads % c.n_kv_heads != 0) bad("n_kv_heads", c.n_kv_heads);
    if (c.head_dim <= 0 || c.head_dim % 2 != 0 || c.head_dim > 1024) bad("head_dim", c.head_dim);
    if (c.vocab_size <= 0 || c.vocab_size > (1 << 24)) bad("vocab_size", c.vocab_size);
    if (c.max_seq_len <= 0 || c.max_seq_len > (1 << 24)) bad("max_seq_len", c.max_seq_len);
    if (c.bos_id < 0 || c.bos_id >= c.vocab_size) bad("bos_id", c.bos_id);
    if (c.eos_id < 0 || c.eos_id >= c.vocab_size) bad("eos_id", c.eos_id);
    if (c.tie_embeddings != 0 && c.tie_embeddings != 1) bad("tie_embeddings", c.tie_embeddings);
    if (!(c.rope_theta > 0.0f) || !std::isfinite(c.rope_theta)) fail("%s: invalid config: rope_theta = %g", what, c.rope_theta);
    if (!(c.norm_eps > 0.0f) || !(c.norm_eps < 1.0f)) fail("%s: invalid config: rms_norm_eps = %g", what, c.norm_eps);
}

std::string config_summary(const Config& c) {
    char s[256];
    snprintf(s, sizeof(s), "L=%d C=%d F=%d H=%d KV=%d D=%d V=%d ctx=%d theta=%g eps=%g%s", c.n_layers, c.dim,
             c.hidden_dim, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size, c.max_seq_len, c.rope_theta,
             c.norm_eps, c.tie_embeddings ? " tied" : "");
    return s;
}

bool same_architecture(const Config& a, const Config& b) {
    return a.dim == b.dim && a.hidden_dim == b.hidden_dim && a.n_layers == b.n_layers && a.n_heads == b.n_heads &&
           a.n_kv_heads == b.n_kv_heads && a.head_dim == b.head_dim && a.vocab_size == b.vocab_size &&
           a.tie_embeddings == b.tie_embeddings;
}

Config llama2_config(int layers, int dim, int hidden, int heads, int kv_heads, int vocab) {
    Config c;
    memset(&c, 0, sizeof(c));  // the reserved field (and any padding) is stored on disk: zeros
    c.dim = dim;
    c.hidden_dim = hidden;
    c.n_layers = layers;
    c.n_heads = heads;
    c.n_kv_heads = kv_heads;
    c.head_dim = heads > 0 ? dim / heads : 0;
    c.vocab_size = vocab;
    c.max_seq_len = 4096;
    c.bos_id = 1;
    c.eos_id = 2;
    c.rope_theta = 10000.0f;
    c.norm_eps = 1e-5f;
    return c;
}

Config llama2_preset(const std::string& name) {
    // from meta-llama/Llama-2-{7b,13b,70b}-hf config.json
    if (name == "7b") return llama2_config(32, 4096, 11008, 32, 32, 32000);
    if (name == "13b") return llama2_config(40, 5120, 13824, 40, 40, 32000);
    if (name == "70b") return llama2_config(80, 8192, 28672, 64, 8, 32000);
    if (name.find('=') == std::string::npos)
        fail("unknown model preset '%s' (7b, 13b, 70b, or a shape like layers=4,dim=1024,hidden=2752,heads=8,kv=2)", name.c_str());
    // a custom shape: "layers=4,dim=1024,hidden=2752,heads=8,kv=2[,vocab=32000]" (head_dim = dim / heads)
    int layers = 2, dim = 1024, hidden = 2752, heads = 8, kv = 8, vocab = 32000;
    std::stringstream ss(name);
    std::string item;
    while (std::getline(ss, item, ',')) {
        const size_t eq = item.find('=');
        const std::string key = item.substr(0, eq);
        const int v = eq == std::string::npos ? -1 : atoi(item.c_str() + eq + 1);
        if (v <= 0) fail("model shape '%s': '%s' is not key=positive integer", name.c_str(), item.c_str());
        if (key == "layers") layers = v;
        else if (key == "dim") dim = v;
        else if (key == "hidden") hidden = v;
        else if (key == "heads") heads = v;
        else if (key == "kv") kv = v;
        else if (key == "vocab") vocab = v;
        else fail("model shape '%s': unknown key '%s' (layers, dim, hidden, heads, kv, vocab)", name.c_str(), key.c_str());
    }
    if (dim % heads != 0) fail("model shape '%s': dim is not a multiple of heads", name.c_str());
    Config c = llama2_config(layers, dim, hidden, heads, kv, vocab);
    validate_config(c, ("model shape '" + name + "'").c_str());
    return c;
}

// ----------------------------------------------------------------------------------------------
// weight layout

WeightInfo weight_info(const Config& c, int id) {
    const int64_t C = c.dim, F = c.hidden_dim, V = c.vocab_size;
    const int64_t QD = (int64_t)c.n_heads * c.head_dim, KVD = (int64_t)c.n_kv_heads * c.head_dim;
    switch (id) {
        case W_EMBED: return {false, V, C};
        case W_ATTN_NORM: return {true, 1, C};
        case W_Q: return {true, QD, C};
        case W_K: return {true, KVD, C};
        case W_V: return {true, KVD, C};
        case W_O: return {true, C, QD};
        case W_MLP_NORM: return {true, 1, C};
        case W_GATE: return {true, F, C};
        case W_UP: return {true, F, C};
        case W_DOWN: return {true, C, F};
        case W_FINAL_NORM: return {false, 1, C};
        case W_LM_HEAD: return {false, V, C};
    }
    ASSERT(false, "unknown WeightId");
    return {};
}

std::string weight_hf_name(int id, int layer) {
    static const char* layer_names[NUM_WEIGHTS] = {
        nullptr, "input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
        "self_attn.o_proj", "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
        nullptr, nullptr};
    if (id == W_EMBED) return "model.embed_tokens.weight";
    if (id == W_FINAL_NORM) return "model.norm.weight";
    if (id == W_LM_HEAD) return "lm_head.weight";
    return "model.layers." + std::to_string(layer) + "." + layer_names[id] + ".weight";
}

int64_t weight_numel(const Config& c, int id) {
    if (id == W_LM_HEAD && c.tie_embeddings) return 0;
    WeightInfo wi = weight_info(c, id);
    return wi.numel() * (wi.per_layer ? c.n_layers : 1);
}

int64_t total_weight_numel(const Config& c) {
    int64_t n = 0;
    for (int id = 0; id < NUM_WEIGHTS; id++) n += weight_numel(c, id);
    return n;
}

// ----------------------------------------------------------------------------------------------
// LoRA layout

uint32_t parse_lora_targets(const std::string& list) {
    static const char* short_names[NUM_LORA_TARGETS] = {"q", "k", "v", "o", "gate", "up", "down"};
    uint32_t mask = 0;
    std::stringstream ss(list);
    std::string item;
    while (std::getline(ss, item, ',')) {
        if (item.empty()) continue;
        if (item == "all") { mask |= LORA_ALL_TARGETS; continue; }
        int found = -1;
        for (int t = 0; t < NUM_LORA_TARGETS; t++)
            if (item == short_names[t] || item == lora_target_name(t)) found = t;
        if (found < 0) fail("--targets: unknown LoRA target '%s' (expected q,k,v,o,gate,up,down)", item.c_str());
        mask |= 1u << found;
    }
    if (mask == 0) fail("--targets: no LoRA target given");
    return mask;
}

std::string lora_targets_string(uint32_t mask) {
    static const char* short_names[NUM_LORA_TARGETS] = {"q", "k", "v", "o", "gate", "up", "down"};
    std::string s;
    for (int t = 0; t < NUM_LORA_TARGETS; t++)
        if ((mask >> t) & 1u) s += (s.empty() ? "" : ",") + std::string(short_names[t]);
    return s;
}

void validate_lora_config(const LoraConfig& lc, const char* what) {
    if (lc.rank <= 0 || lc.rank > 65536) fail("%s: invalid LoRA rank %d", what, lc.rank);
    if (!std::isfinite(lc.alpha) || lc.alpha <= 0) fail("%s: invalid LoRA alpha %g", what, lc.alpha);
    if (!(lc.dropout >= 0.0f && lc.dropout < 1.0f)) fail("%s: invalid LoRA dropout %g", what, lc.dropout);
    if (lc.target_mask == 0 || (lc.target_mask & ~LORA_ALL_TARGETS)) fail("%s: invalid LoRA target mask 0x%x", what, lc.target_mask);
}

LoraLayout lora_layout(const Config& c, const LoraConfig& lc) {
    LoraLayout lay;
    int64_t off = 0;
    for (int t = 0; t < NUM_LORA_TARGETS; t++) {
        if (!lc.has(t)) { lay.a_offset[t] = lay.b_offset[t] = -1; continue; }
        lay.a_offset[t] = off;
        off += (int64_t)c.n_layers * lc.rank * lora_in_dim(c, t);
        lay.b_offset[t] = off;
        off += (int64_t)c.n_layers * lora_out_dim(c, t) * lc.rank;
    }
    lay.total = off;
    return lay;
}

std::string lora_peft_name(int t, int layer, bool is_b) {
    return "base_model.model.model.layers." + std::to_string(layer) + "." + lora_target_parent(t) + "." +
           lora_target_name(t) + (is_b ? ".lora_B.weight" : ".lora_A.weight");
}

// ----------------------------------------------------------------------------------------------
// file headers

// Check a header's magic and version; the message says which kind of file was expected.
static void check_magic(const std::string& path, uint32_t magic, uint32_t version, uint32_t want_magic,
                        uint32_t want_version, const char* kind, const char* made_by) {
    if (magic != want_magic) {
        // a model file given where a data file was expected (and so on) deserves a precise hint
        const char* is = magic == MODEL_MAGIC ? " (it is a model file)" : magic == DATA_MAGIC ? " (it is a data file)"
                         : magic == ADAPTER_MAGIC ? " (it is an adapter file)" : "";
        fail("%s: not %s %s file (wrong magic)%s; make one with %s", path.c_str(), kind[0] == 'a' ? "an" : "a", kind,
             is, made_by);
    }
    if (version != want_version)
        fail("%s: %s file version %u, this build reads version %u; remake it with %s", path.c_str(), kind, version,
             want_version, made_by);
}

PayloadWriter::PayloadWriter(const std::string& path, size_t header_bytes_) : file(path), header_bytes(header_bytes_) {
    const std::vector<uint8_t> zeros(header_bytes, 0);
    file.write(zeros.data(), zeros.size());
}

void PayloadWriter::write(const void* data, size_t bytes) {
    hash.update(data, bytes);
    file.write(data, bytes);
}

// h's checksum against the header itself and the hash of the payload that followed it
template <typename Header>
static void check_checksum(const std::string& path, const Header& h, uint64_t payload) {
    if (file_checksum(&h, sizeof(h), offsetof(Header, checksum), payload) != h.checksum)
        fail("%s: checksum mismatch (the file is corrupt, or was changed after it was written)", path.c_str());
}

static void check_reserved(const std::string& path, const void* reserved, size_t bytes) {
    if (!all_zero(reserved, bytes)) fail("%s: corrupt header (reserved bytes are not zero)", path.c_str());
}

// ----------------------------------------------------------------------------------------------
// model file

int64_t model_weight_bytes(const ModelHeader& h, int id) {
    const Config& c = h.config;
    if (weight_numel(c, id) == 0) return 0;  // tied lm_head
    const WeightInfo wi = weight_info(c, id);
    const int64_t layers = wi.per_layer ? c.n_layers : 1;
    if (h.linear_format == LINEAR_NF4 && weight_is_linear(id)) return layers * nf4_layout(wi.numel()).bytes;
    return layers * wi.numel() * (int64_t)dtype_size(h.dtype);
}

void check_nf4_record(const uint8_t* record, int64_t numel, const std::string& path, const std::string& tensor) {
    // the same rule as nf4_from_record, without copying the packed codes (a 7B layer's are 22 MB)
    const Nf4Layout lay = nf4_layout(numel);
    float offset;
    memcpy(&offset, record + lay.offset_at, 4);
    if (!std::isfinite(offset))
        fail("%s: %s: corrupt NF4 record (offset is %g)", path.c_str(), tensor.c_str(), (double)offset);
    for (int64_t g = 0; g < lay.n_dq_blocks; g++) {
        float s;
        memcpy(&s, record + lay.scale2_at + 4 * g, 4);
        if (!std::isfinite(s) || s < 0.0f)
            fail("%s: %s: corrupt NF4 record (second-level scale %lld is %g; must be finite and >= 0)", path.c_str(),
                 tensor.c_str(), (long long)g, (double)s);
    }
}

ModelHeader read_model_header(InFile& in) {
    ModelHeader h;
    if (in.size < (int64_t)sizeof(h)) {
        if (in.size >= 4) {
            uint32_t magic = 0;
            in.read_at(0, &magic, 4, "magic");
            if (magic != MODEL_MAGIC) check_magic(in.path, magic, 0, MODEL_MAGIC, MODEL_VERSION, "model", "./export_hf");
        }
        fail("%s: truncated file (%lld bytes, shorter than the model header)", in.path.c_str(), (long long)in.size);
    }
    in.read_at(0, &h, sizeof(h), "header");
    check_magic(in.path, h.magic, h.version, MODEL_MAGIC, MODEL_VERSION, "model", "./export_hf");
    validate_config(h.config, in.path.c_str());
    if (h.dtype != DT_F32 && h.dtype != DT_F16 && h.dtype != DT_BF16)
        fail("%s: unknown weight dtype %d in header", in.path.c_str(), h.dtype);
    if (h.linear_format != LINEAR_DENSE && h.linear_format != LINEAR_NF4)
        fail("%s: unknown linear_format %d in header (0: dense, 1: NF4)", in.path.c_str(), h.linear_format);
    if (h.linear_format == LINEAR_NF4 && h.dtype == DT_F32)
        fail("%s: corrupt header: NF4 linears with f32 non-linear weights (export_hf writes f16 or bf16)",
             in.path.c_str());
    check_reserved(in.path, h.reserved, sizeof(h.reserved));
    if (h.config.reserved0 != 0) fail("%s: corrupt header (config's reserved field is not zero)", in.path.c_str());
    int64_t want = (int64_t)sizeof(h);
    for (int id = 0; id < NUM_WEIGHTS; id++) want += model_weight_bytes(h, id);
    if (in.size != want)
        fail("%s: %s file (%lld bytes, the header implies %lld)", in.path.c_str(),
             in.size < want ? "truncated" : "oversized", (long long)in.size, (long long)want);
    return h;
}

void write_model(const std::string& path, ModelHeader h, const void* weights, size_t bytes) {
    ASSERT(h.linear_format == LINEAR_DENSE, "a dense model");
    int64_t want = 0;
    for (int id = 0; id < NUM_WEIGHTS; id++) want += model_weight_bytes(h, id);
    ASSERT((int64_t)bytes == want, "the weights the header implies");
    PayloadWriter out(path, sizeof(h));
    out.write(weights, bytes);
    out.commit(h);
}

void check_dense_weights(const void* data, int32_t dtype, int64_t n, const std::string& path, const std::string& tensor) {
    const int64_t i = first_nonfinite(data, dtype, (size_t)n);
    if (i >= 0) fail("%s: %s: element %lld is NaN or Inf", path.c_str(), tensor.c_str(), (long long)i);
}

void verify_model_file(const std::string& path) {
    InFile in(path);
    const ModelHeader h = read_model_header(in);
    PayloadHash hash;
    std::vector<uint8_t> buf((size_t)std::min<int64_t>(in.size - (int64_t)sizeof(h), 64 << 20));
    in.read_at(sizeof(h), nullptr, 0, "weights");
    for (int64_t done = sizeof(h); done < in.size;) {
        const size_t n = (size_t)std::min<int64_t>((int64_t)buf.size(), in.size - done);
        in.read(buf.data(), n, "weights");
        hash.update(buf.data(), n);
        done += (int64_t)n;
    }
    check_checksum(path, h, hash.digest());
}

int64_t model_tensor_bytes(const ModelHeader& h, int id) {
    const WeightInfo wi = weight_info(h.config, id);
    return model_weight_bytes(h, id) / (wi.per_layer ? h.config.n_layers : 1);
}

int64_t model_tensor_offset(const ModelHeader& h, int id, int layer) {
    int64_t off = (int64_t)sizeof(ModelHeader);
    for (int k = 0; k < id; k++) off += model_weight_bytes(h, k);
    return off + layer * model_tensor_bytes(h, id);
}

void read_model_tensor_raw(InFile& in, const ModelHeader& h, int id, int layer, std::vector<uint8_t>& raw,
                           PayloadHash* hash) {
    ASSERT(weight_numel(h.config, id) > 0, "a stored tensor (not a tied lm_head)");
    raw.resize((size_t)model_tensor_bytes(h, id));
    in.read_at(model_tensor_offset(h, id, layer), raw.data(), raw.size(), weight_hf_name(id, layer).c_str());
    if (hash) hash->update(raw.data(), raw.size());
}

void read_model_tensor_f32(InFile& in, const ModelHeader& h, int id, int layer, float* dst, std::vector<uint8_t>& raw,
                           PayloadHash* hash) {
    read_model_tensor_raw(in, h, id, layer, raw, hash);
    const int64_t n = weight_info(h.config, id).numel();
    if (h.linear_format == LINEAR_NF4 && weight_is_linear(id)) {
        const std::string name = weight_hf_name(id, layer);
        check_nf4_record(raw.data(), n, in.path, name);
        // bf16, as the GPU dequantizes for its matmuls; widening to fp32 is exact
        std::vector<uint16_t> deq((size_t)n);  // (rows * cols)
        nf4_dequantize_dq_cpu(deq.data(), DT_BF16, nf4_from_record(raw.data(), n, name.c_str()));
        convert_to_f32(dst, deq.data(), DT_BF16, (size_t)n);
        return;
    }
    check_dense_weights(raw.data(), h.dtype, n, in.path, weight_hf_name(id, layer));
    convert_to_f32(dst, raw.data(), h.dtype, (size_t)n);
}

ModelHeader load_model_f32(const std::string& path, std::vector<float>& weights) {
    InFile in(path);
    ModelHeader h = read_model_header(in);
    const Config& c = h.config;
    check_host_bytes("the model's fp32 weights", 4.0 * (double)total_weight_numel(c));
    weights.resize((size_t)total_weight_numel(c));
    Weights<float> w = carve_weights(c, weights.data());
    std::vector<uint8_t> raw;
    PayloadHash hash;  // the tensors are read in file order: the whole payload streams through it
    for (int id = 0; id < NUM_WEIGHTS; id++) {
        if (weight_numel(c, id) == 0) continue;  // tied lm_head
        const WeightInfo wi = weight_info(c, id);
        for (int l = 0; l < (wi.per_layer ? c.n_layers : 1); l++)
            read_model_tensor_f32(in, h, id, l, *w.ptr(id) + l * wi.numel(), raw, &hash);
    }
    check_checksum(path, h, hash.digest());
    return h;
}

void check_model_payload(const ModelHeader& h, uint64_t payload_hash, const std::string& path) {
    check_checksum(path, h, payload_hash);
}

// ----------------------------------------------------------------------------------------------
// data file

void write_dataset(const std::string& path, const Dataset& d) {
    DataHeader h = d.header;
    ASSERT((int64_t)d.tokens.size() == h.n_tokens && (int64_t)d.loss_mask.size() == h.n_tokens, "dataset sizes");
    ASSERT((int64_t)d.conv_offsets.size() == h.n_conversations + 1, "dataset offsets");
    h.magic = DATA_MAGIC;
    h.version = DATA_VERSION;
    PayloadWriter out(path, sizeof(h));
    out.write(d.tokens.data(), d.tokens.size() * 4);
    out.write(d.loss_mask.data(), d.loss_mask.size());
    out.write(d.conv_offsets.data(), d.conv_offsets.size() * 8);
    out.commit(h);
}

Dataset read_dataset(const std::string& path) {
    InFile in(path);
    Dataset d;
    DataHeader& h = d.header;
    if (in.size < (int64_t)sizeof(h)) {
        uint32_t magic = 0;
        if (in.size >= 4) in.read_at(0, &magic, 4, "magic");
        if (in.size < 4 || magic != DATA_MAGIC) check_magic(path, magic, 0, DATA_MAGIC, DATA_VERSION, "data", "./prepare_lima");
        fail("%s: truncated file (%lld bytes, shorter than the data header)", path.c_str(), (long long)in.size);
    }
    in.read(&h, sizeof(h), "header");
    check_magic(path, h.magic, h.version, DATA_MAGIC, DATA_VERSION, "data", "./prepare_lima");
    if (h.n_tokens < 0 || h.n_conversations < 0 || h.n_tokens > (int64_t)1 << 40 || h.n_conversations > h.n_tokens)
        fail("%s: corrupt header (n_tokens %lld, n_conversations %lld)", path.c_str(), (long long)h.n_tokens,
             (long long)h.n_conversations);
    if (h.vocab_size <= 0 || h.bos_id < 0 || h.bos_id >= h.vocab_size || h.eos_id < 0 || h.eos_id >= h.vocab_size)
        fail("%s: corrupt header (vocab_size %d, bos %d, eos %d)", path.c_str(), h.vocab_size, h.bos_id, h.eos_id);
    if (h.n_loss_tokens < 0 || h.n_loss_tokens > h.n_tokens || h.n_turns < 0 || h.n_truncated < 0 ||
        h.n_truncated > h.n_conversations || h.n_dropped < 0 || h.max_len <= 0 ||
        (h.chat_template != TEMPLATE_LLAMA2 && h.chat_template != TEMPLATE_PLAIN) || h.reserved0 != 0)
        fail("%s: corrupt header (loss tokens %lld, turns %lld, truncated %lld, dropped %lld, max_len %d, template %d)",
             path.c_str(), (long long)h.n_loss_tokens, (long long)h.n_turns, (long long)h.n_truncated,
             (long long)h.n_dropped, h.max_len, h.chat_template);
    check_reserved(path, h.reserved, sizeof(h.reserved));
    int64_t want = (int64_t)sizeof(h) + h.n_tokens * 5 + (h.n_conversations + 1) * 8;
    if (in.size != want)
        fail("%s: %s file (%lld bytes, the header implies %lld)", path.c_str(), in.size < want ? "truncated" : "oversized",
             (long long)in.size, (long long)want);
    d.tokens.resize((size_t)h.n_tokens);
    d.loss_mask.resize((size_t)h.n_tokens);
    d.conv_offsets.resize((size_t)h.n_conversations + 1);
    in.read(d.tokens.data(), d.tokens.size() * 4, "tokens");
    in.read(d.loss_mask.data(), d.loss_mask.size(), "loss mask");
    in.read(d.conv_offsets.data(), d.conv_offsets.size() * 8, "conversation offsets");
    PayloadHash hash;
    hash.update(d.tokens.data(), d.tokens.size() * 4);
    hash.update(d.loss_mask.data(), d.loss_mask.size());
    hash.update(d.conv_offsets.data(), d.conv_offsets.size() * 8);
    check_checksum(path, h, hash.digest());
    // the arrays must agree with the header: an inconsistent file is rejected here, not deep in training
    if (d.conv_offsets[0] != 0 || d.conv_offsets.back() != h.n_tokens)
        fail("%s: corrupt conversation offsets (first %lld, last %lld, n_tokens %lld)", path.c_str(),
             (long long)d.conv_offsets[0], (long long)d.conv_offsets.back(), (long long)h.n_tokens);
    for (int64_t i = 0; i < h.n_conversations; i++)
        if (d.conv_offsets[i + 1] <= d.conv_offsets[i])
            fail("%s: corrupt conversation offsets (conversation %lld is empty or reversed)", path.c_str(), (long long)i);
    int64_t n_loss = 0;
    for (int64_t j = 0; j < h.n_tokens; j++) {
        if (d.tokens[j] < 0 || d.tokens[j] >= h.vocab_size)
            fail("%s: token %lld has id %d, outside the vocabulary of %d", path.c_str(), (long long)j, d.tokens[j],
                 h.vocab_size);
        if (d.loss_mask[j] > 1) fail("%s: corrupt loss mask at token %lld", path.c_str(), (long long)j);
        n_loss += d.loss_mask[j];
    }
    if (n_loss != h.n_loss_tokens)
        fail("%s: corrupt file (loss mask sums to %lld, header says %lld)", path.c_str(), (long long)n_loss,
             (long long)h.n_loss_tokens);
    return d;
}

void check_data_matches_model(const DataHeader& d, const char* data_path, const ModelHeader& m, const char* model_path) {
    const Config& c = m.config;
    if (d.vocab_size != c.vocab_size)
        fail("%s: tokenized with a vocabulary of %d, but model %s has vocab_size %d (wrong tokenizer or model)",
             data_path, d.vocab_size, model_path, c.vocab_size);
    if (d.bos_id != c.bos_id || d.eos_id != c.eos_id)
        fail("%s: bos/eos ids %d/%d differ from model %s's %d/%d", data_path, d.bos_id, d.eos_id, model_path, c.bos_id,
             c.eos_id);
    if (!digest_is_zero(d.tokenizer_sha256) && !digest_is_zero(m.tokenizer_sha256) &&
        memcmp(d.tokenizer_sha256, m.tokenizer_sha256, 32) != 0)
        fail("%s: made with tokenizer sha256 %s, but model %s was exported with tokenizer %s", data_path,
             hex_digest(d.tokenizer_sha256).substr(0, 16).c_str(), model_path,
             hex_digest(m.tokenizer_sha256).substr(0, 16).c_str());
}

// ----------------------------------------------------------------------------------------------
// adapter file

void write_adapter(const std::string& path, const Adapter& a) {
    validate_config(a.base, "adapter");
    validate_lora_config(a.lora, "adapter");
    LoraLayout lay = lora_layout(a.base, a.lora);
    ASSERT((int64_t)a.params.size() == lay.total, "adapter params size");
    AdapterHeader h;
    memset(&h, 0, sizeof(h));
    h.magic = ADAPTER_MAGIC;
    h.version = ADAPTER_VERSION;
    h.base = a.base;
    h.lora = a.lora;
    h.dtype = DT_F16;
    h.trained_on = a.trained_on;
    memcpy(h.tokenizer_sha256, a.tokenizer_sha256, 32);
    for (size_t i = 0; i < a.params.size(); i++) {
        if (!std::isfinite(a.params[i])) fail("%s: refusing to write an adapter holding NaN/Inf (element %zu)", path.c_str(), i);
        // fp16 rounds |x| >= 65520 to Inf: refuse rather than store an adapter that poisons the model
        if (std::fabs(a.params[i]) >= 65520.0f)
            fail("%s: LoRA parameter %zu = %g is outside fp16's range", path.c_str(), i, a.params[i]);
    }
    std::vector<uint16_t> half(a.params.size());
    convert_from_f32(half.data(), a.params.data(), DT_F16, half.size());
    PayloadWriter out(path, sizeof(h));
    out.write(half.data(), half.size() * 2);
    out.commit(h);
}

Adapter read_adapter(const std::string& path) {
    InFile in(path);
    AdapterHeader h;
    if (in.size < (int64_t)sizeof(h)) {
        uint32_t magic = 0;
        if (in.size >= 4) in.read_at(0, &magic, 4, "magic");
        if (in.size < 4 || magic != ADAPTER_MAGIC) check_magic(path, magic, 0, ADAPTER_MAGIC, ADAPTER_VERSION, "adapter", "./train or ./convert_adapter");
        fail("%s: truncated file (%lld bytes, shorter than the adapter header)", path.c_str(), (long long)in.size);
    }
    in.read(&h, sizeof(h), "header");
    check_magic(path, h.magic, h.version, ADAPTER_MAGIC, ADAPTER_VERSION, "adapter", "./train or ./convert_adapter");
    validate_config(h.base, path.c_str());
    validate_lora_config(h.lora, path.c_str());
    if (h.dtype != DT_F16) fail("%s: adapter tensors stored as %s, expected f16", path.c_str(), dtype_name(h.dtype));
    if (h.trained_on < TRAINED_ON_UNKNOWN || h.trained_on > TRAINED_ON_NF4)
        fail("%s: corrupt header (trained_on %d)", path.c_str(), h.trained_on);
    if (h.base.reserved0 != 0) fail("%s: corrupt header (config's reserved field is not zero)", path.c_str());
    check_reserved(path, h.reserved, sizeof(h.reserved));
    Adapter a;
    a.base = h.base;
    a.lora = h.lora;
    a.trained_on = h.trained_on;
    memcpy(a.tokenizer_sha256, h.tokenizer_sha256, 32);
    LoraLayout lay = lora_layout(a.base, a.lora);
    int64_t want = (int64_t)sizeof(h) + lay.total * 2;
    if (in.size != want)
        fail("%s: %s file (%lld bytes, the header implies %lld)", path.c_str(), in.size < want ? "truncated" : "oversized",
             (long long)in.size, (long long)want);
    std::vector<uint16_t> half((size_t)lay.total);
    in.read(half.data(), half.size() * 2, "LoRA tensors");
    check_checksum(path, h, payload_hash(half.data(), half.size() * 2));
    const int64_t bad = first_nonfinite(half.data(), DT_F16, half.size());
    if (bad >= 0) fail("%s: LoRA parameter %lld is NaN or Inf", path.c_str(), (long long)bad);
    a.params.resize(half.size());
    convert_to_f32(a.params.data(), half.data(), DT_F16, half.size());
    return a;
}

void check_adapter_matches_model(const Adapter& a, const char* adapter_path, const Config& m, const char* model_path) {
    if (!same_architecture(a.base, m))
        fail("%s: made for a base model with %s, but %s has %s", adapter_path, config_summary(a.base).c_str(),
             model_path, config_summary(m).c_str());
}
