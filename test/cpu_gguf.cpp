// test/cpu_gguf.cpp — tests of GGUF (gguf.h): the Q8_0/Q4_0 blocks against the layout in the
// spec and their error bounds, the writer and reader on every value type, ./merge_adapter --gguf
// on both fixtures read back in full (header, every metadata key and value, tensor infos, offsets,
// alignment, data: f16 exact, Q8_0/Q4_0 within their bounds), the q/k row order against
// llama.cpp's RoPE, the real Llama 2 vocabulary, and damaged files.
// Run from the repo root after `make NO_CUDA=1 export_hf merge_adapter test_cpu`:
//   ./test_cpu -tc="gguf*"
// Bounds: Q8_0 |x - x'| <= d/2, Q4_0 the same except where codes stop at +7 (|x - x'| <= |x| - 7 d),
// d the block's stored fp16 scale, with a relative slack of 1e-6 for the fp32 division.
#include <doctest/doctest.h>
#include <sentencepiece_processor.h>

#include <map>
#include <set>

#include "chat.h"
#include "gguf.h"
#include "test/merge_util.h"

namespace {

const std::string kTokenizer = shared_dir() + "/data/llama2/tokenizer.model";

uint64_t align32(uint64_t x) { return (x + 31) / 32 * 32; }

// HF row order -> llama.cpp's, as the spec's permute() (reshape (heads, 2, D/2, cols), swap the
// middle axes) says, written independently of gguf_permute_qk_rows: row h*D + j*D/2 + i moves to
// h*D + 2i + j.
std::vector<float> permuted(const std::vector<float>& w, int heads, int D, int64_t cols) {
    std::vector<float> out(w.size());
    for (int h = 0; h < heads; h++)
        for (int j = 0; j < 2; j++)
            for (int i = 0; i < D / 2; i++)
                std::copy_n(w.begin() + ((int64_t)h * D + j * (D / 2) + i) * cols, cols, out.begin() + ((int64_t)h * D + 2 * i + j) * cols);
    return out;
}

// One block's values from its bytes, as the spec lays them out (independently of dequantize_*).
float block_scale(const uint8_t* b) {
    uint16_t d;
    memcpy(&d, b, 2);
    return f16_to_f32(d);
}
void decode_block(uint32_t type, const uint8_t* b, float* x) {
    const float d = block_scale(b);
    for (int j = 0; j < 32; j++)
        x[j] = type == GGML_Q8_0 ? (float)(int8_t)b[2 + j] * d
                                 : (float)((j < 16 ? b[2 + j] & 15 : b[2 + j - 16] >> 4) - 8) * d;
}

// Checks quantized `bytes` (blocks of `type`) against the values x they were made from. Returns the
// largest |x - x'| / d seen, where the half-step bound applies (first) and on Q4_0's clipped side.
std::pair<double, double> check_blocks(uint32_t type, const uint8_t* bytes, const float* x, int64_t n, const std::string& what) {
    const int64_t bb = ggml_block_bytes(type);
    double worst = 0, worst_clipped = 0;
    int64_t bad = 0;
    float xq[32];
    for (int64_t b = 0; b < n / 32; b++) {
        decode_block(type, bytes + b * bb, xq);
        const float ds = block_scale(bytes + b * bb), d = std::fabs(ds);
        for (int j = 0; j < 32; j++) {
            const double v = x[b * 32 + j], err = std::fabs(v - xq[j]);
            // Q4_0's codes reach +7 steps on the side opposite the largest magnitude: beyond 7.5, the clip
            const bool clipped = type == GGML_Q4_0 && d > 0 && v / ds > 7.5;
            const double bound = d == 0 ? 0 : clipped ? std::fabs(v) - 7 * d + 1e-6 * d : 0.5 * d * (1 + 1e-6);
            if (err > bound) bad++;
            if (d > 0) (clipped ? worst_clipped : worst) = std::max(clipped ? worst_clipped : worst, err / d);
        }
    }
    CHECK_MESSAGE(bad == 0, what << ": " << bad << " values outside the bound");
    return {worst, worst_clipped};
}

std::vector<float> random_values(int64_t n, uint64_t seed, float scale) {
    Rng rng(seed);
    std::vector<float> x((size_t)n);
    for (float& v : x) v = scale * rng.normal();
    return x;
}

// The metadata a Llama 2 GGUF must hold, spelled out from gguf.md and llama.cpp's converter
// (independently of gguf_llama_metadata), with the vocabulary read through sentencepiece.
std::map<std::string, GgufValue> expected_metadata(const Config& c, uint32_t file_type, const std::string& name,
                                                   const std::string& tokenizer) {
    sentencepiece::SentencePieceProcessor sp;
    REQUIRE(sp.Load(tokenizer).ok());
    std::vector<GgufValue> tokens, scores, types;
    for (int id = 0; id < sp.GetPieceSize(); id++) {
        tokens.push_back(gguf_str(sp.IdToPiece(id)));
        scores.push_back(gguf_f32(sp.GetScore(id)));
        types.push_back(gguf_i32(sp.IsUnknown(id) ? 2 : sp.IsControl(id) ? 3 : sp.IsUnused(id) ? 5 : sp.IsByte(id) ? 6 : 1));
    }
    std::map<std::string, GgufValue> m;
    m["general.architecture"] = gguf_str("llama");
    m["general.type"] = gguf_str("model");
    m["general.name"] = gguf_str(name);
    m["general.file_type"] = gguf_u32(file_type);
    m["general.quantization_version"] = gguf_u32(2);
    m["general.alignment"] = gguf_u32(32);
    m["llama.vocab_size"] = gguf_u32(c.vocab_size);
    m["llama.context_length"] = gguf_u32(c.max_seq_len);
    m["llama.embedding_length"] = gguf_u32(c.dim);
    m["llama.block_count"] = gguf_u32(c.n_layers);
    m["llama.feed_forward_length"] = gguf_u32(c.hidden_dim);
    m["llama.rope.dimension_count"] = gguf_u32(c.head_dim);
    m["llama.rope.freq_base"] = gguf_f32(c.rope_theta);
    m["llama.attention.head_count"] = gguf_u32(c.n_heads);
    m["llama.attention.head_count_kv"] = gguf_u32(c.n_kv_heads);
    m["llama.attention.layer_norm_rms_epsilon"] = gguf_f32(c.norm_eps);
    m["tokenizer.ggml.model"] = gguf_str("llama");
    m["tokenizer.ggml.pre"] = gguf_str("default");
    m["tokenizer.ggml.tokens"] = gguf_array(GGUF_STRING, tokens);
    m["tokenizer.ggml.scores"] = gguf_array(GGUF_FLOAT32, scores);
    m["tokenizer.ggml.token_type"] = gguf_array(GGUF_INT32, types);
    m["tokenizer.ggml.bos_token_id"] = gguf_u32(sp.bos_id());
    m["tokenizer.ggml.eos_token_id"] = gguf_u32(sp.eos_id());
    m["tokenizer.ggml.unknown_token_id"] = gguf_u32(sp.unk_id());
    if (sp.pad_id() >= 0) m["tokenizer.ggml.padding_token_id"] = gguf_u32(sp.pad_id());
    m["tokenizer.ggml.add_bos_token"] = gguf_bool(true);
    m["tokenizer.ggml.add_eos_token"] = gguf_bool(false);
    m["tokenizer.chat_template"] = gguf_str(llama2_chat_template_jinja());
    return m;
}

void check_metadata(const GgufFile& g, const std::map<std::string, GgufValue>& want) {
    CHECK(g.kvs.size() == want.size());
    for (const auto& kv : want) {
        const GgufValue* got = g.find(kv.first);
        REQUIRE_MESSAGE(got, g.path << ": no key " << kv.first);
        CHECK_MESSAGE(*got == kv.second, kv.first << ": " << got->str() << " vs " << kv.second.str());
    }
    REQUIRE(!g.kvs.empty());
    CHECK(g.kvs[0].first == "general.architecture");
}

// llama.cpp's tensor names for HF's, in the order the tool writes them (layer by layer)
struct NamedWeight {
    int id, layer;
    std::string gguf;
};
std::vector<NamedWeight> expected_tensors(const Config& c) {
    const std::pair<int, const char*> per_layer[] = {{W_ATTN_NORM, "attn_norm"}, {W_Q, "attn_q"},      {W_K, "attn_k"},
                                                     {W_V, "attn_v"},            {W_O, "attn_output"}, {W_MLP_NORM, "ffn_norm"},
                                                     {W_GATE, "ffn_gate"},       {W_UP, "ffn_up"},     {W_DOWN, "ffn_down"}};
    std::vector<NamedWeight> v = {{W_EMBED, 0, "token_embd.weight"}};
    for (int l = 0; l < c.n_layers; l++)
        for (const auto& p : per_layer) v.push_back({p.first, l, "blk." + std::to_string(l) + "." + p.second + ".weight"});
    v.push_back({W_FINAL_NORM, 0, "output_norm.weight"});
    if (!c.tie_embeddings) v.push_back({W_LM_HEAD, 0, "output.weight"});
    return v;
}

// The documented type rule (README, gguf.h), spelled out again.
uint32_t expected_type(const Config& c, int id, const std::string& type) {
    const WeightInfo wi = weight_info(c, id);
    if (wi.rows == 1) return GGML_F32;
    uint32_t t = type == "f16" ? GGML_F16 : type == "q8_0" ? GGML_Q8_0 : id == W_LM_HEAD ? GGML_Q8_0 : GGML_Q4_0;
    return wi.cols % 32 == 0 ? t : GGML_F16;
}

}  // namespace

