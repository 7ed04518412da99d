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
// (Half-precision copies halved the bytes, but moved tiny models' logits 2e-3 from PEFT's.)
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

static void portable_down(long M, long K, long rp, long j0, long j1, const float *x, long ldx, const float *AT,
                          float *u, long ldu) {
    for (long m = 0; m < M; m++)
        for (long j = j0; j < j1; j++) {
            float s0 = 0, s1 = 0;
            long k = 0;
            for (; k + 1 < K; k += 2) {
                s0 = fmaf(x[m * ldx + k], AT[k * rp + j], s0);
                s1 = fmaf(x[m * ldx + k + 1], AT[(k + 1) * rp + j], s1);
            }
            if (k < K) s0 = fmaf(x[m * ldx + k], AT[k * rp + j], s0);
            u[m * ldu + j] = s0 + s1;
        }
}

static void portable_up(long M, long n0, long n1, long r, const float *u, long ldu, const float *Bp,
                        float *y, long ldy) {
    for (long m = 0; m < M; m++)
        for (long n = n0; n < n1; n++) {
            const float *b = Bp + (n / 16) * r * 16 + n % 16;
            float acc = y[m * ldy + n];
            for (long j = 0; j < r; j++) acc = fmaf(u[m * ldu + j], b[16 * j], acc);
            y[m * ldy + n] = acc;
        }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define F2_TARGET __attribute__((target("avx2,fma")))
#define F5_TARGET __attribute__((target("avx2,fma,avx512f")))
#define INL static inline __attribute__((always_inline))
/// The sums s0 + s1 of u's lanes for mb rows into s[0..mb): one body for ymm (8 lanes) and
/// zmm (16), V the vector type.
#define DOWN_SUMS(V, LD, ZERO, FMA, BCAST, ADD)                                                  \
    V a0[4], a1[4];                                                                              \
    for (int m = 0; m < mb; m++) a0[m] = a1[m] = ZERO();                                         \
    long k = 0;                                                                                  \
    for (; k + 1 < K; k += 2) {                                                                  \
        const V w0 = LD(at + k * rp), w1 = LD(at + (k + 1) * rp);                                \
        for (int m = 0; m < mb; m++) {                                                           \
            a0[m] = FMA(BCAST(x[m * ldx + k]), w0, a0[m]);                                       \
            a1[m] = FMA(BCAST(x[m * ldx + k + 1]), w1, a1[m]);                                   \
        }                                                                                        \
    }                                                                                            \
    if (k < K) {                                                                                 \
        const V w0 = LD(at + k * rp);                                                            \
        for (int m = 0; m < mb; m++) a0[m] = FMA(BCAST(x[m * ldx + k]), w0, a0[m]);              \
    }                                                                                            \
    for (int m = 0; m < mb; m++) s[m] = ADD(a0[m], a1[m]);

/// 8 lanes j..j+8 of u for mb rows (ymm; both families: AVX-512's 8-lane tail too).
INL F2_TARGET void down8(const int mb, long K, long rp, const float *x, long ldx, const float *at, float *u,
                         long ldu, int lanes) {
    __m256 s[4];
    DOWN_SUMS(__m256, _mm256_loadu_ps, _mm256_setzero_ps, _mm256_fmadd_ps, _mm256_set1_ps, _mm256_add_ps)
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
INL F5_TARGET void down16(const int mb, long K, long rp, const float *x, long ldx, const float *at, float *u,
                          long ldu, int lanes) {
    __m512 s[4];
    DOWN_SUMS(__m512, _mm512_loadu_ps, _mm512_setzero_ps, _mm512_fmadd_ps, _mm512_set1_ps, _mm512_add_ps)
    const __mmask16 km = lanes >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << lanes) - 1);
    for (int m = 0; m < mb; m++) _mm512_mask_storeu_ps(u + m * ldu, km, s[m]);
}

F2_TARGET static void avx2_down(long M, long K, long rp, long j0, long j1, const float *x, long ldx, const float *AT,
                                float *u, long ldu) {
    for (long j = j0; j < j1; j += 8) {
        const int lanes = j1 - j < 8 ? (int)(j1 - j) : 8;
        for (long m = 0; m < M; m += 4) {
#define CALL(mb) down8(mb, K, rp, x + m * ldx, ldx, AT + j, u + m * ldu + j, ldu, lanes)
            GEMV_MB_SWITCH(M - m, CALL)
#undef CALL
        }
    }
}

