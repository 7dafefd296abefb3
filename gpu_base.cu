// gpu_base.cu — the frozen base model on the device (GpuBase in llama2_gpu.h): one allocation for
// the bf16 tensors (embeddings, norms, LM head, and the linears when they stay bf16) and one for
// the seven linears' NF4 records under QLoRA; filled from a model file (streamed, one tensor of one
// layer at a time), from fp32 host values, or with random numbers for benchmarks. Linears are
// quantized to NF4 on the GPU as bitsandbytes would (quant.cu), or copied as the pre-quantized
// records an NF4 model file holds. The trainer (llama2.cu) and the decoder (decode.cu) both read
// their weights from here. CPU twin: load_model_f32 (model.cpp) into CpuModel; test: test/gpu_model.cu.
#include <algorithm>
#include <string>

#include "llama2_gpu.h"

static int target_of_weight(int id) {
    for (int t = 0; t < NUM_LORA_TARGETS; t++)
        if (lora_target_weight(t) == id) return t;
    return -1;
}

int64_t gpu_base_max_linear_numel(const Config& c) {
    int64_t n = 0;
    for (int t = 0; t < NUM_LORA_TARGETS; t++) n = std::max(n, lora_in_dim(c, t) * lora_out_dim(c, t));
    return n;
}

// The two allocations' layouts (dense tensors in file order, the linears only when they stay bf16;
// L NF4 records back to back per linear target), shared by the allocation and the memory plan.
static void carve_dense(DeviceCarver& cv, GpuBase& b, const Config& cfg, int quant) {
    for (int id = 0; id < NUM_WEIGHTS; id++)
        cv.add(*b.w.ptr(id), (quant == QUANT_NF4 && weight_is_linear(id)) ? 0 : weight_numel(cfg, id));
}
static void carve_nf4(DeviceCarver& cv, GpuBase& b, const Config& cfg) {
    for (int t = 0; t < NUM_LORA_TARGETS; t++) {
        b.nf4_record_bytes[t] = nf4_layout(lora_in_dim(cfg, t) * lora_out_dim(cfg, t)).bytes;
        cv.add(b.nf4[t], b.nf4_record_bytes[t] * cfg.n_layers);
    }
}

size_t gpu_base_bytes(const Config& cfg, int quant) {
    GpuBase b;
    DeviceCarver dense, nf4;
    carve_dense(dense, b, cfg, quant);
    if (quant == QUANT_NF4) carve_nf4(nf4, b, cfg);
    return dense.bytes() + (quant == QUANT_NF4 ? nf4.bytes() : 0);
}

size_t gpu_base_load_bytes(const Config& cfg, int quant) {
    // LoadScratch (below) and the loader's staging slice
    int64_t max_slice = 0;
    for (int id = 0; id < NUM_WEIGHTS; id++) max_slice = std::max(max_slice, weight_info(cfg, id).numel() * 4);
    const int64_t n = gpu_base_max_linear_numel(cfg);
    return (size_t)max_slice + (quant == QUANT_NF4 ? (size_t)(nf4_quantize_workspace_bytes(n) + 2 * n) : 0);
}

void gpu_base_init(GpuBase& b, const Config& cfg, int quant) {
    validate_config(cfg, "model");
    b.cfg = cfg;
    b.quant = quant;
    b.bytes = 0;
    {
        DeviceCarver cv;
        carve_dense(cv, b, cfg, quant);
        size_t total;
        b.dense_mem = cv.alloc("the base model's bf16 weights", &total);
        if (cfg.tie_embeddings) b.w.lm_head = b.w.embed;
        b.bytes += total;
    }
    if (quant == QUANT_NF4) {
        DeviceCarver cv;
        carve_nf4(cv, b, cfg);
        size_t total;
        b.nf4_mem = cv.alloc("the base model's NF4 linears", &total);
        b.bytes += total;
    }
}

void gpu_base_free(GpuBase& b) {
    for (void* p : {b.dense_mem, b.nf4_mem})
        if (p) cudaCheck(cudaFree(p));
    b = GpuBase{};
}

Nf4View gpu_base_nf4(const GpuBase& b, int t, int l) {
    return nf4_view(b.nf4[t] + l * b.nf4_record_bytes[t], lora_in_dim(b.cfg, t) * lora_out_dim(b.cfg, t));
}

