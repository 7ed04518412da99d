// AVX2 + FMA (+ F16C for the GGUF blocks' halves) family: the products with a frozen weight
// W [N, K] (f32, int8 rows, bf16, GGUF Q8_0 / Q4_0 / Q4_1 blocks) for x86-64 CPUs without
// AVX-512 (Zen 2/3, Haswell and later), same contracts as CKernels.h.
//
// Packed GEMM (lora_avx2_gemm_abt / _ab), BLIS-style like gemm_avx512.c, sized for the
// smallest caches it targets (Zen 3: 32 KiB L1d, 512 KiB L2; Zen 5 has more of both):
//   for jc over the output columns, NC at a time
//     for pc over the depth, KC at a time (KC <= 640; the whole depth when it fits)
//       pack B[pc:pc+kc, jc:jc+nc] into panels of NR = 16 columns, [kc][16] each
//       (KC x NC <= 320 KiB, in L2, leaving room for A and C); int8 / bf16 / block weights
//       are dequantized here, so they stream from memory in their own width (block formats:
//       depth blocks in whole 32-weight blocks)
//       for ir over the rows of A, MR = 6 at a time    (the A micro-panel, <= 15 KiB, in L1)
//         for each B panel                              (streams from L2)
//           micro-kernel: C[6, 16] (+)= A[6, kc] @ Bpanel[kc, 16]
// The micro-kernel keeps 6 x 2 ymm accumulators (12 of the 16 registers), loads 2 vectors of
// B per k and broadcasts 6 scalars of A straight from A's rows (A is not packed: its rows are
// contiguous in k and the micro-panel is reused from L1 across all B panels).
// Edges: B panels are zero-padded to 16 columns; a partial panel's C tile goes through a
// local buffer (AVX2 has no cheap masked store); rows below 6 have their own kernels.
//
// Small M (lora_avx2_gemv_abt): no packing; each weight row is read once, converted in
// registers (cvtepi8_epi32 / zero-extend and shift for bf16), 4 rows x up to 2 rows of A at a
// time with software prefetch; see its section below.
//
// Threading is the caller's (disjoint column ranges, multiples of NR); packing memory is per
// thread. Everything SIMD is compiled with a target attribute: the rest of the target stays
// baseline x86-64 and lora_avx2_available() says at run time whether this may be called.
#include "CKernels.h"
#include "families.h"
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#include <pthread.h>

#define MR 6
#define NR 16
#ifndef AVX2_KC_MAX
#define AVX2_KC_MAX 640        // A micro-panel: 6 x 640 floats = 15 KiB of L1
#endif
#ifndef AVX2_NC_DEEP
#define AVX2_NC_DEEP 256       // widest block when the depth needs several blocks
#endif
#ifndef AVX2_B_FLOATS
#define AVX2_B_FLOATS (80 * 1024)  // packed B block: 320 KiB of a 512 KiB L2
#endif

#define TARGET __attribute__((target("avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline)) TARGET

int lora_avx2_available(void) {
    __builtin_cpu_init();
    // F16C (block formats' halves) comes with every AVX2 CPU in practice; checked all the same.
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
        && __builtin_cpu_supports("f16c");
}

int lora_avx2_panel_width(void) { return NR; }

// ---- Per-thread packing buffer ------------------------------------------------------------

static pthread_key_t pack_key;
static pthread_once_t pack_once = PTHREAD_ONCE_INIT;
static void pack_key_init(void) { pthread_key_create(&pack_key, free); }

static float *pack_buffer(void) {  // AVX2_B_FLOATS floats, 64-byte aligned, one per thread
    pthread_once(&pack_once, pack_key_init);
    float *p = pthread_getspecific(pack_key);
    if (!p) {
        void *raw = NULL;
        if (posix_memalign(&raw, 64, sizeof(float) * AVX2_B_FLOATS) != 0) abort();
        p = raw;
        pthread_setspecific(pack_key, p);
    }
    return p;
}

// ---- Loading weights as f32 ---------------------------------------------------------------

static inline size_t format_bytes(int fmt) {
    return fmt == LORA_FORMAT_I8_ROWS || fmt == LORA_FORMAT_NF4 ? 1 : fmt == LORA_FORMAT_BF16 ? 2 : 4;  // NF4: gemv steps only
}

/// 8 weights w[i..i+8) as f32 (int8 not yet scaled).
INLINE __m256 load8_nf4(const void *w, long i, long cnt);
INLINE __m256 load8(int fmt, const void *w, long i) {
    if (fmt == LORA_FORMAT_NF4) return load8_nf4(w, i, 8);
    if (fmt == LORA_FORMAT_I8_ROWS) {
        __m128i b = _mm_loadl_epi64((const __m128i *)((const int8_t *)w + i));
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
    }
    if (fmt == LORA_FORMAT_BF16) {
        __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    return _mm256_loadu_ps((const float *)w + i);
}

/// The IEEE half at p (little-endian), exactly, in every lane.
INLINE __m256 half_bcast(const uint8_t *p) {
    return _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(lora_load_u16(p))));
}

