// tools/convert_adapter.cpp — converts LoRA adapters between the project's adapter file
// (model.h: AdapterHeader + fp16 tensors) and PEFT's format (adapter_config.json +
// adapter_model.safetensors, tensors base_model.model.model.layers.N.<module>.lora_{A,B}.weight,
// A (r, in), B (out, r)). The direction follows -i: a directory is read as PEFT, a file as ours.
//
//   ./convert_adapter -i out/adapter.bin -o peft_dir/ [--dtype f16|f32] [--base-model meta-llama/Llama-2-7b-hf]
//   ./convert_adapter -i peft_dir/ -o adapter.bin -m llama2-7b.bin      # base config from a model file
//   ./convert_adapter -i peft_dir/ -o adapter.bin --hf Llama-2-7b-hf/   # ... or from an HF config.json
//   ./convert_adapter --help
//
// PEFT's files do not say which model they adapt in a checkable way, so PEFT -> adapter.bin needs
// the base config; every tensor's shape is checked against it. adapter.bin -> PEFT writes fp16 by
// default: the adapter file holds fp16, so that is exact (f32 is exact too, just twice the size).
// Bad input: one line on stderr, exit 1, no output written; bad flags: exit 2.
#include <sys/stat.h>

#include <string>
#include <vector>

#include "cli.h"
#include "hf.h"
#include "model.h"

static const char* PROG = "convert_adapter";

// ----------------------------------------------------------------------------------------------
// command line (cli.h: one table drives both the parser and --help)

struct Args {
    std::string input, output, model, hf, dtype, base_model;
};

static Cli make_cli(Args& a) {
    Cli cli{PROG,
            "./convert_adapter -i adapter.bin -o peft_dir [--dtype f16|f32] [--base-model NAME]\n"
            "       ./convert_adapter -i peft_dir -o adapter.bin (-m model.bin | --hf HF_DIR)",
            "Convert a LoRA adapter between this project's adapter file and PEFT's format.",
            {
                {"-i", "--input", "PATH", "adapter to read: a PEFT directory, or an adapter file made by train/convert_adapter", &a.input, nullptr, /*required=*/true},
                {"-o", "--output", "PATH", "what to write: an adapter file when -i is a PEFT directory, else a PEFT directory", &a.output, nullptr, /*required=*/true},
                {"-m", "--model", "FILE", "PEFT -> adapter file: the base model file (its config checks every tensor's shape)", &a.model},
                {nullptr, "--hf", "DIR", "PEFT -> adapter file: the base model's HF checkpoint directory (or its config.json), instead of -m", &a.hf},
                {"-d", "--dtype", "TYPE", "adapter file -> PEFT: tensor type, f16 (default, exact) or f32", &a.dtype},
                {nullptr, "--base-model", "NAME", "adapter file -> PEFT: base_model_name_or_path to record in adapter_config.json", &a.base_model},
                {"-h", "--help", nullptr, "show this help and exit", nullptr},
            }};
    cli.non_empty = true;
    return cli;
}

// ----------------------------------------------------------------------------------------------

// The base model's config (and tokenizer hash, when it comes from a model file).
static Config base_config(const Args& args, uint8_t tokenizer_sha256[32], std::string& from) {
    memset(tokenizer_sha256, 0, 32);
    if (!args.model.empty()) {
        InFile in(args.model);
        ModelHeader h = read_model_header(in);
        memcpy(tokenizer_sha256, h.tokenizer_sha256, 32);
        from = args.model;
        return h.config;
    }
    from = is_directory(args.hf) ? args.hf + "/config.json" : args.hf;
    int32_t dtype;
    return parse_hf_config(from, &dtype);
}

static void summary(const char* verb, const std::string& path, const Adapter& a) {
    printf("%s: %s %s: LoRA r=%d alpha=%g dropout=%g targets=%s, %zu parameters, base %s\n", PROG, verb, path.c_str(),
           a.lora.rank, a.lora.alpha, a.lora.dropout, lora_targets_string(a.lora.target_mask).c_str(), a.params.size(),
           config_summary(a.base).c_str());
}

static void run(const Args& args) {
    if (is_directory(args.input)) {
        // PEFT directory -> adapter file
        if (args.model.empty() && args.hf.empty())
            cli_usage_error(PROG, "reading a PEFT directory needs the base model: -m model.bin or --hf HF_DIR");
        if (!args.dtype.empty() || !args.base_model.empty())
            cli_usage_error(PROG, "--dtype and --base-model apply when writing PEFT (-i an adapter file)");
        if (is_directory(args.output)) fail("%s: is a directory; -o names the adapter file to write", args.output.c_str());
        uint8_t sha[32];
        std::string from;
        Config base = base_config(args, sha, from);
        Adapter a = read_peft_adapter(args.input, base);
        memcpy(a.tokenizer_sha256, sha, 32);
        write_adapter(args.output, a);
        summary("wrote", args.output, a);
    } else {
        // adapter file -> PEFT directory
        int32_t dtype = DT_F16;
        if (!args.dtype.empty()) {
            const std::string& d = args.dtype;
            dtype = (d == "f16" || d == "fp16") ? DT_F16 : (d == "f32" || d == "fp32") ? DT_F32 : -1;
            if (dtype < 0) cli_usage_error(PROG, "--dtype must be f16 or f32, not '" + d + "'");
        }
        Adapter a = read_adapter(args.input);
        // a base model given here is a check, not a source: the adapter file carries its own config
        if (!args.model.empty() || !args.hf.empty()) {
            uint8_t sha[32];
            std::string from;
            Config base = base_config(args, sha, from);
            check_adapter_matches_model(a, args.input.c_str(), base, from.c_str());
        }
        write_peft_adapter(args.output, a, dtype, args.base_model);
        summary("wrote PEFT adapter", args.output, a);
    }
}

int main(int argc, char** argv) {
    Args args;
    if (!cli_parse(make_cli(args), argc, argv)) return 0;
    if (!args.model.empty() && !args.hf.empty()) cli_usage_error(PROG, "give the base model once: -m or --hf, not both");
    return cli_run(PROG, [&] { run(args); });
}
