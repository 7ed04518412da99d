// Entry points of the kernel families x weight formats API (CKernels.h): switch on the
// family, each family switches on the format. A family that is not available here falls back
// to the portable one instead of executing instructions the CPU lacks.
#include "CKernels.h"
#include "families.h"
#include <stdlib.h>

// Cached CPU checks, -1 until first asked; threads may race to fill them with the same value.
static int available_avx2 = -1, available_avx512 = -1;

static int cached(int *slot, int (*check)(void)) {
    int v = __atomic_load_n(slot, __ATOMIC_RELAXED);
    if (v < 0) {
        v = check() ? 1 : 0;
        __atomic_store_n(slot, v, __ATOMIC_RELAXED);
    }
    return v;
}

int lora_family_available(int family) {
    switch (family) {
    case LORA_FAMILY_PORTABLE: return 1;
    case LORA_FAMILY_AVX2: return cached(&available_avx2, lora_avx2_available);
    case LORA_FAMILY_AVX512: return cached(&available_avx512, lora_gemm_avx512_available);
    default: return 0;
    }
}

int lora_family_best(void) {
    if (lora_family_available(LORA_FAMILY_AVX512)) return LORA_FAMILY_AVX512;
    if (lora_family_available(LORA_FAMILY_AVX2)) return LORA_FAMILY_AVX2;
    return LORA_FAMILY_PORTABLE;
}

int lora_family_panel_width(int family) {
    switch (lora_family_available(family) ? family : LORA_FAMILY_PORTABLE) {
    case LORA_FAMILY_AVX2: return lora_avx2_panel_width();
    case LORA_FAMILY_AVX512: return lora_gemm_panel_width();
    default: return 16;
    }
}

static int usable(int family) {
    return lora_family_available(family) ? family : LORA_FAMILY_PORTABLE;
}

// `ret` is `return` for functions with a value, empty for void ones (ISO C has no
// `return void_expression;`).
#define DISPATCH_AS(ret, fn, ...)                                         \
    switch (usable(family)) {                                             \
    case LORA_FAMILY_AVX2: ret lora_avx2_##fn(__VA_ARGS__); break;        \
    case LORA_FAMILY_AVX512: ret lora_avx512_##fn(__VA_ARGS__); break;    \
    default: ret lora_portable_##fn(__VA_ARGS__); break;                  \
    }
#define DISPATCH(fn, ...) DISPATCH_AS(, fn, __VA_ARGS__)

// Block formats need whole blocks: ldw, and the depth K of abt / gemv, multiples of 32.
static void check_blocks(int format, long ldw, long depth) {
    if (lora_is_block_format(format) && (ldw % LORA_QK != 0 || depth % LORA_QK != 0)) abort();
    if (lora_is_tile_format(format)) {
        long bs = lora_tile_block_elems(format);
        if (ldw % bs != 0 || depth % bs != 0) abort();
    }
}

void lora_gemm_abt(int family, int format, long M, long n0, long n1, long K,
                   const float *A, long lda, const void *W, long ldw, const float *scales,
                   float *C, long ldc, int accumulate) {
    check_blocks(format, ldw, K);
    if (lora_is_tile_format(format)) {
        lora_tiled_abt(usable(family), 0, format, M, n0, n1, K, A, lda, W, ldw, C, ldc, accumulate);
        return;
    }
    DISPATCH(gemm_abt, format, M, n0, n1, K, A, lda, W, ldw, scales, C, ldc, accumulate)
}

void lora_gemm_ab(int family, int format, long M, long k0, long k1, long N,
                  const float *A, long lda, const void *W, long ldw, const float *scales,
                  float *C, long ldc, int accumulate) {
    check_blocks(format, ldw, 0);
    if (lora_is_tile_format(format)) {
        lora_tiled_ab(usable(family), format, M, k0, k1, N, A, lda, W, ldw, C, ldc, accumulate);
        return;
    }
    DISPATCH(gemm_ab, format, M, k0, k1, N, A, lda, W, ldw, scales, C, ldc, accumulate)
}

