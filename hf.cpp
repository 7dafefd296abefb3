// hf.cpp — safetensors, Llama config.json, HF checkpoints and PEFT adapters (see hf.h).
// JSON through nlohmann-json; every malformed input becomes one InputError naming the file.
#include "hf.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <nlohmann/json.hpp>
#include <set>

using json = nlohmann::json;

// ----------------------------------------------------------------------------------------------
// safetensors

int64_t StTensor::numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

size_t st_dtype_size(const std::string& d) {
    if (d == "F64" || d == "I64" || d == "U64") return 8;
    if (d == "F32" || d == "I32" || d == "U32") return 4;
    if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
    if (d == "I8" || d == "U8" || d == "BOOL" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
    return 0;
}

int st_dtype_to_dtype(const std::string& d) {
    if (d == "F32") return DT_F32;
    if (d == "F16") return DT_F16;
    if (d == "BF16") return DT_BF16;
    return -1;
}

const char* dtype_to_st(int32_t d) { return d == DT_F32 ? "F32" : d == DT_F16 ? "F16" : "BF16"; }

std::string shape_str(const std::vector<int64_t>& s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); i++) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
}

SafeTensors::SafeTensors(const std::string& p) : path(p), file(p) {
    const char* P = path.c_str();
    if (file.size < 8) fail("%s: not a safetensors file (%lld bytes)", P, (long long)file.size);
    uint64_t n = 0;
    file.read_at(0, &n, 8, "header length");
    // a header is JSON text of modest size (safetensors itself caps it at 100 MB); a larger
    // "length" means the first 8 bytes were never a safetensors length: a foreign file
    if (n < 2 || n > (uint64_t)100 << 20)
        fail("%s: not a safetensors file (header length field reads %llu)", P, (unsigned long long)n);
    if ((int64_t)n > file.size - 8)
        fail("%s: truncated file (its header needs %llu bytes, the file has %lld)", P, (unsigned long long)n + 8,
             (long long)file.size);
    std::string text((size_t)n, '\0');
    file.read_at(8, &text[0], (size_t)n, "header");
    json h;
    try {
        h = json::parse(text);
    } catch (const std::exception&) {
        fail("%s: not a safetensors file (header is not JSON)", P);
    }
    if (!h.is_object()) fail("%s: not a safetensors file (header is not a JSON object)", P);
    data_start = 8 + (int64_t)n;
    const int64_t data_size = file.size - data_start;
    for (auto it = h.begin(); it != h.end(); ++it) {
        if (it.key() == "__metadata__") {
            if (it.value().is_object())
                for (auto m = it.value().begin(); m != it.value().end(); ++m)
                    if (m.value().is_string()) metadata[m.key()] = m.value().get<std::string>();
            continue;
        }
        const json& v = it.value();
        StTensor t;
        t.name = it.key();
        if (!v.is_object() || !v.contains("dtype") || !v["dtype"].is_string() || !v.contains("shape") ||
            !v["shape"].is_array() || !v.contains("data_offsets") || !v["data_offsets"].is_array() ||
            v["data_offsets"].size() != 2)
            fail("%s: malformed header entry for tensor '%s'", P, t.name.c_str());
        t.dtype = v["dtype"].get<std::string>();
        size_t es = st_dtype_size(t.dtype);
        if (es == 0) fail("%s: tensor '%s' has unknown dtype '%s'", P, t.name.c_str(), t.dtype.c_str());
        // the byte count is computed with overflow checks: a lying header could otherwise wrap
        // shape*size around to a small number that happens to match its data_offsets
        int64_t bytes = (int64_t)es;
        for (const json& d : v["shape"]) {
            if (!d.is_number_integer() || d.get<int64_t>() < 0 || __builtin_mul_overflow(bytes, d.get<int64_t>(), &bytes))
                fail("%s: tensor '%s' has an invalid shape %s", P, t.name.c_str(), v["shape"].dump().c_str());
            t.shape.push_back(d.get<int64_t>());
        }
        const json &b = v["data_offsets"][0], &e = v["data_offsets"][1];
        if (!b.is_number_integer() || !e.is_number_integer() || b.get<int64_t>() < 0 || e.get<int64_t>() < 0)
            fail("%s: tensor '%s' has invalid data_offsets %s", P, t.name.c_str(), v["data_offsets"].dump().c_str());
        int64_t begin = b.get<int64_t>(), end = e.get<int64_t>();
        if (end < begin || end > data_size)
            fail("%s: tensor '%s' data_offsets [%lld, %lld] lie outside the %lld data bytes (truncated or corrupt file)",
                 P, t.name.c_str(), (long long)begin, (long long)end, (long long)data_size);
        if (end - begin != bytes)
            fail("%s: tensor '%s' claims shape %s of %s (%lld bytes) but its data_offsets span %lld bytes", P,
                 t.name.c_str(), shape_str(t.shape).c_str(), t.dtype.c_str(), (long long)bytes,
                 (long long)(end - begin));
        t.begin = data_start + begin;
        t.end = data_start + end;
        tensors[t.name] = t;
    }
    // As in the reference implementation (huggingface/safetensors), the tensors must tile the data
    // section exactly: no overlap (two tensors sharing bytes), no gap, nothing after the last one.
    // A file that breaks this was not written by safetensors and its header cannot be trusted.
    std::vector<const StTensor*> by_offset;
    for (auto& kv : tensors) by_offset.push_back(&kv.second);
    std::sort(by_offset.begin(), by_offset.end(), [](const StTensor* x, const StTensor* y) {
        return x->begin != y->begin ? x->begin < y->begin : x->end < y->end;
    });
    int64_t expect = data_start;
    for (const StTensor* t : by_offset) {
        if (t->begin != expect)
            fail("%s: tensor '%s' starts at data byte %lld, expected %lld (%s; corrupt header)", P, t->name.c_str(),
                 (long long)(t->begin - data_start), (long long)(expect - data_start),
                 t->begin < expect ? "it overlaps the tensor before it" : "a gap precedes it");
        expect = t->end;
    }
    if (expect != file.size)
        fail("%s: %lld bytes after the last tensor's data (corrupt header or appended garbage)", P,
             (long long)(file.size - expect));
}

