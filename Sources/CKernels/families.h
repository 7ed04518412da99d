// Internal (not part of the module's public headers): the per-family implementations that
// dispatch.c switches between. Each takes the weight `format` (LORA_FORMAT_*) and the
// contracts of CKernels.h.
#ifndef LORA_FAMILIES_H
#define LORA_FAMILIES_H
#include <stdint.h>
#include "CKernels.h"

#define LORA_FAMILY_DECLS(fam)                                                                  \
    void lora_##fam##_gemm_abt(int format, long M, long n0, long n1, long K, const float *A,    \
                               long lda, const void *W, long ldw, const float *scales,         \
                               float *C, long ldc, int accumulate);                            \
    void lora_##fam##_gemm_ab(int format, long M, long k0, long k1, long N, const float *A,     \
                              long lda, const void *W, long ldw, const float *scales,          \
                              float *C, long ldc, int accumulate);                             \
    void lora_##fam##_gemv_abt(int format, long M, long n0, long n1, long K, const float *A,    \
                               long lda, const void *W, long ldw, const float *scales,         \
                               float *C, long ldc, int accumulate);                            \
    float lora_##fam##_dot(const float *a, const float *b, long n);                             \
    void lora_##fam##_axpy(float alpha, const float *x, float *y, long n);

/// o = sum over j of s[j] * V_j (s[j] != 0), in registers: lora_attn_wsum's AVX2 body.
void lora_avx2_attn_wsum(const float *s, const float *V, long ld, long L, long hd, float *o);
/// s[j] = alpha * lora_avx2_dot(q, K_j) for j < L, bit for bit, in one loop.
void lora_avx2_attn_scores(const float *q, const float *K, long ld, long L, long hd, float alpha, float *s);
void lora_avx2_attn_scores_rows(const float *q, long ldq, long R, const float *K, long ld, long L, long hd, float alpha,
                                float *s, long lds);

/// The AVX-512 decode step's scores and weighted sum (hd a multiple of 16, at most 128): each
/// key's dot product in one FMA chain, 16 keys reduced together by one transposing tree. A key's
/// score does not depend on L or on its place in a block (lora_attn_scores' contract).
int lora_avx512_attn_fits(long hd);
void lora_avx512_attn_scores(const float *q, const float *K, long ld, long L, long hd, float alpha, float *s);
void lora_avx512_attn_wsum(const float *s, const float *V, long ld, long L, long hd, float *o);
void lora_avx512_attn_scores_heads(const float *q, long G, const float *K, long ld, long L, long hd, float alpha, float *s,
                                   long lds);
void lora_avx512_attn_wsum_heads(const float *s, long lds, long G, const float *V, long ld, long L, long hd, float *o);

/// Calls call(mb) with mb = min(rows_left, 4) as a constant, so each row count has its own
/// fully unrolled block kernel (the GEMVs' passes over up to 4 rows of A).
#define GEMV_MB_SWITCH(rows_left, call) \
    switch (rows_left) {                \
    case 1: call(1); break;             \
    case 2: call(2); break;             \
    case 3: call(3); break;             \
    default: call(4); break;            \
    }

LORA_FAMILY_DECLS(portable)
LORA_FAMILY_DECLS(avx2)
LORA_FAMILY_DECLS(avx512)

int lora_avx2_available(void);

// ---- GGUF block formats (CKernels.h): shared layout helpers --------------------------------
#define LORA_QK 32  // weights per block

static inline int lora_is_block_format(int format) {
    return format == LORA_FORMAT_Q8_0 || format == LORA_FORMAT_Q4_0 || format == LORA_FORMAT_Q4_1;
}

/// Bytes per block of 32 weights (0 for the non-block formats).
static inline long lora_block_bytes(int format) {
    return format == LORA_FORMAT_Q8_0 ? 34 : format == LORA_FORMAT_Q4_0 ? 18
         : format == LORA_FORMAT_Q4_1 ? 20 : 0;
}

/// IEEE half bits to float, exactly, without F16C (the portable family; the SIMD families use
/// vcvtph2ps). Subnormal halves are man * 2^-24, exact in float.
static inline float lora_half_to_float(uint16_t h) {
    union { uint32_t u; float f; } v;
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    if (exp == 0x1F) v.u = sign | 0x7F800000u | (man << 13);          // inf / NaN
    else if (exp != 0) v.u = sign | ((exp + 112) << 23) | (man << 13);  // rebias 15 -> 127
    else { v.f = (float)man * 0x1p-24f; v.u |= sign; }                 // zero / subnormal
    return v.f;
}

/// Reads a little-endian uint16 at p (blocks are 2-byte aligned at best, so no direct load).
static inline uint16_t lora_load_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

