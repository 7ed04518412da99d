#ifndef LORA_CKERNELS_H
#define LORA_CKERNELS_H
#include <stdint.h>
/// Returns 1 when the CPU supports AVX-512F (checked once at run time).
int lora_cpu_has_avx512f(void);
/// CPUs this process may run on (affinity mask on Linux).
int lora_cpu_count(void);
/// Hands freed heap pages back to the system (malloc_trim on glibc; nothing elsewhere).
void lora_release_free_memory(void);

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
// ---- Kernel families x weight formats (dispatch.c) -----------------------------------------
// One entry point per product; `family` picks the instruction set (chosen once at start from
// the CPU, or forced by LORA_KERNELS in tests), `format` the weight's byte layout. Contracts are
// those of lora_gemm_abt_f32 / lora_gemm_ab_f32 / lora_gemv_abt_f32 above, with W given as the
// format's bytes:
//   LORA_FORMAT_F32      W: float [N][ldw]                  scales: unused (NULL)
//   LORA_FORMAT_I8_ROWS  W: int8  [N][ldw], W[n,k] = q[n,k] * scales[n]
//   LORA_FORMAT_BF16     W: uint16 (bfloat16 bits) [N][ldw], W[n,k] = (float)(bits << 16)
// GGUF block formats, byte for byte as ggml stores them (little-endian): row n is ldw/32
// consecutive blocks of 32 weights starting at byte n * (ldw/32) * block size; `ldw` stays in
// elements and must be a multiple of 32, as must K for lora_gemm_abt / lora_gemv_abt (any
// column sub-range k0..<k1 for lora_gemm_ab); scales: unused (NULL). d, m are IEEE halves:
//   LORA_FORMAT_Q8_0  34 bytes: d, int8 qs[32];  W[j] = d * qs[j]
//   LORA_FORMAT_Q4_0  18 bytes: d, uint8 qs[16]; W[j] = d * ((qs[j] & 15) - 8),
//                                               W[j + 16] = d * ((qs[j] >> 4) - 8)   (j < 16)
//   LORA_FORMAT_Q4_1  20 bytes: d, m, uint8 qs[16]; W[j] = d * (qs[j] & 15) + m,
//                                               W[j + 16] = d * (qs[j] >> 4) + m
// (each value computed in float; d * q is exact there, so with or without FMA it is the same).
// A block-format call that breaks the multiple-of-32 rule aborts.
//   LORA_FORMAT_NF4   bitsandbytes' NF4 with double quantization: W points to a lora_nf4 (below),
//                     not to the bytes; ldw must equal the weight's row length (its blocks run
//                     over the flattened matrix, so they may straddle rows); scales unused.
// NF4 weight i (flattened, i = n * ldw + k) is, computed in float in this order:
//   code   = i even ? q[i/2] >> 4 : q[i/2] & 15          (bitsandbytes packs the even one high)
//   absmax = lora_nf4_dynamic[absmax8[i/64]] * nested[i/16384] + offset   (2 roundings, no FMA)
//   W[i]   = lora_nf4_code[code] * absmax
// More GGUF formats, byte for byte as ggml stores them, laid out in rows as the ones above but
// with blocks of 32 (Q5_0, Q5_1) or 256 weights (the K-quants' super-blocks): ldw, and K for
// lora_gemm_abt / lora_gemv_abt, must be multiples of that (else abort); scales unused. Their
// values are ggml's dequantize_row_* in float (see kquant.c and Tensor's GGUFBlockFormat):
//   LORA_FORMAT_Q5_0   22 bytes: d, uint32 qh, uint8 qs[16]; Q4_0's nibbles + bit j of qh as
//                                 5th bit of weight j, W = d * (q - 16)
//   LORA_FORMAT_Q5_1   24 bytes: d, m, uint32 qh, uint8 qs[16]; W = d * q + m
//   LORA_FORMAT_Q4_K  144 bytes: d, dmin, 12 bytes of 6-bit scales and mins, 128 bytes of
//                                 nibbles; W = (d * sc) * q - dmin * m per sub-block of 32
//   LORA_FORMAT_Q5_K  176 bytes: as Q4_K with 32 bytes of 5th bits before the nibbles
//   LORA_FORMAT_Q6_K  210 bytes: 128 bytes low nibbles, 64 bytes of 2 high bits, int8
//                                 scales[16], d; W = (d * scale) * (q - 32) per 16 weights
// Every family computes their products on f32 tiles of W (a few rows at a time) with its own
// f32 kernels (kquant.c).
// The portable family is plain C (any CPU, and the scalar reference the others are tested
// against); a family that is not available must not be called (lora_family_available; the
// entry points fall back to portable rather than fault). An unknown format aborts.
// Families: portable (gemm_portable.c), AVX2+FMA+F16C (gemm_avx2.c, panel 16), AVX-512
// (gemm_avx512.c, panel 48); results agree to float rounding, not bit for bit.

