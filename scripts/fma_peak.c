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

// 12 independent accumulator chains cover the FMA latency (4 cycles) on 2-3 pipes.
__attribute__((target("avx512f"))) static float run512(long n) {
    __m512 a[12], m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
    for (long k = 0; k < n; k++)
        for (int i = 0; i < 12; i++) a[i] = _mm512_fmadd_ps(a[i], m, c);
    __m512 s = a[0];
    for (int i = 1; i < 12; i++) s = _mm512_add_ps(s, a[i]);
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"))) static float run256(long n) {
    __m256 a[12], m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps((float)i);
    for (long k = 0; k < n; k++)
        for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], m, c);
    __m256 s = a[0];
    for (int i = 1; i < 12; i++) s = _mm256_add_ps(s, a[i]);
    float o[8]; _mm256_storeu_ps(o, s);
    return o[0] + o[7];
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
