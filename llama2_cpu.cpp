// llama2_cpu.cpp — the CPU reference for LoRA/QLoRA fine-tuning of Llama 2, in plain fp32 loops.
//
// Read it top to bottom: each op is one function, its backward right beside it, shapes in the
// comments. The model (Hugging Face's LlamaForCausalLM with PEFT LoRA on all seven linears):
//
//   x = embed[tokens]                                   (N, C)       N = B*T tokens
//   for each layer:
//     xn = rmsnorm(x) * w_attn_norm
//     q, k, v = linear(xn)  (each with its LoRA delta)   (N, H*D), (N, KV*D), (N, KV*D)
//     q, k = rope(q, k)     (HF's rotate_half on the permuted q/k rows)
//     ctx = causal_attention(q, k, v)  (GQA: head h reads kv head h / (H/KV); packed rows)
//     x = x + o(ctx)
//     xn = rmsnorm(x) * w_mlp_norm
//     x = x + down(silu(gate(xn)) * up(xn))
//   logits = lm_head(rmsnorm(x) * w_final_norm)         (N, V)
//   loss = mean cross-entropy over positions that have a target
//
// A LoRA linear computes y = x W^T + (alpha/r) * (dropout(x) A^T) B^T with W frozen; backward
// gives gradients for A and B only and passes dx through W and the LoRA path.
//
// Tested against transformers + peft (test/cpu_reference.cpp, fixtures in ../shared/fixtures),
// against finite differences, and packed rows against one conversation per row.
// Loops are parallel with OpenMP over independent rows only, so results are bitwise
// deterministic for any thread count.
#include "llama2_cpu.h"

#include <algorithm>
#include <cmath>

using namespace cpu;

// ----------------------------------------------------------------------------------------------
// model setup

int64_t CpuModel::lora_A_off(int t, int l) const { return lay.a_offset[t] + (int64_t)l * lora.rank * lora_in_dim(cfg, t); }
int64_t CpuModel::lora_B_off(int t, int l) const { return lay.b_offset[t] + (int64_t)l * lora_out_dim(cfg, t) * lora.rank; }

void cpu_model_init(CpuModel& m, const Config& cfg, std::vector<float> weights) {
    ASSERT((int64_t)weights.size() == total_weight_numel(cfg), "weights size matches the config");
    m.cfg = cfg;
    m.weights_mem = std::move(weights);
    m.w = carve_weights(cfg, m.weights_mem.data());
    m.lora = LoraConfig{0, 1.0f, 0.0f, 0};
    m.lay = LoraLayout{};
    m.lay.total = 0;
    m.lora_params.clear();
    m.lora_grads.clear();
}

void cpu_lora_set(CpuModel& m, const LoraConfig& lc, const std::vector<float>& params) {
    validate_lora_config(lc, "LoRA");
    m.lora = lc;
    m.lay = lora_layout(m.cfg, lc);
    ASSERT((int64_t)params.size() == m.lay.total, "LoRA params size");
    m.lora_params = params;
    m.lora_grads.assign(params.size(), 0.0f);
}

void cpu_lora_init(CpuModel& m, const LoraConfig& lc, uint64_t seed) {
    std::vector<float> params((size_t)lora_layout(m.cfg, lc).total, 0.0f);
    cpu_lora_set(m, lc, params);
    Rng rng(seed);
    for (int t = 0; t < NUM_LORA_TARGETS; t++) {
        if (!m.has_lora(t)) continue;
        // PEFT: kaiming_uniform_(A, a=sqrt(5)) -> U(-1/sqrt(in), 1/sqrt(in)); B = 0, so the
        // adapted model starts out equal to the base model.
        const float bound = 1.0f / sqrtf((float)lora_in_dim(m.cfg, t));
        for (int l = 0; l < m.cfg.n_layers; l++) {
            float* A = m.lora_params.data() + m.lora_A_off(t, l);
            for (int64_t i = 0; i < lc.rank * lora_in_dim(m.cfg, t); i++) A[i] = (2.0f * rng.uniform() - 1.0f) * bound;
        }
    }
}

std::vector<float> cpu_random_weights(const Config& cfg, uint64_t seed) {
    check_host_bytes("the model's fp32 weights", 4.0 * (double)total_weight_numel(cfg));
    std::vector<float> all((size_t)total_weight_numel(cfg));
    Weights<float> w = carve_weights(cfg, all.data());
    Rng rng(seed);
    for (int id = 0; id < NUM_WEIGHTS; id++) {
        int64_t n = weight_numel(cfg, id);
        bool is_norm = id == W_ATTN_NORM || id == W_MLP_NORM || id == W_FINAL_NORM;
        for (int64_t i = 0; i < n; i++) (*w.ptr(id))[i] = is_norm ? 1.0f + 0.1f * rng.normal() : 0.02f * rng.normal();
    }
    return all;
}

// ----------------------------------------------------------------------------------------------
// batches

CpuBatch batch_from_hf_labels(const int32_t* tokens, const int32_t* labels, int B, int T) {
    CpuBatch b;
    b.B = B;
    b.T = T;
    b.tokens.assign(tokens, tokens + (size_t)B * T);
    b.targets.assign((size_t)B * T, -1);
    b.pos.resize((size_t)B * T);
    for (int r = 0; r < B; r++)
        for (int t = 0; t < T; t++) {
            b.pos[r * T + t] = t;
            // HF shifts: logits at t predict labels at t+1
            if (t + 1 < T && labels[r * T + t + 1] != -100) b.targets[r * T + t] = labels[r * T + t + 1];
        }
    return b;
}

CpuBatch batch_from_conversations(const Dataset& d, const std::vector<std::vector<int64_t>>& rows) {
    CpuBatch b;
    b.B = (int)rows.size();
    b.T = 0;
    for (const auto& row : rows) {
        int64_t len = 0;
        for (int64_t c : row) len += d.conv_len(c);
        b.T = std::max<int>(b.T, (int)len);
    }
    const size_t N = (size_t)b.B * b.T;
    b.tokens.assign(N, d.header.eos_id);
    b.targets.assign(N, -1);
    b.pos.assign(N, 0);
    for (int r = 0; r < b.B; r++) {
        int j = 0, last_pos = 0;
        for (int64_t c : rows[r]) {
            const int64_t begin = d.conv_offsets[c], end = d.conv_offsets[c + 1];
            for (int64_t s = begin; s < end; s++, j++) {
                b.tokens[r * b.T + j] = d.tokens[s];
                b.pos[r * b.T + j] = last_pos = (int)(s - begin);
                if (s + 1 < end && d.loss_mask[s + 1]) b.targets[r * b.T + j] = d.tokens[s + 1];
            }
        }
        // padding continues the last conversation's positions: it sees that conversation but
        // nothing sees it (causal) and it has no target, so it changes no loss or gradient
        for (; j < b.T; j++) b.pos[r * b.T + j] = ++last_pos;
    }
    return b;
}

