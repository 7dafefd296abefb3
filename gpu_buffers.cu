// gpu_buffers.cu — the trainer's device memory beside the frozen base (llama2_gpu.h): the LoRA
// state (fp32 master weights, gradients, AdamW moments, a bf16 copy) and the activations + scratch
// for a token budget and a recompute level, each one cudaMalloc carved into named pointers; the
// batch buffers; and the host <-> device copies of the LoRA state for init, checkpoints and tests.
// CPU twin: CpuModel / cpu_acts_init (llama2_cpu.cpp) hold the same tensors on the host.
#include <algorithm>

#include "llama2_gpu.h"

void* DeviceCarver::alloc(const char* what, size_t* total_bytes) {
    const size_t total = bytes();
    size_t free_b = 0, total_b = 0;
    cudaCheck(cudaMemGetInfo(&free_b, &total_b));
    if (total > free_b)
        fail("GPU: %s need %.2f GiB, but only %.2f of the card's %.2f GiB are free (try --recompute full or fewer "
             "--micro-tokens)", what, total / 1073741824.0, free_b / 1073741824.0, total_b / 1073741824.0);
    void* base = nullptr;
    cudaCheck(cudaMalloc(&base, total == 0 ? 256 : total));
    size_t off = 0;
    for (const Part& p : parts) {
        *p.ptr = p.bytes ? (char*)base + off : nullptr;
        off += (p.bytes + 255) & ~(size_t)255;
    }
    *total_bytes = total;
    return base;
}

static void carve_lora(DeviceCarver& cv, GpuLora& g, int64_t n) {
    cv.add(g.params, n);       // (n) fp32 master weights, LoraLayout order
    cv.add(g.grads, n);        // (n)
    cv.add(g.adam_m, n);       // (n)
    cv.add(g.adam_v, n);       // (n)
    cv.add(g.params_bf16, n);  // (n)
}

static void gpu_lora_init(GpuLora& g, const Config& cfg, const LoraConfig& lora) {
    g.cfg = lora;
    g.lay = LoraLayout{};
    g.lay.total = 0;
    if (lora.rank <= 0) return;
    g.lay = lora_layout(cfg, lora);
    DeviceCarver cv;
    carve_lora(cv, g, g.lay.total);
    g.mem = cv.alloc("the LoRA parameters and AdamW state", &g.bytes);
    cudaCheck(cudaMemset(g.mem, 0, g.bytes));
}

static void carve_acts(DeviceCarver& cv, GpuActs& a, const Config& c, int recompute, int64_t N, int64_t r) {
    const int64_t L = c.n_layers, C = c.dim, F = c.hidden_dim, H = c.n_heads;
    const int64_t QD = H * c.head_dim, KVD = (int64_t)c.n_kv_heads * c.head_dim;
    // slots kept per layer or shared by all layers, by recompute level (GpuActs)
    const int64_t S = recompute == RECOMPUTE_FULL ? 1 : L, S_cheap = recompute == RECOMPUTE_NONE ? L : 1;
    cv.add(a.x, (L + 1) * N * C);                   // (L+1, N, C)
    cv.add(a.rstd_attn, L * N);                     // (L, N)
    cv.add(a.rstd_mlp, L * N);                      // (L, N)
    cv.add(a.xn_attn, S_cheap * N * C);             // (S_cheap, N, C)
    cv.add(a.q, S * N * QD);                        // (S, N, H*D)
    cv.add(a.k, S * N * KVD);                       // (S, N, KV*D)
    cv.add(a.v, S * N * KVD);                       // (S, N, KV*D)
    cv.add(a.ctx, S * N * QD);                      // (S, N, H*D)
    cv.add(a.lse, S * H * N);                       // (S, H*N)
    cv.add(a.x_mid, S * N * C);                     // (S, N, C)
    cv.add(a.xn_mlp, S_cheap * N * C);              // (S_cheap, N, C)
    cv.add(a.gate, S * N * F);                      // (S, N, F)
    cv.add(a.up, S * N * F);                        // (S, N, F)
    cv.add(a.hmid, S_cheap * N * F);                // (S_cheap, N, F)
    cv.add(a.lora_u, S * NUM_LORA_TARGETS * N * r); // (S, 7, N, r)
    cv.add(a.xn_final, N * C);                      // (N, C)
    cv.add(a.rstd_final, N);                        // (N)
    cv.add(a.dxn_final, N * C);                     // (N, C)
    cv.add(a.losses, N);                            // (N)
}

