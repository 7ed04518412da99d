// Internal (not part of the module's public headers): the per-family implementations that
// dispatch.c switches between. Each takes the weight `format` (LORA_FORMAT_*) and the
// contracts of CKernels.h.
#ifndef LORA_FAMILIES_H
#define LORA_FAMILIES_H
#include <stdint.h>

#define LORA_FAMILY_DECLS(fam)                                                                  \
    void lora_##fam##_gemm_abt(int format, long M, long n0, long n1, long K, const float *A,    \
                               long lda, const void *W, long ldw, const float *scales,         \
                               float *C, long ldc, int accumulate);                            \
    void lora_##fam##_gemm_ab(int format, long M, long k0, long k1, long N, const float *A,     \
                              long lda, const void *W, long ldw, const float *scales,          \
                              float *C, long ldc, int accumulate);                             \
    void lora_##fam##_gemv_abt(int format, long M, long n0, long n1, long K, const float *A,    \
                               long lda, const void *W, long ldw, const float *scales,         \
                               float *C, long ldc, int accumulate);                            \
    float lora_##fam##_dot(const float *a, const float *b, long n);                             \
    void lora_##fam##_axpy(float alpha, const float *x, float *y, long n);

LORA_FAMILY_DECLS(portable)
LORA_FAMILY_DECLS(avx2)
LORA_FAMILY_DECLS(avx512)

int lora_avx2_available(void);
/// NR of the AVX2 packed GEMM.
int lora_avx2_panel_width(void);

#endif
