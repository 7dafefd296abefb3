// test/cpu_prepare_lima.cpp — tests of ./prepare_lima (data/prepare_lima.cpp): real LIMA tokenized
// with the Llama 2 chat template and the plain one, the held-out split, --max-len truncation, seeds,
// bad input, texts tokenized only as far as --max-len needs (the same tokens as the whole text),
// a multi-megabyte message, and input from a pipe. The data file's own reader and writer are
// tested in test/cpu_model.cpp.
// Run from the repo root after `make NO_CUDA=1 prepare_lima test_cpu`:
//   ./test_cpu -tc="prepare_lima*"
// Real inputs: ../shared/data/lima/train.jsonl and ../shared/data/llama2/tokenizer.model. The expected
// tokens are rebuilt here from the jsonl with sentencepiece, independently of the tool, and every
// token and mask byte of the tool's output is compared with them.
#include <sentencepiece_processor.h>

#include <doctest/doctest.h>

#include <algorithm>
#include <cstddef>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "data/prefix_encode.h"
#include "model.h"
#include "test/proc_util.h"
#include "test/test_util.h"

using json = nlohmann::json;

namespace {

const std::string kLima = shared_dir() + "/data/lima/train.jsonl";
const std::string kTokenizer = shared_dir() + "/data/llama2/tokenizer.model";
const int kLimaConversations = 1029;  // GAIR/lima train split as shipped in shared/ (1 of 1030 missing)
const int kLimaTurns = 1082;          // assistant turns in that file

const sentencepiece::SentencePieceProcessor& tokenizer() {
    static sentencepiece::SentencePieceProcessor sp;
    static bool loaded = false;
    if (!loaded) {
        auto st = sp.Load(kTokenizer);
        REQUIRE_MESSAGE(st.ok(), kTokenizer << ": " << st.ToString());
        loaded = true;
    }
    return sp;
}

std::vector<int> encode(const std::string& s) {
    std::vector<int> ids;
    REQUIRE(tokenizer().Encode(s, &ids).ok());
    return ids;
}

std::string decode(std::vector<int>::const_iterator b, std::vector<int>::const_iterator e) {
    std::string s;
    REQUIRE(tokenizer().Decode(std::vector<int>(b, e), &s).ok());
    return s;
}

// The LIMA conversations as the test reads them: one vector of texts per non-empty line.
std::vector<std::vector<std::string>> read_conversations(const std::string& path) {
    std::ifstream in(path);
    REQUIRE_MESSAGE(in.good(), path << ": cannot open");
    std::vector<std::vector<std::string>> out;
    std::string line;
    while (std::getline(in, line)) {
        if (line.empty()) continue;
        out.push_back(json::parse(line).at("conversations").get<std::vector<std::string>>());
    }
    return out;
}

const std::vector<std::vector<std::string>>& lima() {
    static std::vector<std::vector<std::string>> c = read_conversations(kLima);
    return c;
}

// A conversation tokenized in full (no --max-len) with the template, built here independently of
// the tool. turn_starts[k] is where turn k's <s> is.
struct Expected {
    std::vector<int> tokens;
    std::vector<uint8_t> mask;
    std::vector<size_t> turn_starts;
    std::vector<size_t> prompt_lens;  // <s> included
};
// A system prompt goes into the first turn's [INST], in Llama 2's <<SYS>> block.
Expected expected_full(const std::vector<std::string>& texts, bool llama2, const std::string& system = "") {
    Expected e;
    for (size_t k = 0; k + 1 < texts.size(); k += 2) {
        e.turn_starts.push_back(e.tokens.size());
        const std::string user = k == 0 && !system.empty() ? "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + texts[k] : texts[k];
        std::vector<int> p = encode(llama2 ? "[INST] " + user + " [/INST]" : texts[k]);
        std::vector<int> a = encode(texts[k + 1]);
        e.tokens.push_back(tokenizer().bos_id());
        e.tokens.insert(e.tokens.end(), p.begin(), p.end());
        e.mask.insert(e.mask.end(), p.size() + 1, 0);
        e.tokens.insert(e.tokens.end(), a.begin(), a.end());
        e.tokens.push_back(tokenizer().eos_id());
        e.mask.insert(e.mask.end(), a.size() + 1, 1);
        e.prompt_lens.push_back(p.size() + 1);
    }
    return e;
}

const std::vector<Expected>& lima_expected_llama2() {
    static std::vector<Expected> e = [] {
        std::vector<Expected> v;
        for (auto& c : lima()) v.push_back(expected_full(c, true));
        return v;
    }();
    return e;
}

std::vector<int> conv_tokens(const Dataset& d, int64_t i) {
    return std::vector<int>(d.tokens.begin() + d.conv_offsets[i], d.tokens.begin() + d.conv_offsets[i + 1]);
}
std::vector<uint8_t> conv_mask(const Dataset& d, int64_t i) {
    return std::vector<uint8_t>(d.loss_mask.begin() + d.conv_offsets[i], d.loss_mask.begin() + d.conv_offsets[i + 1]);
}

// Runs ./prepare_lima with `args`; stdout comes back in output, stderr goes to `err_path`.
CmdResult prepare(const std::string& args, const std::string& err_path) {
    REQUIRE_MESSAGE(path_exists("./prepare_lima"), "build it first: make NO_CUDA=1 prepare_lima");
    return run_cmd("(./prepare_lima " + args + " 2>'" + err_path + "')");
}

std::vector<json> json_lines(const std::string& out) {
    std::vector<json> v;
    std::istringstream in(out);
    std::string line;
    while (std::getline(in, line))
        if (!line.empty()) v.push_back(json::parse(line));
    return v;
}

// The summary line agrees with the header it describes.
void check_summary(const json& j, const std::string& path, const DataHeader& h) {
    CHECK(j.at("file").get<std::string>() == path);
    CHECK(j.at("conversations").get<int64_t>() == h.n_conversations);
    CHECK(j.at("turns").get<int64_t>() == h.n_turns);
    CHECK(j.at("tokens").get<int64_t>() == h.n_tokens);
    CHECK(j.at("loss_tokens").get<int64_t>() == h.n_loss_tokens);
    CHECK(j.at("truncated").get<int64_t>() == h.n_truncated);
    CHECK(j.at("dropped").get<int64_t>() == h.n_dropped);
}

// Header fields that come from the tokenizer and the flags.
void check_header_basics(const DataHeader& h, int max_len, int chat_template) {
    const auto& sp = tokenizer();
    CHECK(h.vocab_size == sp.GetPieceSize());
    CHECK(h.vocab_size == 32000);
    CHECK(h.bos_id == sp.bos_id());
    CHECK(h.eos_id == sp.eos_id());
    CHECK(h.max_len == max_len);
    CHECK(h.chat_template == chat_template);
    uint8_t sha[32];
    sha256_file(kTokenizer, sha);
    CHECK(memcmp(h.tokenizer_sha256, sha, 32) == 0);
    CHECK(h.reserved0 == 0);
    CHECK(std::all_of(h.reserved, h.reserved + sizeof(h.reserved), [](uint8_t b) { return b == 0; }));
}

// Offsets, counts and turns recomputed from the arrays.
void check_arrays(const Dataset& d, int max_len) {
    const DataHeader& h = d.header;
    REQUIRE(d.conv_offsets.size() == (size_t)h.n_conversations + 1);
    CHECK(d.conv_offsets.front() == 0);
    CHECK(d.conv_offsets.back() == h.n_tokens);
    int64_t loss = 0, turns = 0;
    for (int64_t i = 0; i < h.n_conversations; i++) {
        int64_t b = d.conv_offsets[i], e = d.conv_offsets[i + 1];
        REQUIRE(e > b);
        CHECK(e - b <= max_len);
        CHECK_MESSAGE(d.tokens[b] == h.bos_id, "conversation " << i << " does not start with <s>");
        // a turn is <s> prompt (mask 0) then answer (mask 1): never a prompt without answer tokens
        for (int64_t j = b; j < e; j++) {
            loss += d.loss_mask[j];
            if (d.tokens[j] != h.bos_id) continue;
            turns++;
            CHECK(d.loss_mask[j] == 0);
            int64_t k = j + 1;
            while (k < e && d.loss_mask[k] == 0) {
                CHECK_MESSAGE(d.tokens[k] != h.eos_id, "conversation " << i << ": </s> inside a prompt");
                k++;
            }
            CHECK_MESSAGE((k < e && d.tokens[k] != h.bos_id), "conversation " << i << ": a turn at token " << j - b
                                                                             << " has its prompt but no answer tokens");
        }
    }
    CHECK(loss == h.n_loss_tokens);
    CHECK(turns == h.n_turns);
}

// Vigna's splitmix64 + Fisher-Yates as data/README.md describes them, re-implemented from the README:
// the indices (into the kept conversations) that go to the held-out file.
std::set<int64_t> documented_val_split(int64_t k, int64_t n, uint64_t seed) {
    std::vector<int64_t> perm(k);
    for (int64_t i = 0; i < k; i++) perm[i] = i;
    uint64_t state = seed;
    auto next = [&] {
        uint64_t z = (state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    };
    for (int64_t i = k - 1; i > 0; i--) std::swap(perm[i], perm[next() % (uint64_t)(i + 1)]);
    return std::set<int64_t>(perm.begin(), perm.begin() + n);
}

// The two files of a split, matched back to the source conversations: train and val each keep the
// source order, so a merge walks both. which[i] = 0 (train) or 1 (val), index[i] = position there.
struct Match {
    std::vector<int> which;
    std::vector<int64_t> index;
};
// `fits(i, tokens)` says whether file conversation `tokens` is source conversation i's.
template <typename Fits>
Match merge_split(const Dataset& train, const Dataset* val, size_t n_source, Fits fits) {
    Match m;
    int64_t ti = 0, vi = 0;
    for (size_t i = 0; i < n_source; i++) {
        if (ti < train.header.n_conversations && fits(i, conv_tokens(train, ti))) {
            m.which.push_back(0);
            m.index.push_back(ti++);
        } else if (val && vi < val->header.n_conversations && fits(i, conv_tokens(*val, vi))) {
            m.which.push_back(1);
            m.index.push_back(vi++);
        } else {
            m.which.push_back(-1);
            m.index.push_back(-1);
        }
    }
    CHECK(ti == train.header.n_conversations);
    if (val) CHECK(vi == val->header.n_conversations);
    return m;
}

// One run of the tool on real LIMA with --val-out, shared by several cases (it takes ~2 s).
struct LimaRun {
    TempDir dir;
    std::string train_path, val_path;
    CmdResult result;
    Dataset train, val;
};
const LimaRun& lima_run(int max_len) {
    static std::map<int, std::unique_ptr<LimaRun>> runs;
    auto& r = runs[max_len];
    if (!r) {
        r = std::make_unique<LimaRun>();
        r->train_path = r->dir / "lima.bin";
        r->val_path = r->dir / "lima_val.bin";
        std::string args = "-t " + kTokenizer + " -i " + kLima + " -o " + r->train_path + " --val-out " + r->val_path;
        if (max_len != 2048) args += " --max-len " + std::to_string(max_len);  // 2048 is the default
        r->result = prepare(args, r->dir / "stderr.txt");
        REQUIRE_MESSAGE(r->result.exit_code == 0, r->result.output << text_for_message(r->dir / "stderr.txt"));
        r->train = read_dataset(r->train_path);
        r->val = read_dataset(r->val_path);
    }
    return *r;
}

}  // namespace

// ----------------------------------------------------------------------------------------------

TEST_CASE("prepare_lima: real LIMA with nothing cut: counts, split, every token and mask byte") {
    const LimaRun& r = lima_run(100000);
    const Dataset &train = r.train, &val = r.val;
    REQUIRE(lima().size() == (size_t)kLimaConversations);

    CHECK(train.header.n_conversations + val.header.n_conversations == kLimaConversations);
    CHECK(train.header.n_turns + val.header.n_turns == kLimaTurns);
    CHECK(val.header.n_conversations == 30);
    for (const Dataset* d : {&train, &val}) {
        check_header_basics(d->header, 100000, TEMPLATE_LLAMA2);
        check_arrays(*d, 100000);
        CHECK(d->header.n_truncated == 0);
        CHECK(d->header.n_dropped == 0);
    }

    // one JSON line per file, agreeing with the headers
    std::vector<json> lines = json_lines(r.result.output);
    REQUIRE(lines.size() == 2);
    check_summary(lines[0], r.train_path, train.header);
    check_summary(lines[1], r.val_path, val.header);

    // every conversation, token for token and mask byte for mask byte, in source order per file
    const auto& exp = lima_expected_llama2();
    Match m = merge_split(train, &val, exp.size(), [&](size_t i, const std::vector<int>& t) { return t == exp[i].tokens; });
    std::set<int64_t> val_sources;
    for (size_t i = 0; i < exp.size(); i++) {
        REQUIRE_MESSAGE(m.which[i] >= 0, "source conversation " << i << " (line " << i + 1 << ") not found in either file");
        const Dataset& d = m.which[i] ? val : train;
        CHECK_MESSAGE(conv_mask(d, m.index[i]) == exp[i].mask, "loss mask differs for source conversation " << i);
        if (m.which[i]) val_sources.insert((int64_t)i);
    }
    // the split is the one data/README.md documents (splitmix64 + Fisher-Yates, seed 1234)
    CHECK(val_sources == documented_val_split(kLimaConversations, 30, 1234));
}

TEST_CASE("prepare_lima: decoded prompt and answer spans equal the source texts") {
    const LimaRun& r = lima_run(100000);
    const auto& sp = tokenizer();
    const auto& exp = lima_expected_llama2();
    Match m = merge_split(r.train, &r.val, exp.size(), [&](size_t i, const std::vector<int>& t) { return t == exp[i].tokens; });
    // the first conversations, every multi-turn one, and a held-out one
    std::vector<size_t> picks = {0, 1, 2};
    for (size_t i = 0; i < lima().size(); i++)
        if (lima()[i].size() > 2) picks.push_back(i);
    for (size_t i = 0; i < lima().size(); i++)
        if (m.which[i] == 1) {
            picks.push_back(i);
            break;
        }
    REQUIRE(picks.size() > 4);  // LIMA has multi-turn conversations
    for (size_t i : picks) {
        REQUIRE(m.which[i] >= 0);
        const Dataset& d = m.which[i] ? r.val : r.train;
        std::vector<int> t = conv_tokens(d, m.index[i]);
        std::vector<uint8_t> mk = conv_mask(d, m.index[i]);
        const auto& texts = lima()[i];
        // split the file's tokens into turns by <s> and into prompt/answer by the mask alone
        size_t j = 0, turn = 0;
        while (j < t.size()) {
            REQUIRE(t[j] == sp.bos_id());
            size_t p_end = j + 1;
            while (p_end < t.size() && mk[p_end] == 0) p_end++;
            size_t a_end = p_end;
            while (a_end < t.size() && mk[a_end] == 1) a_end++;
            REQUIRE(a_end > p_end);
            REQUIRE(t[a_end - 1] == sp.eos_id());
            REQUIRE(2 * turn + 1 < texts.size());
            CHECK_MESSAGE(decode(t.begin() + j + 1, t.begin() + p_end) == "[INST] " + texts[2 * turn] + " [/INST]",
                          "conversation " << i << " turn " << turn << ": prompt");
            CHECK_MESSAGE(decode(t.begin() + p_end, t.begin() + a_end - 1) == texts[2 * turn + 1],
                          "conversation " << i << " turn " << turn << ": answer");
            j = a_end;
            turn++;
        }
        CHECK(2 * turn == texts.size());
    }
}

TEST_CASE("prepare_lima: default --max-len 2048 on real LIMA cuts exactly the long conversations") {
    const LimaRun& r = lima_run(2048);
    const auto& exp = lima_expected_llama2();
    int64_t over = 0, dropped = 0;
    for (auto& e : exp) {
        over += e.tokens.size() > 2048;
        dropped += e.prompt_lens[0] + 1 > 2048;
    }
    CHECK(over > 0);  // shared/data/README.md: 70 conversations are over 2048 tokens
    CHECK(r.train.header.n_dropped + r.val.header.n_dropped == dropped);
    CHECK(r.train.header.n_truncated + r.val.header.n_truncated == over - dropped);
    CHECK(r.train.header.n_conversations + r.val.header.n_conversations == kLimaConversations - dropped);
    CHECK(r.val.header.n_conversations == 30);
    for (const Dataset* d : {&r.train, &r.val}) {
        check_header_basics(d->header, 2048, TEMPLATE_LLAMA2);
        check_arrays(*d, 2048);
    }
    std::vector<json> lines = json_lines(r.result.output);
    REQUIRE(lines.size() == 2);
    check_summary(lines[0], r.train_path, r.train.header);
    check_summary(lines[1], r.val_path, r.val.header);

    // each file conversation is a prefix of its full tokenization, cut only where the rule says:
    // at max-len inside an answer, or at a turn boundary where the next prompt + 1 token does not fit
    auto is_prefix = [&](size_t i, const std::vector<int>& t) {
        return t.size() <= exp[i].tokens.size() && std::equal(t.begin(), t.end(), exp[i].tokens.begin());
    };
    Match m = merge_split(r.train, &r.val, exp.size(), is_prefix);
    int64_t cut = 0;
    for (size_t i = 0; i < exp.size(); i++) {
        const Expected& e = exp[i];
        if (e.prompt_lens[0] + 1 > 2048) {
            CHECK(m.which[i] == -1);
            continue;
        }
        REQUIRE_MESSAGE(m.which[i] >= 0, "source conversation " << i << " not found");
        const Dataset& d = m.which[i] ? r.val : r.train;
        size_t len = (size_t)d.conv_len(m.index[i]);
        CHECK(conv_mask(d, m.index[i]) == std::vector<uint8_t>(e.mask.begin(), e.mask.begin() + len));
        if (e.tokens.size() <= 2048) {
            CHECK_MESSAGE(len == e.tokens.size(), "conversation " << i << " fits but was cut");
            continue;
        }
        cut++;
        if (len == 2048) {
            CHECK(e.mask[len - 1] == 1);  // cut inside an answer
        } else {
            // cut at a turn boundary: the next turn's prompt plus one answer token would not fit
            auto next = std::find(e.turn_starts.begin(), e.turn_starts.end(), len);
            REQUIRE_MESSAGE(next != e.turn_starts.end(), "conversation " << i << " cut mid-turn at " << len);
            CHECK(len + e.prompt_lens[next - e.turn_starts.begin()] + 1 > 2048);
        }
    }
    CHECK(cut == over - dropped);
}

TEST_CASE("prepare_lima: same seed gives byte-identical files, another seed another split") {
    TempDir dir;
    std::string base = "-t " + kTokenizer + " -i " + kLima + " --val-out ";
    auto run = [&](const std::string& name, const std::string& extra) {
        CmdResult c = prepare(base + (dir / name) + "_val.bin -o " + (dir / name) + ".bin " + extra, dir / "err.txt");
        REQUIRE_MESSAGE(c.exit_code == 0, text_for_message(dir / "err.txt"));
    };
    run("a", "--seed 7");
    run("b", "-s 7");
    run("c", "--seed=8");
    CHECK(read_bytes(dir / "a.bin") == read_bytes(dir / "b.bin"));
    CHECK(read_bytes(dir / "a_val.bin") == read_bytes(dir / "b_val.bin"));
    Dataset va = read_dataset(dir / "a_val.bin"), vc = read_dataset(dir / "c_val.bin");
    std::set<std::vector<int>> sa, sc;
    for (int64_t i = 0; i < va.header.n_conversations; i++) sa.insert(conv_tokens(va, i));
    for (int64_t i = 0; i < vc.header.n_conversations; i++) sc.insert(conv_tokens(vc, i));
    CHECK(sa.size() == 30);
    CHECK(sc.size() == 30);
    CHECK(sa != sc);
    // --val N is honoured
    run("d", "--val 5");
    CHECK(read_dataset(dir / "d_val.bin").header.n_conversations == 5);
    CHECK(read_dataset(dir / "d.bin").header.n_conversations == kLimaConversations - 5);
}

TEST_CASE("prepare_lima: plain template on real LIMA, no split") {
    TempDir dir;
    CmdResult c = prepare("-t " + kTokenizer + " -i " + kLima + " -o " + (dir / "plain.bin") + " --template plain --max-len 100000",
                          dir / "err.txt");
    REQUIRE_MESSAGE(c.exit_code == 0, text_for_message(dir / "err.txt"));
    Dataset d = read_dataset(dir / "plain.bin");
    check_header_basics(d.header, 100000, TEMPLATE_PLAIN);
    check_arrays(d, 100000);
    REQUIRE(d.header.n_conversations == kLimaConversations);
    CHECK(d.header.n_turns == kLimaTurns);
    std::vector<json> lines = json_lines(c.output);
    REQUIRE(lines.size() == 1);
    check_summary(lines[0], dir / "plain.bin", d.header);
    for (size_t i = 0; i < lima().size(); i++) {
        Expected e = expected_full(lima()[i], false);
        CHECK_MESSAGE(conv_tokens(d, (int64_t)i) == e.tokens, "conversation " << i);
        CHECK_MESSAGE(conv_mask(d, (int64_t)i) == e.mask, "conversation " << i);
    }
}

TEST_CASE("prepare_lima: truncation rule on a tiny synthetic set") {
    TempDir dir;
    const auto& sp = tokenizer();
    // conversation 1: two turns; conversation 2: one turn whose prompt is long
    std::vector<std::string> c1 = {"What is two plus two?", "Two plus two is four, as everyone knows.",
                                   "And three plus three?", "Three plus three is six, which is also well known."};
    std::string long_user;
    for (int i = 0; i < 60; i++) long_user += "word" + std::to_string(i) + " ";
    std::vector<std::string> c2 = {long_user, "ok"};
    {
        std::ofstream f(dir / "tiny.jsonl");
        f << json{{"conversations", c1}}.dump() << "\n\n   \n" << json{{"conversations", c2}}.dump() << "\n";
    }
    Expected e1 = expected_full(c1, true), e2 = expected_full(c2, true);
    size_t p1 = e1.prompt_lens[0], t1 = e1.turn_starts[1], p2 = e1.prompt_lens[1];  // t1 = whole first turn
    size_t full1 = e1.tokens.size(), a2 = full1 - t1 - p2;                           // a2 includes </s>
    REQUIRE(a2 >= 4);
    REQUIRE(e2.prompt_lens[0] > full1 + 1);  // conversation 2 never fits in the lengths tried below

    struct Case {
        const char* what;
        size_t max_len, want_len, want_turns;
        bool want_truncated;
    };
    const Case cases[] = {
        {"everything fits exactly", full1, full1, 2, false},
        {"answer cut: no </s>", t1 + p2 + 2, t1 + p2 + 2, 2, true},
        {"only the last </s> cut", full1 - 1, full1 - 1, 2, true},
        {"second prompt + 1 token does not fit: turn dropped", t1 + p2, t1, 1, true},
        {"second prompt alone fits: turn dropped, never a prompt without answer", t1 + p2 - 1, t1, 1, true},
        {"first turn cut to one answer token", p1 + 1, p1 + 1, 1, true},
    };
    for (const Case& k : cases) {
        CAPTURE(k.what);
        CAPTURE(k.max_len);
        std::string out = dir / "tiny.bin";
        CmdResult c = prepare("-t " + kTokenizer + " -i " + (dir / "tiny.jsonl") + " -o " + out + " -m " +
                                  std::to_string(k.max_len),
                              dir / "err.txt");
        REQUIRE_MESSAGE(c.exit_code == 0, text_for_message(dir / "err.txt"));
        Dataset d = read_dataset(out);
        check_arrays(d, (int)k.max_len);
        REQUIRE(d.header.n_conversations == 1);  // conversation 2 is dropped
        CHECK(d.header.n_dropped == 1);
        CHECK(d.header.n_turns == (int64_t)k.want_turns);
        CHECK(d.header.n_truncated == (k.want_truncated ? 1 : 0));
        REQUIRE(d.header.n_tokens == (int64_t)k.want_len);
        CHECK(conv_tokens(d, 0) == std::vector<int>(e1.tokens.begin(), e1.tokens.begin() + k.want_len));
        CHECK(conv_mask(d, 0) == std::vector<uint8_t>(e1.mask.begin(), e1.mask.begin() + k.want_len));
        bool ends_with_eos = d.tokens.back() == sp.eos_id();
        CHECK(ends_with_eos == (k.want_len == full1 || k.want_len == t1));
        std::vector<json> lines = json_lines(c.output);
        REQUIRE(lines.size() == 1);
        check_summary(lines[0], out, d.header);
    }
    // nothing fits at all: an error, not an empty file
    CmdResult c = run_cmd("./prepare_lima -t " + kTokenizer + " -i " + (dir / "tiny.jsonl") + " -o " + (dir / "none.bin") +
                          " --max-len " + std::to_string(p1));
    CHECK(c.exit_code == 1);
    CHECK(count_lines(c.output) == 1);
    CHECK(!path_exists(dir / "none.bin"));
}

TEST_CASE("prepare_lima: bad input gives one line naming the file, exit 1, and writes nothing") {
    TempDir dir;
    // a good output file from an earlier run must survive every failed run byte for byte
    std::string good_json = json{{"conversations", {"Hi there", "Hello!"}}}.dump();
    write_bytes(dir / "good.jsonl", good_json + "\n" + good_json + "\n");
    std::string out = dir / "out.bin", val = dir / "val.bin";
    CmdResult ok = prepare("-t " + kTokenizer + " -i " + (dir / "good.jsonl") + " -o " + out + " -V " + val + " -n 1",
                           dir / "err.txt");
    REQUIRE_MESSAGE(ok.exit_code == 0, text_for_message(dir / "err.txt"));
    const std::string out_before = read_bytes(out), val_before = read_bytes(val);
    REQUIRE(out_before.size() > sizeof(DataHeader));
    write_bytes(dir / "random.bin", std::string(3000, '\x5a'));

    struct BadJsonl {
        const char* name;
        std::string line3;  // lines 1 and 2 are a good conversation and an empty line
        const char* says;
    };
    const BadJsonl bad_jsonl[] = {
        {"not JSON", "{\"conversations\": [\"a\", \"b\"", "not valid JSON"},
        {"a JSON array", "[\"a\", \"b\"]", "expected a JSON object"},
        {"a JSON string", "\"a\"", "expected a JSON object"},
        {"alpaca layout", "{\"instruction\": \"a\", \"output\": \"b\"}", "no \"conversations\""},
        {"conversations a string", "{\"conversations\": \"a\"}", "expected an array"},
        {"non-string entry", "{\"conversations\": [\"a\", 3]}", "conversations[1]"},
        {"nested object entry", "{\"conversations\": [{\"from\": \"human\", \"value\": \"a\"}, \"b\"]}", "conversations[0]"},
        {"empty list", "{\"conversations\": []}", "empty"},
        {"odd number of entries", "{\"conversations\": [\"a\", \"b\", \"c\"]}", "no assistant answer"},
    };
    struct Bad {
        std::string what, args, names, says;
        int exit_code;
    };
    std::vector<Bad> bad;
    std::string outs = " -o " + out + " --val-out " + val + " --val 1";
    bad.push_back({"missing input", "-t " + kTokenizer + " -i " + (dir / "nope.jsonl") + outs, dir / "nope.jsonl",
                   "cannot open", 1});
    bad.push_back({"missing tokenizer", "-t " + (dir / "nope.model") + " -i " + (dir / "good.jsonl") + outs,
                   dir / "nope.model", "cannot open", 1});
    bad.push_back({"jsonl as tokenizer", "-t " + kLima + " -i " + (dir / "good.jsonl") + outs, kLima,
                   "not a sentencepiece", 1});
    bad.push_back({"random bytes as tokenizer", "-t " + (dir / "random.bin") + " -i " + (dir / "good.jsonl") + outs,
                   dir / "random.bin", "not a sentencepiece", 1});
    bad.push_back({"a directory as input", "-t " + kTokenizer + " -i " + dir.path + outs, dir.path, "directory", 1});
    for (const BadJsonl& b : bad_jsonl) {
        std::string p = dir / (std::string("bad_") + std::to_string(&b - bad_jsonl) + ".jsonl");
        write_bytes(p, good_json + "\n\n" + b.line3 + "\n" + good_json + "\n");
        bad.push_back({b.name, "-t " + kTokenizer + " -i " + p + outs, p + ":3:", b.says, 1});
    }
    write_bytes(dir / "empty.jsonl", "\n\n");
    bad.push_back({"no conversations", "-t " + kTokenizer + " -i " + (dir / "empty.jsonl") + outs, dir / "empty.jsonl",
                   "no conversations", 1});
    bad.push_back({"--val not below the conversation count",
                   "-t " + kTokenizer + " -i " + (dir / "good.jsonl") + " -o " + out + " --val-out " + val + " --val 2",
                   dir / "good.jsonl", "--val 2", 1});
    // command-line errors: exit 2
    std::string io = "-t " + kTokenizer + " -i " + (dir / "good.jsonl");
    bad.push_back({"unknown flag", io + " -o " + out + " --frobnicate 3", "--frobnicate", "unknown", 2});
    bad.push_back({"--val without --val-out", io + " -o " + out + " --val 1", "--val", "--val-out", 2});
    bad.push_back({"bad template", io + " -o " + out + " --template chatml", "chatml", "llama2 or plain", 2});
    bad.push_back({"bad max-len", io + " -o " + out + " --max-len 12x", "12x", "integer", 2});
    bad.push_back({"max-len too small", io + " -o " + out + " --max-len 1", "--max-len", "between", 2});
    bad.push_back({"missing -o", io, "--output", "missing", 2});
    bad.push_back({"flag without value", io + " -o", "--output", "needs a value", 2});
    bad.push_back({"same output twice", io + " -o " + out + " -V " + out, "--val-out", "differ", 2});

    for (const Bad& b : bad) {
        CAPTURE(b.what);
        check_one_line_failure(run_cmd("./prepare_lima " + b.args), "prepare_lima", b.exit_code, {b.names, b.says});
        CHECK(read_bytes(out) == out_before);
        CHECK(read_bytes(val) == val_before);
        // no temporary or partial file left behind
        for (const std::string& f : list_dir(dir.path, "", ""))
            CHECK_MESSAGE((f == "." || f == ".." || f.find(".tmp.") == std::string::npos), f);
    }
    // failing into a fresh path creates nothing
    CmdResult c = run_cmd("./prepare_lima -t " + kLima + " -i " + (dir / "good.jsonl") + " -o " + (dir / "fresh.bin"));
    CHECK(c.exit_code == 1);
    CHECK(!path_exists(dir / "fresh.bin"));
    // --help comes from the flag table and exits 0
    CmdResult h = run_cmd("./prepare_lima --help");
    CHECK(h.exit_code == 0);
    for (const char* flag : {"--tokenizer", "--input", "--output", "--val-out", "--val", "--max-len", "--template", "--seed"})
        CHECK_MESSAGE(h.output.find(flag) != std::string::npos, flag);
}

// ----------------------------------------------------------------------------------------------
// other data formats: Alpaca, ShareGPT, OpenAI messages (data/formats.h)

TEST_CASE("prepare_lima: real LIMA output is byte-identical to the files made before other formats and bounded tokenizing existed") {
    // sha256 of the arrays (everything after the 256-byte header) of -o and --val-out with the
    // defaults, as the tool wrote them before data/formats.* (in the version-1 files, whose whole
    // sha256 was a1cca938... and b9e3944c...; version 2 changed only the header: its checksum)
    const LimaRun& r = lima_run(2048);
    TempDir t;
    uint8_t sha[32];
    for (const auto& [path, want] : {std::pair<std::string, std::string>{r.train_path, "40a599c181a58b02aebbbf1d19d7c570382579ce2d8854d5efa186c2d98c6930"},
                                     {r.val_path, "ff6cd2c2449bb7b39b2c8d4f20d2037eb858852441b41c2a4f5a9a44bf253198"}}) {
        write_bytes(t / "payload", read_bytes(path).substr(sizeof(DataHeader)));
        sha256_file(t / "payload", sha);
        CHECK_MESSAGE(hex_digest(sha) == want, path);
    }
    // --max-len 64 cuts most conversations (690 truncated, 284 dropped): the payloads the tool wrote
    // before it tokenized texts only as far as --max-len needs (data/prefix_encode.h)
    const LimaRun& r64 = lima_run(64);
    for (const auto& [path, want] : {std::pair<std::string, std::string>{r64.train_path, "e30253df985871ad7896b6f24f181ec83ae144631089695efe41727c872dcbc5"},
                                     {r64.val_path, "d816fcd9003aa81f117664bfc7065d4db34af72616a488651fb869d28e3130d4"}}) {
        write_bytes(t / "payload", read_bytes(path).substr(sizeof(DataHeader)));
        sha256_file(t / "payload", sha);
        CHECK_MESSAGE(hex_digest(sha) == want, path);
    }
}

namespace {
struct FormatCase {
    const char* format;
    const char* file;     // name of the input file
    std::string text;     // its contents
    struct Want {
        std::string system;
        std::vector<std::string> texts;  // user, assistant, ...
    };
    std::vector<Want> want;
};

std::vector<FormatCase> format_cases() {
    const json alpaca = json::array({
        {{"instruction", "Name a color."}, {"input", ""}, {"output", "Blue."}},
        {{"instruction", "Translate to French."}, {"input", "Good morning"}, {"output", "Bonjour"}},
        {{"instruction", "Sum 1 and 2."}, {"output", "3"}},
        {{"instruction", "Echo"}, {"input", nullptr}, {"output", " spaced \n"}},
    });
    auto turn = [](const char* who, const char* what) { return json{{"from", who}, {"value", what}}; };
    auto msg = [](const char* role, const char* content) { return json{{"role", role}, {"content", content}}; };
    const std::string sharegpt =
        json{{"conversations", {turn("system", "You are terse."), turn("human", "Hi"), turn("gpt", "Hello."),
                                turn("human", "Bye"), turn("gpt", "Bye.")}}}.dump() + "\n" +
        json{{"id", "x1"}, {"conversations", {turn("user", "2+2?"), turn("assistant", "4")}}}.dump() + "\n\n" +
        json{{"system", "Answer in French."}, {"conversations", {turn("human", "Thanks"), turn("gpt", "De rien.")}}}.dump() + "\n";
    json weighted = msg("assistant", "A1");
    weighted["weight"] = 1;
    const std::string openai =
        json{{"messages", {msg("system", "Be kind."), msg("user", "Hello"), msg("assistant", "Hi! How can I help?")}}}.dump() + "\n" +
        json{{"messages", {msg("user", "Q1"), weighted, msg("user", "Q2"), msg("assistant", "A2")}}}.dump() + "\n";
    return {
        {"alpaca", "alpaca_data.json", alpaca.dump(1),
         {{"", {"Name a color.", "Blue."}}, {"", {"Translate to French.\n\nGood morning", "Bonjour"}},
          {"", {"Sum 1 and 2.", "3"}}, {"", {"Echo", " spaced \n"}}}},
        {"sharegpt", "sharegpt.jsonl", sharegpt,
         {{"You are terse.", {"Hi", "Hello.", "Bye", "Bye."}}, {"", {"2+2?", "4"}}, {"Answer in French.", {"Thanks", "De rien."}}}},
        {"openai", "openai.jsonl", openai, {{"Be kind.", {"Hello", "Hi! How can I help?"}}, {"", {"Q1", "A1", "Q2", "A2"}}}},
    };
}
}  // namespace

TEST_CASE("prepare_lima: Alpaca, ShareGPT and OpenAI records, detected or forced: every token and mask byte, decoded text") {
    TempDir dir;
    const auto& sp = tokenizer();
    const std::vector<FormatCase> cases = format_cases();
    for (const FormatCase& f : cases) {
        CAPTURE(f.format);
        const std::string in = dir / f.file;
        write_bytes(in, f.text);
        for (const std::string& flag : {std::string(), " --format " + std::string(f.format)}) {
            CAPTURE(flag);
            const std::string out = dir / (std::string(f.format) + ".bin");
            CmdResult c = prepare("-t " + kTokenizer + " -i " + in + " -o " + out + flag, dir / "err.txt");
            REQUIRE_MESSAGE(c.exit_code == 0, text_for_message(dir / "err.txt"));
            CHECK(read_bytes(dir / "err.txt").find("(" + std::string(f.format) + ")") != std::string::npos);
            const Dataset d = read_dataset(out);
            check_header_basics(d.header, 2048, TEMPLATE_LLAMA2);
            check_arrays(d, 2048);
            REQUIRE(d.header.n_conversations == (int64_t)f.want.size());
            int64_t turns = 0;
            for (size_t i = 0; i < f.want.size(); i++) {
                const FormatCase::Want& w = f.want[i];
                const Expected e = expected_full(w.texts, true, w.system);
                CHECK_MESSAGE(conv_tokens(d, (int64_t)i) == e.tokens, "conversation " << i);
                CHECK_MESSAGE(conv_mask(d, (int64_t)i) == e.mask, "conversation " << i);
                turns += (int64_t)w.texts.size() / 2;
                // the spans decode to the record's texts; the system prompt sits in the first [INST] only
                const std::vector<int> t = conv_tokens(d, (int64_t)i);
                for (size_t k = 0; k < e.turn_starts.size(); k++) {
                    const size_t p0 = e.turn_starts[k], p1 = p0 + e.prompt_lens[k];
                    const size_t a1 = k + 1 < e.turn_starts.size() ? e.turn_starts[k + 1] : t.size();
                    const std::string sys = k == 0 && !w.system.empty() ? "<<SYS>>\n" + w.system + "\n<</SYS>>\n\n" : "";
                    CHECK(t[p0] == sp.bos_id());
                    CHECK(decode(t.begin() + p0 + 1, t.begin() + p1) == "[INST] " + sys + w.texts[2 * k] + " [/INST]");
                    CHECK(decode(t.begin() + p1, t.begin() + a1 - 1) == w.texts[2 * k + 1]);
                    CHECK(t[a1 - 1] == sp.eos_id());
                }
            }
            CHECK(d.header.n_turns == turns);
        }
    }
    // the truncation rule counts the system prompt as part of the first prompt
    const FormatCase::Want& w = cases[2].want[0];
    const Expected e = expected_full(w.texts, true, w.system);
    const size_t p = e.prompt_lens[0];
    write_bytes(dir / "one.jsonl", split_lines(cases[2].text)[0] + "\n");
    CmdResult c = prepare("-t " + kTokenizer + " -i " + (dir / "one.jsonl") + " -o " + (dir / "one.bin") + " --max-len " +
                              std::to_string(p + 1), dir / "err.txt");
    REQUIRE_MESSAGE(c.exit_code == 0, text_for_message(dir / "err.txt"));
    const Dataset d = read_dataset(dir / "one.bin");
    CHECK(conv_tokens(d, 0) == std::vector<int>(e.tokens.begin(), e.tokens.begin() + (long)p + 1));
    CHECK(d.header.n_truncated == 1);
    check_one_line_failure(run_cmd("./prepare_lima -t " + kTokenizer + " -i " + (dir / "one.jsonl") + " -o " + (dir / "x.bin") +
                                   " --max-len " + std::to_string(p)),
                           "prepare_lima", 1, {dir / "one.jsonl", "every conversation was dropped"});
    // a system prompt has no place in the plain template
    check_one_line_failure(run_cmd("./prepare_lima -t " + kTokenizer + " -i " + (dir / "one.jsonl") + " -o " + (dir / "x.bin") +
                                   " --template plain"),
                           "prepare_lima", 1, {dir / "one.jsonl" + ":1:", "--template llama2"});
    CHECK(!path_exists(dir / "x.bin"));
}

TEST_CASE("prepare_lima: bad Alpaca, ShareGPT and OpenAI records name file:line, exit 1, and write nothing") {
    TempDir dir;
    auto turn = [](const char* who, const json& what) { return json{{"from", who}, {"value", what}}; };
    auto msg = [](const char* role, const json& content) { return json{{"role", role}, {"content", content}}; };
    const std::string alp = json{{"instruction", "a"}, {"output", "b"}}.dump();
    const std::string sg = json{{"conversations", {turn("human", "a"), turn("gpt", "b")}}}.dump();
    const std::string oa = json{{"messages", {msg("user", "a"), msg("assistant", "b")}}}.dump();
    json weight0 = msg("assistant", "b");
    weight0["weight"] = 0;
    struct Bad {
        const char* what;
        std::string first, bad;  // line 1 (fixes the format) and line 3 (line 2 is blank)
        const char* says;
    };
    const Bad bad[] = {
        {"alpaca: instruction a number", alp, json{{"instruction", 5}, {"output", "x"}}.dump(), "\"instruction\" is a number"},
        {"alpaca: no output", alp, json{{"instruction", "a"}}.dump(), "no \"output\" field"},
        {"alpaca: input an array", alp, json{{"instruction", "a"}, {"input", {"x"}}, {"output", "b"}}.dump(), "\"input\" is a array"},
        {"alpaca: no instruction", alp, json{{"output", "b"}}.dump(), "no \"instruction\" field"},
        {"sharegpt: two user turns", sg, json{{"conversations", {turn("human", "a"), turn("human", "b")}}}.dump(),
         "conversations[1] is from \"human\", but an assistant turn was expected"},
        {"sharegpt: starts with the assistant", sg, json{{"conversations", {turn("gpt", "a"), turn("human", "b")}}}.dump(),
         "conversations[0] is from \"gpt\", but a user turn"},
        {"sharegpt: empty", sg, json{{"conversations", json::array()}}.dump(), "\"conversations\" is empty"},
        {"sharegpt: unknown role", sg, json{{"conversations", {turn("bing", "a"), turn("gpt", "b")}}}.dump(), "unknown role \"bing\""},
        {"sharegpt: value a number", sg, json{{"conversations", {turn("human", "a"), turn("gpt", 7)}}}.dump(),
         "conversations[1]: \"value\" is a number"},
        {"sharegpt: a string turn", sg, json{{"conversations", {"a", turn("gpt", "b")}}}.dump(), "conversations[0] is a string, expected an object"},
        {"sharegpt: no answer", sg, json{{"conversations", {turn("human", "a"), turn("gpt", "b"), turn("human", "c")}}}.dump(),
         "the last user turn (conversations[2]) has no assistant answer"},
        {"sharegpt: system in the middle", sg,
         json{{"conversations", {turn("human", "a"), turn("gpt", "b"), turn("system", "c"), turn("gpt", "d")}}}.dump(),
         "conversations[2] is a system message"},
        {"sharegpt: only a system prompt", sg, json{{"conversations", {turn("system", "s")}}}.dump(), "holds only a system prompt"},
        {"sharegpt: two system prompts", sg,
         json{{"system", "s"}, {"conversations", {turn("system", "t"), turn("human", "a"), turn("gpt", "b")}}}.dump(),
         "two system prompts"},
        {"openai: tool role", oa, json{{"messages", {msg("user", "a"), msg("tool", "b")}}}.dump(), "messages[1]: unknown role \"tool\""},
        {"openai: null content", oa, json{{"messages", {msg("user", "a"), msg("assistant", nullptr)}}}.dump(), "\"content\" is a null"},
        {"openai: content parts", oa, json{{"messages", {msg("user", {{{"type", "text"}}}), msg("assistant", "b")}}}.dump(),
         "\"content\" is a array"},
        {"openai: no role", oa, json{{"messages", {{{"content", "a"}}, msg("assistant", "b")}}}.dump(), "messages[0]: no \"role\" field"},
        {"openai: empty", oa, json{{"messages", json::array()}}.dump(), "\"messages\" is empty"},
        {"openai: messages a string", oa, json{{"messages", "hi"}}.dump(), "\"messages\" is a string"},
        {"openai: weight 0", oa, json{{"messages", {msg("user", "a"), weight0}}}.dump(), "\"weight\" 0 is not supported"},
        {"openai: not JSON", oa, "{\"messages\": [", "not valid JSON"},
        {"openai: an array record", oa, "[1, 2]", "expected a JSON object"},
    };
    for (const Bad& b : bad) {
        CAPTURE(b.what);
        const std::string in = dir / "bad.jsonl", out = dir / "out.bin";
        write_bytes(in, b.first + "\n\n" + b.bad + "\n" + b.first + "\n");
        check_one_line_failure(run_cmd("./prepare_lima -t " + kTokenizer + " -i " + in + " -o " + out), "prepare_lima", 1,
                               {in + ":3:", b.says});
        CHECK(!path_exists(out));
    }
    // the format is told from the first record, or forced; JSON array files give each record's line
    struct Whole {
        const char* what;
        std::string text, flags, names, says;
    };
    const Whole whole[] = {
        {"unknown first record", json{{"prompt", "a"}, {"completion", "b"}}.dump() + "\n", "", ":1:", "cannot tell the data format from the first record (keys: completion, prompt)"},
        {"forced openai on LIMA", json{{"conversations", {"a", "b"}}}.dump() + "\n", " --format openai", ":1:", "no \"messages\" field"},
        {"forced alpaca on ShareGPT", sg + "\n", " --format alpaca", ":1:", "no \"instruction\" field"},
        {"array: bad record", "[\n" + alp + ",\n\n" + json{{"instruction", "a"}, {"output", 1}}.dump() + "\n]", "", ":4:", "\"output\" is a number"},
        {"array: never closed", "[\n" + alp + ",\n" + alp + "\n", "", ":3:", "never closed"},
        {"array: text after it", "[" + alp + "]\n{}\n", "", ":2:", "text after the top-level array"},
        {"array: empty", "[ ]\n", "", "", "no conversations"},
    };
    for (const Whole& w : whole) {
        CAPTURE(w.what);
        const std::string in = dir / "data.json", out = dir / "out.bin";
        write_bytes(in, w.text);
        check_one_line_failure(run_cmd("./prepare_lima -t " + kTokenizer + " -i " + in + " -o " + out + w.flags), "prepare_lima", 1,
                               {in + w.names, w.says});
        CHECK(!path_exists(out));
    }
    check_one_line_failure(run_cmd("./prepare_lima -t " + kTokenizer + " -i " + (dir / "data.json") + " -o " + (dir / "out.bin") +
                                   " --format chatml"),
                           "prepare_lima", 2, {"--format", "auto, lima, alpaca, sharegpt or openai"});
}

// ----------------------------------------------------------------------------------------------
// bounded work (data/prefix_encode.h) and streamed input

TEST_CASE("prepare_lima: a text tokenized only as far as the budget needs gives the whole text's first tokens") {
    const PrefixEncoder pe(tokenizer());
    REQUIRE(pe.cuts_prefixes());  // Llama 2's tokenizer passes the normalization check (else nothing below cuts)
    // every LIMA text the tool encodes (answers, and prompts as the template spells them), under
    // budgets from none to the default --max-len: a prefix longer than the budget, or the whole
    int64_t cut = 0, whole = 0;
    auto check = [&](const std::string& text, const std::vector<int>& full, int64_t limit) {
        bool complete = false;
        const std::vector<int32_t> got = pe.encode(text, limit, &complete);
        if (complete) {
            whole++;
            REQUIRE(std::vector<int>(got.begin(), got.end()) == full);
        } else {
            cut++;
            REQUIRE((int64_t)got.size() > limit);
            REQUIRE(got.size() <= full.size());
            REQUIRE_MESSAGE(std::equal(got.begin(), got.end(), full.begin()), "limit " << limit << ": " << text.substr(0, 200));
        }
    };
    for (const auto& conv : lima())
        for (size_t k = 0; k < conv.size(); k++) {
            const std::string text = k % 2 ? conv[k] : "[INST] " + conv[k] + " [/INST]";
            const std::vector<int> full = encode(text);
            for (int64_t limit : {0, 1, 17, 64, 500, 2048}) check(text, full, limit);
        }
    CHECK(cut > 5000);  // most LIMA texts are longer than the small budgets: the prefix path ran
    CHECK(whole > 1000);
    // synthetic texts where cuts are awkward: doubled spaces, tabs, newlines, digits, punctuation,
    // multi-byte characters, emoji (byte fallback), a literal U+2581, words glued together
    const std::vector<std::string> atoms = {"the", "quick", "brown", "ation", "ing", " ", "  ", "   ", "\t", "\n", "\n\n",
                                            "1", "2024", ".", ",", "!?", "(", ")", "\xc3\xa9", "\xe6\x97\xa5\xe6\x9c\xac",
                                            "\xf0\x9f\x98\x80", "\xe2\x96\x81", "-", "--", "__", "http://x.y/z", "''", "\""};
    Rng rng(42);
    for (int i = 0; i < 300; i++) {
        std::string text;
        const int n = 50 + (int)(rng.next() % 4000);
        for (int k = 0; k < n; k++) text += atoms[rng.next() % atoms.size()];
        check(text, encode(text), (int64_t)(rng.next() % 600));
    }
    // no barrier anywhere (a run of one letter): the whole text, still the same tokens
    bool complete = false;
    const std::string run(20000, 'a');
    CHECK(!pe.is_barrier(run, 10000));
    const std::vector<int32_t> got = pe.encode(run, 10, &complete);
    CHECK(complete);
    CHECK(std::vector<int>(got.begin(), got.end()) == encode(run));
}

namespace {
// Words in a seeded random order, about `bytes` long: text with the statistics of prose.
std::string random_prose(size_t bytes, uint64_t seed) {
    static const char* words[] = {"alpha", "beta", "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "1234",
                                  "\xc3\xbc" "ber", "na\xc3\xafve", "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e", "end.", "\n"};
    Rng rng(seed);
    std::string s;
    while (s.size() < bytes) s += std::string(words[rng.next() % 16]) + (rng.next() % 7 ? " " : "  ");
    return s;
}
}  // namespace

TEST_CASE("prepare_lima: a multi-megabyte message is cut at --max-len fast, with the tokens of the whole text") {
    TempDir dir;
    const std::string moderate = random_prose(300000, 5), big = moderate + random_prose(8000000, 6);
    // moderate: every kept token against the tokenization of the whole text, cut by the rule
    const std::vector<std::string> conv = {"Summarize this.", moderate};
    write_bytes(dir / "moderate.jsonl", json{{"conversations", conv}}.dump() + "\n");
    ProcResult r = run_argv({"./prepare_lima", "-t", kTokenizer, "-i", dir / "moderate.jsonl", "-o", dir / "moderate.bin"}, 60);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    const Expected e = expected_full(conv, true);
    REQUIRE(e.tokens.size() > 50000);
    const Dataset dm = read_dataset(dir / "moderate.bin");
    CHECK(dm.header.n_tokens == 2048);
    CHECK(dm.header.n_truncated == 1);
    CHECK(conv_tokens(dm, 0) == std::vector<int>(e.tokens.begin(), e.tokens.begin() + 2048));
    CHECK(conv_mask(dm, 0) == std::vector<uint8_t>(e.mask.begin(), e.mask.begin() + 2048));
    // big: an 8.3 MB answer (the same first 300 KB) and a 4 MB question that can never fit. Before
    // the bounded tokenizer this took 21 s and 790 MB here (the whole text was tokenized first).
    write_bytes(dir / "big.jsonl", json{{"conversations", {"Summarize this.", big}}}.dump() + "\n" +
                                       json{{"conversations", {big.substr(0, big.find(' ', 4000000)), "ok"}}}.dump() + "\n");
    r = run_argv({"./prepare_lima", "-t", kTokenizer, "-i", dir / "big.jsonl", "-o", dir / "big.bin"}, 120);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CHECK_MESSAGE(r.seconds < 5.0, "took " << r.seconds << " s");
    const Dataset db = read_dataset(dir / "big.bin");
    CHECK(db.header.n_conversations == 1);
    CHECK(db.header.n_dropped == 1);
    CHECK(db.header.n_tokens == 2048);
    CHECK(conv_tokens(db, 0) == conv_tokens(dm, 0));
}

TEST_CASE("prepare_lima: input from a pipe (-i /dev/stdin) gives the same files as from the file") {
    TempDir dir;
    const LimaRun& ref = lima_run(2048);
    ProcResult r = run_argv({"./prepare_lima", "-t", kTokenizer, "-i", "/dev/stdin", "-o", dir / "lima.bin", "--val-out",
                             dir / "lima_val.bin"},
                            120, read_bytes(kLima));
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CHECK(read_bytes(dir / "lima.bin") == read_bytes(ref.train_path));
    CHECK(read_bytes(dir / "lima_val.bin") == read_bytes(ref.val_path));
    // a JSON array file, read whole from the pipe; its records keep their line numbers in messages
    const std::string arr = "\n[\n" + json{{"instruction", "a"}, {"output", "b"}}.dump() + ",\n" +
                            json{{"instruction", "c"}, {"output", "d"}}.dump() + "\n]\n";
    write_bytes(dir / "arr.json", arr);
    r = run_argv({"./prepare_lima", "-t", kTokenizer, "-i", dir / "arr.json", "-o", dir / "arr_file.bin"}, 60);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    r = run_argv({"./prepare_lima", "-t", kTokenizer, "-i", "/dev/stdin", "-o", dir / "arr_pipe.bin"}, 60, arr);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CHECK(read_bytes(dir / "arr_pipe.bin") == read_bytes(dir / "arr_file.bin"));
    CHECK(read_dataset(dir / "arr_pipe.bin").header.n_conversations == 2);
    r = run_argv({"./prepare_lima", "-t", kTokenizer, "-i", "/dev/stdin", "-o", dir / "bad.bin"}, 60,
                 "\n[\n" + json{{"instruction", "a"}, {"output", "b"}}.dump() + ",\n" + json{{"instruction", 1}}.dump() + "\n]\n");
    CHECK(r.exit_code == 1);
    CHECK_MESSAGE(r.err.find("/dev/stdin:4: ") != std::string::npos, r.err);
    CHECK(!path_exists(dir / "bad.bin"));
    // an empty pipe is an empty file, not a hang
    r = run_argv({"./prepare_lima", "-t", kTokenizer, "-i", "/dev/stdin", "-o", dir / "none.bin"}, 60);
    CHECK(r.exit_code == 1);
    CHECK_MESSAGE(r.err.find("/dev/stdin: no conversations") != std::string::npos, r.err);
}