/// Weights 8g..8g+7 (g = 0..3) of GGUF block `b` as f32. d * q is exact in f32 (11 x 8 bits at
/// most), so the Q4_1 value is one rounding of d * q + m, fused or not.
INLINE __m256 block_w8(const int fmt, const uint8_t *b, int g) {
    __m256i v;
    if (fmt == LORA_FORMAT_Q8_0) {
        v = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + 2 + 8 * g)));
    } else {
        v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b + (fmt == LORA_FORMAT_Q4_1 ? 4 : 2) + 8 * (g & 1))));
        v = g >= 2 ? _mm256_srli_epi32(v, 4) : _mm256_and_si256(v, _mm256_set1_epi32(15));
        if (fmt == LORA_FORMAT_Q4_0) v = _mm256_sub_epi32(v, _mm256_set1_epi32(8));
    }
    __m256 q = _mm256_cvtepi32_ps(v), d = half_bcast(b);
    return fmt == LORA_FORMAT_Q4_1 ? _mm256_fmadd_ps(d, q, half_bcast(b + 2)) : _mm256_mul_ps(d, q);
}

/// Block-format weights i..i+cnt, zeros after: one vector when the run is a whole eighth of a
/// block, else one by one (a column range starting or ending mid-block).
INLINE __m256 load8_block(int fmt, const void *w, long i, long cnt) {
    if ((i & 7) == 0 && cnt >= 8)
        return block_w8(fmt, (const uint8_t *)w + i / LORA_QK * lora_block_bytes(fmt), (int)((i >> 3) & 3));
    float t[8] = {0};
    for (long j = 0; j < cnt && j < 8; j++) t[j] = lora_block_value(fmt, w, i + j);
    return _mm256_loadu_ps(t);
}

/// NF4 weights i..i+cnt (flat indices), zeros after. A run of 8 starting at a multiple of 8
/// lies in one 64-weight block: 4 bytes split into 8 codes (the even weight in the high
/// nibble), looked up in the 16-entry code book (two 8-lane permutes and a blend on bit 3),
/// times the block's absmax, the same float product as lora_nf4_value.
INLINE __m256 nf4_code8(const lora_nf4 *d, long i) {  // code book values of weights i..i+8
    uint32_t bytes;
    memcpy(&bytes, d->q + (i >> 1), 4);
    __m128i b = _mm_cvtsi32_si128((int)bytes);
    __m256i v = _mm256_cvtepu8_epi32(_mm_unpacklo_epi8(b, b));
    v = _mm256_and_si256(_mm256_srlv_epi32(v, _mm256_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0)), _mm256_set1_epi32(15));
    __m256 lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(lora_nf4_code), v);
    __m256 hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(lora_nf4_code + 8), v);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(v, 28)));
}
INLINE __m256 load8_nf4(const void *w, long i, long cnt) {
    const lora_nf4 *d = w;
    if ((i & 7) == 0 && cnt >= 8)
        return _mm256_mul_ps(nf4_code8(d, i), _mm256_set1_ps(lora_nf4_absmax(d, i / LORA_NF4_BLOCK)));
    float t[8] = {0};
    lora_nf4_run(d, i, cnt < 8 ? cnt : 8, t);
    return _mm256_loadu_ps(t);
}

/// The first `cnt` (0..8) of them, zeros after; reads nothing past them (block formats: nothing
/// past their block).
INLINE __m256 load8_part(int fmt, const void *w, long i, long cnt) {
    if (fmt == LORA_FORMAT_NF4) return load8_nf4(w, i, cnt);
    if (lora_is_block_format(fmt)) return load8_block(fmt, w, i, cnt);
    if (cnt >= 8) return load8(fmt, w, i);
    unsigned char tmp[32] = {0};
    size_t b = format_bytes(fmt);
    if (cnt > 0) memcpy(tmp, (const char *)w + i * b, (size_t)cnt * b);
    return load8(fmt, tmp, 0);
}

/// In-register transpose of an 8 x 8 block: r[t][k] -> r[k][t].
INLINE void transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int g = 0; g < 2; g++) {  // rows 4g..4g+3
        u[4 * g + 0] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
        u[4 * g + 1] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0xEE);
        u[4 * g + 2] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
        u[4 * g + 3] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
    }
    for (int j = 0; j < 4; j++) {
        r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
        r[j + 4] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
    }
}

// ---- Packing B ----------------------------------------------------------------------------
// A packed block holds columns col0..col0+nc of the product's B (as [depth, cols]) for depth
// d0..d0+kc: panel p is bp[p * kc * NR ...], [kc][NR], zero beyond nc.

// Packing reads the weights from memory once per block, in short runs of several rows at a
// time, and the hardware prefetcher left those reads mostly waiting on memory (perf: packing
// took about a twentieth of an f32 training step). So the element formats (f32, bf16, int8
// rows) prefetch ahead: forward PACK_PF_BYTES further along each of the 8 rows it reads,
// backward the row PACK_PF_ROWS ahead of the one it copies.
#define PACK_PF_BYTES 512
#define PACK_PF_ROWS 4

