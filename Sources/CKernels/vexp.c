// exp(x - shift) over a row with its sum: VectorOps.expShifted's arithmetic (Cephes expf, as
// VectorOps.exp) in C, so the AVX2 family runs it 8 lanes wide instead of the Swift SIMD code's
// baseline-x86-64 halves. Every family does the same float operations in the same order (a
// product then a sum, never fused) and sums the same way, so all give the same bits.
#include "CKernels.h"
#include "families.h"
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define VEXP_X86 1
#endif

#ifdef VEXP_X86
/// The AVX2 bodies serve the AVX2 and AVX-512 families, where the CPU has AVX2.
static int avx2_usable(int family) {
    return (family == LORA_FAMILY_AVX2 || family == LORA_FAMILY_AVX512) && lora_family_available(LORA_FAMILY_AVX2);
}
#endif

#pragma clang fp contract(off)

#define EXP_LOW -87.33654f
#define EXP_HIGH 88.3f
#define EXP_MAGIC 0x1.8p23f

static float exp_one(float x0) {
    float x = x0 < EXP_LOW ? EXP_LOW : x0;
    x = EXP_HIGH < x ? EXP_HIGH : x;
    const float t = x * 1.44269504f + EXP_MAGIC;
    const float n = t - EXP_MAGIC;
    x = x - n * 0.693359375f;
    x = x - n * -2.1219444e-4f;
    const float z = x * x;
    float p = 1.98756915e-4f;
    p = p * x + 1.3981999507e-3f;
    p = p * x + 8.3334519073e-3f;
    p = p * x + 4.1665795894e-2f;
    p = p * x + 1.6666665459e-1f;
    p = p * x + 5.0000001201e-1f;
    const float y = p * z + x + 1.0f;
    int32_t bits;
    memcpy(&bits, &t, 4);
    bits = (int32_t)((uint32_t)(bits - (0x4B400000 - 127)) << 23);
    float pow2n;
    memcpy(&pow2n, &bits, 4);
    return x0 < EXP_LOW ? 0.0f : y * pow2n;
}

/// The 8 lanes' sum in VectorOps' order: Swift's SIMD8.sum() adds the lanes in order.
static float lanes_sum(const float a[8]) {
    float s = 0;
    for (int l = 0; l < 8; l++) s += a[l];
    return s;
}

/// A block's last elements (fewer than 8) one at a time, added to the block's lane sum s.
static float block_tail(float *y, const float *x, float shift, long i, long end, float s) {
    for (; i < end; i++) {
        const float e = exp_one(x[i] - shift);
        y[i] = e;
        s += e;
    }
    return s;
}

static double portable_exp_shifted(float *y, const float *x, float shift, long n) {
    double total = 0;
    long i = 0;
    while (i < n) {
        const long end = n < i + 1024 ? n : i + 1024;
        float acc[8] = {0};
        for (; i + 8 <= end; i += 8)
            for (int l = 0; l < 8; l++) {
                const float e = exp_one(x[i + l] - shift);
                y[i + l] = e;
                acc[l] += e;
            }
        total += (double)block_tail(y, x, shift, i, end, lanes_sum(acc));
        i = end;
    }
    return total;
}

static void portable_swiglu_forward(float *h, const float *gate, const float *up, long i, long n) {
    for (; i < n; i++) {
        const float g = gate[i];
        h[i] = g / (1.0f + exp_one(-g)) * up[i];
    }
}

static void portable_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate, const float *up,
                                     long i, long n) {
    for (; i < n; i++) {
        const float g = gate[i], u = up[i], d = dh[i];
        const float den = 1.0f + exp_one(-g), s = 1.0f / den;
        dgate[i] = d * u * s * (1.0f + g * (1.0f - s));
        dup[i] = d * (g / den);
    }
}

#ifdef VEXP_X86
#define VEXP_T __attribute__((target("avx2,fma")))
VEXP_T static inline __m256 exp8(__m256 x0) {
    const __m256 low = _mm256_set1_ps(EXP_LOW), magic = _mm256_set1_ps(EXP_MAGIC);
    // vmax(a, b) = a < b ? b : a and vmin(a, b) = b < a ? b : a, as VectorOps'.
    __m256 x = _mm256_blendv_ps(x0, low, _mm256_cmp_ps(x0, low, _CMP_LT_OQ));
    const __m256 high = _mm256_set1_ps(EXP_HIGH);
    x = _mm256_blendv_ps(x, high, _mm256_cmp_ps(high, x, _CMP_LT_OQ));
    const __m256 t = _mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), magic);
    const __m256 n = _mm256_sub_ps(t, magic);
    x = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(0.693359375f)));
    x = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(-2.1219444e-4f)));
    const __m256 z = _mm256_mul_ps(x, x);
    __m256 p = _mm256_set1_ps(1.98756915e-4f);
    p = _mm256_add_ps(_mm256_mul_ps(p, x), _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_add_ps(_mm256_mul_ps(p, x), _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_add_ps(_mm256_mul_ps(p, x), _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_add_ps(_mm256_mul_ps(p, x), _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_add_ps(_mm256_mul_ps(p, x), _mm256_set1_ps(5.0000001201e-1f));
    const __m256 y = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, z), x), _mm256_set1_ps(1.0f));
    const __m256i bits = _mm256_slli_epi32(_mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(0x4B400000 - 127)), 23);
    const __m256 r = _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
    return _mm256_andnot_ps(_mm256_cmp_ps(x0, low, _CMP_LT_OQ), r);
}

