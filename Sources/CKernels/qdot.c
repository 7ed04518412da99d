// Decoding GEMVs in integers, as llama.cpp computes them on CPUs: the activations are quantized
// once per call to int8 in blocks of 32 (lora_q8_quantize), and each Q4_0 / Q4_1 / Q8_0 weight
// block is multiplied with its activation block as bytes (exact int32 sums), then scaled. A
// weight then costs a few byte operations instead of a conversion to float and an FMA, which
// makes the M = 1 GEMV memory-bound instead of compute-bound, and lets one decoded block serve
// several rows of A (batched decoding).
//
// The plain reference is portable_q8_gemv below (C, exact integer sums, floats summed
// block by block); the SIMD versions add the same block products in another order (per lane,
// then across lanes), so they agree to float rounding. Against the f32 product of the
// dequantized weights the difference is the activation quantization (|error| <= d/2 per
// activation, d = block absmax / 127): tests hold it to a named tolerance.
#include "CKernels.h"
#include "families.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define QK LORA_QK

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
static void avx2_q8_quantize(long M, long K, const float *A, long lda, int8_t *q, float *d, int32_t *sum);
#endif

void lora_q8_quantize(int family, long M, long K, const float *A, long lda, int8_t *q, float *d, int32_t *sum) {
    if (K % QK != 0) abort();
    const long nb = K / QK;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if ((family == LORA_FAMILY_AVX2 || family == LORA_FAMILY_AVX512) && lora_family_available(family)) {
        avx2_q8_quantize(M, K, A, lda, q, d, sum);
        return;
    }
#endif
    for (long m = 0; m < M; m++)
        for (long b = 0; b < nb; b++) {
            const float *x = A + m * lda + b * QK;
            float amax = 0;
            for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
            const float dd = amax / 127.0f, id = dd != 0 ? 1.0f / dd : 0.0f;
            int8_t *o = q + m * K + b * QK;
            int32_t s = 0;
            for (int j = 0; j < QK; j++) {
                // Ties to even (the default rounding mode), as lrintf but inline: adding and
                // taking off 1.5 * 2^23 rounds any |t| < 2^22 to an integer (|x * id| <= 127).
                const float t = x[j] * id, r = (t + 0x1.8p23f) - 0x1.8p23f;
                long v = (long)r;
                v = v > 127 ? 127 : v < -127 ? -127 : v;
                o[j] = (int8_t)v;
                s += (int32_t)v;
            }
            d[m * nb + b] = dd;
            sum[m * nb + b] = s;
        }
}

int lora_q8_gemv_format(int format) {
    const int f = lora_q8x8_base(format);
    return f == LORA_FORMAT_Q4_0 || f == LORA_FORMAT_Q4_1 || f == LORA_FORMAT_Q8_0;
}

int lora_q8x8_base(int format) {
    switch (format) {
    case LORA_FORMAT_Q8_0_X8: return LORA_FORMAT_Q8_0;
    case LORA_FORMAT_Q4_0_X8: return LORA_FORMAT_Q4_0;
    case LORA_FORMAT_Q4_1_X8: return LORA_FORMAT_Q4_1;
    default: return format;
    }
}

/// Code bytes per block (after d, and Q4_1's m).
static long code_bytes(int format) { return format == LORA_FORMAT_Q8_0 ? 32 : 16; }

void lora_q8x8_pack(int format, long N, long K, const void *W, void *out) {
    if (lora_q8x8_base(format) != format || !lora_q8_gemv_format(format) || N % 8 != 0 || K % QK != 0) abort();
    const long bb = lora_block_bytes(format), nb = K / QK, cb = code_bytes(format), head = bb - cb;
    const uint8_t *w = W;
    uint8_t *o = out;
    for (long g = 0; g < N / 8; g++)
        for (long b = 0; b < nb; b++, o += 8 * bb)
            for (int r = 0; r < 8; r++) {
                const uint8_t *blk = w + ((8 * g + r) * nb + b) * bb;
                memcpy(o + 2 * r, blk, 2);                                   // d
                if (format == LORA_FORMAT_Q4_1) memcpy(o + 16 + 2 * r, blk + 2, 2);  // m
                for (long j = 0; j < cb / 4; j++) memcpy(o + 8 * head + (8 * j + r) * 4, blk + head + 4 * j, 4);
            }
}

void lora_q8x8_block(int format, const void *W, long K, long n, long b, uint8_t *out) {
    const int f = lora_q8x8_base(format);
    if (!lora_q8_gemv_format(f) || K % QK != 0) abort();
    const long bb = lora_block_bytes(f), nb = K / QK, cb = code_bytes(f), head = bb - cb, r = n % 8;
    const uint8_t *g = (const uint8_t *)W + ((n / 8) * nb + b) * 8 * bb;
    memcpy(out, g + 2 * r, 2);
    if (f == LORA_FORMAT_Q4_1) memcpy(out + 2, g + 16 + 2 * r, 2);
    for (long j = 0; j < cb / 4; j++) memcpy(out + head + 4 * j, g + 8 * head + (8 * j + r) * 4, 4);
}