// ----------------------------------------------------------------------------------------------

TEST_CASE("gguf: Q8_0 and Q4_0 blocks have ggml's layout and stay within half a step") {
    const int64_t n = 32 * 64;
    std::vector<float> x = random_values(n, 7, 0.02f);
    for (int j = 0; j < 32; j++) x[j] = 0.0f;                       // an all-zero block
    x[40] = 3.0f;                                                   // a block with one large outlier
    x[70] = -5.0f;                                                  // one whose largest value is negative
    for (int j = 0; j < 32; j++) x[96 + j] = (float)(j % 16 - 8) * 0.5f;  // -4 .. 3.5: whole Q4_0 steps
    for (uint32_t type : {GGML_Q8_0, GGML_Q4_0}) {
        CAPTURE(ggml_type_name(type));
        std::vector<uint8_t> bytes((size_t)ggml_tensor_bytes(type, {(uint64_t)n}));
        CHECK(bytes.size() == (size_t)(n / 32 * (type == GGML_Q8_0 ? 34 : 18)));
        ggml_from_f32(type, x.data(), n, bytes.data());
        const auto worst = check_blocks(type, bytes.data(), x.data(), n, ggml_type_name(type));
        MESSAGE(std::string(ggml_type_name(type)) << ": largest error " << worst.first << " steps (bound 0.5)"
                                                  << (type == GGML_Q4_0 ? ", on the clipped side " + std::to_string(worst.second) : ""));
        // ggml_to_f32 decodes what the layout says
        std::vector<float> back((size_t)n), mine(32);
        ggml_to_f32(type, bytes.data(), n, back.data());
        for (int64_t b = 0; b < n / 32; b++) {
            decode_block(type, bytes.data() + b * ggml_block_bytes(type), mine.data());
            CHECK(std::equal(mine.begin(), mine.end(), back.begin() + b * 32));
        }
        CHECK(block_scale(bytes.data()) == 0.0f);  // the zero block: scale 0, every value 0
        for (int j = 0; j < 32; j++) CHECK(back[j] == 0.0f);
        // the scales ggml defines: max|x| / 127, and -m / 8 for the m of largest magnitude
        const float d1 = block_scale(bytes.data() + ggml_block_bytes(type)), d2 = block_scale(bytes.data() + 2 * ggml_block_bytes(type));
        CHECK(d1 == f16_to_f32(f32_to_f16(type == GGML_Q8_0 ? 3.0f / 127 : -3.0f / 8)));
        CHECK(d2 == f16_to_f32(f32_to_f16(type == GGML_Q8_0 ? 5.0f / 127 : 5.0f / 8)));
        CHECK(back[40] == doctest::Approx(3.0).epsilon(1e-3));
        if (type == GGML_Q4_0)  // steps of 0.5 = m / -8 with m = -4, none beyond +7 steps: exact
            for (int j = 0; j < 32; j++) CHECK(back[96 + j] == x[96 + j]);
    }
}

