// data/formats.cpp — reading LIMA, Alpaca, ShareGPT and OpenAI-messages datasets into
// Conversations (see data/formats.h). JSON through nlohmann-json; every malformed record becomes
// one InputError "file:line: problem".
#include "data/formats.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <cstdarg>
#include <nlohmann/json.hpp>

#include "common.h"

using json = nlohmann::json;

const char* data_format_name(DataFormat f) {
    switch (f) {
        case FORMAT_LIMA: return "lima";
        case FORMAT_ALPACA: return "alpaca";
        case FORMAT_SHAREGPT: return "sharegpt";
        case FORMAT_OPENAI: return "openai";
        case FORMAT_AUTO: break;
    }
    return "auto";
}

namespace {

// Where a record is, for messages: "path:line: ..."
struct Where {
    const std::string& path;
    int line;
    [[noreturn]] void fail(const char* fmt, ...) const __attribute__((format(printf, 2, 3)));
};
void Where::fail(const char* fmt, ...) const {
    char msg[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    ::fail("%s:%d: %s", path.c_str(), line, msg);
}

// ----------------------------------------------------------------------------------------------
// records: one per non-blank line, or the elements of one top-level JSON array (read_conversations
// below tells them apart and reads the file)

struct Record {
    std::string text;
    int line;
};

// The top-level elements of a JSON array file, each with the line it starts on. Only finds where
// each element ends (brackets outside strings); parsing them is json::parse's job.
std::vector<Record> array_records(const std::string& path, const std::string& text, size_t open) {
    std::vector<Record> out;
    int line = 1 + (int)std::count(text.begin(), text.begin() + (long)open, '\n');
    size_t i = open + 1, counted = open;
    auto skip_space = [&] {
        while (i < text.size() && (text[i] == ' ' || text[i] == '\t' || text[i] == '\r' || text[i] == '\n')) i++;
    };
    skip_space();
    if (i < text.size() && text[i] == ']') {
        i++;
    } else {
        while (true) {
            skip_space();
            const size_t start = i;
            line += (int)std::count(text.begin() + (long)counted, text.begin() + (long)start, '\n');
            counted = start;
            int depth = 0;
            bool in_string = false;
            for (; i < text.size(); i++) {
                const char ch = text[i];
                if (in_string) {
                    if (ch == '\\') i++;
                    else if (ch == '"') in_string = false;
                } else if (ch == '"') {
                    in_string = true;
                } else if (ch == '{' || ch == '[') {
                    depth++;
                } else if (ch == '}' || ch == ']') {
                    if (depth == 0) break;
                    depth--;
                } else if (ch == ',' && depth == 0) {
                    break;
                }
            }
            if (i >= text.size()) ::fail("%s:%d: not valid JSON (the top-level array is never closed)", path.c_str(), line);
            out.push_back({text.substr(start, i - start), line});
            if (text[i++] == ']') break;
        }
    }
    skip_space();
    if (i < text.size()) {
        line += (int)std::count(text.begin() + (long)counted, text.begin() + (long)i, '\n');
        ::fail("%s:%d: not valid JSON (text after the top-level array)", path.c_str(), line);
    }
    return out;
}

json parse_record(const Record& r, const Where& w) {
    try {
        return json::parse(r.text);
    } catch (const json::parse_error& e) {
        // e.what() is "[json.exception.parse_error.101] parse error at line 1, column 7: ..."; keep the reason
        const std::string why = e.what();
        const size_t c = why.find("column");
        w.fail("not valid JSON (%s)", c == std::string::npos ? why.c_str() : why.substr(c).c_str());
    }
}

// ----------------------------------------------------------------------------------------------
// the layouts

const char* layout_of(DataFormat f) {  // what a record looks like, for messages
    switch (f) {
        case FORMAT_LIMA: return "{\"conversations\": [...]}";
        case FORMAT_ALPACA: return "{\"instruction\": ..., \"input\": ..., \"output\": ...}";
        case FORMAT_SHAREGPT: return "{\"conversations\": [{\"from\": ..., \"value\": ...}, ...]}";
        case FORMAT_OPENAI: return "{\"messages\": [{\"role\": ..., \"content\": ...}, ...]}";
        case FORMAT_AUTO: break;
    }
    return "one conversation per record";
}

DataFormat detect(const json& j, const Where& w) {
    if (j.contains("conversations")) {
        const json& c = j["conversations"];
        return c.is_array() && !c.empty() && c[0].is_object() ? FORMAT_SHAREGPT : FORMAT_LIMA;
    }
    if (j.contains("messages")) return FORMAT_OPENAI;
    if (j.contains("instruction")) return FORMAT_ALPACA;
    std::string keys;
    for (auto it = j.begin(); it != j.end(); ++it) keys += (keys.empty() ? "" : ", ") + it.key();
    w.fail("cannot tell the data format from the first record (keys: %s): expected \"conversations\" (LIMA, "
           "ShareGPT), \"messages\" (OpenAI) or \"instruction\" (Alpaca); or pass --format",
           keys.empty() ? "none" : keys.c_str());
}

// The array under `key`, non-empty, or fail saying what the layout expects.
const json& message_list(const json& j, const char* key, DataFormat f, const char* holds, const Where& w) {
    auto it = j.find(key);
    if (it == j.end()) w.fail("no \"%s\" field (not %s's jsonl layout)", key, f == FORMAT_OPENAI ? "OpenAI" : f == FORMAT_LIMA ? "LIMA" : "ShareGPT");
    if (!it->is_array()) w.fail("\"%s\" is a %s, expected an array of %s", key, it->type_name(), holds);
    if (it->empty()) w.fail("\"%s\" is empty", key);
    return *it;
}

Conversation lima_record(const json& j, const Where& w) {
    const json& list = message_list(j, "conversations", FORMAT_LIMA, "strings", w);
    Conversation c;
    for (size_t k = 0; k < list.size(); k++) {
        if (!list[k].is_string()) w.fail("conversations[%zu] is a %s, expected a string", k, list[k].type_name());
        c.texts.push_back(list[k].get<std::string>());
    }
    if (c.texts.size() % 2 != 0)
        w.fail("%zu entries in \"conversations\": the last user turn has no assistant answer", c.texts.size());
    return c;
}

// A string field: `required` ones must be there; an optional one may be absent or null ("").
std::string string_field(const json& obj, const char* key, bool required, const std::string& where, const Where& w) {
    auto it = obj.find(key);
    if (it == obj.end() || (!required && it->is_null())) {
        if (required) w.fail("%sno \"%s\" field", where.c_str(), key);
        return "";
    }
    if (!it->is_string()) w.fail("%s\"%s\" is a %s, expected a string", where.c_str(), key, it->type_name());
    return it->get<std::string>();
}

Conversation alpaca_record(const json& j, const Where& w) {
    if (!j.contains("instruction")) w.fail("no \"instruction\" field (not Alpaca's layout %s)", layout_of(FORMAT_ALPACA));
    const std::string instruction = string_field(j, "instruction", true, "", w);
    const std::string input = string_field(j, "input", false, "", w);
    const std::string output = string_field(j, "output", true, "", w);
    Conversation c;
    c.texts = {input.empty() ? instruction : instruction + "\n\n" + input, output};
    return c;
}

enum Role { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT, ROLE_UNKNOWN };
struct Message {
    Role role;
    std::string role_name;  // as the record spells it
    std::string text;
};

// The messages of a ShareGPT or OpenAI record, checked into a Conversation: an optional system
// message first (or a top-level `system`, not both), then user, assistant, user, ..., assistant.
Conversation from_messages(const std::vector<Message>& msgs, const std::string& top_system, const char* list,
                           const Where& w) {
    Conversation c;
    c.system = top_system;
    size_t k = 0;
    if (msgs[0].role == ROLE_SYSTEM) {
        if (!top_system.empty()) w.fail("two system prompts (a top-level \"system\" and %s[0])", list);
        c.system = msgs[0].text;
        k = 1;
    }
    if (k == msgs.size()) w.fail("\"%s\" holds only a system prompt: no user/assistant turn", list);
    for (size_t i = k; i < msgs.size(); i++) {
        const Role want = (i - k) % 2 == 0 ? ROLE_USER : ROLE_ASSISTANT;
        if (msgs[i].role == ROLE_SYSTEM) w.fail("%s[%zu] is a system message; only the first message may be one", list, i);
        if (msgs[i].role != want)
            w.fail("%s[%zu] is from \"%s\", but %s turn was expected (turns alternate user, assistant, starting with the user)",
                   list, i, msgs[i].role_name.c_str(), want == ROLE_USER ? "a user" : "an assistant");
        c.texts.push_back(msgs[i].text);
    }
    if (c.texts.size() % 2 != 0)
        w.fail("the last user turn (%s[%zu]) has no assistant answer", list, msgs.size() - 1);
    return c;
}

// Both message layouts: list `list` of objects {role_key, text_key}; roles[] maps names to Roles.
struct MessageLayout {
    DataFormat format;
    const char *list, *role_key, *text_key, *role_help;
    std::vector<std::pair<std::string, Role>> roles;
};

Conversation messages_record(const json& j, const MessageLayout& m, const Where& w) {
    const std::string one = std::string("{\"") + m.role_key + "\": ..., \"" + m.text_key + "\": ...}";
    const json& list = message_list(j, m.list, m.format, (one + " objects").c_str(), w);
    std::vector<Message> msgs;
    for (size_t k = 0; k < list.size(); k++) {
        const std::string at = std::string(m.list) + "[" + std::to_string(k) + "]";
        if (!list[k].is_object()) w.fail("%s is a %s, expected an object %s", at.c_str(), list[k].type_name(), one.c_str());
        Message msg;
        msg.role_name = string_field(list[k], m.role_key, true, at + ": ", w);
        msg.role = ROLE_UNKNOWN;
        for (const auto& r : m.roles)
            if (msg.role_name == r.first) msg.role = r.second;
        if (msg.role == ROLE_UNKNOWN) w.fail("%s: unknown role \"%s\" (expected %s)", at.c_str(), msg.role_name.c_str(), m.role_help);
        msg.text = string_field(list[k], m.text_key, true, at + ": ", w);
        // OpenAI's fine-tuning format: weight 0 marks an answer not to train on; we train on every one
        if (list[k].contains("weight") && !(list[k]["weight"].is_number() && list[k]["weight"].get<double>() == 1.0))
            w.fail("%s: \"weight\" %s is not supported (every assistant answer is trained on)", at.c_str(),
                   list[k]["weight"].dump().c_str());
        msgs.push_back(msg);
    }
    return from_messages(msgs, string_field(j, "system", false, "", w), m.list, w);
}

Conversation parse_conversation(const json& j, DataFormat f, const Where& w) {
    if (!j.is_object()) w.fail("expected a JSON object %s, got %s", layout_of(f), j.type_name());
    static const MessageLayout sharegpt = {FORMAT_SHAREGPT, "conversations", "from", "value",
                                           "system, human or user, gpt or assistant",
                                           {{"system", ROLE_SYSTEM}, {"human", ROLE_USER}, {"user", ROLE_USER},
                                            {"gpt", ROLE_ASSISTANT}, {"assistant", ROLE_ASSISTANT}}};
    static const MessageLayout openai = {FORMAT_OPENAI, "messages", "role", "content", "system, user or assistant",
                                         {{"system", ROLE_SYSTEM}, {"user", ROLE_USER}, {"assistant", ROLE_ASSISTANT}}};
    Conversation c;
    switch (f) {
        case FORMAT_LIMA: c = lima_record(j, w); break;
        case FORMAT_ALPACA: c = alpaca_record(j, w); break;
        case FORMAT_SHAREGPT: c = messages_record(j, sharegpt, w); break;
        case FORMAT_OPENAI: c = messages_record(j, openai, w); break;
        case FORMAT_AUTO: ASSERT(false, "a format is chosen before parsing");
    }
    c.line = w.line;
    return c;
}

}  // namespace

std::vector<Conversation> read_conversations(const std::string& path, DataFormat format, DataFormat* used) {
    // Read as a stream, never by size or seek, so that a pipe (-i /dev/stdin) works: jsonl one line
    // at a time (each line parsed and let go before the next is read); a JSON array file is read
    // whole, as its records are only told apart by their brackets.
    struct stat st;
    if (stat(path.c_str(), &st) != 0) ::fail("%s: cannot open (%s)", path.c_str(), strerror(errno));
    if (S_ISDIR(st.st_mode)) ::fail("%s: is a directory, expected a file", path.c_str());
    FILE* f = fopen(path.c_str(), "rb");
    if (!f) ::fail("%s: cannot open (%s)", path.c_str(), strerror(errno));
    std::unique_ptr<FILE, int (*)(FILE*)> closer(f, fclose);
    struct LineBuffer {  // getline's buffer, grown by getline, freed here
        char* p = nullptr;
        size_t cap = 0;
        ~LineBuffer() { free(p); }
    } lb;
    auto next_line = [&](std::string* line, bool* had_newline) {  // false at the end of the stream
        errno = 0;
        const ssize_t n = getline(&lb.p, &lb.cap, f);
        const char* buf = lb.p;
        if (n < 0) {
            if (ferror(f)) ::fail("%s: read error (%s)", path.c_str(), strerror(errno));
            return false;
        }
        *had_newline = n > 0 && buf[n - 1] == '\n';
        line->assign(buf, (size_t)n - (*had_newline ? 1 : 0));
        return true;
    };

    std::vector<Conversation> convs;
    auto add = [&](const Record& r) {
        const Where w{path, r.line};
        const json j = parse_record(r, w);
        if (format == FORMAT_AUTO) {
            if (!j.is_object()) w.fail("expected a JSON object (one conversation per record), got %s", j.type_name());
            format = detect(j, w);
        }
        convs.push_back(parse_conversation(j, format, w));
    };
    std::string line;
    bool had_newline = false;
    int lineno = 0;
    bool first = true;  // no record seen yet: the first non-blank character decides jsonl or array
    while (next_line(&line, &had_newline)) {
        lineno++;
        const size_t k = line.find_first_not_of(" \t\r");
        if (k == std::string::npos) continue;  // blank lines are skipped
        if (first && line[k] == '[') {  // one JSON array: the rest of the stream, whole
            std::string text(lineno - 1, '\n');
            const size_t open = text.size() + k;
            text += line;
            if (had_newline) text += '\n';
            char chunk[1 << 16];
            size_t n;
            while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) text.append(chunk, n);
            if (ferror(f)) ::fail("%s: read error (%s)", path.c_str(), strerror(errno));
            for (const Record& r : array_records(path, text, open)) add(r);
            break;
        }
        first = false;
        add({line, lineno});
    }
    if (convs.empty()) ::fail("%s: no conversations in the file", path.c_str());
    *used = format;
    return convs;
}
