// AVX-512 single-precision GEMM for the two products with a frozen weight W [N, K]:
//   forward         C[M, N] (+)= A[M, K] @ W^T     (lora_gemm_abt_*, lora_gemv_abt_*)
//   backward input  C[M, K] (+)= A[M, N] @ W       (lora_gemm_ab_*)
// with W in f32, as int8 rows with one f32 scale per row (W[n, k] = q[n, k] * scale[n]) or as
// bfloat16 (widened exactly to f32 wherever it is loaded: packing, GEMV), or as GGUF Q8_0 /
// Q4_0 / Q4_1 blocks (dequantized in packing, in whole blocks of depth; per block in GEMV).
// The OpenBLAS path in Sources/Tensor/Weight.swift is the fallback and the oracle.
//
// Blocking (BLIS-style, written for Zen 5: 48 KiB L1d, 1 MiB L2 per core; see gemm()):
//   for jc over the output columns, NC at a time
//     for pc over the depth, KC at a time (KC <= 768; the whole depth when it fits)
//       pack B[pc:pc+kc, jc:jc+nc] into panels of GEMM_NR = 48 columns, [kc][48] each
//       (KC x NC <= 576 KiB, in L2); int8 / bf16 weights are dequantized here, so they
//       stream from memory in their own width
//       for ir over the rows of A, GEMM_MR = 8 at a time    (the A micro-panel stays in L1)
//         for each B panel                                   (streams from L2)
//           micro-kernel: C[8, 48] (+)= A[8, kc] @ Bpanel[kc, 48]
// The micro-kernel keeps 8 x 3 zmm accumulators, loads 3 vectors of B per k and broadcasts
// 8 scalars of A straight from A's rows (A is not packed: its rows are already contiguous in
// k, and the micro-panel is reused from L1 across all B panels). 8 x 48 measured as fast as
// 14 x 32 and 12 x 32 and faster than 6 x 64; it reaches ~95% of the FMA peak on one core.
// Edges: B panels are zero-padded to 48 columns and C is written with masked stores; row
// counts below 8 have their own unrolled kernels.
//
// Small M (decoding, matrix-vector-like; lora_gemv_abt_*): no packing, weights streamed once
// with software prefetch; see its section below.
//
// Threading is the caller's: split the output columns into disjoint ranges (multiples of
// lora_gemm_panel_width()) and call these functions from different threads. Packing memory is
// per thread, allocated on first use and freed when the thread exits.
//
// Everything AVX-512 is compiled with a target attribute, so the rest of the target stays
// baseline x86-64; lora_gemm_avx512_available() says at run time whether it may be called.
// On other architectures the entry points exist and must not be called (available() is 0).
#include "CKernels.h"
#include "families.h"
#include <math.h>
#include <stdlib.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#include <pthread.h>

#ifndef GEMM_MR
#define GEMM_MR 8      // rows of C per micro-kernel (broadcasts of A)
#endif
#ifndef GEMM_NV
#define GEMM_NV 3      // zmm vectors of C columns per micro-kernel
#endif
#define GEMM_NR (16 * GEMM_NV)
#ifndef GEMM_KC_MAX
#define GEMM_KC_MAX 768   // deepest block: the A micro-panel, MR x KC floats, stays in L1
#endif
#ifndef GEMM_NC_DEEP
#define GEMM_NC_DEEP 384  // widest block when the depth needs several blocks
#endif
#ifndef GEMM_B_FLOATS
#define GEMM_B_FLOATS (144 * 1024)  // packed B block, KC x NC floats (576 KiB, in L2)
#endif

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,fma,f16c")))
#define INLINE static inline __attribute__((always_inline)) TARGET

int lora_gemm_avx512_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma")
        && __builtin_cpu_supports("f16c");
}

int lora_gemm_panel_width(void) { return GEMM_NR; }

// ---- Per-thread packing buffer ------------------------------------------------------------

static pthread_key_t pack_key;
static pthread_once_t pack_once = PTHREAD_ONCE_INIT;
static void pack_key_init(void) { pthread_key_create(&pack_key, free); }

/// GEMM_B_FLOATS floats, 64-byte aligned, one per thread.
static float *pack_buffer(void) {
    pthread_once(&pack_once, pack_key_init);
    float *p = pthread_getspecific(pack_key);
    if (!p) {
        void *raw = NULL;
        if (posix_memalign(&raw, 64, sizeof(float) * GEMM_B_FLOATS) != 0) abort();
        p = raw;
        pthread_setspecific(pack_key, p);
    }
    return p;
}

// ---- Small helpers ------------------------------------------------------------------------

INLINE __mmask16 mask16(long n) {  // the first min(max(n, 0), 16) lanes
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/// 16 int8 values (first `m` lanes) to f32, times `s`.
INLINE __m512 load_i8(__mmask16 m, const int8_t *p, __m512 s) {
    __m128i b = _mm_maskz_loadu_epi8(m, p);
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)), s);
}

/// 16 bfloat16 values (first `m` lanes) widened to f32 (exact: the bits go to the high half).
INLINE __m512 load_bf16(__mmask16 m, const uint16_t *p) {
    __m256i h = _mm256_maskz_loadu_epi16(m, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/// The IEEE half at p (little-endian), exactly, in every lane.
INLINE __m512 half_bcast(const uint8_t *p) {
    return _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(lora_load_u16(p))));
}

/// The quants of block `b` for weights 16h..16h+15 (h = 0, 1) as f32, not yet scaled: Q4_0
/// already minus 8, so W = d * q, or d * q + m for Q4_1.
INLINE __m512 block_q16(const int fmt, const uint8_t *b, int h) {
    if (fmt == LORA_FORMAT_Q8_0)
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 2 + 16 * h))));
    __m128i v = _mm_loadu_si128((const __m128i *)(b + (fmt == LORA_FORMAT_Q4_1 ? 4 : 2)));
    if (h) v = _mm_srli_epi16(v, 4);
    v = _mm_and_si128(v, _mm_set1_epi8(15));
    if (fmt == LORA_FORMAT_Q4_0) v = _mm_sub_epi8(v, _mm_set1_epi8(8));
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v));
}

/// Weights 16h..16h+15 of block `b`. d * q is exact in f32 (11 x 8 bits at most), so the
/// Q4_1 value is one rounding of d * q + m, fused or not.
INLINE __m512 block_w16(const int fmt, const uint8_t *b, int h) {
    __m512 q = block_q16(fmt, b, h), d = half_bcast(b);
    return fmt == LORA_FORMAT_Q4_1 ? _mm512_fmadd_ps(d, q, half_bcast(b + 2)) : _mm512_mul_ps(d, q);
}

/// Block-format weights i..i+16 (first `m` lanes; the rest 0). A run of 16 that starts on a
/// half block is one vector (the whole block exists even when fewer lanes are wanted); other
/// starts (a column range beginning mid-block) go one by one.
INLINE __m512 load_block_w(const int fmt, __mmask16 m, const void *w, long i) {
    if ((i & 15) == 0) {
        const uint8_t *b = (const uint8_t *)w + i / LORA_QK * lora_block_bytes(fmt);
        return _mm512_maskz_mov_ps(m, block_w16(fmt, b, (int)((i >> 4) & 1)));
    }
    float t[16];
    for (int j = 0; j < 16; j++) t[j] = (m >> j) & 1 ? lora_block_value(fmt, w, i + j) : 0;
    return _mm512_loadu_ps(t);
}

/// NF4 weights i..i+16 (flat indices; first `m` lanes, the rest 0). A full run starting at a
/// multiple of 16 lies in one 64-weight block: 8 bytes, each doubled and shifted so lane 2j
/// takes the high nibble, looked up in the code book with one permute, times the block's
/// absmax (the same float product as lora_nf4_value); other runs go one by one.
INLINE __m512 nf4_code16(const lora_nf4 *d, long i) {  // code book values of weights i..i+16
    __m128i b = _mm_loadl_epi64((const __m128i *)(d->q + (i >> 1)));
    __m512i v = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(b, b));
    v = _mm512_and_si512(_mm512_srlv_epi32(v, _mm512_set4_epi32(0, 4, 0, 4)), _mm512_set1_epi32(15));
    return _mm512_permutexvar_ps(v, _mm512_loadu_ps(lora_nf4_code));
}
INLINE __m512 load_nf4_w(__mmask16 m, const void *w, long i) {
    const lora_nf4 *d = w;
    if ((i & 15) == 0 && m == (__mmask16)0xFFFF)
        return _mm512_mul_ps(nf4_code16(d, i), _mm512_set1_ps(lora_nf4_absmax(d, i / LORA_NF4_BLOCK)));
    float t[16] = {0};
    int cnt = 0;
    while (cnt < 16 && ((m >> cnt) & 1)) cnt++;
    lora_nf4_run(d, i, cnt, t);
    return _mm512_loadu_ps(t);
}