// ----------------------------------------------------------------------------------------------
// activations

void cpu_acts_init(CpuActs& a, const CpuModel& m, int B, int T) {
    const Config& c = m.cfg;
    const int64_t N = (int64_t)B * T, L = c.n_layers, C = c.dim, F = c.hidden_dim;
    const int64_t QD = (int64_t)c.n_heads * c.head_dim, KVD = (int64_t)c.n_kv_heads * c.head_dim;
    const int64_t r = std::max(m.lora.rank, 0);
    const int64_t sizes[] = {
        (L + 1) * N * C,                    // x
        L * N,                              // rstd_attn
        L * N * C,                          // xn_attn
        L * N * QD,                         // q
        L * N * KVD,                        // k
        L * N * KVD,                        // v
        L * B * c.n_heads * (int64_t)T * T, // att
        L * N * QD,                         // ctx
        L * N * C,                          // x_mid
        L * N,                              // rstd_mlp
        L * N * C,                          // xn_mlp
        L * N * F,                          // gate
        L * N * F,                          // up
        L * N * F,                          // hmid
        L * NUM_LORA_TARGETS * N * r,       // lora_u
        N,                                  // rstd_final
        N * C,                              // xn_final
        N * c.vocab_size,                   // logits
    };
    float** ptrs[] = {&a.x,   &a.rstd_attn, &a.xn_attn, &a.q,    &a.k,      &a.v,      &a.att,
                      &a.ctx, &a.x_mid,     &a.rstd_mlp, &a.xn_mlp, &a.gate, &a.up, &a.hmid,
                      &a.lora_u, &a.rstd_final, &a.xn_final, &a.logits};
    static_assert(sizeof(sizes) / sizeof(sizes[0]) == sizeof(ptrs) / sizeof(ptrs[0]), "one size per pointer");
    int64_t total = 0;
    for (int64_t s : sizes) total += s;
    a.B = B;
    a.T = T;
    a.mem.assign((size_t)total, 0.0f);
    float* p = a.mem.data();
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        *ptrs[i] = p;
        p += sizes[i];
    }
}

namespace cpu {

// ----------------------------------------------------------------------------------------------
// embedding: out = embed[tokens]. The embedding is frozen: no backward.   GPU: kernels/embedding.cu

void embedding_forward(float* out, const int32_t* tokens, const float* embed, int64_t N, int64_t C) {
    for (int64_t n = 0; n < N; n++) memcpy(out + n * C, embed + (int64_t)tokens[n] * C, C * sizeof(float));
}

// ----------------------------------------------------------------------------------------------
// matmul: out = inp W^T, W frozen (out_dim, in_dim) as nn.Linear stores it

// out (N, OC) = inp (N, IC) W^T, W (OC, IC)
void matmul_forward(float* out, const float* inp, const float* W, int64_t N, int64_t IC, int64_t OC) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float* x = inp + n * IC;
        for (int64_t o = 0; o < OC; o++) {
            const float* w = W + o * IC;
            float acc = 0.0f;
            for (int64_t i = 0; i < IC; i++) acc += x[i] * w[i];
            out[n * OC + o] = acc;
        }
    }
}

// dinp (N, IC) += dout (N, OC) W. No dW: the base weights are frozen.
void matmul_backward_input(float* dinp, const float* dout, const float* W, int64_t N, int64_t IC, int64_t OC) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        float* dx = dinp + n * IC;
        for (int64_t o = 0; o < OC; o++) {
            const float d = dout[n * OC + o];
            const float* w = W + o * IC;
            for (int64_t i = 0; i < IC; i++) dx[i] += d * w[i];
        }
    }
}

// ----------------------------------------------------------------------------------------------
// LoRA linear: y = x W^T + s * (drop(x) A^T) B^T
// drop(x) = x * keep / (1 - p), keep drawn by dropout_keep() from (seed, mask id, element index), so
// the backward recomputes the mask instead of storing a copy of x.


// the dropout multiplier of element (n, i): 0 or 1/(1-p)
static inline float dropout_mult(const LoraArgs& la, int64_t n, int64_t i, int64_t IC) {
    if (la.p == 0.0f) return 1.0f;
    return dropout_keep(la.seed, la.mask_id, (uint64_t)(n * IC + i), la.p) ? 1.0f / (1.0f - la.p) : 0.0f;
}

// y (N, OC), u (N, r) saved for the backward, x (N, IC)
void linear_lora_forward(float* y, float* u, const float* x, const float* W, const LoraArgs& la, int64_t N,
                                int64_t IC, int64_t OC) {
    matmul_forward(y, x, W, N, IC, OC);
    if (!la.A) return;
    const int r = la.r;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        for (int j = 0; j < r; j++) {  // u = drop(x) A^T
            float acc = 0.0f;
            for (int64_t i = 0; i < IC; i++) acc += x[n * IC + i] * dropout_mult(la, n, i, IC) * la.A[j * IC + i];
            u[n * r + j] = acc;
        }
        for (int64_t o = 0; o < OC; o++) {  // y += s * u B^T
            float acc = 0.0f;
            for (int j = 0; j < r; j++) acc += u[n * r + j] * la.B[o * r + j];
            y[n * OC + o] += la.scale * acc;
        }
    }
}

