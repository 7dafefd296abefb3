// cli.h — command lines for every binary: one option table drives both the parser and --help, so
// the usage text cannot drift from what is parsed. Values arrive as strings and are converted by
// the checked helpers below. A bad command line prints one line and exits 2; bad input files are
// InputErrors (exit 1) handled by each main().
#pragma once

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

struct CliOption {
    const char* short_name;            // "-i", or nullptr
    const char* long_name;             // "--input"
    const char* metavar;               // nullptr: a switch (value becomes "1")
    const char* help;                  // one line; "(default: X)" belongs here
    std::string* value = nullptr;      // where a single value goes
    std::vector<std::string>* all = nullptr;  // or: every occurrence, in order (repeatable option)
};

struct Cli {
    const char* prog;
    const char* usage;        // "./train -i lima.bin -m model.bin [options]"
    const char* description;  // a sentence or two
    std::vector<CliOption> options;
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
        printf("  %-28s %s\n", flags.c_str(), o.help);
    }
}

// Parses argv into the table. Returns false when --help/-h was given (help printed). Accepts
// "--name value", "--name=value" and "-n value"; positional arguments are errors.
inline bool cli_parse(const Cli& cli, int argc, char** argv) {
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
        const CliOption* o = nullptr;
        for (const CliOption& c : cli.options)
            if (arg == c.long_name || (c.short_name && arg == c.short_name)) o = &c;
        if (!o) cli_usage_error(cli.prog, (arg.rfind("-", 0) == 0 ? "unknown option " : "unexpected argument ") + arg);
        if (!o->metavar) {
            if (has_inline) cli_usage_error(cli.prog, arg + " takes no value");
            val = "1";
        } else if (!has_inline) {
            if (i + 1 >= argc) cli_usage_error(cli.prog, arg + " needs a value (" + o->metavar + ")");
            val = argv[++i];
        }
        if (o->all) o->all->push_back(val);
        else *o->value = val;
    }
    return true;
}

// Checked conversions: the whole string must be a number in [lo, hi].
inline long long cli_int(const char* prog, const char* flag, const std::string& s, long long lo, long long hi) {
    char* end = nullptr;
    errno = 0;
    long long v = strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || errno == ERANGE || v < lo || v > hi)
        cli_usage_error(prog, std::string(flag) + " expects an integer in [" + std::to_string(lo) + ", " +
                                  std::to_string(hi) + "], got '" + s + "'");
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

inline std::string cli_choice(const char* prog, const char* flag, const std::string& s,
                              const std::vector<std::string>& choices) {
    std::string list;
    for (const std::string& c : choices) {
        if (s == c) return s;
        list += (list.empty() ? "" : "|") + c;
    }
    cli_usage_error(prog, std::string(flag) + " expects " + list + ", got '" + s + "'");
}