TEST_CASE("gguf: writer and reader agree on every value type, tensor infos, alignment and padding") {
    TempDir t;
    const std::string path = t / "all.gguf";
    auto val = [](GgufValueType type, uint64_t u, int64_t i, double f) {
        GgufValue v;
        v.type = type, v.u = u, v.i = i, v.f = f;
        return v;
    };
    GgufKVs kvs = {
        {"general.alignment", gguf_u32(32)},
        {"t.u8", val(GGUF_UINT8, 255, 0, 0)},
        {"t.i8", val(GGUF_INT8, 0, -128, 0)},
        {"t.u16", val(GGUF_UINT16, 65535, 0, 0)},
        {"t.i16", val(GGUF_INT16, 0, -32768, 0)},
        {"t.u32", gguf_u32(4000000000u)},
        {"t.i32", gguf_i32(-2000000000)},
        {"t.f32", gguf_f32(1e-5f)},
        {"t.bool", gguf_bool(true)},
        {"t.str", gguf_str("héllo ▁ world")},
        {"t.empty", gguf_str("")},
        {"t.u64", val(GGUF_UINT64, 18000000000000000000ull, 0, 0)},
        {"t.i64", val(GGUF_INT64, 0, -9000000000000000000ll, 0)},
        {"t.f64", val(GGUF_FLOAT64, 0, 0, 3.141592653589793)},
        {"t.arr", gguf_array(GGUF_ARRAY, {gguf_array(GGUF_STRING, {gguf_str("a"), gguf_str("bc")}),
                                          gguf_array(GGUF_STRING, {})})},
        {"t.f32s", gguf_array(GGUF_FLOAT32, {gguf_f32(-0.0f), gguf_f32(65504.0f)})},
    };
    struct T {
        std::string name;
        std::vector<uint64_t> ne;
        uint32_t type;
    };
    const T specs[] = {{"a.f32", {5}, GGML_F32}, {"b.f16", {3, 3}, GGML_F16}, {"c.q8", {64, 3}, GGML_Q8_0},
                       {"d.bf16", {7}, GGML_BF16}, {"e.q4", {32, 2, 1, 2}, GGML_Q4_0}};
    std::vector<GgufTensorInfo> infos;
    std::vector<std::vector<uint8_t>> data;
    for (const T& s : specs) {
        GgufTensorInfo i;
        i.name = s.name, i.ne = s.ne, i.type = s.type;
        infos.push_back(i);
        data.emplace_back((size_t)i.bytes());
        for (size_t k = 0; k < data.back().size(); k++) data.back()[k] = (uint8_t)(k * 7 + data.size());
    }
    {
        GgufWriter w(path, kvs, infos);
        for (const auto& d : data) w.write(d.data());
        w.commit();
    }
    const std::string raw = read_bytes(path);
    CHECK(raw.substr(0, 4) == "GGUF");
    uint32_t version;
    uint64_t n_tensors, n_kv;
    memcpy(&version, raw.data() + 4, 4);
    memcpy(&n_tensors, raw.data() + 8, 8);
    memcpy(&n_kv, raw.data() + 16, 8);
    CHECK(version == 3);
    CHECK(n_tensors == 5);
    CHECK(n_kv == kvs.size());

    GgufFile g(path);
    CHECK(g.version == 3);
    CHECK(g.alignment == 32);
    CHECK(g.data_start % 32 == 0);
    REQUIRE(g.kvs.size() == kvs.size());
    for (size_t k = 0; k < kvs.size(); k++) {
        CHECK(g.kvs[k].first == kvs[k].first);
        CHECK_MESSAGE(g.kvs[k].second == kvs[k].second, kvs[k].first << ": " << g.kvs[k].second.str());
    }
    CHECK(g.find("t.f32")->f == (double)1e-5f);
    CHECK(g.find("t.i8")->i == -128);
    REQUIRE(g.tensors.size() == 5);
    uint64_t expect_offset = 0;
    for (size_t k = 0; k < 5; k++) {
        const GgufTensorInfo& ti = g.tensors[k];
        CHECK(ti.name == specs[k].name);
        CHECK(ti.ne == specs[k].ne);
        CHECK(ti.type == specs[k].type);
        CHECK(ti.offset == expect_offset);
        CHECK(ti.offset % 32 == 0);
        CHECK(g.read(ti) == data[k]);
        // the padding after each tensor is zeros
        const uint64_t end = g.data_start + ti.offset + ti.bytes(), next = g.data_start + align32(ti.offset + ti.bytes());
        for (uint64_t p = end; p < next; p++) CHECK(raw[p] == '\0');
        expect_offset = align32(ti.offset + ti.bytes());
    }
    CHECK(raw.size() == g.data_start + expect_offset);
    CHECK(g.tensors[4].numel() == 128);
    CHECK(ggml_tensor_bytes(GGML_Q4_0, {32, 2, 1, 2}) == 4 * 18);
    CHECK_THROWS_AS(g.tensor("nope"), InputError);
}