const StTensor& SafeTensors::get(const std::string& name) const {
    auto it = tensors.find(name);
    if (it == tensors.end()) fail("%s: no tensor named '%s'", path.c_str(), name.c_str());
    return it->second;
}

void SafeTensors::read_raw(const StTensor& t, void* dst) {
    file.read_at(t.begin, dst, (size_t)(t.end - t.begin), t.name.c_str());
}

std::vector<float> SafeTensors::read_f32(const std::string& name, const std::vector<int64_t>& shape) {
    const StTensor& t = get(name);
    int d = st_dtype_to_dtype(t.dtype);
    if (d < 0) fail("%s: tensor '%s' is %s, expected a float tensor", path.c_str(), name.c_str(), t.dtype.c_str());
    if (!shape.empty() && shape != t.shape)
        fail("%s: tensor '%s' has shape %s, expected %s", path.c_str(), name.c_str(), shape_str(t.shape).c_str(),
             shape_str(shape).c_str());
    std::vector<uint8_t> raw((size_t)(t.end - t.begin));
    read_raw(t, raw.data());
    std::vector<float> out((size_t)t.numel());
    convert_to_f32(out.data(), raw.data(), d, out.size());
    return out;
}

std::vector<int32_t> SafeTensors::read_i32(const std::string& name) {
    const StTensor& t = get(name);
    std::vector<int32_t> out((size_t)t.numel());
    if (t.dtype == "I32") {
        read_raw(t, out.data());
    } else if (t.dtype == "I64") {
        std::vector<int64_t> w(out.size());
        read_raw(t, w.data());
        for (size_t i = 0; i < w.size(); i++) {
            if (w[i] < INT32_MIN || w[i] > INT32_MAX)  // token ids and labels fit; anything else is corrupt
                fail("%s: tensor '%s' element %zu = %lld does not fit 32 bits", path.c_str(), name.c_str(), i, (long long)w[i]);
            out[i] = (int32_t)w[i];
        }
    } else {
        fail("%s: tensor '%s' is %s, expected I32 or I64", path.c_str(), name.c_str(), t.dtype.c_str());
    }
    return out;
}

std::vector<uint8_t> SafeTensors::read_u8(const std::string& name) {
    const StTensor& t = get(name);
    if (t.dtype != "U8") fail("%s: tensor '%s' is %s, expected U8", path.c_str(), name.c_str(), t.dtype.c_str());
    std::vector<uint8_t> out((size_t)t.numel());
    read_raw(t, out.data());
    return out;
}

int64_t StSpec::bytes() const {
    int64_t n = (int64_t)st_dtype_size(dtype);
    for (int64_t d : shape) n *= d;
    return n;
}

SafeTensorsWriter::SafeTensorsWriter(const std::string& path, std::vector<StSpec> specs,
                                     const std::map<std::string, std::string>& metadata)
    : specs_(std::move(specs)), out_(path) {
    json h = json::object();
    if (!metadata.empty()) h["__metadata__"] = metadata;
    int64_t off = 0;
    for (const StSpec& t : specs_) {
        ASSERT(st_dtype_size(t.dtype) > 0, "known dtype");
        h[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {off, off + t.bytes()}}};
        off += t.bytes();
    }
    std::string text = h.dump();
    while (text.size() % 8) text += ' ';  // the format pads the header to 8 bytes with spaces
    const uint64_t n = text.size();
    out_.write(&n, 8);
    out_.write(text.data(), text.size());
}

