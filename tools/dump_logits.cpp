// tools/dump_logits.cpp — our side of tools/check_merged.py: the CPU reference's logits (fp32) for a
// few token sequences, written to a safetensors file that the Python check compares with what
// transformers computes from the merged checkpoint. Not part of training or sampling; a test and
// verification aid.
//
//   ./dump_logits -m llama2-7b.bin -a out/adapter.bin -t tokenizer.model -p "What is QLoRA?" -p "Hi" -o ours.safetensors
//   ./dump_logits -m merged/ --ids 1,450,4996 -o ours.safetensors    # an HF directory, raw token ids
//   ./dump_logits --help
//
// -m is a model file (./export_hf) or a Hugging Face checkpoint directory; -a applies an adapter
// file unmerged, as ./sample and training compute it (no dropout). Each -p prompt becomes the
// token ids ./sample would feed for it: Llama 2's chat template (chat.h) for one user turn, with
// --system in its <<SYS>> block; each --ids list is taken as it is. Output tensors, for sequence i
// in the order given: seq.<i>.tokens I32 (T) and seq.<i>.logits F32 (T, V); metadata "prompts"
// (a JSON list, "" for an --ids sequence), "system", "model", "model_kind" ("hf-directory" or
// "model-file"), "adapter".
// Bad input: one line naming the file, exit 1; bad flags: exit 2.
#include <sentencepiece_processor.h>

#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "chat.h"
#include "cli.h"
#include "hf.h"
#include "llama2_cpu.h"
#include "model.h"

static const char* PROG = "dump_logits";

struct Args {
    std::string model, adapter, tokenizer, output, system;
    std::vector<std::string> prompts, ids;
};

static Cli make_cli(Args& a) {
    Cli cli{PROG,
            "./dump_logits -m MODEL [-a adapter.bin] [-t tokenizer.model -p PROMPT ...] [--ids 1,2,3 ...] -o out.safetensors",
            "Write the CPU reference's fp32 logits for chat prompts or token ids (for tools/check_merged.py).",
            {
                {"-m", "--model", "PATH", "model file (./export_hf) or Hugging Face checkpoint directory", &a.model, nullptr, /*required=*/true},
                {"-a", "--adapter", "FILE", "adapter file to apply, unmerged", &a.adapter},
                {"-t", "--tokenizer", "FILE", "sentencepiece tokenizer.model, for -p", &a.tokenizer},
                {"-p", "--prompt", "TEXT", "a user prompt, put through Llama 2's chat template (repeatable)", nullptr, &a.prompts},
                {"-s", "--system", "TEXT", "system prompt for every -p", &a.system},
                {nullptr, "--ids", "LIST", "comma-separated token ids, used as they are (repeatable)", nullptr, &a.ids},
                {"-o", "--output", "FILE", "safetensors file to write", &a.output, nullptr, /*required=*/true},
                {"-h", "--help", nullptr, "show this help and exit", nullptr},
            }};
    cli.non_empty = true;
    return cli;
}

static std::vector<int32_t> parse_ids(const std::string& list) {
    std::vector<int32_t> ids;
    std::stringstream ss(list);
    std::string item;
    while (std::getline(ss, item, ',')) ids.push_back((int32_t)cli_int(PROG, "--ids", item, 0, INT32_MAX));
    if (ids.empty()) cli_usage_error(PROG, "--ids needs at least one token id");
    return ids;
}