static void gpu_acts_init(GpuModel& m, int64_t r) {
    DeviceCarver cv;
    carve_acts(cv, m.acts, m.cfg, m.recompute, m.max_tokens, r);
    size_t total;
    m.acts_mem = cv.alloc("the activations", &total);
    m.bytes_allocated += total;
}

// (head_chunk: the tokens per LM-head chunk it sizes the logits for)
static void carve_scratch(DeviceCarver& cv, GpuScratch& s, int* head_chunk, const Config& c, int quant, int64_t N,
                          int64_t r) {
    const int64_t C = c.dim, F = c.hidden_dim, V = c.vocab_size, H = c.n_heads;
    const int64_t QD = H * c.head_dim, KVD = (int64_t)c.n_kv_heads * c.head_dim;
    // the LM head runs in chunks so that a batch's full fp32 logits never exist at once
    *head_chunk = (int)std::max<int64_t>(1, std::min<int64_t>(N, (256ll << 20) / (V * 6)));
    const int64_t CH = *head_chunk, max_in = std::max(std::max(C, F), QD);
    const int64_t dequant = quant == QUANT_NF4 ? gpu_base_max_linear_numel(c) : 0;
    cv.add(s.logits, CH * V);                       // (CH, V)
    cv.add(s.dlogits, CH * V);                      // (CH, V)
    cv.add(s.dres, N * C);                          // (N, C)
    cv.add(s.dres_bf16, N * C);                     // (N, C)
    cv.add(s.dxn, N * C);                           // (N, C)
    cv.add(s.dctx, N * QD);                         // (N, H*D)
    cv.add(s.dctx_bf16, N * QD);                    // (N, H*D)
    cv.add(s.delta, H * N);                         // (H*N)
    cv.add(s.dq, N * QD);                           // (N, H*D)
    cv.add(s.dk, N * KVD);                          // (N, KV*D)
    cv.add(s.dv, N * KVD);                          // (N, KV*D)
    cv.add(s.dhmid, N * F);                         // (N, F)
    cv.add(s.dgate, N * F);                         // (N, F)
    cv.add(s.dup, N * F);                           // (N, F)
    cv.add(s.lora_xd, N * max_in);                  // (N, max in)
    cv.add(s.lora_tmp, N * max_in);                 // (N, max in)
    cv.add(s.lora_du, 3 * N * std::max<int64_t>(r, 1)); // (3, N, r)
    cv.add(s.weight, dequant);                      // (max out*in), NF4 only
    cv.add(s.reduce, 1024);                         // (1024)
    cv.add(s.loss_sum, 1);                          // (1)
    cv.add(s.step_loss, 1);                         // (1)
    cv.add(s.norm_sq, 1);                           // (1)
}

static void gpu_scratch_init(GpuModel& m, int64_t r) {
    DeviceCarver cv;
    carve_scratch(cv, m.scr, &m.head_chunk, m.cfg, m.base.quant, m.max_tokens, r);
    size_t total;
    m.scratch_mem = cv.alloc("the backward's scratch", &total);
    cudaCheck(cudaMemset(m.scratch_mem, 0, total));
    m.bytes_allocated += total;
}

size_t gpu_model_bytes(const Config& cfg, const LoraConfig& lora, int quant, int recompute, int64_t max_tokens) {
    DeviceCarver lora_cv, acts_cv, scratch_cv;
    GpuLora g;
    GpuActs a;
    GpuScratch s;
    int head_chunk = 0;
    if (lora.rank > 0) carve_lora(lora_cv, g, lora_layout(cfg, lora).total);
    carve_acts(acts_cv, a, cfg, recompute, max_tokens, lora.rank);
    carve_scratch(scratch_cv, s, &head_chunk, cfg, quant, max_tokens, lora.rank);
    const size_t blas_workspace = 32u << 20, batch = (size_t)max_tokens * 3 * sizeof(int32_t);
    return gpu_base_bytes(cfg, quant) + lora_cv.bytes() + acts_cv.bytes() + scratch_cv.bytes() + blas_workspace + batch;
}