void SafeTensorsWriter::write(const void* data) {
    ASSERT(next_ < specs_.size(), "no more tensors than specs");
    out_.write(data, (size_t)specs_[next_++].bytes());
}

void SafeTensorsWriter::commit() {
    ASSERT(next_ == specs_.size(), "every tensor written before commit");
    out_.commit();
}

void write_safetensors(const std::string& path, const std::vector<StWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
    std::vector<StSpec> specs;
    for (const StWrite& t : tensors) specs.push_back({t.name, t.dtype, t.shape});
    SafeTensorsWriter out(path, specs, metadata);
    for (const StWrite& t : tensors) out.write(t.data);
    out.commit();
}

// ----------------------------------------------------------------------------------------------
// config.json

static json read_json_file(const std::string& path) {
    std::string text = read_text_file(path);
    try {
        return json::parse(text);
    } catch (const std::exception&) {
        fail("%s: not valid JSON", path.c_str());
    }
}

// A JSON number as the float it names, or fail: nlohmann's get<float>() on a string or null
// would throw its own exception type, which the tools' one-line error handling does not catch.
static float json_float(const json& v, const char* P, const char* key) {
    if (!v.is_number()) fail("%s: \"%s\" is not a number (%s)", P, key, v.dump().c_str());
    return v.get<float>();
}

// Strict typed access to the keys a reader uses: a key that is present (and not null) must have
// the expected JSON type, or the file is refused naming the key; "absent or null" returns false.
// (Silently ignoring `use_dora: 1` or reading `head_dim: [32]` as 32 would change the model.)
enum class JType { Bool, Int, Number, String, Object, Array };
static const char* jtype_name(JType t) {
    switch (t) {
        case JType::Bool: return "true or false";
        case JType::Int: return "an integer";
        case JType::Number: return "a number";
        case JType::String: return "a string";
        case JType::Object: return "an object";
        case JType::Array: return "a list";
    }
    return "?";
}
static bool json_has(const json& j, const char* P, const char* key, JType t) {
    if (!j.contains(key) || j[key].is_null()) return false;
    const json& v = j[key];
    const bool ok = t == JType::Bool ? v.is_boolean() : t == JType::Int ? v.is_number_integer()
                    : t == JType::Number ? v.is_number() : t == JType::String ? v.is_string()
                    : t == JType::Object ? v.is_object() : v.is_array();
    if (!ok) fail("%s: \"%s\" must be %s, not %s", P, key, jtype_name(t), v.dump().c_str());
    return true;
}
static bool json_true(const json& j, const char* P, const char* key) {
    return json_has(j, P, key, JType::Bool) && j[key].get<bool>();
}