/// 16 weights of any format (first `m` lanes; the rest 0) as f32; `s` the row's int8 scale.
INLINE __m512 load_w(int fmt, __mmask16 m, const void *w, long i, __m512 s) {
    if (fmt == LORA_FORMAT_NF4) return load_nf4_w(m, w, i);
    if (lora_is_block_format(fmt)) return load_block_w(fmt, m, w, i);
    if (fmt == LORA_FORMAT_I8_ROWS) return load_i8(m, (const int8_t *)w + i, s);
    if (fmt == LORA_FORMAT_BF16) return load_bf16(m, (const uint16_t *)w + i);
    return _mm512_maskz_loadu_ps(m, (const float *)w + i);
}

/// In-register transpose: r[t][k] -> r[k][t] for a 16 x 16 block.
INLINE void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4g + j]: rows 4g..4g+3, lane L holds k = j + 4L.
    __m512 u[16];
    for (int g = 0; g < 4; g++) {
        __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 2]);
        __m512d c = _mm512_castps_pd(t[4 * g + 1]), d = _mm512_castps_pd(t[4 * g + 3]);
        u[4 * g + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
        u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
    }
    for (int j = 0; j < 4; j++) {
        __m512 v0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x44);
        __m512 v1 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x44);
        __m512 v2 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xEE);
        __m512 v3 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xEE);
        r[j] = _mm512_shuffle_f32x4(v0, v1, 0x88);
        r[j + 4] = _mm512_shuffle_f32x4(v0, v1, 0xDD);
        r[j + 8] = _mm512_shuffle_f32x4(v2, v3, 0x88);
        r[j + 12] = _mm512_shuffle_f32x4(v2, v3, 0xDD);
    }
}

// ---- Packing B ----------------------------------------------------------------------------
// A packed block holds columns col0..col0+nc of the product's B (as [depth, cols]) for depth
// d0..d0+kc: panel p is bp[p * kc * NR ...], [kc][NR], zero beyond nc.

/// Forward: the product's B is W^T, W [N, K] in format `fmt`; gathers 16 weight rows x 16
/// depths, transposes in registers.
INLINE void pack_bt(float *bp, int fmt, const void *w, const float *scales, long ldw,
                    long col0, long nc, long d0, long kc) {
    for (long p = 0; p * GEMM_NR < nc; p++) {
        float *dst = bp + p * kc * GEMM_NR;
        for (int v = 0; v < GEMM_NV; v++) {
            long j0 = p * GEMM_NR + 16 * v;  // first column of this 16-wide strip
            long rows = nc - j0;
            for (long k = 0; k < kc; k += 16) {
                __mmask16 km = mask16(kc - k);
                __m512 r[16];
                for (int t = 0; t < 16; t++) {
                    long n = col0 + j0 + t;
                    if (t >= rows) r[t] = _mm512_setzero_ps();
                    else r[t] = load_w(fmt, km, w, n * ldw + d0 + k,
                                       fmt == LORA_FORMAT_I8_ROWS ? _mm512_set1_ps(scales[n])
                                                                  : _mm512_setzero_ps());
                }
                transpose16(r);
                long kk = kc - k < 16 ? kc - k : 16;
                for (long t = 0; t < kk; t++) _mm512_store_ps(dst + (k + t) * GEMM_NR + 16 * v, r[t]);
            }
        }
    }
}

/// Backward input: the product's B is W [N, K] itself (depth = N); copies rows, dequantizing.
INLINE void pack_b(float *bp, int fmt, const void *w, const float *scales, long ldw,
                   long col0, long nc, long d0, long kc) {
    long np = (nc + GEMM_NR - 1) / GEMM_NR;
    for (long k = 0; k < kc; k++) {
        long d = d0 + k;
        __m512 s = fmt == LORA_FORMAT_I8_ROWS ? _mm512_set1_ps(scales[d]) : _mm512_setzero_ps();
        for (long p = 0; p < np; p++) {
            float *dst = bp + p * kc * GEMM_NR + k * GEMM_NR;
            for (int v = 0; v < GEMM_NV; v++) {
                long j = p * GEMM_NR + 16 * v;
                __mmask16 m = mask16(nc - j);
                __m512 x = load_w(fmt, m, w, d * ldw + col0 + j, s);
                _mm512_store_ps(dst + 16 * v, x);
            }
        }
    }
}

// ---- Micro-kernel -------------------------------------------------------------------------

/// C[mr, NR] (+)= A[mr, kc] @ B[kc, NR]; A rows at stride lda, B a packed panel, C masked
/// per 16 columns by `mask`. `load_c`: add to C, else overwrite.
INLINE void ukernel(const int mr, long kc, const float *restrict a, long lda,
                    const float *restrict b, float *restrict c, long ldc,
                    const __mmask16 *mask, int load_c) {
    __m512 acc[GEMM_MR][GEMM_NV];
    for (int i = 0; i < mr; i++)
        for (int v = 0; v < GEMM_NV; v++) acc[i][v] = _mm512_setzero_ps();
    for (long k = 0; k < kc; k++) {
        __m512 bv[GEMM_NV];
        for (int v = 0; v < GEMM_NV; v++) bv[v] = _mm512_load_ps(b + k * GEMM_NR + 16 * v);
        for (int i = 0; i < mr; i++) {
            __m512 av = _mm512_set1_ps(a[i * lda + k]);
            for (int v = 0; v < GEMM_NV; v++) acc[i][v] = _mm512_fmadd_ps(av, bv[v], acc[i][v]);
        }
    }
    for (int i = 0; i < mr; i++) {
        for (int v = 0; v < GEMM_NV; v++) {
            float *p = c + i * ldc + 16 * v;
            __m512 r = acc[i][v];
            if (load_c) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(mask[v], p));
            _mm512_mask_storeu_ps(p, mask[v], r);
        }
    }
}

#define UK(n) case n: ukernel(n, kc, a, lda, b, c, ldc, mask, load_c); break;
TARGET __attribute__((noinline))
static void ukernel_rows(int mr, long kc, const float *a, long lda, const float *b, float *c,
                         long ldc, const __mmask16 *mask, int load_c) {
    switch (mr) {
        UK(1) UK(2) UK(3) UK(4) UK(5) UK(6) UK(7)
#if GEMM_MR >= 8
        UK(8)
#endif
#if GEMM_MR >= 9
        UK(9)
#endif
#if GEMM_MR >= 10
        UK(10)
#endif
#if GEMM_MR >= 11
        UK(11)
#endif
#if GEMM_MR >= 12
        UK(12)
#endif
#if GEMM_MR >= 13
        UK(13)
#endif
#if GEMM_MR >= 14
        UK(14)
#endif
        default: break;
    }
}
#undef UK

TARGET __attribute__((noinline))
static void ukernel_full(long kc, const float *a, long lda, const float *b, float *c, long ldc,
                         const __mmask16 *mask, int load_c) {
    ukernel(GEMM_MR, kc, a, lda, b, c, ldc, mask, load_c);
}

// ---- Driver -------------------------------------------------------------------------------

/// C[M, col0:col0+ncols] (+)= A[M, depth] @ B[depth, col0:col0+ncols]; B is W^T (`trans`)
/// or W, in format `fmt` (`scales` for int8 rows).
TARGET static void gemm(long M, long col0, long ncols, long depth, const float *A, long lda,
                        int trans, int fmt, const void *w, const float *scales, long ldw,
                        float *C, long ldc, int accumulate) {
    if (M <= 0 || ncols <= 0) return;
    if (depth <= 0) {
        if (!accumulate)
            for (long i = 0; i < M; i++)
                for (long j = 0; j < ncols; j++) C[i * ldc + col0 + j] = 0;
        return;
    }
    long kcb, ncb;
    lora_gemm_blocks(depth, ncols, trans, fmt, GEMM_KC_MAX, GEMM_NC_DEEP, GEMM_B_FLOATS, GEMM_NR, &kcb, &ncb);
    float *bp = pack_buffer();
    for (long jc = 0; jc < ncols; jc += ncb) {
        long nc = ncols - jc < ncb ? ncols - jc : ncb;
        long np = (nc + GEMM_NR - 1) / GEMM_NR;
        for (long pc = 0; pc < depth; pc += kcb) {
            long kc = depth - pc < kcb ? depth - pc : kcb;
            // One specialization per format, so the format tests leave the packing loops.
#define PACK(f) do { if (trans) pack_bt(bp, f, w, scales, ldw, col0 + jc, nc, pc, kc); \
                     else pack_b(bp, f, w, scales, ldw, col0 + jc, nc, pc, kc); } while (0)
            switch (fmt) {
            case LORA_FORMAT_I8_ROWS: PACK(LORA_FORMAT_I8_ROWS); break;
            case LORA_FORMAT_BF16: PACK(LORA_FORMAT_BF16); break;
            case LORA_FORMAT_Q8_0: PACK(LORA_FORMAT_Q8_0); break;
            case LORA_FORMAT_Q4_0: PACK(LORA_FORMAT_Q4_0); break;
            case LORA_FORMAT_Q4_1: PACK(LORA_FORMAT_Q4_1); break;
            case LORA_FORMAT_NF4: PACK(LORA_FORMAT_NF4); break;
            default: PACK(LORA_FORMAT_F32); break;
            }
#undef PACK
            int load_c = accumulate || pc > 0;
            for (long ir = 0; ir < M; ir += GEMM_MR) {
                long mr = M - ir < GEMM_MR ? M - ir : GEMM_MR;
                const float *a = A + ir * lda + pc;
                for (long p = 0; p < np; p++) {
                    __mmask16 mask[GEMM_NV];
                    for (int v = 0; v < GEMM_NV; v++) mask[v] = mask16(nc - p * GEMM_NR - 16 * v);
                    float *c = C + ir * ldc + col0 + jc + p * GEMM_NR;
                    const float *b = bp + p * kc * GEMM_NR;
                    if (mr == GEMM_MR) ukernel_full(kc, a, lda, b, c, ldc, mask, load_c);
                    else ukernel_rows((int)mr, kc, a, lda, b, c, ldc, mask, load_c);
                }
            }
        }
    }
}

