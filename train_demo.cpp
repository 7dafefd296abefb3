// train_demo.cpp — the built-in demo's model and data (see train_demo.h).
#include "train_demo.h"

#include <nlohmann/json.hpp>
#include <sstream>

#include "chat.h"
#include "llama2_cpu.h"

Config demo_config() {
    Config c = llama2_config(2, 128, 344, 1, 1, ByteTokenizer::VOCAB);
    c.max_seq_len = 512;
    c.bos_id = ByteTokenizer::BOS;
    c.eos_id = ByteTokenizer::EOS;
    return c;
}

std::vector<float> demo_weights(const Config& c, uint64_t seed) {
    std::vector<float> w = cpu_random_weights(c, seed);
    // 3x the usual init (matrices std 0.06, norm gains ~3): at 0.02 a random 2-layer, 128-wide
    // model passes almost no signal from the input to the logits and LoRA has little to steer
    for (float& x : w) x *= 3.0f;
    return w;
}

// data/demo.jsonl, assembled into the binary (.incbin reads it from the repo root, where make runs)
extern "C" const char demo_jsonl_begin[], demo_jsonl_end[];
asm(".section .rodata\n"
    ".global demo_jsonl_begin\n"
    "demo_jsonl_begin:\n"
    ".incbin \"data/demo.jsonl\"\n"
    ".global demo_jsonl_end\n"
    "demo_jsonl_end:\n"
    ".byte 0\n"
    ".previous\n");

void demo_datasets(int val_every, Dataset& train, Dataset& val) {
    const std::string path = "data/demo.jsonl (built in)";
    std::istringstream in(std::string(demo_jsonl_begin, demo_jsonl_end));
    std::string line;
    Dataset* sets[2] = {&train, &val};
    for (Dataset* d : sets) {
        memset(&d->header, 0, sizeof(d->header));
        d->conv_offsets = {0};
    }
    const EncodeFn encode = [](const std::string& t) { return ByteTokenizer::encode(t); };
    int lineno = 0, n = 0;
    while (std::getline(in, line)) {
        lineno++;
        if (line.empty()) continue;
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(line);
        } catch (const std::exception&) {
            fail("%s:%d: not JSON", path.c_str(), lineno);
        }
        if (!j.is_object() || !j.contains("conversations") || !j["conversations"].is_array() ||
            j["conversations"].size() % 2 != 0 || j["conversations"].empty())
            fail("%s:%d: expected {\"conversations\": [user, assistant, ...]}", path.c_str(), lineno);
        Dataset& d = *sets[(++n % val_every) == 0];
        for (size_t k = 0; k < j["conversations"].size(); k += 2) {
            const std::vector<int32_t> prompt = chat_prompt_tokens(
                TEMPLATE_LLAMA2, j["conversations"][k].get<std::string>(), "", encode, ByteTokenizer::BOS);
            // the demo's answers start with a space, as sentencepiece's do after [/INST]
            const std::vector<int32_t> answer =
                chat_answer_tokens(" " + j["conversations"][k + 1].get<std::string>(), encode, ByteTokenizer::EOS);
            for (int32_t t : prompt) d.tokens.push_back(t), d.loss_mask.push_back(0);
            for (int32_t t : answer) d.tokens.push_back(t), d.loss_mask.push_back(1);
            d.header.n_turns++;
        }
        d.conv_offsets.push_back((int64_t)d.tokens.size());
    }
    for (Dataset* d : sets) {
        DataHeader& h = d->header;
        h.magic = DATA_MAGIC;
        h.version = DATA_VERSION;
        h.n_tokens = (int64_t)d->tokens.size();
        h.n_conversations = (int64_t)d->conv_offsets.size() - 1;
        for (uint8_t mk : d->loss_mask) h.n_loss_tokens += mk;
        h.vocab_size = ByteTokenizer::VOCAB;
        h.bos_id = ByteTokenizer::BOS;
        h.eos_id = ByteTokenizer::EOS;
        h.max_len = 512;
    }
    if (train.header.n_conversations == 0) fail("%s: no conversations", path.c_str());
}

void write_model_bf16(const std::string& path, const Config& c, const std::vector<float>& w) {
    std::vector<uint16_t> half(w.size());
    convert_from_f32(half.data(), w.data(), DT_BF16, w.size());
    write_model(path, make_model_header(c, DT_BF16), half.data(), half.size() * 2);
}