/// The scalar reference: per block, the exact integer dot of the codes with the int8
/// activations (Q4_0's -8 folded in as -8 * sum), times d_w * d_a; Q4_1 adds m_w * (d_a * sum).
static void portable_q8_gemv(int fmt, int il, long M, long n0, long n1, long K, const int8_t *q,
                             const float *da, const int32_t *sa, const uint8_t *w, long rowbytes,
                             float *C, long ldc, int accumulate) {
    const long nb = K / QK, bb = lora_block_bytes(fmt);
    uint8_t plain[34];
    for (long m = 0; m < M; m++)
        for (long n = n0; n < n1; n++) {
            float acc = 0;
            for (long b = 0; b < nb; b++) {
                const uint8_t *blk = w + n * rowbytes + b * bb;
                if (il) {
                    lora_q8x8_block(fmt, w, K, n, b, plain);
                    blk = plain;
                }
                const uint8_t *qs = blk + bb - 16;
                const int8_t *x = q + m * K + b * QK;
                int32_t s = 0;
                const float dw = lora_half_to_float(lora_load_u16(blk)), a = da[m * nb + b];
                if (fmt == LORA_FORMAT_Q8_0) {
                    for (int j = 0; j < 32; j++) s += (int8_t)blk[2 + j] * x[j];
                    acc += dw * a * (float)s;
                    continue;
                }
                for (int j = 0; j < 16; j++) s += (qs[j] & 15) * x[j] + (qs[j] >> 4) * x[j + 16];
                if (fmt == LORA_FORMAT_Q4_0) {
                    s -= 8 * sa[m * nb + b];
                    acc += dw * a * (float)s;
                } else {
                    acc += dw * a * (float)s;
                    acc += lora_half_to_float(lora_load_u16(blk + 2)) * (a * (float)sa[m * nb + b]);
                }
            }
            float *c = C + m * ldc + n;
            *c = accumulate ? *c + acc : acc;
        }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

/// 4 bytes as a little-endian int32 (one unaligned load).
static inline int32_t load_i32(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}
/// A half's bits at p (one unaligned load).
static inline int load_h(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

#define RB 8  // weight rows per group: one 32-bit lane of a ymm vector each
// How far ahead the _X8 layout's streams are prefetched, into L2 (_MM_HINT_T1): 16 KB for the
// VNNI family's single stream, 4 pairs of groups for the two-group passes (the AVX2 family's
// single stream kept 4 KB into L1: greedy decoding 335 -> 306 tokens/s with it in L2). Into L1 at 4 KB (and one pair) the
// loads still waited on memory: Zen 4, one thread, weights from DRAM, the Q8_0 head at M = 8
// 2.2 -> 1.4 ms, Q4_1 1536 x 576 at M = 1 38 -> 50 GB/s, AVX2 pairs at M = 4 51 -> 81 GMAC/s.
#define X8_AHEAD 16384
#define X8_PAIRS_AHEAD 4
// Q8_0's single stream (the head at M = 1, 2) and AVX2's: 4 KB ahead into L1, as before.
#define X8_AHEAD80 4096

/// Rows n..n+8 of W against rows of A. Per block of 32 depths: the 16 code bytes of each of
/// the 8 rows, transposed in registers so that 32-bit lane i holds 4 bytes of row i (v[k] =
/// bytes 4k..4k+3 of every row); their low nibbles are weights 4k..4k+3 and the high ones
/// 16+4k..16+4k+3, so each product with 4 activation bytes broadcast to every lane adds 4 terms
/// to every row at once. The block's exact int32 dot per row is then one lane, scaled by its
/// row's d (the 8 halves converted together) and d_a: no horizontal sums.
///
/// DECODE4 leaves block b (bytes o..) of the 8 rows in lo[4], hi[4] (the nibbles) and dw, mw
/// (d and Q4_1's m as floats); ACC4 adds its products with rows 0..mb of A to acc / accm.
#define DECODE4                                                                                  \
    __m256i v[4];                                                                                \
    if (il) {                                                                                    \
        /* the _X8 layout: the registers' contents, stored in order */                           \
        const uint8_t *g = wr[0] + 8 * o;                                                        \
        /* one stream: fetch ahead past page ends, which the hardware prefetcher does not */    \
        for (int l = 0; l < 8 * bb; l += 64) {                                                   \
            if (MB == 4) _mm_prefetch((const char *)(g + X8_AHEAD + l), _MM_HINT_T1);             \
            else _mm_prefetch((const char *)(g + X8_AHEAD80 + l), _MM_HINT_T0);                   \
        }                                                                                        \
        dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)g));                               \
        mw = fmt == LORA_FORMAT_Q4_1 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(g + 16))) \
                                     : _mm256_setzero_ps();                                      \
        for (int k = 0; k < 4; k++) v[k] = _mm256_loadu_si256((const __m256i *)(g + 8 * (bb - 16) + 32 * k)); \
    } else {                                                                                     \
    __m128i h = _mm_setzero_si128(), hm = _mm_setzero_si128();                                   \
    INSERT8(h, o);                                                                               \
    dw = _mm256_cvtph_ps(h);                                                                     \
    mw = _mm256_setzero_ps();                                                                    \
    if (fmt == LORA_FORMAT_Q4_1) {                                                               \
        INSERT8(hm, o + 2);                                                                      \
        mw = _mm256_cvtph_ps(hm);                                                                \
    }                                                                                            \
    __m256i a[4];                                                                                \
    for (int r = 0; r < 4; r++) {                                                                \
        _mm_prefetch((const char *)(wr[r] + o + 8 * rowbytes), _MM_HINT_T0);                     \
        _mm_prefetch((const char *)(wr[r + 4] + o + 8 * rowbytes), _MM_HINT_T0);                 \
        a[r] = _mm256_inserti128_si256(                                                          \
            _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(wr[r] + o + bb - 16))),     \
            _mm_loadu_si128((const __m128i *)(wr[r + 4] + o + bb - 16)), 1);                     \
    }                                                                                            \
    /* a[r] = [row r | row r+4]; 4 x 4 dword transposes in each 128-bit half */                 \
    const __m256i t0 = _mm256_unpacklo_epi32(a[0], a[1]), t1 = _mm256_unpackhi_epi32(a[0], a[1]); \
    const __m256i t2 = _mm256_unpacklo_epi32(a[2], a[3]), t3 = _mm256_unpackhi_epi32(a[2], a[3]); \
    v[0] = _mm256_unpacklo_epi64(t0, t2); v[1] = _mm256_unpackhi_epi64(t0, t2);                  \
    v[2] = _mm256_unpacklo_epi64(t1, t3); v[3] = _mm256_unpackhi_epi64(t1, t3);                  \
    }                                                                                            \
    for (int k = 0; k < 4; k++) {                                                                \
        lo[k] = _mm256_and_si256(v[k], low4);                                                    \
        hi[k] = _mm256_and_si256(_mm256_srli_epi16(v[k], 4), low4);                              \
    }

#define ACC4(DOTS)                                                                               \
    for (int m = 0; m < mb; m++) {                                                               \
        const int8_t *x = q + m * K + b * QK;                                                    \
        const float ad = da[m * nb + b];                                                         \
        const int32_t s = sa[m * nb + b];                                                        \
        /* Q4_0's -8 offset: every row's sum starts at -8 * sum(x). */                            \
        __m256i dot = _mm256_set1_epi32(fmt == LORA_FORMAT_Q4_0 ? -8 * s : 0);                   \
        DOTS                                                                                     \
        acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, _mm256_set1_ps(ad)), acc[m]); \
        if (fmt == LORA_FORMAT_Q4_1)                                                             \
            accm[m] = _mm256_fmadd_ps(mw, _mm256_set1_ps(ad * (float)s), accm[m]);               \
    }

