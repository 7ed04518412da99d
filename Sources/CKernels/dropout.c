// LoRA's dropout mask (LoRALayer.drop): element e is dropped when 32 bits of SplitMix64's
// mixer of (seed + (e / 2) * golden) fall under `threshold` (the low half for even e, the high
// half for odd e), and z[e] = keep ? x[e] * s : 0. The portable loop is the reference; the AVX2
// one mixes 4 pairs per vector (64-bit products from three 32 x 32 multiplies) and gives the
// same bits. It was a Swift loop at ~1.8 ns per element; a SmolLM2 step draws 35 M of them.
#include "CKernels.h"
#include "families.h"

#define GOLDEN 0x9E3779B97F4A7C15ull
#define MIX1 0xBF58476D1CE4E5B9ull
#define MIX2 0x94D049BB133111EBull

static inline uint64_t mix(uint64_t seed, uint64_t j) {
    uint64_t h = seed + j * GOLDEN;
    h = (h ^ (h >> 30)) * MIX1;
    h = (h ^ (h >> 27)) * MIX2;
    return h ^ (h >> 31);
}

static void portable_pairs(uint64_t seed, uint64_t threshold, const float *x, float s, uint8_t *keep, float *z,
                           long j0, long j1, long n) {
    for (long j = j0; j < j1; j++) {
        const uint64_t h = mix(seed, (uint64_t)j);
        const long e = 2 * j;
        const uint8_t k0 = (h & 0xFFFFFFFFull) < threshold ? 0 : 1;
        keep[e] = k0;
        z[e] = k0 ? x[e] * s : 0;
        if (e + 1 < n) {
            const uint8_t k1 = (h >> 32) < threshold ? 0 : 1;
            keep[e + 1] = k1;
            z[e + 1] = k1 ? x[e + 1] * s : 0;
        }
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define TARGET __attribute__((target("avx2")))

/// a * b mod 2^64 per 64-bit lane: lo*lo + ((hi*lo + lo*hi) << 32).
TARGET static inline __m256i mul64(__m256i a, __m256i b) {
    const __m256i lo = _mm256_mul_epu32(a, b);
    const __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(a, 32), b),
                                           _mm256_mul_epu32(a, _mm256_srli_epi64(b, 32)));
    return _mm256_add_epi64(lo, _mm256_slli_epi64(cross, 32));
}

TARGET static void avx2_pairs(uint64_t seed, uint64_t threshold, const float *x, float s, uint8_t *keep, float *z,
                              long j0, long j1, long n) {
    long j = j0;
    const long whole = n / 2;   // pairs with both elements in range
    const long jv = j1 < whole ? j1 : whole;
    if (j + 4 <= jv) {
        const __m256i g4 = _mm256_set1_epi64x((long long)(4 * GOLDEN));
        const __m256i m1 = _mm256_set1_epi64x((long long)MIX1), m2 = _mm256_set1_epi64x((long long)MIX2);
        const __m256i lo32 = _mm256_set1_epi64x(0xFFFFFFFFll), thr = _mm256_set1_epi64x((long long)threshold);
        const __m256 sv = _mm256_set1_ps(s);
        const __m256i one = _mm256_set1_epi32(1);
        __m256i base = _mm256_setr_epi64x((long long)(seed + (uint64_t)j * GOLDEN), (long long)(seed + (uint64_t)(j + 1) * GOLDEN),
                                          (long long)(seed + (uint64_t)(j + 2) * GOLDEN), (long long)(seed + (uint64_t)(j + 3) * GOLDEN));
        for (; j + 4 <= jv; j += 4) {
            __m256i h = base;
            base = _mm256_add_epi64(base, g4);
            h = mul64(_mm256_xor_si256(h, _mm256_srli_epi64(h, 30)), m1);
            h = mul64(_mm256_xor_si256(h, _mm256_srli_epi64(h, 27)), m2);
            h = _mm256_xor_si256(h, _mm256_srli_epi64(h, 31));
            // Both halves are under 2^32, so the signed 64-bit compare is the unsigned one.
            const __m256i dlo = _mm256_cmpgt_epi64(thr, _mm256_and_si256(h, lo32));
            const __m256i dhi = _mm256_cmpgt_epi64(thr, _mm256_srli_epi64(h, 32));
            const __m256 drop = _mm256_castsi256_ps(_mm256_blend_epi32(dlo, dhi, 0xAA));   // e, e+1, e+2, ...
            const long e = 2 * j;
            _mm256_storeu_ps(z + e, _mm256_andnot_ps(drop, _mm256_mul_ps(_mm256_loadu_ps(x + e), sv)));
            // keep bytes: 0/1 per 32-bit lane, packed 32 -> 16 -> 8 bits within each 128-bit half.
            const __m256i k = _mm256_andnot_si256(_mm256_castps_si256(drop), one);
            const __m256i p = _mm256_packus_epi16(_mm256_packus_epi32(k, k), _mm256_packus_epi32(k, k));
            const int lo = _mm256_extract_epi32(p, 0), hi = _mm256_extract_epi32(p, 4);
            __builtin_memcpy(keep + e, &lo, 4);
            __builtin_memcpy(keep + e + 4, &hi, 4);
        }
    }
    portable_pairs(seed, threshold, x, s, keep, z, j, j1, n);
}
#endif

void lora_dropout_mask(int family, uint64_t seed, uint64_t threshold, const float *x, float s, uint8_t *keep, float *z,
                       long j0, long j1, long n) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if ((family == LORA_FAMILY_AVX2 || family == LORA_FAMILY_AVX512) && lora_family_available(LORA_FAMILY_AVX2)
        && lora_family_available(family)) {
        avx2_pairs(seed, threshold, x, s, keep, z, j0, j1, n);
        return;
    }
#endif
    portable_pairs(seed, threshold, x, s, keep, z, j0, j1, n);
}
