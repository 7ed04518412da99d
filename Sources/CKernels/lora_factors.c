// Decoding's LoRA products from factors packed once per adapter (CKernels.h, "Packed LoRA
// factors"). A [r][K] as AT [K][rp] and B [N][r] as panels of 16 outputs make both products
// one forward stream with no horizontal sums: per step of k one row of AT (r floats) against a
// broadcast x, per j one panel row (16 outputs) against a broadcast u. Measured on Zen 4 (one
// thread, SmolLM2's 210 r = 16 sites, factors from memory, clang -O2): the f32 GEMV on A [r][K]
// and B [N][r] streamed 15.7 / 11.4 GB/s at 1 / 4 rows, these 34.6 / 27.3 (a plain read: 32.7).
//
// The arithmetic is fixed per output and does not depend on M, on the lane or column range of
// the call, or on the family: every family gives the portable loops' bits.
//   u[m][j] = s0 + s1, s0 = fmaf chain over even k (k = 0, 2, ...) of x[m][k] A[j][k], s1 over odd k, from 0
//   y[m][n] = fmaf chain over j = 0 ..< r of u[m][j] * B[n][j], starting from y[m][n]
// The copies are f32, or IEEE half (`half` = 1) where the base's products are themselves
// quantized (CKernels.h): the arithmetic is the same on the exactly widened values, so the
// half copies also give every family the portable loops' bits. Half halves the bytes (f32
// copies moved tiny f32 models' logits 2e-3 from PEFT's, so an f32 base keeps f32).
#include "CKernels.h"
#include "families.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

long lora_factors_rp(long r) { return (r + 7) / 8 * 8; }
long lora_factors_up_floats(long N, long r) { return (N + 15) / 16 * 16 * r; }

void lora_factors_pack_down(long r, long K, const float *A, float *AT) {
    const long rp = lora_factors_rp(r);
    for (long k = 0; k < K; k++)
        for (long j = 0; j < rp; j++) AT[k * rp + j] = j < r ? A[j * K + k] : 0.0f;
}

void lora_factors_pack_up(long N, long r, const float *B, float *Bp) {
    const long tiles = (N + 15) / 16;
    for (long t = 0; t < tiles; t++)
        for (long j = 0; j < r; j++)
            for (long i = 0; i < 16; i++) {
                const long n = 16 * t + i;
                Bp[(t * r + j) * 16 + i] = n < N ? B[n * r + j] : 0.0f;
            }
}

/// float to IEEE half bits, rounded to nearest even (as vcvtps2ph with imm 0 and Swift's
/// Float16(x)); 1 in *overflow when |x| rounds past 65504 or x is not finite.
static uint16_t float_to_half(float f, int *overflow) {
    union { float f; uint32_t u; } v = {f};
    const uint32_t sign = (v.u >> 16) & 0x8000u, a = v.u & 0x7FFFFFFFu;
    if (a >= 0x477FF000u) {                     // >= 65520 (rounds up past 65504), inf, NaN
        *overflow = 1;
        return (uint16_t)(sign | (a > 0x7F800000u ? 0x7E00u : 0x7C00u));
    }
    if (a < 0x38800000u) {                      // below 2^-14: a subnormal half (or zero)
        union { uint32_t u; float f; } m = {a};
        return (uint16_t)(sign | (uint32_t)nearbyintf(m.f * 0x1p24f));  // exact scaling, then RNE
    }
    uint32_t r = a - 0x38000000u;               // rebias 127 -> 15
    r += 0xFFFu + ((r >> 13) & 1u);             // round the 13 dropped bits to nearest even
    return (uint16_t)(sign | (r >> 13));
}

int lora_factors_pack_down_half(long r, long K, const float *A, uint16_t *AT) {
    const long rp = lora_factors_rp(r);
    int overflow = 0;
    for (long k = 0; k < K; k++)
        for (long j = 0; j < rp; j++) AT[k * rp + j] = j < r ? float_to_half(A[j * K + k], &overflow) : 0;
    return !overflow;
}

