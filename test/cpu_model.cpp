// test/cpu_model.cpp — tests of model.cpp: the config presets and custom shapes, and the
// project's three file formats and their readers: the model file (dense and pre-quantized NF4: the
// 7B size arithmetic, damaged or foreign files, corrupt NF4 records), the data file (round trip, the
// documented layout, broken files, check_data_matches_model), and the adapter file (fp16 values, the
// header, damaged or foreign files, also refused by ./convert_adapter). Every refusal is one line
// naming the file (and the tensor, where there is one).
// Run from the repo root after `make NO_CUDA=1 export_hf convert_adapter test_cpu`:
//   ./test_cpu -tc="model*,data file*,adapter file*"     (or ./test_cpu -sf="*cpu_model.cpp")
// Fixtures: tiny_* directories under $FIXTURES_DIR (default ../shared/fixtures), exported with
// ./export_hf where a model file is needed.
#include <doctest/doctest.h>

#include <cstddef>
#include <cstring>
#include <map>
#include <random>

#include "hf.h"
#include "model.h"
#include "quant.h"
#include "test/fixture_util.h"
#include "test/test_util.h"

// (helpers: export_hf, nf4_file_slices, fixture_config, peft_slots, f16_round, convert_adapter and
// check_clean_failure are in test/fixture_util.h; file utilities and input_error_of() in test/test_util.h)

// ----------------------------------------------------------------------------------------------
// presets and custom shapes

TEST_CASE("model: model presets and custom shapes for random models") {
    Config c = llama2_preset("70b");
    CHECK(c.n_layers == 80);
    CHECK(c.n_kv_heads == 8);  // GQA
    CHECK(c.dim / c.n_heads == 128);
    c = llama2_preset("layers=3,dim=512,hidden=1376,heads=4,kv=2,vocab=1000");
    CHECK(c.n_layers == 3);
    CHECK(c.head_dim == 128);
    CHECK(c.n_kv_heads == 2);
    CHECK(c.vocab_size == 1000);
    CHECK_THROWS_AS(llama2_preset("8b"), InputError);
    CHECK_THROWS_AS(llama2_preset("layers=3,dim=500,heads=3"), InputError);  // dim not a multiple of heads
    CHECK_THROWS_AS(llama2_preset("layers=3,width=512"), InputError);
    CHECK_THROWS_AS(llama2_preset("layers=-1"), InputError);
}

// ----------------------------------------------------------------------------------------------
// the model file readers

