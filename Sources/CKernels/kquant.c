// GGUF Q5_0, Q5_1, Q4_K, Q5_K, Q6_K (CKernels.h): each product dequantizes a tile of W (a few
// rows, or a few rows' column range) into a small f32 buffer and runs the calling family's f32
// kernel on it, so every family gets these formats from its own f32 micro-kernels without an
// f32 copy of the whole weight. The decoding is plain C, shared by the families: each value is
// computed in float exactly as ggml's dequantize_row_* does (one rounding per operation; the
// statements are split so that no compiler contracts them into an FMA). The AVX2 and AVX-512
// families decode with AVX2 (deq_block_avx2, the same values); portable keeps the scalar code,
// which is the reference the other is tested against (KernelFamilyTests).
#include "CKernels.h"
#include "families.h"
#include <stdlib.h>

/// Scale and min of sub-block j (0..7) from a Q4_K / Q5_K block's 12 packed scale bytes:
/// sub-blocks 0-3 are the low 6 bits of bytes j and j + 4; 4-7 take their low 4 bits from byte
/// j + 4 and their top 2 bits from the top bits of bytes j - 4 (scale) and j (min).
static inline void scale_min_k4(int j, const uint8_t *q, float *sc, float *m) {
    if (j < 4) {
        *sc = (float)(q[j] & 63);
        *m = (float)(q[j + 4] & 63);
    } else {
        *sc = (float)((q[j + 4] & 15) | ((q[j - 4] >> 6) << 4));
        *m = (float)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/// One block of `format` (32 or 256 weights) into out.
static void deq_block(int format, const uint8_t *b, float *out) {
    switch (format) {
    case LORA_FORMAT_Q5_0: {
        // half d, u32 qh (bit j: 5th bit of weight j), u8 qs[16]; w = (q - 16) * d
        const float d = lora_half_to_float(lora_load_u16(b));
        const uint32_t qh = (uint32_t)b[2] | (uint32_t)b[3] << 8 | (uint32_t)b[4] << 16 | (uint32_t)b[5] << 24;
        for (int j = 0; j < 16; j++) {
            int q0 = (b[6 + j] & 15) | (int)((qh >> j) & 1) << 4;
            int q1 = (b[6 + j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
            out[j] = (float)(q0 - 16) * d;
            out[j + 16] = (float)(q1 - 16) * d;
        }
        break;
    }
    case LORA_FORMAT_Q5_1: {
        // half d, half m, u32 qh, u8 qs[16]; w = q * d + m (two roundings)
        const float d = lora_half_to_float(lora_load_u16(b)), m = lora_half_to_float(lora_load_u16(b + 2));
        const uint32_t qh = (uint32_t)b[4] | (uint32_t)b[5] << 8 | (uint32_t)b[6] << 16 | (uint32_t)b[7] << 24;
        for (int j = 0; j < 16; j++) {
            int q0 = (b[8 + j] & 15) | (int)((qh >> j) & 1) << 4;
            int q1 = (b[8 + j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
            float v0 = (float)q0 * d, v1 = (float)q1 * d;
            out[j] = v0 + m;
            out[j + 16] = v1 + m;
        }
        break;
    }
    case LORA_FORMAT_Q4_K:
    case LORA_FORMAT_Q5_K: {
        // half d, half dmin, u8 scales[12], (Q5_K: u8 qh[32],) u8 qs[128]; 8 sub-blocks of 32:
        // qs[32k + l] holds weight l of sub-block 2k (low nibble) and of 2k + 1 (high nibble),
        // Q5_K's 5th bit of weight l of sub-block i is bit i of qh[l];
        // w = (d * sc) * q - (dmin * m)
        const int five = format == LORA_FORMAT_Q5_K;
        const float d = lora_half_to_float(lora_load_u16(b)), dmin = lora_half_to_float(lora_load_u16(b + 2));
        const uint8_t *scales = b + 4, *qh = b + 16, *qs = b + (five ? 48 : 16);
        for (int k = 0; k < 4; k++) {
            float s0, m0, s1, m1;
            scale_min_k4(2 * k, scales, &s0, &m0);
            scale_min_k4(2 * k + 1, scales, &s1, &m1);
            const float d0 = d * s0, dm0 = dmin * m0, d1 = d * s1, dm1 = dmin * m1;
            for (int l = 0; l < 32; l++) {
                int q0 = qs[32 * k + l] & 15, q1 = qs[32 * k + l] >> 4;
                if (five) {
                    q0 |= ((qh[l] >> (2 * k)) & 1) << 4;
                    q1 |= ((qh[l] >> (2 * k + 1)) & 1) << 4;
                }
                float v0 = d0 * (float)q0, v1 = d1 * (float)q1;
                out[64 * k + l] = v0 - dm0;
                out[64 * k + 32 + l] = v1 - dm1;
            }
        }
        break;
    }
    case LORA_FORMAT_Q6_K: {
        // u8 ql[128], u8 qh[64], int8 scales[16], half d; two halves of 128 weights. In half h,
        // for l < 32, weight l + 32 i (i = 0..3) is a nibble of ql (low for i = 0, 1, high for
        // 2, 3; of ql[64h + l] for i even, ql[64h + 32 + l] for odd) with bits 2i, 2i + 1 of
        // qh[32h + l] on top, minus 32; w = (d * scales[weight / 16]) * q.
        const float d = lora_half_to_float(lora_load_u16(b + 208));
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = b + 64 * h, *qh = b + 128 + 32 * h;
            const int8_t *sc = (const int8_t *)(b + 192 + 8 * h);
            float *y = out + 128 * h;
            for (int l = 0; l < 32; l++) {
                int q[4] = {
                    ((ql[l] & 15) | ((qh[l] & 3) << 4)) - 32,
                    ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32,
                    ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32,
                    ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32,
                };
                for (int i = 0; i < 4; i++) {
                    float s = d * (float)sc[l / 16 + 2 * i];
                    y[l + 32 * i] = s * (float)q[i];
                }
            }
        }
        break;
    }
    default: abort();
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// ---- AVX2 decoding (the AVX2 and AVX-512 families): the same values as deq_block ------------
// 32 quants at a time as bytes, widened to f32 8 at a time. Every product below is the scalar
// one in the same order (scale first, then times q); where an add follows (Q5_1, K-quants), the
// product is exact in f32 (at most 11 + 6 + 5 significant bits), so fusing could not change it.
#include <immintrin.h>
#define KQ_TARGET __attribute__((target("avx2,fma,f16c")))
#define KQ_INLINE static inline __attribute__((always_inline)) KQ_TARGET

/// Bytes c*8 .. c*8+7 of q (c = 0..3) as 8 f32, signed or unsigned.
KQ_INLINE __m256 bytes8_ps(__m256i q, int c, int sgn) {
    __m128i h = c < 2 ? _mm256_castsi256_si128(q) : _mm256_extracti128_si256(q, 1);
    if (c & 1) h = _mm_srli_si128(h, 8);
    return _mm256_cvtepi32_ps(sgn ? _mm256_cvtepi8_epi32(h) : _mm256_cvtepu8_epi32(h));
}

/// Byte j = 16 where bit j of `bits` is set, else 0 (Q5_0 / Q5_1's fifth bits).
KQ_INLINE __m256i bit_bytes16(uint32_t bits) {
    const __m256i sel = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                         2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    __m256i v = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), sel), bit);
    return _mm256_and_si256(_mm256_cmpeq_epi8(v, bit), _mm256_set1_epi8(16));
}

/// Q5_0 / Q5_1 quants 0..31 (0..31 unsigned): low nibbles are weights 0..15, high 16..31.
KQ_INLINE __m256i q5_bytes(const uint8_t *qs, uint32_t qh) {
    const __m128i m4 = _mm_set1_epi8(15), v = _mm_loadu_si128((const __m128i *)qs);
    __m256i q = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m4), _mm_and_si128(v, m4));
    return _mm256_or_si256(q, bit_bytes16(qh));
}

KQ_TARGET static void deq_block_avx2(int format, const uint8_t *b, float *out) {
    const __m256i m4 = _mm256_set1_epi8(15);
    switch (format) {
    case LORA_FORMAT_Q5_0: {
        const __m256 d = _mm256_set1_ps(lora_half_to_float(lora_load_u16(b)));
        __m256i q = _mm256_sub_epi8(q5_bytes(b + 6, (uint32_t)b[2] | (uint32_t)b[3] << 8 | (uint32_t)b[4] << 16 | (uint32_t)b[5] << 24),
                                    _mm256_set1_epi8(16));
        for (int c = 0; c < 4; c++) _mm256_storeu_ps(out + 8 * c, _mm256_mul_ps(bytes8_ps(q, c, 1), d));
        break;
    }
    case LORA_FORMAT_Q5_1: {
        const __m256 d = _mm256_set1_ps(lora_half_to_float(lora_load_u16(b)));
        const __m256 m = _mm256_set1_ps(lora_half_to_float(lora_load_u16(b + 2)));
        __m256i q = q5_bytes(b + 8, (uint32_t)b[4] | (uint32_t)b[5] << 8 | (uint32_t)b[6] << 16 | (uint32_t)b[7] << 24);
        for (int c = 0; c < 4; c++) _mm256_storeu_ps(out + 8 * c, _mm256_add_ps(_mm256_mul_ps(bytes8_ps(q, c, 0), d), m));
        break;
    }
    case LORA_FORMAT_Q4_K:
    case LORA_FORMAT_Q5_K: {
        const int five = format == LORA_FORMAT_Q5_K;
        const float d = lora_half_to_float(lora_load_u16(b)), dmin = lora_half_to_float(lora_load_u16(b + 2));
        const uint8_t *scales = b + 4, *qs = b + (five ? 48 : 16);
        const __m256i qh = five ? _mm256_loadu_si256((const __m256i *)(b + 16)) : _mm256_setzero_si256();
        const __m256i one = _mm256_set1_epi8(1);
        for (int k = 0; k < 4; k++) {
            float s0, m0, s1, m1;
            scale_min_k4(2 * k, scales, &s0, &m0);
            scale_min_k4(2 * k + 1, scales, &s1, &m1);
            const __m256 d0 = _mm256_set1_ps(d * s0), dm0 = _mm256_set1_ps(dmin * m0);
            const __m256 d1 = _mm256_set1_ps(d * s1), dm1 = _mm256_set1_ps(dmin * m1);
            const __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * k));
            __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            if (five) {
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * k), one), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * k + 1), one), 4));
            }
            for (int c = 0; c < 4; c++) {
                _mm256_storeu_ps(out + 64 * k + 8 * c, _mm256_sub_ps(_mm256_mul_ps(d0, bytes8_ps(lo, c, 0)), dm0));
                _mm256_storeu_ps(out + 64 * k + 32 + 8 * c, _mm256_sub_ps(_mm256_mul_ps(d1, bytes8_ps(hi, c, 0)), dm1));
            }
        }
        break;
    }
    case LORA_FORMAT_Q6_K: {
        const float d = lora_half_to_float(lora_load_u16(b + 208));
        const __m256i m2 = _mm256_set1_epi8(3), m32 = _mm256_set1_epi8(32);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = b + 64 * h;
            const int8_t *sc = (const int8_t *)(b + 192 + 8 * h);
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)ql);
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
            const __m256i hb = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h));
            __m256i q[4] = {
                _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(hb, m2), 4)),
                _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m2), 4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m2), 4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m2), 4)),
            };
            for (int i = 0; i < 4; i++) {
                __m256i qi = _mm256_sub_epi8(q[i], m32);
                for (int c = 0; c < 4; c++) {
                    __m256 s = _mm256_set1_ps(d * (float)sc[c / 2 + 2 * i]);
                    _mm256_storeu_ps(out + 128 * h + 32 * i + 8 * c, _mm256_mul_ps(s, bytes8_ps(qi, c, 1)));
                }
            }
        }
        break;
    }
    default: abort();
    }
}

