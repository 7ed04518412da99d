// Training attention's products for one causal block of query rows (FlashAttention.swift):
// rows r = 0 ..< R are queries i0 + r, so row r pairs with keys 0 ... i0 + r only. OpenBLAS
// runs these as general GEMMs of 64 rows by up to T columns with a depth of one head (64):
// each call packs both operands, scales C by beta first, and computes the whole rectangle,
// upper triangle included. Here:
//   - keys are transposed once per (batch, kv group) by the caller (Kt [hd, T]), so every
//     product is row-major A x B with B's rows contiguous: no packing;
//   - the 6 x 16 register tiles (AVX2: 12 accumulators) stop at the diagonal: score tiles
//     wholly past it are skipped, and the products that consume probabilities end their depth
//     at the tile's last row (entries past the diagonal are zero, by the callers' contract).
// The portable family is the plain loop over the same entries (the reference the AVX2 tiles
// are tested against); its sums run in depth order, the tiles' too, so both agree to rounding
// of the FMAs only.
#include "CKernels.h"
#include "families.h"

// ---- portable ---------------------------------------------------------------------------

static void scores_portable(long R, long i0, long hd, float alpha, const float *A, long lda,
                            const float *Bt, long ldb, float *C, long ldc) {
    for (long r = 0; r < R; r++)
        for (long j = 0; j <= i0 + r; j++) {
            float s = 0;
            for (long k = 0; k < hd; k++) s += A[r * lda + k] * Bt[k * ldb + j];
            C[r * ldc + j] = alpha * s;
        }
}

static void apply_portable(long R, long i0, long hd, float alpha, const float *P, long ldp,
                           const float *V, long ldv, float *C, long ldc) {
    for (long r = 0; r < R; r++)
        for (long n = 0; n < hd; n++) {
            float s = 0;
            for (long j = 0; j <= i0 + r; j++) s += P[r * ldp + j] * V[j * ldv + n];
            C[r * ldc + n] = alpha * s;
        }
}

static void apply_t_portable(long R, long i0, long hd, float alpha, const float *P, long ldp,
                             const float *X, long ldx, float *C, long ldc, int accumulate) {
    for (long j = 0; j < i0 + R; j++)
        for (long n = 0; n < hd; n++) {
            float s = 0;
            for (long r = j > i0 ? j - i0 : 0; r < R; r++) s += P[r * ldp + j] * X[r * ldx + n];
            C[j * ldc + n] = accumulate ? C[j * ldc + n] + alpha * s : alpha * s;
        }
}

// ---- AVX2 + FMA -------------------------------------------------------------------------

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_AVX2_ATTN 1
#define TARGET __attribute__((target("avx2,fma")))
#define INLINE static inline __attribute__((always_inline)) TARGET

/// acc[m] (m < MR, two vectors each) = sum over k in [k0, k1) of A(m, k) * B[k, n0 .. n0+16),
/// A(m, k) = A[m * sam + k * sak]; B's 16 columns through `mask` where `masked` (a tile that
/// overhangs the matrix: the lanes past it load 0).
INLINE void tile(const int MR, long k0, long k1, const float *A, long sam, long sak,
                 const float *B, long ldb, int masked, __m256i m0, __m256i m1, __m256 acc[6][2]) {
    for (int m = 0; m < MR; m++) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
    for (long k = k0; k < k1; k++) {
        const float *b = B + k * ldb;
        __m256 b0, b1;
        if (masked) { b0 = _mm256_maskload_ps(b, m0); b1 = _mm256_maskload_ps(b + 8, m1); }
        else { b0 = _mm256_loadu_ps(b); b1 = _mm256_loadu_ps(b + 8); }
        const float *a = A + k * sak;
        for (int m = 0; m < MR; m++) {
            const __m256 x = _mm256_broadcast_ss(a + m * sam);
            acc[m][0] = _mm256_fmadd_ps(x, b0, acc[m][0]);
            acc[m][1] = _mm256_fmadd_ps(x, b1, acc[m][1]);
        }
    }
}