TEST_CASE("model file: damaged or foreign files are refused with the path in the message") {
    const std::string fix = tiny_fixtures()[0];
    TempDir t;
    CmdResult ok = export_hf("-i " + fix + " -o " + (t / "good.bin"));
    REQUIRE_MESSAGE(ok.exit_code == 0, ok.output);
    const std::string good = read_bytes(t / "good.bin");
    {  // the good file itself reads
        std::vector<float> w;
        CHECK(input_error_of([&] { load_model_f32(t / "good.bin", w); }) == "");
    }
    auto patched = [&](size_t offset, const void* v, size_t n) {
        std::string b = good;
        memcpy(&b[offset], v, n);
        return b;
    };
    std::mt19937 rng(99);
    std::string random_bytes(good.size(), '\0');
    for (char& ch : random_bytes) ch = (char)(rng() & 0xff);
    // a data file where a model file belongs (the header's magic says what it is)
    Dataset ds;
    memset(&ds.header, 0, sizeof(ds.header));
    ds.header.magic = DATA_MAGIC;
    ds.header.version = DATA_VERSION;
    ds.header.n_tokens = 3;
    ds.header.n_conversations = 1;
    ds.header.vocab_size = 32000;
    ds.header.bos_id = 1;
    ds.header.eos_id = 2;
    ds.tokens = {1, 5, 2};
    ds.loss_mask = {0, 1, 1};
    ds.header.n_loss_tokens = 2;
    ds.conv_offsets = {0, 3};
    write_dataset(t / "data.bin", ds);
    const uint32_t bad_version = 99, zero = 0, bad_dtype = 7;
    // the exported fixture is bf16 or f16: the other 16-bit type has the same size, only the checksum tells
    InFile gh(t / "good.bin");
    const uint32_t f16_dtype = read_model_header(gh).dtype == DT_BF16 ? DT_F16 : DT_BF16;

    // in_header: read_model_header alone sees it (else only a reader of the whole payload does)
    struct Case { const char* what; std::string bytes; const char* mention; bool in_header = true; };
    std::vector<Case> cases = {
        {"truncated by one byte", good.substr(0, good.size() - 1), "truncated"},
        {"truncated inside the header", good.substr(0, 100), "truncated"},
        {"empty", "", "truncated"},
        {"oversized", good + "x", "oversized"},
        {"random bytes", random_bytes, "wrong magic"},
        {"a safetensors file", read_bytes(fix + "/model.safetensors"), "wrong magic"},
        {"a data file", read_bytes(t / "data.bin"), "data file"},
        {"version 99", patched(offsetof(ModelHeader, version), &bad_version, 4), "version 99"},
        {"n_layers 0", patched(offsetof(ModelHeader, config) + offsetof(Config, n_layers), &zero, 4), "n_layers"},
        {"unknown dtype", patched(offsetof(ModelHeader, dtype), &bad_dtype, 4), "dtype"},
        {"a payload byte changed", [&] { std::string b = good; b[good.size() / 2] ^= 0x10; return b; }(), "checksum", false},
        {"f16 in the header for bf16 weights", patched(offsetof(ModelHeader, dtype), &f16_dtype, 4), "checksum", false},
        {"a reserved byte set", [&] { std::string b = good; b[250] = 7; return b; }(), "reserved"},
    };
    for (const Case& k : cases) {
        CAPTURE(k.what);
        const std::string path = t / "bad.bin";
        write_bytes(path, k.bytes);
        std::string m1 = input_error_of([&] {
            InFile in(path);
            read_model_header(in);
        });
        std::vector<float> w;
        std::string m2 = input_error_of([&] { load_model_f32(path, w); });
        if (!k.in_header) CHECK_MESSAGE(m1 == "", m1);
        for (const std::string& m : k.in_header ? std::vector<std::string>{m1, m2} : std::vector<std::string>{m2}) {
            CHECK_MESSAGE(m.find(path) != std::string::npos, m);
            CHECK_MESSAGE(m.find(k.mention) != std::string::npos, m);
            CHECK(m.find('\n') == std::string::npos);
        }
    }
    CHECK(input_error_of([&] { InFile in(t / "missing.bin"); }).find(t / "missing.bin") != std::string::npos);
}

// ----------------------------------------------------------------------------------------------
// NF4 model files (export_hf --dtype nf4): the seven linears as bitsandbytes' NF4 records, the
// rest 16-bit. Run: ./test_cpu -tc="model file*NF4*"

TEST_CASE("model file: NF4 layout arithmetic for Llama-2-7b gives about 3.9 GB") {
    ModelHeader h;
    memset(&h, 0, sizeof(h));
    h.config = llama2_preset("7b");
    h.dtype = DT_BF16;
    h.linear_format = LINEAR_DENSE;
    int64_t dense = sizeof(ModelHeader), nf4 = sizeof(ModelHeader);
    for (int id = 0; id < NUM_WEIGHTS; id++) dense += model_weight_bytes(h, id);
    h.linear_format = LINEAR_NF4;
    for (int id = 0; id < NUM_WEIGHTS; id++) nf4 += model_weight_bytes(h, id);
    // Llama-2-7b has 6,738,415,616 parameters (its model card's count): 2 bytes each in bf16
    CHECK(dense == 256 + 2 * 6738415616LL);
    CHECK(nf4 >= 3.7e9);
    CHECK(nf4 <= 4.1e9);
    // by hand: per layer 4 (4096 x 4096) and 3 (11008 x 4096) linears, each record 4 bits a weight,
    // one byte per 64 weights, one fp32 per 64 * 256 weights, one fp32 offset, padded to 16 bytes
    const int64_t L = 32, C = 4096, F = 11008, V = 32000;
    int64_t by_hand = sizeof(ModelHeader) + (2 * V * C + (2 * L + 1) * C) * 2;
    for (int64_t n : {C * C, C * C, C * C, C * C, F * C, F * C, F * C}) {
        int64_t rec = 4 + 4 * ((n + 64 * 256 - 1) / (64 * 256));
        rec = (rec + 15) / 16 * 16 + (n + 63) / 64;
        rec = (rec + 15) / 16 * 16 + n / 2;
        by_hand += L * ((rec + 15) / 16 * 16);
    }
    CHECK(nf4 == by_hand);
    MESSAGE("Llama-2-7b model file: " << dense << " bytes bf16, " << nf4 << " bytes with NF4 linears");
}