static int simd_decoding(int family) { return family != LORA_FAMILY_PORTABLE; }
#else
static void deq_block_avx2(int format, const uint8_t *b, float *out) { abort(); }
static int simd_decoding(int family) { return 0; }
#endif

/// One block with the scalar reference (`simd` 0) or the AVX2 decoder.
static inline void deq(int simd, int format, const uint8_t *b, float *out) {
    if (simd) deq_block_avx2(format, b, out);
    else deq_block(format, b, out);
}

/// Weights k0..k0+cnt of row n (any start, any count within the row) into out.
static void deq_range(int simd, int format, const void *W, long ldw, long n, long k0, long cnt, float *out) {
    const long bs = lora_tile_block_elems(format), bb = lora_tile_block_bytes(format);
    const uint8_t *row = (const uint8_t *)W + n * (ldw / bs) * bb;
    float blk[256];
    for (long k = k0; k < k0 + cnt;) {
        long b0 = k / bs * bs, end = b0 + bs < k0 + cnt ? b0 + bs : k0 + cnt;
        if (k == b0 && end == b0 + bs) {
            deq(simd, format, row + b0 / bs * bb, out + (k - k0));
            k = end;
            continue;
        }
        deq(simd, format, row + b0 / bs * bb, blk);
        for (; k < end; k++) out[k - k0] = blk[k - b0];
    }
}