void lora_gemm_abt_f32(long M, long n0, long n1, long K, const float *A, long lda,
                       const float *W, long ldw, float *C, long ldc, int accumulate) {
    gemm(M, n0, n1 - n0, K, A, lda, 1, LORA_FORMAT_F32, W, NULL, ldw, C, ldc, accumulate);
}

void lora_gemm_abt_i8(long M, long n0, long n1, long K, const float *A, long lda,
                      const int8_t *Wq, long ldw, const float *scales, float *C, long ldc,
                      int accumulate) {
    gemm(M, n0, n1 - n0, K, A, lda, 1, LORA_FORMAT_I8_ROWS, Wq, scales, ldw, C, ldc, accumulate);
}

void lora_gemm_ab_f32(long M, long k0, long k1, long N, const float *A, long lda,
                      const float *W, long ldw, float *C, long ldc, int accumulate) {
    gemm(M, k0, k1 - k0, N, A, lda, 0, LORA_FORMAT_F32, W, NULL, ldw, C, ldc, accumulate);
}

void lora_gemm_ab_i8(long M, long k0, long k1, long N, const float *A, long lda,
                     const int8_t *Wq, long ldw, const float *scales, float *C, long ldc,
                     int accumulate) {
    gemm(M, k0, k1 - k0, N, A, lda, 0, LORA_FORMAT_I8_ROWS, Wq, scales, ldw, C, ldc, accumulate);
}

// ---- Small M (decoding): C[M, n0:n1] (+)= A[M, K] @ W[n0:n1, K]^T without packing ---------
// Memory bound: each weight row is read once (int8 rows as int8) and dotted with all M rows
// of A, GEMV_RB weight rows at a time, with software prefetch GEMV_PF rows ahead (without it
// the loop waits on DRAM latency once per row). The per-row scale is applied to the finished
// dot product.
//
// Int8 rows are widened without cross-lane shuffles: 64 bytes are loaded as 16 dwords and
// byte j of every dword is shifted into place (slli, srai), so vector j holds the weights
// k = 4t + j. A is permuted to match once per call (xp[m][64b + 16j + t] = A[m][64b + 4t + j],
// zero past K), and each dot product runs over the permuted order.

#define GEMV_RB 4
// Rows of W prefetched ahead, into L2: into L1 the f32 GEMV streamed 14 GB/s from DRAM, into L2
// 20-25 (Zen 4, one thread, M = 1-4; the AVX2 family the same, 14 -> 21-23).
#define GEMV_PF 16
#define GEMV_KSEG 4096  // depth handled per permutation of A

INLINE __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
#define H8(x) _mm256_add_ps(_mm512_castps512_ps256(x), \
                            _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)))
#define H4(y) _mm_add_ps(_mm256_castps256_ps128(y), _mm256_extractf128_ps(y, 1))
    __m128 a4 = H4(H8(a)), b4 = H4(H8(b)), c4 = H4(H8(c)), d4 = H4(H8(d));
#undef H8
#undef H4
    return _mm_hadd_ps(_mm_hadd_ps(a4, b4), _mm_hadd_ps(c4, d4));
}

/// Stores sums acc[m][0..rows) (times the rows' scales) into C rows 0..mb at column n.
INLINE void gemv_store(const int mb, __m512 (*acc)[GEMV_RB], const float *scales, long n,
                       long rows, float *C, long ldc, int accumulate) {
    __mmask8 sm = (__mmask8)((1u << rows) - 1);
    __m128 s = scales ? _mm_maskz_loadu_ps(sm, scales + n) : _mm_set1_ps(1);
    for (int m = 0; m < mb; m++) {
        __m128 y = hsum4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]);
        if (scales) y = _mm_mul_ps(y, s);
        float *p = C + m * ldc + n;
        if (accumulate) y = _mm_add_ps(y, _mm_maskz_loadu_ps(sm, p));
        _mm_mask_storeu_ps(p, sm, y);
    }
}

/// f32 weights: rows n..n+rows (rows <= 4) of C for A rows 0..mb (mb <= 4).
/// Prefetches stay inside the call's rows (n1): LoRA's A is 8-64 rows, so GEMV_PF rows ahead
/// used to fetch another matrix's worth of whatever followed it.
INLINE void gemv_f32_block(const int mb, long K, const float *A, long lda, const float *w,
                           long ldw, long n, long rows, long n1, float *C, long ldc, int accumulate) {
    __m512 acc[4][GEMV_RB];
    for (int m = 0; m < mb; m++)
        for (int r = 0; r < GEMV_RB; r++) acc[m][r] = _mm512_setzero_ps();
    const float *wr[GEMV_RB];  // missing rows repeat the last one; their sums are not stored
    const float *pf[GEMV_RB];  // GEMV_PF rows ahead while inside the rows, else the row itself
    for (int r = 0; r < GEMV_RB; r++) {
        wr[r] = w + (n + (r < rows ? r : rows - 1)) * ldw;
        pf[r] = n + r + GEMV_PF < n1 ? wr[r] + GEMV_PF * ldw : wr[r];
    }
    for (long k = 0; k < K; k += 16) {
        __mmask16 km = mask16(K - k);
        __m512 wv[GEMV_RB];
        for (int r = 0; r < GEMV_RB; r++) {
            _mm_prefetch((const char *)(pf[r] + k), _MM_HINT_T1);
            wv[r] = _mm512_maskz_loadu_ps(km, wr[r] + k);
        }
        for (int m = 0; m < mb; m++) {
            __m512 x = _mm512_maskz_loadu_ps(km, A + m * lda + k);
            for (int r = 0; r < GEMV_RB; r++) acc[m][r] = _mm512_fmadd_ps(x, wv[r], acc[m][r]);
        }
    }
    gemv_store(mb, acc, NULL, n, rows, C, ldc, accumulate);
}

/// Int8 weights against permuted A rows `xp` (stride ldx, K rounded up to 64, zero padded).
/// Accumulators per (m, row): 4 / mb of them, so M = 1 still has 16 independent chains.
INLINE void gemv_i8_block(const int mb, long K, const float *xp, long ldx, const int8_t *q,
                          long ldw, const float *scales, long n, long rows, float *C, long ldc,
                          int accumulate) {
    enum { NA = 4 };
    const int na = mb == 1 ? 4 : mb == 2 ? 2 : 1;
    __m512 acc[4][GEMV_RB][NA];
    for (int m = 0; m < mb; m++)
        for (int r = 0; r < GEMV_RB; r++)
            for (int a = 0; a < na; a++) acc[m][r][a] = _mm512_setzero_ps();
    const int8_t *qr[GEMV_RB];
    for (int r = 0; r < GEMV_RB; r++) qr[r] = q + (n + (r < rows ? r : rows - 1)) * ldw;
    for (long k = 0; k < K; k += 64) {
        __mmask64 km = K - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (K - k)) - 1);
        for (int r = 0; r < GEMV_RB; r++) {
            _mm_prefetch((const char *)(qr[r] + GEMV_PF * ldw + k), _MM_HINT_T1);
            __m512i v = _mm512_maskz_loadu_epi8(km, qr[r] + k);
            __m512 wj[4];
            wj[0] = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(v, 24), 24));
            wj[1] = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(v, 16), 24));
            wj[2] = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(v, 8), 24));
            wj[3] = _mm512_cvtepi32_ps(_mm512_srai_epi32(v, 24));
            for (int m = 0; m < mb; m++)
                for (int j = 0; j < 4; j++)
                    acc[m][r][j % na] = _mm512_fmadd_ps(wj[j], _mm512_load_ps(xp + m * ldx + k + 16 * j),
                                                        acc[m][r][j % na]);
        }
    }
    __m512 sum[4][GEMV_RB];
    for (int m = 0; m < mb; m++)
        for (int r = 0; r < GEMV_RB; r++) {
            sum[m][r] = acc[m][r][0];
            for (int a = 1; a < na; a++) sum[m][r] = _mm512_add_ps(sum[m][r], acc[m][r][a]);
        }
    gemv_store(mb, sum, scales, n, rows, C, ldc, accumulate);
}


TARGET static void gemv_f32(long M, long n0, long n1, long K, const float *A, long lda,
                            const float *w, long ldw, float *C, long ldc, int accumulate) {
    for (long n = n0; n < n1; n += GEMV_RB) {
        long rows = n1 - n < GEMV_RB ? n1 - n : GEMV_RB;
        for (long m = 0; m < M; m += 4) {
#define CALL(mb) gemv_f32_block(mb, K, A + m * lda, lda, w, ldw, n, rows, n1, C + m * ldc, ldc, accumulate)
            GEMV_MB_SWITCH(M - m, CALL)
#undef CALL
        }
    }
}