/// Forward: B is W^T; 8 weight rows x 8 depths at a time, transposed in registers.
INLINE void pack_bt(float *bp, const int fmt, const void *w, const float *scales, long ldw,
                    long col0, long nc, long d0, long kc) {
    const int pf = fmt == LORA_FORMAT_F32 || fmt == LORA_FORMAT_BF16 || fmt == LORA_FORMAT_I8_ROWS;
    const long eb = (long)format_bytes(fmt);
    for (long p = 0; p * NR < nc; p++) {
        float *dst = bp + p * kc * NR;
        for (int v = 0; v < 2; v++) {
            long j0 = p * NR + 8 * v, rows = nc - j0;
            __m256 s[8];
            for (int t = 0; t < 8; t++)
                s[t] = _mm256_set1_ps(fmt == LORA_FORMAT_I8_ROWS && t < rows ? scales[col0 + j0 + t] : 1);
            for (long k = 0; k < kc; k += 8) {
                long kk = kc - k < 8 ? kc - k : 8;
                if (pf && ((k * eb) & 63) == 0 && k * eb + PACK_PF_BYTES < kc * eb)
                    for (int t = 0; t < 8 && t < rows; t++)
                        _mm_prefetch((const char *)w + ((col0 + j0 + t) * ldw + d0 + k) * eb + PACK_PF_BYTES, _MM_HINT_T0);
                __m256 r[8];
                for (int t = 0; t < 8; t++) {
                    if (t >= rows) { r[t] = _mm256_setzero_ps(); continue; }
                    r[t] = load8_part(fmt, w, (col0 + j0 + t) * ldw + d0 + k, kk);
                    if (fmt == LORA_FORMAT_I8_ROWS) r[t] = _mm256_mul_ps(r[t], s[t]);
                }
                transpose8(r);
                for (long t = 0; t < kk; t++) _mm256_store_ps(dst + (k + t) * NR + 8 * v, r[t]);
            }
        }
    }
}

/// Backward input: B is W itself (depth = N); copies row segments, dequantizing.
INLINE void pack_b(float *bp, const int fmt, const void *w, const float *scales, long ldw,
                   long col0, long nc, long d0, long kc) {
    long np = (nc + NR - 1) / NR;
    const int pf = fmt == LORA_FORMAT_F32 || fmt == LORA_FORMAT_BF16 || fmt == LORA_FORMAT_I8_ROWS;
    const long eb = (long)format_bytes(fmt);
    for (long k = 0; k < kc; k++) {
        long d = d0 + k;
        if (pf && k + PACK_PF_ROWS < kc) {
            const char *row = (const char *)w + ((d + PACK_PF_ROWS) * ldw + col0) * eb;
            for (long b = 0; b < nc * eb; b += 64) _mm_prefetch(row + b, _MM_HINT_T0);
        }
        __m256 s = _mm256_set1_ps(fmt == LORA_FORMAT_I8_ROWS ? scales[d] : 1);
        for (long p = 0; p < np; p++) {
            float *dst = bp + p * kc * NR + k * NR;
            for (int v = 0; v < 2; v++) {
                long j = p * NR + 8 * v;
                __m256 x = load8_part(fmt, w, d * ldw + col0 + j, nc - j);
                if (fmt == LORA_FORMAT_I8_ROWS) x = _mm256_mul_ps(x, s);
                _mm256_store_ps(dst + 8 * v, x);
            }
        }
    }
}

// ---- Micro-kernel -------------------------------------------------------------------------