/// One block-format weight at flat element index i (row n, depth k: i = n * ldw + k, ldw in
/// 32s, so block i / 32 of the bytes), computed in float as the format defines it; the SIMD
/// families use it for runs that start mid-block.
static inline float lora_block_value(int format, const void *w, long i) {
    const uint8_t *b = (const uint8_t *)w + i / LORA_QK * lora_block_bytes(format);
    int j = (int)(i % LORA_QK), sh = 4 * (j >> 4);
    float d = lora_half_to_float(lora_load_u16(b));
    if (format == LORA_FORMAT_Q8_0) return d * (float)(int8_t)b[2 + j];
    if (format == LORA_FORMAT_Q4_0) return d * (float)(((b[2 + (j & 15)] >> sh) & 15) - 8);
    return d * (float)((b[4 + (j & 15)] >> sh) & 15) + lora_half_to_float(lora_load_u16(b + 2));
}
// ---- GGUF Q5_0 / Q5_1 / K-quants (kquant.c): dequantized per tile for any family ----------

static inline int lora_is_tile_format(int format) {
    return format >= LORA_FORMAT_Q5_0 && format <= LORA_FORMAT_Q6_K;
}

/// Weights per block of a tile format: 32 (Q5_0, Q5_1) or 256 (the K-quants' super-blocks).
static inline long lora_tile_block_elems(int format) {
    return format == LORA_FORMAT_Q5_0 || format == LORA_FORMAT_Q5_1 ? 32 : 256;
}

/// Bytes per block of a tile format.
static inline long lora_tile_block_bytes(int format) {
    switch (format) {
    case LORA_FORMAT_Q5_0: return 22;
    case LORA_FORMAT_Q5_1: return 24;
    case LORA_FORMAT_Q4_K: return 144;
    case LORA_FORMAT_Q5_K: return 176;
    default: return 210;  // Q6_K
    }
}

/// The products for the tile formats, through `family`'s f32 kernels (lora_gemm_abt, or
/// lora_gemv_abt when `gemv`, and lora_gemm_ab) on f32 tiles of W.
void lora_tiled_abt(int family, int gemv, int format, long M, long n0, long n1, long K,
                    const float *A, long lda, const void *W, long ldw, float *C, long ldc,
                    int accumulate);
void lora_tiled_ab(int family, int format, long M, long k0, long k1, long N, const float *A,
                   long lda, const void *W, long ldw, float *C, long ldc, int accumulate);

// ---- NF4 (CKernels.h): scalar helpers every family shares ---------------------------------
#define LORA_NF4_BLOCK 64
#define LORA_NF4_NESTED (64 * 256)  // weights per nested absmax

/// The f32 absmax of NF4 block b. Two statements, so the compiler cannot fuse them into an FMA
/// (bitsandbytes rounds the product, then adds the offset).
static inline float lora_nf4_absmax(const lora_nf4 *w, long b) {
    float s = lora_nf4_dynamic[w->absmax8[b]] * w->nested[b / 256];
    return s + w->offset;
}

/// NF4 weight at flat index i.
static inline float lora_nf4_value(const lora_nf4 *w, long i) {
    uint8_t byte = w->q[i >> 1];
    int code = (i & 1) ? byte & 15 : byte >> 4;
    return lora_nf4_code[code] * lora_nf4_absmax(w, i / LORA_NF4_BLOCK);
}

/// NF4 weights i..i+cnt into out, one absmax per block touched.
static inline void lora_nf4_run(const lora_nf4 *w, long i, long cnt, float *out) {
    for (long j = 0; j < cnt;) {
        long b = (i + j) / LORA_NF4_BLOCK, end = (b + 1) * LORA_NF4_BLOCK - i;
        if (end > cnt) end = cnt;
        float s = lora_nf4_absmax(w, b);
        for (; j < end; j++) {
            long e = i + j;
            uint8_t byte = w->q[e >> 1];
            out[j] = lora_nf4_code[(e & 1) ? byte & 15 : byte >> 4] * s;
        }
    }
}

/// NR of the AVX2 packed GEMM.
int lora_avx2_panel_width(void);

/// Block sizes of the packed GEMMs (kcb deep, ncb wide, kcb x ncb <= b_floats, equal blocks):
/// shallow products (depth <= kc_max) take the whole depth at once, so C is written once (the
/// lm_head's C is 200 MB), with B blocks as wide as the budget allows; deep ones take up to
/// nc_deep columns at once, so A (the backward lm_head's dlogits) is read as few times as
/// possible, and are as deep as then fits, in whole 32-weight blocks for block formats.
static inline void lora_gemm_blocks(long depth, long ncols, int trans, int fmt, long kc_max, long nc_deep,
                                    long b_floats, long nr, long *kcb, long *ncb) {
    if (depth <= kc_max) {
        *kcb = depth;
        long ncmax = b_floats / depth / nr * nr;
        long nb = (ncols + ncmax - 1) / ncmax;
        *ncb = ((ncols + nb - 1) / nb + nr - 1) / nr * nr;
    } else {
        long nb = (ncols + nc_deep - 1) / nc_deep;
        *ncb = ((ncols + nb - 1) / nb + nr - 1) / nr * nr;
        long kcmax = b_floats / *ncb;
        if (kcmax > kc_max) kcmax = kc_max;
        long q = trans && lora_is_block_format(fmt) ? LORA_QK : 1;
        kcmax = kcmax / q * q;
        long kb = (depth + kcmax - 1) / kcmax;
        *kcb = ((depth + kb - 1) / kb + q - 1) / q * q;
    }
}

#endif