enum { LORA_FAMILY_PORTABLE = 0, LORA_FAMILY_AVX2 = 1, LORA_FAMILY_AVX512 = 2 };
enum { LORA_FORMAT_F32 = 0, LORA_FORMAT_I8_ROWS = 1, LORA_FORMAT_BF16 = 2,
       LORA_FORMAT_Q8_0 = 3, LORA_FORMAT_Q4_0 = 4, LORA_FORMAT_Q4_1 = 5, LORA_FORMAT_NF4 = 6,
       LORA_FORMAT_Q5_0 = 7, LORA_FORMAT_Q5_1 = 8, LORA_FORMAT_Q4_K = 9, LORA_FORMAT_Q5_K = 10,
       LORA_FORMAT_Q6_K = 11,
       LORA_FORMAT_Q8_0_X8 = 12, LORA_FORMAT_Q4_0_X8 = 13, LORA_FORMAT_Q4_1_X8 = 14 };

/// An NF4 weight (LORA_FORMAT_NF4): the arrays of bitsandbytes' QuantState with
/// compress_statistics (blocksize 64, nested blocksize 256).
typedef struct lora_nf4 {
    const uint8_t *q;        // [ceil(n / 2)] two codes per byte
    const uint8_t *absmax8;  // [ceil(n / 64)] each block's absmax, 8-bit dynamic code
    const float *nested;     // [ceil(n / 16384)] absmax of 256 absmax8 blocks
    float offset;            // mean of the f32 absmaxes, added back after the nested scale
} lora_nf4;
/// bitsandbytes' NF4 code book (get_4bit_type("nf4")), index 0..15.
extern const float lora_nf4_code[16];
/// bitsandbytes' signed 8-bit dynamic map (create_dynamic_map(), a QuantState's state2.code).
extern const float lora_nf4_dynamic[256];

/// 1 when `family` can run on this CPU (portable: always).
int lora_family_available(int family);
/// The fastest available family.
int lora_family_best(void);
/// Column unit in which callers split C's columns across threads for lora_gemm_abt / _ab.
int lora_family_panel_width(int family);

/// Forward, columns n0..<n1: C[M, n0:n1] (+)= A[M, K] @ W[n0:n1, K]^T (packed, many rows).
void lora_gemm_abt(int family, int format, long M, long n0, long n1, long K,
                   const float *A, long lda, const void *W, long ldw, const float *scales,
                   float *C, long ldc, int accumulate);
/// Backward input, columns k0..<k1: C[M, k0:k1] (+)= A[M, N] @ W[N, k0:k1].
void lora_gemm_ab(int family, int format, long M, long k0, long k1, long N,
                  const float *A, long lda, const void *W, long ldw, const float *scales,
                  float *C, long ldc, int accumulate);
/// Tile formats (Q5_0 .. Q6_K): weights k0..<k0+cnt of row n as f32 into out, decoded as
/// `family`'s products decode them (for tests: every family must give the scalar values).
void lora_tile_dequantize(int family, int format, const void *W, long ldw, long n, long k0, long cnt,
                          float *out);
/// Forward for small M (decoding), rows n0..<n1 of W, unpacked, weights streamed once.
void lora_gemv_abt(int family, int format, long M, long n0, long n1, long K,
                   const float *A, long lda, const void *W, long ldw, const float *scales,
                   float *C, long ldc, int accumulate);

