// LLM.int8() forward products for int8-rows weights: bitsandbytes' MatMul8bitLt with int8
// weights (has_fp16_weights=False) and an outlier threshold, as transformers' load_in_8bit runs
// it for inference and for training on a GPU (CKernels.h states the arithmetic). The int8 part
// is an exact int32 sum, so every family gives the portable loops' bits; the AVX2 one reaches
// about 1.5x the f32 FMA rate with vpmaddwd (16 products per instruction, no saturation).
#include "CKernels.h"
#include "families.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define LLM_X86 1
#endif

/// x rounded to IEEE half (nearest, ties to even) and back: what `A.to(torch.float16)` keeps.
float lora_half_round(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    const uint32_t sign = u & 0x80000000u;
    uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) return x;                         // inf, NaN
    if (a >= 0x477ff000u) a = 0x7f800000u;                  // >= 65520: past the largest half
    else if (a < 0x38800000u) {                              // below 2^-14: half subnormals, step 2^-24
        float f;
        memcpy(&f, &a, 4);
        f = rintf(f * 16777216.0f) * 5.9604644775390625e-8f;  // both products exact
        memcpy(&a, &f, 4);
    } else {
        a += 0xfffu + ((a >> 13) & 1u);                      // 13 bits dropped, ties to even
        a &= ~0x1fffu;
    }
    u = sign | a;
    memcpy(&x, &u, 4);
    return x;
}

/// 127 / rowStat as PyTorch computes `127.0 / row_stats`: a scalar over a tensor is the
/// tensor's reciprocal times the scalar, two roundings (0x1.11111p+5 for 3.7207031, not
/// 0x1.111112p+5), which moves an activation that sits near a rounding tie to its other side.
static inline float row_factor(float rowStat) {
    const volatile float inv = 1.0f / rowStat;  // volatile: keep the two roundings apart
    return inv * 127.0f;
}

// ---- portable (the reference) ----------------------------------------------------------------

static void portable_scan(long M, long K, const float *A, long lda, float thr, uint8_t *mask, float *rowStats) {
    for (long m = 0; m < M; m++) {
        float mx = 0;
        for (long k = 0; k < K; k++) {
            const float h = fabsf(lora_half_round(A[m * lda + k]));
            if (h >= thr) mask[k] = 1;
            else if (h > mx) mx = h;
        }
        rowStats[m] = mx;
    }
}

static void portable_pack(long M, long K, const float *A, long lda, const uint8_t *mask, const float *rowStats,
                          int16_t *q, long ldq) {
    for (long m = 0; m < M; m++) {
        const float r = row_factor(rowStats[m]);
        int16_t *qm = q + m * ldq;
        for (long k = 0; k < K; k++) {
            if (mask[k] || rowStats[m] == 0) { qm[k] = 0; continue; }
            const float v = rintf(lora_half_round(A[m * lda + k]) * r);
            qm[k] = (int16_t)(v > 127 ? 127 : v < -127 ? -127 : v);
        }
        for (long k = K; k < ldq; k++) qm[k] = 0;
    }
}

static inline float dequant(int32_t acc, float rowStat, float scale) {
    // bitsandbytes' int8_mm_dequant: A * (row_stats * col_stats) * 6.200124e-05 in f32, with
    // col_stats = SCB = this weight row's absmax, here scale * 127.
    return (float)acc * (rowStat * (scale * 127.0f)) * 6.200124e-05f;
}

static void portable_gemm(long M, long n0, long n1, long K, const int16_t *q, long ldq, const float *rowStats,
                          const int8_t *W, long ldw, const float *scales, float *C, long ldc, int accumulate) {
    for (long m = 0; m < M; m++)
        for (long n = n0; n < n1; n++) {
            int32_t acc = 0;
            for (long k = 0; k < K; k++) acc += (int32_t)q[m * ldq + k] * W[n * ldw + k];
            const float v = dequant(acc, rowStats[m], scales[n]);
            C[m * ldc + n] = accumulate ? C[m * ldc + n] + v : v;
        }
}

// ---- AVX2 ------------------------------------------------------------------------------------
#ifdef LLM_X86
#define AVX2_T __attribute__((target("avx2,fma,f16c")))

AVX2_T static inline __m256 half_round8(__m256 x) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