TEST_CASE("gguf: ./merge_adapter --gguf on every fixture reads back in full: metadata, tensor infos, data") {
    for (const std::string& fix : tiny_fixtures()) {
        CAPTURE(fix);
        const MergeInputs& in = merge_inputs(fix);
        const Config& c = in.cfg;
        const std::vector<float> merged = expected_merged(in.model, in.adapter);
        const Weights<float> w = carve_weights(c, const_cast<float*>(merged.data()));
        TempDir t;
        for (const std::string type : {"f16", "q8_0", "q4_0"}) {
            CAPTURE(type);
            const std::string path = t / (type + ".gguf");
            CmdResult r = merge_adapter("-m " + in.model + " -a " + in.adapter + " -t " + in.tokenizer + " --gguf " + path +
                                        " --type " + type + (type == "f16" ? " --dtype f16 -o " + (t / "hf") : ""));
            REQUIRE_MESSAGE(r.exit_code == 0, r.output);
            GgufFile g(path);
            CHECK(g.version == 3);
            CHECK(g.alignment == 32);
            CHECK(g.data_start % 32 == 0);
            const uint32_t ft = type == "f16" ? 1 : type == "q8_0" ? 7 : 2;  // llama.cpp's LLAMA_FTYPE_MOSTLY_*
            // general.name: the HF directory's name when -o is given too, else the file's stem
            check_metadata(g, expected_metadata(c, ft, type == "f16" ? "hf" : type, in.tokenizer));

            const std::vector<NamedWeight> names = expected_tensors(c);
            REQUIRE(g.tensors.size() == names.size());
            uint64_t offset = 0;
            std::pair<double, double> worst = {0, 0};
            for (size_t k = 0; k < names.size(); k++) {
                const GgufTensorInfo& ti = g.tensors[k];
                const NamedWeight& nw = names[k];
                CAPTURE(nw.gguf);
                const WeightInfo wi = weight_info(c, nw.id);
                CHECK(ti.name == nw.gguf);
                CHECK(ti.ne == (wi.rows == 1 ? std::vector<uint64_t>{(uint64_t)wi.cols}
                                             : std::vector<uint64_t>{(uint64_t)wi.cols, (uint64_t)wi.rows}));
                CHECK(ti.type == expected_type(c, nw.id, type));
                CHECK(ti.offset == offset);
                offset = align32(ti.offset + ti.bytes());
                // the merged values, q and k rows in llama.cpp's order
                std::vector<float> x(*w.ptr(nw.id) + nw.layer * wi.numel(), *w.ptr(nw.id) + (nw.layer + 1) * wi.numel());
                if (nw.id == W_Q) x = permuted(x, c.n_heads, c.head_dim, c.dim);
                if (nw.id == W_K) x = permuted(x, c.n_kv_heads, c.head_dim, c.dim);
                const std::vector<uint8_t> bytes = g.read(ti);
                if (ti.type == GGML_F32) {
                    CHECK(memcmp(bytes.data(), x.data(), bytes.size()) == 0);
                } else if (ti.type == GGML_F16) {
                    std::vector<uint16_t> h(x.size());
                    convert_from_f32(h.data(), x.data(), DT_F16, x.size());
                    CHECK(memcmp(bytes.data(), h.data(), bytes.size()) == 0);
                } else {
                    const auto e = check_blocks(ti.type, bytes.data(), x.data(), (int64_t)x.size(), nw.gguf);
                    worst = {std::max(worst.first, e.first), std::max(worst.second, e.second)};
                }
            }
            CHECK(read_bytes(path).size() == g.data_start + offset);
            if (type != "f16")
                MESSAGE(in.name << " " << type << ": largest error " << worst.first << " steps of the block scale (bound 0.5)"
                                << (type == "q4_0" ? ", " + std::to_string(worst.second) + " on the clipped side" : ""));
            CHECK(temp_leftovers(t.path).empty());
        }
        // the f16 GGUF and the f16 HF checkpoint written with it hold the same numbers (q/k reordered)
        GgufFile g(t / "f16.gguf");
        SafeTensors st(t / "hf/model.safetensors");
        for (const NamedWeight& nw : expected_tensors(c)) {
            const GgufTensorInfo& ti = g.tensor(nw.gguf);
            if (ti.type != GGML_F16) continue;
            std::vector<float> hf = st.read_f32(weight_hf_name(nw.id, nw.layer));
            if (nw.id == W_Q) hf = permuted(hf, c.n_heads, c.head_dim, c.dim);
            if (nw.id == W_K) hf = permuted(hf, c.n_kv_heads, c.head_dim, c.dim);
            CHECK_MESSAGE(g.read_f32(ti) == hf, nw.gguf);
        }
    }
}