// ---- Integer decoding GEMV for Q4_0 / Q4_1 / Q8_0 (qdot.c) --------------------------------------------
// llama.cpp's CPU scheme: A is quantized once per call to int8 in blocks of 32 (per block
// d = absmax / 127, q = round(x / d) ties to even, sum = sum of q), and each weight block's dot
// with an activation block is an exact int32 sum, scaled by d_w * d_a (Q4_1 adds m_w * d_a *
// sum). Differs from the f32 product by the activation rounding; families agree to float
// rounding (the portable one is the scalar reference).
/// q [M][K] int8, d and sum [M][K/32]; K a multiple of 32 (else abort). Every family gives the
/// portable one's bits (the AVX2 version does the same float operations, 8 lanes at a time).
void lora_q8_quantize(int family, long M, long K, const float *A, long lda, int8_t *q, float *d, int32_t *sum);
/// 1 for the weight formats lora_q8_gemv takes (Q4_0, Q4_1, Q8_0 and their _X8 layouts).
int lora_q8_gemv_format(int format);
// The _X8 layouts: the same bytes as Q8_0 / Q4_0 / Q4_1, regrouped for lora_q8_gemv only (no
// other product takes them). Rows go in groups of 8 (N a multiple of 8); a group holds its 8
// rows' block b together, blocks in order: the 8 d halves (16 bytes), Q4_1's 8 m halves (16
// bytes), then the code bytes as 4-byte words, word j of row 0, row 1, ..., row 7, then word
// j + 1 (Q4: 4 words of 16 code bytes per row; Q8_0: 8 words of 32). A group-block is then
// what the decoding GEMV's registers hold (one 32-bit lane per row) without a transpose: 8 x
// the block size, so row group g starts at byte 8 g * rowbytes as in the plain layout.
/// The plain format of an _X8 one (itself for a plain one).
int lora_q8x8_base(int format);
/// W [N][K] of plain `format` (Q8_0, Q4_0 or Q4_1) regrouped into out (same byte count).
/// N a multiple of 8, K of 32 (else abort).
void lora_q8x8_pack(int format, long N, long K, const void *W, void *out);
/// Row n's block b of an _X8 weight with rows of K, in the plain block layout (out: up to 34
/// bytes): for references and the portable family.
void lora_q8x8_block(int format, const void *W, long K, long n, long b, uint8_t *out);
/// 1 when the AVX-512 family's version can use VNNI (vpdpbusd); else it runs the AVX2 one.
int lora_q8_vnni_available(void);
/// C[M, n0:n1] (+)= A @ W[n0:n1]^T with A given as lora_q8_quantize's output for M rows of K;
/// W, ldw as in lora_gemv_abt (ldw and K multiples of 32); an _X8 layout needs n0 and n1 to
/// be multiples of 8 and ldw == K (else abort), and gives the plain layout's bits.
void lora_q8_gemv(int family, int format, long M, long n0, long n1, long K, const int8_t *q,
                  const float *d, const int32_t *sum, const void *W, long ldw, float *C, long ldc,
                  int accumulate);

// ---- Int8 rows against fixed-point activations (decoding, AVX-512 VNNI; gemm_avx512.c) ------
// The f32 semantics of int8 rows (f32 activations, bitsandbytes' int8 weights) with integer
// products: each row of A becomes v = round(a * 2^s) with its largest |a| in [2^30, 2^31) (at most
// max|a| * 2^-32 off per activation), as four byte planes for vpdpbusd; the sums are exact
// integers, scaled once in double. lora_gemv_abt(avx512, I8_ROWS) uses it where it pays
// (lora_i8_fixed_wanted); callers that split rows over workers convert A once with
// lora_i8_fixed_prepare instead of per call.
/// KMAX: the depth up to which the int32 sums are exact. DEEP: from this depth the FMA kernel
/// streams deep rows as fast (both memory-bound on Zen 4, 4096-11008 deep) and is faster at 3-16
/// rows of A, so the dispatcher keeps it there; the choice depends on K only, never on M.
enum { LORA_I8_FIXED_KMAX = 65536, LORA_I8_FIXED_DEEP = 2048 };
/// 1 when `family` can run it here (the AVX-512 family with VNNI and DQ).
int lora_i8_fixed_available(int family);
/// 1 when lora_gemv_abt(family, I8_ROWS) runs it for rows of K: available and 0 < K < DEEP.
int lora_i8_fixed_wanted(int family, long K);
/// Depth of a converted row's planes: K rounded up to 64.
static inline long lora_i8_fixed_depth(long K) { return (K + 63) / 64 * 64; }
/// Bytes of planes for M rows of K.
static inline long lora_i8_fixed_bytes(long M, long K) { return 4 * M * lora_i8_fixed_depth(K); }
/// Converts A [M][lda] into planes (lora_i8_fixed_bytes(M, K)) and units [M] (2^-s per row).
/// Returns 0, and converts nothing, when it does not apply: family unavailable, K outside
/// 1...LORA_I8_FIXED_KMAX, or a value of A is Inf or NaN (the f32 kernels propagate those).
int lora_i8_fixed_prepare(int family, long M, long K, const float *A, long lda, uint8_t *planes, double *units);
/// C[M, n0:n1] (+)= A @ W[n0:n1]^T from lora_i8_fixed_prepare's planes and units; W int8 rows
/// [N][ldw] with `scales`. The same bits as lora_gemv_abt(avx512, I8_ROWS, ...) at any M.
void lora_i8_fixed_gemv(int family, long M, long n0, long n1, long K, const uint8_t *planes, const double *units,
                        const int8_t *W, long ldw, const float *scales, float *C, long ldc, int accumulate);

