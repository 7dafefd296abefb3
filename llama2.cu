// llama2.cu — the CUDA model: Llama 2 with LoRA on its seven linears, forward and backward, layer by
// layer over the named buffers of llama2_gpu.h (frozen base, LoRA state, activations, scratch).
// Read it top to bottom: the batch upload, one linear with its LoRA delta, one layer's forward, the
// whole forward with the chunked LM head and loss, the backward in reverse layer order, the
// optimizer step. The ops it calls are in kernels/ (one file each), LoRA in lora.cu, NF4 in
// quant.cu, AdamW in adamw.cu. CPU twin: cpu_forward / cpu_backward (llama2_cpu.cpp), checked
// against it in test/gpu_model.cu. Build: make (nvcc -arch=sm_90).
//
// Numerics: activations bf16, every reduction and every matmul accumulates in fp32, softmax and
// norm statistics are fp32; the residual-stream gradient is fp32.
#include <algorithm>

#include "llama2_gpu.h"

// ----------------------------------------------------------------------------------------------
// the batch

void gpu_set_batch(GpuModel& m, int B, int T, const int32_t* tokens, const int32_t* targets, const int32_t* pos) {
    const int64_t N = (int64_t)B * T;
    ASSERT(N > 0 && N <= m.max_tokens, "batch fits the activations (B*T <= max_tokens)");
    // Two pinned staging buffers in turn: this one was last read by the upload two batches ago,
    // long finished, so waiting on its event costs nothing and the step never drains the stream.
    const int i = m.h_batch_next;
    m.h_batch_next ^= 1;
    int32_t* h = m.h_batch[i];
    cudaCheck(cudaEventSynchronize(m.h_batch_done[i]));
    memcpy(h, tokens, N * 4);
    memcpy(h + N, targets, N * 4);
    memcpy(h + 2 * N, pos, N * 4);
    cudaCheck(cudaMemcpyAsync(m.d_tokens, h, N * 4, cudaMemcpyHostToDevice, m.stream));
    cudaCheck(cudaMemcpyAsync(m.d_targets, h + N, N * 4, cudaMemcpyHostToDevice, m.stream));
    cudaCheck(cudaMemcpyAsync(m.d_pos, h + 2 * N, N * 4, cudaMemcpyHostToDevice, m.stream));
    cudaCheck(cudaEventRecord(m.h_batch_done[i], m.stream));
    m.B = B;
    m.T = T;
}

// ----------------------------------------------------------------------------------------------
// forward and backward

// Views of layer l's activations, honouring the recompute slots.
struct LayerView {
    bf16 *x_in, *x_out, *xn_attn, *q, *k, *v, *ctx, *x_mid, *xn_mlp, *gate, *up, *hmid;
    float *rstd_attn, *rstd_mlp, *lse;
    bf16* u[NUM_LORA_TARGETS];
};
static LayerView layer_view(GpuModel& m, int l) {
    const Config& c = m.cfg;
    const int64_t N = (int64_t)m.B * m.T, Nmax = m.max_tokens, C = c.dim, F = c.hidden_dim, H = c.n_heads;
    const int64_t QD = H * c.head_dim, KVD = (int64_t)c.n_kv_heads * c.head_dim, r = m.lora.cfg.rank;
    const int64_t s = m.recompute == RECOMPUTE_FULL ? 0 : l, sc = m.recompute == RECOMPUTE_NONE ? l : 0;
    GpuActs& a = m.acts;
    LayerView v;
    // slots are laid out with the capacity (Nmax) so that any batch size fits
    v.x_in = a.x + l * Nmax * C;
    v.x_out = a.x + (l + 1) * Nmax * C;
    v.rstd_attn = a.rstd_attn + l * Nmax;
    v.rstd_mlp = a.rstd_mlp + l * Nmax;
    v.xn_attn = a.xn_attn + sc * Nmax * C;
    v.q = a.q + s * Nmax * QD;
    v.k = a.k + s * Nmax * KVD;
    v.v = a.v + s * Nmax * KVD;
    v.ctx = a.ctx + s * Nmax * QD;
    v.lse = a.lse + s * H * Nmax;
    v.x_mid = a.x_mid + s * Nmax * C;
    v.xn_mlp = a.xn_mlp + sc * Nmax * C;
    v.gate = a.gate + s * Nmax * F;
    v.up = a.up + s * Nmax * F;
    v.hmid = a.hmid + sc * Nmax * F;
    for (int t = 0; t < NUM_LORA_TARGETS; t++) v.u[t] = a.lora_u + (s * NUM_LORA_TARGETS + t) * Nmax * r;
    (void)N;
    return v;
}