TEST_CASE("model file: damaged NF4 files are refused naming the file and the tensor") {
    const std::string fix = tiny_fixtures()[0];
    TempDir t;
    CmdResult ok = export_hf("-i " + fix + " -o " + (t / "good.bin") + " --dtype nf4");
    REQUIRE_MESSAGE(ok.exit_code == 0, ok.output);
    CmdResult ok_dense = export_hf("-i " + fix + " -o " + (t / "dense.bin"));
    REQUIRE_MESSAGE(ok_dense.exit_code == 0, ok_dense.output);
    const std::string good = read_bytes(t / "good.bin"), dense = read_bytes(t / "dense.bin");
    std::vector<float> w;
    REQUIRE(input_error_of([&] { load_model_f32(t / "good.bin", w); }) == "");
    InFile gin(t / "good.bin");
    const ModelHeader h = read_model_header(gin);
    const std::vector<FileSlice> slices = nf4_file_slices(h.config, h.dtype);
    auto slice_of = [&](int id, int layer) {
        for (const FileSlice& s : slices)
            if (s.id == id && s.layer == layer) return s;
        FAIL("no slice");
        return slices[0];
    };
    auto patched = [](std::string b, size_t offset, const void* v, size_t n) {
        memcpy(&b[offset], v, n);
        return b;
    };
    const float nan = NAN, inf = INFINITY, minus_one = -1.0f;
    const int32_t lf2 = 2, lf_neg = -1, nf4_fmt = LINEAR_NF4, dense_fmt = LINEAR_DENSE, f32 = DT_F32;
    const FileSlice up = slice_of(W_UP, h.config.n_layers - 1), q = slice_of(W_Q, 0), down = slice_of(W_DOWN, 0);
    const Nf4Layout up_l = nf4_layout(up.numel), q_l = nf4_layout(q.numel), down_l = nf4_layout(down.numel);
    const size_t lf_at = offsetof(ModelHeader, linear_format), dt_at = offsetof(ModelHeader, dtype);

    struct Case { std::string what, bytes, mention, tensor; };
    std::vector<Case> cases = {
        {"NaN second-level scale", patched(good, up.offset + up_l.scale2_at, &nan, 4), "corrupt NF4 record", up.name},
        {"NaN offset", patched(good, q.offset + q_l.offset_at, &nan, 4), "corrupt NF4 record", q.name},
        {"Inf last second-level scale", patched(good, down.offset + down_l.scale2_at + 4 * (down_l.n_dq_blocks - 1), &inf, 4),
         "corrupt NF4 record", down.name},
        {"negative second-level scale", patched(good, up.offset + up_l.scale2_at, &minus_one, 4), "corrupt NF4 record", up.name},
        {"truncated by one byte", good.substr(0, good.size() - 1), "truncated", ""},
        {"truncated inside a record", good.substr(0, (size_t)(up.offset + up.bytes / 2)), "truncated", ""},
        {"oversized", good + std::string(16, '\0'), "oversized", ""},
        {"linear_format 2", patched(good, lf_at, &lf2, 4), "linear_format", ""},
        {"linear_format -1", patched(good, lf_at, &lf_neg, 4), "linear_format", ""},
        {"NF4 file marked dense", patched(good, lf_at, &dense_fmt, 4), "truncated", ""},
        {"dense file marked NF4", patched(dense, lf_at, &nf4_fmt, 4), "oversized", ""},
        {"NF4 with f32 non-linear tensors", patched(good, dt_at, &f32, 4), "NF4", ""},
    };
    for (const Case& k : cases) {
        CAPTURE(k.what);
        const std::string path = t / "bad.bin";
        write_bytes(path, k.bytes);
        std::string msg = input_error_of([&] { load_model_f32(path, w); });
        CHECK_MESSAGE(msg.find(path) != std::string::npos, msg);
        CHECK_MESSAGE(msg.find(k.mention) != std::string::npos, msg);
        CHECK_MESSAGE(msg.find(k.tensor) != std::string::npos, msg);
        CHECK(msg.find('\n') == std::string::npos);
        if (k.tensor.empty()) {  // header and size problems are found by the header check alone
            std::string m2 = input_error_of([&] {
                InFile in(path);
                read_model_header(in);
            });
            CHECK_MESSAGE(m2 == msg, m2);
        }
    }
    // any code byte is valid: inverting the first packed byte of a record loads, and changes
    // exactly that record's first two weights (element 0 in the high nibble, 1 in the low one)
    const size_t byte_at = (size_t)(up.offset + up_l.packed_at);
    const char inverted = (char)~good[byte_at];
    write_bytes(t / "inverted.bin", rehashed(patched(good, byte_at, &inverted, 1), offsetof(ModelHeader, checksum)));
    std::vector<float> w2;
    REQUIRE(input_error_of([&] { load_model_f32(t / "inverted.bin", w2); }) == "");
    REQUIRE(w2.size() == w.size());
    int64_t up_at = 0;  // element offset of that record's weights in load_model_f32's output
    for (const FileSlice& s : slices) {
        if (s.id == W_UP && s.layer == up.layer) break;
        up_at += s.numel;
    }
    std::vector<int64_t> changed;
    for (size_t i = 0; i < w.size(); i++)
        if (memcmp(&w[i], &w2[i], 4) != 0) changed.push_back((int64_t)i - up_at);
    CHECK(changed == std::vector<int64_t>{0, 1});
}