/// C[mr, cols] (+)= A[mr, kc] @ B[kc, NR] (cols <= NR are stored); A rows at stride lda, B a
/// packed panel. `load_c`: add to C, else overwrite.
INLINE void ukernel(const int mr, long kc, const float *restrict a, long lda,
                    const float *restrict b, float *restrict c, long ldc, long cols, int load_c) {
    __m256 acc[MR][2];
    for (int i = 0; i < mr; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (long k = 0; k < kc; k++) {
        __m256 b0 = _mm256_load_ps(b + k * NR), b1 = _mm256_load_ps(b + k * NR + 8);
        for (int i = 0; i < mr; i++) {
            __m256 av = _mm256_broadcast_ss(a + i * lda + k);
            acc[i][0] = _mm256_fmadd_ps(av, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(av, b1, acc[i][1]);
        }
    }
    if (cols == NR) {
        for (int i = 0; i < mr; i++)
            for (int v = 0; v < 2; v++) {
                float *p = c + i * ldc + 8 * v;
                __m256 r = acc[i][v];
                if (load_c) r = _mm256_add_ps(r, _mm256_loadu_ps(p));
                _mm256_storeu_ps(p, r);
            }
    } else {
        float tile[MR][NR];
        for (int i = 0; i < mr; i++) {
            _mm256_storeu_ps(tile[i], acc[i][0]);
            _mm256_storeu_ps(tile[i] + 8, acc[i][1]);
            for (long j = 0; j < cols; j++) c[i * ldc + j] = load_c ? c[i * ldc + j] + tile[i][j] : tile[i][j];
        }
    }
}

#define UK(n) case n: ukernel(n, kc, a, lda, b, c, ldc, cols, load_c); break;
TARGET __attribute__((noinline))
static void ukernel_rows(int mr, long kc, const float *a, long lda, const float *b, float *c,
                         long ldc, long cols, int load_c) {
    switch (mr) { UK(1) UK(2) UK(3) UK(4) UK(5) UK(6) default: break; }
}
#undef UK

// ---- Driver -------------------------------------------------------------------------------

/// C[M, col0:col0+ncols] (+)= A[M, depth] @ B[depth, col0:col0+ncols]; B is W^T (`trans`) or
/// W, in format `fmt`.
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
    lora_gemm_blocks(depth, ncols, trans, fmt, AVX2_KC_MAX, AVX2_NC_DEEP, AVX2_B_FLOATS, NR, &kcb, &ncb);
    float *bp = pack_buffer();
    for (long jc = 0; jc < ncols; jc += ncb) {
        long nc = ncols - jc < ncb ? ncols - jc : ncb;
        long np = (nc + NR - 1) / NR;
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
            for (long ir = 0; ir < M; ir += MR) {
                long mr = M - ir < MR ? M - ir : MR;
                const float *a = A + ir * lda + pc;
                for (long p = 0; p < np; p++) {
                    long cols = nc - p * NR < NR ? nc - p * NR : NR;
                    float *c = C + ir * ldc + col0 + jc + p * NR;
                    ukernel_rows((int)mr, kc, a, lda, bp + p * kc * NR, c, ldc, cols, load_c);
                }
            }
        }
    }
}

// ---- Small M: C[M, n0:n1] (+)= A[M, K] @ W[n0:n1, K]^T without packing --------------------
// Memory bound: GEMV_RB = 4 weight rows at a time are streamed once, one 64-byte line of each
// per step (16 f32, 32 bf16 or 64 int8 weights) with a prefetch GEMV_PF rows ahead, and
// dotted with 1 or 2 rows of A (more rows of A re-read the 4 weight rows from L1/L2). With one
// row of A every (row, chain) pair has 2 accumulators, so 8 FMA chains are in flight.
// Int8 sums are scaled once at the end. Depths past the last multiple of 8 are scalar.

#define GEMV_RB 4
// Rows of W prefetched ahead, into L2 (see gemm_avx512.c's GEMV_PF).
#define GEMV_PF 16

static inline float wscalar(int fmt, const void *w, long i) {
    if (fmt == LORA_FORMAT_NF4) return lora_nf4_value(w, i);
    if (fmt == LORA_FORMAT_I8_ROWS) return ((const int8_t *)w)[i];
    if (fmt == LORA_FORMAT_BF16) {
        union { uint32_t u; float f; } v = { (uint32_t)((const uint16_t *)w)[i] << 16 };
        return v.f;
    }
    return ((const float *)w)[i];
}

INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/// Rows n..n+rows (rows <= 4) of W against A rows 0..mb (mb <= 2). One accumulator per row
/// pair whatever mb is, so a row of A gets the same bits alone or paired (a server's request
/// alone or batched: its LoRA x A^T runs here); the 4 chains still outrun memory at mb = 1.
INLINE void gemv_block(const int fmt, const int mb, long K, const float *A, long lda,
                       const void *w, long ldw, const float *scales, long n, long rows,
                       float *C, long ldc, int accumulate) {
    const int na = 1;
    const long step = 64 / (long)format_bytes(fmt);  // weights per cache line
    const char *wb = w;
    const size_t bytes = format_bytes(fmt);
    __m256 acc[2][GEMV_RB][2];
    for (int m = 0; m < mb; m++)
        for (int r = 0; r < GEMV_RB; r++) acc[m][r][0] = acc[m][r][1] = _mm256_setzero_ps();
    long wr[GEMV_RB];  // element offsets of the rows; missing rows repeat the last, unstored
    for (int r = 0; r < GEMV_RB; r++) wr[r] = (n + (r < rows ? r : rows - 1)) * ldw;
    // NF4: a step is one 64-weight block when the rows start on blocks, so each row's absmax
    // is computed once per step (the same product as load8_nf4's).
    const int nf4_blocks = fmt == LORA_FORMAT_NF4 && ldw % LORA_NF4_BLOCK == 0;
    long k = 0;
    for (; k + step <= K; k += step) {
        __m256 s[GEMV_RB];
        for (int r = 0; r < GEMV_RB; r++) {
            _mm_prefetch(fmt == LORA_FORMAT_NF4 ? (const char *)((const lora_nf4 *)w)->q + (wr[r] + GEMV_PF * ldw + k) / 2
                                                : wb + (size_t)(wr[r] + GEMV_PF * ldw + k) * bytes, _MM_HINT_T1);
            if (nf4_blocks) s[r] = _mm256_set1_ps(lora_nf4_absmax(w, (wr[r] + k) / LORA_NF4_BLOCK));
        }
        for (long u = 0; u < step; u += 8) {
            __m256 x0 = _mm256_loadu_ps(A + k + u);
            __m256 x1 = mb == 2 ? _mm256_loadu_ps(A + lda + k + u) : x0;
            const int c = na == 2 ? (int)((u >> 3) & 1) : 0;
            for (int r = 0; r < GEMV_RB; r++) {
                __m256 wv = nf4_blocks ? _mm256_mul_ps(nf4_code8(w, wr[r] + k + u), s[r])
                                       : load8(fmt, w, wr[r] + k + u);
                acc[0][r][c] = _mm256_fmadd_ps(x0, wv, acc[0][r][c]);
                if (mb == 2) acc[1][r][c] = _mm256_fmadd_ps(x1, wv, acc[1][r][c]);
            }
        }
    }
    for (; k + 8 <= K; k += 8) {
        __m256 x0 = _mm256_loadu_ps(A + k);
        __m256 x1 = mb == 2 ? _mm256_loadu_ps(A + lda + k) : x0;
        for (int r = 0; r < GEMV_RB; r++) {
            __m256 wv = load8(fmt, w, wr[r] + k);
            acc[0][r][0] = _mm256_fmadd_ps(x0, wv, acc[0][r][0]);
            if (mb == 2) acc[1][r][0] = _mm256_fmadd_ps(x1, wv, acc[1][r][0]);
        }
    }
    for (int m = 0; m < mb; m++)
        for (int r = 0; r < rows; r++) {
            float y = hsum8(na == 2 ? _mm256_add_ps(acc[m][r][0], acc[m][r][1]) : acc[m][r][0]);
            for (long kt = k; kt < K; kt++) y += A[m * lda + kt] * wscalar(fmt, w, wr[r] + kt);
            if (fmt == LORA_FORMAT_I8_ROWS) y *= scales[n + r];
            float *p = C + m * ldc + n + r;
            *p = accumulate ? *p + y : y;
        }
}

TARGET static void gemv(const int fmt, long M, long n0, long n1, long K, const float *A,
                        long lda, const void *w, long ldw, const float *scales, float *C,
                        long ldc, int accumulate) {
    for (long n = n0; n < n1; n += GEMV_RB) {
        long rows = n1 - n < GEMV_RB ? n1 - n : GEMV_RB;
        for (long m = 0; m < M; m += 2) {
#define CALL(f, mb) gemv_block(f, mb, K, A + m * lda, lda, w, ldw, scales, n, rows, C + m * ldc, ldc, accumulate)
            if (M - m >= 2) {
                if (fmt == LORA_FORMAT_I8_ROWS) CALL(LORA_FORMAT_I8_ROWS, 2);
                else if (fmt == LORA_FORMAT_NF4) CALL(LORA_FORMAT_NF4, 2);
                else if (fmt == LORA_FORMAT_BF16) CALL(LORA_FORMAT_BF16, 2);
                else CALL(LORA_FORMAT_F32, 2);
            } else {
                if (fmt == LORA_FORMAT_I8_ROWS) CALL(LORA_FORMAT_I8_ROWS, 1);
                else if (fmt == LORA_FORMAT_NF4) CALL(LORA_FORMAT_NF4, 1);
                else if (fmt == LORA_FORMAT_BF16) CALL(LORA_FORMAT_BF16, 1);
                else CALL(LORA_FORMAT_F32, 1);
            }
#undef CALL
        }
    }
}

/// Block formats (K a multiple of 32): rows n..n+rows (rows <= 4) of W for A rows 0..mb
/// (mb <= 2), each block read once: 16 quant bytes split into nibbles (Q4_0 minus 8) or 32
/// int8 (Q8_0), widened to 4 vectors of f32, dotted with A's 32 depths, the dot scaled by d
/// into the row's sum, plus m * sum(A's 32 depths) for Q4_1. Prefetch GEMV_PF rows ahead.
INLINE void gemv_q_block(const int fmt, const int mb, long K, const float *A, long lda,
                         const uint8_t *w, long rowbytes, long n, long rows, float *C, long ldc,
                         int accumulate) {
    const long bb = lora_block_bytes(fmt);
    __m256 acc[2][GEMV_RB];
    for (int m = 0; m < mb; m++)
        for (int r = 0; r < GEMV_RB; r++) acc[m][r] = _mm256_setzero_ps();
    const uint8_t *wr[GEMV_RB];  // missing rows repeat the last one; their sums are not stored
    for (int r = 0; r < GEMV_RB; r++) wr[r] = w + (n + (r < rows ? r : rows - 1)) * rowbytes;
    for (long k = 0, o = 0; k < K; k += LORA_QK, o += bb) {
        __m256 xs[2];
        if (fmt == LORA_FORMAT_Q4_1)
            for (int m = 0; m < mb; m++) {
                const float *x = A + m * lda + k;
                xs[m] = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8)),
                                      _mm256_add_ps(_mm256_loadu_ps(x + 16), _mm256_loadu_ps(x + 24)));
            }
