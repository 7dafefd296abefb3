// sample.cpp — ./sample: talk to a Llama 2 model with LoRA adapters, sampling exactly as
// transformers' generate() does, and compare adapters side by side.
//
//   ./sample                                              # the demo: out/demo/model.bin + adapter.bin from ./train
//   ./sample -m llama2-7b.bin -a out/adapter.bin -t tokenizer.model            # interactive chat
//   ./sample -m llama2-7b.bin -a out/adapter.bin -t tokenizer.model -p "Write a haiku about GPUs"
//   ./sample -m llama2-7b.bin -a none -a qlora.bin -a lora.bin -t tokenizer.model -f prompts.txt --table
//   ./sample --help
//
// Generation follows the reference configuration of the QLoRA setup: do_sample, temperature 0.7,
// top_p 0.8, top_k 50 (transformers' implicit default), repetition_penalty 1.2, num_beams 1,
// max_length 500 counting the prompt, stop at the tokenizer's </s>. The processors run in
// generate()'s order (sampling.h). Prompts go through the Llama 2 chat template the training data
// uses: <s>[INST] {user} [/INST] {answer}</s>, a --system prompt inside the first [INST] in Meta's
// <<SYS>> form; interactive chat keeps the history in the KV cache and drops the oldest turns when
// the context would overflow.
//
// The model runs behind the Decoder interface (sampling.h): the CPU reference (CpuDecoder,
// llama2_cpu.h) here; a GPU build links make_gpu_decoder() and --device cuda uses it.
//
// Output: answers stream to stdout as they are decoded; with -f the prompts run as one batch
// (--batch, 16 on the GPU: a slot that finishes takes the next prompt) and each answer is printed,
// in prompt order, when it is complete (with --table: a markdown table at the end). A prompt's
// answer is the same in a batch as alone: its own Rng(seed), logits independent of its batch-mates.
// stderr gets progress and, at the end, prefill and decode tokens/s. Bad input (files that
// don't match each other, a prompt longer than the context): one line "sample: ..." and exit 1;
// a bad command line: exit 2.
#include <sentencepiece_processor.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "chat.h"
#include "cli.h"
#include "llama2_cpu.h"
#include "model.h"
#include "sampling.h"

static const char* PROG = "sample";
static const char* DEMO_MODEL = "out/demo/model.bin";
static const char* DEMO_ADAPTER = "out/demo/adapter.bin";

// ----------------------------------------------------------------------------------------------
// tokenizers: Llama 2's sentencepiece model, or the demo's bytes

struct Tokenizer {
    virtual ~Tokenizer() {}
    virtual std::vector<int32_t> encode(const std::string& text) const = 0;  // no <s>, no </s>
    virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
    virtual int vocab_size() const = 0;
    virtual int32_t bos_id() const = 0;
    virtual int32_t eos_id() const = 0;
};

struct SpTokenizer : Tokenizer {
    sentencepiece::SentencePieceProcessor sp;
    std::string path;
    explicit SpTokenizer(const std::string& p) : path(p) {
        // read the bytes ourselves: a missing file gets the project's message, not sentencepiece's
        auto st = sp.LoadFromSerializedProto(read_text_file(path));
        if (!st.ok()) fail("%s: not a sentencepiece tokenizer model", path.c_str());
        if (sp.bos_id() < 0 || sp.eos_id() < 0) fail("%s: tokenizer has no <s>/</s> ids", path.c_str());
    }
    std::vector<int32_t> encode(const std::string& text) const override {
        std::vector<int> ids;
        auto st = sp.Encode(text, &ids);
        if (!st.ok()) fail("%s: cannot encode text (%s)", path.c_str(), st.ToString().c_str());
        return std::vector<int32_t>(ids.begin(), ids.end());
    }
    std::string decode(const std::vector<int32_t>& ids) const override {
        std::string text;
        sp.Decode(std::vector<int>(ids.begin(), ids.end()), &text);
        return text;
    }
    int vocab_size() const override { return sp.GetPieceSize(); }
    int32_t bos_id() const override { return sp.bos_id(); }
    int32_t eos_id() const override { return sp.eos_id(); }
};

struct ByteTok : Tokenizer {
    std::vector<int32_t> encode(const std::string& text) const override { return ByteTokenizer::encode(text); }
    std::string decode(const std::vector<int32_t>& ids) const override { return ByteTokenizer::decode(ids); }
    int vocab_size() const override { return ByteTokenizer::VOCAB; }
    int32_t bos_id() const override { return ByteTokenizer::BOS; }
    int32_t eos_id() const override { return ByteTokenizer::EOS; }
};

