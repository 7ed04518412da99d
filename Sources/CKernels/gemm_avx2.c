// AVX2 + FMA family (placeholder until the kernels land): reported unavailable.
#include "CKernels.h"
#include "families.h"
int lora_avx2_available(void) { return 0; }
int lora_avx2_panel_width(void) { return 16; }
void lora_avx2_gemm_abt(int format, long M, long n0, long n1, long K, const float *A, long lda,
                        const void *W, long ldw, const float *scales, float *C, long ldc,
                        int accumulate) {
    lora_portable_gemm_abt(format, M, n0, n1, K, A, lda, W, ldw, scales, C, ldc, accumulate);
}
void lora_avx2_gemm_ab(int format, long M, long k0, long k1, long N, const float *A, long lda,
                       const void *W, long ldw, const float *scales, float *C, long ldc,
                       int accumulate) {
    lora_portable_gemm_ab(format, M, k0, k1, N, A, lda, W, ldw, scales, C, ldc, accumulate);
}
void lora_avx2_gemv_abt(int format, long M, long n0, long n1, long K, const float *A, long lda,
                        const void *W, long ldw, const float *scales, float *C, long ldc,
                        int accumulate) {
    lora_portable_gemv_abt(format, M, n0, n1, K, A, lda, W, ldw, scales, C, ldc, accumulate);
}
float lora_avx2_dot(const float *a, const float *b, long n) { return lora_portable_dot(a, b, n); }
void lora_avx2_axpy(float alpha, const float *x, float *y, long n) { lora_portable_axpy(alpha, x, y, n); }