// the fp32 scratch of the LoRA products: (N capacity, widest input)
static int64_t lora_tmp_floats(const GpuModel& m) {
    const Config& c = m.cfg;
    return m.max_tokens * std::max<int64_t>(std::max<int64_t>(c.dim, c.hidden_dim), (int64_t)c.n_heads * c.head_dim);
}

static LoraGpuArgs lora_gpu_args(GpuModel& m, const GpuStepOptions& opt, int t, int l) {
    LoraGpuArgs la{nullptr, nullptr, 0, 0.0f, 0.0f, opt.dropout_seed, (uint64_t)l * NUM_LORA_TARGETS + t};
    const LoraConfig& lc = m.lora.cfg;
    if (!opt.use_lora || lc.rank <= 0 || !lc.has(t)) return la;
    const int64_t r = lc.rank;
    la.A = m.lora.params_bf16 + m.lora.lay.a_offset[t] + l * r * lora_in_dim(m.cfg, t);
    la.B = m.lora.params_bf16 + m.lora.lay.b_offset[t] + l * lora_out_dim(m.cfg, t) * r;
    la.r = (int)r;
    la.scale = lc.scaling();
    la.p = opt.training ? lc.dropout : 0.0f;
    return la;
}

// The bf16 weight of linear t in layer l (NF4: dequantized into scratch)
static const bf16* frozen_weight(GpuModel& m, int t, int l) {
    gpu_profile_mark(m, PHASE_DEQUANT);
    return gpu_base_linear(m.base, t, l, m.scr.weight, m.stream);
}

// y (N, OC) = x W^T (+ accumulate onto y when accumulate) + LoRA
static void linear_forward(GpuModel& m, const GpuStepOptions& opt, bf16* y, bf16* u, const bf16* x, int t, int l,
                           bool accumulate) {
    const int64_t N = (int64_t)m.B * m.T, IC = lora_in_dim(m.cfg, t), OC = lora_out_dim(m.cfg, t);
    const bf16* W = frozen_weight(m, t, l);
    gpu_profile_mark(m, PHASE_FROZEN_FWD);
    matmul(m.blas, y, false, x, false, W, true, N, OC, IC, 1.0f, accumulate ? 1.0f : 0.0f, m.stream);
    gpu_profile_mark(m, PHASE_LORA);
    lora_forward(m.blas, y, u, m.scr.lora_xd, m.scr.lora_tmp, lora_tmp_floats(m), x, lora_gpu_args(m, opt, t, l), N, IC,
                 OC, m.stream);
}

// dx (N, IC) fp32 = sum over the n linears first, first+1, ... that read the same input x of
// dy_i W_i + their LoRA paths (q, k, v; gate, up; o or down alone); LoRA gradients accumulate into
// m.lora.grads. The LoRA input gradients (where the fused kernels run) wait until every frozen
// product is in dx and then go in one pass (lora_backward_dx), not one read-modify-write of the
// fp32 dx per linear.
static void linear_backward(GpuModel& m, const GpuStepOptions& opt, float* dx, const bf16* const* dy, const bf16* x,
                            int first, int n, int l) {
    const int64_t N = (int64_t)m.B * m.T, IC = lora_in_dim(m.cfg, first), r = m.lora.cfg.rank;
    const LayerView v = layer_view(m, l);
    const bf16* du_deferred[3];
    LoraGpuArgs la_deferred[3];
    int deferred = 0;
    for (int i = 0; i < n; i++) {
        const int t = first + i;
        const int64_t OC = lora_out_dim(m.cfg, t);
        const bf16* W = frozen_weight(m, t, l);
        gpu_profile_mark(m, PHASE_FROZEN_BWD);
        matmul(m.blas, dx, true, dy[i], false, W, false, N, IC, OC, 1.0f, i > 0 ? 1.0f : 0.0f, m.stream);
        const LoraGpuArgs la = lora_gpu_args(m, opt, t, l);
        if (!la.A) continue;
        gpu_profile_mark(m, PHASE_LORA);
        float* dA = m.lora.grads + m.lora.lay.a_offset[t] + l * r * IC;
        float* dB = m.lora.grads + m.lora.lay.b_offset[t] + l * OC * r;
        bf16* du = m.scr.lora_du + i * N * r;  // (N, r) slot i: kept until the deferred pass
        if (lora_backward(m.blas, dx, dA, dB, du, m.scr.lora_xd, m.scr.lora_tmp, lora_tmp_floats(m), dy[i], x, v.u[t], la,
                          N, IC, OC, m.stream, true)) {
            du_deferred[deferred] = du;
            la_deferred[deferred++] = la;
        }
    }
    if (deferred == 0) return;
    gpu_profile_mark(m, PHASE_LORA);
    lora_backward_dx(dx, deferred, du_deferred, la_deferred, N, IC, m.stream);
}