// ---- LLM.int8() forward for int8-rows weights (llmint8.c) ------------------------------------------
// bitsandbytes' MatMul8bitLt with int8 weights and a threshold (transformers' load_in_8bit), in
// f32 where bitsandbytes is in f16 only at its input rounding:
//   h = half(x) (x rounded to IEEE half, ties to even; `A.to(torch.float16)`)
//   outlier column k: some row has |h[m,k]| >= half(threshold)   (threshold <= 0: none)
//   rowStats[m] = max |h[m,k]| over the elements under the threshold
//   q[m,k] = rint(h[m,k] * ((1 / rowStats[m]) * 127)) for k not an outlier column, else 0 (0
//            when rowStats[m] = 0); 127 / rowStats as PyTorch's `127.0 / t` computes it
//   C[m,n] = (float)sum_k q[m,k] * W[n,k] * (rowStats[m] * (scales[n] * 127)) * 6.200124e-05
//            + sum over outlier columns j of x[m,j] * (W[n,j] * (scales[n] * 127) * (1 / 127))
// The int32 sums are exact, and the outlier sums are a product then a sum per term in column
// order, so every family gives the portable loops' bits. AVX-512 runs the AVX2 code.
/// x rounded to half precision and back (the scalar reference of the F16C rounding).
float lora_half_round(float x);
/// q [M][ldq] int16 (ldq >= K, even, the columns K..<ldq zeroed), rowStats [M], outlierMask [K]
/// (1 = outlier column); returns the number of outlier columns. The same as scan then pack.
long lora_llm_int8_quantize(int family, long M, long K, const float *A, long lda, float threshold,
                            uint8_t *outlierMask, int16_t *q, long ldq, float *rowStats);
/// Rows' stats, and 1 set in outlierMask [K] (never cleared: callers OR row ranges) for each
/// column holding an outlier.
void lora_llm_int8_scan(int family, long M, long K, const float *A, long lda, float threshold, uint8_t *outlierMask,
                        float *rowStats);
/// q of the rows from the whole mask and the rows' stats.
void lora_llm_int8_pack(int family, long M, long K, const float *A, long lda, const uint8_t *outlierMask,
                        const float *rowStats, int16_t *q, long ldq);
/// C[M, n0:n1] (+)= the int8 part, from lora_llm_int8_quantize's q and rowStats; W int8 rows
/// [N][ldw] with `scales` as LORA_FORMAT_I8_ROWS.
void lora_llm_int8_gemm(int family, long M, long n0, long n1, long K, const int16_t *q, long ldq,
                        const float *rowStats, const int8_t *W, long ldw, const float *scales,
                        float *C, long ldc, int accumulate);
/// C[M, n0:n1] += the outlier columns' part (cols: their indices), each term a product then a
/// sum in column order (the same bits in every family); scratch: ncols * (n1 - n0) floats.
void lora_llm_int8_outliers(int family, long M, long n0, long n1, const float *A, long lda, const long *cols, long ncols,
                            const int8_t *W, long ldw, const float *scales, float *C, long ldc, float *scratch);

