// data/prepare_lima.cpp — turns conversation datasets (LIMA's train.jsonl by default; Alpaca,
// ShareGPT and OpenAI messages too, data/formats.h) into the trainer's data file: token ids, a loss
// mask over the assistant's answers, and conversation offsets (format: data/README.md, DataHeader
// in model.h).
//
// Build and run (from the repo root):
//   make NO_CUDA=1 prepare_lima
//   ./prepare_lima -t tokenizer.model -i train.jsonl -o lima.bin --val-out lima_val.bin
//   ./prepare_lima -t tokenizer.model -i alpaca_data.json -o alpaca.bin      # layout detected
//   ./prepare_lima --help
//
// Per turn, with the default Llama 2 chat template:
//   prompt = <s> encode("[INST] " + user + " [/INST]")   loss_mask 0
//   answer = encode(assistant) </s>                       loss_mask 1
// and a record's system prompt inside the first turn's [INST], in Llama 2's <<SYS>> block (chat.h).
// Texts are not stripped, so decoding a span gives back the source text exactly. A conversation is
// cut to --max-len tokens by keeping whole turns while they fit; the first turn that does not fit
// keeps its prompt and as many answer tokens as fit (at least one, else the turn is dropped), and
// later turns are dropped. Each text is tokenized only as far as that rule needs
// (data/prefix_encode.h; the tokens are those of the whole text), so a conversation costs
// O(--max-len) whatever its length. The input is read as a stream (-i /dev/stdin reads a pipe).
// With --val-out, --val conversations chosen by a seeded shuffle
// (splitmix64 + Fisher-Yates, the same on every platform) go to a held-out file.
//
// Output: progress on stderr, then one line of JSON per file written on stdout. Bad input: one line
// "prepare_lima: <file>[:line]: <problem>" on stderr, exit 1, no file written. Bad flags: exit 2.
#include <sentencepiece_processor.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "chat.h"
#include "cli.h"
#include "data/formats.h"
#include "data/prefix_encode.h"
#include "model.h"

// ----------------------------------------------------------------------------------------------
// command line (cli.h: one table drives both the parser and --help)

static const char* PROG = "prepare_lima";

struct Args {  // as given; empty = not given
    std::string tokenizer, input, output, val_out, n_val, max_len, chat_template, seed, format;
};

struct Options {
    std::string tokenizer, input, output, val_out;
    long long n_val = 30;
    long long max_len = 2048;
    std::string chat_template = "llama2";
    unsigned long long seed = 1234;
    DataFormat format = FORMAT_AUTO;
};

static Cli make_cli(Args& a) {
    Cli cli{PROG,
            "./prepare_lima -t tokenizer.model -i train.jsonl -o lima.bin [--val-out lima_val.bin]\n"
            "                      [--val N] [--max-len N] [--template llama2|plain] [--seed S]\n"
            "                      [--format auto|lima|alpaca|sharegpt|openai]",
            "Tokenizes conversations (LIMA, Alpaca, ShareGPT or OpenAI messages) into the trainer's data file\n"
            "(format: data/README.md).",
            {
                {"-t", "--tokenizer", "PATH", "sentencepiece model (Llama 2's tokenizer.model)", &a.tokenizer, nullptr, /*required=*/true},
                {"-i", "--input", "PATH", "jsonl, one conversation per line (or a JSON array of them): LIMA {\"conversations\": [user, assistant, ...]}, or see --format", &a.input, nullptr, /*required=*/true},
                {"-f", "--format", "NAME", "auto (default: from the first record), lima, alpaca ({instruction, input, output}), sharegpt ({conversations: [{from, value}]}) or openai ({messages: [{role, content}]})", &a.format},
                {"-o", "--output", "PATH", "data file to write (training conversations)", &a.output, nullptr, /*required=*/true},
                {"-V", "--val-out", "PATH", "also write a held-out file of --val conversations", &a.val_out},
                {"-n", "--val", "N", "conversations held out into --val-out (default 30)", &a.n_val},
                {"-m", "--max-len", "N", "tokens per conversation at most; longer ones are cut (default 2048)", &a.max_len},
                {"-T", "--template", "NAME", "llama2 (<s>[INST] user [/INST] assistant</s>, default) or plain", &a.chat_template},
                {"-s", "--seed", "S", "seed of the held-out split (default 1234)", &a.seed},
                {"-h", "--help", nullptr, "show this help", nullptr},
            }};
    cli.epilog = "Exit status: 0 ok, 1 bad input (one line naming the file), 2 bad command line.";
    cli.non_empty = true;
    cli.once = true;
    return cli;
}