/// Rows n..n+8 of W against rows 0..mb of A (mb <= MB), each block decoded as it is used.
#define Q8_BLOCK_BODY(DOTS)                                                                      \
    const long bb = lora_block_bytes(fmt), nb = K / QK;                                          \
    const __m256i low4 = _mm256_set1_epi8(15);                                                   \
    __m256 acc[MB], accm[MB];                                                                    \
    for (int m = 0; m < mb; m++) acc[m] = accm[m] = _mm256_setzero_ps();                         \
    const uint8_t *wr[RB];                                                                       \
    for (int r = 0; r < RB; r++) wr[r] = w + (n + r) * rowbytes;                                 \
    for (long b = 0, o = 0; b < nb; b++, o += bb) {                                              \
        __m256 dw, mw;                                                                           \
        __m256i lo[4], hi[4];                                                                    \
        DECODE4                                                                                  \
        ACC4(DOTS)                                                                               \
    }                                                                                            \
    for (int m = 0; m < mb; m++) {                                                               \
        __m256 v = fmt == LORA_FORMAT_Q4_1 ? _mm256_add_ps(acc[m], accm[m]) : acc[m];            \
        float *c = C + m * ldc + n;                                                              \
        _mm256_storeu_ps(c, accumulate ? _mm256_add_ps(_mm256_loadu_ps(c), v) : v);              \
    }

/// The halves at byte `at` of the current block of the 8 rows, as 8 lanes of v (the lane
/// index of vpinsrw must be a constant).
#define INSERT8(v, at)                                                                           \
    do {                                                                                         \
        v = _mm_insert_epi16(v, load_h(wr[0] + (at)), 0);                                 \
        v = _mm_insert_epi16(v, load_h(wr[1] + (at)), 1);                                 \
        v = _mm_insert_epi16(v, load_h(wr[2] + (at)), 2);                                 \
        v = _mm_insert_epi16(v, load_h(wr[3] + (at)), 3);                                 \
        v = _mm_insert_epi16(v, load_h(wr[4] + (at)), 4);                                 \
        v = _mm_insert_epi16(v, load_h(wr[5] + (at)), 5);                                 \
        v = _mm_insert_epi16(v, load_h(wr[6] + (at)), 6);                                 \
        v = _mm_insert_epi16(v, load_h(wr[7] + (at)), 7);                                 \
    } while (0)

/// 4 activation bytes (little-endian int32) broadcast to every lane.
#define X4(off) _mm256_set1_epi32(load_i32(x + (off)))

#define AVX2_TARGET __attribute__((target("avx2,fma,f16c")))
#define VNNI_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni")))

/// AVX2: vpmaddubsw (u8 codes <= 15 times s8 in -127..127: a pair <= 3810) summed as int16
/// over the 8 products (<= 30480, no overflow), then vpmaddwd with ones to int32.
#define DOTS_AVX2                                                                                \
    {                                                                                            \
        __m256i p = _mm256_setzero_si256();                                                      \
        for (int k = 0; k < 4; k++) {                                                            \
            p = _mm256_add_epi16(p, _mm256_maddubs_epi16(lo[k], X4(4 * k)));                     \
            p = _mm256_add_epi16(p, _mm256_maddubs_epi16(hi[k], X4(16 + 4 * k)));                \
        }                                                                                        \
        dot = _mm256_add_epi32(dot, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));                 \
    }
/// VNNI: vpdpbusd in two chains (low and high nibbles).
#define DOTS_VNNI                                                                                \
    {                                                                                            \
        __m256i d2 = _mm256_setzero_si256();                                                     \
        for (int k = 0; k < 4; k++) {                                                            \
            dot = _mm256_dpbusd_epi32(dot, lo[k], X4(4 * k));                                    \
            d2 = _mm256_dpbusd_epi32(d2, hi[k], X4(16 + 4 * k));                                 \
        }                                                                                        \
        dot = _mm256_add_epi32(dot, d2);                                                         \
    }

/// Q8_0 (signed weights): 8 rows' 32 bytes transposed 8 x 8 in dwords (v[k] = bytes 4k..4k+3
/// of every row), then the same lane-per-row products as the 4-bit body. DECODE80 leaves block
/// b in v[8] and dw; ACC80 adds its products with rows 0..mb of A to acc.
#define DECODE80                                                                                 \
    if (il) {                                                                                    \
        const uint8_t *g = wr[0] + 8 * o;                                                        \
        for (int l = 0; l < 8 * 34; l += 64) _mm_prefetch((const char *)(g + X8_AHEAD80 + l), _MM_HINT_T0); \
        dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)g));                               \
        for (int j = 0; j < 8; j++) v[j] = _mm256_loadu_si256((const __m256i *)(g + 16 + 32 * j)); \
    } else {                                                                                     \
    __m128i h = _mm_setzero_si128();                                                             \
    INSERT8(h, o);                                                                               \
    dw = _mm256_cvtph_ps(h);                                                                     \
    __m256i r8[RB];                                                                              \
    for (int r = 0; r < RB; r++) {                                                               \
        _mm_prefetch((const char *)(wr[r] + o + 8 * rowbytes), _MM_HINT_T0);                     \
        r8[r] = _mm256_loadu_si256((const __m256i *)(wr[r] + o + 2));                            \
    }                                                                                            \
    __m256i t[8], u[8];                                                                          \
    for (int i = 0; i < 4; i++) {                                                                \
        t[2 * i] = _mm256_unpacklo_epi32(r8[2 * i], r8[2 * i + 1]);                              \
        t[2 * i + 1] = _mm256_unpackhi_epi32(r8[2 * i], r8[2 * i + 1]);                          \
    }                                                                                            \
    for (int i = 0; i < 2; i++) {                                                                \
        u[4 * i] = _mm256_unpacklo_epi64(t[4 * i], t[4 * i + 2]);                                \
        u[4 * i + 1] = _mm256_unpackhi_epi64(t[4 * i], t[4 * i + 2]);                            \
        u[4 * i + 2] = _mm256_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);                        \
        u[4 * i + 3] = _mm256_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);                        \
    }                                                                                            \
    /* u[j] (j < 4): dword j and j + 4 of rows 0..3; u[j + 4]: of rows 4..7 */                  \
    for (int j = 0; j < 4; j++) {                                                                \
        v[j] = _mm256_permute2x128_si256(u[j], u[j + 4], 0x20);                                  \
        v[j + 4] = _mm256_permute2x128_si256(u[j], u[j + 4], 0x31);                              \
    }                                                                                            \
    }

#define ACC80(DOTS)                                                                              \
    for (int m = 0; m < mb; m++) {                                                               \
        const int8_t *x = q + m * K + b * QK;                                                    \
        const float ad = da[m * nb + b];                                                         \
        const int32_t s = sa[m * nb + b];                                                        \
        __m256i dot;                                                                             \
        DOTS                                                                                     \
        acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, _mm256_set1_ps(ad)), acc[m]); \
    }