// dx (N, IC) += dy W + (du A) * dropout;  dA (r, IC) += du^T drop(x);  dB (OC, r) += s dy^T u
// with du (N, r) = s dy B.
void linear_lora_backward(float* dx, float* dA, float* dB, const float* dy, const float* x, const float* u,
                                 const float* W, const LoraArgs& la, int64_t N, int64_t IC, int64_t OC) {
    matmul_backward_input(dx, dy, W, N, IC, OC);
    if (!la.A) return;
    const int r = la.r;
    std::vector<float> du((size_t)N * r);  // (N, r)
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++)
        for (int j = 0; j < r; j++) {
            float acc = 0.0f;
            for (int64_t o = 0; o < OC; o++) acc += dy[n * OC + o] * la.B[o * r + j];
            du[n * r + j] = la.scale * acc;
        }
    // parameter gradients: parallel over their rows, sequential over tokens (deterministic)
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < OC; o++)
        for (int j = 0; j < r; j++) {
            float acc = 0.0f;
            for (int64_t n = 0; n < N; n++) acc += dy[n * OC + o] * u[n * r + j];
            dB[o * r + j] += la.scale * acc;
        }
#pragma omp parallel for schedule(static)
    for (int j = 0; j < r; j++) {
        for (int64_t n = 0; n < N; n++) {
            const float d = du[n * r + j];
            for (int64_t i = 0; i < IC; i++) dA[j * IC + i] += d * x[n * IC + i] * dropout_mult(la, n, i, IC);
        }
    }
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++)
        for (int64_t i = 0; i < IC; i++) {
            float acc = 0.0f;
            for (int j = 0; j < r; j++) acc += du[n * r + j] * la.A[j * IC + i];
            dx[n * IC + i] += acc * dropout_mult(la, n, i, IC);
        }
}

// ----------------------------------------------------------------------------------------------
// RMSNorm: y = x / sqrt(mean(x^2) + eps) * w   (HF's LlamaRMSNorm, all in fp32 here)

// y (N, C), rstd (N), x (N, C), w (C)
void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int64_t N, int64_t C, float eps) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float* xr = x + n * C;
        float ss = 0.0f;
        for (int64_t i = 0; i < C; i++) ss += xr[i] * xr[i];
        const float s = 1.0f / sqrtf(ss / (float)C + eps);
        rstd[n] = s;
        for (int64_t i = 0; i < C; i++) y[n * C + i] = w[i] * (xr[i] * s);
    }
}

// dx (N, C) += d/dx of y given dy. With xhat = x*rstd: dx = rstd * (dy*w - xhat * mean(dy*w*xhat))
void rmsnorm_backward(float* dx, const float* dy, const float* x, const float* rstd, const float* w, int64_t N,
                             int64_t C) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float s = rstd[n];
        float dot = 0.0f;
        for (int64_t i = 0; i < C; i++) dot += dy[n * C + i] * w[i] * x[n * C + i] * s;
        const float mean = dot / (float)C;
        for (int64_t i = 0; i < C; i++) dx[n * C + i] += s * (dy[n * C + i] * w[i] - x[n * C + i] * s * mean);
    }
}

// ----------------------------------------------------------------------------------------------
// RoPE, HF's rotate_half form: dimension i pairs with i + D/2 (HF's checkpoints permute q/k rows
// so that this equals Meta's interleaved form). Angles are computed in fp32 exactly as
// transformers does: inv_freq = 1 / theta^(2i/D), angle = pos * inv_freq.

void rope_tables(std::vector<float>& cos_t, std::vector<float>& sin_t, const int32_t* pos, int64_t N, int D,
                        float theta) {
    const int half = D / 2;
    std::vector<float> inv_freq(half);
    for (int i = 0; i < half; i++) inv_freq[i] = 1.0f / powf(theta, (float)(2 * i) / (float)D);
    cos_t.resize((size_t)N * half);
    sin_t.resize((size_t)N * half);
    for (int64_t n = 0; n < N; n++)
        for (int i = 0; i < half; i++) {
            const float angle = (float)pos[n] * inv_freq[i];
            cos_t[n * half + i] = cosf(angle);
            sin_t[n * half + i] = sinf(angle);
        }
}

// in place on x (N, n_heads*D): (a, b) -> (a cos - b sin, b cos + a sin)
void rope_forward(float* x, const float* cos_t, const float* sin_t, int64_t N, int n_heads, int D) {
    const int half = D / 2;
    for (int64_t n = 0; n < N; n++)
        for (int h = 0; h < n_heads; h++) {
            float* v = x + (n * n_heads + h) * D;
            for (int i = 0; i < half; i++) {
                const float c = cos_t[n * half + i], s = sin_t[n * half + i], a = v[i], b = v[i + half];
                v[i] = a * c - b * s;
                v[i + half] = b * c + a * s;
            }
        }
}

// in place on dx: the transpose of the rotation, (da, db) -> (da cos + db sin, db cos - da sin)
void rope_backward(float* dx, const float* cos_t, const float* sin_t, int64_t N, int n_heads, int D) {
    const int half = D / 2;
    for (int64_t n = 0; n < N; n++)
        for (int h = 0; h < n_heads; h++) {
            float* v = dx + (n * n_heads + h) * D;
            for (int i = 0; i < half; i++) {
                const float c = cos_t[n * half + i], s = sin_t[n * half + i], da = v[i], db = v[i + half];
                v[i] = da * c + db * s;
                v[i + half] = db * c - da * s;
            }
        }
}

// ----------------------------------------------------------------------------------------------
// causal attention over packed rows with grouped-query attention.
// Query t of a row attends keys s in [t - pos[t], t]: its own conversation, up to itself.

// ctx (B, T, H*D), att (B, H, T, T) probabilities; q (B, T, H*D), k, v (B, T, KV*D)
void attention_forward(float* ctx, float* att, const float* q, const float* k, const float* v,
                              const int32_t* pos, int B, int T, int H, int KV, int D) {
    const float scale = 1.0f / sqrtf((float)D);
    const int group = H / KV;  // query heads per kv head
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const int kvh = h / group;
            for (int t = 0; t < T; t++) {
                const int start = t - pos[b * T + t];
                const float* qt = q + ((int64_t)(b * T + t) * H + h) * D;
                float* p = att + (((int64_t)b * H + h) * T + t) * T;  // (T) this query's row
                float maxv = -INFINITY;
                for (int s = start; s <= t; s++) {
                    const float* ks = k + ((int64_t)(b * T + s) * KV + kvh) * D;
                    float dot = 0.0f;
                    for (int i = 0; i < D; i++) dot += qt[i] * ks[i];
                    p[s] = dot * scale;
                    maxv = std::max(maxv, p[s]);
                }
                float sum = 0.0f;
                for (int s = start; s <= t; s++) {
                    p[s] = expf(p[s] - maxv);
                    sum += p[s];
                }
                for (int s = 0; s < T; s++) p[s] = (s >= start && s <= t) ? p[s] / sum : 0.0f;
                float* out = ctx + ((int64_t)(b * T + t) * H + h) * D;
                for (int i = 0; i < D; i++) out[i] = 0.0f;
                for (int s = start; s <= t; s++) {
                    const float* vs = v + ((int64_t)(b * T + s) * KV + kvh) * D;
                    for (int i = 0; i < D; i++) out[i] += p[s] * vs[i];
                }
            }
        }
}