/// The same values as portable_scan / portable_pack: the half rounding by F16C, the row maxima
/// over the elements under the threshold, x * factor rounded to even by vroundps.
AVX2_T static void avx2_scan(long M, long K, const float *A, long lda, float thr, uint8_t *mask, float *rowStats) {
    const __m256 vthr = _mm256_set1_ps(thr), absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const long K8 = K / 8 * 8;
    for (long m = 0; m < M; m++) {
        const float *x = A + m * lda;
        __m256 mx = _mm256_setzero_ps();
        long k = 0;
        for (; k < K8; k += 8) {
            const __m256 h = _mm256_and_ps(half_round8(_mm256_loadu_ps(x + k)), absm);
            const __m256 out = _mm256_cmp_ps(h, vthr, _CMP_GE_OQ);
            const int bits = _mm256_movemask_ps(out);
            if (bits)
                for (int j = 0; j < 8; j++) mask[k + j] |= (uint8_t)((bits >> j) & 1);
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(out, h));
        }
        float buf[8], r = 0;
        _mm256_storeu_ps(buf, mx);
        for (int j = 0; j < 8; j++) r = buf[j] > r ? buf[j] : r;
        for (; k < K; k++) {
            const float h = fabsf(lora_half_round(x[k]));
            if (h >= thr) mask[k] = 1;
            else if (h > r) r = h;
        }
        rowStats[m] = r;
    }
}

AVX2_T static void avx2_pack_rows(long M, long K, const float *A, long lda, const uint8_t *mask, const float *rowStats,
                                  int16_t *q, long ldq) {
    const long K8 = K / 8 * 8;
    int any = 0;
    for (long k = 0; k < K && !any; k++) any = mask[k];
    for (long m = 0; m < M; m++) {
        const float *x = A + m * lda;
        int16_t *qm = q + m * ldq;
        if (rowStats[m] == 0) {
            memset(qm, 0, (size_t)ldq * 2);
            continue;
        }
        const float rf = row_factor(rowStats[m]);
        const __m256 r = _mm256_set1_ps(rf);
        const __m256 hi = _mm256_set1_ps(127), lo = _mm256_set1_ps(-127);
        long k = 0;
        for (; k < K8; k += 8) {
            __m256 v = _mm256_round_ps(_mm256_mul_ps(half_round8(_mm256_loadu_ps(x + k)), r),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            v = _mm256_max_ps(_mm256_min_ps(v, hi), lo);
            const __m256i i32 = _mm256_cvtps_epi32(v);
            const __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
            _mm_storeu_si128((__m128i *)(qm + k), i16);
        }
        for (; k < K; k++) {
            const float v = rintf(lora_half_round(x[k]) * rf);
            qm[k] = (int16_t)(v > 127 ? 127 : v < -127 ? -127 : v);
        }
        if (any)
            for (long j = 0; j < K; j++)
                if (mask[j]) qm[j] = 0;
        for (k = K; k < ldq; k++) qm[k] = 0;
    }
}

/// The outlier columns' sums, 8 columns of C at a time: a multiply then an add per term in
/// the portable loop's order (no FMA), so the bits are the same.
AVX2_T static void avx2_outlier_sums(long M, long nn, const float *A, long lda, const long *cols, long ncols,
                                     const float *sub, float *C, long ldc) {
    const long n8 = nn / 8 * 8;
    for (long m = 0; m < M; m++) {
        float *c = C + m * ldc;
        for (long j = 0; j < ncols; j++) {
            const float x = A[m * lda + cols[j]];
            const float *b = sub + j * nn;
            const __m256 vx = _mm256_set1_ps(x);
            long n = 0;
            for (; n < n8; n += 8)
                _mm256_storeu_ps(c + n, _mm256_add_ps(_mm256_loadu_ps(c + n), _mm256_mul_ps(vx, _mm256_loadu_ps(b + n))));
            for (; n < nn; n++) {
                const float p = x * b[n];
                c[n] += p;
            }
        }
    }
}

enum { LMR = 6, LNR = 16 };

/// Panel of weight rows n..n+nc (nc <= 16, zeros beyond): panel[p][j] holds weights 2p and
/// 2p+1 of row n+j as two int16s, the operand layout of vpmaddwd. P pairs (K odd: last is 0).
AVX2_T static void avx2_pack(const int8_t *W, long ldw, long n, long nc, long K, long P, int32_t *panel) {
    const int8_t *w[LNR];
    for (long j = 0; j < LNR; j++) w[j] = W + (n + (j < nc ? j : 0)) * ldw;
    const long full = K / 2;
    for (long p = 0; p < full; p++)
        for (long j = 0; j < LNR; j++) {
            int16_t two;
            memcpy(&two, w[j] + 2 * p, 2);  // bytes 2p, 2p+1: each sign-extended to an int16
            const uint32_t lo = (uint16_t)(int16_t)(int8_t)(two & 0xff), hi = (uint16_t)(int16_t)(int8_t)(two >> 8);
            panel[p * LNR + j] = j < nc ? (int32_t)(lo | hi << 16) : 0;
        }
    if (full < P)
        for (long j = 0; j < LNR; j++) panel[full * LNR + j] = j < nc ? (int32_t)(uint16_t)(int16_t)w[j][2 * full] : 0;
}

/// C[mr rows, 16 columns of the panel] as dequantized floats (scb: the columns' scales).
static inline __attribute__((always_inline)) AVX2_T void
avx2_tile(const int mr, long P, const int16_t *q, long ldq, const float *rs, const int32_t *panel,
          const float *sc, long nc, float *C, long ldc, int accumulate) {
    __m256i acc[LMR][2];
    for (int i = 0; i < mr; i++) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
    for (long p = 0; p < P; p++) {
        const __m256i b0 = _mm256_load_si256((const __m256i *)(panel + p * LNR));
        const __m256i b1 = _mm256_load_si256((const __m256i *)(panel + p * LNR + 8));
        for (int i = 0; i < mr; i++) {
            int32_t v;
            memcpy(&v, q + i * ldq + 2 * p, 4);
            const __m256i a = _mm256_set1_epi32(v);
            acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(a, b0));
            acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(a, b1));
        }
    }
    // dequant(): (float)acc * (rowStat * (scale * 127)) * 6.200124e-05, the same f32 steps.
    const __m256 s0 = _mm256_mul_ps(_mm256_loadu_ps(sc), _mm256_set1_ps(127.0f));
    const __m256 s1 = _mm256_mul_ps(_mm256_loadu_ps(sc + 8), _mm256_set1_ps(127.0f));
    const __m256 k = _mm256_set1_ps(6.200124e-05f);
    for (int i = 0; i < mr; i++) {
        const __m256 r = _mm256_set1_ps(rs[i]);
        const __m256 o0 = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc[i][0]), _mm256_mul_ps(r, s0)), k);
        const __m256 o1 = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc[i][1]), _mm256_mul_ps(r, s1)), k);
        float *c = C + i * ldc;
        if (nc == LNR) {  // a whole panel: vector stores (the scalar loop was a sixth of the time)
            _mm256_storeu_ps(c, accumulate ? _mm256_add_ps(_mm256_loadu_ps(c), o0) : o0);
            _mm256_storeu_ps(c + 8, accumulate ? _mm256_add_ps(_mm256_loadu_ps(c + 8), o1) : o1);
            continue;
        }
        float out[16];
        _mm256_storeu_ps(out, o0);
        _mm256_storeu_ps(out + 8, o1);
        for (long j = 0; j < nc; j++) c[j] = accumulate ? c[j] + out[j] : out[j];
    }
}