Config parse_hf_config(const std::string& path, int32_t* dtype) {
    json j = read_json_file(path);
    const char* P = path.c_str();
    if (!j.is_object()) fail("%s: not a config.json (not a JSON object)", P);
    if (j.contains("model_type") && j["model_type"] != "llama")
        fail("%s: model_type is %s, only \"llama\" is supported", P, j["model_type"].dump().c_str());
    if (json_has(j, P, "model_type", JType::String) && j["model_type"] != "llama")
        fail("%s: model_type is %s, only \"llama\" is supported", P, j["model_type"].dump().c_str());
    auto int_value = [&](const char* key, const json& v) -> int32_t {
        // range-checked before narrowing: 2^32 + 2 must not wrap around to a plausible 2
        const int64_t x = v.get<int64_t>();
        if (x < 0 || x > INT32_MAX) fail("%s: \"%s\" = %lld is out of range", P, key, (long long)x);
        return (int32_t)x;
    };
    auto need_int = [&](const char* key) -> int32_t {
        if (!json_has(j, P, key, JType::Int)) fail("%s: missing \"%s\"", P, key);
        const int32_t v = int_value(key, j[key]);
        if (v <= 0) fail("%s: \"%s\" = %d is out of range", P, key, v);
        return v;
    };
    auto opt_int = [&](const char* key, int32_t def) -> int32_t { return json_has(j, P, key, JType::Int) ? int_value(key, j[key]) : def; };
    // a special token id: an integer, or (as some configs write eos) a list of exactly one
    auto token_id = [&](const char* key, int32_t def) -> int32_t {
        if (j.contains(key) && j[key].is_array()) {
            if (j[key].size() != 1 || !j[key][0].is_number_integer())
                fail("%s: \"%s\" = %s: one token id is supported, not several", P, key, j[key].dump().c_str());
            return int_value(key, j[key][0]);
        }
        return opt_int(key, def);
    };
    Config c;
    memset(&c, 0, sizeof(c));
    c.dim = need_int("hidden_size");
    c.hidden_dim = need_int("intermediate_size");
    c.n_layers = need_int("num_hidden_layers");
    c.n_heads = need_int("num_attention_heads");
    c.n_kv_heads = opt_int("num_key_value_heads", c.n_heads);  // absent in pre-GQA configs
    c.head_dim = opt_int("head_dim", c.dim / c.n_heads);
    c.vocab_size = need_int("vocab_size");
    c.max_seq_len = opt_int("max_position_embeddings", 4096);
    c.bos_id = token_id("bos_token_id", 1);
    c.eos_id = token_id("eos_token_id", 2);
    c.tie_embeddings = json_true(j, P, "tie_word_embeddings");
    if (!json_has(j, P, "rms_norm_eps", JType::Number)) fail("%s: missing \"rms_norm_eps\" (it is never assumed)", P);
    c.norm_eps = json_float(j["rms_norm_eps"], P, "rms_norm_eps");
    // rope_theta: new form rope_parameters.rope_theta, old form a top-level rope_theta, oldest none (10000)
    c.rope_theta = 10000.0f;
    const json* scaling = nullptr;
    if (json_has(j, P, "rope_parameters", JType::Object)) {
        const json& rp = j["rope_parameters"];
        if (json_has(rp, P, "rope_theta", JType::Number)) c.rope_theta = json_float(rp["rope_theta"], P, "rope_parameters.rope_theta");
        scaling = &rp;
    } else if (json_has(j, P, "rope_theta", JType::Number)) {
        c.rope_theta = json_float(j["rope_theta"], P, "rope_theta");
    }
    if (json_has(j, P, "rope_scaling", JType::Object)) scaling = &j["rope_scaling"];
    if (scaling) {
        std::string type = "default";
        if (json_has(*scaling, P, "rope_type", JType::String)) type = (*scaling)["rope_type"];
        else if (json_has(*scaling, P, "type", JType::String)) type = (*scaling)["type"];
        if (type != "default") fail("%s: rope scaling type \"%s\" is not supported (Llama 2 uses none)", P, type.c_str());
    }
    if (json_has(j, P, "hidden_act", JType::String) && j["hidden_act"] != "silu")
        fail("%s: hidden_act %s is not supported (Llama uses silu)", P, j["hidden_act"].dump().c_str());
    for (const char* key : {"attention_bias", "mlp_bias"})
        if (json_true(j, P, key)) fail("%s: %s = true is not supported (Llama 2 has no biases)", P, key);
    *dtype = -1;
    const char* dkey = json_has(j, P, "dtype", JType::String) ? "dtype" : json_has(j, P, "torch_dtype", JType::String) ? "torch_dtype" : nullptr;
    if (dkey) {
        std::string d = j[dkey];
        *dtype = d == "float16" ? DT_F16 : d == "bfloat16" ? DT_BF16 : d == "float32" ? DT_F32 : -2;
        if (*dtype == -2) fail("%s: %s \"%s\" is not supported (float16, bfloat16 or float32)", P, dkey, d.c_str());
    }
    validate_config(c, P);
    return c;
}

// A float as the JSON number a person would write: 16 rather than 16.0, 0.05 rather than
// 0.05000000074505806 (the double nearest the float). The shortest decimal that reads back as the
// same float, so nothing is lost; an integer when it is one (PEFT declares lora_alpha an int).
template <typename J = json>
static J json_number(float x) {
    if (x == std::floor(x) && std::fabs(x) < 1e9f) return J((int64_t)x);
    char buf[32];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof(buf), "%.*g", prec, x);
        if (strtof(buf, nullptr) == x) break;
    }
    return J(strtod(buf, nullptr));
}