// dq (B,T,H*D) =, dk, dv (B,T,KV*D) = (overwritten) from dctx (B,T,H*D).
// With P the probabilities: dV = P^T dctx; dP = dctx V^T; dS = P * (dP - rowsum(P * dP)); dQ = dS K s;
// dK = dS^T Q s. One thread per (row, kv head) owns that kv head's dk/dv: no races.
void attention_backward(float* dq, float* dk, float* dv, const float* dctx, const float* att, const float* q,
                               const float* k, const float* v, const int32_t* pos, int B, int T, int H, int KV, int D) {
    const float scale = 1.0f / sqrtf((float)D);
    const int group = H / KV;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int kvh = 0; kvh < KV; kvh++) {
            std::vector<float> dp(T);
            for (int t = 0; t < T; t++)
                for (int i = 0; i < D; i++) {
                    dk[((int64_t)(b * T + t) * KV + kvh) * D + i] = 0.0f;
                    dv[((int64_t)(b * T + t) * KV + kvh) * D + i] = 0.0f;
                }
            for (int h = kvh * group; h < (kvh + 1) * group; h++)
                for (int t = 0; t < T; t++) {
                    const int start = t - pos[b * T + t];
                    const float* p = att + (((int64_t)b * H + h) * T + t) * T;
                    const float* dout = dctx + ((int64_t)(b * T + t) * H + h) * D;
                    const float* qt = q + ((int64_t)(b * T + t) * H + h) * D;
                    float* dqt = dq + ((int64_t)(b * T + t) * H + h) * D;
                    float rowsum = 0.0f;
                    for (int s = start; s <= t; s++) {
                        const float* vs = v + ((int64_t)(b * T + s) * KV + kvh) * D;
                        float* dvs = dv + ((int64_t)(b * T + s) * KV + kvh) * D;
                        float d = 0.0f;
                        for (int i = 0; i < D; i++) {
                            d += dout[i] * vs[i];
                            dvs[i] += p[s] * dout[i];
                        }
                        dp[s] = d;
                        rowsum += p[s] * d;
                    }
                    for (int i = 0; i < D; i++) dqt[i] = 0.0f;
                    for (int s = start; s <= t; s++) {
                        const float ds = p[s] * (dp[s] - rowsum) * scale;
                        const float* ks = k + ((int64_t)(b * T + s) * KV + kvh) * D;
                        float* dks = dk + ((int64_t)(b * T + s) * KV + kvh) * D;
                        for (int i = 0; i < D; i++) {
                            dqt[i] += ds * ks[i];
                            dks[i] += ds * qt[i];
                        }
                    }
                }
        }
}

// ----------------------------------------------------------------------------------------------
// SwiGLU: h = silu(g) * u, silu(g) = g * sigmoid(g)

void swiglu_forward(float* h, const float* g, const float* u, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) h[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

// dg, du (overwritten) from dh: d silu(g)/dg = sig(g) * (1 + g * (1 - sig(g)))
void swiglu_backward(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float sig = 1.0f / (1.0f + expf(-g[i]));
        du[i] = dh[i] * g[i] * sig;
        dg[i] = dh[i] * u[i] * sig * (1.0f + g[i] * (1.0f - sig));
    }
}

// ----------------------------------------------------------------------------------------------
// cross-entropy over logits (N, V); targets -1 contribute nothing.

// returns the sum of -log softmax(logits)[target] over positions with a target
double crossentropy_forward(int64_t* n_targets, const float* logits, const int32_t* targets, int64_t N, int64_t V) {
    double sum = 0.0;
    int64_t count = 0;
    for (int64_t n = 0; n < N; n++) {
        if (targets[n] < 0) continue;
        const float* row = logits + n * V;
        float maxv = -INFINITY;
        for (int64_t i = 0; i < V; i++) maxv = std::max(maxv, row[i]);
        float s = 0.0f;
        for (int64_t i = 0; i < V; i++) s += expf(row[i] - maxv);
        sum += (double)(logf(s) + maxv - row[targets[n]]);
        count++;
    }
    *n_targets = count;
    return sum;
}

// dlogits (N, V) = scale * (softmax(logits) - onehot(target)), 0 on rows without a target
void crossentropy_backward(float* dlogits, const float* logits, const int32_t* targets, float scale, int64_t N,
                                  int64_t V) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        float* d = dlogits + n * V;
        if (targets[n] < 0) {
            for (int64_t i = 0; i < V; i++) d[i] = 0.0f;
            continue;
        }
        const float* row = logits + n * V;
        float maxv = -INFINITY;
        for (int64_t i = 0; i < V; i++) maxv = std::max(maxv, row[i]);
        float s = 0.0f;
        for (int64_t i = 0; i < V; i++) s += expf(row[i] - maxv);
        for (int64_t i = 0; i < V; i++) d[i] = scale * (expf(row[i] - maxv) / s - (i == targets[n] ? 1.0f : 0.0f));
    }
}

}  // namespace cpu

// ----------------------------------------------------------------------------------------------
// the model

static cpu::LoraArgs lora_args(const CpuModel& m, const CpuStepOptions& opt, int t, int l) {
    cpu::LoraArgs la{nullptr, nullptr, 0, 0.0f, 0.0f, opt.dropout_seed, (uint64_t)l * NUM_LORA_TARGETS + t};
    if (!opt.use_lora || !m.has_lora(t)) return la;
    la.A = m.lora_params.data() + m.lora_A_off(t, l);
    la.B = m.lora_params.data() + m.lora_B_off(t, l);
    la.r = m.lora.rank;
    la.scale = m.lora.scaling();
    la.p = opt.training ? m.lora.dropout : 0.0f;
    return la;
}