AVX2_T static void avx2_gemm(long M, long n0, long n1, long K, const int16_t *q, long ldq, const float *rowStats,
                             const int8_t *W, long ldw, const float *scales, float *C, long ldc, int accumulate) {
    const long P = (K + 1) / 2;
    int32_t *panel = aligned_alloc(32, (size_t)((P * LNR * 4 + 31) / 32 * 32));
    if (!panel) abort();
    for (long n = n0; n < n1; n += LNR) {
        const long nc = n1 - n < LNR ? n1 - n : LNR;
        avx2_pack(W, ldw, n, nc, K, P, panel);
        float sc[LNR] = {0};
        for (long j = 0; j < nc; j++) sc[j] = scales[n + j];
        for (long m = 0; m < M; m += LMR) {
            const long mr = M - m < LMR ? M - m : LMR;
            const int16_t *qm = q + m * ldq;
            float *c = C + m * ldc + n;
            switch (mr) {
            case 6: avx2_tile(6, P, qm, ldq, rowStats + m, panel, sc, nc, c, ldc, accumulate); break;
            case 5: avx2_tile(5, P, qm, ldq, rowStats + m, panel, sc, nc, c, ldc, accumulate); break;
            case 4: avx2_tile(4, P, qm, ldq, rowStats + m, panel, sc, nc, c, ldc, accumulate); break;
            case 3: avx2_tile(3, P, qm, ldq, rowStats + m, panel, sc, nc, c, ldc, accumulate); break;
            case 2: avx2_tile(2, P, qm, ldq, rowStats + m, panel, sc, nc, c, ldc, accumulate); break;
            default: avx2_tile(1, P, qm, ldq, rowStats + m, panel, sc, nc, c, ldc, accumulate); break;
            }
        }
    }
    free(panel);
}