// Prints the text of the tokens decoded so far as it grows. Decoding the whole answer each time
// (not token by token) keeps sentencepiece's spaces right; a trailing U+FFFD means a character's
// UTF-8 bytes are still arriving (byte-fallback tokens), so it waits for the rest.
struct Streamer {
    const Tokenizer& tok;
    FILE* out;  // nullptr: collect only
    Streamer(const Tokenizer& t, FILE* f) : tok(t), out(f) {}
    std::vector<int32_t> ids;
    size_t printed = 0;
    void push(int32_t id) {
        ids.push_back(id);
        std::string text = tok.decode(ids);
        if (text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0) return;
        emit(text);
    }
    void emit(const std::string& text) {
        if (out && text.size() > printed) {
            fwrite(text.data() + printed, 1, text.size() - printed, out);
            fflush(out);
        }
        printed = std::max(printed, text.size());
    }
    std::string finish() {
        std::string text = tok.decode(ids);
        emit(text);
        return text;
    }
};

// ----------------------------------------------------------------------------------------------
// command line

struct Args {
    std::string model, tokenizer, prompt, prompts_file, system, temperature = "0.7", top_p = "0.8", top_k = "50",
        repetition_penalty = "1.2", max_length, max_new_tokens, greedy, seed, device, merge, table, batch;
    std::vector<std::string> adapters;
};

static Cli make_cli(Args& a) {
    return Cli{
        PROG,
        "./sample [-m model.bin] [-a adapter.bin|none ...] [-t tokenizer.model] [-p PROMPT | -f prompts.txt] [options]\n"
        "       ./sample                        (no arguments: the demo model and adapter ./train wrote in out/demo/)",
        "Generates with a Llama 2 model and LoRA adapters: transformers' sampling (repetition penalty, temperature,\n"
        "top-k, top-p, in generate()'s order), the Llama 2 chat template, a KV cache. Without -p/-f: interactive chat\n"
        "(/reset forgets the conversation, /exit or Ctrl-D ends).",
        {
            {"-m", "--model", "PATH", "model file from export_hf or train (default: out/demo/model.bin)", &a.model},
            {"-a", "--adapter", "PATH", "LoRA adapter file; repeat to compare several; 'none' = the base model "
                                        "(default: out/demo/adapter.bin with the demo model, else none)", nullptr, &a.adapters},
            {"-t", "--tokenizer", "PATH", "sentencepiece tokenizer.model, or 'byte' for the demo's byte tokens "
                                          "(default: byte when the model's vocabulary is 259)", &a.tokenizer},
            {"-p", "--prompt", "TEXT", "one prompt (the user's message)", &a.prompt},
            {"-f", "--prompts", "PATH", "prompts, one per line (a line starting with \" is a JSON string, for \\n)", &a.prompts_file},
            {nullptr, "--system", "TEXT", "system prompt, in the first [INST] as <<SYS>>...<</SYS>> (default: none)", &a.system},
            {nullptr, "--temperature", "T", "softmax temperature, > 0 (default: 0.7)", &a.temperature},
            {nullptr, "--top-p", "P", "nucleus sampling: keep the most probable tokens up to P, in [0, 1]; 1 = off (default: 0.8)", &a.top_p},
            {nullptr, "--top-k", "K", "keep the K most probable tokens; 0 = off (default: 50, transformers' implicit value)", &a.top_k},
            {nullptr, "--repetition-penalty", "R", "divide positive / multiply negative logits of tokens seen so far (prompt "
                                                   "included); 1 = off (default: 1.2)", &a.repetition_penalty},
            {nullptr, "--max-length", "N", "tokens in all, prompt included, as transformers' max_length (default: 500)", &a.max_length},
            {nullptr, "--max-new-tokens", "N", "new tokens at most, instead of --max-length", &a.max_new_tokens},
            {nullptr, "--greedy", nullptr, "argmax instead of sampling (the repetition penalty still applies, as in transformers)", &a.greedy},
            {"-s", "--seed", "N", "random seed; each prompt of -p/-f starts from it (default: from the clock, printed)", &a.seed},
            {"-d", "--device", "NAME", "cuda or cpu (default: cuda when this build has the GPU decoder and a GPU is usable)", &a.device},
            {nullptr, "--merge", nullptr, "merge each adapter into the base weights instead of applying it unmerged", &a.merge},
            {nullptr, "--table", nullptr, "print a markdown table: one row per prompt, one column per adapter", &a.table},
            {"-b", "--batch", "N", "prompts of -f decoded together, each as it would be alone (default: 16 on cuda, 1 on cpu)", &a.batch},
            {"-h", "--help", nullptr, "show this help and exit", nullptr},
        }};
}