#define Q80_BLOCK_BODY(DOTS)                                                                     \
    const long bb = 34, nb = K / QK;                                                             \
    __m256 acc[MB];                                                                              \
    for (int m = 0; m < mb; m++) acc[m] = _mm256_setzero_ps();                                   \
    const uint8_t *wr[RB];                                                                       \
    for (int r = 0; r < RB; r++) wr[r] = w + (n + r) * rowbytes;                                 \
    for (long b = 0, o = 0; b < nb; b++, o += bb) {                                              \
        __m256 dw;                                                                               \
        __m256i v[8];                                                                            \
        DECODE80                                                                                 \
        ACC80(DOTS)                                                                              \
    }                                                                                            \
    for (int m = 0; m < mb; m++) {                                                               \
        float *c = C + m * ldc + n;                                                              \
        _mm256_storeu_ps(c, accumulate ? _mm256_add_ps(_mm256_loadu_ps(c), acc[m]) : acc[m]);    \
    }

/// AVX2: vpmaddubsw(|w|, x signed as w) is w * x per byte pair (<= 2 * 128 * 127, no
/// saturation), widened to int32 at once (8 of them would overflow int16).
#define DOTS80_AVX2                                                                              \
    {                                                                                            \
        (void)s;                                                                                 \
        dot = _mm256_setzero_si256();                                                            \
        for (int k = 0; k < 8; k++)                                                              \
            dot = _mm256_add_epi32(dot, _mm256_madd_epi16(                                       \
                _mm256_maddubs_epi16(_mm256_abs_epi8(v[k]), _mm256_sign_epi8(X4(4 * k), v[k])),  \
                _mm256_set1_epi16(1)));                                                          \
    }
/// VNNI: the weights as unsigned w + 128 (xor 0x80), so vpdpbusd gives w.x + 128 sum(x); the
/// start value takes 128 sum(x) off.
#define DOTS80_VNNI                                                                              \
    {                                                                                            \
        const __m256i flip = _mm256_set1_epi8((char)0x80);                                       \
        dot = _mm256_set1_epi32(-128 * s);                                                       \
        __m256i d2 = _mm256_setzero_si256();                                                     \
        for (int k = 0; k < 8; k += 2) {                                                         \
            dot = _mm256_dpbusd_epi32(dot, _mm256_xor_si256(v[k], flip), X4(4 * k));             \
            d2 = _mm256_dpbusd_epi32(d2, _mm256_xor_si256(v[k + 1], flip), X4(4 * k + 4));       \
        }                                                                                        \
        dot = _mm256_add_epi32(dot, d2);                                                         \
    }

/// One family's block function: Q8_0 or the 4-bit formats, with MB rows of A at most.
#define Q8_BLOCK_FN(name, target, dots4, dots8)                                                  \
    static inline __attribute__((always_inline)) target void                                     \
    name(const int fmt, const int il, const int mb, long K, const int8_t *q, const float *da,    \
         const int32_t *sa, const uint8_t *w, long rowbytes, long n, float *C, long ldc,         \
         int accumulate) {                                                                       \
        if (fmt == LORA_FORMAT_Q8_0) {                                                           \
            Q80_BLOCK_BODY(dots8)                                                                \
        } else {                                                                                 \
            Q8_BLOCK_BODY(dots4)                                                                 \
        }                                                                                        \
    }

/// Rows of A in passes of up to mbmax, each pass with a constant row count (so each gets its
/// own unrolled loop): CALL(rows, fn) runs with m, qm, dm and sm naming the pass's first row.
#define FOR_PASSES(mbmax, CALL, fn)                                                              \
    for (long m = 0; m < M; m += mbmax) {                                                        \
        const long left = M - m;                                                                 \
        const int8_t *qm = q + m * K;                                                            \
        const float *dm = da + m * nb;                                                           \
        const int32_t *sm = sa + m * nb;                                                         \
        if (mbmax >= 4 && left >= 4) CALL(4, fn);                                                \
        else if (mbmax >= 3 && left == 3) CALL(3, fn);                                           \
        else if (left >= 2) CALL(2, fn);                                                         \
        else CALL(1, fn);                                                                        \
    }
#define BUFFERED_PASS(rows, fn) fn(fmt, rows, K, b0, b1, qm, dm, sm, buf, accs + m, accms + m)
#define BLOCK_PASS(rows, fn) fn(f, il, rows, K, qm, dm, sm, w, rowbytes, n, C + m * ldc, ldc, accumulate)

/// One decoded block of 8 rows: the code vectors (lo[4] then hi[4], or Q8_0's v[8]) and the
/// scales as floats.
typedef struct { __m256i c[8]; __m256 dw, mw; } q8_decoded;
#define DCHUNK 16    // blocks decoded at a time: 5 KB, in L1 while every pass over A reads them
#define MAX_M 16     // rows of A the buffered path keeps sums for (the backend's small M)

/// A pass of rows 0..mb of A (mb <= MB) over the decoded blocks b0..<b1 in buf, adding to the
/// sums in accs / accms: the same operations, in the same order, as the block bodies.
#define Q8_PASS_FN(name, target, dots4, dots8)                                                   \
    static inline __attribute__((always_inline)) target void                                     \
    name(const int fmt, const int mb, long K, long b0, long b1, const int8_t *q, const float *da, \
         const int32_t *sa, const q8_decoded *buf, __m256 *accs, __m256 *accms) {               \
        const long nb = K / QK;                                                                  \
        __m256 acc[MB], accm[MB];                                                                \
        for (int m = 0; m < mb; m++) { acc[m] = accs[m]; accm[m] = accms[m]; }                   \
        for (long b = b0; b < b1; b++) {                                                         \
            const q8_decoded *e = buf + (b - b0);                                                \
            const __m256 dw = e->dw;                                                             \
            if (fmt == LORA_FORMAT_Q8_0) {                                                       \
                __m256i v[8];                                                                    \
                for (int k = 0; k < 8; k++) v[k] = e->c[k];                                      \
                ACC80(dots8)                                                                     \
            } else {                                                                             \
                const __m256 mw = e->mw;                                                         \
                __m256i lo[4], hi[4];                                                            \
                for (int k = 0; k < 4; k++) { lo[k] = e->c[k]; hi[k] = e->c[4 + k]; }            \
                ACC4(dots4)                                                                      \
            }                                                                                    \
        }                                                                                        \
        for (int m = 0; m < mb; m++) { accs[m] = acc[m]; accms[m] = accm[m]; }                   \
    }