int lora_factors_pack_up_half(long N, long r, const float *B, uint16_t *Bp) {
    const long tiles = (N + 15) / 16;
    int overflow = 0;
    for (long t = 0; t < tiles; t++)
        for (long j = 0; j < r; j++)
            for (long i = 0; i < 16; i++) {
                const long n = 16 * t + i;
                Bp[(t * r + j) * 16 + i] = n < N ? float_to_half(B[n * r + j], &overflow) : 0;
            }
    return !overflow;
}

uint16_t lora_float_to_half(float x) {
    int overflow = 0;
    return float_to_half(x, &overflow);
}

/// Element i of a copy: f32, or half widened exactly.
static inline float factor_at(const void *p, long i, int half) {
    return half ? lora_half_to_float(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static void portable_down(long M, long K, long rp, long j0, long j1, const float *x, long ldx, const void *AT,
                          int half, float *u, long ldu) {
    for (long m = 0; m < M; m++)
        for (long j = j0; j < j1; j++) {
            float s0 = 0, s1 = 0;
            long k = 0;
            for (; k + 1 < K; k += 2) {
                s0 = fmaf(x[m * ldx + k], factor_at(AT, k * rp + j, half), s0);
                s1 = fmaf(x[m * ldx + k + 1], factor_at(AT, (k + 1) * rp + j, half), s1);
            }
            if (k < K) s0 = fmaf(x[m * ldx + k], factor_at(AT, k * rp + j, half), s0);
            u[m * ldu + j] = s0 + s1;
        }
}

static void portable_up(long M, long n0, long n1, long r, const float *u, long ldu, const void *Bp, int half,
                        float *y, long ldy) {
    for (long m = 0; m < M; m++)
        for (long n = n0; n < n1; n++) {
            const long b = (n / 16) * r * 16 + n % 16;
            float acc = y[m * ldy + n];
            for (long j = 0; j < r; j++) acc = fmaf(u[m * ldu + j], factor_at(Bp, b + 16 * j, half), acc);
            y[m * ldy + n] = acc;
        }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define F2_TARGET __attribute__((target("avx2,fma,f16c")))
#define F5_TARGET __attribute__((target("avx2,fma,f16c,avx512f")))
#define INL static inline __attribute__((always_inline))
/// Element offset e into a copy of either precision.
#define AT_OFF(p, e) (half ? (const void *)((const uint16_t *)(p) + (e)) : (const void *)((const float *)(p) + (e)))
/// Half copies at 2-4 rows are read 8 KB ahead into L1: the products then keep up with the
/// stream (C harness, Zen 4, one thread, 3 adapters' 630 r = 16 sites from memory: 4 rows
/// 1.8-2.0 -> 1.14-1.18 ms, 3 rows 1.37-1.50 -> 0.96-1.02, 2 rows 0.90-1.11 -> 0.80-0.86; AVX2
/// 4 rows 2.68 -> 1.62). One row is bound by the stream alone and gains nothing, and f32
/// copies measured no better or worse (4 and 16 KB too), so neither prefetches. One line per
/// two rows of AT: all of them for r <= 16 (rp 16: 64 bytes), every other one past that.
#define PF_BYTES 8192
/// 8 / 16 factors from element i of a copy (half: vcvtph2ps, exact). `half` is a constant at
/// every call (the kernels are inlined into per-precision loops), so no branch remains.
#define LD8(p, i) ((half) ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)(p) + (i)))) \
                          : _mm256_loadu_ps((const float *)(p) + (i)))
#define LD16(p, i) ((half) ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)(p) + (i)))) \
                           : _mm512_loadu_ps((const float *)(p) + (i)))
/// The sums s0 + s1 of u's lanes for mb rows into s[0..mb): one body for ymm (8 lanes) and
/// zmm (16), V the vector type.
#define DOWN_SUMS(V, LD, ZERO, FMA, BCAST, ADD)                                                  \
    V a0[4], a1[4];                                                                              \
    for (int m = 0; m < mb; m++) a0[m] = a1[m] = ZERO();                                         \
    long k = 0;                                                                                  \
    for (; k + 1 < K; k += 2) {                                                                  \
        if (half && mb >= 2) _mm_prefetch((const char *)AT_OFF(at, k * rp) + PF_BYTES, _MM_HINT_T0); \
        const V w0 = LD(at, k * rp), w1 = LD(at, (k + 1) * rp);                                  \
        for (int m = 0; m < mb; m++) {                                                           \
            a0[m] = FMA(BCAST(x[m * ldx + k]), w0, a0[m]);                                       \
            a1[m] = FMA(BCAST(x[m * ldx + k + 1]), w1, a1[m]);                                   \
        }                                                                                        \
    }                                                                                            \
    if (k < K) {                                                                                 \
        const V w0 = LD(at, k * rp);                                                             \
        for (int m = 0; m < mb; m++) a0[m] = FMA(BCAST(x[m * ldx + k]), w0, a0[m]);              \
    }                                                                                            \
    for (int m = 0; m < mb; m++) s[m] = ADD(a0[m], a1[m]);

/// 8 lanes j..j+8 of u for mb rows (ymm; both families: AVX-512's 8-lane tail too).
INL F2_TARGET void down8(const int mb, const int half, long K, long rp, const float *x, long ldx, const void *at,
                         float *u, long ldu, int lanes) {
    __m256 s[4];
    DOWN_SUMS(__m256, LD8, _mm256_setzero_ps, _mm256_fmadd_ps, _mm256_set1_ps, _mm256_add_ps)
    for (int m = 0; m < mb; m++) {
        if (lanes == 8) _mm256_storeu_ps(u + m * ldu, s[m]);
        else {
            float t[8];
            _mm256_storeu_ps(t, s[m]);
            memcpy(u + m * ldu, t, (size_t)lanes * sizeof(float));
        }
    }
}

/// 16 lanes with zmm.
INL F5_TARGET void down16(const int mb, const int half, long K, long rp, const float *x, long ldx, const void *at,
                          float *u, long ldu, int lanes) {
    __m512 s[4];
    DOWN_SUMS(__m512, LD16, _mm512_setzero_ps, _mm512_fmadd_ps, _mm512_set1_ps, _mm512_add_ps)
    const __mmask16 km = lanes >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << lanes) - 1);
    for (int m = 0; m < mb; m++) _mm512_mask_storeu_ps(u + m * ldu, km, s[m]);
}


