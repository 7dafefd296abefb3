// chat.cpp — the Llama 2 chat template and the demo's byte tokenizer (see chat.h).
#include "chat.h"

std::string llama2_inst_text(const std::string& user, const std::string& system) {
    if (system.empty()) return "[INST] " + user + " [/INST]";
    return "[INST] <<SYS>>\n" + system + "\n<</SYS>>\n\n" + user + " [/INST]";
}

std::vector<int32_t> chat_prompt_tokens(int32_t chat_template, const std::string& user, const std::string& system,
                                        const EncodeFn& encode, int32_t bos_id) {
    std::vector<int32_t> ids = {bos_id};
    const std::vector<int32_t> p = encode(chat_template == TEMPLATE_LLAMA2 ? llama2_inst_text(user, system) : user);
    ids.insert(ids.end(), p.begin(), p.end());
    return ids;
}

std::vector<int32_t> chat_answer_tokens(const std::string& answer, const EncodeFn& encode, int32_t eos_id) {
    std::vector<int32_t> ids = encode(answer);
    ids.push_back(eos_id);
    return ids;
}

const char* llama2_chat_template_jinja() {
    return "{% if messages[0]['role'] == 'system' %}"
           "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
           "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
           "{% for message in loop_messages %}"
           "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
           "{% endif %}"
           "{% if loop.index0 == 0 and system_message != false %}"
           "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
           "{% else %}{% set content = message['content'] %}{% endif %}"
           "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content + ' [/INST]' }}"
           "{% elif message['role'] == 'assistant' %}{{ ' ' + content + eos_token }}{% endif %}"
           "{% endfor %}";
}

std::vector<int32_t> llama2_chat_tokens(const std::vector<ChatTurn>& turns, const std::string& system,
                                        const EncodeFn& encode, int32_t bos_id, int32_t eos_id) {
    std::vector<int32_t> ids;
    for (size_t i = 0; i < turns.size(); i++) {
        const ChatTurn& t = turns[i];
        ASSERT(t.answered || i + 1 == turns.size(), "only the last turn may be unanswered");
        const std::vector<int32_t> p =
            chat_prompt_tokens(TEMPLATE_LLAMA2, t.user, i == 0 ? system : std::string(), encode, bos_id);
        ids.insert(ids.end(), p.begin(), p.end());
        if (!t.answered) break;
        ids.insert(ids.end(), t.answer.begin(), t.answer.end());
        ids.push_back(eos_id);
    }
    return ids;
}

// ----------------------------------------------------------------------------------------------
// byte tokenizer

std::vector<int32_t> ByteTokenizer::encode(const std::string& text) {
    std::vector<int32_t> ids(text.size());
    for (size_t i = 0; i < text.size(); i++) ids[i] = OFFSET + (int32_t)(unsigned char)text[i];
    return ids;
}

std::string ByteTokenizer::decode(const int32_t* ids, size_t n) {
    std::string s;
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= OFFSET && ids[i] < VOCAB) s += (char)(unsigned char)(ids[i] - OFFSET);
    return s;
}
