// test/gpu_base.cu — GpuBase (gpu_base.cu), the frozen base weights on the GPU: a pre-quantized
// NF4 model file (export_hf --dtype nf4) loads without quantizing, its records reach the GPU as they
// are and equal quantizing the dense file on the GPU, the 16-bit tensors take the same path from
// either file, and a bf16 base refuses NF4 records with one clear line. Runs ./export_hf, so build
// it first. Run: ./test_gpu -tc="step: NF4 model file*"   (or ./test_gpu -sf="*gpu_base.cu")
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "../hf.h"
#include "../llama2_gpu.h"
#include "../quant.h"
#include "gpu_util.h"
#include "test_util.h"

// ----------------------------------------------------------------------------------------------
// pre-quantized model files (export_hf --dtype nf4, quantized on the CPU)

TEST_CASE("step: NF4 model file loads without quantizing and equals on-GPU quantization") {
    REQUIRE_MESSAGE(path_exists("./export_hf"), "build ./export_hf first (make export_hf)");
    for (const std::string& dir : tiny_fixtures()) {
        CAPTURE(dir);
        const std::string f = base_name(dir);
        TempDir t;
        const std::string dense = t / "dense.bin", nf4 = t / "nf4.bin", patched = t / "patched.bin";
        for (const std::string& args : {"-o " + dense, "-o " + nf4 + " --dtype nf4"}) {
            CmdResult r = run_cmd("./export_hf -i " + dir + " " + args);
            REQUIRE_MESSAGE(r.exit_code == 0, r.output);
        }
        int32_t declared;
        const Config cfg = parse_hf_config(dir + "/config.json", &declared);
        InFile in(nf4);
        const ModelHeader h = read_model_header(in);
        REQUIRE(h.linear_format == LINEAR_NF4);
        std::vector<uint8_t> file((size_t)in.size);
        in.read_at(0, file.data(), file.size(), "model file");
        int64_t weight_at[NUM_WEIGHTS], off = sizeof(ModelHeader);  // byte offset of each weight in the file
        for (int id = 0; id < NUM_WEIGHTS; id++) {
            weight_at[id] = off;
            off += model_weight_bytes(h, id);
        }
        // A copy with the first code byte of up_proj's layer-0 record inverted: still a valid record,
        // but not what quantizing the checkpoint gives, so it reaches the GPU only if the loader
        // copies records as they are.
        std::vector<uint8_t> changed = file;
        const size_t flip_at = (size_t)(weight_at[W_UP] + nf4_layout(weight_info(cfg, W_UP).numel()).packed_at);
        changed[flip_at] = (uint8_t)~changed[flip_at];
        {  // (with its checksum made to agree, as a file written that way would have it)
            const std::string fixed = rehashed(std::string(changed.begin(), changed.end()), offsetof(ModelHeader, checksum));
            changed.assign(fixed.begin(), fixed.end());
            AtomicFile out(patched);
            out.write(changed.data(), changed.size());
            out.commit();
        }

        GpuBase on_gpu, from_file, from_patched;  // dense file quantized at load; NF4 files copied
        gpu_base_init(on_gpu, cfg, QUANT_NF4);
        gpu_base_init(from_file, cfg, QUANT_NF4);
        gpu_base_init(from_patched, cfg, QUANT_NF4);
        gpu_base_load_file(on_gpu, dense, 0);
        gpu_base_load_file(from_file, nf4, 0);
        gpu_base_load_file(from_patched, patched, 0);
        for (int t = 0; t < NUM_LORA_TARGETS; t++) {
            const int id = lora_target_weight(t);
            const int64_t rec = on_gpu.nf4_record_bytes[t], bytes = rec * cfg.n_layers;
            REQUIRE(bytes == model_weight_bytes(h, id));
            const std::vector<uint8_t> a = download<uint8_t>(on_gpu.nf4[t], (size_t)bytes);
            const std::vector<uint8_t> b = download<uint8_t>(from_file.nf4[t], (size_t)bytes);
            const std::vector<uint8_t> p = download<uint8_t>(from_patched.nf4[t], (size_t)bytes);
            int64_t i = first_diff(a.data(), b.data(), (size_t)bytes);
            CHECK_MESSAGE(i < 0, f << ": " << weight_hf_name(id, (int)(i / rec)) << ": GPU-quantized record and "
                                   << "the file's differ at byte " << i % rec << " of " << rec);
            i = first_diff(b.data(), file.data() + weight_at[id], (size_t)bytes);
            CHECK_MESSAGE(i < 0, f << ": " << weight_hf_name(id, (int)(i / rec)) << ": device record differs from "
                                   << "the file at byte " << i % rec);
            i = first_diff(p.data(), changed.data() + weight_at[id], (size_t)bytes);
            CHECK_MESSAGE(i < 0, f << ": " << weight_hf_name(id, (int)(i / rec)) << ": device record differs from "
                                   << "the patched file at byte " << i % rec);
        }
        // the 16-bit tensors take the same path from both files
        for (int id = 0; id < NUM_WEIGHTS; id++) {
            if (weight_numel(cfg, id) == 0 || weight_is_linear(id)) continue;
            const size_t n = (size_t)weight_numel(cfg, id);
            const std::vector<uint16_t> a = download<uint16_t>(*on_gpu.w.ptr(id), n);
            const std::vector<uint16_t> b = download<uint16_t>(*from_file.w.ptr(id), n);
            const int64_t i = first_diff(a.data(), b.data(), n * 2);
            CHECK_MESSAGE(i < 0, f << ": " << weight_hf_name(id, 0) << " (stacked) differs at element " << i / 2);
        }
        // a bf16 model cannot take NF4 records: one clear line
        GpuBase bf16_model;
        gpu_base_init(bf16_model, cfg, QUANT_BF16);
        std::string msg;
        try {
            gpu_base_load_file(bf16_model, nf4, 0);
        } catch (const InputError& e) {
            msg = e.what();
        }
        CHECK_MESSAGE(msg.find(nf4) != std::string::npos, msg);
        CHECK_MESSAGE(msg.find("--quant nf4") != std::string::npos, msg);
        CHECK(msg.find('\n') == std::string::npos);
        for (GpuBase* b : {&on_gpu, &from_file, &from_patched, &bf16_model}) gpu_base_free(*b);
    }
}