INL F2_TARGET void avx2_down_p(const int half, long M, long K, long rp, long j0, long j1, const float *x, long ldx,
                               const void *AT, float *u, long ldu) {
    for (long j = j0; j < j1; j += 8) {
        const int lanes = j1 - j < 8 ? (int)(j1 - j) : 8;
        for (long m = 0; m < M; m += 4) {
#define CALL(mb) down8(mb, half, K, rp, x + m * ldx, ldx, AT_OFF(AT, j), u + m * ldu + j, ldu, lanes)
            GEMV_MB_SWITCH(M - m, CALL)
#undef CALL
        }
    }
}

F2_TARGET static void avx2_down(int half, long M, long K, long rp, long j0, long j1, const float *x, long ldx,
                                const void *AT, float *u, long ldu) {
    if (half) avx2_down_p(1, M, K, rp, j0, j1, x, ldx, AT, u, ldu);
    else avx2_down_p(0, M, K, rp, j0, j1, x, ldx, AT, u, ldu);
}

INL F5_TARGET void avx512_down_p(const int half, long M, long K, long rp, long j0, long j1, const float *x, long ldx,
                                 const void *AT, float *u, long ldu) {
    long j = j0;
    // Whole 16-lane chunks (and a last one that is partly padding when rp allows it).
    for (; j < j1 && j + 16 <= rp; j += 16) {
        const int lanes = j1 - j < 16 ? (int)(j1 - j) : 16;
        for (long m = 0; m < M; m += 4) {
#define CALL(mb) down16(mb, half, K, rp, x + m * ldx, ldx, AT_OFF(AT, j), u + m * ldu + j, ldu, lanes)
            GEMV_MB_SWITCH(M - m, CALL)
#undef CALL
        }
    }
    if (j < j1) avx2_down_p(half, M, K, rp, j, j1, x, ldx, AT, u, ldu);  // an 8-lane tail (rp = 16 i + 8)
}