/// Rows n..n+8 of W against all M rows of A when M takes several passes (MB < M <= MAX_M):
/// each chunk of blocks is decoded (transposed, nibbles split, scales converted) once into
/// `buf` and read by every pass, instead of decoded again for each MB rows of A. Decoding is
/// shuffles, which at M = 8 on AVX2 cost about as much as the products.
#define Q8_BUFFERED_FN(name, target, pass, mbmax)                                                \
    static inline __attribute__((always_inline)) target void                                     \
    name(const int fmt, const int il, long M, long K, const int8_t *q, const float *da,          \
         const int32_t *sa, const uint8_t *w, long rowbytes, long n, float *C, long ldc,         \
         int accumulate) {                                                                       \
        const long bb = lora_block_bytes(fmt), nb = K / QK;                                      \
        const __m256i low4 = _mm256_set1_epi8(15);                                               \
        q8_decoded buf[DCHUNK];                                                                  \
        __m256 accs[MAX_M], accms[MAX_M];                                                        \
        for (long m = 0; m < M; m++) accs[m] = accms[m] = _mm256_setzero_ps();                   \
        const uint8_t *wr[RB];                                                                   \
        for (int r = 0; r < RB; r++) wr[r] = w + (n + r) * rowbytes;                             \
        for (long b0 = 0; b0 < nb; b0 += DCHUNK) {                                               \
            const long b1 = b0 + DCHUNK < nb ? b0 + DCHUNK : nb;                                 \
            for (long b = b0, o = b0 * bb; b < b1; b++, o += bb) {                               \
                q8_decoded *e = buf + (b - b0);                                                  \
                __m256 dw, mw = _mm256_setzero_ps();                                             \
                if (fmt == LORA_FORMAT_Q8_0) {                                                   \
                    __m256i v[8];                                                                \
                    DECODE80                                                                     \
                    for (int k = 0; k < 8; k++) e->c[k] = v[k];                                  \
                } else {                                                                         \
                    __m256i lo[4], hi[4];                                                        \
                    DECODE4                                                                      \
                    for (int k = 0; k < 4; k++) { e->c[k] = lo[k]; e->c[4 + k] = hi[k]; }        \
                }                                                                                \
                e->dw = dw;                                                                      \
                e->mw = mw;                                                                      \
            }                                                                                    \
            FOR_PASSES(mbmax, BUFFERED_PASS, pass)                                               \
        }                                                                                        \
        for (long m = 0; m < M; m++) {                                                           \
            __m256 v = fmt == LORA_FORMAT_Q4_1 ? _mm256_add_ps(accs[m], accms[m]) : accs[m];     \
            float *c = C + m * ldc + n;                                                          \
            _mm256_storeu_ps(c, accumulate ? _mm256_add_ps(_mm256_loadu_ps(c), v) : v);          \
        }                                                                                        \
    }


/// Q4_1's d_a * sum per row of A and block (in buf when it fits, else malloc'd), the scalar
/// product the _X8 passes would otherwise redo per group of 16 weight rows (a convert, a
/// multiply and a broadcast per row and block: with VNNI on Zen 4, one thread, M = 8, Q4_1
/// 1536 x 576 went from 136-145 to 149-160 GMAC/s). The same product, so the same bits.
static float *q41_scales(int fmt, long M, long nb, const float *da, const int32_t *sa, float buf[4096]) {
    float *das = M * nb <= 4096 ? buf : malloc(sizeof(float) * M * nb);
    if (!das) abort();
    if (fmt == LORA_FORMAT_Q4_1)
        for (long i = 0; i < M * nb; i++) das[i] = da[i] * (float)sa[i];
    return das;
}

/// The _X8 layout's 4-bit formats at M >= 3 on AVX2 (in passes of up to MAX_M rows): two groups of 8 rows at a time,
/// so that each broadcast activation word feeds two products (the broadcasts compete with the
/// products for the vector pipes). The two groups' blocks are decoded once per chunk (nibbles
/// split, scales converted) into L1 and read there by one pass per row of A. Passes of one row
/// keep every sum (and Q4_1's m term) in a register; two rows spilled and measured slower.
/// The operations per (row of A, row of W) and their order are those of the block bodies
/// above, so the bits are theirs.
#define PCHUNK 24  // blocks decoded at a time: 15 KB for the two groups
static inline __attribute__((always_inline)) AVX2_TARGET void
avx2_x8_pass(const int fmt, long K, const int8_t *x, const float *da, const int32_t *sa, const float *das, long b0, long b1,
             __m256i codes[][2][8], __m256 dws[][2], __m256 mws[][2], __m256 acc[2], __m256 accm[2]) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 a0 = acc[0], a1 = acc[1], m0 = accm[0], m1 = accm[1];
    for (long b = b0; b < b1; b++) {
        __m256i (*c)[8] = codes[b - b0];
        __m256i p0 = _mm256_setzero_si256(), p1 = p0;
        for (int k = 0; k < 8; k++) {
            const __m256i xb = _mm256_set1_epi32(load_i32(x + b * QK + (k < 4 ? 4 * k : 16 + 4 * (k - 4))));
            p0 = _mm256_add_epi16(p0, _mm256_maddubs_epi16(c[0][k], xb));
            p1 = _mm256_add_epi16(p1, _mm256_maddubs_epi16(c[1][k], xb));
        }
        const __m256i init = _mm256_set1_epi32(fmt == LORA_FORMAT_Q4_0 ? -8 * sa[b] : 0);
        const __m256 vad = _mm256_set1_ps(da[b]);
        a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(init, _mm256_madd_epi16(p0, ones))),
                             _mm256_mul_ps(dws[b - b0][0], vad), a0);
        a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(init, _mm256_madd_epi16(p1, ones))),
                             _mm256_mul_ps(dws[b - b0][1], vad), a1);
        if (fmt == LORA_FORMAT_Q4_1) {
            const __m256 f = _mm256_set1_ps(das[b]);
            m0 = _mm256_fmadd_ps(mws[b - b0][0], f, m0);
            m1 = _mm256_fmadd_ps(mws[b - b0][1], f, m1);
        }
    }
    acc[0] = a0; acc[1] = a1; accm[0] = m0; accm[1] = m1;
}