TARGET static void gemv_i8(long M, long n0, long n1, long K, const float *A, long lda,
                           const int8_t *q, long ldw, const float *scales, float *C, long ldc,
                           int accumulate) {
    if (K <= 0) {  // empty dot products
        if (!accumulate)
            for (long m = 0; m < M; m++)
                for (long n = n0; n < n1; n++) C[m * ldc + n] = 0;
        return;
    }
    float *xp = pack_buffer();
    for (long k0 = 0; k0 < K; k0 += GEMV_KSEG) {
        long ks = K - k0 < GEMV_KSEG ? K - k0 : GEMV_KSEG;
        long ldx = (ks + 63) / 64 * 64;
        long mchunk = GEMM_B_FLOATS / ldx / 4 * 4;  // rows of A permuted at once
        int acc = accumulate || k0 > 0;
        for (long m0 = 0; m0 < M; m0 += mchunk) {
            long mc = M - m0 < mchunk ? M - m0 : mchunk;
            for (long m = 0; m < mc; m++) {
                const float *x = A + (m0 + m) * lda + k0;
                float *dst = xp + m * ldx;
                for (long b = 0; b < ldx; b += 64)
                    for (int j = 0; j < 4; j++)
                        for (int t = 0; t < 16; t++) {
                            long k = b + 4 * t + j;
                            dst[b + 16 * j + t] = k < ks ? x[k] : 0;
                        }
            }
            for (long n = n0; n < n1; n += GEMV_RB) {
                long rows = n1 - n < GEMV_RB ? n1 - n : GEMV_RB;
                for (long m = 0; m < mc; m += 4) {
#define CALL(mb) gemv_i8_block(mb, ks, xp + m * ldx, ldx, q + k0, ldw, scales, n, rows, \
                               C + (m0 + m) * ldc, ldc, acc)
                    GEMV_MB_SWITCH(mc - m, CALL)
#undef CALL
                }
            }
        }
    }
}

// ---- Int8 rows against fixed-point activations, with VNNI (decoding) ------------------------
//
// The FMA kernel above spends ~11 shifts and conversions per 64 weights before its 4 FMAs, so
// it runs at ~half the memory bandwidth. With VNNI the weights go into `vpdpbusd` as they are
// (64 byte products per instruction) against each row of A written as 32-bit fixed point:
// v = round(a * 2^s), with 2^s putting the row's largest |a| in [2^30, 2^31). The rounding is at
// most max|a| * 2^-32 per activation, finer than f32's rounding of the sums themselves, so this
// keeps the f32 semantics of bitsandbytes' int8 rows (f32 activations), unlike Q8 activations.
// u = v + 2^31 is split into four unsigned bytes u_j, and
//     sum_k q_k v_k = sum_j 2^8j (sum_k q_k u_jk) - 2^31 sum_k q_k,
// every sum exact in integers: int32 per lane and across lanes while K <= LORA_I8_FIXED_KMAX (a lane gains
// at most 4 * 255 * 128 per 64 depths), int64 when the digits are combined. The total is scaled
// once, in double. Rows of A with Inf or NaN take the FMA kernel, which propagates them as f32 does.

#define I8V_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")))
#define I8V_INLINE static inline __attribute__((always_inline)) I8V_TARGET
#ifndef I8V_PF
// Bytes of W prefetched ahead, into L2: at 2 KB into L1 the loads still waited on memory (Zen 4,
// one thread, from DRAM, M = 1: 576 x 1536 13-20 -> 26-31 GB/s, 1536 x 576 21-25 -> 21-27).
#define I8V_PF 8192
#endif

/// Row `a` (K values) as four byte planes of u (plane j at planes + j * ldp, K padded to ldp
/// with the digits of 0). Returns the exponent s. The row must be finite.
I8V_TARGET static int i8v_digits(long K, const float *a, uint8_t *planes, long ldp) {
    __m512 mx = _mm512_setzero_ps();
    for (long k = 0; k < K; k += 16)
        mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_maskz_loadu_ps(mask16(K - k), a + k)));
    const float amax = _mm512_reduce_max_ps(mx);
    int e = 0;
    if (amax > 0) (void)frexpf(amax, &e);  // amax < 2^e
    const int s = 31 - e;
    const __m512 sc = _mm512_set1_ps((float)s);
    const __m512i bias = _mm512_set1_epi32((int)0x80000000u);
    for (long k = 0; k < ldp; k += 16) {
        // scalef multiplies by 2^s exactly without forming 2^s (s may pass 127 for tiny rows);
        // |a * 2^s| < 2^31, so the rounding conversion cannot overflow.
        __m512 t = _mm512_scalef_ps(_mm512_maskz_loadu_ps(mask16(K - k), a + k), sc);
        __m512i u = _mm512_xor_si512(_mm512_cvtps_epi32(t), bias);
        for (int j = 0; j < 4; j++)
            _mm_storeu_si128((__m128i *)(planes + j * ldp + k), _mm512_cvtepi32_epi8(_mm512_srli_epi32(u, 8 * j)));
    }
    return s;
}

/// 1 when every value of the M rows of A is finite.
I8V_TARGET static int i8v_finite(long M, long K, const float *A, long lda) {
    const __m512 inf = _mm512_set1_ps(__builtin_inff());
    __mmask16 bad = 0;
    for (long m = 0; m < M; m++)
        for (long k = 0; k < K; k += 16) {
            __mmask16 km = mask16(K - k);
            __m512 x = _mm512_abs_ps(_mm512_maskz_loadu_ps(km, A + m * lda + k));
            bad |= _mm512_mask_cmp_ps_mask(km, x, inf, _CMP_NLT_UQ);  // |x| >= inf, or NaN
        }
    return bad == 0;
}

/// z[L[i]] = the sum of v[i]'s 16 lanes, by a transposing tree of 45 operations (16 separate
/// reductions take ~140). L is its own inverse.
static const int i8v_lane[16] = {0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15};
I8V_INLINE __m512i i8v_hsum16(const __m512i v[16]) {
    __m512i w[8], x[4], y[2];
    for (int i = 0; i < 8; i++)  // 128-bit chunks: [v_i, v_i, v_i+8, v_i+8]
        w[i] = _mm512_add_epi32(_mm512_shuffle_i32x4(v[i], v[i + 8], _MM_SHUFFLE(1, 0, 1, 0)),
                                _mm512_shuffle_i32x4(v[i], v[i + 8], _MM_SHUFFLE(3, 2, 3, 2)));
    for (int i = 0; i < 4; i++)  // [v_i, v_i+8, v_i+4, v_i+12]
        x[i] = _mm512_add_epi32(_mm512_shuffle_i32x4(w[i], w[i + 4], _MM_SHUFFLE(2, 0, 2, 0)),
                                _mm512_shuffle_i32x4(w[i], w[i + 4], _MM_SHUFFLE(3, 1, 3, 1)));
    for (int i = 0; i < 2; i++)  // per chunk, two lanes of x[i]'s vector and two of x[i + 2]'s
        y[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(x[i], x[i + 2]), _mm512_unpackhi_epi64(x[i], x[i + 2]));
    const __m512 a = _mm512_castsi512_ps(y[0]), b = _mm512_castsi512_ps(y[1]);
    return _mm512_add_epi32(_mm512_castps_si512(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0))),
                            _mm512_castps_si512(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1))));
}