std::string hf_config_json(const Config& c, int32_t dtype) {
    const char* torch_dtype = dtype == DT_F32 ? "float32" : dtype == DT_F16 ? "float16" : "bfloat16";
    nlohmann::ordered_json j;  // in the order save_pretrained writes the common keys
    j["architectures"] = {"LlamaForCausalLM"};
    j["model_type"] = "llama";
    j["hidden_size"] = c.dim;
    j["intermediate_size"] = c.hidden_dim;
    j["num_hidden_layers"] = c.n_layers;
    j["num_attention_heads"] = c.n_heads;
    j["num_key_value_heads"] = c.n_kv_heads;
    j["head_dim"] = c.head_dim;
    j["vocab_size"] = c.vocab_size;
    j["max_position_embeddings"] = c.max_seq_len;
    j["rms_norm_eps"] = json_number<nlohmann::ordered_json>(c.norm_eps);
    const double theta = (double)c.rope_theta;  // a float in JSON (10000.0), as transformers writes it
    j["rope_theta"] = theta;                     // transformers < 5 reads this one
    j["rope_parameters"] = {{"rope_theta", theta}, {"rope_type", "default"}};  // >= 5 this one
    j["rope_scaling"] = nullptr;
    j["bos_token_id"] = c.bos_id;
    j["eos_token_id"] = c.eos_id;
    j["pad_token_id"] = nullptr;
    j["tie_word_embeddings"] = c.tie_embeddings != 0;
    j["hidden_act"] = "silu";
    j["attention_bias"] = false;
    j["attention_dropout"] = 0.0;
    j["mlp_bias"] = false;
    j["initializer_range"] = 0.02;
    j["pretraining_tp"] = 1;
    j["use_cache"] = true;
    j["torch_dtype"] = torch_dtype;  // transformers < 4.56
    j["dtype"] = torch_dtype;
    return j.dump(2) + "\n";
}

std::string hf_shard_name(int index, int count) {
    if (count == 1) return "model.safetensors";
    char name[64];
    snprintf(name, sizeof(name), "model-%05d-of-%05d.safetensors", index + 1, count);
    return name;
}

std::string hf_shard_index_json(const std::vector<StSpec>& specs, const std::vector<std::string>& file_of) {
    ASSERT(specs.size() == file_of.size(), "one file per tensor");
    int64_t total = 0;
    nlohmann::ordered_json map = nlohmann::ordered_json::object();
    for (size_t i = 0; i < specs.size(); i++) {
        total += specs[i].bytes();
        map[specs[i].name] = file_of[i];
    }
    nlohmann::ordered_json j;
    j["metadata"] = {{"total_size", total}};
    j["weight_map"] = map;
    return j.dump(2) + "\n";
}

// ----------------------------------------------------------------------------------------------
// checkpoint

HfCheckpoint::HfCheckpoint(const std::string& d) : dir(d) {
    struct stat st;
    if (stat(dir.c_str(), &st) != 0) fail("%s: cannot open (%s)", dir.c_str(), strerror(errno));
    if (!S_ISDIR(st.st_mode)) fail("%s: expected a Hugging Face checkpoint directory (config.json + *.safetensors)", dir.c_str());
    config = parse_hf_config(dir + "/config.json", &dtype);
    // which files hold the tensors
    std::vector<std::string> files;
    std::map<std::string, std::string> weight_map;  // from the index, when sharded
    std::string index_path = dir + "/model.safetensors.index.json";
    std::string tensors_src;  // the file a missing tensor should have been in, for messages
    if (file_exists(index_path)) {
        tensors_src = index_path;
        json ix = read_json_file(index_path);
        if (!ix.contains("weight_map") || !ix["weight_map"].is_object())
            fail("%s: no \"weight_map\" object", index_path.c_str());
        std::set<std::string> seen;
        for (auto it = ix["weight_map"].begin(); it != ix["weight_map"].end(); ++it) {
            if (!it.value().is_string()) fail("%s: weight_map entry '%s' is not a file name", index_path.c_str(), it.key().c_str());
            std::string f = it.value();
            if (f.find('/') != std::string::npos) fail("%s: shard name '%s' leaves the directory", index_path.c_str(), f.c_str());
            weight_map[it.key()] = f;
            if (seen.insert(f).second) files.push_back(f);
        }
    } else if (file_exists(dir + "/model.safetensors")) {
        files.push_back("model.safetensors");
        tensors_src = dir + "/model.safetensors";
    } else {
        fail("%s: no model.safetensors or model.safetensors.index.json (only safetensors checkpoints are read)", dir.c_str());
    }
    for (const std::string& f : files) {
        shards.push_back(std::make_unique<SafeTensors>(dir + "/" + f));
        SafeTensors* s = shards.back().get();
        for (auto& kv : s->tensors) {
            if (index.count(kv.first)) fail("%s: tensor '%s' appears in two shards", s->path.c_str(), kv.first.c_str());
            index[kv.first] = {s, &kv.second};
        }
    }
    for (auto& kv : weight_map)
        if (!index.count(kv.first) || index[kv.first].first->path != dir + "/" + kv.second)
            fail("%s: index says tensor '%s' is in %s, but it is not there", index_path.c_str(), kv.first.c_str(),
                 kv.second.c_str());
    // every expected tensor, with its shape; nothing unexpected
    std::set<std::string> expected;
    for (int id = 0; id < NUM_WEIGHTS; id++) {
        WeightInfo wi = weight_info(config, id);
        if (id == W_LM_HEAD && config.tie_embeddings) continue;
        for (int l = 0; l < (wi.per_layer ? config.n_layers : 1); l++) {
            std::string name = weight_hf_name(id, l);
            expected.insert(name);
            auto it = index.find(name);
            if (it == index.end())
                fail("%s: missing tensor '%s' (config.json: %s)", tensors_src.c_str(), name.c_str(),
                     config_summary(config).c_str());
            const StTensor& t = *it->second.second;
            std::vector<int64_t> want = wi.rows == 1 ? std::vector<int64_t>{wi.cols} : std::vector<int64_t>{wi.rows, wi.cols};
            if (t.shape != want)
                fail("%s: tensor '%s' has shape %s but config.json implies %s", it->second.first->path.c_str(),
                     name.c_str(), shape_str(t.shape).c_str(), shape_str(want).c_str());
            if (st_dtype_to_dtype(t.dtype) < 0)
                fail("%s: tensor '%s' has dtype %s (F16, BF16 or F32 expected)", it->second.first->path.c_str(),
                     name.c_str(), t.dtype.c_str());
        }
    }
    for (auto& kv : index) {
        const std::string& name = kv.first;
        if (expected.count(name)) continue;
        if (name.find("rotary_emb.inv_freq") != std::string::npos) continue;  // a buffer, recomputed from rope_theta
        if (name == "lm_head.weight" && config.tie_embeddings) continue;       // tied: the embedding is used
        fail("%s: unexpected tensor '%s' (not part of a Llama with %d layers; config.json and weights disagree?)",
             kv.second.first->path.c_str(), name.c_str(), config.n_layers);
    }
}

