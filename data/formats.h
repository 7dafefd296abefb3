// data/formats.h — the conversation datasets ./prepare_lima reads, parsed into one shape: an
// optional system prompt and alternating user/assistant texts. Four layouts, one JSON record per
// line (jsonl), or one JSON array of records for the whole file (as Alpaca's alpaca_data.json and
// most ShareGPT dumps ship):
//   lima      {"conversations": ["user", "assistant", "user", ...]}              (GAIR/lima)
//   alpaca    {"instruction": "...", "input": "...", "output": "..."}           (tatsu-lab/alpaca)
//             the user turn is instruction, plus "\n\n" + input when input is non-empty
//   sharegpt  {"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", ...}]}
//             from: system (first only), human or user, gpt or assistant; an optional top-level
//             "system" string too
//   openai    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}]}
// The layout is detected from the first record or forced (--format). A conversation must
// alternate user, assistant, starting with the user and ending with an answer; a system message
// may only come first. Other keys are ignored. Every bad record is an InputError naming
// "file:line: what" (the record's first line in a JSON array file). Implemented in
// data/formats.cpp; tested in test/cpu_data.cpp; the formats are documented in data/README.md.
#pragma once

#include <string>
#include <vector>

enum DataFormat { FORMAT_AUTO, FORMAT_LIMA, FORMAT_ALPACA, FORMAT_SHAREGPT, FORMAT_OPENAI };
const char* data_format_name(DataFormat f);  // "lima", "alpaca", ...; "auto"

struct Conversation {
    std::string system;              // "" when the record has no system prompt
    std::vector<std::string> texts;  // user, assistant, user, assistant, ... (an even count, >= 2)
    int line;                        // 1-based line of the record in its file, for messages
};

// Reads every conversation of `path`, as a stream (a pipe works: jsonl line by line, a JSON
// array whole). `format` is FORMAT_AUTO or the layout to require; the layout
// used is returned in *used. Throws InputError (file:line) on the first bad record, and when the
// file holds no record at all.
std::vector<Conversation> read_conversations(const std::string& path, DataFormat format, DataFormat* used);