// Views of one layer's activations.
struct LayerActs {
    float *x_in, *rstd_attn, *xn_attn, *q, *k, *v, *att, *ctx, *x_mid, *rstd_mlp, *xn_mlp, *gate, *up, *hmid, *x_out;
    float* u[NUM_LORA_TARGETS];  // (N, r)
};
static LayerActs layer_acts(const CpuModel& m, CpuActs& a, int l) {
    const Config& c = m.cfg;
    const int64_t N = (int64_t)a.B * a.T, C = c.dim, F = c.hidden_dim, r = std::max(m.lora.rank, 0);
    const int64_t QD = (int64_t)c.n_heads * c.head_dim, KVD = (int64_t)c.n_kv_heads * c.head_dim;
    LayerActs la;
    la.x_in = a.x + l * N * C;
    la.x_out = a.x + (l + 1) * N * C;
    la.rstd_attn = a.rstd_attn + l * N;
    la.xn_attn = a.xn_attn + l * N * C;
    la.q = a.q + l * N * QD;
    la.k = a.k + l * N * KVD;
    la.v = a.v + l * N * KVD;
    la.att = a.att + l * (int64_t)a.B * c.n_heads * a.T * a.T;
    la.ctx = a.ctx + l * N * QD;
    la.x_mid = a.x_mid + l * N * C;
    la.rstd_mlp = a.rstd_mlp + l * N;
    la.xn_mlp = a.xn_mlp + l * N * C;
    la.gate = a.gate + l * N * F;
    la.up = a.up + l * N * F;
    la.hmid = a.hmid + l * N * F;
    for (int t = 0; t < NUM_LORA_TARGETS; t++) la.u[t] = a.lora_u + ((int64_t)l * NUM_LORA_TARGETS + t) * N * r;
    return la;
}

// The frozen weight of LoRA target t in layer l: (out_t, in_t)
static const float* layer_weight(const CpuModel& m, int t, int l) {
    const int id = lora_target_weight(t);
    return m.w.ptr(id)[0] + (int64_t)l * weight_info(m.cfg, id).numel();
}

float cpu_forward(const CpuModel& m, CpuActs& a, const CpuBatch& b, const CpuStepOptions& opt) {
    const Config& c = m.cfg;
    ASSERT(a.B == b.B && a.T == b.T, "activations sized for this batch (cpu_acts_init)");
    const int B = b.B, T = b.T, H = c.n_heads, KV = c.n_kv_heads, D = c.head_dim;
    const int64_t N = (int64_t)B * T, C = c.dim, F = c.hidden_dim, V = c.vocab_size;
    const int64_t QD = (int64_t)H * D, KVD = (int64_t)KV * D;
    for (int64_t n = 0; n < N; n++)
        ASSERT(b.tokens[n] >= 0 && b.tokens[n] < V && b.targets[n] < V && b.pos[n] >= 0 && b.pos[n] <= n % T,
               "batch ids and positions in range");

    std::vector<float> cos_t, sin_t;
    rope_tables(cos_t, sin_t, b.pos.data(), N, D, c.rope_theta);

    embedding_forward(a.x, b.tokens.data(), m.w.embed, N, C);  // x[0] (N, C)

    std::vector<float> tmp((size_t)(N * std::max(C, F)));  // (N, C) or (N, F) linear outputs
    for (int l = 0; l < c.n_layers; l++) {
        LayerActs la = layer_acts(m, a, l);
        // attention block
        rmsnorm_forward(la.xn_attn, la.rstd_attn, la.x_in, m.w.attn_norm + l * C, N, C, c.norm_eps);
        linear_lora_forward(la.q, la.u[LT_Q], la.xn_attn, layer_weight(m, LT_Q, l), lora_args(m, opt, LT_Q, l), N, C, QD);
        linear_lora_forward(la.k, la.u[LT_K], la.xn_attn, layer_weight(m, LT_K, l), lora_args(m, opt, LT_K, l), N, C, KVD);
        linear_lora_forward(la.v, la.u[LT_V], la.xn_attn, layer_weight(m, LT_V, l), lora_args(m, opt, LT_V, l), N, C, KVD);
        rope_forward(la.q, cos_t.data(), sin_t.data(), N, H, D);
        rope_forward(la.k, cos_t.data(), sin_t.data(), N, KV, D);
        attention_forward(la.ctx, la.att, la.q, la.k, la.v, b.pos.data(), B, T, H, KV, D);
        linear_lora_forward(tmp.data(), la.u[LT_O], la.ctx, layer_weight(m, LT_O, l), lora_args(m, opt, LT_O, l), N, QD, C);
        for (int64_t i = 0; i < N * C; i++) la.x_mid[i] = la.x_in[i] + tmp[i];
        // MLP block
        rmsnorm_forward(la.xn_mlp, la.rstd_mlp, la.x_mid, m.w.mlp_norm + l * C, N, C, c.norm_eps);
        linear_lora_forward(la.gate, la.u[LT_GATE], la.xn_mlp, layer_weight(m, LT_GATE, l), lora_args(m, opt, LT_GATE, l), N, C, F);
        linear_lora_forward(la.up, la.u[LT_UP], la.xn_mlp, layer_weight(m, LT_UP, l), lora_args(m, opt, LT_UP, l), N, C, F);
        swiglu_forward(la.hmid, la.gate, la.up, N * F);
        linear_lora_forward(tmp.data(), la.u[LT_DOWN], la.hmid, layer_weight(m, LT_DOWN, l), lora_args(m, opt, LT_DOWN, l), N, F, C);
        for (int64_t i = 0; i < N * C; i++) la.x_out[i] = la.x_mid[i] + tmp[i];
    }
    // head
    const float* x_last = a.x + (int64_t)c.n_layers * N * C;
    rmsnorm_forward(a.xn_final, a.rstd_final, x_last, m.w.final_norm, N, C, c.norm_eps);
    matmul_forward(a.logits, a.xn_final, m.w.lm_head, N, C, V);
    a.loss_sum = crossentropy_forward(&a.n_targets, a.logits, b.targets.data(), N, V);
    return a.n_targets ? (float)(a.loss_sum / (double)a.n_targets) : 0.0f;
}