const bf16* gpu_base_linear(const GpuBase& b, int t, int l, bf16* scratch, cudaStream_t stream) {
    const int id = lora_target_weight(t);
    const int64_t n = weight_info(b.cfg, id).numel();
    if (b.quant != QUANT_NF4) return *b.w.ptr(id) + l * n;
    nf4_dequantize_gpu(scratch, DT_BF16, gpu_base_nf4(b, t, l), stream);
    return scratch;
}

// Scratch a loader needs while it fills the weights: the NF4 quantizer's workspace, and room for
// one layer's linear in bf16 (the random fill is generated there before it is quantized).
struct LoadScratch {
    void* quant_ws = nullptr;
    bf16* weight = nullptr;
    GpuBase* owner;
    explicit LoadScratch(GpuBase& b) : owner(&b) {
        if (b.quant != QUANT_NF4) return;
        const int64_t n = gpu_base_max_linear_numel(b.cfg);
        cudaCheck(cudaMalloc(&quant_ws, (size_t)nf4_quantize_workspace_bytes(n)));
        cudaCheck(cudaMalloc(&weight, (size_t)n * sizeof(bf16)));
    }
    ~LoadScratch() {
        // the peak of a run: everything allocated and this scratch with it (the memory plan's
        // prediction is checked against this)
        owner->load_peak_gib = std::max(owner->load_peak_gib, gpu_memory_in_use_gib());
        if (quant_ws) cudaCheck(cudaFree(quant_ws));
        if (weight) cudaCheck(cudaFree(weight));
    }
};

// Puts one linear weight (rows*cols values of `dtype`, on the device) in place: copied as bf16, or
// quantized to NF4 from its original dtype, exactly as bitsandbytes would quantize it.
static void place_linear(GpuBase& b, const LoadScratch& ls, int t, int l, const void* src_dev, int32_t dtype,
                         const char* name, cudaStream_t stream) {
    const int id = lora_target_weight(t);
    const int64_t n = weight_info(b.cfg, id).numel();
    if (b.quant == QUANT_NF4) nf4_quantize_checked_gpu(gpu_base_nf4(b, t, l), src_dev, dtype, ls.quant_ws, name, stream);
    else convert_to_bf16(*b.w.ptr(id) + l * n, src_dev, dtype, n, stream);
}

void gpu_base_set_weights(GpuBase& b, const std::vector<float>& weights_f32, cudaStream_t stream) {
    ASSERT((int64_t)weights_f32.size() == total_weight_numel(b.cfg), "weights match the config");
    LoadScratch ls(b);
    std::vector<uint16_t> host(weights_f32.size());
    convert_from_f32(host.data(), weights_f32.data(), DT_BF16, host.size());
    bf16* staging = nullptr;
    int64_t max_n = 0;
    for (int id = 0; id < NUM_WEIGHTS; id++) max_n = std::max(max_n, weight_info(b.cfg, id).numel());
    cudaCheck(cudaMalloc(&staging, max_n * 2));
    int64_t off = 0;
    for (int id = 0; id < NUM_WEIGHTS; id++) {
        const int64_t total = weight_numel(b.cfg, id);
        if (total == 0) continue;
        if (!weight_is_linear(id)) {
            cudaCheck(cudaMemcpy(*b.w.ptr(id), host.data() + off, total * 2, cudaMemcpyHostToDevice));
        } else {
            const int64_t n = weight_info(b.cfg, id).numel();
            for (int l = 0; l < b.cfg.n_layers; l++) {
                cudaCheck(cudaMemcpyAsync(staging, host.data() + off + l * n, n * 2, cudaMemcpyHostToDevice, stream));
                place_linear(b, ls, target_of_weight(id), l, staging, DT_BF16, weight_hf_name(id, l).c_str(), stream);
            }
        }
        off += total;
    }
    cudaCheck(cudaStreamSynchronize(stream));
    cudaCheck(cudaFree(staging));
}