// ----------------------------------------------------------------------------------------------
// the data file itself

namespace {
Dataset small_dataset() {
    Dataset d;
    DataHeader& h = d.header;
    h = DataHeader{};
    h.magic = DATA_MAGIC;
    h.version = DATA_VERSION;
    d.tokens = {1, 10, 11, 12, 2, 1, 20, 21, 2};  // two conversations
    d.loss_mask = {0, 0, 1, 1, 1, 0, 0, 1, 1};
    d.conv_offsets = {0, 5, 9};
    h.n_tokens = 9;
    h.n_conversations = 2;
    h.n_turns = 2;
    h.n_loss_tokens = 5;
    h.vocab_size = 32000;
    h.bos_id = 1;
    h.eos_id = 2;
    h.max_len = 2048;
    for (int i = 0; i < 32; i++) h.tokenizer_sha256[i] = (uint8_t)(i + 1);
    return d;
}
}  // namespace

TEST_CASE("data file: write_dataset and read_dataset round trip") {
    TempDir dir;
    Dataset d = small_dataset();
    write_dataset(dir / "d.bin", d);
    CHECK(read_bytes(dir / "d.bin").size() == sizeof(DataHeader) + 9 * 5 + 3 * 8);
    Dataset r = read_dataset(dir / "d.bin");
    DataHeader want = d.header;
    want.checksum = r.header.checksum;  // written by write_dataset (checked by read_dataset)
    CHECK(memcmp(&r.header, &want, sizeof(DataHeader)) == 0);
    CHECK(r.tokens == d.tokens);
    CHECK(r.loss_mask == d.loss_mask);
    CHECK(r.conv_offsets == d.conv_offsets);
    CHECK(r.conv_len(1) == 4);
    // the layout data/README.md documents
    CHECK(read_bytes(dir / "d.bin").substr(0, 4) == "L2DT");
    CHECK(offsetof(DataHeader, n_tokens) == 8);
    CHECK(offsetof(DataHeader, n_conversations) == 16);
    CHECK(offsetof(DataHeader, n_turns) == 24);
    CHECK(offsetof(DataHeader, n_loss_tokens) == 32);
    CHECK(offsetof(DataHeader, n_truncated) == 40);
    CHECK(offsetof(DataHeader, n_dropped) == 48);
    CHECK(offsetof(DataHeader, vocab_size) == 56);
    CHECK(offsetof(DataHeader, bos_id) == 60);
    CHECK(offsetof(DataHeader, eos_id) == 64);
    CHECK(offsetof(DataHeader, max_len) == 68);
    CHECK(offsetof(DataHeader, chat_template) == 72);
    CHECK(offsetof(DataHeader, tokenizer_sha256) == 80);
    CHECK(offsetof(DataHeader, checksum) == 112);
    CHECK(offsetof(DataHeader, reserved) == 120);
}