// One transformer layer's forward from v.x_in. write_output: also the residual output x_out
// (false when recomputing for the backward).
static void layer_forward(GpuModel& m, const GpuStepOptions& opt, int l, bool write_output) {
    const Config& c = m.cfg;
    const int64_t N = (int64_t)m.B * m.T, C = c.dim, F = c.hidden_dim;
    LayerView v = layer_view(m, l);
    gpu_profile_mark(m, PHASE_ELEMENTWISE);
    rmsnorm_forward(v.xn_attn, v.rstd_attn, v.x_in, m.base.w.attn_norm + l * C, N, (int)C, c.norm_eps, m.stream);
    linear_forward(m, opt, v.q, v.u[LT_Q], v.xn_attn, LT_Q, l, false);
    linear_forward(m, opt, v.k, v.u[LT_K], v.xn_attn, LT_K, l, false);
    linear_forward(m, opt, v.v, v.u[LT_V], v.xn_attn, LT_V, l, false);
    gpu_profile_mark(m, PHASE_ELEMENTWISE);
    rope_forward(v.q, m.d_pos, N, c.n_heads, c.head_dim, c.rope_theta, m.stream);
    rope_forward(v.k, m.d_pos, N, c.n_kv_heads, c.head_dim, c.rope_theta, m.stream);
    gpu_profile_mark(m, PHASE_ATTN_FWD);
    attention_forward(v.ctx, v.lse, v.q, v.k, v.v, m.d_pos, m.B, m.T, c.n_heads, c.n_kv_heads, c.head_dim, m.stream);
    // residual add in the matmul's epilogue: x_mid = x_in, then x_mid += ctx Wo^T (+ LoRA)
    gpu_profile_mark(m, PHASE_ELEMENTWISE);
    cudaCheck(cudaMemcpyAsync(v.x_mid, v.x_in, N * C * 2, cudaMemcpyDeviceToDevice, m.stream));
    linear_forward(m, opt, v.x_mid, v.u[LT_O], v.ctx, LT_O, l, true);
    gpu_profile_mark(m, PHASE_ELEMENTWISE);
    rmsnorm_forward(v.xn_mlp, v.rstd_mlp, v.x_mid, m.base.w.mlp_norm + l * C, N, (int)C, c.norm_eps, m.stream);
    linear_forward(m, opt, v.gate, v.u[LT_GATE], v.xn_mlp, LT_GATE, l, false);
    linear_forward(m, opt, v.up, v.u[LT_UP], v.xn_mlp, LT_UP, l, false);
    gpu_profile_mark(m, PHASE_ELEMENTWISE);
    swiglu_forward(v.hmid, v.gate, v.up, N * F, m.stream);
    if (write_output) {
        cudaCheck(cudaMemcpyAsync(v.x_out, v.x_mid, N * C * 2, cudaMemcpyDeviceToDevice, m.stream));
        linear_forward(m, opt, v.x_out, v.u[LT_DOWN], v.hmid, LT_DOWN, l, true);
    } else {  // recomputing for the backward: x_out is not needed, the down projection's LoRA u is
        gpu_profile_mark(m, PHASE_LORA);
        lora_u_forward(m.blas, v.u[LT_DOWN], m.scr.lora_xd, m.scr.lora_tmp, lora_tmp_floats(m), v.hmid, lora_gpu_args(m, opt, LT_DOWN, l), N, F, m.stream);
    }
}