TEST_CASE("gguf: q/k rows in llama.cpp's order give its interleaved RoPE the attention scores HF's rotate_half gives") {
    const int H = 4, KV = 2, D = 16, C = 32;
    const float theta = 10000.0f;
    const std::vector<float> wq = random_values((int64_t)H * D * C, 1, 0.2f), wk = random_values((int64_t)KV * D * C, 2, 0.2f);
    const std::vector<float> x = random_values(2 * C, 3, 1.0f);  // two tokens (N = 2, C)
    const std::vector<int32_t> pos = {5, 11};
    std::vector<float> wq_p((size_t)H * D * C), wk_p((size_t)KV * D * C);
    gguf_permute_qk_rows(wq.data(), wq_p.data(), H, D, C);
    gguf_permute_qk_rows(wk.data(), wk_p.data(), KV, D, C);
    CHECK(wq_p == permuted(wq, H, D, C));
    CHECK(wk_p == permuted(wk, KV, D, C));
    // HF: project, then RoPE with rotate_half (the CPU reference's op)
    std::vector<float> q(2 * H * D), k(2 * KV * D), cos_t, sin_t;
    cpu::matmul_forward(q.data(), x.data(), wq.data(), 2, C, H * D);
    cpu::matmul_forward(k.data(), x.data(), wk.data(), 2, C, KV * D);
    cpu::rope_tables(cos_t, sin_t, pos.data(), 2, D, theta);
    cpu::rope_forward(q.data(), cos_t.data(), sin_t.data(), 2, H, D);
    cpu::rope_forward(k.data(), cos_t.data(), sin_t.data(), 2, KV, D);
    // llama.cpp (rope type "norm", what its llama architecture uses): rotate pairs (2i, 2i + 1)
    std::vector<float> qp(2 * H * D), kp(2 * KV * D);
    cpu::matmul_forward(qp.data(), x.data(), wq_p.data(), 2, C, H * D);
    cpu::matmul_forward(kp.data(), x.data(), wk_p.data(), 2, C, KV * D);
    auto rope_pairs = [&](std::vector<float>& v, int heads) {
        for (int n = 0; n < 2; n++)
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < D / 2; i++) {
                    const double a = pos[n] * std::pow((double)theta, -2.0 * i / D);
                    float* p = v.data() + ((int64_t)n * heads + h) * D + 2 * i;
                    const double x0 = p[0], x1 = p[1];
                    p[0] = (float)(x0 * std::cos(a) - x1 * std::sin(a));
                    p[1] = (float)(x0 * std::sin(a) + x1 * std::cos(a));
                }
    };
    rope_pairs(qp, H);
    rope_pairs(kp, KV);
    // every query-key score agrees (head h reads kv head h / (H / KV) in both)
    double worst = 0;
    for (int h = 0; h < H; h++)
        for (int a = 0; a < 2; a++)
            for (int b = 0; b < 2; b++) {
                double s = 0, sp = 0;
                for (int d = 0; d < D; d++) {
                    s += q[(a * H + h) * D + d] * k[(b * KV + h / (H / KV)) * D + d];
                    sp += qp[(a * H + h) * D + d] * kp[(b * KV + h / (H / KV)) * D + d];
                }
                worst = std::max(worst, std::fabs(s - sp) / std::max(1.0, std::fabs(s)));
            }
    CHECK(worst < 1e-5);
    // and the rotated vectors themselves are the same, reordered
    for (int n = 0; n < 2; n++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < D / 2; i++)
                for (int j = 0; j < 2; j++)
                    CHECK(qp[(n * H + h) * D + 2 * i + j] == doctest::Approx(q[(n * H + h) * D + j * (D / 2) + i]).epsilon(1e-4));
}