/// Rows n..n+16 of W (two _X8 groups) against rows 0..M of A.
static inline __attribute__((always_inline)) AVX2_TARGET void
avx2_x8_pair(const int fmt, long M, long K, const int8_t *q, const float *da, const int32_t *sa, const float *das,
             const uint8_t *w, long rowbytes, long n, float *C, long ldc, int accumulate) {
    const long bb = lora_block_bytes(fmt), nb = K / QK;
    const __m256i low4 = _mm256_set1_epi8(15);
    __m256i codes[PCHUNK][2][8];
    __m256 dws[PCHUNK][2], mws[PCHUNK][2];
    __m256 acc[MAX_M][2], accm[MAX_M][2];
    for (long m = 0; m < M; m++) acc[m][0] = acc[m][1] = accm[m][0] = accm[m][1] = _mm256_setzero_ps();
    const uint8_t *grp[2] = { w + n * rowbytes, w + (n + 8) * rowbytes };
    for (long b0 = 0; b0 < nb; b0 += PCHUNK) {
        const long b1 = b0 + PCHUNK < nb ? b0 + PCHUNK : nb;
        for (long b = b0; b < b1; b++)
            for (int g = 0; g < 2; g++) {
                const uint8_t *e = grp[g] + 8 * b * bb;   // as DECODE4 reads the _X8 layout
                for (int l = 0; l < 8 * bb; l += 64) _mm_prefetch((const char *)(e + X8_PAIRS_AHEAD * 16 * nb * bb + l), _MM_HINT_T1);
                dws[b - b0][g] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)e));
                if (fmt == LORA_FORMAT_Q4_1) mws[b - b0][g] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(e + 16)));
                for (int k = 0; k < 4; k++) {
                    const __m256i v = _mm256_loadu_si256((const __m256i *)(e + 8 * (bb - 16) + 32 * k));
                    codes[b - b0][g][k] = _mm256_and_si256(v, low4);
                    codes[b - b0][g][4 + k] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
                }
            }
        for (long m = 0; m < M; m++)
            avx2_x8_pass(fmt, K, q + m * K, da + m * nb, sa + m * nb, das + m * nb, b0, b1, codes, dws, mws, acc[m], accm[m]);
    }
    for (long m = 0; m < M; m++)
        for (int g = 0; g < 2; g++) {
            const __m256 v = fmt == LORA_FORMAT_Q4_1 ? _mm256_add_ps(acc[m][g], accm[m][g]) : acc[m][g];
            float *c = C + m * ldc + n + 8 * g;
            _mm256_storeu_ps(c, accumulate ? _mm256_add_ps(_mm256_loadu_ps(c), v) : v);
        }
}

/// Whole pairs of _X8 groups from n0 (4-bit formats, AVX2); returns the first row left.
AVX2_TARGET static long avx2_x8_pairs(int fmt, long M, long n0, long n1, long K, const int8_t *q,
                                      const float *da, const int32_t *sa, const uint8_t *w,
                                      long rowbytes, float *C, long ldc, int accumulate) {
    long n = n0;
    float stackbuf[4096], *das = q41_scales(fmt, M, K / QK, da, sa, stackbuf);
    const long nb = K / QK;
    // Rows of A past MAX_M (a server step's prompt rows) in further passes over the same two
    // groups, which are in L1 by then.
#define AVX2_X8_ROWS(F)                                                                          \
    for (; n + 16 <= n1; n += 16)                                                                \
        for (long m = 0; m < M; m += MAX_M)                                                      \
            avx2_x8_pair(F, M - m < MAX_M ? M - m : MAX_M, K, q + m * K, da + m * nb, sa + m * nb, das + m * nb, \
                         w, rowbytes, n, C + m * ldc, ldc, accumulate);
    if (fmt == LORA_FORMAT_Q4_0) AVX2_X8_ROWS(LORA_FORMAT_Q4_0)
    else AVX2_X8_ROWS(LORA_FORMAT_Q4_1)
#undef AVX2_X8_ROWS
    if (das != stackbuf) free(das);
    return n;
}

/// The _X8 layout with VNNI at M >= 3: two groups of 8 rows side by side in the two
/// halves of a zmm register, so that one broadcast activation word and one vpdpbusd serve 16
/// rows, in passes of up to 4 rows of A over each block (decoded once per pass from the two
/// groups' bytes). Per (row of A, row of W) the integer sums and the float operations, in
/// block order, are those of the ymm block bodies (DOTS_VNNI / DOTS80_VNNI, ACC4 / ACC80),
/// so the bits are theirs and a row gets the same result at any M.
#define ZNNI_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
static inline __attribute__((always_inline)) ZNNI_TARGET __m512i z_pair(const uint8_t *a, const uint8_t *b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a)),
                              _mm256_loadu_si256((const __m256i *)b), 1);
}
static inline __attribute__((always_inline)) ZNNI_TARGET __m512 z_halves(const uint8_t *a, const uint8_t *b) {
    return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)a)),
                                                   _mm_loadu_si128((const __m128i *)b), 1));
}
#define ZX4(off) _mm512_set1_epi32(load_i32(x + (off)))
// From 3 rows: at 1 and 2 the product is bound by memory, and the single 8-row stream of the
// ymm block bodies measured faster on the Q8_0 head (Zen 4: 0.7-0.8 against 1.1-1.5 ms at M = 1).
#ifndef ZNNI_MIN_M
#define ZNNI_MIN_M 3
#endif

static inline __attribute__((always_inline)) ZNNI_TARGET void
znni_x8_pass(const int fmt, const int mb, long K, const int8_t *q, const float *da, const int32_t *sa,
             const float *das, const uint8_t *g0, const uint8_t *g1, float *C, long ldc, int accumulate) {
    const long bb = lora_block_bytes(fmt), nb = K / QK, ahead = X8_PAIRS_AHEAD * 16 * nb * bb;
    const __m512i low4 = _mm512_set1_epi8(15), flip = _mm512_set1_epi8((char)0x80);
    __m512 acc[4], accm[4];
    for (int m = 0; m < mb; m++) acc[m] = accm[m] = _mm512_setzero_ps();
    for (long b = 0; b < nb; b++) {
        const uint8_t *e0 = g0 + 8 * b * bb, *e1 = g1 + 8 * b * bb;
        for (int l = 0; l < 8 * bb; l += 64) {  // the same block of the next pair
            _mm_prefetch((const char *)(e0 + ahead + l), _MM_HINT_T1);
            _mm_prefetch((const char *)(e1 + ahead + l), _MM_HINT_T1);
        }
        const __m512 dw = z_halves(e0, e1);
        if (fmt == LORA_FORMAT_Q8_0) {
            __m512i v[8];
            for (int j = 0; j < 8; j++) v[j] = _mm512_xor_si512(z_pair(e0 + 16 + 32 * j, e1 + 16 + 32 * j), flip);
            for (int m = 0; m < mb; m++) {
                const int8_t *x = q + m * K + b * QK;
                const float ad = da[m * nb + b];
                __m512i dot = _mm512_set1_epi32(-128 * sa[m * nb + b]), d2 = _mm512_setzero_si512();
                for (int k = 0; k < 8; k += 2) {
                    dot = _mm512_dpbusd_epi32(dot, v[k], ZX4(4 * k));
                    d2 = _mm512_dpbusd_epi32(d2, v[k + 1], ZX4(4 * k + 4));
                }
                dot = _mm512_add_epi32(dot, d2);
                acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw, _mm512_set1_ps(ad)), acc[m]);
            }
        } else {
            const __m512 mw = fmt == LORA_FORMAT_Q4_1 ? z_halves(e0 + 16, e1 + 16) : _mm512_setzero_ps();
            __m512i lo[4], hi[4];
            for (int k = 0; k < 4; k++) {
                const __m512i v = z_pair(e0 + 8 * (bb - 16) + 32 * k, e1 + 8 * (bb - 16) + 32 * k);
                lo[k] = _mm512_and_si512(v, low4);
                hi[k] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
            }
            for (int m = 0; m < mb; m++) {
                const int8_t *x = q + m * K + b * QK;
                const float ad = da[m * nb + b];
                __m512i dot = _mm512_set1_epi32(fmt == LORA_FORMAT_Q4_0 ? -8 * sa[m * nb + b] : 0), d2 = _mm512_setzero_si512();
                for (int k = 0; k < 4; k++) {
                    dot = _mm512_dpbusd_epi32(dot, lo[k], ZX4(4 * k));
                    d2 = _mm512_dpbusd_epi32(d2, hi[k], ZX4(16 + 4 * k));
                }
                dot = _mm512_add_epi32(dot, d2);
                acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw, _mm512_set1_ps(ad)), acc[m]);
                if (fmt == LORA_FORMAT_Q4_1) accm[m] = _mm512_fmadd_ps(mw, _mm512_set1_ps(das[m * nb + b]), accm[m]);
            }
        }
    }
    for (int m = 0; m < mb; m++) {
        const __m512 v = fmt == LORA_FORMAT_Q4_1 ? _mm512_add_ps(acc[m], accm[m]) : acc[m];
        float *c = C + m * ldc;
        _mm512_storeu_ps(c, accumulate ? _mm512_add_ps(_mm512_loadu_ps(c), v) : v);
    }
}