void cpu_backward(CpuModel& m, CpuActs& a, const CpuBatch& b, const CpuStepOptions& opt, float loss_scale) {
    const Config& c = m.cfg;
    ASSERT(m.lora.rank > 0, "backward needs LoRA parameters (cpu_lora_init / cpu_lora_set)");
    ASSERT(a.B == b.B && a.T == b.T, "activations from the forward of this batch");
    const int B = b.B, T = b.T, H = c.n_heads, KV = c.n_kv_heads, D = c.head_dim;
    const int64_t N = (int64_t)B * T, C = c.dim, F = c.hidden_dim, V = c.vocab_size;
    const int64_t QD = (int64_t)H * D, KVD = (int64_t)KV * D;

    std::vector<float> cos_t, sin_t;
    rope_tables(cos_t, sin_t, b.pos.data(), N, D, c.rope_theta);

    // gradient buffers (N tokens)
    std::vector<float> dlogits((size_t)(N * V));                     // (N, V)
    std::vector<float> dx((size_t)(N * C), 0.0f);                    // (N, C) gradient of the residual stream
    std::vector<float> dxn((size_t)(N * C));                         // (N, C) gradient of a norm's output
    std::vector<float> dq((size_t)(N * QD)), dctx((size_t)(N * QD)); // (N, H*D)
    std::vector<float> dk((size_t)(N * KVD)), dv((size_t)(N * KVD)); // (N, KV*D)
    std::vector<float> dhmid((size_t)(N * F)), dgate((size_t)(N * F)), dup((size_t)(N * F));  // (N, F)

    // head: loss -> logits -> xn_final -> x[L]
    crossentropy_backward(dlogits.data(), a.logits, b.targets.data(), loss_scale, N, V);
    std::fill(dxn.begin(), dxn.end(), 0.0f);
    matmul_backward_input(dxn.data(), dlogits.data(), m.w.lm_head, N, C, V);
    rmsnorm_backward(dx.data(), dxn.data(), a.x + (int64_t)c.n_layers * N * C, a.rstd_final, m.w.final_norm, N, C);

    auto dA = [&](int t, int l) { return m.has_lora(t) && opt.use_lora ? m.lora_grads.data() + m.lora_A_off(t, l) : nullptr; };
    auto dB = [&](int t, int l) { return m.has_lora(t) && opt.use_lora ? m.lora_grads.data() + m.lora_B_off(t, l) : nullptr; };

    for (int l = c.n_layers - 1; l >= 0; l--) {
        LayerActs la = layer_acts(m, a, l);
        // MLP block: x_out = x_mid + down(hmid); dx holds d x_out and becomes d x_mid
        std::fill(dhmid.begin(), dhmid.end(), 0.0f);
        linear_lora_backward(dhmid.data(), dA(LT_DOWN, l), dB(LT_DOWN, l), dx.data(), la.hmid, la.u[LT_DOWN],
                             layer_weight(m, LT_DOWN, l), lora_args(m, opt, LT_DOWN, l), N, F, C);
        swiglu_backward(dgate.data(), dup.data(), dhmid.data(), la.gate, la.up, N * F);
        std::fill(dxn.begin(), dxn.end(), 0.0f);
        linear_lora_backward(dxn.data(), dA(LT_GATE, l), dB(LT_GATE, l), dgate.data(), la.xn_mlp, la.u[LT_GATE],
                             layer_weight(m, LT_GATE, l), lora_args(m, opt, LT_GATE, l), N, C, F);
        linear_lora_backward(dxn.data(), dA(LT_UP, l), dB(LT_UP, l), dup.data(), la.xn_mlp, la.u[LT_UP],
                             layer_weight(m, LT_UP, l), lora_args(m, opt, LT_UP, l), N, C, F);
        rmsnorm_backward(dx.data(), dxn.data(), la.x_mid, la.rstd_mlp, m.w.mlp_norm + l * C, N, C);
        // attention block: x_mid = x_in + o(ctx); dx becomes d x_in
        std::fill(dctx.begin(), dctx.end(), 0.0f);
        linear_lora_backward(dctx.data(), dA(LT_O, l), dB(LT_O, l), dx.data(), la.ctx, la.u[LT_O],
                             layer_weight(m, LT_O, l), lora_args(m, opt, LT_O, l), N, QD, C);
        attention_backward(dq.data(), dk.data(), dv.data(), dctx.data(), la.att, la.q, la.k, la.v, b.pos.data(), B, T,
                           H, KV, D);
        rope_backward(dq.data(), cos_t.data(), sin_t.data(), N, H, D);
        rope_backward(dk.data(), cos_t.data(), sin_t.data(), N, KV, D);
        std::fill(dxn.begin(), dxn.end(), 0.0f);
        linear_lora_backward(dxn.data(), dA(LT_Q, l), dB(LT_Q, l), dq.data(), la.xn_attn, la.u[LT_Q],
                             layer_weight(m, LT_Q, l), lora_args(m, opt, LT_Q, l), N, C, QD);
        linear_lora_backward(dxn.data(), dA(LT_K, l), dB(LT_K, l), dk.data(), la.xn_attn, la.u[LT_K],
                             layer_weight(m, LT_K, l), lora_args(m, opt, LT_K, l), N, C, KVD);
        linear_lora_backward(dxn.data(), dA(LT_V, l), dB(LT_V, l), dv.data(), la.xn_attn, la.u[LT_V],
                             layer_weight(m, LT_V, l), lora_args(m, opt, LT_V, l), N, C, KVD);
        rmsnorm_backward(dx.data(), dxn.data(), la.x_in, la.rstd_attn, m.w.attn_norm + l * C, N, C);
    }
    // the embedding is frozen: the gradient stops here
}

// ----------------------------------------------------------------------------------------------
// optimizer

void cpu_adamw_update(float* params, const float* grads, float* m, float* v, int64_t n, int step, const AdamWConfig& cfg) {
    // bias corrections in double, as torch computes them from Python floats
    const double bc1 = 1.0 - std::pow((double)cfg.beta1, step);
    const double bc2_sqrt = std::sqrt(1.0 - std::pow((double)cfg.beta2, step));
    const float step_size = (float)(cfg.lr / bc1);
    const float decay = 1.0f - cfg.lr * cfg.weight_decay;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float g = grads[i];
        params[i] *= decay;                                  // decoupled weight decay, before the step
        m[i] += (1.0f - cfg.beta1) * (g - m[i]);             // torch: exp_avg.lerp_(grad, 1 - beta1)
        v[i] = cfg.beta2 * v[i] + (1.0f - cfg.beta2) * g * g;
        const float denom = sqrtf(v[i]) / (float)bc2_sqrt + cfg.eps;
        params[i] -= step_size * m[i] / denom;
    }
}