/// Few rows of A (decoding): each weight row read once as int8, widened 16 at a time and
/// multiplied with up to 4 rows of A held as int16; the same exact sums as the panel kernel.
AVX2_T static void avx2_gemv(long M, long n0, long n1, long K, const int16_t *q, long ldq, const float *rowStats,
                             const int8_t *W, long ldw, const float *scales, float *C, long ldc, int accumulate) {
    const long K16 = K / 16 * 16;
    for (long m0 = 0; m0 < M; m0 += 4) {
        const int mr = M - m0 < 4 ? (int)(M - m0) : 4;
        for (long n = n0; n < n1; n++) {
            const int8_t *w = W + n * ldw;
            __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
            for (long k = 0; k < K16; k += 16) {
                const __m256i wv = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + k)));
                for (int i = 0; i < mr; i++)
                    acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(wv, _mm256_loadu_si256((const __m256i *)(q + (m0 + i) * ldq + k))));
            }
            for (int i = 0; i < mr; i++) {
                int32_t lanes[8], s = 0;
                _mm256_storeu_si256((__m256i *)lanes, acc[i]);
                for (int j = 0; j < 8; j++) s += lanes[j];
                for (long k = K16; k < K; k++) s += (int32_t)q[(m0 + i) * ldq + k] * w[k];
                const float v = dequant(s, rowStats[m0 + i], scales[n]);
                float *c = C + (m0 + i) * ldc + n;
                *c = accumulate ? *c + v : v;
            }
        }
    }
}

// ---- AVX-512 VNNI -------------------------------------------------------------------------------
// vpdpbusd multiplies unsigned by signed bytes, 4 products per int32 lane, twice vpmaddwd's
// products per instruction and no separate add. The activations go in as q + 128 (0..255) and
// each column's 128 * sum(w) comes off at the end: the same exact int32 sums, so the same bits
// (|sum| <= 255 * 127 * K, inside int32 for K < 66000).
#define VNNI_T __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
enum { VMR = 8, VNR = 32 };

/// Panel of weight rows n..n+nc (nc <= 32, zeros beyond): panel[p][j] holds weights 4p..4p+3 of
/// row n+j (zeros past K), the operand layout of vpdpbusd; wsum[j] = 128 * the row's sum.
VNNI_T static void vnni_pack(const int8_t *W, long ldw, long n, long nc, long K, long P, int32_t *panel, int32_t *wsum) {
    const long full = K / 4;
    for (long j = 0; j < VNR; j++) {
        if (j >= nc) {
            for (long p = 0; p < P; p++) panel[p * VNR + j] = 0;
            wsum[j] = 0;
            continue;
        }
        const int8_t *w = W + (n + j) * ldw;
        int32_t s = 0;
        for (long p = 0; p < full; p++) {
            int32_t four;
            memcpy(&four, w + 4 * p, 4);
            panel[p * VNR + j] = four;
        }
        if (full < P) {
            uint8_t b[4] = {0, 0, 0, 0};
            for (long k = 4 * full; k < K; k++) b[k - 4 * full] = (uint8_t)w[k];
            memcpy(panel + full * VNR + j, b, 4);
        }
        for (long k = 0; k < K; k++) s += w[k];
        wsum[j] = 128 * s;
    }
}