// Returns false when --help was asked for (and printed); a bad command line exits 2.
static bool parse_args(int argc, char** argv, Options& o) {
    Args a;
    const Cli cli = make_cli(a);
    if (!cli_parse(cli, argc, argv)) return false;
    o.tokenizer = a.tokenizer;
    o.input = a.input;
    o.output = a.output;
    o.val_out = a.val_out;
    if (!a.n_val.empty()) {
        if (o.val_out.empty()) cli_usage_error(PROG, "--val needs --val-out (where the held-out conversations go)");
        o.n_val = cli_int(PROG, "--val", a.n_val, 1, LLONG_MAX);
    }
    // 2 tokens is the least that holds a prompt (<s>) and one answer token
    if (!a.max_len.empty()) o.max_len = cli_int(PROG, "--max-len", a.max_len, 2, INT32_MAX);
    if (!a.chat_template.empty()) o.chat_template = cli_choice(PROG, "--template", a.chat_template, {"llama2", "plain"});
    if (!a.seed.empty()) o.seed = cli_uint64(PROG, "--seed", a.seed);
    if (!a.format.empty()) {
        const std::string f = cli_choice(PROG, "--format", a.format, {"auto", "lima", "alpaca", "sharegpt", "openai"});
        for (DataFormat d : {FORMAT_AUTO, FORMAT_LIMA, FORMAT_ALPACA, FORMAT_SHAREGPT, FORMAT_OPENAI})
            if (f == data_format_name(d)) o.format = d;
    }
    if (!o.val_out.empty() && o.val_out == o.output) cli_usage_error(PROG, "--val-out must differ from --output");
    return true;
}

// ----------------------------------------------------------------------------------------------
// tokenization with the chat template and the truncation rule

struct Tokenized {
    std::vector<int32_t> tokens;   // (len) len <= max_len
    std::vector<uint8_t> mask;     // (len) 1 on answer tokens and their </s>
    int64_t turns = 0;             // turns kept (a cut turn counts)
    bool truncated = false;        // a turn was cut or dropped
    bool dropped = false;          // not even the first prompt plus one answer token fits
};

// Each text is tokenized only as far as the budget left needs (PrefixEncoder: the tokens are those
// of the whole text), so a conversation costs O(--max-len) whatever the length of its texts.
static Tokenized tokenize(const PrefixEncoder& pe, const sentencepiece::SentencePieceProcessor& sp, const Conversation& c,
                          int32_t chat_template, int64_t max_len, const std::string& path) {
    int64_t limit = 0;  // set before each encode: more tokens than this are never looked at
    const EncodeFn encode = [&](const std::string& text) {
        bool complete;
        try {
            return pe.encode(text, limit, &complete);
        } catch (const std::runtime_error& e) {
            fail("%s:%d: tokenizer failed (%s)", path.c_str(), c.line, e.what());
        }
    };
    if (!c.system.empty() && chat_template != TEMPLATE_LLAMA2)
        fail("%s:%d: a system prompt needs --template llama2 (the plain template has no place for one)", path.c_str(), c.line);
    Tokenized t;
    for (size_t k = 0; k + 1 < c.texts.size(); k += 2) {
        // a prompt longer than the room left is dropped whatever its length: max_len - used tokens
        // (+ <s>) tell enough; an answer is cut to the room after its prompt
        limit = max_len - (int64_t)t.tokens.size();
        // the system prompt goes into the first turn's [INST] (chat.h)
        const std::vector<int32_t> prompt =
            chat_prompt_tokens(chat_template, c.texts[k], k == 0 ? c.system : std::string(), encode, sp.bos_id());
        int64_t room = max_len - (int64_t)t.tokens.size() - (int64_t)prompt.size();  // answer tokens that fit
        if (room < 1) {  // the prompt alone fills the budget: drop this turn and the rest
            t.truncated = true;
            break;
        }
        limit = room;
        // an incomplete encoding has more than `room` tokens: cut below, never reaching the </s>
        const std::vector<int32_t> answer = chat_answer_tokens(c.texts[k + 1], encode, sp.eos_id());
        int64_t n_answer = std::min<int64_t>(room, (int64_t)answer.size());
        t.tokens.insert(t.tokens.end(), prompt.begin(), prompt.end());
        t.mask.insert(t.mask.end(), prompt.size(), 0);
        t.tokens.insert(t.tokens.end(), answer.begin(), answer.begin() + n_answer);
        t.mask.insert(t.mask.end(), (size_t)n_answer, 1);
        t.turns++;
        if (n_answer < (int64_t)answer.size()) {  // answer cut (without its </s>): later turns are dropped
            t.truncated = true;
            break;
        }
    }
    if (t.turns == 0) {
        t.dropped = true;
        t.truncated = false;
        t.tokens.clear();
        t.mask.clear();
    }
    return t;
}

