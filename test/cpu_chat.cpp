// test/cpu_chat.cpp — tests of chat.cpp: the Llama 2 chat template (llama2_chat_tokens) against
// Llama 2's own sentencepiece tokenizer, with and without a system prompt, and the byte-level
// tokenizer of the built-in demo (ByteTokenizer).
// Run from the repo root after `make NO_CUDA=1 test_cpu`:
//   ./test_cpu -tc="chat*"
// Needs ../shared/data/llama2/tokenizer.model.
#include <doctest/doctest.h>
#include <sentencepiece_processor.h>

#include <string>
#include <vector>

#include "chat.h"
#include "test/test_util.h"

// ==============================================================================================
// chat template and tokenizers

TEST_CASE("chat: Llama 2 chat tokens for a multi-turn conversation with a system prompt") {
    const std::string tok_path = shared_dir() + "/data/llama2/tokenizer.model";
    REQUIRE_MESSAGE(path_exists(tok_path), "needs " << tok_path);
    sentencepiece::SentencePieceProcessor sp;
    REQUIRE(sp.Load(tok_path).ok());
    auto sp_encode = [&](const std::string& s) {
        std::vector<int> ids;
        REQUIRE(sp.Encode(s, &ids).ok());
        return std::vector<int32_t>(ids.begin(), ids.end());
    };
    const std::vector<int32_t> ans1 = sp_encode("Hi! How can I help?"), ans2 = sp_encode("4");
    std::vector<ChatTurn> turns = {
        ChatTurn{"Hello there", ans1, true},
        ChatTurn{"What is 2+2?", ans2, true},
        ChatTurn{"Thanks", {}, false},
    };
    std::vector<int32_t> got = llama2_chat_tokens(turns, "Be brief.", sp_encode, sp.bos_id(), sp.eos_id());
    // Meta's format: system inside the first [INST]; training data's: prompt and answer encoded apart
    std::vector<int32_t> want;
    auto add = [&](const std::vector<int32_t>& v) { want.insert(want.end(), v.begin(), v.end()); };
    add({1});
    add(sp_encode("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHello there [/INST]"));
    add(ans1);
    add({2, 1});
    add(sp_encode("[INST] What is 2+2? [/INST]"));
    add(ans2);
    add({2, 1});
    add(sp_encode("[INST] Thanks [/INST]"));
    CHECK(got == want);
    CHECK(sp.bos_id() == 1);
    CHECK(sp.eos_id() == 2);
    // without a system prompt the first turn is plain
    std::vector<int32_t> plain = llama2_chat_tokens({ChatTurn{"Hello there", {}, false}}, "", sp_encode, 1, 2);
    std::vector<int32_t> plain_want = {1};
    for (int32_t t : sp_encode("[INST] Hello there [/INST]")) plain_want.push_back(t);
    CHECK(plain == plain_want);
    // and what the tokens say: the prompt decodes back to the text the training data uses
    std::string text;
    sp.Decode(std::vector<int>(plain.begin() + 1, plain.end()), &text);
    CHECK(text == "[INST] Hello there [/INST]");
}

TEST_CASE("chat: byte tokenizer maps byte b to 3 + b and back; specials decode to nothing") {
    const std::string s = "h\xC3\xA9llo\n\x01\xFF";
    std::vector<int32_t> ids = ByteTokenizer::encode(s);
    REQUIRE(ids.size() == s.size());
    for (size_t i = 0; i < s.size(); i++) CHECK(ids[i] == 3 + (int)(unsigned char)s[i]);
    CHECK(ids.back() == 258);
    CHECK(ByteTokenizer::VOCAB == 259);
    std::vector<int32_t> with_specials = {ByteTokenizer::BOS};
    with_specials.insert(with_specials.end(), ids.begin(), ids.end());
    with_specials.push_back(ByteTokenizer::EOS);
    with_specials.push_back(ByteTokenizer::UNK);
    CHECK(ByteTokenizer::decode(with_specials) == s);
}