static inline __attribute__((always_inline)) VNNI_T void
vnni_tile(const int mr, long P, const uint8_t *u, long ldu, const float *rs, const int32_t *panel, const int32_t *wsum,
          const float *sc, long nc, float *C, long ldc, int accumulate) {
    __m512i acc[VMR][2];
    for (int i = 0; i < mr; i++) acc[i][0] = acc[i][1] = _mm512_setzero_si512();
    for (long p = 0; p < P; p++) {
        const __m512i b0 = _mm512_load_si512((const void *)(panel + p * VNR));
        const __m512i b1 = _mm512_load_si512((const void *)(panel + p * VNR + 16));
        for (int i = 0; i < mr; i++) {
            int32_t v;
            memcpy(&v, u + i * ldu + 4 * p, 4);
            const __m512i a = _mm512_set1_epi32(v);
            acc[i][0] = _mm512_dpbusd_epi32(acc[i][0], a, b0);
            acc[i][1] = _mm512_dpbusd_epi32(acc[i][1], a, b1);
        }
    }
    // dequant(): (float)acc * (rowStat * (scale * 127)) * 6.200124e-05, the same f32 steps.
    const __m512i z0 = _mm512_loadu_si512((const void *)wsum), z1 = _mm512_loadu_si512((const void *)(wsum + 16));
    const __m512 s0 = _mm512_mul_ps(_mm512_loadu_ps(sc), _mm512_set1_ps(127.0f));
    const __m512 s1 = _mm512_mul_ps(_mm512_loadu_ps(sc + 16), _mm512_set1_ps(127.0f));
    const __m512 k = _mm512_set1_ps(6.200124e-05f);
    const __mmask16 m0 = nc >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nc) - 1);
    const __mmask16 m1 = nc >= 32 ? (__mmask16)0xffff : nc <= 16 ? 0 : (__mmask16)((1u << (nc - 16)) - 1);
    for (int i = 0; i < mr; i++) {
        const __m512 r = _mm512_set1_ps(rs[i]);
        const __m512 a0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[i][0], z0));
        const __m512 a1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[i][1], z1));
        __m512 o0 = _mm512_mul_ps(_mm512_mul_ps(a0, _mm512_mul_ps(r, s0)), k);
        __m512 o1 = _mm512_mul_ps(_mm512_mul_ps(a1, _mm512_mul_ps(r, s1)), k);
        float *c = C + i * ldc;
        if (accumulate) {
            o0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, c), o0);
            o1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, c + 16), o1);
        }
        _mm512_mask_storeu_ps(c, m0, o0);
        _mm512_mask_storeu_ps(c + 16, m1, o1);
    }
}

VNNI_T static void vnni_gemm(long M, long n0, long n1, long K, const int16_t *q, long ldq, const float *rowStats,
                             const int8_t *W, long ldw, const float *scales, float *C, long ldc, int accumulate) {
    const long P = (K + 3) / 4, ldu = 4 * P;
    int32_t *panel = aligned_alloc(64, (size_t)((P * VNR * 4 + 63) / 64 * 64));
    uint8_t *u = malloc((size_t)(M * ldu));
    if (!panel || !u) abort();
    // q + 128 as bytes, 128 (a zero activation) past K.
    const __m256i off = _mm256_set1_epi16(128);
    for (long m = 0; m < M; m++) {
        const int16_t *qm = q + m * ldq;
        uint8_t *um = u + m * ldu;
        long k = 0;
        for (; k + 16 <= K; k += 16) {
            const __m256i v = _mm256_add_epi16(_mm256_loadu_si256((const __m256i *)(qm + k)), off);
            _mm_storeu_si128((__m128i *)(um + k), _mm256_cvtepi16_epi8(v));
        }
        for (; k < K; k++) um[k] = (uint8_t)(qm[k] + 128);
        for (; k < ldu; k++) um[k] = 128;
    }
    int32_t wsum[VNR];
    for (long n = n0; n < n1; n += VNR) {
        const long nc = n1 - n < VNR ? n1 - n : VNR;
        vnni_pack(W, ldw, n, nc, K, P, panel, wsum);
        float sc[VNR] = {0};
        for (long j = 0; j < nc; j++) sc[j] = scales[n + j];
        for (long m = 0; m < M; m += VMR) {
            const long mr = M - m < VMR ? M - m : VMR;
            const uint8_t *um = u + m * ldu;
            float *c = C + m * ldc + n;
            switch (mr) {
            case 8: vnni_tile(8, P, um, ldu, rowStats + m, panel, wsum, sc, nc, c, ldc, accumulate); break;
            case 7: vnni_tile(7, P, um, ldu, rowStats + m, panel, wsum, sc, nc, c, ldc, accumulate); break;
            case 6: vnni_tile(6, P, um, ldu, rowStats + m, panel, wsum, sc, nc, c, ldc, accumulate); break;
            case 5: vnni_tile(5, P, um, ldu, rowStats + m, panel, wsum, sc, nc, c, ldc, accumulate); break;
            case 4: vnni_tile(4, P, um, ldu, rowStats + m, panel, wsum, sc, nc, c, ldc, accumulate); break;
            case 3: vnni_tile(3, P, um, ldu, rowStats + m, panel, wsum, sc, nc, c, ldc, accumulate); break;
            case 2: vnni_tile(2, P, um, ldu, rowStats + m, panel, wsum, sc, nc, c, ldc, accumulate); break;
            default: vnni_tile(1, P, um, ldu, rowStats + m, panel, wsum, sc, nc, c, ldc, accumulate); break;
            }
        }
    }
    free(u);
    free(panel);
}
#endif

