// cli.h — command lines for every binary: one option table drives both the parser and --help, so
// the usage text cannot drift from what is parsed. Values arrive as strings and are converted by
// the checked helpers below. A bad command line prints one line and exits 2; bad input files are
// InputErrors (exit 1) handled by each main().
//
//   Args a;
//   Cli cli{"prog", "./prog -i IN [options]", "What it does.", {
//       {"-i", "--input", "PATH", "what to read", &a.input, nullptr, /*required=*/true},
//       {nullptr, "--fast", nullptr, "a switch: given, its value is 1", &a.fast}}};
//   if (!cli_parse(cli, argc, argv)) return 0;   // --help was printed
//   int n = (int)cli_int(cli.prog, "--n", a.n, 1, 100);
#pragma once

#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <new>
#include <string>
#include <vector>

#include "common.h"

struct CliOption {
    const char* short_name;            // "-i", or nullptr
    const char* long_name;             // "--input"
    const char* metavar;               // nullptr: a switch (value becomes "1")
    std::string help;                  // one line; "(default: X)" belongs here
    std::string* value = nullptr;      // where a single value goes
    std::vector<std::string>* all = nullptr;  // or: every occurrence, in order (repeatable option)
    bool required = false;             // cli_parse fails without it; --help says "(required)"
};

struct Cli {
    const char* prog;
    const char* usage;        // "./train -i lima.bin -m model.bin [options]"
    const char* description;  // a sentence or two
    std::vector<CliOption> options;
    const char* epilog = nullptr;  // printed after the options (e.g. what the exit statuses mean)
    bool non_empty = false;        // an empty value ("-o ''") is a usage error, not "not given"
    bool once = false;             // a single-value option given twice is a usage error, not last-wins
};

[[noreturn]] inline void cli_usage_error(const char* prog, const std::string& msg) {
    fprintf(stderr, "%s: %s (see --help)\n", prog, msg.c_str());
    exit(2);
}

inline void cli_print_help(const Cli& cli) {
    printf("usage: %s\n%s\n\noptions:\n", cli.usage, cli.description);
    for (const CliOption& o : cli.options) {
        std::string flags = std::string(o.short_name ? o.short_name : "  ") + (o.short_name ? ", " : "  ") + o.long_name;
        if (o.metavar) flags += std::string(" ") + o.metavar;
        printf("  %-28s %s%s\n", flags.c_str(), o.help.c_str(), o.required ? " (required)" : "");
    }
    if (cli.epilog) printf("\n%s\n", cli.epilog);
}

// "-i/--input PATH": how an option is named in messages
inline std::string cli_option_name(const CliOption& o) {
    std::string n = o.short_name ? std::string(o.short_name) + "/" + o.long_name : std::string(o.long_name);
    return o.metavar ? n + " " + o.metavar : n;
}

// Parses argv into the table. Returns false when --help/-h was given (help printed). Accepts
// "--name value", "--name=value" and "-n value"; positional arguments are errors.
inline bool cli_parse(const Cli& cli, int argc, char** argv) {
    std::vector<bool> seen(cli.options.size(), false);
    for (int i = 1; i < argc; i++) {
        std::string arg = argv[i], val;
        bool has_inline = false;
        if (arg == "-h" || arg == "--help") {
            cli_print_help(cli);
            return false;
        }
        if (arg.rfind("--", 0) == 0 && arg.find('=') != std::string::npos) {
            val = arg.substr(arg.find('=') + 1);
            arg = arg.substr(0, arg.find('='));
            has_inline = true;
        }
        size_t k = cli.options.size();
        for (size_t j = 0; j < cli.options.size(); j++) {
            const CliOption& c = cli.options[j];
            if (arg == c.long_name || (c.short_name && arg == c.short_name)) k = j;
        }
        if (k == cli.options.size())
            cli_usage_error(cli.prog, (arg.rfind("-", 0) == 0 ? "unknown option " : "unexpected argument ") + arg);
        const CliOption* o = &cli.options[k];
        if (!o->metavar) {
            if (has_inline) cli_usage_error(cli.prog, arg + " takes no value");
            val = "1";
        } else if (!has_inline) {
            if (i + 1 >= argc) cli_usage_error(cli.prog, std::string(o->long_name) + " needs a value (" + o->metavar + ")");
            val = argv[++i];
        }
        if (cli.non_empty && val.empty()) cli_usage_error(cli.prog, std::string(o->long_name) + " needs a non-empty value");
        if (cli.once && seen[k] && !o->all) cli_usage_error(cli.prog, std::string(o->long_name) + " given twice");
        seen[k] = true;
        if (o->all) o->all->push_back(val);
        else *o->value = val;
    }
    for (size_t j = 0; j < cli.options.size(); j++)
        if (cli.options[j].required && !seen[j]) cli_usage_error(cli.prog, "missing " + cli_option_name(cli.options[j]));
    return true;
}

// Checked conversions: the whole string must be a number in [lo, hi]. Integers are plain decimal
// digits with an optional '-': strtoll alone would also take " 5" and "+5" and saturate on
// overflow (ERANGE is checked too).
inline bool cli_is_decimal(const std::string& s, bool allow_minus) {
    size_t i = allow_minus && !s.empty() && s[0] == '-' ? 1 : 0;
    if (i == s.size()) return false;
    for (; i < s.size(); i++)
        if (s[i] < '0' || s[i] > '9') return false;
    return true;
}

inline long long cli_int(const char* prog, const char* flag, const std::string& s, long long lo, long long hi) {
    errno = 0;
    long long v = cli_is_decimal(s, true) ? strtoll(s.c_str(), nullptr, 10) : 0;
    if (!cli_is_decimal(s, true) || errno == ERANGE || v < lo || v > hi)
        cli_usage_error(prog, std::string(flag) + " expects an integer between " + std::to_string(lo) + " and " +
                                  std::to_string(hi) + ", got '" + s + "'");
    return v;
}

// The unsigned 64-bit counterpart, for values (seeds) that may use all 64 bits.
inline unsigned long long cli_uint64(const char* prog, const char* flag, const std::string& s,
                                     unsigned long long hi = ULLONG_MAX) {
    errno = 0;
    unsigned long long v = cli_is_decimal(s, false) ? strtoull(s.c_str(), nullptr, 10) : 0;
    if (!cli_is_decimal(s, false) || errno == ERANGE || v > hi)
        cli_usage_error(prog, std::string(flag) + " expects an integer between 0 and " + std::to_string(hi) + ", got '" +
                                  s + "'");
    return v;
}

inline double cli_float(const char* prog, const char* flag, const std::string& s, double lo, double hi) {
    char* end = nullptr;
    errno = 0;
    double v = strtod(s.c_str(), &end);
    if (s.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(v) || v < lo || v > hi) {
        char range[96];
        snprintf(range, sizeof(range), "a number in [%g, %g]", lo, hi);
        cli_usage_error(prog, std::string(flag) + " expects " + range + ", got '" + s + "'");
    }
    return v;
}

// One of `choices`, else a usage error listing them ("expects a, b or c").
inline std::string cli_choice(const char* prog, const char* flag, const std::string& s,
                              const std::vector<std::string>& choices) {
    std::string list;
    for (size_t i = 0; i < choices.size(); i++) {
        if (s == choices[i]) return s;
        list += (i == 0 ? "" : i + 1 == choices.size() ? " or " : ", ") + choices[i];
    }
    cli_usage_error(prog, std::string(flag) + " expects " + list + ", got '" + s + "'");
}