F5_TARGET static void avx512_down(int half, long M, long K, long rp, long j0, long j1, const float *x, long ldx,
                                  const void *AT, float *u, long ldu) {
    if (half) avx512_down_p(1, M, K, rp, j0, j1, x, ldx, AT, u, ldu);
    else avx512_down_p(0, M, K, rp, j0, j1, x, ldx, AT, u, ldu);
}

/// One 16-output panel for mb rows, two ymm halves. One panel at a time: reading two panels
/// (1 KB apart) side by side streamed at half the speed (Zen 4, one thread: 16.9 against 33.9
/// GB/s over SmolLM2's sites; AVX2 15.7 against 26.8).
INL F2_TARGET void up_avx2(const int mb, const int half, long r, const float *u, long ldu, const void *bp, float *y,
                           long ldy, long cols) {
    __m256 acc[4][2];
    for (int m = 0; m < mb; m++)
        for (int h = 0; h < 2; h++) {
            const long c0 = 8 * h;
            if (c0 + 8 <= cols) acc[m][h] = _mm256_loadu_ps(y + m * ldy + c0);
            else {
                float t[8] = {0};
                for (long i = c0; i < cols; i++) t[i - c0] = y[m * ldy + i];
                acc[m][h] = _mm256_loadu_ps(t);
            }
        }
    if (half && mb >= 2)   // the panel PF_BYTES on
        for (long l = 0; l < r * 32; l += 64) _mm_prefetch((const char *)bp + PF_BYTES + l, _MM_HINT_T0);
    for (long j = 0; j < r; j++) {
        const __m256 b0 = LD8(bp, j * 16), b1 = LD8(bp, j * 16 + 8);
        for (int m = 0; m < mb; m++) {
            const __m256 s = _mm256_broadcast_ss(u + m * ldu + j);
            acc[m][0] = _mm256_fmadd_ps(s, b0, acc[m][0]);
            acc[m][1] = _mm256_fmadd_ps(s, b1, acc[m][1]);
        }
    }
    for (int m = 0; m < mb; m++)
        for (int h = 0; h < 2; h++) {
            const long c0 = 8 * h;
            if (c0 + 8 <= cols) _mm256_storeu_ps(y + m * ldy + c0, acc[m][h]);
            else if (c0 < cols) {
                float t[8];
                _mm256_storeu_ps(t, acc[m][h]);
                for (long i = c0; i < cols; i++) y[m * ldy + i] = t[i - c0];
            }
        }
}

INL F5_TARGET void up_avx512(const int mb, const int half, long r, const float *u, long ldu, const void *bp, float *y,
                             long ldy, long cols) {
    const __mmask16 km = cols >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << cols) - 1);
    __m512 acc[4];
    for (int m = 0; m < mb; m++) acc[m] = _mm512_maskz_loadu_ps(km, y + m * ldy);
    if (half && mb >= 2)   // the panel PF_BYTES on
        for (long l = 0; l < r * 32; l += 64) _mm_prefetch((const char *)bp + PF_BYTES + l, _MM_HINT_T0);
    for (long j = 0; j < r; j++) {
        const __m512 b = LD16(bp, j * 16);
        for (int m = 0; m < mb; m++) acc[m] = _mm512_fmadd_ps(_mm512_set1_ps(u[m * ldu + j]), b, acc[m]);
    }
    for (int m = 0; m < mb; m++) _mm512_mask_storeu_ps(y + m * ldy, km, acc[m]);
}