void gpu_forward(GpuModel& m, const GpuStepOptions& opt, float* logits_out) {
    const Config& c = m.cfg;
    const int64_t N = (int64_t)m.B * m.T, C = c.dim, V = c.vocab_size;
    ASSERT(N > 0, "gpu_set_batch before gpu_forward");
    ASSERT(!opt.training || m.lora.cfg.rank > 0, "training needs LoRA");
    gpu_profile_mark(m, PHASE_ELEMENTWISE);
    embedding_forward(m.acts.x, m.d_tokens, m.base.w.embed, N, (int)C, m.stream);
    for (int l = 0; l < c.n_layers; l++) layer_forward(m, opt, l, true);
    // head: final norm, then the LM head and cross-entropy (and their backward) chunk by chunk
    const bf16* x_last = m.acts.x + (int64_t)c.n_layers * m.max_tokens * C;
    gpu_profile_mark(m, PHASE_ELEMENTWISE);
    rmsnorm_forward(m.acts.xn_final, m.acts.rstd_final, x_last, m.base.w.final_norm, N, (int)C, c.norm_eps, m.stream);
    gpu_profile_mark(m, PHASE_HEAD);
    for (int64_t n0 = 0; n0 < N; n0 += m.head_chunk) {
        const int64_t n = std::min<int64_t>(m.head_chunk, N - n0);
        matmul(m.blas, m.scr.logits, true, m.acts.xn_final + n0 * C, false, m.base.w.lm_head, true, n, V, C, 1.0f, 0.0f, m.stream);
        if (logits_out)
            cudaCheck(cudaMemcpyAsync(logits_out + n0 * V, m.scr.logits, n * V * 4, cudaMemcpyDeviceToDevice, m.stream));
        crossentropy_forward_backward(m.acts.losses + n0, opt.training ? m.scr.dlogits : nullptr, m.scr.logits,
                                      m.d_targets + n0, opt.loss_scale, n, (int)V, m.stream);
        if (opt.training)  // dxn_final (n, C) = dlogits (n, V) lm_head (V, C)
            matmul(m.blas, m.acts.dxn_final + n0 * C, true, m.scr.dlogits, false, m.base.w.lm_head, false, n, C, V, 1.0f, 0.0f,
                   m.stream);
    }
    sum_reduce(m.scr.loss_sum, m.acts.losses, N, false, m.scr.reduce, m.stream);
    if (opt.training) {
        add_scalar(m.scr.step_loss, m.scr.loss_sum, m.stream);
    }
}

void gpu_backward(GpuModel& m, const GpuStepOptions& opt) {
    const Config& c = m.cfg;
    const int64_t N = (int64_t)m.B * m.T, C = c.dim, F = c.hidden_dim;
    ASSERT(opt.training && m.lora.cfg.rank > 0, "backward after a training forward, with LoRA");
    GpuScratch& s = m.scr;
    gpu_profile_mark(m, PHASE_ELEMENTWISE);
    cudaCheck(cudaMemsetAsync(s.dres, 0, N * C * 4, m.stream));
    const bf16* x_last = m.acts.x + (int64_t)c.n_layers * m.max_tokens * C;
    rmsnorm_backward(s.dres, s.dres_bf16, m.acts.dxn_final, x_last, m.acts.rstd_final, m.base.w.final_norm, N, (int)C, m.stream);
    for (int l = c.n_layers - 1; l >= 0; l--) {
        LayerView v = layer_view(m, l);
        if (m.recompute == RECOMPUTE_FULL) {
            layer_forward(m, opt, l, false);
        } else if (m.recompute == RECOMPUTE_LIGHT) {  // the cheap ops, from the stored inputs and statistics
            gpu_profile_mark(m, PHASE_ELEMENTWISE);
            rmsnorm_forward(v.xn_attn, v.rstd_attn, v.x_in, m.base.w.attn_norm + l * C, N, (int)C, c.norm_eps, m.stream);
            rmsnorm_forward(v.xn_mlp, v.rstd_mlp, v.x_mid, m.base.w.mlp_norm + l * C, N, (int)C, c.norm_eps, m.stream);
            swiglu_forward(v.hmid, v.gate, v.up, N * F, m.stream);
        }
        // MLP: x_out = x_mid + down(silu(gate(xn)) * up(xn)); dres holds d x_out
        const bf16* dy_down[1] = {s.dres_bf16};
        linear_backward(m, opt, s.dhmid, dy_down, v.hmid, LT_DOWN, 1, l);
        gpu_profile_mark(m, PHASE_ELEMENTWISE);
        swiglu_backward(s.dgate, s.dup, s.dhmid, v.gate, v.up, N * F, m.stream);
        const bf16* dy_mlp[2] = {s.dgate, s.dup};
        linear_backward(m, opt, s.dxn, dy_mlp, v.xn_mlp, LT_GATE, 2, l);
        gpu_profile_mark(m, PHASE_ELEMENTWISE);
        rmsnorm_backward(s.dres, s.dres_bf16, s.dxn, v.x_mid, v.rstd_mlp, m.base.w.mlp_norm + l * C, N, (int)C, m.stream);
        // attention: x_mid = x_in + o(attention(rope(q), rope(k), v)); dres becomes d x_mid
        const bf16* dy_o[1] = {s.dres_bf16};
        linear_backward(m, opt, s.dctx, dy_o, v.ctx, LT_O, 1, l);
        gpu_profile_mark(m, PHASE_ATTN_BWD);
        attention_backward(s.dq, s.dk, s.dv, s.dctx_bf16, s.delta, s.dctx, v.ctx, v.lse, v.q, v.k, v.v, m.d_pos, m.B, m.T,
                           c.n_heads, c.n_kv_heads, c.head_dim, m.stream);
        gpu_profile_mark(m, PHASE_ELEMENTWISE);
        rope_backward(s.dq, m.d_pos, N, c.n_heads, c.head_dim, c.rope_theta, m.stream);
        rope_backward(s.dk, m.d_pos, N, c.n_kv_heads, c.head_dim, c.rope_theta, m.stream);
        const bf16* dy_qkv[3] = {s.dq, s.dk, s.dv};
        linear_backward(m, opt, s.dxn, dy_qkv, v.xn_attn, LT_Q, 3, l);
        gpu_profile_mark(m, PHASE_ELEMENTWISE);
        rmsnorm_backward(s.dres, s.dres_bf16, s.dxn, v.x_in, v.rstd_attn, m.base.w.attn_norm + l * C, N, (int)C, m.stream);
    }
}