// ---- Packed LoRA factors (decoding; lora_factors.c) ------------------------------------------
// A decoding step's LoRA products u = x A^T [M, r] and y += u B^T from copies of the factors
// laid out for one forward stream each: AT [K][rp] (A transposed, rp = r rounded up to 8, zero
// padded) and B as panels of 16 outputs, Bp[(n / 16) * r * 16 + j * 16 + n % 16] = B[n][j]
// (outputs past N zero). Per output, in every family and at any M, lane or column range:
//   u[m][j] = s0 + s1, s0 / s1 = fmaf chains over the even / odd k from 0, in k order
//   y[m][n] = fmaf chain over j in order of u[m][j] * B[n][j], starting from y[m][n]
/// r rounded up to 8: AT's row length.
long lora_factors_rp(long r);
/// Floats of the packed B of N outputs and rank r.
long lora_factors_up_floats(long N, long r);
/// A [r][K] into AT [K][lora_factors_rp(r)].
void lora_factors_pack_down(long r, long K, const float *A, float *AT);
/// B [N][r] into lora_factors_up_floats(N, r) floats of panels.
void lora_factors_pack_up(long N, long r, const float *B, float *Bp);
/// The same layouts in IEEE half (each value rounded to nearest even): 0 when a value does not
/// fit (|x| rounds past 65504, inf or NaN), 1 otherwise. The products widen each half exactly
/// and then do the f32 arithmetic above, so a half copy's bits are those of f32 copies holding
/// the rounded values.
int lora_factors_pack_down_half(long r, long K, const float *A, uint16_t *AT);
int lora_factors_pack_up_half(long N, long r, const float *B, uint16_t *Bp);
/// One float to half bits as the packing rounds it (tests compare it with Float16(x)).
uint16_t lora_float_to_half(float x);
/// u[m][j0:j1] for m < M (j0 a multiple of 8, j1 <= r; else abort); x rows at stride ldx.
/// AT: f32 (half = 0) or half (half = 1) copies.
void lora_factors_down(int family, long M, long K, long r, long j0, long j1, const float *x, long ldx,
                       const void *AT, int half, float *u, long ldu);
/// y[m][n0:n1] += u[m][0:r] B[n0:n1]^T (n0 a multiple of 16, else abort; n1 at most the packed N).
void lora_factors_up(int family, long M, long n0, long n1, long r, const float *u, long ldu, const void *Bp,
                     int half, float *y, long ldy);

// Element-wise helpers with FMA where the family has it (the Swift ops call these on the
// hot loops so they are not limited to baseline x86-64 code generation).
/// sum_i a[i] * b[i]
float lora_dot(int family, const float *a, const float *b, long n);
/// y[i] += alpha * x[i]
void lora_axpy(int family, float alpha, const float *x, float *y, long n);
/// One decode-step attention head over L cached keys / values (row j at K + j * ld), as the
/// loops of lora_dot and lora_axpy it replaces give them, bit for bit, without a call per key:
/// s[j] = alpha * dot(q, K_j) for j < L; then o[0..hd) = sum of s[j] * V_j over the j with
/// s[j] != 0, in order of j, starting from zero (AVX2 keeps o in registers for hd <= 128).
void lora_attn_scores(int family, const float *q, const float *K, long ld, long L, long hd, float alpha, float *s);
void lora_attn_wsum(int family, const float *s, const float *V, long ld, long L, long hd, float *o);
/// lora_attn_scores and lora_attn_wsum for G query heads that share one key-value head (GQA's
/// group): head g's query at q + g * hd, its scores at s + g * lds, its output at o + g * hd.
/// The bits of a call per head; each key and value is loaded once for the group (a decode
/// step's cache comes from memory, not from cache, between the layers' weights).
void lora_attn_scores_heads(int family, const float *q, long G, const float *K, long ld, long L, long hd, float alpha,
                            float *s, long lds);
void lora_attn_wsum_heads(int family, const float *s, long lds, long G, const float *V, long ld, long L, long hd, float *o);
/// lora_attn_scores for R query rows (row r at q + r * ldq) of a causal chunk: row r against
/// keys 0 ..< L + r, scores at s + r * lds; the same bits per row as lora_attn_scores alone.
void lora_attn_scores_rows(int family, const float *q, long ldq, long R, const float *K, long ld, long L, long hd,
                           float alpha, float *s, long lds);