void HfCheckpoint::read_as(int id, int layer, int32_t out_dtype, void* dst) {
    auto& where = index.at(weight_hf_name(id, layer));
    const StTensor& t = *where.second;
    int src = st_dtype_to_dtype(t.dtype);
    if (src == out_dtype) {
        where.first->read_raw(t, dst);
        return;
    }
    std::vector<uint8_t> raw((size_t)(t.end - t.begin));
    where.first->read_raw(t, raw.data());
    if (out_dtype == DT_F32) {
        convert_to_f32((float*)dst, raw.data(), src, (size_t)t.numel());
    } else {
        std::vector<float> tmp((size_t)t.numel());
        convert_to_f32(tmp.data(), raw.data(), src, tmp.size());
        convert_from_f32(dst, tmp.data(), out_dtype, tmp.size());
    }
}

void HfCheckpoint::read_f32(int id, int layer, float* dst) { read_as(id, layer, DT_F32, dst); }

std::vector<float> HfCheckpoint::load_all_f32() {
    std::vector<float> all((size_t)total_weight_numel(config));
    Weights<float> w = carve_weights(config, all.data());
    for (int id = 0; id < NUM_WEIGHTS; id++) {
        if (weight_numel(config, id) == 0) continue;
        WeightInfo wi = weight_info(config, id);
        for (int l = 0; l < (wi.per_layer ? config.n_layers : 1); l++) read_f32(id, l, *w.ptr(id) + l * wi.numel());
    }
    return all;
}

// ----------------------------------------------------------------------------------------------
// PEFT adapters

std::vector<std::string> HfCheckpoint::files() const {
    std::vector<std::string> f = {dir + "/config.json"};
    if (file_exists(dir + "/model.safetensors.index.json")) f.push_back(dir + "/model.safetensors.index.json");
    for (const auto& s : shards) f.push_back(s->path);
    return f;
}

