// tools/export_hf.cpp — converts a Hugging Face Llama checkpoint (config.json + safetensors, one
// file or shards) into the project's model file (model.h: ModelHeader, then every WeightId in
// order, each stacked over layers, HF weight layout).
//
//   ./export_hf -i Llama-2-7b-hf -o llama2-7b.bin                 # lossless: keeps the checkpoint's fp16/bf16
//   ./export_hf -i Llama-2-7b-hf -o llama2-7b.bin --dtype bf16    # convert (round to nearest even)
//   ./export_hf -i Llama-2-7b-hf -o llama2-7b-nf4.bin --dtype nf4 # pre-quantized for QLoRA: 3.9 GB, not 13.5
//   ./export_hf --help
//
// --dtype nf4 quantizes the seven linear weights of every layer (q, k, v, o, gate, up, down) to NF4
// with double quantization, bit for bit as bitsandbytes does when transformers loads the model with
// load_in_4bit (quant.h), so the trainer copies them to the GPU as they are. Embeddings, norms and
// the LM head stay 16-bit, as they do in bitsandbytes + transformers.
//
// The whole checkpoint is validated (every name, shape and dtype against config.json) before the
// first byte is written, then streamed one tensor of one layer at a time: Llama-2-70b-hf is 138 GB,
// so it is never held in memory. If the directory holds tokenizer.model (or -t names one) it must
// agree with config.json (vocab size, bos/eos) and its sha256 goes into the header, so a data file
// made with another tokenizer is refused later. The output appears only when complete (AtomicFile).
// Bad input: one line on stderr, exit 1, no output file; bad flags: exit 2.
#include <sentencepiece_processor.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "cli.h"
#include "hf.h"
#include "model.h"
#include "quant.h"

static const char* PROG = "export_hf";

// ----------------------------------------------------------------------------------------------
// command line (cli.h: one table drives both the parser and --help)

struct Args {
    std::string input, output, dtype, tokenizer;
};

static Cli make_cli(Args& a) {
    Cli cli{PROG,
            "./export_hf -i HF_DIR -o model.bin [--dtype bf16|fp16|f32|nf4] [-t tokenizer.model]",
            "Convert a Hugging Face Llama checkpoint into the model file read by train and sample.",
            {
                {"-i", "--input", "HF_DIR", "Hugging Face checkpoint directory: config.json + model.safetensors or model.safetensors.index.json and its shards", &a.input, nullptr, /*required=*/true},
                {"-o", "--output", "FILE", "model file to write; replaced only when the export succeeds", &a.output, nullptr, /*required=*/true},
                {"-d", "--dtype", "TYPE", "stored weight type: bf16, fp16, f32, or nf4 (linear layers pre-quantized to NF4 with double quantization, ~4.13 bits per parameter, the rest 16-bit as by default) (default: the checkpoint's own fp16/bf16, so the export is exact; bf16 for an fp32 or undeclared checkpoint)", &a.dtype},
                {"-t", "--tokenizer", "FILE", "sentencepiece tokenizer.model to check against config.json and record (default: HF_DIR/tokenizer.model if present)", &a.tokenizer},
                {"-h", "--help", nullptr, "show this help and exit", nullptr},
            }};
    cli.non_empty = true;
    return cli;
}

// ----------------------------------------------------------------------------------------------

// Checks the tokenizer against config.json and puts its sha256 in `sha` (for the header).
static void check_tokenizer(const std::string& path, const Config& c, const std::string& config_path, uint8_t sha[32]) {
    sha256_file(path, sha);  // also gives "cannot open" for a missing file
    sentencepiece::SentencePieceProcessor sp;
    auto status = sp.Load(path);
    // (sentencepiece's own message is a source location and a protobuf call: not for users)
    if (!status.ok()) fail("%s: not a sentencepiece tokenizer model (it does not parse as one)", path.c_str());
    if (sp.GetPieceSize() != c.vocab_size)
        fail("%s: tokenizer has %d pieces but %s has vocab_size %d (tokenizer and checkpoint do not belong together)",
             path.c_str(), sp.GetPieceSize(), config_path.c_str(), c.vocab_size);
    if (sp.bos_id() != c.bos_id || sp.eos_id() != c.eos_id)
        fail("%s: tokenizer bos/eos ids are %d/%d but %s says %d/%d", path.c_str(), sp.bos_id(), sp.eos_id(),
             config_path.c_str(), c.bos_id, c.eos_id);
}