// ----------------------------------------------------------------------------------------------
// the held-out split: the first n of a Fisher-Yates shuffle driven by Vigna's splitmix64 stream
// from the seed (common.h: shuffled_indices), so a split is the same on every machine.

// is_val[i] = true for n of the k conversations
static std::vector<bool> choose_val(int64_t k, int64_t n, uint64_t seed) {
    Rng rng(seed);
    const std::vector<int64_t> perm = shuffled_indices(k, rng);
    std::vector<bool> is_val(k, false);
    for (int64_t i = 0; i < n; i++) is_val[perm[i]] = true;
    return is_val;
}

// ----------------------------------------------------------------------------------------------

static Dataset make_dataset(const std::vector<const Tokenized*>& convs, const DataHeader& base) {
    Dataset d;
    d.header = base;
    d.conv_offsets.push_back(0);
    for (const Tokenized* t : convs) {
        d.tokens.insert(d.tokens.end(), t->tokens.begin(), t->tokens.end());
        d.loss_mask.insert(d.loss_mask.end(), t->mask.begin(), t->mask.end());
        d.conv_offsets.push_back((int64_t)d.tokens.size());
        d.header.n_turns += t->turns;
        d.header.n_truncated += t->truncated;
    }
    d.header.n_tokens = (int64_t)d.tokens.size();
    d.header.n_conversations = (int64_t)convs.size();
    for (uint8_t m : d.loss_mask) d.header.n_loss_tokens += m;
    return d;
}

