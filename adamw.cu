// adamw.cu — AdamW over the LoRA parameters on the GPU: fp32 master weights and moments, global
// gradient-norm clipping decided on the device (the norm never travels to the host inside a step),
// and a bf16 copy of the updated weights for the next forward.
// CPU twin: cpu_grad_norm / cpu_clip_grad_norm / cpu_adamw_update (llama2_cpu.cpp); test:
// test/gpu_kernels.cu ("kernel adamw ...").
#include "llama2_gpu.h"

void grad_norm_squared(float* norm_sq, const float* g, int64_t n, float* scratch, cudaStream_t stream) {
    sum_reduce(norm_sq, g, n, true, scratch, stream);
}

__global__ void adamw_kernel(float* params, bf16* params_bf16, const float* grads, float* m, float* v, int64_t n,
                             float lr, float beta1, float beta2, float eps, float weight_decay, float step_size,
                             float bc2_sqrt, const float* norm_sq, float max_norm) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    if (!isfinite(norm_sq[0])) return;  // a NaN/Inf gradient: keep the last good weights (the host stops the run)
    float clip = 1.0f;  // torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when < 1
    if (max_norm > 0.0f) clip = fminf(1.0f, max_norm / (sqrtf(norm_sq[0]) + 1e-6f));
    const float g = grads[i] * clip;
    float p = params[i] * (1.0f - lr * weight_decay);  // decoupled weight decay, before the step
    const float mi = m[i] + (1.0f - beta1) * (g - m[i]);  // torch: exp_avg.lerp_(grad, 1 - beta1)
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    p -= step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    m[i] = mi;
    v[i] = vi;
    params[i] = p;
    params_bf16[i] = __float2bfloat16(p);
}

void adamw_update(float* params, bf16* params_bf16, const float* grads, float* m, float* v, int64_t n, int step,
                  float lr, float beta1, float beta2, float eps, float weight_decay, const float* norm_sq,
                  float max_norm, cudaStream_t stream) {
    // bias corrections in double on the host, as torch computes them from Python floats
    const double bc1 = 1.0 - pow((double)beta1, step), bc2 = 1.0 - pow((double)beta2, step);
    adamw_kernel<<<ceil_div(n, 256), 256, 0, stream>>>(params, params_bf16, grads, m, v, n, lr, beta1, beta2,
                                                                  eps, weight_decay, (float)(lr / bc1),
                                                                  (float)sqrt(bc2), norm_sq, max_norm);
    cudaCheckLaunch();
}