/// C[m + i][n + r] (+)= sum_k q[n + r][k] v_k * units[m + i] * scales[n + r] for rows r < nr of W
/// and rows i < mb of A (cells c = r * mb + i, nr * mb <= 3). Rows of W go one after another: one
/// sequential stream from memory is the fastest on Zen 4 for short rows (16-17 against 8-10 GB/s
/// with four rows interleaved, one core, 576-1536 deep). A row's weight sum (for the 2^31 offset)
/// is taken once for all rows of A. Every sum is exact, so the grouping never changes a bit.
I8V_INLINE void i8v_group(const int nr, const int mb, long K, const uint8_t *xp, long per_row, long ldp,
                          const int8_t *q, long ldw, long n, const double *units, const float *scales,
                          float *C, long ldc, int accumulate) {
    // acc[c * 4 + j]: cell c's digit j; acc[12 + r]: row r's weight sum.
    __m512i acc[16];
    for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_si512();
    const __m512i ones = _mm512_set1_epi8(1);
#pragma GCC unroll 3
    for (int r = 0; r < nr; r++) {  // unrolled, so the accumulators stay in registers
        const int8_t *qr = q + (n + r) * ldw;
        for (long k = 0; k < K; k += 64) {
            __mmask64 km = K - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (K - k)) - 1);
            _mm_prefetch((const char *)(qr + k + I8V_PF), _MM_HINT_T1);
            const __m512i w = _mm512_maskz_loadu_epi8(km, qr + k);
            for (int i = 0; i < mb; i++)
                for (int j = 0; j < 4; j++)
                    acc[4 * (r * mb + i) + j] = _mm512_dpbusd_epi32(
                        acc[4 * (r * mb + i) + j], _mm512_loadu_si512((const void *)(xp + i * per_row + j * ldp + k)), w);
            acc[12 + r] = _mm512_dpbusd_epi32(acc[12 + r], ones, w);
        }
    }
    __m512i in[16];
    for (int i = 0; i < 16; i++) in[i] = acc[i8v_lane[i]];
    const __m512i z = i8v_hsum16(in);  // lane 4c + j: cell c's digit j; lane 12 + r: row r's sum
    // In int64: digit j times 2^8j, a row's weight sum times 2^31; then each cell's four digits
    // summed (pairs within 128 bits, then 128-bit halves within 256).
    const __m512i lo = _mm512_sllv_epi64(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(z)),
                                         _mm512_set_epi64(24, 16, 8, 0, 24, 16, 8, 0));
    const __m512i hi = _mm512_sllv_epi64(_mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(z, 1)),
                                         _mm512_set_epi64(0, 31, 31, 31, 24, 16, 8, 0));
    __m512i slo = _mm512_add_epi64(lo, _mm512_shuffle_epi32(lo, _MM_PERM_BADC));
    slo = _mm512_add_epi64(slo, _mm512_shuffle_i64x2(slo, slo, _MM_SHUFFLE(2, 3, 0, 1)));
    __m512i shi = _mm512_add_epi64(hi, _mm512_shuffle_epi32(hi, _MM_PERM_BADC));
    shi = _mm512_add_epi64(shi, _mm512_shuffle_i64x2(shi, shi, _MM_SHUFFLE(2, 3, 0, 1)));
    // Cells 0, 1, 2 sit in lanes 0 and 4 of slo and 0 of shi; cell c's row sum in lane 4 + c / mb of hi.
    const __m512i sums = _mm512_permutex2var_epi64(slo, _mm512_set_epi64(0, 0, 0, 0, 0, 8, 4, 0), shi);
    const __m512i rowsum = _mm512_permutexvar_epi64(
        _mm512_set_epi64(4, 4, 4, 4, 4, 4 + 2 / mb, 4 + 1 / mb, 4), hi);
    const __m512d t = _mm512_cvtepi64_pd(_mm512_sub_epi64(sums, rowsum));
    const int cells = nr * mb;
    __m512d u, sc;
    if (mb == 1) {
        u = _mm512_set1_pd(units[0]);
        sc = _mm512_cvtps_pd(_mm256_maskz_loadu_ps((__mmask8)((1u << nr) - 1), scales + n));
    } else {
        u = _mm512_maskz_loadu_pd((__mmask8)((1u << mb) - 1), units);
        sc = _mm512_set1_pd((double)scales[n]);
    }
    const __m256 y = _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_mul_pd(t, u), sc));
    if (mb == 1) {  // cells are C[0][n + r]: contiguous
        const __mmask8 cm = (__mmask8)((1u << cells) - 1);
        float *c = C + n;
        _mm256_mask_storeu_ps(c, cm, accumulate ? _mm256_add_ps(_mm256_maskz_loadu_ps(cm, c), y) : y);
    } else {  // cells are C[i][n]: one per row of C
        float v[8];
        _mm256_storeu_ps(v, y);
        for (int i = 0; i < mb; i++) C[i * ldc + n] = accumulate ? C[i * ldc + n] + v[i] : v[i];
    }
}

/// lora_i8_fixed_gemv on the VNNI family (see CKernels.h).
I8V_TARGET static void i8v_gemv(long M, long n0, long n1, long K, const uint8_t *planes, const double *units,
                                const int8_t *q, long ldw, const float *scales, float *C, long ldc,
                                int accumulate) {
    // The loop prefetches I8V_PF bytes ahead; start the stream's first lines now (a decoding
    // step makes ~210 calls, each a new stream).
    for (long off = 0; off < I8V_PF; off += 64) _mm_prefetch((const char *)(q + n0 * ldw) + off, _MM_HINT_T0);
    const long ldp = lora_i8_fixed_depth(K), per_row = 4 * ldp;
    for (long n = n0; n < n1; n += 3) {  // three rows of W at a time, against every row of A
        const long nr = n1 - n < 3 ? n1 - n : 3;
        for (long m0 = 0; m0 < M; m0 += 3) {
            const long mb = M - m0 < 3 ? M - m0 : 3;
            const uint8_t *x = planes + m0 * per_row;
            float *c = C + m0 * ldc;
            if (mb == 1) {
                if (nr == 3) i8v_group(3, 1, K, x, per_row, ldp, q, ldw, n, units + m0, scales, c, ldc, accumulate);
                else if (nr == 2) i8v_group(2, 1, K, x, per_row, ldp, q, ldw, n, units + m0, scales, c, ldc, accumulate);
                else i8v_group(1, 1, K, x, per_row, ldp, q, ldw, n, units + m0, scales, c, ldc, accumulate);
            } else
                for (long r = 0; r < nr; r++) {
                    if (mb == 3) i8v_group(1, 3, K, x, per_row, ldp, q, ldw, n + r, units + m0, scales, c, ldc, accumulate);
                    else i8v_group(1, 2, K, x, per_row, ldp, q, ldw, n + r, units + m0, scales, c, ldc, accumulate);
                }
        }
    }
}

I8V_TARGET static int i8v_prepare(long M, long K, const float *A, long lda, uint8_t *planes, double *units) {
    if (K <= 0 || K > LORA_I8_FIXED_KMAX || !i8v_finite(M, K, A, lda)) return 0;
    const long ldp = lora_i8_fixed_depth(K);
    for (long m = 0; m < M; m++) units[m] = ldexp(1.0, -i8v_digits(K, A + m * lda, planes + m * 4 * ldp, ldp));
    return 1;
}

/// The dispatcher's int8-rows GEMV with VNNI: A converted into this thread's buffer (callers
/// that split the rows over workers convert once instead: lora_i8_fixed_prepare).
I8V_TARGET static void gemv_i8_vnni(long M, long n0, long n1, long K, const float *A, long lda,
                                    const int8_t *q, long ldw, const float *scales, float *C,
                                    long ldc, int accumulate) {
    const long per_row = 4 * lora_i8_fixed_depth(K);
    long mchunk = (long)sizeof(float) * GEMM_B_FLOATS / (per_row + 8);  // >= 2 for K <= KMAX
    uint8_t *buf = (uint8_t *)pack_buffer();
    for (long m0 = 0; m0 < M; m0 += mchunk) {
        const long mc = M - m0 < mchunk ? M - m0 : mchunk;
        double *units = (double *)(buf + mc * per_row);
        if (!i8v_prepare(mc, K, A + m0 * lda, lda, buf, units)) {
            gemv_i8(mc, n0, n1, K, A + m0 * lda, lda, q, ldw, scales, C + m0 * ldc, ldc, accumulate);
            continue;
        }
        i8v_gemv(mc, n0, n1, K, buf, units, q, ldw, scales, C + m0 * ldc, ldc, accumulate);
    }
}

int lora_i8_fixed_available(int family) {
    static int dq = -1;
    if (dq < 0) { __builtin_cpu_init(); dq = __builtin_cpu_supports("avx512dq") ? 1 : 0; }
    return family == LORA_FAMILY_AVX512 && lora_family_available(family) && lora_q8_vnni_available() && dq;
}

int lora_i8_fixed_wanted(int family, long K) {
    return K > 0 && K < LORA_I8_FIXED_DEEP && lora_i8_fixed_available(family);
}

int lora_i8_fixed_prepare(int family, long M, long K, const float *A, long lda, uint8_t *planes, double *units) {
    if (!lora_i8_fixed_available(family)) return 0;
    return i8v_prepare(M, K, A, lda, planes, units);
}

void lora_i8_fixed_gemv(int family, long M, long n0, long n1, long K, const uint8_t *planes, const double *units,
                        const int8_t *W, long ldw, const float *scales, float *C, long ldc, int accumulate) {
    if (!lora_i8_fixed_available(family) || K <= 0 || K > LORA_I8_FIXED_KMAX) abort();
    if (M > 0 && n1 > n0) i8v_gemv(M, n0, n1, K, planes, units, W, ldw, scales, C, ldc, accumulate);
}

