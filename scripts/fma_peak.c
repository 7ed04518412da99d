// The FMA peak the benchmark holds training against: every core runs independent fused
// multiply-adds on registers only (no memory traffic), with the widest vectors the CPU has
// (AVX-512, else AVX2+FMA), for about a second. Prints GFLOP/s for all cores and per core.
// Build: cc -O2 -pthread scripts/fma_peak.c -o fma_peak (scripts/bench.sh does it).
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define ITERS 20000000L

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

// 12 independent accumulator chains cover the FMA latency (4 cycles) on 2-3 pipes. They are
// named variables, not an array, so the compiler keeps all 12 in registers at any -O level.
#define CHAINS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)

__attribute__((target("avx512f"))) static float run512(long n) {
    __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
#define INIT(i) __m512 a##i = _mm512_set1_ps((float)i);
#define STEP(i) a##i = _mm512_fmadd_ps(a##i, m, c);
#define SUM(i) s = _mm512_add_ps(s, a##i);
    CHAINS(INIT)
    for (long k = 0; k < n; k++) { CHAINS(STEP) }
    __m512 s = _mm512_setzero_ps();
    CHAINS(SUM)
    return _mm512_reduce_add_ps(s);
#undef INIT
#undef STEP
#undef SUM
}

__attribute__((target("avx2,fma"))) static float run256(long n) {
    __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
#define INIT(i) __m256 a##i = _mm256_set1_ps((float)i);
#define STEP(i) a##i = _mm256_fmadd_ps(a##i, m, c);
#define SUM(i) s = _mm256_add_ps(s, a##i);
    CHAINS(INIT)
    for (long k = 0; k < n; k++) { CHAINS(STEP) }
    __m256 s = _mm256_setzero_ps();
    CHAINS(SUM)
    float o[8]; _mm256_storeu_ps(o, s);
    return o[0] + o[7];
#undef INIT
#undef STEP
#undef SUM
}

static int wide;
static volatile float sink;
static void *worker(void *p) { (void)p; sink = wide ? run512(ITERS) : run256(ITERS); return NULL; }

int main(void) {
    __builtin_cpu_init();
    wide = __builtin_cpu_supports("avx512f");
    if (!wide && !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) {
        puts("fma_peak: no AVX2+FMA on this CPU");
        return 1;
    }
    // FMA_PEAK_WIDTH=256 measures the AVX2 peak on an AVX-512 CPU (the AVX2 family's ceiling).
    const char *w = getenv("FMA_PEAK_WIDTH");
    if (w && w[0] == '2') wide = 0;
    int cores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    pthread_t t[256];
    if (cores > 256) cores = 256;
    double t0 = now();
    for (int i = 0; i < cores; i++) pthread_create(&t[i], NULL, worker, NULL);
    for (int i = 0; i < cores; i++) pthread_join(t[i], NULL);
    double s = now() - t0;
    double flops = (double)cores * ITERS * 12 * (wide ? 16 : 8) * 2;
    printf("fma peak: %.1f GFLOP/s on %d cores (%.1f per core; %s FMA on registers, 12 chains)\n",
           flops / s * 1e-9, cores, flops / s * 1e-9 / cores, wide ? "512-bit" : "256-bit");
    return 0;
}
