#ifndef LORA_CKERNELS_H
#define LORA_CKERNELS_H
#include <stdint.h>
/// Returns 1 when the CPU supports AVX-512F (checked once at run time).
int lora_cpu_has_avx512f(void);

// ---- AVX-512 GEMM against a frozen weight W [N, K] (gemm_avx512.c) ----------------------
// All matrices row-major f32 with explicit row strides (in elements). Int8 weights are rows
// `Wq` [N, K] with one scale per row: W[n, k] = Wq[n, k] * scales[n]. `accumulate`: 1 adds
// into C (beta = 1), 0 overwrites it. Each call computes a disjoint range of C's columns, so
// threads may split the columns (in multiples of lora_gemm_panel_width()) and call in parallel.
// Call only when lora_gemm_avx512_available() is 1.

/// 1 when the kernels below can run here: x86-64 with AVX-512F/BW/VL and FMA; 0 elsewhere.
int lora_gemm_avx512_available(void);
/// Columns of a packed B panel: the unit in which to split C's columns across threads.
int lora_gemm_panel_width(void);

/// Forward, columns n0..<n1:  C[M, n0:n1] (+)= A[M, K] @ W[n0:n1, K]^T
///   A [M, K] (lda), W [N, K] (ldw), C [M, N] (ldc).
void lora_gemm_abt_f32(long M, long n0, long n1, long K, const float *A, long lda,
                       const float *W, long ldw, float *C, long ldc, int accumulate);
void lora_gemm_abt_i8(long M, long n0, long n1, long K, const float *A, long lda,
                      const int8_t *Wq, long ldw, const float *scales, float *C, long ldc,
                      int accumulate);

/// Backward input, columns k0..<k1:  C[M, k0:k1] (+)= A[M, N] @ W[N, k0:k1]
///   A [M, N] (lda), W [N, K] (ldw), C [M, K] (ldc).
void lora_gemm_ab_f32(long M, long k0, long k1, long N, const float *A, long lda,
                      const float *W, long ldw, float *C, long ldc, int accumulate);
void lora_gemm_ab_i8(long M, long k0, long k1, long N, const float *A, long lda,
                     const int8_t *Wq, long ldw, const float *scales, float *C, long ldc,
                     int accumulate);

/// Forward for small M (decoding, matrix-vector-like), rows n0..<n1 of W, no packing:
/// same contract as lora_gemm_abt_*; memory bound, int8 weights are read as int8.
void lora_gemv_abt_f32(long M, long n0, long n1, long K, const float *A, long lda,
                       const float *W, long ldw, float *C, long ldc, int accumulate);
void lora_gemv_abt_i8(long M, long n0, long n1, long K, const float *A, long lda,
                      const int8_t *Wq, long ldw, const float *scales, float *C, long ldc,
                      int accumulate);
#endif