/// NF4 weights: rows n..n+rows (rows <= 4) for A rows 0..mb (mb <= 4), 16 depths per step,
/// each weight decoded once and used for every row of A. When the rows start on 64-weight
/// blocks (ldw a multiple of 64) the depth goes a block at a time and each row's absmax is
/// computed once per block; the FMAs into each accumulator come in the same order either way.
INLINE void gemv_nf4_block(const int mb, long K, const float *A, long lda, const lora_nf4 *w,
                           long ldw, long n, long rows, float *C, long ldc, int accumulate) {
    __m512 acc[4][GEMV_RB];
    for (int m = 0; m < mb; m++)
        for (int r = 0; r < GEMV_RB; r++) acc[m][r] = _mm512_setzero_ps();
    long wr[GEMV_RB];  // flat indices of the rows; missing rows repeat the last, unstored
    for (int r = 0; r < GEMV_RB; r++) wr[r] = (n + (r < rows ? r : rows - 1)) * ldw;
    long k = 0;
    if (ldw % LORA_NF4_BLOCK == 0)
        for (; k + LORA_NF4_BLOCK <= K; k += LORA_NF4_BLOCK) {
            __m512 s[GEMV_RB];
            for (int r = 0; r < GEMV_RB; r++) {
                if ((k & 127) == 0) _mm_prefetch((const char *)(w->q + (wr[r] + GEMV_PF * ldw + k) / 2), _MM_HINT_T1);
                s[r] = _mm512_set1_ps(lora_nf4_absmax(w, (wr[r] + k) / LORA_NF4_BLOCK));
            }
            for (long u = 0; u < LORA_NF4_BLOCK; u += 16) {
                __m512 wv[GEMV_RB];
                for (int r = 0; r < GEMV_RB; r++) wv[r] = _mm512_mul_ps(nf4_code16(w, wr[r] + k + u), s[r]);
                for (int m = 0; m < mb; m++) {
                    __m512 x = _mm512_loadu_ps(A + m * lda + k + u);
                    for (int r = 0; r < GEMV_RB; r++) acc[m][r] = _mm512_fmadd_ps(x, wv[r], acc[m][r]);
                }
            }
        }
    for (; k < K; k += 16) {
        __mmask16 km = mask16(K - k);
        __m512 wv[GEMV_RB];
        for (int r = 0; r < GEMV_RB; r++) {
            if ((k & 127) == 0) _mm_prefetch((const char *)(w->q + (wr[r] + GEMV_PF * ldw + k) / 2), _MM_HINT_T1);
            wv[r] = load_nf4_w(km, w, wr[r] + k);
        }
        for (int m = 0; m < mb; m++) {
            __m512 x = _mm512_maskz_loadu_ps(km, A + m * lda + k);
            for (int r = 0; r < GEMV_RB; r++) acc[m][r] = _mm512_fmadd_ps(x, wv[r], acc[m][r]);
        }
    }
    gemv_store(mb, acc, NULL, n, rows, C, ldc, accumulate);
}

TARGET static void gemv_nf4(long M, long n0, long n1, long K, const float *A, long lda,
                            const lora_nf4 *w, long ldw, float *C, long ldc, int accumulate) {
    for (long n = n0; n < n1; n += GEMV_RB) {
        long rows = n1 - n < GEMV_RB ? n1 - n : GEMV_RB;
        for (long m = 0; m < M; m += 4) {
#define CALL(mb) gemv_nf4_block(mb, K, A + m * lda, lda, w, ldw, n, rows, C + m * ldc, ldc, accumulate)
            GEMV_MB_SWITCH(M - m, CALL)
#undef CALL
        }
    }
}

void lora_gemv_abt_f32(long M, long n0, long n1, long K, const float *A, long lda,
                       const float *W, long ldw, float *C, long ldc, int accumulate) {
    gemv_f32(M, n0, n1, K, A, lda, W, ldw, C, ldc, accumulate);
}

void lora_gemv_abt_i8(long M, long n0, long n1, long K, const float *A, long lda,
                      const int8_t *Wq, long ldw, const float *scales, float *C, long ldc,
                      int accumulate) {
    gemv_i8(M, n0, n1, K, A, lda, Wq, ldw, scales, C, ldc, accumulate);
}

/// Bf16 weights: rows n..n+rows (rows <= 4) for A rows 0..mb, 32 depths (one cache line of
/// each weight row) per step; 2 accumulators per (m, row) for mb <= 2 so M = 1 has 8 chains.
INLINE void gemv_bf16_block(const int mb, long K, const float *A, long lda, const uint16_t *h,
                            long ldw, long n, long rows, float *C, long ldc, int accumulate) {
    const int na = mb <= 2 ? 2 : 1;
    __m512 acc[4][GEMV_RB][2];
    for (int m = 0; m < mb; m++)
        for (int r = 0; r < GEMV_RB; r++)
            for (int a = 0; a < na; a++) acc[m][r][a] = _mm512_setzero_ps();
    const uint16_t *hr[GEMV_RB];
    for (int r = 0; r < GEMV_RB; r++) hr[r] = h + (n + (r < rows ? r : rows - 1)) * ldw;
    for (long k = 0; k < K; k += 32) {
        __mmask16 km0 = mask16(K - k), km1 = mask16(K - k - 16);
        __m512 x[4][2];
        for (int m = 0; m < mb; m++) {
            x[m][0] = _mm512_maskz_loadu_ps(km0, A + m * lda + k);
            x[m][1] = _mm512_maskz_loadu_ps(km1, A + m * lda + k + 16);
        }
        for (int r = 0; r < GEMV_RB; r++) {
            _mm_prefetch((const char *)(hr[r] + GEMV_PF * ldw + k), _MM_HINT_T1);
            __m512 w0 = load_bf16(km0, hr[r] + k), w1 = load_bf16(km1, hr[r] + k + 16);
            for (int m = 0; m < mb; m++) {
                acc[m][r][0] = _mm512_fmadd_ps(x[m][0], w0, acc[m][r][0]);
                acc[m][r][1 % na] = _mm512_fmadd_ps(x[m][1], w1, acc[m][r][1 % na]);
            }
        }
    }
    __m512 sum[4][GEMV_RB];
    for (int m = 0; m < mb; m++)
        for (int r = 0; r < GEMV_RB; r++)
            sum[m][r] = na == 2 ? _mm512_add_ps(acc[m][r][0], acc[m][r][1]) : acc[m][r][0];
    gemv_store(mb, sum, NULL, n, rows, C, ldc, accumulate);
}

TARGET static void gemv_bf16(long M, long n0, long n1, long K, const float *A, long lda,
                             const uint16_t *h, long ldw, float *C, long ldc, int accumulate) {
    for (long n = n0; n < n1; n += GEMV_RB) {
        long rows = n1 - n < GEMV_RB ? n1 - n : GEMV_RB;
        for (long m = 0; m < M; m += 4) {
#define CALL(mb) gemv_bf16_block(mb, K, A + m * lda, lda, h, ldw, n, rows, C + m * ldc, ldc, accumulate)
            GEMV_MB_SWITCH(M - m, CALL)
#undef CALL
        }
    }
}

/// Block formats (K a multiple of 32): rows n..n+rows (rows <= 4) of W for A rows 0..mb
/// (mb <= 2; more would spill the 32 registers), each block read once and dequantized in
/// registers, then FMA with A. Q4: the block's 16 possible values are a 16-lane table (d times
/// -8..7, or d * 0..15 + m: exactly the format's values), and vpermps, which reads only the low
/// 4 bits of each index, picks them by nibble straight from the widened bytes (fewer ops than
/// mask, widen, convert, scale). Q8_0: widened, converted and dotted, the dot scaled by d.
/// Prefetch GEMV_PF rows ahead, one block at a time. With one row of A each weight row has
/// two accumulators.
INLINE void gemv_q_block(const int fmt, const int mb, long K, const float *A, long lda,
                         const uint8_t *w, long rowbytes, long n, long rows, float *C, long ldc,
                         int accumulate) {
    const long bb = lora_block_bytes(fmt);
    const int na = mb == 1 ? 2 : 1;
    const __m512 levels = fmt == LORA_FORMAT_Q4_0
        ? _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7)
        : _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512 acc[2][GEMV_RB][2];
    for (int m = 0; m < mb; m++)
        for (int r = 0; r < GEMV_RB; r++) acc[m][r][0] = acc[m][r][1] = _mm512_setzero_ps();
    const uint8_t *wr[GEMV_RB];  // missing rows repeat the last one; their sums are not stored
    for (int r = 0; r < GEMV_RB; r++) wr[r] = w + (n + (r < rows ? r : rows - 1)) * rowbytes;
    for (long k = 0, o = 0; k < K; k += LORA_QK, o += bb) {
        __m512 x[2][2];
        for (int m = 0; m < mb; m++) {
            x[m][0] = _mm512_loadu_ps(A + m * lda + k);
            x[m][1] = _mm512_loadu_ps(A + m * lda + k + 16);
        }
#pragma GCC unroll 4  // the accumulators stay in registers at -O2 too
        for (int r = 0; r < GEMV_RB; r++) {
            const uint8_t *b = wr[r] + o;
            _mm_prefetch((const char *)(b + GEMV_PF * rowbytes), _MM_HINT_T0);
            __m512 d = half_bcast(b);
            if (fmt == LORA_FORMAT_Q8_0) {
                __m512 q0 = block_q16(fmt, b, 0), q1 = block_q16(fmt, b, 1);
                for (int m = 0; m < mb; m++)
                    acc[m][r][0] = _mm512_fmadd_ps(d, _mm512_fmadd_ps(x[m][1], q1, _mm512_mul_ps(x[m][0], q0)),
                                                   acc[m][r][0]);
            } else {
                __m512 table = fmt == LORA_FORMAT_Q4_1 ? _mm512_fmadd_ps(d, levels, half_bcast(b + 2))
                                                       : _mm512_mul_ps(d, levels);
                __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(b + bb - 16)));
                __m512 w0 = _mm512_permutexvar_ps(v, table);
                __m512 w1 = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), table);
                for (int m = 0; m < mb; m++) {
                    acc[m][r][0] = _mm512_fmadd_ps(x[m][0], w0, acc[m][r][0]);
                    acc[m][r][na - 1] = _mm512_fmadd_ps(x[m][1], w1, acc[m][r][na - 1]);
                }
            }
        }
    }
    __m512 sum[2][GEMV_RB];
    for (int m = 0; m < mb; m++)
        for (int r = 0; r < GEMV_RB; r++)
            sum[m][r] = fmt != LORA_FORMAT_Q8_0 && na == 2 ? _mm512_add_ps(acc[m][r][0], acc[m][r][1]) : acc[m][r][0];
    gemv_store(mb, sum, NULL, n, rows, C, ldc, accumulate);
}