/// Floats of f32 tile per call (1 MB): the weight rows or row segments dequantized at once.
#define TILE_FLOATS (256L * 1024)

static long tile_rows(long width, long lo, long hi) {
    long r = width > 0 ? TILE_FLOATS / width : hi;
    r = r / 16 * 16;
    return r < lo ? lo : r > hi ? hi : r;
}

void lora_tiled_abt(int family, int gemv, int format, long M, long n0, long n1, long K,
                    const float *A, long lda, const void *W, long ldw, float *C, long ldc,
                    int accumulate) {
    if (M <= 0 || n1 <= n0) return;
    void (*f32)(int, int, long, long, long, long, const float *, long, const void *, long,
                const float *, float *, long, int) = gemv ? lora_gemv_abt : lora_gemm_abt;
    if (K == 0) {
        f32(family, LORA_FORMAT_F32, M, n0, n1, 0, A, lda, NULL, 0, NULL, C, ldc, accumulate);
        return;
    }
    const int simd = simd_decoding(family);
    // Rows of W per tile: 16 for decoding (one pass over the weight either way), more for
    // many rows of A so each f32 call has a wide panel to amortize reading A.
    const long nt = gemv ? 16 : tile_rows(K, 16, 128);
    float *buf = malloc(sizeof(float) * (size_t)(nt * K));
    if (!buf) abort();
    for (long n = n0; n < n1; n += nt) {
        long rows = n1 - n < nt ? n1 - n : nt;
        for (long r = 0; r < rows; r++) deq_range(simd, format, W, ldw, n + r, 0, K, buf + r * K);
        f32(family, LORA_FORMAT_F32, M, 0, rows, K, A, lda, buf, K, NULL, C + n, ldc, accumulate);
    }
    free(buf);
}

