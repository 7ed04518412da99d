// Portable kernels: plain C for any CPU. They are the fallback off x86-64 and the scalar
// reference the SIMD families are tested against, so clarity comes first: every output is a
// float sum in depth order (starting from zero, then added to C when accumulating), with just
// enough blocking that the compiler keeps several independent sums in registers (abt) or
// vectorizes the inner loop over contiguous columns (ab).
#include "CKernels.h"
#include "families.h"
#include <stdlib.h>

/// W[n, k] as float, for any format.
static inline __attribute__((always_inline)) float wval(const int format, const void *W, long ldw,
                                                       const float *scales, long n, long k) {
    switch (format) {
    case LORA_FORMAT_I8_ROWS: return (float)((const int8_t *)W)[n * ldw + k] * scales[n];
    case LORA_FORMAT_NF4: return lora_nf4_value((const lora_nf4 *)W, n * ldw + k);
    case LORA_FORMAT_BF16: {
        union { uint32_t u; float f; } v = { (uint32_t)((const uint16_t *)W)[n * ldw + k] << 16 };
        return v.f;
    }
    default: return ((const float *)W)[n * ldw + k];
    }
}

// ---- GGUF blocks: row n, weights k..k+31 are block (n * ldw + k) / 32 of W's bytes ---------

static inline const uint8_t *block_at(int format, const void *W, long ldw, long n, long k) {
    return (const uint8_t *)W + (n * ldw + k) / LORA_QK * lora_block_bytes(format);
}

/// The 32 weights of block `b`, each computed in float as the format defines it.
static inline __attribute__((always_inline)) void deq_block(const int format, const uint8_t *b,
                                                           float out[LORA_QK]) {
    const float d = lora_half_to_float(lora_load_u16(b));
    if (format == LORA_FORMAT_Q8_0) {
        for (int j = 0; j < 32; j++) out[j] = d * (float)(int8_t)b[2 + j];
    } else if (format == LORA_FORMAT_Q4_0) {
        for (int j = 0; j < 16; j++) {
            out[j] = d * (float)((b[2 + j] & 15) - 8);
            out[j + 16] = d * (float)((b[2 + j] >> 4) - 8);
        }
    } else {
        const float m = lora_half_to_float(lora_load_u16(b + 2));
        for (int j = 0; j < 16; j++) {
            out[j] = d * (float)(b[4 + j] & 15) + m;
            out[j + 16] = d * (float)(b[4 + j] >> 4) + m;
        }
    }
}

/// Weights k0..k0+cnt of row n (any start, any count within the row).
static inline __attribute__((always_inline)) void deq_range(const int format, const void *W,
                                                           long ldw, long n, long k0, long cnt,
                                                           float *out) {
    float blk[LORA_QK];
    for (long k = k0; k < k0 + cnt;) {
        long b0 = k / LORA_QK * LORA_QK, end = b0 + LORA_QK < k0 + cnt ? b0 + LORA_QK : k0 + cnt;
        deq_block(format, block_at(format, W, ldw, n, b0), blk);
        for (; k < end; k++) out[k - k0] = blk[k - b0];
    }
}

static inline void store(float *c, float v, int accumulate) { *c = accumulate ? *c + v : v; }

// ---- Forward: C[M, n0:n1] (+)= A[M, K] @ W[n0:n1, K]^T --------------------------------------
// 4 x 4 blocks of (row of A, row of W): 16 independent dot products over k.

#define PB 4

/// Block formats (K a multiple of 32): each block of the PB weight rows is decoded once per
/// block of A rows, then used as in the loop below; same depth-order sums.
static inline __attribute__((always_inline)) void abt_blocks(const int format, long M, long n0,
                                                            long n1, long K, const float *A,
                                                            long lda, const void *W, long ldw,
                                                            float *C, long ldc, int accumulate) {
    for (long n = n0; n < n1; n += PB) {
        long nb = n1 - n < PB ? n1 - n : PB;
        for (long m = 0; m < M; m += PB) {
            long mb = M - m < PB ? M - m : PB;
            float acc[PB][PB] = {{0}};
            for (long k = 0; k < K; k += LORA_QK) {
                float w[PB][LORA_QK];
                for (long j = 0; j < nb; j++) deq_block(format, block_at(format, W, ldw, n + j, k), w[j]);
                if (mb == PB && nb == PB) {
                    for (int t = 0; t < LORA_QK; t++)
                        for (int i = 0; i < PB; i++) {
                            float a = A[(m + i) * lda + k + t];
                            for (int j = 0; j < PB; j++) acc[i][j] += a * w[j][t];
                        }
                } else {
                    for (long i = 0; i < mb; i++)
                        for (long j = 0; j < nb; j++)
                            for (int t = 0; t < LORA_QK; t++) acc[i][j] += A[(m + i) * lda + k + t] * w[j][t];
                }
            }
            for (long i = 0; i < mb; i++)
                for (long j = 0; j < nb; j++) store(&C[(m + i) * ldc + n + j], acc[i][j], accumulate);
        }
    }
}
static inline __attribute__((always_inline)) void abt(const int format, long M, long n0, long n1,
                                                     long K, const float *A, long lda,
                                                     const void *W, long ldw, const float *scales,
                                                     float *C, long ldc, int accumulate) {
    if (lora_is_block_format(format)) {
        abt_blocks(format, M, n0, n1, K, A, lda, W, ldw, C, ldc, accumulate);
        return;
    }
    for (long n = n0; n < n1; n += PB) {
        long nb = n1 - n < PB ? n1 - n : PB;
        for (long m = 0; m < M; m += PB) {
            long mb = M - m < PB ? M - m : PB;
            float acc[PB][PB] = {{0}};
            if (mb == PB && nb == PB) {
                for (long k = 0; k < K; k++) {
                    float w[PB];
                    for (int j = 0; j < PB; j++) w[j] = wval(format, W, ldw, scales, n + j, k);
                    for (int i = 0; i < PB; i++) {
                        float a = A[(m + i) * lda + k];
                        for (int j = 0; j < PB; j++) acc[i][j] += a * w[j];
                    }
                }
            } else {
                for (long i = 0; i < mb; i++)
                    for (long j = 0; j < nb; j++)
                        for (long k = 0; k < K; k++)
                            acc[i][j] += A[(m + i) * lda + k] * wval(format, W, ldw, scales, n + j, k);
            }
            for (long i = 0; i < mb; i++)
                for (long j = 0; j < nb; j++) store(&C[(m + i) * ldc + n + j], acc[i][j], accumulate);
        }
    }
}