TARGET static void gemv_q(int fmt, long M, long n0, long n1, long K, const float *A,
                          long lda, const void *w, long ldw, float *C, long ldc, int accumulate) {
    const long rowbytes = ldw / LORA_QK * lora_block_bytes(fmt);
    for (long n = n0; n < n1; n += GEMV_RB) {
        long rows = n1 - n < GEMV_RB ? n1 - n : GEMV_RB;
        for (long m = 0; m < M; m += 2) {
            // Constant format and row count, so each combination gets its own unrolled loop.
#define CALL(f, mb) gemv_q_block(f, mb, K, A + m * lda, lda, w, rowbytes, n, rows, C + m * ldc, ldc, accumulate)
#define CALL_MB(f) do { if (M - m >= 2) CALL(f, 2); else CALL(f, 1); } while (0)
            if (fmt == LORA_FORMAT_Q8_0) CALL_MB(LORA_FORMAT_Q8_0);
            else if (fmt == LORA_FORMAT_Q4_0) CALL_MB(LORA_FORMAT_Q4_0);
            else CALL_MB(LORA_FORMAT_Q4_1);
#undef CALL_MB
#undef CALL
        }
    }
}

// ---- Family entry points (dispatch.c) -----------------------------------------------------

void lora_avx512_gemm_abt(int format, long M, long n0, long n1, long K, const float *A,
                          long lda, const void *W, long ldw, const float *scales, float *C,
                          long ldc, int accumulate) {
    if (format < LORA_FORMAT_F32 || format > LORA_FORMAT_NF4) abort();
    gemm(M, n0, n1 - n0, K, A, lda, 1, format, W, scales, ldw, C, ldc, accumulate);
}

void lora_avx512_gemm_ab(int format, long M, long k0, long k1, long N, const float *A,
                         long lda, const void *W, long ldw, const float *scales, float *C,
                         long ldc, int accumulate) {
    if (format < LORA_FORMAT_F32 || format > LORA_FORMAT_NF4) abort();
    gemm(M, k0, k1 - k0, N, A, lda, 0, format, W, scales, ldw, C, ldc, accumulate);
}

void lora_avx512_gemv_abt(int format, long M, long n0, long n1, long K, const float *A,
                          long lda, const void *W, long ldw, const float *scales, float *C,
                          long ldc, int accumulate) {
    if (M <= 0 || n1 <= n0) return;
    switch (format) {
    case LORA_FORMAT_F32: gemv_f32(M, n0, n1, K, A, lda, W, ldw, C, ldc, accumulate); break;
    case LORA_FORMAT_I8_ROWS:
        if (lora_i8_fixed_wanted(LORA_FAMILY_AVX512, K)) gemv_i8_vnni(M, n0, n1, K, A, lda, W, ldw, scales, C, ldc, accumulate);
        else gemv_i8(M, n0, n1, K, A, lda, W, ldw, scales, C, ldc, accumulate);
        break;
    case LORA_FORMAT_BF16: gemv_bf16(M, n0, n1, K, A, lda, W, ldw, C, ldc, accumulate); break;
    case LORA_FORMAT_Q8_0: gemv_q(LORA_FORMAT_Q8_0, M, n0, n1, K, A, lda, W, ldw, C, ldc, accumulate); break;
    case LORA_FORMAT_Q4_0: gemv_q(LORA_FORMAT_Q4_0, M, n0, n1, K, A, lda, W, ldw, C, ldc, accumulate); break;
    case LORA_FORMAT_Q4_1: gemv_q(LORA_FORMAT_Q4_1, M, n0, n1, K, A, lda, W, ldw, C, ldc, accumulate); break;
    case LORA_FORMAT_NF4: gemv_nf4(M, n0, n1, K, A, lda, W, ldw, C, ldc, accumulate); break;
    default: abort();
    }
}

TARGET float lora_avx512_dot(const float *a, const float *b, long n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    long i = 0;
    for (; i + 64 <= n; i += 64) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
        s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), s2);
        s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), s3);
    }
    for (; i < n; i += 16) {
        __mmask16 m = mask16(n - i);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

TARGET void lora_avx512_axpy(float alpha, const float *x, float *y, long n) {
    __m512 a = _mm512_set1_ps(alpha);
    long i = 0;
    for (; i + 64 <= n; i += 64)
        for (int u = 0; u < 64; u += 16)
            _mm512_storeu_ps(y + i + u, _mm512_fmadd_ps(a, _mm512_loadu_ps(x + i + u),
                                                        _mm512_loadu_ps(y + i + u)));
    for (; i < n; i += 16) {
        __mmask16 m = mask16(n - i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(m, x + i),
                                                        _mm512_maskz_loadu_ps(m, y + i)));
    }
}

int lora_avx512_attn_fits(long hd) { return hd > 0 && hd % 16 == 0 && hd <= 128; }

/// r[j] = the sum of a[j]'s 16 lanes, for j < 16: halves of 256, then 128, then pairs within
/// 128-bit lanes, each step adding two inputs' pieces side by side (15 adds, 30 shuffles for
/// what 16 separate reductions do in ~130 operations). Every lane's tree is the same.
INLINE __m512 attn_hsum16(__m512 a[16]) {
    __m512 b[8], c[4], d[2];
    for (int i = 0; i < 8; i++)  // lanes 0-7: a[2i]'s halves summed; 8-15: a[2i+1]'s
        b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44), _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++)  // 128-bit lanes: b[2i] lo, b[2i] hi, b[2i+1] lo, b[2i+1] hi, each 4 floats summed in halves
        c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88), _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; i++)
        d[i] = _mm512_add_ps(_mm512_shuffle_ps(c[2 * i], c[2 * i + 1], 0x44), _mm512_shuffle_ps(c[2 * i], c[2 * i + 1], 0xEE));
    __m512 e = _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], 0x88), _mm512_shuffle_ps(d[0], d[1], 0xDD));
    // e's lane l holds the sum of input 4 (l % 4) + l / 4, a transpose of 4 x 4: lane j of
    // the result takes e's lane 4 (j % 4) + j / 4.
    const __m512i back = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    return _mm512_permutexvar_ps(back, e);
}

/// Keys in blocks of 16; within a block, head after head (the block's keys stay in L1). Each
/// key's dot product: one multiply and hd/16 - 1 FMAs in order, then the block's tree.
// A decode step finds the cache in memory (the layers' weights went through the caches since),
// rows of nKV heads of which a head reads one piece: the prefetcher does not run ahead of such
// strides, so the keys and values are fetched this many ahead.
#ifndef ATTN_PF_KEYS
#define ATTN_PF_KEYS 32
#endif
#if defined(__clang__)
#define ATTN_UNROLL _Pragma("clang loop unroll(full)")
#else
#define ATTN_UNROLL _Pragma("GCC unroll 16")
#endif
/// One block of n <= 16 keys against one query head of NV x 16 floats, with NV a constant so
/// that everything stays in registers (a runtime count spilled the accumulators).
#define ATTN_SCORES_BLOCK(NV)                                                                    \
    do {                                                                                         \
        __m512 qv[NV], acc[16];                                                                  \
        for (int v = 0; v < NV; v++) qv[v] = _mm512_loadu_ps(qg + 16 * v);                      \
        ATTN_UNROLL                                                                              \
        for (int t = 0; t < 16; t++) {                                                           \
            const float *k = K + (j0 + (t < n ? t : 0)) * ld; /* past L: key j0, not stored */   \
            __m512 x = _mm512_mul_ps(qv[0], _mm512_loadu_ps(k));                                 \
            for (int v = 1; v < NV; v++) x = _mm512_fmadd_ps(qv[v], _mm512_loadu_ps(k + 16 * v), x); \
            acc[t] = x;                                                                          \
        }                                                                                        \
        _mm512_mask_storeu_ps(s + g * lds + j0, mask16(n), _mm512_mul_ps(a, attn_hsum16(acc)));  \
    } while (0)