Adapter read_peft_adapter(const std::string& dir, const Config& base) {
    std::string cfg_path = dir + "/adapter_config.json";
    const char* P = cfg_path.c_str();
    json j = read_json_file(cfg_path);
    if (!j.is_object()) fail("%s: not a PEFT adapter config (not a JSON object)", P);
    if (!json_has(j, P, "peft_type", JType::String) || j["peft_type"] != "LORA")
        fail("%s: not a LoRA adapter (peft_type is not \"LORA\")", P);
    if (!json_has(j, P, "r", JType::Int)) fail("%s: missing \"r\"", P);
    if (j["r"].get<int64_t>() <= 0 || j["r"].get<int64_t>() > 65536)
        fail("%s: invalid LoRA rank r = %lld", P, (long long)j["r"].get<int64_t>());
    if (!json_has(j, P, "lora_alpha", JType::Number)) fail("%s: missing \"lora_alpha\"", P);
    // each of these changes what the adapter computes; reading the tensors as plain LoRA would
    // give a silently different model, so each is refused by name
    for (const char* key : {"use_dora", "use_rslora", "fan_in_fan_out", "lora_bias", "use_qalora"})
        if (json_true(j, P, key)) fail("%s: %s = true is not supported (plain LoRA only)", P, key);
    for (const char* key : {"rank_pattern", "alpha_pattern"})
        if (json_has(j, P, key, JType::Object) && !j[key].empty())
            fail("%s: %s (per-module ranks or alphas) is not supported", P, key);
    if (json_has(j, P, "bias", JType::String) && j["bias"] != "none")
        fail("%s: LoRA biases are not supported (bias must be \"none\")", P);
    if (j.contains("layers_to_transform") && !j["layers_to_transform"].is_null())
        fail("%s: layers_to_transform is not supported (LoRA on every layer only)", P);
    if (json_has(j, P, "modules_to_save", JType::Array) && !j["modules_to_save"].empty())
        fail("%s: modules_to_save is not supported", P);
    for (const char* key : {"layer_replication", "target_parameters", "trainable_token_indices", "exclude_modules",
                            "megatron_config", "loftq_config", "eva_config", "corda_config"})
        if (j.contains(key) && !j[key].is_null() && !j[key].empty()) fail("%s: %s is not supported", P, key);
    Adapter a;
    a.base = base;
    a.lora.rank = j["r"].get<int32_t>();
    a.lora.alpha = j["lora_alpha"].get<float>();
    a.lora.dropout = json_has(j, P, "lora_dropout", JType::Number) ? json_float(j["lora_dropout"], P, "lora_dropout") : 0.0f;
    a.lora.target_mask = 0;
    if (j.contains("target_modules") && j["target_modules"].is_string()) {
        // PEFT's string form: "all-linear" is every linear but the head, i.e. our seven; any other
        // string is a regular expression over module names, which is not read here
        if (j["target_modules"] != "all-linear")
            fail("%s: target_modules %s (a regular expression) is not supported; list the modules", P,
                 j["target_modules"].dump().c_str());
        a.lora.target_mask = LORA_ALL_TARGETS;
    } else {
        if (!json_has(j, P, "target_modules", JType::Array)) fail("%s: missing \"target_modules\"", P);
        for (const json& m : j["target_modules"]) {
            if (!m.is_string()) fail("%s: \"target_modules\" holds %s, not a module name", P, m.dump().c_str());
            std::string name = m;
            int found = -1;
            for (int t = 0; t < NUM_LORA_TARGETS; t++)
                if (name == lora_target_name(t)) found = t;
            if (found < 0) fail("%s: target module '%s' is not one of Llama's seven linear layers", P, name.c_str());
            a.lora.target_mask |= 1u << found;
        }
    }
    validate_lora_config(a.lora, P);

    std::string st_path = dir + "/adapter_model.safetensors";
    if (!file_exists(st_path) && file_exists(dir + "/adapter_model.bin"))
        fail("%s: missing; this adapter is in PyTorch's pickle format (adapter_model.bin), which is not read: "
             "re-save it with safe_serialization=True", st_path.c_str());
    SafeTensors st(st_path);
    // every tensor's presence and shape first: the safetensors reader has checked that each one's
    // bytes are in the file, so only then is allocating the parameters bounded by the file's size
    // (an adapter_config.json claiming r = 65536 must not allocate gigabytes for an empty file)
    const int64_t r = a.lora.rank;
    for (int t = 0; t < NUM_LORA_TARGETS; t++) {
        if (!a.lora.has(t)) continue;
        const int64_t in = lora_in_dim(base, t), out = lora_out_dim(base, t);
        for (int l = 0; l < base.n_layers; l++) {
            const std::string an = lora_peft_name(t, l, false), bn = lora_peft_name(t, l, true);
            // PEFT's shapes: A (r, in), B (out, r); a mismatch means the adapter belongs to another model
            for (const auto& want : {std::make_pair(an, std::vector<int64_t>{r, in}), std::make_pair(bn, std::vector<int64_t>{out, r})}) {
                if (!st.has(want.first)) fail("%s: missing tensor '%s'", st.path.c_str(), want.first.c_str());
                if (st.get(want.first).shape != want.second)
                    fail("%s: tensor '%s' has shape %s, but LoRA r=%lld on a base model with %s needs %s "
                         "(adapter made for another model?)", st.path.c_str(), want.first.c_str(),
                         shape_str(st.get(want.first).shape).c_str(), (long long)r, config_summary(base).c_str(),
                         shape_str(want.second).c_str());
            }
        }
    }
    LoraLayout lay = lora_layout(base, a.lora);
    a.params.assign((size_t)lay.total, 0.0f);
    std::set<std::string> used;
    for (int t = 0; t < NUM_LORA_TARGETS; t++) {
        if (!a.lora.has(t)) continue;
        const int64_t in = lora_in_dim(base, t), out = lora_out_dim(base, t);
        for (int l = 0; l < base.n_layers; l++) {
            const std::string an = lora_peft_name(t, l, false), bn = lora_peft_name(t, l, true);
            std::vector<float> A = st.read_f32(an, {r, in}), B = st.read_f32(bn, {out, r});
            for (const auto& [name, x] : {std::pair<const std::string&, const std::vector<float>&>{an, A}, {bn, B}}) {
                const int64_t i = first_nonfinite(x.data(), DT_F32, x.size());
                if (i >= 0) fail("%s: tensor '%s': element %lld is NaN or Inf", st.path.c_str(), name.c_str(), (long long)i);
            }
            std::copy(A.begin(), A.end(), a.params.begin() + lay.a_offset[t] + l * r * in);
            std::copy(B.begin(), B.end(), a.params.begin() + lay.b_offset[t] + l * out * r);
            used.insert(an);
            used.insert(bn);
        }
    }
    for (auto& kv : st.tensors)
        if (!used.count(kv.first))
            fail("%s: unexpected tensor '%s' (not a LoRA tensor of this %d-layer model)", st.path.c_str(),
                 kv.first.c_str(), base.n_layers);
    return a;
}