float cpu_grad_norm(const float* g, int64_t n) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += (double)g[i] * g[i];
    return (float)std::sqrt(ss);
}

float cpu_clip_grad_norm(float* g, int64_t n, float max_norm) {
    const float norm = cpu_grad_norm(g, n);
    const float coef = max_norm / (norm + 1e-6f);
    if (coef < 1.0f)
        for (int64_t i = 0; i < n; i++) g[i] *= coef;
    return norm;
}

// ==============================================================================================
// KV-cached decoding (./sample). The forward above, reorganised for generation: the tokens of one
// call are n new positions after c.len cached ones. Every op is the one cpu_forward uses, called
// on the new rows only, and the attention below does cpu::attention_forward's arithmetic in the
// same order over the cached keys, so the logits equal cpu_forward's at every position (the tests
// check it to 1e-5).

static void lora_clear(CpuModel& m) {
    m.lora = LoraConfig{0, 1.0f, 0.0f, 0};
    m.lay = LoraLayout{};
    m.lay.total = 0;
    m.lora_params.clear();
    m.lora_grads.clear();
}

void cpu_kv_cache_init(CpuKVCache& c, const Config& cfg, int max_T) {
    ASSERT(max_T >= 1, "a cache of at least one position");
    c.max_T = max_T;
    c.len = 0;
    const size_t n = (size_t)cfg.n_layers * max_T * cfg.n_kv_heads * cfg.head_dim;
    c.k.assign(n, 0.0f);
    c.v.assign(n, 0.0f);
}

// ctx (n, H*D) of n new queries q (n, H*D) at positions start .. start+n-1, over one layer's cached
// keys kc and values vc (max_T, KV*D) that already include the new positions.
static void attention_cached(float* ctx, const float* q, const float* kc, const float* vc, int start, int n, int H,
                             int KV, int D) {
    const float scale = 1.0f / sqrtf((float)D);
    const int group = H / KV;
#pragma omp parallel for collapse(2) schedule(static)
    for (int i = 0; i < n; i++)
        for (int h = 0; h < H; h++) {
            const int t = start + i, kvh = h / group;
            const float* qt = q + ((int64_t)i * H + h) * D;
            std::vector<float> p((size_t)t + 1);  // this query's probabilities over positions 0..t
            float maxv = -INFINITY;
            for (int s = 0; s <= t; s++) {
                const float* ks = kc + ((int64_t)s * KV + kvh) * D;
                float dot = 0.0f;
                for (int d = 0; d < D; d++) dot += qt[d] * ks[d];
                p[s] = dot * scale;
                maxv = std::max(maxv, p[s]);
            }
            float sum = 0.0f;
            for (int s = 0; s <= t; s++) {
                p[s] = expf(p[s] - maxv);
                sum += p[s];
            }
            for (int s = 0; s <= t; s++) p[s] = p[s] / sum;
            float* out = ctx + ((int64_t)i * H + h) * D;
            for (int d = 0; d < D; d++) out[d] = 0.0f;
            for (int s = 0; s <= t; s++) {
                const float* vs = vc + ((int64_t)s * KV + kvh) * D;
                for (int d = 0; d < D; d++) out[d] += p[s] * vs[d];
            }
        }
}

void cpu_forward_cached(const CpuModel& m, CpuKVCache& c, const int32_t* tokens, int n, float* logits, bool all_logits) {
    const Config& cfg = m.cfg;
    ASSERT(n >= 1 && c.len + n <= c.max_T, "room in the KV cache (the caller limits the length)");
    const int H = cfg.n_heads, KV = cfg.n_kv_heads, D = cfg.head_dim, start = c.len;
    const int64_t C = cfg.dim, F = cfg.hidden_dim, V = cfg.vocab_size;
    const int64_t QD = (int64_t)H * D, KVD = (int64_t)KV * D, r = std::max(m.lora.rank, 1);
    for (int i = 0; i < n; i++) ASSERT(tokens[i] >= 0 && tokens[i] < V, "token ids inside the vocabulary");

    std::vector<int32_t> pos((size_t)n);
    for (int i = 0; i < n; i++) pos[(size_t)i] = start + i;
    std::vector<float> cos_t, sin_t;
    rope_tables(cos_t, sin_t, pos.data(), n, D, cfg.rope_theta);

    std::vector<float> x((size_t)(n * C)), xn((size_t)(n * C)), rstd((size_t)n);  // (n, C), (n)
    std::vector<float> q((size_t)(n * QD)), ctx((size_t)(n * QD));                 // (n, H*D)
    std::vector<float> k((size_t)(n * KVD)), v((size_t)(n * KVD));                 // (n, KV*D)
    std::vector<float> gate((size_t)(n * F)), up((size_t)(n * F)), hmid((size_t)(n * F));  // (n, F)
    std::vector<float> tmp((size_t)(n * C)), u((size_t)(n * r));                   // (n, C), (n, r)
    CpuStepOptions opt;  // LoRA on if the model has it, no dropout
    cpu::embedding_forward(x.data(), tokens, m.w.embed, n, C);

    for (int l = 0; l < cfg.n_layers; l++) {
        float* kc = c.k.data() + (int64_t)l * c.max_T * KVD;  // (max_T, KV*D) this layer's cache
        float* vc = c.v.data() + (int64_t)l * c.max_T * KVD;
        // attention block
        rmsnorm_forward(xn.data(), rstd.data(), x.data(), m.w.attn_norm + l * C, n, C, cfg.norm_eps);
        linear_lora_forward(q.data(), u.data(), xn.data(), layer_weight(m, LT_Q, l), lora_args(m, opt, LT_Q, l), n, C, QD);
        linear_lora_forward(k.data(), u.data(), xn.data(), layer_weight(m, LT_K, l), lora_args(m, opt, LT_K, l), n, C, KVD);
        linear_lora_forward(v.data(), u.data(), xn.data(), layer_weight(m, LT_V, l), lora_args(m, opt, LT_V, l), n, C, KVD);
        rope_forward(q.data(), cos_t.data(), sin_t.data(), n, H, D);
        rope_forward(k.data(), cos_t.data(), sin_t.data(), n, KV, D);
        memcpy(kc + (int64_t)start * KVD, k.data(), (size_t)(n * KVD) * sizeof(float));
        memcpy(vc + (int64_t)start * KVD, v.data(), (size_t)(n * KVD) * sizeof(float));
        attention_cached(ctx.data(), q.data(), kc, vc, start, n, H, KV, D);
        linear_lora_forward(tmp.data(), u.data(), ctx.data(), layer_weight(m, LT_O, l), lora_args(m, opt, LT_O, l), n, QD, C);
        for (int64_t i = 0; i < n * C; i++) x[i] = x[i] + tmp[i];
        // MLP block
        rmsnorm_forward(xn.data(), rstd.data(), x.data(), m.w.mlp_norm + l * C, n, C, cfg.norm_eps);
        linear_lora_forward(gate.data(), u.data(), xn.data(), layer_weight(m, LT_GATE, l), lora_args(m, opt, LT_GATE, l), n, C, F);
        linear_lora_forward(up.data(), u.data(), xn.data(), layer_weight(m, LT_UP, l), lora_args(m, opt, LT_UP, l), n, C, F);
        swiglu_forward(hmid.data(), gate.data(), up.data(), n * F);
        linear_lora_forward(tmp.data(), u.data(), hmid.data(), layer_weight(m, LT_DOWN, l), lora_args(m, opt, LT_DOWN, l), n, F, C);
        for (int64_t i = 0; i < n * C; i++) x[i] = x[i] + tmp[i];
    }
    // head: only the rows whose logits are wanted (generation needs the last one)
    const int first = all_logits ? 0 : n - 1, rows = n - first;
    rmsnorm_forward(xn.data(), rstd.data(), x.data() + first * C, m.w.final_norm, rows, C, cfg.norm_eps);
    matmul_forward(logits, xn.data(), m.w.lm_head, rows, C, V);
    c.len += n;
}

