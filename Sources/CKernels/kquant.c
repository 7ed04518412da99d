// GGUF Q5_0, Q5_1, Q4_K, Q5_K, Q6_K (CKernels.h): each product dequantizes a tile of W (a few
// rows, or a few rows' column range) into a small f32 buffer and runs the calling family's f32
// kernel on it, so every family gets these formats from its own f32 micro-kernels without an
// f32 copy of the whole weight. The decoding is plain C, shared by the families: each value is
// computed in float exactly as ggml's dequantize_row_* does (one rounding per operation; the
// statements are split so that no compiler contracts them into an FMA).
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

/// Weights k0..k0+cnt of row n (any start, any count within the row) into out.
static void deq_range(int format, const void *W, long ldw, long n, long k0, long cnt, float *out) {
    const long bs = lora_tile_block_elems(format), bb = lora_tile_block_bytes(format);
    const uint8_t *row = (const uint8_t *)W + n * (ldw / bs) * bb;
    float blk[256];
    for (long k = k0; k < k0 + cnt;) {
        long b0 = k / bs * bs, end = b0 + bs < k0 + cnt ? b0 + bs : k0 + cnt;
        if (k == b0 && end == b0 + bs) {
            deq_block(format, row + b0 / bs * bb, out + (k - k0));
            k = end;
            continue;
        }
        deq_block(format, row + b0 / bs * bb, blk);
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
    // Rows of W per tile: 16 for decoding (one pass over the weight either way), more for
    // many rows of A so each f32 call has a wide panel to amortize reading A.
    const long nt = gemv ? 16 : tile_rows(K, 16, 128);
    float *buf = malloc(sizeof(float) * (size_t)(nt * K));
    if (!buf) abort();
    for (long n = n0; n < n1; n += nt) {
        long rows = n1 - n < nt ? n1 - n : nt;
        for (long r = 0; r < rows; r++) deq_range(format, W, ldw, n + r, 0, K, buf + r * K);
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
    // Depth (rows of W) per tile; later tiles add into C.
    const long nt = tile_rows(kw, 16, 512);
    float *buf = malloc(sizeof(float) * (size_t)(nt * kw));
    if (!buf) abort();
    for (long n = 0; n < N; n += nt) {
        long rows = N - n < nt ? N - n : nt;
        for (long r = 0; r < rows; r++) deq_range(format, W, ldw, n + r, k0, kw, buf + r * kw);
        lora_gemm_ab(family, LORA_FORMAT_F32, M, 0, kw, rows, A + n, lda, buf, kw, NULL, C + k0, ldc,
                     n > 0 || accumulate);
    }
    free(buf);
}