// ---- entry points -----------------------------------------------------------------------------

static int x86_family(int family) {
#ifdef LLM_X86
    return (family == LORA_FAMILY_AVX2 || family == LORA_FAMILY_AVX512) && lora_family_available(LORA_FAMILY_AVX2);
#else
    (void)family;
    return 0;
#endif
}

static float half_threshold(float threshold) { return threshold > 0 ? lora_half_round(threshold) : INFINITY; }

void lora_llm_int8_scan(int family, long M, long K, const float *A, long lda, float threshold, uint8_t *outlierMask,
                        float *rowStats) {
    const float thr = half_threshold(threshold);
#ifdef LLM_X86
    if (x86_family(family)) { avx2_scan(M, K, A, lda, thr, outlierMask, rowStats); return; }
#endif
    portable_scan(M, K, A, lda, thr, outlierMask, rowStats);
}

void lora_llm_int8_pack(int family, long M, long K, const float *A, long lda, const uint8_t *outlierMask,
                        const float *rowStats, int16_t *q, long ldq) {
    if (ldq < K) abort();
#ifdef LLM_X86
    if (x86_family(family)) { avx2_pack_rows(M, K, A, lda, outlierMask, rowStats, q, ldq); return; }
#endif
    portable_pack(M, K, A, lda, outlierMask, rowStats, q, ldq);
}

long lora_llm_int8_quantize(int family, long M, long K, const float *A, long lda, float threshold,
                            uint8_t *outlierMask, int16_t *q, long ldq, float *rowStats) {
    memset(outlierMask, 0, (size_t)K);
    lora_llm_int8_scan(family, M, K, A, lda, threshold, outlierMask, rowStats);
    long count = 0;
    for (long k = 0; k < K; k++) count += outlierMask[k];
    lora_llm_int8_pack(family, M, K, A, lda, outlierMask, rowStats, q, ldq);
    return count;
}

void lora_llm_int8_gemm(int family, long M, long n0, long n1, long K, const int16_t *q, long ldq,
                        const float *rowStats, const int8_t *W, long ldw, const float *scales,
                        float *C, long ldc, int accumulate) {
    if (M <= 0 || n1 <= n0) return;
    if (ldq < K + (K & 1)) abort();
#ifdef LLM_X86
    if (x86_family(family)) {
        if (M >= LMR && family == LORA_FAMILY_AVX512 && lora_family_available(family) && lora_q8_vnni_available()) {
            vnni_gemm(M, n0, n1, K, q, ldq, rowStats, W, ldw, scales, C, ldc, accumulate);
            return;
        }
        if (M < LMR) avx2_gemv(M, n0, n1, K, q, ldq, rowStats, W, ldw, scales, C, ldc, accumulate);
        else avx2_gemm(M, n0, n1, K, q, ldq, rowStats, W, ldw, scales, C, ldc, accumulate);
        return;
    }
#endif
    portable_gemm(M, n0, n1, K, q, ldq, rowStats, W, ldw, scales, C, ldc, accumulate);
}

#pragma clang fp contract(off)
void lora_llm_int8_outliers(int family, long M, long n0, long n1, const float *A, long lda, const long *cols, long ncols,
                            const int8_t *W, long ldw, const float *scales, float *C, long ldc, float *scratch) {
    if (ncols <= 0 || n1 <= n0) return;
    const long nn = n1 - n0;
    // subB[j][n] = W[n, cols[j]] * SCB[n] * (1/127), bitsandbytes' int8_vectorwise_dequant in f32.
    for (long j = 0; j < ncols; j++)
        for (long n = n0; n < n1; n++)
            scratch[j * nn + (n - n0)] = (float)W[n * ldw + cols[j]] * (scales[n] * 127.0f) * 7.874015718698502e-3f;
#ifdef LLM_X86
    if (x86_family(family)) { avx2_outlier_sums(M, nn, A, lda, cols, ncols, scratch, C + n0, ldc); return; }
#endif
    for (long m = 0; m < M; m++) {
        float *c = C + m * ldc + n0;
        for (long j = 0; j < ncols; j++) {
            const float x = A[m * lda + cols[j]];
            const float *b = scratch + j * nn;
            for (long n = 0; n < nn; n++) {
                const float p = x * b[n];
                c[n] += p;
            }
        }
    }
}