TEST_CASE("data file: read_dataset rejects broken files with InputError naming the file") {
    TempDir dir;
    write_dataset(dir / "good.bin", small_dataset());
    const std::string good = read_bytes(dir / "good.bin");
    const size_t hdr = sizeof(DataHeader), tokens_at = hdr, mask_at = hdr + 9 * 4, offs_at = mask_at + 9;

    auto patched = [&](size_t at, const void* v, size_t n) {
        std::string s = good;
        memcpy(&s[at], v, n);
        return s;
    };
    // a payload edit with the checksum made to agree, to reach the check behind it
    auto patched_payload = [&](size_t at, const void* v, size_t n) {
        return rehashed(patched(at, v, n), offsetof(DataHeader, checksum));
    };
    uint8_t one = 1;
    uint32_t model_magic = MODEL_MAGIC, bad_version = DATA_VERSION + 1, big_token = 32000;
    int64_t reversed = 10, last_off = 8, too_many = 1000;
    uint8_t mask2 = 2, mask0 = 0;
    struct Bad {
        const char* what;
        std::string bytes;
        const char* says;
    };
    std::string model_ish = patched(0, &model_magic, 4);
    const Bad bad[] = {
        {"empty", "", "magic"},
        {"shorter than the header", good.substr(0, 100), "truncated"},
        {"last byte missing", good.substr(0, good.size() - 1), "truncated"},
        {"a byte too many", good + "x", "oversized"},
        {"model file magic", model_ish, "model file"},
        {"random bytes", std::string(4096, '\x17'), "wrong magic"},
        {"wrong version", patched(4, &bad_version, 4), "version"},
        {"n_conversations huge", patched(offsetof(DataHeader, n_conversations), &too_many, 8), "corrupt header"},
        {"a payload byte changed", patched(tokens_at + 4, &big_token, 4), "checksum"},
        {"reserved bytes not zero", patched(255, &one, 1), "reserved"},
        {"offsets reversed", patched_payload(offs_at + 8, &reversed, 8), "conversation offsets"},
        {"last offset != n_tokens", patched_payload(offs_at + 16, &last_off, 8), "conversation offsets"},
        {"token outside the vocabulary", patched_payload(tokens_at + 4, &big_token, 4), "outside the vocabulary"},
        {"mask byte 2", patched_payload(mask_at + 2, &mask2, 1), "loss mask"},
        {"mask sum differs from header", patched_payload(mask_at + 2, &mask0, 1), "loss mask sums"},
    };
    for (const Bad& b : bad) {
        CAPTURE(b.what);
        std::string p = dir / "bad.bin";
        write_bytes(p, b.bytes);
        CHECK_THROWS_AS(read_dataset(p), InputError);
        std::string msg = input_error_of([&] { read_dataset(p); });
        CHECK(msg.find(p) != std::string::npos);
        CHECK_MESSAGE(msg.find(b.says) != std::string::npos, msg);
    }
    std::string missing = dir / "missing.bin";
    CHECK(input_error_of([&] { read_dataset(missing); }).find(missing) != std::string::npos);
}

