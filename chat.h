// chat.h — the Llama 2 chat template in one place, for the three programs that put text into it:
// prepare_lima (the training data), the built-in demo's data (train_demo.cpp) and ./sample (the
// prompts, so that a model is asked in the very format it was trained on). Also the demo's
// byte-level tokenizer. Implemented in chat.cpp; tested in test/cpu_chat.cpp.
//
// A turn, with TEMPLATE_LLAMA2 (model.h):
//   prompt:  <s> encode("[INST] " + user + " [/INST]")     loss mask 0
//   answer:  encode(answer) </s>                           loss mask 1
// and Meta's system prompt inside the first turn's [INST]:
//   "[INST] <<SYS>>\n" + system + "\n<</SYS>>\n\n" + user + " [/INST]"
// TEMPLATE_PLAIN: the prompt is <s> encode(user), nothing added. Texts are not stripped (the
// training data keeps them as they are, so decoding a span gives back the source text).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "model.h"

using EncodeFn = std::function<std::vector<int32_t>(const std::string&)>;

// The text inside one turn's [INST] ... [/INST]; system is used when non-empty.
std::string llama2_inst_text(const std::string& user, const std::string& system);
// <s> + the prompt of one turn in `chat_template` (ChatTemplate); system only with TEMPLATE_LLAMA2.
std::vector<int32_t> chat_prompt_tokens(int32_t chat_template, const std::string& user, const std::string& system,
                                        const EncodeFn& encode, int32_t bos_id);
// encode(answer) + </s>: what a training turn predicts
std::vector<int32_t> chat_answer_tokens(const std::string& answer, const EncodeFn& encode, int32_t eos_id);

// The same template as a Jinja chat template, for the files other programs read (the merged
// checkpoint's tokenizer_config.json, for transformers' apply_chat_template, and the GGUF's
// tokenizer.chat_template): it renders a conversation to exactly the text llama2_chat_tokens
// encodes, turn by turn: bos_token + "[INST] " + user + " [/INST]" (the system prompt inside the
// first one, as above), then " " + answer + eos_token (the " " is the dummy prefix sentencepiece
// adds when the answer is encoded on its own). It is Meta's published Llama-2-chat template
// (meta-llama/Llama-2-7b-chat-hf) with two differences, both to match what the model was trained
// on: texts are not strip()ped, and no space precedes </s>.
const char* llama2_chat_template_jinja();

struct ChatTurn {
    std::string user;
    std::vector<int32_t> answer;  // tokens of the answer, without </s>
    bool answered = false;        // false: the open turn the model is to answer (the last one)
};
// The token sequence of a conversation in TEMPLATE_LLAMA2: every turn as above; the system prompt
// goes into the first turn; an unanswered turn ends right after its [/INST] (the model answers
// from there).
std::vector<int32_t> llama2_chat_tokens(const std::vector<ChatTurn>& turns, const std::string& system,
                                        const EncodeFn& encode, int32_t bos_id, int32_t eos_id);

// ----------------------------------------------------------------------------------------------
// the built-in demo's tokenizer: one token per byte, no download needed.
// ids 0 = unk/pad, 1 = <s>, 2 = </s>, byte b = 3 + b; vocabulary 259.

struct ByteTokenizer {
    static constexpr int32_t UNK = 0, BOS = 1, EOS = 2, OFFSET = 3, VOCAB = 256 + 3;
    static std::vector<int32_t> encode(const std::string& text);
    // Bytes of the byte tokens; special ids give nothing.
    static std::string decode(const int32_t* ids, size_t n);
    static std::string decode(const std::vector<int32_t>& ids) { return decode(ids.data(), ids.size()); }
};
