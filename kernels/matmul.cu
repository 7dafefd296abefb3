// kernels/matmul.cu — every plain matrix product of the model through cuBLASLt: row-major bf16
// operands, fp32 accumulation, fp32 or bf16 output, optional accumulation into the output (the
// residual adds and the LoRA gradient sums ride on beta = 1). The kernels are NVIDIA's; this file
// only maps row-major products onto cuBLASLt's column-major interface.
// CPU twin: cpu::matmul_forward / cpu::matmul_backward_input (llama2_cpu.cpp). Test: test/gpu_kernels.cu.
#include "ops.h"

void blas_create(Blas& b) {
    cublasCheck(cublasLtCreate(&b.handle));
    b.workspace_size = 32u << 20;  // Hopper's cuBLASLt kernels want up to 32 MiB
    cudaCheck(cudaMalloc(&b.workspace, b.workspace_size));
}

void blas_destroy(Blas& b) {
    if (b.workspace) cudaCheck(cudaFree(b.workspace));
    if (b.handle) cublasCheck(cublasLtDestroy(b.handle));
    b = Blas{};
}

// Row-major out (M,N) = op(a)(M,K) op(b)(K,N) is column-major out^T (N,M) = op(b)^T op(a)^T, so
// cuBLASLt (column-major) gets b as its first operand and a as its second.
void matmul(Blas& bl, void* out, bool out_f32, const bf16* a, bool a_trans, const bf16* b, bool b_trans, int64_t M,
            int64_t N, int64_t K, float alpha, float beta, cudaStream_t stream) {
    cublasLtMatmulDesc_t desc;
    cublasCheck(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t op_first = b_trans ? CUBLAS_OP_T : CUBLAS_OP_N, op_second = a_trans ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof(op_first)));
    cublasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof(op_second)));
    // column-major shapes as stored: first operand (b) is N x K (or K x N when transposed), etc.
    cublasLtMatrixLayout_t la, lb, lc;
    cublasCheck(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, b_trans ? K : N, b_trans ? N : K, b_trans ? K : N));
    cublasCheck(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, a_trans ? M : K, a_trans ? K : M, a_trans ? M : K));
    cublasCheck(cublasLtMatrixLayoutCreate(&lc, out_f32 ? CUDA_R_32F : CUDA_R_16BF, N, M, N));
    cublasLtMatmulPreference_t pref;
    cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &bl.workspace_size,
                                                     sizeof(bl.workspace_size)));
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    cublasCheck(cublasLtMatmulAlgoGetHeuristic(bl.handle, desc, la, lb, lc, lc, pref, 1, &heur, &found));
    if (found == 0) {
        fprintf(stderr, "%s:%d: cuBLASLt has no algorithm for %lldx%lldx%lld (trans %d%d, out %s)\n", __FILE__, __LINE__,
                (long long)M, (long long)N, (long long)K, a_trans, b_trans, out_f32 ? "f32" : "bf16");
        exit(1);
    }
    // C and D are the same buffer: beta = 1 accumulates into out in the epilogue
    cublasCheck(cublasLtMatmul(bl.handle, desc, &alpha, b, la, a, lb, &beta, out, lc, out, lc, &heur.algo, bl.workspace,
                               bl.workspace_size, stream));
    cublasCheck(cublasLtMatmulPreferenceDestroy(pref));
    cublasCheck(cublasLtMatrixLayoutDestroy(la));
    cublasCheck(cublasLtMatrixLayoutDestroy(lb));
    cublasCheck(cublasLtMatrixLayoutDestroy(lc));
    cublasCheck(cublasLtMatmulDescDestroy(desc));
}