struct Settings {
    std::string model, tokenizer;          // tokenizer "byte" = ByteTokenizer
    std::vector<std::string> adapters;     // "none" = the base model
    std::vector<std::string> prompts;      // empty: interactive
    std::string system;
    SamplingConfig sampling;
    int64_t max_length = 500;              // used unless max_new_tokens > 0
    int64_t max_new_tokens = 0;
    uint64_t seed = 0;
    bool seed_given = false;
    std::string device;
    int batch = 0;                         // 0: the device's default (SAMPLE_BATCH_CUDA / _CPU)
    bool merge = false, table = false, demo = false;
};

// -f prompts decoded together by default: on the GPU a pass over 16 sequences reads the weights once
// for all of them (bench_decode --batch 16); the CPU reference gains nothing from batching
constexpr int SAMPLE_BATCH_CUDA = 16, SAMPLE_BATCH_CPU = 1, SAMPLE_BATCH_MAX = 64;

static double float_arg(const char* flag, const std::string& s, double lo, double hi, bool lo_open) {
    double v = cli_float(PROG, flag, s, lo, hi);
    if (lo_open && v <= lo) cli_usage_error(PROG, std::string(flag) + " must be > " + std::to_string((int)lo) + ", got '" + s + "'");
    return v;
}

static Settings settings_from(Args& a) {
    Settings s;
    s.demo = a.model.empty();
    s.model = s.demo ? DEMO_MODEL : a.model;
    s.tokenizer = a.tokenizer;
    s.adapters = a.adapters;
    if (s.adapters.empty()) s.adapters.push_back(s.demo ? DEMO_ADAPTER : "none");
    for (const std::string& ad : s.adapters)
        if (ad.empty()) cli_usage_error(PROG, "--adapter: empty path (use 'none' for the base model)");
    if (!a.prompt.empty() && !a.prompts_file.empty()) cli_usage_error(PROG, "give -p or -f, not both");
    if (!a.prompt.empty()) s.prompts.push_back(a.prompt);
    s.system = a.system;
    s.sampling.do_sample = a.greedy.empty();  // greedy ignores temperature, top-k and top-p, as transformers does
    s.sampling.temperature = (float)float_arg("--temperature", a.temperature, 0.0, 1e6, true);
    s.sampling.top_p = float_arg("--top-p", a.top_p, 0.0, 1.0, false);
    s.sampling.top_k = (int)cli_int(PROG, "--top-k", a.top_k, 0, INT_MAX);
    s.sampling.repetition_penalty = (float)float_arg("--repetition-penalty", a.repetition_penalty, 0.0, 1e6, true);
    if (!a.max_length.empty() && !a.max_new_tokens.empty()) cli_usage_error(PROG, "give --max-length or --max-new-tokens, not both");
    if (!a.max_length.empty()) s.max_length = cli_int(PROG, "--max-length", a.max_length, 2, INT_MAX);
    if (!a.max_new_tokens.empty()) s.max_new_tokens = cli_int(PROG, "--max-new-tokens", a.max_new_tokens, 1, INT_MAX);
    s.seed_given = !a.seed.empty();
    s.seed = s.seed_given ? (uint64_t)cli_int(PROG, "--seed", a.seed, 0, LLONG_MAX)
                          : (uint64_t)std::chrono::system_clock::now().time_since_epoch().count() % 1000000007ull;
    if (!a.device.empty()) s.device = cli_choice(PROG, "--device", a.device, {"cuda", "cpu"});
    s.merge = !a.merge.empty();
    s.table = !a.table.empty();
    if (!a.batch.empty()) s.batch = (int)cli_int(PROG, "--batch", a.batch, 1, SAMPLE_BATCH_MAX);
    const bool interactive = a.prompt.empty() && a.prompts_file.empty();
    if (interactive && s.table) cli_usage_error(PROG, "--table needs prompts (-p or -f)");
    if (interactive && s.adapters.size() > 1) cli_usage_error(PROG, "interactive chat takes one adapter (compare several with -f and --table)");
    return s;
}