TEST_CASE("data file: check_data_matches_model compares vocabulary, special ids and tokenizer hash") {
    Dataset d = small_dataset();
    ModelHeader m{};
    m.magic = MODEL_MAGIC;
    m.version = MODEL_VERSION;
    m.config.vocab_size = 32000;
    m.config.bos_id = 1;
    m.config.eos_id = 2;
    memcpy(m.tokenizer_sha256, d.header.tokenizer_sha256, 32);
    CHECK_NOTHROW(check_data_matches_model(d.header, "lima.bin", m, "model.bin"));

    ModelHeader small = m;
    small.config.vocab_size = 512;
    std::string msg = input_error_of([&] { check_data_matches_model(d.header, "lima.bin", small, "tiny.bin"); });
    CHECK(msg.find("lima.bin") != std::string::npos);
    CHECK(msg.find("tiny.bin") != std::string::npos);
    CHECK(msg.find("32000") != std::string::npos);
    CHECK(msg.find("512") != std::string::npos);
    CHECK_THROWS_AS(check_data_matches_model(d.header, "lima.bin", small, "tiny.bin"), InputError);

    ModelHeader other_tok = m;
    other_tok.tokenizer_sha256[5] ^= 1;
    msg = input_error_of([&] { check_data_matches_model(d.header, "lima.bin", other_tok, "model.bin"); });
    CHECK(msg.find("lima.bin") != std::string::npos);
    CHECK(msg.find("tokenizer") != std::string::npos);

    ModelHeader other_eos = m;
    other_eos.config.eos_id = 3;
    CHECK_THROWS_AS(check_data_matches_model(d.header, "lima.bin", other_eos, "model.bin"), InputError);

    // a model exported without a tokenizer (zero hash) cannot be checked that way: vocab decides
    ModelHeader no_hash = m;
    memset(no_hash.tokenizer_sha256, 0, 32);
    CHECK_NOTHROW(check_data_matches_model(d.header, "lima.bin", no_hash, "model.bin"));
}

// ----------------------------------------------------------------------------------------------
// the project's adapter file

TEST_CASE("adapter file: write_adapter then read_adapter keeps the header and rounds to fp16") {
    for (const std::string& fix : tiny_fixtures()) {
        CAPTURE(fix);
        TempDir t;
        const Config c = fixture_config(fix);
        Adapter a = read_peft_adapter(fix + "/adapter", c);
        a.lora.dropout = 0.1f;
        a.lora.target_mask = LORA_ALL_TARGETS & ~(1u << LT_K);  // not all targets: the mask must survive
        std::map<std::string, Slot> all = peft_slots(c, read_peft_adapter(fix + "/adapter", c).lora);
        std::vector<float> src = read_peft_adapter(fix + "/adapter", c).params;
        a.params.assign((size_t)lora_layout(c, a.lora).total, 0.0f);
        for (auto& kv : peft_slots(c, a.lora))  // the fixture's values for the targets kept
            std::copy(src.begin() + all[kv.first].offset, src.begin() + all[kv.first].offset + kv.second.numel(),
                      a.params.begin() + kv.second.offset);
        for (int i = 0; i < 32; i++) a.tokenizer_sha256[i] = (uint8_t)(i * 7 + 1);

        write_adapter(t / "a.bin", a);
        Adapter b = read_adapter(t / "a.bin");
        CHECK(memcmp(&b.base, &c, sizeof(Config)) == 0);
        CHECK(b.lora.rank == a.lora.rank);
        CHECK(b.lora.alpha == a.lora.alpha);
        CHECK(b.lora.dropout == a.lora.dropout);
        CHECK(b.lora.target_mask == a.lora.target_mask);
        CHECK(memcmp(b.tokenizer_sha256, a.tokenizer_sha256, 32) == 0);
        REQUIRE(b.params.size() == a.params.size());
        size_t bad = 0;
        for (size_t i = 0; i < a.params.size(); i++) {
            float want = f16_round(a.params[i]);
            bad += memcmp(&want, &b.params[i], 4) != 0;
        }
        CHECK_MESSAGE(bad == 0, base_name(fix) << ": " << bad << " values are not the fp16 rounding of the originals");
        // the layout on disk: "L2AD", version 2, then fp16 values, their checksum in the header
        std::string bytes = read_bytes(t / "a.bin");
        CHECK(bytes.size() == sizeof(AdapterHeader) + a.params.size() * 2);
        CHECK(bytes.substr(0, 4) == "L2AD");
        CHECK(bytes[4] == 2);
        uint64_t stored = 0;
        memcpy(&stored, bytes.data() + offsetof(AdapterHeader, checksum), 8);
        CHECK(stored == file_checksum(bytes.data(), 256, offsetof(AdapterHeader, checksum),
                                      payload_hash(bytes.data() + 256, bytes.size() - 256)));

        // NaN, Inf or a value beyond fp16 are refused and leave no file
        for (float v : {NAN, INFINITY, 70000.0f}) {
            CAPTURE(v);
            Adapter x = a;
            x.params[3] = v;
            std::string msg = input_error_of([&] { write_adapter(t / "x.bin", x); });
            CHECK(msg.find(t / "x.bin") != std::string::npos);
            CHECK(!path_exists(t / "x.bin"));
        }
    }
}