// ---- Backward input: C[M, k0:k1] (+)= A[M, N] @ W[N, k0:k1] ---------------------------------
// Columns KB at a time and rows MB at a time: sums for an MB x KB tile are kept in a local
// array while the depth n runs; the weight row segment is dequantized once per tile row.

#define MB 8
#define KB 128
static inline __attribute__((always_inline)) void ab(const int format, long M, long k0, long k1,
                                                    long N, const float *A, long lda,
                                                    const void *W, long ldw, const float *scales,
                                                    float *C, long ldc, int accumulate) {
    for (long kb = k0; kb < k1; kb += KB) {
        long kw = k1 - kb < KB ? k1 - kb : KB;
        for (long m = 0; m < M; m += MB) {
            long mb = M - m < MB ? M - m : MB;
            float acc[MB][KB], w[KB];
            for (long i = 0; i < mb; i++)
                for (long k = 0; k < kw; k++) acc[i][k] = 0;
            for (long n = 0; n < N; n++) {
                if (lora_is_block_format(format)) deq_range(format, W, ldw, n, kb, kw, w);
                else if (format == LORA_FORMAT_NF4) lora_nf4_run((const lora_nf4 *)W, n * ldw + kb, kw, w);
                else for (long k = 0; k < kw; k++) w[k] = wval(format, W, ldw, scales, n, kb + k);
                for (long i = 0; i < mb; i++) {
                    float a = A[(m + i) * lda + n];
                    for (long k = 0; k < kw; k++) acc[i][k] += a * w[k];
                }
            }
            for (long i = 0; i < mb; i++)
                for (long k = 0; k < kw; k++) store(&C[(m + i) * ldc + kb + k], acc[i][k], accumulate);
        }
    }
}

#define FORMAT_SWITCH(call)                                   \
    switch (format) {                                         \
    case LORA_FORMAT_F32: call(LORA_FORMAT_F32); break;       \
    case LORA_FORMAT_I8_ROWS: call(LORA_FORMAT_I8_ROWS); break; \
    case LORA_FORMAT_BF16: call(LORA_FORMAT_BF16); break;     \
    case LORA_FORMAT_Q8_0: call(LORA_FORMAT_Q8_0); break;     \
    case LORA_FORMAT_Q4_0: call(LORA_FORMAT_Q4_0); break;     \
    case LORA_FORMAT_Q4_1: call(LORA_FORMAT_Q4_1); break;     \
    case LORA_FORMAT_NF4: call(LORA_FORMAT_NF4); break;       \
    default: abort();                                         \
    }

void lora_portable_gemm_abt(int format, long M, long n0, long n1, long K, const float *A,
                            long lda, const void *W, long ldw, const float *scales, float *C,
                            long ldc, int accumulate) {
#define CALL(f) abt(f, M, n0, n1, K, A, lda, W, ldw, scales, C, ldc, accumulate)
    FORMAT_SWITCH(CALL)
#undef CALL
}

void lora_portable_gemm_ab(int format, long M, long k0, long k1, long N, const float *A,
                           long lda, const void *W, long ldw, const float *scales, float *C,
                           long ldc, int accumulate) {
#define CALL(f) ab(f, M, k0, k1, N, A, lda, W, ldw, scales, C, ldc, accumulate)
    FORMAT_SWITCH(CALL)
#undef CALL
}

/// Small M: the same dot products (there is no packing to skip here).
void lora_portable_gemv_abt(int format, long M, long n0, long n1, long K, const float *A,
                            long lda, const void *W, long ldw, const float *scales, float *C,
                            long ldc, int accumulate) {
    lora_portable_gemm_abt(format, M, n0, n1, K, A, lda, W, ldw, scales, C, ldc, accumulate);
}

float lora_portable_dot(const float *a, const float *b, long n) {
    float s = 0;
    for (long i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

void lora_portable_axpy(float alpha, const float *x, float *y, long n) {
    for (long i = 0; i < n; i++) y[i] += alpha * x[i];
}