/// Keys in blocks of 16; within a block, head after head (the block's keys stay in L1). Each
/// key's dot product: one multiply and hd/16 - 1 FMAs in order, then the block's tree.
TARGET void lora_avx512_attn_scores_heads(const float *q, long G, const float *K, long ld, long L, long hd, float alpha,
                                          float *s, long lds) {
    const __m512 a = _mm512_set1_ps(alpha);
    const long nl = hd / 16;  // cache lines per key (hd floats, 64-byte lines when aligned)
    for (long j = 0; j < ATTN_PF_KEYS && j < L; j++)
        for (long v = 0; v < nl; v++) _mm_prefetch((const char *)(K + j * ld + 16 * v), _MM_HINT_T0);
    for (long j0 = 0; j0 < L; j0 += 16) {
        const long n = L - j0 < 16 ? L - j0 : 16;
        for (long j = j0 + ATTN_PF_KEYS; j < j0 + ATTN_PF_KEYS + 16 && j < L; j++)
            for (long v = 0; v < nl; v++) _mm_prefetch((const char *)(K + j * ld + 16 * v), _MM_HINT_T0);
        for (long g = 0; g < G; g++) {
            const float *qg = q + g * hd;
            switch (hd / 16) {
            case 1: ATTN_SCORES_BLOCK(1); break;
            case 2: ATTN_SCORES_BLOCK(2); break;
            case 3: ATTN_SCORES_BLOCK(3); break;
            case 4: ATTN_SCORES_BLOCK(4); break;
            case 5: ATTN_SCORES_BLOCK(5); break;
            case 6: ATTN_SCORES_BLOCK(6); break;
            case 7: ATTN_SCORES_BLOCK(7); break;
            default: ATTN_SCORES_BLOCK(8); break;
            }
        }
    }
}

TARGET void lora_avx512_attn_scores(const float *q, const float *K, long ld, long L, long hd, float alpha, float *s) {
    if (!lora_avx512_attn_fits(hd)) {
        for (long j = 0; j < L; j++) s[j] = alpha * lora_avx512_dot(q, K + j * ld, hd);
        return;
    }
    lora_avx512_attn_scores_heads(q, 1, K, ld, L, hd, alpha, s, L);
}

/// NH heads' sums over all L keys, NV x 16 floats each, NH x NV <= 16 accumulators in
/// registers (constants: a runtime count put them on the stack, each FMA a store-load chain).
#define ATTN_WSUM_PASS(NV, NH)                                                                   \
    do {                                                                                         \
        __m512 acc[NH * NV];                                                                     \
        for (int i = 0; i < NH * NV; i++) acc[i] = _mm512_setzero_ps();                          \
        for (long j = 0; j < ATTN_PF_KEYS && j < L; j++)                                         \
            for (int v = 0; v < NV; v++) _mm_prefetch((const char *)(V + j * ld + 16 * v), _MM_HINT_T0); \
        for (long j = 0; j < L; j++) {                                                           \
            const float *x = V + j * ld;                                                         \
            if (j + ATTN_PF_KEYS < L)                                                            \
                for (int v = 0; v < NV; v++) _mm_prefetch((const char *)(x + ATTN_PF_KEYS * ld + 16 * v), _MM_HINT_T0); \
            for (int h = 0; h < NH; h++) {                                                       \
                const float w = s[(g0 + h) * lds + j];                                           \
                if (w == 0) continue;                                                            \
                const __m512 wv = _mm512_set1_ps(w);                                             \
                for (int v = 0; v < NV; v++) acc[h * NV + v] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + 16 * v), acc[h * NV + v]); \
            }                                                                                    \
        }                                                                                        \
        for (int h = 0; h < NH; h++)                                                             \
            for (int v = 0; v < NV; v++) _mm512_storeu_ps(o + (g0 + h) * hd + 16 * v, acc[h * NV + v]); \
    } while (0)

/// Each head's sum: over the keys in order, one FMA per 16 floats, keys whose weight is 0
/// skipped (as the axpy path skips masked keys). Heads in passes of up to 4 (2 for hd > 64),
/// so one value row feeds every head of the pass.
TARGET void lora_avx512_attn_wsum_heads(const float *s, long lds, long G, const float *V, long ld, long L, long hd, float *o) {
    const int nv = (int)(hd / 16), hg = nv > 4 ? 2 : 4;
    for (long g0 = 0; g0 < G; g0 += hg) {
        const int nh = (int)(G - g0 < hg ? G - g0 : hg);
#define ATTN_WSUM_NH(NV)                                                                         \
    switch (nh) {                                                                                \
    case 1: ATTN_WSUM_PASS(NV, 1); break;                                                        \
    case 2: ATTN_WSUM_PASS(NV, 2); break;                                                        \
    case 3: ATTN_WSUM_PASS(NV, 3); break;                                                        \
    default: ATTN_WSUM_PASS(NV, 4); break;                                                       \
    }
        switch (nv) {
        case 1: ATTN_WSUM_NH(1); break;
        case 2: ATTN_WSUM_NH(2); break;
        case 3: ATTN_WSUM_NH(3); break;
        case 4: ATTN_WSUM_NH(4); break;
        case 5: if (nh == 1) ATTN_WSUM_PASS(5, 1); else ATTN_WSUM_PASS(5, 2); break;
        case 6: if (nh == 1) ATTN_WSUM_PASS(6, 1); else ATTN_WSUM_PASS(6, 2); break;
        case 7: if (nh == 1) ATTN_WSUM_PASS(7, 1); else ATTN_WSUM_PASS(7, 2); break;
        default: if (nh == 1) ATTN_WSUM_PASS(8, 1); else ATTN_WSUM_PASS(8, 2); break;
        }
#undef ATTN_WSUM_NH
    }
}

TARGET void lora_avx512_attn_wsum(const float *s, const float *V, long ld, long L, long hd, float *o) {
    if (!lora_avx512_attn_fits(hd)) {
        for (long i = 0; i < hd; i++) o[i] = 0;
        for (long j = 0; j < L; j++)
            if (s[j] != 0) lora_avx512_axpy(s[j], V + j * ld, o, hd);
        return;
    }
    lora_avx512_attn_wsum_heads(s, L, 1, V, ld, L, hd, o);
}

#else  // not x86-64: no kernels; lora_gemm_avx512_available() is 0 and nothing else is called.

void lora_avx512_gemm_abt(int format, long M, long n0, long n1, long K, const float *A,
                          long lda, const void *W, long ldw, const float *scales, float *C,
                          long ldc, int accumulate) { abort(); }
void lora_avx512_gemm_ab(int format, long M, long k0, long k1, long N, const float *A,
                         long lda, const void *W, long ldw, const float *scales, float *C,
                         long ldc, int accumulate) { abort(); }
void lora_avx512_gemv_abt(int format, long M, long n0, long n1, long K, const float *A,
                          long lda, const void *W, long ldw, const float *scales, float *C,
                          long ldc, int accumulate) { abort(); }
float lora_avx512_dot(const float *a, const float *b, long n) { abort(); }
int lora_avx512_attn_fits(long hd) { return 0; }
void lora_avx512_attn_scores(const float *q, const float *K, long ld, long L, long hd, float alpha, float *s) { abort(); }
void lora_avx512_attn_wsum(const float *s, const float *V, long ld, long L, long hd, float *o) { abort(); }
void lora_avx512_attn_scores_heads(const float *q, long G, const float *K, long ld, long L, long hd, float alpha, float *s,
                                   long lds) { abort(); }
void lora_avx512_attn_wsum_heads(const float *s, long lds, long G, const float *V, long ld, long L, long hd, float *o) { abort(); }
void lora_avx512_axpy(float alpha, const float *x, float *y, long n) { abort(); }

int lora_gemm_avx512_available(void) { return 0; }
int lora_i8_fixed_available(int family) { return 0; }
int lora_i8_fixed_wanted(int family, long K) { return 0; }
int lora_i8_fixed_prepare(int family, long M, long K, const float *A, long lda, uint8_t *planes, double *units) { return 0; }
void lora_i8_fixed_gemv(int family, long M, long n0, long n1, long K, const uint8_t *planes, const double *units,
                        const int8_t *W, long ldw, const float *scales, float *C, long ldc, int accumulate) { abort(); }
int lora_gemm_panel_width(void) { return 16; }
void lora_gemm_abt_f32(long M, long n0, long n1, long K, const float *A, long lda,
                       const float *W, long ldw, float *C, long ldc, int accumulate) { abort(); }
void lora_gemm_abt_i8(long M, long n0, long n1, long K, const float *A, long lda,
                      const int8_t *Wq, long ldw, const float *scales, float *C, long ldc,
                      int accumulate) { abort(); }
void lora_gemm_ab_f32(long M, long k0, long k1, long N, const float *A, long lda,
                      const float *W, long ldw, float *C, long ldc, int accumulate) { abort(); }
void lora_gemm_ab_i8(long M, long k0, long k1, long N, const float *A, long lda,
                     const int8_t *Wq, long ldw, const float *scales, float *C, long ldc,
                     int accumulate) { abort(); }

void lora_gemv_abt_f32(long M, long n0, long n1, long K, const float *A, long lda,
                       const float *W, long ldw, float *C, long ldc, int accumulate) { abort(); }
void lora_gemv_abt_i8(long M, long n0, long n1, long K, const float *A, long lda,
                      const int8_t *Wq, long ldw, const float *scales, float *C, long ldc,
                      int accumulate) { abort(); }

#endif