TEST_CASE("gguf: the real Llama 2 tokenizer as llama.cpp's vocabulary, end to end through ./merge_adapter") {
    REQUIRE_MESSAGE(path_exists(kTokenizer), "needs ../shared/data");
    const LlamaVocab v = load_llama_vocab(kTokenizer);
    REQUIRE(v.tokens.size() == 32000);
    CHECK(v.tokens[0] == "<unk>");
    CHECK(v.tokens[1] == "<s>");
    CHECK(v.tokens[2] == "</s>");
    CHECK(v.tokens[3] == "<0x00>");
    CHECK(v.tokens[258] == "<0xFF>");
    CHECK(v.tokens[259] == "▁▁");
    CHECK(v.bos == 1);
    CHECK(v.eos == 2);
    CHECK(v.unk == 0);
    CHECK(v.pad == -1);
    std::map<int, int> count;
    for (int32_t ty : v.types) count[ty]++;
    CHECK(count == std::map<int, int>{{1, 32000 - 259}, {2, 1}, {3, 2}, {6, 256}});
    CHECK(v.types[0] == 2);
    CHECK(v.types[1] == 3);
    CHECK(v.types[100] == 6);
    CHECK(v.scores[0] == 0.0f);
    CHECK(v.scores[300] < 0.0f);

    // a small random Llama with Llama 2's vocabulary, merged and written with the real tokenizer
    TempDir t;
    Config c = llama2_config(2, 64, 96, 4, 2, 32000);
    const std::vector<float> w = random_values(total_weight_numel(c), 11, 0.02f);
    ModelHeader h = make_model_header(c, DT_F16);
    sha256_file(kTokenizer, h.tokenizer_sha256);
    std::vector<uint16_t> w16(w.size());
    convert_from_f32(w16.data(), w.data(), DT_F16, w.size());
    write_model(t / "model.bin", h, w16.data(), w16.size() * 2);
    Adapter ad;
    ad.base = c;
    ad.lora = LoraConfig{4, 8.0f, 0.0f, LORA_ALL_TARGETS};
    ad.params = random_values(lora_layout(c, ad.lora).total, 12, 0.05f);
    write_adapter(t / "adapter.bin", ad);
    CmdResult r = merge_adapter("-m " + (t / "model.bin") + " -a " + (t / "adapter.bin") + " -t " + kTokenizer + " -o " +
                                (t / "Llama-merged") + " --gguf " + (t / "x.gguf") + " --type q4_0 --name 'my model'");
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
    GgufFile g(t / "x.gguf");
    check_metadata(g, expected_metadata(c, 2, "my model", kTokenizer));
    CHECK(g.find("tokenizer.ggml.padding_token_id") == nullptr);
    CHECK(g.find("tokenizer.ggml.tokens")->array[29871].s == "▁");
    CHECK(g.tensor("output.weight").type == GGML_Q8_0);
    CHECK(g.tensor("token_embd.weight").type == GGML_Q4_0);
    CHECK(g.tensor("blk.1.ffn_down.weight").type == GGML_Q4_0);
    // the HF side holds the tokenizer and re-imports with it (export_hf checks it against config.json)
    CHECK(read_bytes(t / "Llama-merged/tokenizer.model") == read_bytes(kTokenizer));
    CmdResult e = run_tool("export_hf", "-i " + (t / "Llama-merged") + " -o " + (t / "re.bin"));
    REQUIRE_MESSAGE(e.exit_code == 0, e.output);
    InFile re(t / "re.bin");
    CHECK(memcmp(read_model_header(re).tokenizer_sha256, h.tokenizer_sha256, 32) == 0);
}