#define ZNNI_PASSES(F)                                                                           \
    for (; n + 16 <= n1; n += 16) {                                                              \
        const uint8_t *g0 = w + n * rowbytes, *g1 = w + (n + 8) * rowbytes;                      \
        for (long m = 0; m < M; m += 4) {                                                        \
            const long left = M - m;                                                             \
            const int8_t *qm = q + m * K;                                                        \
            const float *dm = da + m * nb, *dsm = das + m * nb;                                  \
            const int32_t *sm = sa + m * nb;                                                     \
            float *c = C + m * ldc + n;                                                          \
            if (left >= 4) znni_x8_pass(F, 4, K, qm, dm, sm, dsm, g0, g1, c, ldc, accumulate);        \
            else if (left == 3) znni_x8_pass(F, 3, K, qm, dm, sm, dsm, g0, g1, c, ldc, accumulate);   \
            else if (left == 2) znni_x8_pass(F, 2, K, qm, dm, sm, dsm, g0, g1, c, ldc, accumulate);   \
            else znni_x8_pass(F, 1, K, qm, dm, sm, dsm, g0, g1, c, ldc, accumulate);                  \
        }                                                                                        \
    }

/// Whole pairs of _X8 groups from n0 with VNNI; returns the first row left.
ZNNI_TARGET static long znni_x8_pairs(int fmt, long M, long n0, long n1, long K, const int8_t *q, const float *da,
                                      const int32_t *sa, const uint8_t *w, long rowbytes, float *C, long ldc,
                                      int accumulate) {
    const long nb = K / QK;
    long n = n0;
    float stackbuf[4096], *das = q41_scales(fmt, M, nb, da, sa, stackbuf);
    switch (fmt) {
    case LORA_FORMAT_Q8_0: ZNNI_PASSES(LORA_FORMAT_Q8_0) break;
    case LORA_FORMAT_Q4_0: ZNNI_PASSES(LORA_FORMAT_Q4_0) break;
    default: ZNNI_PASSES(LORA_FORMAT_Q4_1) break;
    }
    if (das != stackbuf) free(das);
    return n;
}

#define MB 2  // rows of A per pass on AVX2 (16 ymm registers)
Q8_BLOCK_FN(avx2_block, AVX2_TARGET, DOTS_AVX2, DOTS80_AVX2)
Q8_PASS_FN(avx2_pass, AVX2_TARGET, DOTS_AVX2, DOTS80_AVX2)
Q8_BUFFERED_FN(avx2_buffered, AVX2_TARGET, avx2_pass, 2)
#undef MB
#define MB 4  // AVX-512VL gives 32 registers
Q8_BLOCK_FN(vnni_block, VNNI_TARGET, DOTS_VNNI, DOTS80_VNNI)
Q8_PASS_FN(vnni_pass, VNNI_TARGET, DOTS_VNNI, DOTS80_VNNI)
Q8_BUFFERED_FN(vnni_buffered, VNNI_TARGET, vnni_pass, 4)
#undef MB

/// Rows n0..n1 of W in groups of 8 for one constant format f. x8buf4 / x8buf80: whether the
/// 4-bit formats / Q8_0 in the _X8 layout take the buffered path past mbmax rows, where a
/// block is a few loads away from its codes and block passes read it again from L1. Measured
/// faster than the buffered passes (which spill): Q8_0 by 17% on AVX2; with VNNI (Zen 4, one
/// thread, M = 8) Q4_1 1536 x 576 by 28% (90 -> 115 GMAC/s) and the Q8_0 head 49152 x 576 by
/// 55% (2.9 -> 1.9 ms). AVX2's 4-bit _X8 rows mostly take avx2_x8_pairs before this.
#define GEMV_GROUPS(F, IL, mbmax, block, buffered, x8buf4, x8buf80)                              \
    for (long n = n0; n + RB <= n1; n += RB) {                                                   \
        const int f = F, il = IL;                                                                \
        if (M > mbmax && M <= MAX_M && !(IL && !(F == LORA_FORMAT_Q8_0 ? x8buf80 : x8buf4))) {   \
            buffered(f, il, M, K, q, da, sa, w, rowbytes, n, C, ldc, accumulate);                \
            continue;                                                                            \
        }                                                                                        \
        FOR_PASSES(mbmax, BLOCK_PASS, block)                                                     \
    }