#pragma GCC unroll 4  // the accumulators stay in registers at -O2 too
        for (int r = 0; r < GEMV_RB; r++) {
            const uint8_t *b = wr[r] + o;
            _mm_prefetch((const char *)(b + GEMV_PF * rowbytes), _MM_HINT_T0);
            __m256 q[4];
            if (fmt == LORA_FORMAT_Q8_0) {
                for (int g = 0; g < 4; g++)
                    q[g] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + 2 + 8 * g))));
            } else {
                __m128i v = _mm_loadu_si128((const __m128i *)(b + (fmt == LORA_FORMAT_Q4_1 ? 4 : 2)));
                __m128i lo = _mm_and_si128(v, _mm_set1_epi8(15));
                __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), _mm_set1_epi8(15));
                if (fmt == LORA_FORMAT_Q4_0) {
                    lo = _mm_sub_epi8(lo, _mm_set1_epi8(8));
                    hi = _mm_sub_epi8(hi, _mm_set1_epi8(8));
                }
                q[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
                q[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(lo, lo)));
                q[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
                q[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(hi, hi)));
            }
            __m256 d = half_bcast(b);
            for (int m = 0; m < mb; m++) {
                const float *x = A + m * lda + k;
                __m256 t = _mm256_mul_ps(_mm256_loadu_ps(x), q[0]);
                t = _mm256_fmadd_ps(_mm256_loadu_ps(x + 8), q[1], t);
                t = _mm256_fmadd_ps(_mm256_loadu_ps(x + 16), q[2], t);
                t = _mm256_fmadd_ps(_mm256_loadu_ps(x + 24), q[3], t);
                acc[m][r] = _mm256_fmadd_ps(d, t, acc[m][r]);
                if (fmt == LORA_FORMAT_Q4_1) acc[m][r] = _mm256_fmadd_ps(half_bcast(b + 2), xs[m], acc[m][r]);
            }
        }
    }
    for (int m = 0; m < mb; m++)
        for (int r = 0; r < rows; r++) {
            float y = hsum8(acc[m][r]), *p = C + m * ldc + n + r;
            *p = accumulate ? *p + y : y;
        }
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

void lora_avx2_gemm_abt(int format, long M, long n0, long n1, long K, const float *A, long lda,
                        const void *W, long ldw, const float *scales, float *C, long ldc,
                        int accumulate) {
    if (format < LORA_FORMAT_F32 || format > LORA_FORMAT_NF4) abort();
    gemm(M, n0, n1 - n0, K, A, lda, 1, format, W, scales, ldw, C, ldc, accumulate);
}

void lora_avx2_gemm_ab(int format, long M, long k0, long k1, long N, const float *A, long lda,
                       const void *W, long ldw, const float *scales, float *C, long ldc,
                       int accumulate) {
    if (format < LORA_FORMAT_F32 || format > LORA_FORMAT_NF4) abort();
    gemm(M, k0, k1 - k0, N, A, lda, 0, format, W, scales, ldw, C, ldc, accumulate);
}

/// f32 weights with a short depth (K a multiple of 8, 8 ... SMALLK_MAX: LoRA's B product,
/// K = rank): one hsum per output would cost more than its K / 8 FMAs, so 8 outputs are
/// reduced together. Per A row, output r's 8 lanes sum its K / 8 products (mul, then FMAs in
/// depth order); the 8 vectors are then summed across lanes by a hadd tree, one vector of 8
/// sums, added to C. Each row of A gets the same operations whatever M is (rows independent).
#define SMALLK_MAX 64
TARGET static void gemv_smallk(long M, long n0, long n1, long K, const float *A, long lda,
                               const float *w, long ldw, float *C, long ldc, int accumulate) {
    for (long n = n0; n < n1; n += 8) {
        const long rows = n1 - n < 8 ? n1 - n : 8;
        const float *wr[8];
        for (int r = 0; r < 8; r++) wr[r] = w + (n + (r < rows ? r : rows - 1)) * ldw;
        for (long m = 0; m < M; m++) {
            const float *a = A + m * lda;
            __m256 acc[8];
            const __m256 x0 = _mm256_loadu_ps(a);
            for (int r = 0; r < 8; r++) acc[r] = _mm256_mul_ps(x0, _mm256_loadu_ps(wr[r]));
            for (long k = 8; k < K; k += 8) {
                const __m256 x = _mm256_loadu_ps(a + k);
                for (int r = 0; r < 8; r++) acc[r] = _mm256_fmadd_ps(x, _mm256_loadu_ps(wr[r] + k), acc[r]);
            }
            // lanes [r0 r1 r2 r3 | r4 r5 r6 r7] of the 8 sums: pairs, quads, then the two halves
            const __m256 h01 = _mm256_hadd_ps(acc[0], acc[1]), h23 = _mm256_hadd_ps(acc[2], acc[3]);
            const __m256 h45 = _mm256_hadd_ps(acc[4], acc[5]), h67 = _mm256_hadd_ps(acc[6], acc[7]);
            const __m256 q0 = _mm256_hadd_ps(h01, h23), q1 = _mm256_hadd_ps(h45, h67);
            const __m256 sum = _mm256_add_ps(_mm256_permute2f128_ps(q0, q1, 0x20), _mm256_permute2f128_ps(q0, q1, 0x31));
            float *c = C + m * ldc + n;
            if (rows == 8) {
                _mm256_storeu_ps(c, accumulate ? _mm256_add_ps(_mm256_loadu_ps(c), sum) : sum);
            } else {
                float t[8];
                _mm256_storeu_ps(t, sum);
                for (long r = 0; r < rows; r++) c[r] = accumulate ? c[r] + t[r] : t[r];
            }
        }
    }
}