TEST_CASE("gguf: damaged or foreign files are refused naming the file") {
    TempDir t;
    GgufKVs kvs = {{"general.alignment", gguf_u32(32)}, {"k.aa", gguf_str("x")}, {"k.bb", gguf_bool(true)}};
    std::vector<GgufTensorInfo> infos(2);
    infos[0].name = "t0", infos[0].ne = {8}, infos[0].type = GGML_F32;
    infos[1].name = "t1", infos[1].ne = {32, 2}, infos[1].type = GGML_Q8_0;
    {
        GgufWriter w(t / "good.gguf", kvs, infos);
        const std::vector<uint8_t> zeros(1000, 0);
        w.write(zeros.data());
        w.write(zeros.data());
        w.commit();
    }
    const std::string good = read_bytes(t / "good.gguf");
    REQUIRE_NOTHROW(GgufFile(t / "good.gguf"));
    auto at = [&](const std::string& s) {  // where a string's bytes are
        const size_t p = good.find(s);
        REQUIRE(p != std::string::npos);
        return p;
    };
    auto patched = [&](size_t pos, const void* v, size_t n) {
        std::string s = good;
        memcpy(&s[pos], v, n);
        return s;
    };
    const uint32_t v1 = 1, u5 = 5, u12 = 12, t99 = 99, type77 = 77;
    const uint64_t huge = 1ull << 40, off33 = 32 + 1, off0 = 0, ne16 = 16;
    const uint8_t two = 2;
    const size_t t1 = at("t1") + 2;  // then: u32 n_dims, u64 ne[2], u32 type, u64 offset
    struct Bad {
        const char* what;
        std::string bytes, says;
    };
    const Bad bad[] = {
        {"empty", "", "not a GGUF file"},
        {"a safetensors file", std::string(100, 'x'), "wrong magic"},
        {"version 1", patched(4, &v1, 4), "version 1"},
        {"key count beyond the file", patched(16, &huge, 8), "corrupt GGUF header"},
        {"key length beyond the file", patched(24, &huge, 8), "truncated or corrupt"},
        {"alignment 12", patched(at("general.alignment") + 17 + 4, &u12, 4), "general.alignment"},
        {"unknown value type", patched(at("k.aa") + 4, &type77, 4), "unknown value type 77"},
        {"bool 2", patched(at("k.bb") + 4 + 4, &two, 1), "bool value 2"},
        {"duplicate key", [&] { std::string s = good; s.replace(at("k.bb"), 4, "k.aa"); return s; }(), "appears twice"},
        {"5 dims", patched(t1, &u5, 4), "5 dims"},
        {"unknown tensor type", patched(t1 + 4 + 16, &t99, 4), "ggml type 99"},
        {"rows not whole blocks", patched(t1 + 4, &ne16, 8), "not whole blocks"},
        {"offset not aligned", patched(t1 + 4 + 16 + 4, &off33, 8), "not a multiple of the alignment"},
        {"overlapping tensors", patched(t1 + 4 + 16 + 4, &off0, 8), "overlaps"},
        {"truncated data", good.substr(0, good.size() - 40), "truncated GGUF"},
    };
    for (const Bad& b : bad) {
        CAPTURE(b.what);
        const std::string p = t / "bad.gguf";
        write_bytes(p, b.bytes);
        const std::string msg = input_error_of([&] { GgufFile g(p); });
        CHECK_MESSAGE(msg.find(p) != std::string::npos, msg);
        CHECK_MESSAGE(msg.find(b.says) != std::string::npos, msg);
    }
}