void gpu_model_init(GpuModel& m, const Config& cfg, const LoraConfig& lora, int quant, int recompute,
                    int64_t max_tokens) {
    validate_config(cfg, "model");
    m.cfg = cfg;
    m.recompute = recompute;
    m.max_tokens = max_tokens;
    m.bytes_allocated = 0;
    cudaCheck(cudaStreamCreate(&m.stream));
    blas_create(m.blas);
    m.bytes_allocated += m.blas.workspace_size;
    gpu_base_init(m.base, cfg, quant);
    m.bytes_allocated += m.base.bytes;
    gpu_lora_init(m.lora, cfg, lora);
    m.bytes_allocated += m.lora.bytes;
    gpu_acts_init(m, lora.rank);
    gpu_scratch_init(m, lora.rank);
    // the batch: token ids, targets, positions
    const int64_t N = max_tokens;
    cudaCheck(cudaMalloc(&m.d_tokens, (size_t)N * 3 * sizeof(int32_t)));
    m.d_targets = m.d_tokens + N;
    m.d_pos = m.d_targets + N;
    m.bytes_allocated += (size_t)N * 3 * sizeof(int32_t);
    for (int i = 0; i < 2; i++) {
        cudaCheck(cudaMallocHost(&m.h_batch[i], (size_t)N * 3 * sizeof(int32_t)));
        cudaCheck(cudaEventCreateWithFlags(&m.h_batch_done[i], cudaEventDisableTiming));
        cudaCheck(cudaEventRecord(m.h_batch_done[i], m.stream));
    }
}

void gpu_model_free(GpuModel& m) {
    cudaCheck(cudaStreamSynchronize(m.stream));
    gpu_base_free(m.base);
    for (void* p : {m.lora.mem, m.acts_mem, m.scratch_mem, (void*)m.d_tokens})
        if (p) cudaCheck(cudaFree(p));
    for (int i = 0; i < 2; i++) {
        if (m.h_batch[i]) cudaCheck(cudaFreeHost(m.h_batch[i]));
        if (m.h_batch_done[i]) cudaCheck(cudaEventDestroy(m.h_batch_done[i]));
    }
    for (cudaEvent_t e : m.prof.events) cudaCheck(cudaEventDestroy(e));
    blas_destroy(m.blas);
    cudaCheck(cudaStreamDestroy(m.stream));
    m = GpuModel{};
}

// ----------------------------------------------------------------------------------------------
// the LoRA state to and from the host

void gpu_lora_set(GpuModel& m, const std::vector<float>& params) {
    GpuLora& g = m.lora;
    ASSERT((int64_t)params.size() == g.lay.total, "LoRA params match the layout");
    const size_t n = params.size();
    cudaCheck(cudaMemcpy(g.params, params.data(), n * 4, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemset(g.grads, 0, n * 4));
    cudaCheck(cudaMemset(g.adam_m, 0, n * 4));
    cudaCheck(cudaMemset(g.adam_v, 0, n * 4));
    convert_f32_to_bf16(g.params_bf16, g.params, (int64_t)n, m.stream);
    cudaCheck(cudaStreamSynchronize(m.stream));
}

static std::vector<float> download(GpuModel& m, const float* src) {
    std::vector<float> out((size_t)m.lora.lay.total);
    cudaCheck(cudaStreamSynchronize(m.stream));
    cudaCheck(cudaMemcpy(out.data(), src, out.size() * 4, cudaMemcpyDeviceToHost));
    return out;
}

std::vector<float> gpu_lora_get(GpuModel& m) { return download(m, m.lora.params); }
std::vector<float> gpu_lora_grads_get(GpuModel& m) { return download(m, m.lora.grads); }

void gpu_zero_grads(GpuModel& m) {
    if (m.lora.lay.total) cudaCheck(cudaMemsetAsync(m.lora.grads, 0, (size_t)m.lora.lay.total * 4, m.stream));
    cudaCheck(cudaMemsetAsync(m.scr.step_loss, 0, 4, m.stream));
}

void gpu_lora_state_set(GpuModel& m, const std::vector<float>& params, const std::vector<float>& mom,
                        const std::vector<float>& vel) {
    gpu_lora_set(m, params);
    ASSERT(mom.size() == params.size() && vel.size() == params.size(), "moments match the parameters");
    cudaCheck(cudaMemcpy(m.lora.adam_m, mom.data(), mom.size() * 4, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(m.lora.adam_v, vel.data(), vel.size() * 4, cudaMemcpyHostToDevice));
}

void gpu_lora_state_get(GpuModel& m, std::vector<float>& params, std::vector<float>& mom, std::vector<float>& vel) {
    params = download(m, m.lora.params);
    mom = download(m, m.lora.adam_m);
    vel = download(m, m.lora.adam_v);
}