void lora_avx2_gemv_abt(int format, long M, long n0, long n1, long K, const float *A, long lda,
                        const void *W, long ldw, const float *scales, float *C, long ldc,
                        int accumulate) {
    if (format < LORA_FORMAT_F32 || format > LORA_FORMAT_NF4) abort();
    if (M <= 0 || n1 <= n0) return;
    switch (format) {
    case LORA_FORMAT_Q8_0: gemv_q(LORA_FORMAT_Q8_0, M, n0, n1, K, A, lda, W, ldw, C, ldc, accumulate); return;
    case LORA_FORMAT_Q4_0: gemv_q(LORA_FORMAT_Q4_0, M, n0, n1, K, A, lda, W, ldw, C, ldc, accumulate); return;
    case LORA_FORMAT_Q4_1: gemv_q(LORA_FORMAT_Q4_1, M, n0, n1, K, A, lda, W, ldw, C, ldc, accumulate); return;
    default: break;
    }
    if (format == LORA_FORMAT_F32 && K >= 8 && K % 8 == 0 && K <= SMALLK_MAX) {
        gemv_smallk(M, n0, n1, K, A, lda, W, ldw, C, ldc, accumulate);
        return;
    }
    gemv(format, M, n0, n1, K, A, lda, W, ldw, scales, C, ldc, accumulate);
}

INLINE float dot_body(const float *a, const float *b, long n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    long i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

TARGET float lora_avx2_dot(const float *a, const float *b, long n) { return dot_body(a, b, n); }

/// s[j] = alpha * dot(q, K_j): lora_avx2_dot's operations for each key (the same bits), inlined
/// in one loop instead of a call per key; for hd = 64, q stays in registers.
TARGET void lora_avx2_attn_scores(const float *q, const float *K, long ld, long L, long hd, float alpha, float *s) {
    if (hd != 64) {
        for (long j = 0; j < L; j++) s[j] = alpha * dot_body(q, K + j * ld, hd);
        return;
    }
    __m256 qv[8];
    for (int v = 0; v < 8; v++) qv[v] = _mm256_loadu_ps(q + 8 * v);
    for (long j = 0; j < L; j++) {
        const float *k = K + j * ld;
        // dot_body's chains for n = 64: s_c gets chunks c and c + 4, in that order.
        __m256 s0 = _mm256_fmadd_ps(qv[0], _mm256_loadu_ps(k), _mm256_setzero_ps());
        __m256 s1 = _mm256_fmadd_ps(qv[1], _mm256_loadu_ps(k + 8), _mm256_setzero_ps());
        __m256 s2 = _mm256_fmadd_ps(qv[2], _mm256_loadu_ps(k + 16), _mm256_setzero_ps());
        __m256 s3 = _mm256_fmadd_ps(qv[3], _mm256_loadu_ps(k + 24), _mm256_setzero_ps());
        s0 = _mm256_fmadd_ps(qv[4], _mm256_loadu_ps(k + 32), s0);
        s1 = _mm256_fmadd_ps(qv[5], _mm256_loadu_ps(k + 40), s1);
        s2 = _mm256_fmadd_ps(qv[6], _mm256_loadu_ps(k + 48), s2);
        s3 = _mm256_fmadd_ps(qv[7], _mm256_loadu_ps(k + 56), s3);
        s[j] = alpha * hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    }
}

TARGET void lora_avx2_axpy(float alpha, const float *x, float *y, long n) {
    __m256 a = _mm256_set1_ps(alpha);
    long i = 0;
    for (; i + 32 <= n; i += 32)
        for (int u = 0; u < 32; u += 8)
            _mm256_storeu_ps(y + i + u, _mm256_fmadd_ps(a, _mm256_loadu_ps(x + i + u),
                                                        _mm256_loadu_ps(y + i + u)));
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += alpha * x[i];
}

/// hd / 8 accumulators in registers (a constant count per instance); each element gets the
/// FMAs lora_avx2_axpy would apply to it, in the same order, so the bits are the same.
/// Row r < R of q (at q + r * ldq) against keys 0 ..< L + r: lora_avx2_attn_scores for each row
/// (the same operations per row and key), with each key's 64 floats loaded once for 4 rows.
TARGET void lora_avx2_attn_scores_rows(const float *q, long ldq, long R, const float *K, long ld, long L, long hd,
                                       float alpha, float *s, long lds) {
    long r0 = 0;
    if (hd == 64)
        for (; r0 + 4 <= R; r0 += 4) {
            const float *q0 = q + r0 * ldq, *q1 = q0 + ldq, *q2 = q1 + ldq, *q3 = q2 + ldq;
            float *s0p = s + r0 * lds, *s1p = s0p + lds, *s2p = s1p + lds, *s3p = s2p + lds;
            for (long j = 0; j < L + r0; j++) {  // keys every row of the four sees
                const float *k = K + j * ld;
                __m256 kv[8];
                for (int v = 0; v < 8; v++) kv[v] = _mm256_loadu_ps(k + 8 * v);
#define ROW(qr, out)                                                                             \
    do {                                                                                         \
        __m256 a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qr), kv[0], _mm256_setzero_ps());            \
        __m256 a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qr + 8), kv[1], _mm256_setzero_ps());        \
        __m256 a2 = _mm256_fmadd_ps(_mm256_loadu_ps(qr + 16), kv[2], _mm256_setzero_ps());       \
        __m256 a3 = _mm256_fmadd_ps(_mm256_loadu_ps(qr + 24), kv[3], _mm256_setzero_ps());       \
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qr + 32), kv[4], a0);                               \
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qr + 40), kv[5], a1);                               \
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(qr + 48), kv[6], a2);                               \
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(qr + 56), kv[7], a3);                               \
        (out)[j] = alpha * hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));   \
    } while (0)
                ROW(q0, s0p); ROW(q1, s1p); ROW(q2, s2p); ROW(q3, s3p);