// Streams one tensor of one layer at a time through a pinned host buffer. Dense linears are placed
// by place_linear (quantized on the GPU under QUANT_NF4); pre-quantized NF4 records (export_hf
// --dtype nf4) are the very bytes the GPU holds: checked on the host, then copied into place.
void gpu_base_load_file(GpuBase& b, const std::string& path, cudaStream_t stream) {
    InFile in(path);
    ModelHeader h = read_model_header(in);
    const Config& c = b.cfg;
    if (!same_architecture(h.config, c))
        fail("%s: holds %s, the model was set up for %s", path.c_str(), config_summary(h.config).c_str(),
             config_summary(c).c_str());
    const bool nf4_file = h.linear_format == LINEAR_NF4;
    // dequantizing to bf16 would train on other weights than the bf16 checkpoint: refuse
    if (nf4_file && b.quant != QUANT_NF4)
        fail("%s: linear weights are pre-quantized to NF4; train with --quant nf4 or export with --dtype bf16",
             path.c_str());
    LoadScratch ls(b);
    auto layers_of = [&](int id) { return weight_info(c, id).per_layer ? c.n_layers : 1; };
    int64_t max_slice = 0;  // bytes of one layer's slice of a weight, as stored in the file
    for (int id = 0; id < NUM_WEIGHTS; id++) max_slice = std::max(max_slice, model_weight_bytes(h, id) / layers_of(id));
    void *host = nullptr, *staging = nullptr;
    cudaCheck(cudaMallocHost(&host, max_slice));
    cudaCheck(cudaMalloc(&staging, max_slice));
    int64_t off = sizeof(ModelHeader);
    PayloadHash hash;  // the slices are read in file order: the payload streams through it
    for (int id = 0; id < NUM_WEIGHTS; id++) {
        if (weight_numel(c, id) == 0) continue;
        const WeightInfo wi = weight_info(c, id);
        const int64_t slice = model_weight_bytes(h, id) / layers_of(id);
        for (int l = 0; l < layers_of(id); l++, off += slice) {
            const std::string name = weight_hf_name(id, l);
            in.read_at(off, host, slice, name.c_str());
            hash.update(host, slice);
            if (!(nf4_file && weight_is_linear(id))) check_dense_weights(host, h.dtype, wi.numel(), path, name);
            if (nf4_file && weight_is_linear(id)) {
                const int t = target_of_weight(id);
                ASSERT(slice == b.nf4_record_bytes[t], "a file record has the layout the model allocated");
                check_nf4_record((const uint8_t*)host, wi.numel(), path, name);
                // synchronous (pinned source): the host buffer is free again when it returns
                cudaCheck(cudaMemcpy(b.nf4[t] + l * b.nf4_record_bytes[t], host, slice, cudaMemcpyHostToDevice));
                continue;
            }
            cudaCheck(cudaMemcpy(staging, host, slice, cudaMemcpyHostToDevice));
            if (weight_is_linear(id)) place_linear(b, ls, target_of_weight(id), l, staging, h.dtype, name.c_str(), stream);
            else convert_to_bf16(*b.w.ptr(id) + l * wi.numel(), staging, h.dtype, wi.numel(), stream);
            cudaCheck(cudaStreamSynchronize(stream));  // staging is reused by the next tensor
        }
    }
    cudaCheck(cudaFreeHost(host));
    cudaCheck(cudaFree(staging));
    check_model_payload(h, hash.digest(), path);
}

void gpu_base_random(GpuBase& b, uint64_t seed, cudaStream_t stream) {
    const Config& c = b.cfg;
    LoadScratch ls(b);
    for (int id = 0; id < NUM_WEIGHTS; id++) {
        const int64_t total = weight_numel(c, id);
        if (total == 0) continue;
        const bool is_norm = id == W_ATTN_NORM || id == W_MLP_NORM || id == W_FINAL_NORM;
        if (!weight_is_linear(id) || b.quant != QUANT_NF4) {
            fill_normal(*b.w.ptr(id), total, is_norm ? 1.0f : 0.0f, is_norm ? 0.0f : 0.02f, seed + id, stream);
            continue;
        }
        const int64_t n = weight_info(c, id).numel();
        for (int l = 0; l < c.n_layers; l++) {  // generate into scratch, quantize layer by layer
            fill_normal(ls.weight, n, 0.0f, 0.02f, seed + id * 1000 + l, stream);
            place_linear(b, ls, target_of_weight(id), l, ls.weight, DT_BF16, weight_hf_name(id, l).c_str(), stream);
        }
    }
    cudaCheck(cudaStreamSynchronize(stream));
}