void lora_gemv_abt(int family, int format, long M, long n0, long n1, long K,
                   const float *A, long lda, const void *W, long ldw, const float *scales,
                   float *C, long ldc, int accumulate) {
    check_blocks(format, ldw, K);
    if (lora_is_tile_format(format)) {
        lora_tiled_abt(usable(family), 1, format, M, n0, n1, K, A, lda, W, ldw, C, ldc, accumulate);
        return;
    }
    DISPATCH(gemv_abt, format, M, n0, n1, K, A, lda, W, ldw, scales, C, ldc, accumulate)
}

float lora_dot(int family, const float *a, const float *b, long n) {
    DISPATCH_AS(return, dot, a, b, n)
    return 0;
}

void lora_axpy(int family, float alpha, const float *x, float *y, long n) {
    DISPATCH(axpy, alpha, x, y, n)
}

void lora_attn_scores(int family, const float *q, const float *K, long ld, long L, long hd, float alpha, float *s) {
    switch (usable(family)) {
    case LORA_FAMILY_AVX2: lora_avx2_attn_scores(q, K, ld, L, hd, alpha, s); break;
    case LORA_FAMILY_AVX512: lora_avx512_attn_scores(q, K, ld, L, hd, alpha, s); break;
    default: for (long j = 0; j < L; j++) s[j] = alpha * lora_portable_dot(q, K + j * ld, hd); break;
    }
}

void lora_attn_scores_rows(int family, const float *q, long ldq, long R, const float *K, long ld, long L, long hd,
                           float alpha, float *s, long lds) {
    if (usable(family) == LORA_FAMILY_AVX2) {
        lora_avx2_attn_scores_rows(q, ldq, R, K, ld, L, hd, alpha, s, lds);
        return;
    }
    for (long r = 0; r < R; r++) lora_attn_scores(family, q + r * ldq, K, ld, L + r, hd, alpha, s + r * lds);
}

void lora_attn_scores_heads(int family, const float *q, long G, const float *K, long ld, long L, long hd, float alpha,
                            float *s, long lds) {
    if (usable(family) == LORA_FAMILY_AVX512 && lora_avx512_attn_fits(hd)) {
        lora_avx512_attn_scores_heads(q, G, K, ld, L, hd, alpha, s, lds);
        return;
    }
    for (long g = 0; g < G; g++) lora_attn_scores(family, q + g * hd, K, ld, L, hd, alpha, s + g * lds);
}

void lora_attn_wsum_heads(int family, const float *s, long lds, long G, const float *V, long ld, long L, long hd, float *o) {
    if (usable(family) == LORA_FAMILY_AVX512 && lora_avx512_attn_fits(hd)) {
        lora_avx512_attn_wsum_heads(s, lds, G, V, ld, L, hd, o);
        return;
    }
    for (long g = 0; g < G; g++) lora_attn_wsum(family, s + g * lds, V, ld, L, hd, o + g * hd);
}

void lora_attn_wsum(int family, const float *s, const float *V, long ld, long L, long hd, float *o) {
    const int fam = usable(family);
    if (fam == LORA_FAMILY_AVX2 && hd % 8 == 0 && hd <= 128) {
        lora_avx2_attn_wsum(s, V, ld, L, hd, o);
        return;
    }
    if (fam == LORA_FAMILY_AVX512 && lora_avx512_attn_fits(hd)) {
        lora_avx512_attn_wsum(s, V, ld, L, hd, o);
        return;
    }
    for (long i = 0; i < hd; i++) o[i] = 0;
    for (long j = 0; j < L; j++) {
        if (s[j] == 0) continue;
        if (fam == LORA_FAMILY_AVX2) lora_avx2_axpy(s[j], V + j * ld, o, hd);
        else if (fam == LORA_FAMILY_AVX512) lora_avx512_axpy(s[j], V + j * ld, o, hd);
        else lora_portable_axpy(s[j], V + j * ld, o, hd);
    }
}