VEXP_T static double avx2_exp_shifted(float *y, const float *x, float shift, long n) {
    const __m256 vs = _mm256_set1_ps(shift);
    double total = 0;
    long i = 0;
    while (i < n) {
        const long end = n < i + 1024 ? n : i + 1024;
        __m256 acc = _mm256_setzero_ps();
        for (; i + 8 <= end; i += 8) {
            const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs));
            _mm256_storeu_ps(y + i, e);
            acc = _mm256_add_ps(acc, e);
        }
        float a[8];
        _mm256_storeu_ps(a, acc);
        total += (double)block_tail(y, x, shift, i, end, lanes_sum(a));
        i = end;
    }
    return total;
}
#endif

#ifdef VEXP_X86
/// -g as Swift's prefix minus: the sign bit flipped.
VEXP_T static inline __m256 neg8(__m256 g) { return _mm256_xor_ps(g, _mm256_set1_ps(-0.0f)); }

VEXP_T static void avx2_swiglu_forward(float *h, const float *gate, const float *up, long n) {
    const __m256 one = _mm256_set1_ps(1.0f);
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i), u = _mm256_loadu_ps(up + i);
        const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, exp8(neg8(g))));
        _mm256_storeu_ps(h + i, _mm256_mul_ps(silu, u));
    }
    portable_swiglu_forward(h, gate, up, i, n);
}

VEXP_T static void avx2_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate, const float *up, long n) {
    const __m256 one = _mm256_set1_ps(1.0f);
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i), u = _mm256_loadu_ps(up + i), d = _mm256_loadu_ps(dh + i);
        const __m256 den = _mm256_add_ps(one, exp8(neg8(g)));
        const __m256 s = _mm256_div_ps(one, den);
        const __m256 a = _mm256_mul_ps(_mm256_mul_ps(d, u), s);
        _mm256_storeu_ps(dgate + i, _mm256_mul_ps(a, _mm256_add_ps(one, _mm256_mul_ps(g, _mm256_sub_ps(one, s)))));
        _mm256_storeu_ps(dup + i, _mm256_mul_ps(d, _mm256_div_ps(g, den)));
    }
    portable_swiglu_backward(dgate, dup, dh, gate, up, i, n);
}
#endif

void lora_swiglu_forward(int family, float *h, const float *gate, const float *up, long n) {
#ifdef VEXP_X86
    if (avx2_usable(family)) {
        avx2_swiglu_forward(h, gate, up, n);
        return;
    }
#endif
    portable_swiglu_forward(h, gate, up, 0, n);
}

void lora_swiglu_backward(int family, float *dgate, float *dup, const float *dh, const float *gate, const float *up, long n) {
#ifdef VEXP_X86
    if (avx2_usable(family)) {
        avx2_swiglu_backward(dgate, dup, dh, gate, up, n);
        return;
    }
#endif
    portable_swiglu_backward(dgate, dup, dh, gate, up, 0, n);
}

double lora_exp_shifted(int family, float *y, const float *x, float shift, long n) {
#ifdef VEXP_X86
    if (avx2_usable(family))
        return avx2_exp_shifted(y, x, shift, n);
#endif
    return portable_exp_shifted(y, x, shift, n);
}

// ---- a residual add and greedy decoding's argmax ---------------------------------------------

static void portable_add(float *out, const float *a, const float *b, long i, long n) {
    for (; i < n; i++) out[i] = a[i] + b[i];
}

static long portable_argmax(const float *x, long n) {
    long best = 0;
    for (long i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

#ifdef VEXP_X86
VEXP_T static void avx2_add(float *out, const float *a, const float *b, long n) {
    long i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    portable_add(out, a, b, i, n);
}

/// The plain loop's answer (the first index of the largest value; a NaN never wins, and a NaN
/// at 0 stays the answer): the largest non-NaN value by lanes, then its first index.
VEXP_T static long avx2_argmax(const float *x, long n) {
    if (n < 16 || x[0] != x[0]) return portable_argmax(x, n);
    __m256 m = _mm256_set1_ps(x[0]);
    long i = 0;
    // max_ps(v, m) returns m when v is NaN, so NaNs drop out.
    for (; i + 8 <= n; i += 8) m = _mm256_max_ps(_mm256_loadu_ps(x + i), m);
    float lanes[8];
    _mm256_storeu_ps(lanes, m);
    float best = lanes[0];
    for (int k = 1; k < 8; k++) best = lanes[k] > best ? lanes[k] : best;
    for (; i < n; i++) best = x[i] > best ? x[i] : best;
    const __m256 bv = _mm256_set1_ps(best);
    for (i = 0; i + 8 <= n; i += 8) {
        const int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), bv, _CMP_EQ_OQ));
        if (hit) return i + __builtin_ctz((unsigned)hit);
    }
    for (; i < n; i++)
        if (x[i] == best) return i;
    return 0;
}
#endif

void lora_add(int family, float *out, const float *a, const float *b, long n) {
#ifdef VEXP_X86
    if (avx2_usable(family)) {
        avx2_add(out, a, b, n);
        return;
    }
#endif
    portable_add(out, a, b, 0, n);
}

long lora_argmax(int family, const float *x, long n) {
    if (n <= 0) return 0;
#ifdef VEXP_X86
    if (avx2_usable(family))
        return avx2_argmax(x, n);
#endif
    return portable_argmax(x, n);
}