// One prompt per line; empty lines are skipped; a line starting with '"' is a JSON string, so a
// prompt can hold newlines ("line 1\nline 2").
static std::vector<std::string> read_prompts(const std::string& path) {
    const std::vector<std::string> lines = split_lines(read_text_file(path));
    std::vector<std::string> prompts;
    for (size_t k = 0; k < lines.size(); k++) {
        const int line_no = (int)k + 1;
        std::string line = lines[k];
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.find_first_not_of(" \t") == std::string::npos) continue;
        if (line[0] == '"') {
            try {
                nlohmann::json j = nlohmann::json::parse(line);
                if (!j.is_string()) throw std::runtime_error("not a string");
                line = j.get<std::string>();
            } catch (const std::exception&) {
                fail("%s:%d: a line starting with \" must be one JSON string", path.c_str(), line_no);
            }
        }
        prompts.push_back(line);
    }
    if (prompts.empty()) fail("%s: no prompts in the file", path.c_str());
    return prompts;
}

// ----------------------------------------------------------------------------------------------
// the files must belong together

static std::unique_ptr<Tokenizer> open_tokenizer(const Settings& s, const ModelHeader& mh) {
    const Config& c = mh.config;
    std::string which = s.tokenizer;
    if (which.empty()) {
        if (c.vocab_size != ByteTokenizer::VOCAB)
            fail("%s: vocabulary of %d tokens: give its tokenizer.model with -t", s.model.c_str(), c.vocab_size);
        which = "byte";
    }
    std::unique_ptr<Tokenizer> tok;
    if (which == "byte") {
        if (!digest_is_zero(mh.tokenizer_sha256))
            fail("%s: exported with tokenizer sha256 %s..., not byte tokens: give that tokenizer.model with -t",
                 s.model.c_str(), hex_digest(mh.tokenizer_sha256).substr(0, 16).c_str());
        tok = std::make_unique<ByteTok>();
    } else {
        tok = std::make_unique<SpTokenizer>(which);
    }
    const char* tname = which == "byte" ? "the byte tokenizer" : which.c_str();
    if (tok->vocab_size() != c.vocab_size)
        fail("%s: vocabulary of %d tokens, but model %s has vocab_size %d (wrong tokenizer or model)", tname,
             tok->vocab_size(), s.model.c_str(), c.vocab_size);
    if (tok->bos_id() != c.bos_id || tok->eos_id() != c.eos_id)
        fail("%s: <s>/</s> ids %d/%d differ from model %s's %d/%d", tname, tok->bos_id(), tok->eos_id(),
             s.model.c_str(), c.bos_id, c.eos_id);
    if (which != "byte") {
        uint8_t sha[32];
        sha256_file(which, sha);
        if (!digest_is_zero(mh.tokenizer_sha256) && memcmp(sha, mh.tokenizer_sha256, 32) != 0)
            fail("%s: sha256 %s..., but model %s was exported with tokenizer %s... (another tokenizer)", which.c_str(),
                 hex_digest(sha).substr(0, 16).c_str(), s.model.c_str(),
                 hex_digest(mh.tokenizer_sha256).substr(0, 16).c_str());
    }
    return tok;
}

// Reads and checks every adapter (nullptr for "none") before anything slow happens.
static std::vector<std::unique_ptr<Adapter>> open_adapters(const Settings& s, const ModelHeader& mh) {
    uint8_t tok_sha[32] = {};
    if (!s.tokenizer.empty() && s.tokenizer != "byte") sha256_file(s.tokenizer, tok_sha);
    std::vector<std::unique_ptr<Adapter>> out;
    for (const std::string& path : s.adapters) {
        if (path == "none") {
            out.push_back(nullptr);
            continue;
        }
        auto a = std::make_unique<Adapter>(read_adapter(path));
        check_adapter_matches_model(*a, path.c_str(), mh.config, s.model.c_str());
        // the adapter records the tokenizer of its training data: it must be the one in use
        const uint8_t* in_use = !digest_is_zero(tok_sha) ? tok_sha : mh.tokenizer_sha256;
        if (!digest_is_zero(a->tokenizer_sha256) && !digest_is_zero(in_use) && memcmp(a->tokenizer_sha256, in_use, 32) != 0)
            fail("%s: trained on data tokenized with sha256 %s..., but the tokenizer here is %s...", path.c_str(),
                 hex_digest(a->tokenizer_sha256).substr(0, 16).c_str(), hex_digest(in_use).substr(0, 16).c_str());
        out.push_back(std::move(a));
    }
    return out;
}