F5_TARGET static void avx512_down(long M, long K, long rp, long j0, long j1, const float *x, long ldx, const float *AT,
                                  float *u, long ldu) {
    long j = j0;
    // Whole 16-lane chunks (and a last one that is partly padding when rp allows it).
    for (; j < j1 && j + 16 <= rp; j += 16) {
        const int lanes = j1 - j < 16 ? (int)(j1 - j) : 16;
        for (long m = 0; m < M; m += 4) {
#define CALL(mb) down16(mb, K, rp, x + m * ldx, ldx, AT + j, u + m * ldu + j, ldu, lanes)
            GEMV_MB_SWITCH(M - m, CALL)
#undef CALL
        }
    }
    if (j < j1) avx2_down(M, K, rp, j, j1, x, ldx, AT, u, ldu);  // an 8-lane tail (rp = 16 i + 8)
}

/// One 16-output panel for mb rows, two ymm halves. One panel at a time: reading two panels
/// (1 KB apart) side by side streamed at half the speed (Zen 4, one thread: 16.9 against 33.9
/// GB/s over SmolLM2's sites; AVX2 15.7 against 26.8).
INL F2_TARGET void up_avx2(const int mb, long r, const float *u, long ldu, const float *bp, float *y, long ldy,
                           long cols) {
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
    for (long j = 0; j < r; j++) {
        const __m256 b0 = _mm256_loadu_ps(bp + j * 16), b1 = _mm256_loadu_ps(bp + j * 16 + 8);
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

INL F5_TARGET void up_avx512(const int mb, long r, const float *u, long ldu, const float *bp, float *y, long ldy,
                             long cols) {
    const __mmask16 km = cols >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << cols) - 1);
    __m512 acc[4];
    for (int m = 0; m < mb; m++) acc[m] = _mm512_maskz_loadu_ps(km, y + m * ldy);
    for (long j = 0; j < r; j++) {
        const __m512 b = _mm512_loadu_ps(bp + j * 16);
        for (int m = 0; m < mb; m++) acc[m] = _mm512_fmadd_ps(_mm512_set1_ps(u[m * ldu + j]), b, acc[m]);
    }
    for (int m = 0; m < mb; m++) _mm512_mask_storeu_ps(y + m * ldy, km, acc[m]);
}

/// Panel after panel, rows of u in passes of up to 4 (UP_CALL(mb): the family's panel kernel).
#define UP_LOOP                                                                                  \
    for (long n = n0; n < n1; n += 16) {                                                         \
        const long cols = n1 - n < 16 ? n1 - n : 16;                                             \
        const float *bp = Bp + (n / 16) * r * 16;                                                \
        for (long m = 0; m < M; m += 4) {                                                        \
            const float *um = u + m * ldu;                                                       \
            float *ym = y + m * ldy + n;                                                         \
            GEMV_MB_SWITCH(M - m, UP_CALL)                                                       \
        }                                                                                        \
    }

F2_TARGET static void avx2_up(long M, long n0, long n1, long r, const float *u, long ldu, const float *Bp,
                              float *y, long ldy) {
#define UP_CALL(mb) up_avx2(mb, r, um, ldu, bp, ym, ldy, cols)
    UP_LOOP
#undef UP_CALL
}
F5_TARGET static void avx512_up(long M, long n0, long n1, long r, const float *u, long ldu, const float *Bp,
                                float *y, long ldy) {
#define UP_CALL(mb) up_avx512(mb, r, um, ldu, bp, ym, ldy, cols)
    UP_LOOP
#undef UP_CALL
}
#endif

void lora_factors_down(int family, long M, long K, long r, long j0, long j1, const float *x, long ldx,
                       const float *AT, float *u, long ldu) {
    const long rp = lora_factors_rp(r);
    if (j0 < 0 || j0 % 8 != 0 || j1 > r || M < 0 || K < 0) abort();
    if (M == 0 || j1 <= j0) return;
    if (!lora_family_available(family)) family = LORA_FAMILY_PORTABLE;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (family == LORA_FAMILY_AVX512) { avx512_down(M, K, rp, j0, j1, x, ldx, AT, u, ldu); return; }
    if (family == LORA_FAMILY_AVX2) { avx2_down(M, K, rp, j0, j1, x, ldx, AT, u, ldu); return; }
#endif
    portable_down(M, K, rp, j0, j1, x, ldx, AT, u, ldu);
}

void lora_factors_up(int family, long M, long n0, long n1, long r, const float *u, long ldu, const float *Bp,
                     float *y, long ldy) {
    if (n0 < 0 || n0 % 16 != 0 || M < 0 || r < 0) abort();
    if (M == 0 || n1 <= n0 || r == 0) return;
    if (!lora_family_available(family)) family = LORA_FAMILY_PORTABLE;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (family == LORA_FAMILY_AVX512) { avx512_up(M, n0, n1, r, u, ldu, Bp, y, ldy); return; }
    if (family == LORA_FAMILY_AVX2) { avx2_up(M, n0, n1, r, u, ldu, Bp, y, ldy); return; }
#endif
    portable_up(M, n0, n1, r, u, ldu, Bp, y, ldy);
}