/// C[m, n0 .. n0+16) = alpha * acc[m] (+ C when accumulate), the lanes past `mask` untouched.
INLINE void store(const int MR, float *C, long ldc, float alpha, int accumulate, int masked,
                  __m256i m0, __m256i m1, __m256 acc[6][2]) {
    const __m256 a = _mm256_set1_ps(alpha);
    for (int m = 0; m < MR; m++) {
        float *c = C + m * ldc;
        __m256 v0 = _mm256_mul_ps(a, acc[m][0]), v1 = _mm256_mul_ps(a, acc[m][1]);
        if (masked) {
            if (accumulate) {
                v0 = _mm256_add_ps(_mm256_maskload_ps(c, m0), v0);
                v1 = _mm256_add_ps(_mm256_maskload_ps(c + 8, m1), v1);
            }
            _mm256_maskstore_ps(c, m0, v0);
            _mm256_maskstore_ps(c + 8, m1, v1);
        } else {
            if (accumulate) {
                v0 = _mm256_add_ps(_mm256_loadu_ps(c), v0);
                v1 = _mm256_add_ps(_mm256_loadu_ps(c + 8), v1);
            }
            _mm256_storeu_ps(c, v0);
            _mm256_storeu_ps(c + 8, v1);
        }
    }
}

/// Lane masks for columns n0 .. n0+16 of a matrix `width` wide.
INLINE void lane_masks(long n0, long width, __m256i *m0, __m256i *m1, int *masked) {
    const long left = width - n0;
    *masked = left < 16;
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    *m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(left < 16 ? left : 16)), idx);
    *m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(left < 16 ? left : 16) - 8), idx);
}

// Each body is written once for a constant MR (1 ... 6) and chosen by the rows left.
#define BY_ROWS(rows, BODY)                          \
    switch (rows) {                                  \
    case 6: BODY(6); break;                          \
    case 5: BODY(5); break;                          \
    case 4: BODY(4); break;                          \
    case 3: BODY(3); break;                          \
    case 2: BODY(2); break;                          \
    default: BODY(1); break;                         \
    }

TARGET static void scores_avx2(long R, long i0, long hd, float alpha, const float *A, long lda,
                               const float *Bt, long ldb, float *C, long ldc) {
    __m256 acc[6][2];
    for (long r0 = 0; r0 < R; r0 += 6) {
        const long mr = R - r0 < 6 ? R - r0 : 6;
        const long width = i0 + r0 + mr;   // columns the tile's last row needs
        for (long n0 = 0; n0 < width; n0 += 16) {
            __m256i m0, m1;
            int masked;
            lane_masks(n0, width, &m0, &m1, &masked);
            // The mask as a constant in each copy: no lane test in the depth loop.
#define SCORES(MR)                                                                          \
            tile(MR, 0, hd, A + r0 * lda, lda, 1, Bt + n0, ldb, 0, m0, m1, acc);           \
            store(MR, C + r0 * ldc + n0, ldc, alpha, 0, 0, m0, m1, acc);
#define SCORES_MASKED(MR)                                                                   \
            tile(MR, 0, hd, A + r0 * lda, lda, 1, Bt + n0, ldb, 1, m0, m1, acc);           \
            store(MR, C + r0 * ldc + n0, ldc, alpha, 0, 1, m0, m1, acc);
            if (masked) { BY_ROWS(mr, SCORES_MASKED) } else { BY_ROWS(mr, SCORES) }
#undef SCORES
#undef SCORES_MASKED
        }
    }
}

TARGET static void apply_avx2(long R, long i0, long hd, float alpha, const float *P, long ldp,
                              const float *V, long ldv, float *C, long ldc) {
    __m256 acc[6][2];
    const __m256i none = _mm256_setzero_si256();
    for (long r0 = 0; r0 < R; r0 += 6) {
        const long mr = R - r0 < 6 ? R - r0 : 6;
        const long depth = i0 + r0 + mr;   // keys the tile's last row reads
        for (long n0 = 0; n0 < hd; n0 += 16) {
#define APPLY(MR)                                                                            \
            tile(MR, 0, depth, P + r0 * ldp, ldp, 1, V + n0, ldv, 0, none, none, acc);      \
            store(MR, C + r0 * ldc + n0, ldc, alpha, 0, 0, none, none, acc);
            BY_ROWS(mr, APPLY)
#undef APPLY
        }
    }
}