/// Training attention's products for one causal block of R query rows, row r being query
/// i0 + r, so row r pairs with keys 0 ... i0 + r (attn_train.c; FlashAttention.swift). Row-major
/// f32 with leading dimensions; the AVX2 family (and AVX-512, which has AVX2) in 6 x 16 register
/// tiles that stop at the diagonal, the portable family in plain loops.
/// scores:  C[r, j] = alpha * sum_k A[r, k] Bt[k, j] (k < hd) for j <= i0 + r; Bt is the keys
///          transposed ([hd, >= i0 + R]). Columns past i0 + r, up to i0 + R, may be written too.
/// apply:   C[r, n] = alpha * sum_{j <= i0 + r} P[r, j] V[j, n] for n < hd (C overwritten).
/// apply_t: C[j, n] (+)= alpha * sum_{r : i0 + r >= j} P[r, j] X[r, n] for j < i0 + R, n < hd.
/// apply and apply_t read P[r, j] for i0 + r < j < i0 + R too: those entries must be 0.
void lora_attn_block_scores(int family, long R, long i0, long hd, float alpha, const float *A, long lda,
                            const float *Bt, long ldb, float *C, long ldc);
void lora_attn_block_apply(int family, long R, long i0, long hd, float alpha, const float *P, long ldp,
                           const float *V, long ldv, float *C, long ldc);
void lora_attn_block_apply_t(int family, long R, long i0, long hd, float alpha, const float *P, long ldp,
                             const float *X, long ldx, float *C, long ldc, int accumulate);
/// At[c, r] = A[r, c] for r < rows, c < cols.
void lora_transpose(const float *A, long lda, long rows, long cols, float *At, long ldt);

/// LoRA's dropout over the element pairs j0 ..< j1 of n elements (dropout.c): pair j's 64 bits
/// h = SplitMix64's mixer of seed + j * 0x9E3779B97F4A7C15; element 2j is dropped when
/// (h & 0xFFFFFFFF) < threshold, element 2j + 1 when (h >> 32) < threshold (threshold <= 2^32);
/// keep[e] = 0 or 1, z[e] = keep ? x[e] * s : 0. Every family gives the same bits.
void lora_dropout_mask(int family, uint64_t seed, uint64_t threshold, const float *x, float s, uint8_t *keep, float *z,
                       long j0, long j1, long n);
/// y[i] = exp(x[i] - shift) and their sum (vexp.c): VectorOps.expShifted's Cephes polynomial,
/// 1024-element blocks of 8 lane sums added in Double; every family gives the same bits. y may
/// alias x.
double lora_exp_shifted(int family, float *y, const float *x, float shift, long n);
/// SwiGLU (Tensor's SwiGLU.swift) over elements 0..<n with VectorOps.exp's arithmetic, every
/// family the bits of the Swift SIMD code: h = g / (1 + exp(-g)) * u; backward with
/// den = 1 + exp(-g), s = 1 / den: dgate = d * u * s * (1 + g * (1 - s)), dup = d * (g / den),
/// each left to right, no fused operations. Outputs may alias inputs element for element.
void lora_swiglu_forward(int family, float *h, const float *gate, const float *up, long n);
void lora_swiglu_backward(int family, float *dgate, float *dup, const float *dh, const float *gate, const float *up, long n);
/// out[i] = a[i] + b[i] (out may alias a or b): the same bits in every family.
void lora_add(int family, float *out, const float *a, const float *b, long n);
/// The first index of the largest of x[0..<n], as `for i in 1..<n where x[i] > x[best]`
/// finds it (NaNs never win; 0 when x[0] is NaN or n < 1), in every family.
long lora_argmax(int family, const float *x, long n);

// ---- A spinning worker pool for short jobs (spinpool.c) -------------------------------------
typedef struct lora_pool lora_pool;
typedef void (*lora_task_fn)(void *ctx, long i);
/// `threads` - 1 worker threads (the caller is the last one). Destroy with lora_pool_destroy.
lora_pool *lora_pool_create(int threads);
void lora_pool_destroy(lora_pool *p);
int lora_pool_threads(const lora_pool *p);
/// Runs fn(ctx, i) for i in 0..<n, each task once, handed out in order to whichever thread is
/// free (tasks must not depend on which thread runs them), and returns when all are done.
/// One caller at a time.
void lora_pool_run(lora_pool *p, long n, lora_task_fn fn, void *ctx);
/// A counter that tasks of one job share: lora_count_add adds 1 (release), lora_count_wait
/// spins (pause) until it reaches target (acquire). For a job whose later tasks need all of its
/// first tasks done: tasks are handed out in order, so those are running or done by then.
void lora_count_add(long *counter);
void lora_count_wait(const long *counter, long target);

#endif