void cpu::lora_merge(float* W, const float* A, const float* B, int r, float s, int64_t OC, int64_t IC) {
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < OC; o++)
        for (int64_t i = 0; i < IC; i++) {
            float acc = 0.0f;  // (B A)[o, i], then scaled: PEFT's merge, W + (B @ A) * scaling
            for (int j = 0; j < r; j++) acc += B[o * r + j] * A[j * IC + i];
            W[o * IC + i] += acc * s;
        }
}

void cpu_lora_merge(CpuModel& m) {
    if (m.lora.rank <= 0) return;
    const int r = m.lora.rank;
    const float s = m.lora.scaling();
    for (int t = 0; t < NUM_LORA_TARGETS; t++) {
        if (!m.has_lora(t)) continue;
        const int id = lora_target_weight(t);
        const int64_t IC = lora_in_dim(m.cfg, t), OC = lora_out_dim(m.cfg, t);
        for (int l = 0; l < m.cfg.n_layers; l++)
            lora_merge(*m.w.ptr(id) + (int64_t)l * OC * IC, m.lora_params.data() + m.lora_A_off(t, l),
                       m.lora_params.data() + m.lora_B_off(t, l), r, s, OC, IC);
    }
    lora_clear(m);
}

CpuDecoder::CpuDecoder(CpuModel model, int max_context, int max_batch) : m_(std::move(model)) {
    ASSERT(max_batch >= 1, "a decoder of at least one slot");
    m_.w = carve_weights(m_.cfg, m_.weights_mem.data());  // the pointers must point into our copy
    caches_.resize((size_t)max_batch);
    for (CpuKVCache& c : caches_) cpu_kv_cache_init(c, m_.cfg, max_context);
    logits_.resize((size_t)max_batch * m_.cfg.vocab_size);
}

void CpuDecoder::set_adapter(const Adapter* adapter, bool merge) {
    // W_Q .. W_DOWN are contiguous in file order (W_MLP_NORM among them, untouched by a merge)
    float* linears = m_.w.wq;
    const int64_t n_linears = (m_.w.w_down + weight_numel(m_.cfg, W_DOWN)) - m_.w.wq;
    if (merged_) {  // back to the exact base weights: subtracting B A again would leave rounding behind
        std::copy(base_linears_.begin(), base_linears_.end(), linears);
        merged_ = false;
    }
    lora_clear(m_);
    if (adapter) {
        ASSERT(same_architecture(adapter->base, m_.cfg), "adapter checked against the model by the caller");
        LoraConfig lc = adapter->lora;
        lc.dropout = 0.0f;  // inference
        cpu_lora_set(m_, lc, adapter->params);
        if (merge) {
            if (base_linears_.empty()) base_linears_.assign(linears, linears + n_linears);
            cpu_lora_merge(m_);
            merged_ = true;
        }
    }
    for (CpuKVCache& c : caches_) c.len = 0;
}

const float* CpuDecoder::prefill(const int32_t* tokens, int n) {
    cpu_forward_cached(m_, caches_[0], tokens, n, logits_.data(), false);
    return logits_.data();
}

const float* CpuDecoder::prefill_slot(int slot, const int32_t* tokens, int n) {
    CpuKVCache& c = caches_.at((size_t)slot);
    c.len = 0;
    cpu_forward_cached(m_, c, tokens, n, logits_.data(), false);
    return logits_.data();
}

// the reference runs the slots one after another: a slot's logits are those of its sequence alone
const float* CpuDecoder::step_batch(const int32_t* tokens, const int* slots, int n) {
    ASSERT(n >= 1 && n <= max_batch(), "1 .. max_batch slots a pass");
    const size_t V = (size_t)m_.cfg.vocab_size;
    for (int i = 0; i < n; i++) cpu_forward_cached(m_, caches_.at((size_t)slots[i]), &tokens[i], 1, logits_.data() + i * V, false);
    return logits_.data();
}

std::string CpuDecoder::describe() const {
    std::string s = "cpu fp32 reference, ";
    if (merged_) return s + "LoRA merged";
    if (m_.lora.rank > 0) return s + "LoRA r=" + std::to_string(m_.lora.rank) + " unmerged";
    return s + "base model";
}