TARGET static void apply_t_avx2(long R, long i0, long hd, float alpha, const float *P, long ldp,
                                const float *X, long ldx, float *C, long ldc, int accumulate) {
    __m256 acc[6][2];
    const __m256i none = _mm256_setzero_si256();
    const long keys = i0 + R;
    for (long j0 = 0; j0 < keys; j0 += 6) {
        const long mr = keys - j0 < 6 ? keys - j0 : 6;
        const long first = j0 > i0 ? j0 - i0 : 0;   // the first query row that sees key j0
        for (long n0 = 0; n0 < hd; n0 += 16) {
#define APPLY_T(MR)                                                                          \
            tile(MR, first, R, P + j0, 1, ldp, X + n0, ldx, 0, none, none, acc);            \
            store(MR, C + j0 * ldc + n0, ldc, alpha, accumulate, 0, none, none, acc);
            BY_ROWS(mr, APPLY_T)
#undef APPLY_T
        }
    }
}
#endif

// ---- entry points -----------------------------------------------------------------------

static int use_avx2(int family, long hd) {
#ifdef HAVE_AVX2_ATTN
    // AVX-512 CPUs have AVX2 and FMA: their family takes these tiles too.
    return (family == LORA_FAMILY_AVX2 || family == LORA_FAMILY_AVX512) && lora_family_available(LORA_FAMILY_AVX2)
           && lora_family_available(family) && hd % 16 == 0;
#else
    (void)family; (void)hd;
    return 0;
#endif
}

void lora_attn_block_scores(int family, long R, long i0, long hd, float alpha, const float *A, long lda,
                            const float *Bt, long ldb, float *C, long ldc) {
#ifdef HAVE_AVX2_ATTN
    if (use_avx2(family, 16)) { scores_avx2(R, i0, hd, alpha, A, lda, Bt, ldb, C, ldc); return; }
#endif
    scores_portable(R, i0, hd, alpha, A, lda, Bt, ldb, C, ldc);
}

void lora_attn_block_apply(int family, long R, long i0, long hd, float alpha, const float *P, long ldp,
                           const float *V, long ldv, float *C, long ldc) {
#ifdef HAVE_AVX2_ATTN
    if (use_avx2(family, hd)) { apply_avx2(R, i0, hd, alpha, P, ldp, V, ldv, C, ldc); return; }
#endif
    apply_portable(R, i0, hd, alpha, P, ldp, V, ldv, C, ldc);
}

void lora_attn_block_apply_t(int family, long R, long i0, long hd, float alpha, const float *P, long ldp,
                             const float *X, long ldx, float *C, long ldc, int accumulate) {
#ifdef HAVE_AVX2_ATTN
    if (use_avx2(family, hd)) { apply_t_avx2(R, i0, hd, alpha, P, ldp, X, ldx, C, ldc, accumulate); return; }
#endif
    apply_t_portable(R, i0, hd, alpha, P, ldp, X, ldx, C, ldc, accumulate);
}

void lora_transpose(const float *A, long lda, long rows, long cols, float *At, long ldt) {
    // 8 x 8 blocks keep both sides' lines in L1.
    for (long r0 = 0; r0 < rows; r0 += 8)
        for (long c0 = 0; c0 < cols; c0 += 8) {
            const long r1 = r0 + 8 < rows ? r0 + 8 : rows, c1 = c0 + 8 < cols ? c0 + 8 : cols;
            for (long c = c0; c < c1; c++)
                for (long r = r0; r < r1; r++) At[c * ldt + r] = A[r * lda + c];
        }
}