static int run(const Options& o) {
    auto t0 = std::chrono::steady_clock::now();

    IoPaths io;  // no output may be (or link to) an input or the other output
    io.input("-t", o.tokenizer);
    io.input("-i", o.input);
    io.output_file("-o", o.output);
    if (!o.val_out.empty()) io.output_file("--val-out", o.val_out);
    io.check();

    // the tokenizer: read it ourselves so a missing file gets the project's message, and a file that
    // is not a sentencepiece model gets one line naming it
    std::string model_bytes = read_text_file(o.tokenizer);
    sentencepiece::SentencePieceProcessor sp;
    auto st = sp.LoadFromSerializedProto(model_bytes);
    if (!st.ok()) {
        // sentencepiece's message for bytes that are not its protobuf is a source location; say it plainly
        std::string why = st.error_message();
        if (why.find("ParseFromArray") != std::string::npos) why = "protobuf parse failed";
        fail("%s: not a sentencepiece tokenizer model (%s)", o.tokenizer.c_str(), why.c_str());
    }
    if (sp.GetPieceSize() <= 0 || sp.bos_id() < 0 || sp.eos_id() < 0 || sp.bos_id() >= sp.GetPieceSize() ||
        sp.eos_id() >= sp.GetPieceSize())
        fail("%s: tokenizer has no usable <s>/</s> ids (vocab %d, bos %d, eos %d)", o.tokenizer.c_str(),
             sp.GetPieceSize(), sp.bos_id(), sp.eos_id());

    // parse the whole input before any output, so bad input fails fast and alone
    DataFormat format = FORMAT_AUTO;
    std::vector<Conversation> convs = read_conversations(o.input, o.format, &format);
    if (!o.val_out.empty() && o.n_val >= (int64_t)convs.size())
        fail("%s: --val %lld must be less than the %zu conversations in the file", o.input.c_str(), o.n_val, convs.size());
    const int32_t chat_template = o.chat_template == "llama2" ? TEMPLATE_LLAMA2 : TEMPLATE_PLAIN;
    const PrefixEncoder pe(sp);
    std::vector<Tokenized> tok(convs.size());
    for (size_t i = 0; i < convs.size(); i++) {
        tok[i] = tokenize(pe, sp, convs[i], chat_template, o.max_len, o.input);
        // progress only; short inputs stay silent so an error after tokenizing is still a single line
        if ((i + 1) % 100 == 0)
            fprintf(stderr, "prepare_lima: tokenized %zu/%zu conversations\n", i + 1, convs.size());
    }

    std::vector<const Tokenized*> kept;
    int64_t n_dropped = 0;
    for (const Tokenized& t : tok) {
        if (t.dropped) n_dropped++;
        else kept.push_back(&t);
    }
    if (kept.empty()) fail("%s: every conversation was dropped (no first turn fits --max-len %lld)", o.input.c_str(), o.max_len);

    DataHeader base{};  // zeroes the reserved bytes too
    base.magic = DATA_MAGIC;
    base.version = DATA_VERSION;
    base.vocab_size = sp.GetPieceSize();
    base.bos_id = sp.bos_id();
    base.eos_id = sp.eos_id();
    base.max_len = (int32_t)o.max_len;
    base.chat_template = chat_template;
    sha256_file(o.tokenizer, base.tokenizer_sha256);

    std::vector<const Tokenized*> train, val;
    if (!o.val_out.empty()) {
        if (o.n_val >= (int64_t)kept.size())
            fail("%s: --val %lld must be less than the %zu conversations kept", o.input.c_str(), o.n_val, kept.size());
        std::vector<bool> is_val = choose_val((int64_t)kept.size(), o.n_val, o.seed);
        for (size_t i = 0; i < kept.size(); i++) (is_val[i] ? val : train).push_back(kept[i]);
    } else {
        train = kept;
    }

    // every input conversation ends up in exactly one place: a file, or the -o header's dropped count
    Dataset d_train = make_dataset(train, base);
    d_train.header.n_dropped = n_dropped;
    std::vector<std::pair<std::string, Dataset>> outs;
    outs.emplace_back(o.output, std::move(d_train));
    if (!o.val_out.empty()) outs.emplace_back(o.val_out, make_dataset(val, base));
    for (auto& [path, d] : outs) write_dataset(path, d);

    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    int64_t n_trunc = 0;
    for (const Tokenized* t : kept) n_trunc += t->truncated;
    fprintf(stderr,
            "prepare_lima: %zu conversations from %s (%s), tokenizer %s (vocab %d, bos %d, eos %d); %lld truncated and "
            "%lld dropped at --max-len %lld; done in %.2f s\n",
            convs.size(), o.input.c_str(), data_format_name(format), o.tokenizer.c_str(), sp.GetPieceSize(), sp.bos_id(), sp.eos_id(),
            (long long)n_trunc, (long long)n_dropped, o.max_len, secs);
    for (auto& [path, d] : outs) {
        nlohmann::ordered_json j;  // keeps the documented key order
        j["file"] = path;
        j["conversations"] = d.header.n_conversations;
        j["turns"] = d.header.n_turns;
        j["tokens"] = d.header.n_tokens;
        j["loss_tokens"] = d.header.n_loss_tokens;
        j["truncated"] = d.header.n_truncated;
        j["dropped"] = d.header.n_dropped;
        printf("%s\n", j.dump().c_str());
    }
    return 0;
}

static int prepare_main(int argc, char** argv) {
    Options o;
    if (!parse_args(argc, argv, o)) return 0;
    return run(o);
}

int main(int argc, char** argv) { return run_main(PROG, prepare_main, argc, argv); }