TEST_CASE("adapter file: damaged or foreign files are refused naming the file") {
    const std::string fix = tiny_fixtures()[0];
    TempDir t;
    const Config c = fixture_config(fix);
    write_adapter(t / "good.bin", read_peft_adapter(fix + "/adapter", c));
    const std::string good = read_bytes(t / "good.bin");
    CmdResult ex = run_cmd("./export_hf -i " + fix + " -o " + (t / "model.bin"));
    REQUIRE_MESSAGE(ex.exit_code == 0, ex.output);
    auto patched = [&](size_t offset, int32_t v) {
        std::string b = good;
        memcpy(&b[offset], &v, 4);
        return b;
    };
    std::mt19937 rng(7);
    std::string random_bytes(good.size(), '\0');
    for (char& ch : random_bytes) ch = (char)(rng() & 0xff);

    struct Case { const char* what; std::string bytes; const char* mention; };
    std::vector<Case> cases = {
        {"a model file", read_bytes(t / "model.bin"), "it is a model file"},
        {"random bytes", random_bytes, "wrong magic"},
        {"a safetensors file", read_bytes(fix + "/adapter/adapter_model.safetensors"), "wrong magic"},
        {"version 1 (before checksums)", patched(offsetof(AdapterHeader, version), 1), "version 1"},
        {"version 3", patched(offsetof(AdapterHeader, version), 3), "version 3"},
        {"one payload bit flipped", [&] { std::string b = good; b[300] ^= 1; return b; }(), "checksum"},
        {"a NaN in the tensors (checksum right)",
         [&] { std::string b = good; b[258] = 0x00; b[259] = 0x7e; return rehashed(b, offsetof(AdapterHeader, checksum)); }(), "NaN"},
        {"reserved bytes not zero", [&] { std::string b = good; b[255] = 1; return b; }(), "reserved"},
        {"trained_on 7", patched(offsetof(AdapterHeader, trained_on), 7), "trained_on"},
        {"truncated by one byte", good.substr(0, good.size() - 1), "truncated"},
        {"truncated inside the header", good.substr(0, 100), "truncated"},
        {"empty", "", "wrong magic"},
        {"oversized", good + "xy", "oversized"},
        {"tensors declared f32", patched(offsetof(AdapterHeader, dtype), DT_F32), "f32"},
        {"rank 0", patched(offsetof(AdapterHeader, lora) + offsetof(LoraConfig, rank), 0), "rank"},
        {"base with 0 layers", patched(offsetof(AdapterHeader, base) + offsetof(Config, n_layers), 0), "n_layers"},
    };
    for (const Case& k : cases) {
        CAPTURE(k.what);
        const std::string path = t / "bad.bin";
        write_bytes(path, k.bytes);
        std::string msg = input_error_of([&] { read_adapter(path); });
        CHECK_MESSAGE(msg.find(path) != std::string::npos, msg);
        CHECK_MESSAGE(msg.find(k.mention) != std::string::npos, msg);
        CHECK(msg.find('\n') == std::string::npos);
        check_clean_failure(convert_adapter("-i " + path + " -o " + (t / "peft")), path, t / "peft");
    }
}