static void run(const Args& a) {
    // the model (fp32), with the adapter unmerged
    Config c;
    std::vector<float> weights;
    if (is_directory(a.model)) {
        HfCheckpoint ck(a.model);
        c = ck.config;
        weights = ck.load_all_f32();
    } else {
        c = load_model_f32(a.model, weights).config;
    }
    CpuModel m;
    cpu_model_init(m, c, std::move(weights));
    if (!a.adapter.empty()) {
        Adapter ad = read_adapter(a.adapter);
        check_adapter_matches_model(ad, a.adapter.c_str(), c, a.model.c_str());
        ad.lora.dropout = 0.0f;
        cpu_lora_set(m, ad.lora, ad.params);
    }

    // the sequences
    std::vector<std::vector<int32_t>> seqs;
    std::vector<std::string> texts;
    if (!a.prompts.empty()) {
        sentencepiece::SentencePieceProcessor sp;
        if (!sp.LoadFromSerializedProto(read_text_file(a.tokenizer)).ok())
            fail("%s: not a sentencepiece tokenizer model", a.tokenizer.c_str());
        if (sp.GetPieceSize() != c.vocab_size)
            fail("%s: %d pieces, but model %s has vocab_size %d", a.tokenizer.c_str(), sp.GetPieceSize(), a.model.c_str(), c.vocab_size);
        const EncodeFn encode = [&](const std::string& s) {
            std::vector<int> ids;
            if (!sp.Encode(s, &ids).ok()) fail("%s: tokenizer failed", a.tokenizer.c_str());
            return std::vector<int32_t>(ids.begin(), ids.end());
        };
        for (const std::string& p : a.prompts) {
            seqs.push_back(llama2_chat_tokens({ChatTurn{p, {}, false}}, a.system, encode, c.bos_id, c.eos_id));
            texts.push_back(p);
        }
    }
    for (const std::string& list : a.ids) {
        seqs.push_back(parse_ids(list));
        texts.push_back("");
        for (int32_t id : seqs.back())
            if (id >= c.vocab_size) fail("--ids: token %d is outside %s's vocabulary of %d", id, a.model.c_str(), c.vocab_size);
    }

    // one forward per sequence; the tensors are kept until the file is written (a few prompts)
    std::vector<std::vector<float>> logits;
    std::vector<std::vector<int64_t>> shapes;
    for (const std::vector<int32_t>& s : seqs) {
        const int T = (int)s.size();
        if (T > c.max_seq_len) fail("%s: a sequence of %d tokens is longer than the context of %d", a.model.c_str(), T, c.max_seq_len);
        CpuBatch b{1, T, s, std::vector<int32_t>(s.size(), -1), std::vector<int32_t>(s.size())};
        for (int j = 0; j < T; j++) b.pos[j] = j;
        CpuActs acts;
        cpu_acts_init(acts, m, 1, T);
        cpu_forward(m, acts, b, CpuStepOptions{});
        logits.emplace_back(acts.logits, acts.logits + (size_t)T * c.vocab_size);  // (T, V)
    }
    std::vector<StWrite> tensors;
    for (size_t i = 0; i < seqs.size(); i++) {
        const std::string p = "seq." + std::to_string(i);
        tensors.push_back({p + ".tokens", "I32", {(int64_t)seqs[i].size()}, seqs[i].data()});
        tensors.push_back({p + ".logits", "F32", {(int64_t)seqs[i].size(), c.vocab_size}, logits[i].data()});
    }
    const std::map<std::string, std::string> meta = {
        {"format", "pt"}, {"prompts", nlohmann::json(texts).dump()}, {"system", a.system}, {"model", a.model},
        {"model_kind", is_directory(a.model) ? "hf-directory" : "model-file"}, {"adapter", a.adapter}};
    write_safetensors(a.output, tensors, meta);
    printf("%s: wrote %s: %zu sequences, logits of %s%s\n", PROG, a.output.c_str(), seqs.size(), a.model.c_str(),
           a.adapter.empty() ? "" : (" + " + a.adapter + " (unmerged)").c_str());
}

static int dump_main(int argc, char** argv) {
    Args a;
    if (!cli_parse(make_cli(a), argc, argv)) return 0;
    if (a.prompts.empty() && a.ids.empty()) cli_usage_error(PROG, "give at least one -p PROMPT or --ids LIST");
    if (!a.prompts.empty() && a.tokenizer.empty()) cli_usage_error(PROG, "-p needs -t tokenizer.model");
    run(a);
    return 0;
}

int main(int argc, char** argv) { return run_main(PROG, dump_main, argc, argv); }