// ----------------------------------------------------------------------------------------------
// lengths: max_length counts the prompt (transformers); the model's max_seq_len caps everything

// a chat with --max-new-tokens keeps at most this much history (plus the answer) in the cache
constexpr int64_t CHAT_CONTEXT_CAP = 4096;

static int64_t context_limit(const Settings& s, const Config& c) {
    // with --max-new-tokens the per-prompt limit is prompt + N, capped by the model
    return s.max_new_tokens > 0 ? (int64_t)c.max_seq_len : std::min<int64_t>(s.max_length, c.max_seq_len);
}
static int64_t total_limit(const Settings& s, const Config& c, int64_t prompt_len) {
    return s.max_new_tokens > 0 ? std::min<int64_t>(prompt_len + s.max_new_tokens, c.max_seq_len)
                                : std::min<int64_t>(s.max_length, c.max_seq_len);
}
// One clear line when a prompt leaves no room for a single new token.
static void check_prompt_fits(const Settings& s, const Config& c, int64_t prompt_len, const std::string& which) {
    const int64_t limit = context_limit(s, c);
    if (prompt_len < limit) return;
    if (s.max_new_tokens == 0 && s.max_length < c.max_seq_len)
        fail("%s is %lld tokens with the chat template, no room for an answer within --max-length %lld (it counts the "
             "prompt; the model allows up to %d)", which.c_str(), (long long)prompt_len, (long long)s.max_length, c.max_seq_len);
    fail("%s is %lld tokens with the chat template, longer than the model's context of %d tokens", which.c_str(),
         (long long)prompt_len, c.max_seq_len);
}

// ----------------------------------------------------------------------------------------------

static std::unique_ptr<Decoder> make_decoder(const Settings& s, const std::string& device, int max_context, int batch) {
    if (device == "cuda") {
        if (!make_gpu_decoder)
            fail("--device cuda: this ./sample was built without the GPU decoder; use --device cpu");
        return make_gpu_decoder(s.model, max_context, batch);
    }
    std::vector<float> weights;
    ModelHeader h = load_model_f32(s.model, weights);
    CpuModel m;
    cpu_model_init(m, h.config, std::move(weights));
    return std::make_unique<CpuDecoder>(std::move(m), max_context, batch);
}

static std::string table_cell(const std::string& text) {
    std::string out;
    for (size_t i = 0; i < text.size(); i++) {
        char ch = text[i];
        if (ch == '|') out += "\\|";
        else if (ch == '\n') out += "<br>";
        else if (ch == '\r') continue;
        else out += ch;
    }
    size_t b = out.find_first_not_of(' '), e = out.find_last_not_of(' ');
    return b == std::string::npos ? "" : out.substr(b, e - b + 1);
}

static void print_stats(const GenerateStats& st, const Decoder& dec, const Settings& s) {
    auto rate = [](int64_t n, double secs) { return secs > 0 ? (double)n / secs : 0.0; };
    fprintf(stderr, "%s: prefill %lld tokens in %.3f s (%.1f tokens/s), decode %lld tokens in %.3f s (%.1f tokens/s); %s; seed %llu\n",
            PROG, (long long)st.prefill_tokens, st.prefill_s, rate(st.prefill_tokens, st.prefill_s),
            (long long)st.decode_tokens, st.decode_s, rate(st.decode_tokens, st.decode_s), dec.describe().c_str(),
            (unsigned long long)s.seed);
}