void lora_tiled_ab(int family, int format, long M, long k0, long k1, long N, const float *A,
                   long lda, const void *W, long ldw, float *C, long ldc, int accumulate) {
    if (M <= 0 || k1 <= k0) return;
    const long kw = k1 - k0;
    if (N == 0) {
        lora_gemm_ab(family, LORA_FORMAT_F32, M, 0, kw, 0, A, lda, NULL, kw, NULL, C + k0, ldc, accumulate);
        return;
    }
    const int simd = simd_decoding(family);
    // Depth (rows of W) per tile; later tiles add into C.
    const long nt = tile_rows(kw, 16, 512);
    float *buf = malloc(sizeof(float) * (size_t)(nt * kw));
    if (!buf) abort();
    for (long n = 0; n < N; n += nt) {
        long rows = N - n < nt ? N - n : nt;
        for (long r = 0; r < rows; r++) deq_range(simd, format, W, ldw, n + r, k0, kw, buf + r * kw);
        lora_gemm_ab(family, LORA_FORMAT_F32, M, 0, kw, rows, A + n, lda, buf, kw, NULL, C + k0, ldc,
                     n > 0 || accumulate);
    }
    free(buf);
}

void lora_tile_dequantize(int family, int format, const void *W, long ldw, long n, long k0, long cnt,
                          float *out) {
    if (!lora_is_tile_format(format) || ldw % lora_tile_block_elems(format) != 0) abort();
    deq_range(lora_family_available(family) && simd_decoding(family), format, W, ldw, n, k0, cnt, out);
}