static bool g_progress_on_tty = false;  // a progress line is on the terminal, not yet ended
static void clear_progress() {
    if (g_progress_on_tty) fprintf(stderr, "\r\033[K");
    g_progress_on_tty = false;
}

static const char* weight_kind(int id) {
    static const char* names[NUM_WEIGHTS] = {"embed_tokens", "input_layernorm", "q_proj", "k_proj", "v_proj", "o_proj",
                                             "post_attention_layernorm", "gate_proj", "up_proj", "down_proj", "norm",
                                             "lm_head"};
    return names[id];
}

static void run(const Args& args) {
    using clock = std::chrono::steady_clock;
    const auto t0 = clock::now();
    auto elapsed = [&] { return std::chrono::duration<double>(clock::now() - t0).count(); };

    int32_t out_dtype = -1;  // of every tensor, or of the non-linear ones with --dtype nf4
    const bool nf4 = args.dtype == "nf4";
    if (!args.dtype.empty() && !nf4) {
        const std::string& d = args.dtype;
        out_dtype = d == "bf16" ? DT_BF16 : (d == "fp16" || d == "f16") ? DT_F16 : (d == "f32" || d == "fp32") ? DT_F32 : -1;
        if (out_dtype < 0) cli_usage_error(PROG, "--dtype must be bf16, fp16, f32 or nf4, not '" + d + "'");
    }
    struct stat st;
    if (stat(args.output.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
        fail("%s: is a directory; -o names the model file to write", args.output.c_str());

    // everything is validated before the output file is created
    HfCheckpoint ck(args.input);
    const Config& c = ck.config;
    // (with nf4 the linears are quantized from these 16-bit values too: see below)
    if (out_dtype < 0) out_dtype = (ck.dtype == DT_F16 || ck.dtype == DT_BF16) ? ck.dtype : DT_BF16;

    ModelHeader h = make_model_header(c, out_dtype);
    h.linear_format = nf4 ? LINEAR_NF4 : LINEAR_DENSE;
    std::string tok = !args.tokenizer.empty() ? args.tokenizer
                      : is_regular_file(args.input + "/tokenizer.model") ? args.input + "/tokenizer.model" : "";
    if (!tok.empty()) check_tokenizer(tok, c, args.input + "/config.json", h.tokenizer_sha256);
    IoPaths io;  // -o must not be (or link to) a file of the checkpoint or the tokenizer
    for (const std::string& f : ck.files()) io.input("checkpoint file", f);
    if (!tok.empty()) io.input("tokenizer", tok);
    io.output_file("-o", args.output);
    io.check();

    // one layer's slice of the largest weight, in the output dtype and as fp32 for conversions
    int64_t max_numel = 0;
    for (int id = 0; id < NUM_WEIGHTS; id++) max_numel = std::max(max_numel, weight_info(c, id).numel());
    std::vector<uint8_t> buf((size_t)max_numel * dtype_size(out_dtype));
    std::vector<float> f32;
    std::vector<uint8_t> record;  // one NF4 record (nf4_layout(rows * cols).bytes)

    // Progress: on a terminal one line rewritten in place; in a log, a line every 10 s at most, so a
    // small export prints nothing but its summary and a failure stays the one line it should be.
    const bool tty = isatty(2);
    double last_log = 0;
    PayloadWriter out(args.output, sizeof(h));
    int64_t bytes = sizeof(h), params = 0, linear_bytes = 0, linear_params = 0;
    for (int id = 0; id < NUM_WEIGHTS; id++) {
        if (weight_numel(c, id) == 0) continue;  // lm_head of a tied model
        const WeightInfo wi = weight_info(c, id);
        const int n_layers = wi.per_layer ? c.n_layers : 1;
        for (int l = 0; l < n_layers; l++) {
            const std::string name = weight_hf_name(id, l);
            const StTensor& t = *ck.index.at(name).second;
            if (st_dtype_to_dtype(t.dtype) == out_dtype) {
                ck.read_as(id, l, out_dtype, buf.data());  // same type: the bytes as they are
            } else {
                f32.resize((size_t)wi.numel());
                ck.read_f32(id, l, f32.data());
                // bf16/f32 -> fp16 can overflow (fp16 tops out at 65504): refuse instead of writing Inf
                if (out_dtype == DT_F16)
                    for (size_t k = 0; k < f32.size(); k++)
                        if (std::isfinite(f32[k]) && std::fabs(f32[k]) >= 65520.0f)
                            fail("%s: tensor '%s' holds %g, beyond fp16's range; export with --dtype bf16",
                                 ck.index.at(name).first->path.c_str(), name.c_str(), f32[k]);
                convert_from_f32(buf.data(), f32.data(), out_dtype, f32.size());
            }
            size_t n_bytes = (size_t)wi.numel() * dtype_size(out_dtype);
            // a NaN/Inf would make the file unloadable: refuse it here, naming the tensor
            if (first_nonfinite(buf.data(), out_dtype, (size_t)wi.numel()) >= 0)
                check_dense_weights(buf.data(), out_dtype, wi.numel(), ck.index.at(name).first->path, "tensor '" + name + "'");
            if (nf4 && weight_is_linear(id)) {
                // bitsandbytes quantizes the weight as transformers loaded it, i.e. in the model's
                // 16-bit dtype: the checkpoint's own bytes when it is stored in out_dtype. An f32
                // tensor is rounded to out_dtype (bf16 for an f32 checkpoint) above first, as loading
                // with torch_dtype=bfloat16 does; quantizing its f32 values would give other codes.
                const std::string what = ck.index.at(name).first->path + ": tensor '" + name + "'";
                const Nf4Tensor q = nf4_quantize_dq_cpu(buf.data(), out_dtype, wi.numel(), what.c_str());
                n_bytes = (size_t)nf4_layout(wi.numel()).bytes;
                record.resize(n_bytes);
                nf4_to_record(q, record.data());
                out.write(record.data(), n_bytes);
                linear_bytes += (int64_t)n_bytes;
                linear_params += wi.numel();
            } else {
                out.write(buf.data(), n_bytes);
            }
            bytes += (int64_t)n_bytes;
            params += wi.numel();
            if (tty) {
                fprintf(stderr, "\r%s: %-24s layer %3d/%-3d %10.1f MB written %7.1f s", PROG, weight_kind(id), l + 1,
                        n_layers, bytes / 1e6, elapsed());
                g_progress_on_tty = true;
            } else if (elapsed() - last_log >= 10.0) {
                last_log = elapsed();
                fprintf(stderr, "%s: %s layer %d/%d, %.1f MB written, %.0f s\n", PROG, weight_kind(id), l + 1,
                        n_layers, bytes / 1e6, elapsed());
            }
        }
    }
    out.commit(h);
    clear_progress();
    // bits per parameter of the linears as stored (records with their 16-byte alignment padding);
    // bitsandbytes' NF4 with double quantization is 4.127 for a 7B weight
    char stored[128];
    if (nf4)
        snprintf(stored, sizeof(stored), "linears nf4 at %.4f bits/param, other tensors %s",
                 8.0 * (double)linear_bytes / (double)linear_params, dtype_name(out_dtype));
    else
        snprintf(stored, sizeof(stored), "%s", dtype_name(out_dtype));
    printf("%s: wrote %s: %lld parameters (%s), %s from %s %s, %lld bytes, tokenizer %s, %.2f s\n", PROG,
           args.output.c_str(), (long long)params, config_summary(c).c_str(), stored,
           ck.dtype >= 0 ? dtype_name(ck.dtype) : "undeclared-dtype", args.input.c_str(), (long long)bytes,
           tok.empty() ? "none" : hex_digest(h.tokenizer_sha256).substr(0, 16).c_str(), elapsed());
}

static int export_main(int argc, char** argv) {
    Args args;
    if (!cli_parse(make_cli(args), argc, argv)) return 0;
    struct ProgressLine {  // whatever ends the run, a progress line on the terminal is ended first
        ~ProgressLine() { clear_progress(); }
    } progress;
    run(args);
    return 0;
}

int main(int argc, char** argv) { return run_main(PROG, export_main, argc, argv); }