void gpu_optimizer_step(GpuModel& m, float lr, float beta1, float beta2, float eps, float weight_decay, float max_norm,
                        int step) {
    GpuLora& g = m.lora;
    gpu_profile_mark(m, PHASE_OPTIMIZER);
    grad_norm_squared(m.scr.norm_sq, g.grads, g.lay.total, m.scr.reduce, m.stream);
    adamw_update(g.params, g.params_bf16, g.grads, g.adam_m, g.adam_v, g.lay.total, step, lr, beta1, beta2, eps,
                 weight_decay, m.scr.norm_sq, max_norm, m.stream);
}

float gpu_read_loss_sum(GpuModel& m) {
    float v = 0;
    cudaCheck(cudaMemcpyAsync(&v, m.scr.loss_sum, 4, cudaMemcpyDeviceToHost, m.stream));
    cudaCheck(cudaStreamSynchronize(m.stream));
    return v;
}

float gpu_read_step_loss(GpuModel& m) {
    float v = 0;
    cudaCheck(cudaMemcpyAsync(&v, m.scr.step_loss, 4, cudaMemcpyDeviceToHost, m.stream));
    cudaCheck(cudaStreamSynchronize(m.stream));
    return v;
}

float gpu_read_grad_norm(GpuModel& m) {
    float v = 0;
    cudaCheck(cudaMemcpyAsync(&v, m.scr.norm_sq, 4, cudaMemcpyDeviceToHost, m.stream));
    cudaCheck(cudaStreamSynchronize(m.stream));
    return sqrtf(v);
}


// ----------------------------------------------------------------------------------------------
// the profile

const char* phase_name(int phase) {
    static const char* names[NUM_PHASES] = {"frozen GEMMs forward", "frozen GEMMs backward", "NF4 dequantize",
                                            "LoRA (products, dropout, grads)", "attention forward", "attention backward",
                                            "norms, RoPE, SwiGLU, residual", "LM head + cross-entropy",
                                            "optimizer (norm, clip, AdamW)"};
    return names[phase];
}

void gpu_profile_start(GpuModel& m) {
    m.prof.used = 0;
    m.prof.phase_of.clear();
    m.prof.on = true;
}

void gpu_profile_mark_(GpuModel& m, int phase) {
    GpuProfile& p = m.prof;
    if (!p.phase_of.empty() && p.phase_of.back() == phase) return;  // still the same phase
    if (p.used == p.events.size()) {
        cudaEvent_t e;
        cudaCheck(cudaEventCreate(&e));
        p.events.push_back(e);
    }
    cudaCheck(cudaEventRecord(p.events[p.used++], m.stream));
    p.phase_of.push_back(phase);
}

void gpu_profile_stop(GpuModel& m, double ms[NUM_PHASES]) {
    GpuProfile& p = m.prof;
    for (int i = 0; i < NUM_PHASES; i++) ms[i] = 0;
    gpu_profile_mark_(m, NUM_PHASES);  // closes the last phase
    cudaCheck(cudaEventSynchronize(p.events[p.used - 1]));
    for (size_t i = 0; i + 1 < p.used; i++) {
        float t = 0;
        cudaCheck(cudaEventElapsedTime(&t, p.events[i], p.events[i + 1]));
        ms[p.phase_of[i]] += t;
    }
    p.on = false;
}