static int run(Settings& s, const std::string& prompts_file) {
    if (s.demo && (!file_exists(s.model) || !file_exists(s.adapters[0] == "none" ? s.model : s.adapters[0])))
        fail("%s: not found: run ./train first (it writes %s and %s)",
             !file_exists(s.model) ? s.model.c_str() : s.adapters[0].c_str(), DEMO_MODEL, DEMO_ADAPTER);
    if (!prompts_file.empty()) s.prompts = read_prompts(prompts_file);

    ModelHeader mh;
    {
        InFile in(s.model);
        mh = read_model_header(in);
    }
    const Config& cfg = mh.config;
    std::unique_ptr<Tokenizer> tok = open_tokenizer(s, mh);
    std::vector<std::unique_ptr<Adapter>> adapters = open_adapters(s, mh);
    const EncodeFn encode = [&](const std::string& t) { return tok->encode(t); };
    const int32_t bos = tok->bos_id(), eos = tok->eos_id();

    // every prompt is checked before the (slow) model load
    std::vector<std::vector<int32_t>> prompt_ids;
    for (size_t i = 0; i < s.prompts.size(); i++) {
        prompt_ids.push_back(llama2_chat_tokens({ChatTurn{s.prompts[i], {}, false}}, s.system, encode, bos, eos));
        check_prompt_fits(s, cfg, (int64_t)prompt_ids.back().size(),
                          s.prompts.size() == 1 ? std::string("the prompt") : "prompt " + std::to_string(i + 1) + " of " + prompts_file);
    }

    const std::string device =
        !s.device.empty() ? s.device : (make_gpu_decoder && gpu_decoder_usable && gpu_decoder_usable()) ? "cuda" : "cpu";
    // The KV cache holds what a generation can reach, never the whole declared context blindly (a
    // header may claim 2^24 positions): with prompts, the longest prompt + its new tokens; in a chat,
    // --max-length, or with --max-new-tokens the model's context up to CHAT_CONTEXT_CAP + N tokens.
    int64_t max_context = 0;
    for (const auto& ids : prompt_ids) max_context = std::max(max_context, total_limit(s, cfg, (int64_t)ids.size()));
    if (prompt_ids.empty())
        max_context = s.max_new_tokens > 0 ? std::min<int64_t>(context_limit(s, cfg), CHAT_CONTEXT_CAP + s.max_new_tokens)
                                           : context_limit(s, cfg);
    const int batch = (int)std::min<size_t>(s.batch > 0 ? (size_t)s.batch : device == "cuda" ? SAMPLE_BATCH_CUDA : SAMPLE_BATCH_CPU,
                                            std::max<size_t>(s.prompts.size(), 1));
    std::unique_ptr<Decoder> dec = make_decoder(s, device, (int)max_context, batch);
    if (!s.seed_given) fprintf(stderr, "%s: seed %llu (pass --seed to repeat this run)\n", PROG, (unsigned long long)s.seed);
    GenerateStats total;

    if (!s.prompts.empty()) {  // -p / -f: every (adapter, prompt) is a fresh conversation from the seed
        std::vector<std::vector<std::string>> answers(adapters.size());
        const bool headers = !s.table && (adapters.size() > 1 || s.prompts.size() > 1);
        for (size_t a = 0; a < adapters.size(); a++) {
            dec->set_adapter(adapters[a].get(), s.merge);
            if (batch > 1) {  // all prompts through the slots; answers printed in prompt order as they end
                std::vector<int64_t> limits;
                for (const auto& ids : prompt_ids) limits.push_back(total_limit(s, cfg, (int64_t)ids.size()));
                answers[a].assign(s.prompts.size(), std::string());
                std::vector<bool> done(s.prompts.size(), false);
                size_t printed = 0, finished = 0;
                GenerateStats st;
                generate_batch(*dec, prompt_ids, limits, eos, s.sampling, s.seed, [&](size_t p, const std::vector<int32_t>& ids) {
                    answers[a][p] = tok->decode(ids);
                    done[p] = true;
                    fprintf(stderr, "%s: [%s] %zu/%zu prompts done\n", PROG, s.adapters[a].c_str(), ++finished, s.prompts.size());
                    for (; !s.table && printed < done.size() && done[printed]; printed++) {
                        if (headers) printf("### [%s] %s\n", s.adapters[a].c_str(), s.prompts[printed].c_str());
                        printf("%s%s", answers[a][printed].c_str(), headers ? "\n\n" : "\n");
                        fflush(stdout);
                    }
                }, &st);
                total.add(st);
                continue;
            }
            for (size_t p = 0; p < s.prompts.size(); p++) {
                if (headers) printf("### [%s] %s\n", s.adapters[a].c_str(), s.prompts[p].c_str());
                if (s.table) fprintf(stderr, "%s: [%s] prompt %zu/%zu\n", PROG, s.adapters[a].c_str(), p + 1, s.prompts.size());
                Streamer streamer(*tok, s.table ? nullptr : stdout);
                Rng rng(s.seed);
                GenerateStats st;
                dec->reset();
                generate(*dec, prompt_ids[p], total_limit(s, cfg, (int64_t)prompt_ids[p].size()), eos, s.sampling, rng,
                         [&](int32_t id) { streamer.push(id); }, &st);
                answers[a].push_back(streamer.finish());
                if (!s.table) printf(headers ? "\n\n" : "\n");
                fflush(stdout);
                total.add(st);
            }
        }
        if (s.table) {
            printf("| prompt |");
            for (const std::string& a : s.adapters) printf(" %s |", a == "none" ? "base" : table_cell(a).c_str());
            printf("\n|---|");
            for (size_t a = 0; a < adapters.size(); a++) printf("---|");
            printf("\n");
            for (size_t p = 0; p < s.prompts.size(); p++) {
                printf("| %s |", table_cell(s.prompts[p]).c_str());
                for (size_t a = 0; a < adapters.size(); a++) printf(" %s |", table_cell(answers[a][p]).c_str());
                printf("\n");
            }
        }
        print_stats(total, *dec, s);
        return 0;
    }

    // interactive chat: the history stays in the KV cache; the oldest turns go when it would overflow
    dec->set_adapter(adapters[0].get(), s.merge);
    const bool tty = isatty(0);
    if (tty)
        fprintf(stderr, "%s: chatting with %s%s%s (%s). /reset forgets, /exit or Ctrl-D ends.\n", PROG, s.model.c_str(),
                adapters[0] ? " + " : "", adapters[0] ? s.adapters[0].c_str() : "", dec->describe().c_str());
    Rng rng(s.seed);
    std::vector<ChatTurn> history;
    std::vector<int32_t> cached;  // the tokens the decoder's cache holds
    // room kept for the answer when old turns are dropped: --max-new-tokens, else a quarter of the context
    const int64_t reserve = s.max_new_tokens > 0 ? s.max_new_tokens : std::max<int64_t>(1, max_context / 4);
    std::string line;
    while (true) {
        if (tty) fprintf(stderr, "> ");
        if (!std::getline(std::cin, line)) break;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.find_first_not_of(" \t") == std::string::npos) continue;
        if (line == "/exit" || line == "/quit") break;
        if (line == "/reset") {
            history.clear();
            dec->reset();
            cached.clear();
            continue;
        }
        std::vector<ChatTurn> turns = history;
        turns.push_back(ChatTurn{line, {}, false});
        std::vector<int32_t> ids = llama2_chat_tokens(turns, s.system, encode, bos, eos);
        while (turns.size() > 1 && (int64_t)ids.size() + reserve > max_context) {
            turns.erase(turns.begin());
            history.erase(history.begin());
            ids = llama2_chat_tokens(turns, s.system, encode, bos, eos);
        }
        try {
            check_prompt_fits(s, cfg, (int64_t)ids.size(), "your message");
            if ((int64_t)ids.size() >= max_context)
                fail("your message is %lld tokens with the chat template, more than this chat's context of %lld",
                     (long long)ids.size(), (long long)max_context);
        } catch (const InputError& e) {  // in a chat, a message too long is not the end
            fprintf(stderr, "%s: %s\n", PROG, e.what());
            continue;
        }
        // keep the cache only when it holds a prefix of the new sequence (not after dropping turns)
        if (cached.size() > ids.size() || !std::equal(cached.begin(), cached.end(), ids.begin())) {
            dec->reset();
            cached.clear();
        }
        Streamer streamer(*tok, stdout);
        GenerateStats st;
        std::vector<int32_t> answer = generate(*dec, ids, std::min(max_context, total_limit(s, cfg, (int64_t)ids.size())), eos, s.sampling, rng,
                                               [&](int32_t id) { streamer.push(id); }, &st);
        streamer.finish();
        printf("\n");
        fflush(stdout);
        total.add(st);
        cached = ids;
        cached.insert(cached.end(), answer.begin(), answer.end());
        cached.resize((size_t)dec->position());
        turns.back().answer = answer;
        turns.back().answered = true;  // closed with </s> in the history even when cut by the length limit
        history = turns;
    }
    print_stats(total, *dec, s);
    return 0;
}

static int sample_main(int argc, char** argv) {
    Args a;
    Cli cli = make_cli(a);
    if (!cli_parse(cli, argc, argv)) return 0;
    Settings s = settings_from(a);
    return run(s, a.prompts_file);
}

int main(int argc, char** argv) { return run_main(PROG, sample_main, argc, argv); }