/// Panel after panel, rows of u in passes of up to 4 (UP_CALL(mb): the family's panel kernel).
#define UP_LOOP                                                                                  \
    for (long n = n0; n < n1; n += 16) {                                                         \
        const long cols = n1 - n < 16 ? n1 - n : 16;                                             \
        const void *bp = AT_OFF(Bp, (n / 16) * r * 16);                                         \
        for (long m = 0; m < M; m += 4) {                                                        \
            const float *um = u + m * ldu;                                                       \
            float *ym = y + m * ldy + n;                                                         \
            GEMV_MB_SWITCH(M - m, UP_CALL)                                                       \
        }                                                                                        \
    }

INL F2_TARGET void avx2_up_p(const int half, long M, long n0, long n1, long r, const float *u, long ldu,
                             const void *Bp, float *y, long ldy) {
#define UP_CALL(mb) up_avx2(mb, half, r, um, ldu, bp, ym, ldy, cols)
    UP_LOOP
#undef UP_CALL
}
F2_TARGET static void avx2_up(int half, long M, long n0, long n1, long r, const float *u, long ldu, const void *Bp,
                              float *y, long ldy) {
    if (half) avx2_up_p(1, M, n0, n1, r, u, ldu, Bp, y, ldy);
    else avx2_up_p(0, M, n0, n1, r, u, ldu, Bp, y, ldy);
}
INL F5_TARGET void avx512_up_p(const int half, long M, long n0, long n1, long r, const float *u, long ldu,
                               const void *Bp, float *y, long ldy) {
#define UP_CALL(mb) up_avx512(mb, half, r, um, ldu, bp, ym, ldy, cols)
    UP_LOOP
#undef UP_CALL
}
F5_TARGET static void avx512_up(int half, long M, long n0, long n1, long r, const float *u, long ldu, const void *Bp,
                                float *y, long ldy) {
    if (half) avx512_up_p(1, M, n0, n1, r, u, ldu, Bp, y, ldy);
    else avx512_up_p(0, M, n0, n1, r, u, ldu, Bp, y, ldy);
}
#endif

void lora_factors_down(int family, long M, long K, long r, long j0, long j1, const float *x, long ldx,
                       const void *AT, int half, float *u, long ldu) {
    const long rp = lora_factors_rp(r);
    if (j0 < 0 || j0 % 8 != 0 || j1 > r || M < 0 || K < 0) abort();
    if (M == 0 || j1 <= j0) return;
    if (!lora_family_available(family)) family = LORA_FAMILY_PORTABLE;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (family == LORA_FAMILY_AVX512) { avx512_down(half, M, K, rp, j0, j1, x, ldx, AT, u, ldu); return; }
    if (family == LORA_FAMILY_AVX2) { avx2_down(half, M, K, rp, j0, j1, x, ldx, AT, u, ldu); return; }
#endif
    portable_down(M, K, rp, j0, j1, x, ldx, AT, half, u, ldu);
}

void lora_factors_up(int family, long M, long n0, long n1, long r, const float *u, long ldu, const void *Bp,
                     int half, float *y, long ldy) {
    if (n0 < 0 || n0 % 16 != 0 || M < 0 || r < 0) abort();
    if (M == 0 || n1 <= n0 || r == 0) return;
    if (!lora_family_available(family)) family = LORA_FAMILY_PORTABLE;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (family == LORA_FAMILY_AVX512) { avx512_up(half, M, n0, n1, r, u, ldu, Bp, y, ldy); return; }
    if (family == LORA_FAMILY_AVX2) { avx2_up(half, M, n0, n1, r, u, ldu, Bp, y, ldy); return; }
#endif
    portable_up(M, n0, n1, r, u, ldu, Bp, half, y, ldy);
}