#undef ROW
            }
            // The keys only the later rows see.
            for (long r = 1; r < 4; r++) {
                const long from = L + r0, to = L + r0 + r;
                lora_avx2_attn_scores(q + (r0 + r) * ldq, K + from * ld, ld, to - from, hd, alpha, s + (r0 + r) * lds + from);
            }
        }
    for (; r0 < R; r0++) lora_avx2_attn_scores(q + r0 * ldq, K, ld, L + r0, hd, alpha, s + r0 * lds);
}

#define WSUM(NV)                                                                                 \
    do {                                                                                         \
        __m256 acc[NV];                                                                          \
        for (int v = 0; v < NV; v++) acc[v] = _mm256_setzero_ps();                               \
        for (long j = 0; j < L; j++) {                                                           \
            if (s[j] == 0) continue;                                                             \
            const __m256 a = _mm256_set1_ps(s[j]);                                               \
            const float *x = V + j * ld;                                                         \
            for (int v = 0; v < NV; v++) acc[v] = _mm256_fmadd_ps(a, _mm256_loadu_ps(x + 8 * v), acc[v]); \
        }                                                                                        \
        for (int v = 0; v < NV; v++) _mm256_storeu_ps(o + 8 * v, acc[v]);                        \
    } while (0)

TARGET void lora_avx2_attn_wsum(const float *s, const float *V, long ld, long L, long hd, float *o) {
    switch (hd / 8) {
    case 4: WSUM(4); return;
    case 8: WSUM(8); return;
    case 16: WSUM(16); return;
    default: break;
    }
    for (long i = 0; i < hd; i++) o[i] = 0;
    for (long j = 0; j < L; j++)
        if (s[j] != 0) lora_avx2_axpy(s[j], V + j * ld, o, hd);
}

#else  // not x86-64: lora_avx2_available() is 0 and nothing else is called.

int lora_avx2_available(void) { return 0; }
int lora_avx2_panel_width(void) { return 16; }
void lora_avx2_gemm_abt(int format, long M, long n0, long n1, long K, const float *A, long lda,
                        const void *W, long ldw, const float *scales, float *C, long ldc,
                        int accumulate) { abort(); }
void lora_avx2_gemm_ab(int format, long M, long k0, long k1, long N, const float *A, long lda,
                       const void *W, long ldw, const float *scales, float *C, long ldc,
                       int accumulate) { abort(); }
void lora_avx2_gemv_abt(int format, long M, long n0, long n1, long K, const float *A, long lda,
                        const void *W, long ldw, const float *scales, float *C, long ldc,
                        int accumulate) { abort(); }
float lora_avx2_dot(const float *a, const float *b, long n) { abort(); }
void lora_avx2_attn_scores(const float *q, const float *K, long ld, long L, long hd, float alpha, float *s) { abort(); }
void lora_avx2_attn_scores_rows(const float *q, long ldq, long R, const float *K, long ld, long L, long hd, float alpha,
                                float *s, long lds) { abort(); }
void lora_avx2_axpy(float alpha, const float *x, float *y, long n) { abort(); }
void lora_avx2_attn_wsum(const float *s, const float *V, long ld, long L, long hd, float *o) { abort(); }

#endif