/// Whole groups of 8 rows; the caller does the rest (fewer than 8) with the reference.
#define Q8_GEMV(name, target, block, buffered, mbmax, x8buf4, x8buf80)                           \
    target static void name(int fmt, int il, long M, long n0, long n1, long K, const int8_t *q,  \
                            const float *da, const int32_t *sa, const uint8_t *w,                \
                            long rowbytes, float *C, long ldc, int accumulate) {                 \
        const long nb = K / QK;                                                                  \
        /* a constant format, layout (and row count) in each call: each gets its own loops */   \
        if (il) switch (fmt) {                                                                   \
        case LORA_FORMAT_Q8_0: GEMV_GROUPS(LORA_FORMAT_Q8_0, 1, mbmax, block, buffered, x8buf4, x8buf80) break; \
        case LORA_FORMAT_Q4_0: GEMV_GROUPS(LORA_FORMAT_Q4_0, 1, mbmax, block, buffered, x8buf4, x8buf80) break; \
        default: GEMV_GROUPS(LORA_FORMAT_Q4_1, 1, mbmax, block, buffered, x8buf4, x8buf80) break;  \
        } else switch (fmt) {                                                                    \
        case LORA_FORMAT_Q8_0: GEMV_GROUPS(LORA_FORMAT_Q8_0, 0, mbmax, block, buffered, x8buf4, x8buf80) break; \
        case LORA_FORMAT_Q4_0: GEMV_GROUPS(LORA_FORMAT_Q4_0, 0, mbmax, block, buffered, x8buf4, x8buf80) break; \
        default: GEMV_GROUPS(LORA_FORMAT_Q4_1, 0, mbmax, block, buffered, x8buf4, x8buf80) break;  \
        }                                                                                        \
    }

Q8_GEMV(avx2_q8_gemv, AVX2_TARGET, avx2_block, avx2_buffered, 2, 1, 0)
Q8_GEMV(vnni_q8_gemv, VNNI_TARGET, vnni_block, vnni_buffered, 4, 0, 0)

/// One block's |x| max (NaN ignored) from its 32 floats.
static inline __attribute__((always_inline)) AVX2_TARGET float q8_amax(const float *x) {
    const __m256 signless = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 mx = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) mx = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + 8 * k), signless), mx);
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

/// One block's codes and their sum, given id = 1 / d (or 0).
static inline __attribute__((always_inline)) AVX2_TARGET int32_t q8_codes(const float *x, float id, int8_t *out) {
    const __m256 magic = _mm256_set1_ps(0x1.8p23f);
    const __m256i hi = _mm256_set1_epi32(127), lo = _mm256_set1_epi32(-127);
    const __m256 vid = _mm256_set1_ps(id);
    __m256i iv[4], s = _mm256_setzero_si256();
    for (int k = 0; k < 4; k++) {
        const __m256 r = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), vid), magic), magic);
        iv[k] = _mm256_max_epi32(_mm256_min_epi32(_mm256_cvttps_epi32(r), hi), lo);
        s = _mm256_add_epi32(s, iv[k]);
    }
    // int32 -> int8 in order: packs work per 128-bit lane, so fix the order after.
    const __m256i p01 = _mm256_packs_epi32(iv[0], iv[1]), p23 = _mm256_packs_epi32(iv[2], iv[3]);
    const __m256i p = _mm256_packs_epi16(p01, p23);
    _mm256_storeu_si256((__m256i *)out, _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
    return _mm_cvtsi128_si32(s4);
}

/// lora_q8_quantize's blocks, 8 lanes at a time with the same float operations: |x| maxed
/// with NaN ignored as fmaxf does (vmaxps returns its second operand when one is NaN), d and
/// 1/d as the reference's correctly rounded divisions (8 blocks' in one vdivps each: two
/// scalar divisions a block sat on the latency path), x * (1/d) rounded by adding and taking
/// off 1.5 * 2^23, truncated (exact: already integral), clamped to -127..127 (NaN's INT_MIN
/// becomes -127, as the reference's (long)NaN does), packed to bytes.
AVX2_TARGET static void avx2_q8_quantize(long M, long K, const float *A, long lda, int8_t *q, float *d, int32_t *sum) {
    const long nb = K / QK;
    const __m256 c127 = _mm256_set1_ps(127.0f), one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    for (long m = 0; m < M; m++) {
        const float *xm = A + m * lda;
        long b = 0;
        for (; b + 8 <= nb; b += 8) {
            float amax[8], id[8];
            for (int i = 0; i < 8; i++) amax[i] = q8_amax(xm + (b + i) * QK);
            const __m256 dd = _mm256_div_ps(_mm256_loadu_ps(amax), c127);
            const __m256 inv = _mm256_and_ps(_mm256_div_ps(one, dd), _mm256_cmp_ps(dd, zero, _CMP_NEQ_UQ));
            _mm256_storeu_ps(d + m * nb + b, dd);
            _mm256_storeu_ps(id, inv);
            for (int i = 0; i < 8; i++) sum[m * nb + b + i] = q8_codes(xm + (b + i) * QK, id[i], q + m * K + (b + i) * QK);
        }
        for (; b < nb; b++) {
            const float dd = q8_amax(xm + b * QK) / 127.0f, id = dd != 0 ? 1.0f / dd : 0.0f;
            d[m * nb + b] = dd;
            sum[m * nb + b] = q8_codes(xm + b * QK, id, q + m * K + b * QK);
        }
    }
}

static int has_vnni(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
#endif

int lora_q8_vnni_available(void) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    static int cached = -1;
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v < 0) { v = has_vnni(); __atomic_store_n(&cached, v, __ATOMIC_RELAXED); }
    return v;
#else
    return 0;
#endif
}

void lora_q8_gemv(int family, int format, long M, long n0, long n1, long K, const int8_t *q,
                  const float *d, const int32_t *sum, const void *W, long ldw, float *C, long ldc,
                  int accumulate) {
    const int base = lora_q8x8_base(format), il = base != format;
    if (!lora_q8_gemv_format(format) || K % QK != 0 || ldw % QK != 0) abort();
    if (il && (n0 % 8 != 0 || n1 % 8 != 0 || ldw != K)) abort();
    if (M <= 0 || n1 <= n0) return;
    format = base;
    const long rowbytes = ldw / QK * lora_block_bytes(format);
    if (!lora_family_available(family)) family = LORA_FAMILY_PORTABLE;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (family == LORA_FAMILY_AVX512 || family == LORA_FAMILY_AVX2) {
        if (family == LORA_FAMILY_AVX512 && lora_q8_vnni_available()) {
            if (il && M >= ZNNI_MIN_M)
                n0 = znni_x8_pairs(format, M, n0, n1, K, q, d, sum, W, rowbytes, C, ldc, accumulate);
            vnni_q8_gemv(format, il, M, n0, n1, K, q, d, sum, W, rowbytes, C, ldc, accumulate);
        }
        else {
            if (il && format != LORA_FORMAT_Q8_0 && M > 2)
                n0 = avx2_x8_pairs(format, M, n0, n1, K, q, d, sum, W, rowbytes, C, ldc, accumulate);
            avx2_q8_gemv(format, il, M, n0, n1, K, q, d, sum, W, rowbytes, C, ldc, accumulate);
        }
        n0 += (n1 - n0) / RB * RB;  // the rest below
    }
#endif
    portable_q8_gemv(format, il, M, n0, n1, K, q, d, sum, W, rowbytes, C, ldc, accumulate);
}