void write_peft_adapter(const std::string& dir, const Adapter& a, int32_t dtype, const std::string& base_name) {
    ASSERT(dtype == DT_F32 || dtype == DT_F16 || dtype == DT_BF16, "PEFT adapter dtype");
    LoraLayout lay = lora_layout(a.base, a.lora);
    ASSERT((int64_t)a.params.size() == lay.total, "adapter params size");
    // checked before anything is written: fp16 turns |x| >= 65520 into Inf, and a NaN/Inf in an
    // adapter would poison every output of the model it is applied to
    for (size_t i = 0; i < a.params.size(); i++) {
        float x = a.params[i];
        if (!std::isfinite(x) || (dtype == DT_F16 && std::fabs(x) >= 65520.0f))
            fail("%s: LoRA parameter %zu is %g, not representable as %s", dir.c_str(), i, x, dtype_name(dtype));
    }
    // the directory only now, so that a refused adapter leaves nothing behind
    struct stat st;
    if (stat(dir.c_str(), &st) == 0 && !S_ISDIR(st.st_mode)) fail("%s: exists and is not a directory", dir.c_str());
    if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) fail("%s: cannot create directory (%s)", dir.c_str(), strerror(errno));
    std::vector<uint8_t> data((size_t)lay.total * dtype_size(dtype));
    convert_from_f32(data.data(), a.params.data(), dtype, a.params.size());
    std::vector<StWrite> tensors;
    std::vector<std::string> targets;
    const int64_t r = a.lora.rank;
    const size_t es = dtype_size(dtype);
    for (int t = 0; t < NUM_LORA_TARGETS; t++) {
        if (!a.lora.has(t)) continue;
        targets.push_back(lora_target_name(t));
        const int64_t in = lora_in_dim(a.base, t), out = lora_out_dim(a.base, t);
        for (int l = 0; l < a.base.n_layers; l++) {
            tensors.push_back({lora_peft_name(t, l, false), dtype_to_st(dtype), {r, in},
                               data.data() + (lay.a_offset[t] + l * r * in) * es});
            tensors.push_back({lora_peft_name(t, l, true), dtype_to_st(dtype), {out, r},
                               data.data() + (lay.b_offset[t] + l * out * r) * es});
        }
    }
    write_safetensors(dir + "/adapter_model.safetensors", tensors, {{"format", "pt"}});
    json cfg = {
        {"peft_type", "LORA"},
        {"task_type", "CAUSAL_LM"},
        {"base_model_name_or_path", base_name.empty() ? json(nullptr) : json(base_name)},
        {"r", a.lora.rank},
        {"lora_alpha", json_number(a.lora.alpha)},
        {"lora_dropout", json_number(a.lora.dropout)},
        {"target_modules", targets},
        {"bias", "none"},
        {"fan_in_fan_out", false},
        {"inference_mode", true},
        {"init_lora_weights", true},
        {"use_dora", false},
        {"use_rslora", false},
        {"modules_to_save", nullptr},
        {"layers_to_transform", nullptr},
        {"layers_pattern", nullptr},
        {"rank_pattern", json::object()},
        {"alpha_pattern", json::object()},
        {"revision", nullptr},
    };
    std::string text = cfg.dump(2) + "\n";
    AtomicFile out(dir + "/adapter_config.json");
    out.write(text.data(), text.size());
    out.commit();
}
