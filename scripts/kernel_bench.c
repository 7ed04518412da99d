// Single-thread throughput of the kernel families x weight formats (CKernels.h), no Swift:
//   GEMM abt / ab: GFLOP/s (2 M N K flops per call)
//   GEMV abt, M = 1: GB/s of weight bytes streamed; the weights are cycled through copies
//   totalling >= 256 MiB so they come from memory, not the last-level cache, as in decoding;
//   also with 2 threads on the two halves of the rows (split at the panel width).
//   LLM.int8() int8 product: GOP/s (2 M N K per call); KB_LLM_INT8_ONLY=1 stops after it.
// Build and run: scripts/kernel_bench.sh (clang when present, as SwiftPM builds the kernels). Each figure is the best of repeated calls over
// ~0.3 s, which is the right statistic on a machine shared with other work.
#include "CKernels.h"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static const char *family_names[] = {"portable", "avx2", "avx512"};
static const char *format_names[] = {"f32", "i8_rows", "bf16", "q8_0", "q4_0", "q4_1"};
enum { NFORMATS = 6 };
static long block_bytes(int f) { return f == LORA_FORMAT_Q8_0 ? 34 : f == LORA_FORMAT_Q4_0 ? 18 : f == LORA_FORMAT_Q4_1 ? 20 : 0; }
/// Bytes of n weights (n a multiple of 32 for the block formats).
static size_t weight_bytes(int f, long n) {
    if (block_bytes(f)) return (size_t)(n / 32 * block_bytes(f));
    return (size_t)n * (f == LORA_FORMAT_F32 ? 4 : f == LORA_FORMAT_I8_ROWS ? 1 : 2);
}

static void *make_weights(int f, long n) {
    void *w = malloc(weight_bytes(f, n));
    if (block_bytes(f)) {  // random quants; d = 2^-7 and m = -2^-4 as halves
        unsigned char *b = w;
        for (size_t i = 0; i < weight_bytes(f, n); i++) b[i] = (unsigned char)((i * 2654435761u) >> 13);
        for (long k = 0; k < n / 32; k++) {
            unsigned char *p = b + k * block_bytes(f);
            p[0] = 0x00; p[1] = 0x20;                                  // 0x2000
            if (f == LORA_FORMAT_Q4_1) { p[2] = 0x00; p[3] = 0xAC; }   // 0xAC00
        }
        return w;
    }
    for (long i = 0; i < n; i++) {
        float x = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
        if (f == LORA_FORMAT_F32) ((float *)w)[i] = x;
        else if (f == LORA_FORMAT_I8_ROWS) ((int8_t *)w)[i] = (int8_t)(x * 127);
        else { uint32_t u; memcpy(&u, &x, 4); ((uint16_t *)w)[i] = (uint16_t)(u >> 16); }
    }
    return w;
}

static float *make_floats(long n) {
    float *p = malloc(sizeof(float) * (n > 0 ? n : 1));
    for (long i = 0; i < n; i++) p[i] = (float)((i * 40503u) % 1001) / 1000.0f - 0.5f;
    return p;
}

/// Best seconds per call of `fn` over ~budget seconds (at least 2 calls).
#define BEST_OF(budget, call)                                             \
    ({ double best = 1e30, start = now(); int reps = 0;                   \
       while (reps < 2 || now() - start < (budget)) {                     \
           double t0 = now(); call; double t = now() - t0;                \
           if (t < best) best = t; reps++; }                              \
       best; })

static double bench_gemm(int fam, int f, int ab, long M, long N, long K) {
    float *A = make_floats(M * (ab ? N : K)), *scales = make_floats(N);
    for (long i = 0; i < N; i++) scales[i] = 0.01f;
    void *W = make_weights(f, N * K);
    float *C = make_floats(M * (ab ? K : N));
    double t = ab ? BEST_OF(0.3, lora_gemm_ab(fam, f, M, 0, K, N, A, N, W, K, scales, C, K, 0))
                  : BEST_OF(0.3, lora_gemm_abt(fam, f, M, 0, N, K, A, K, W, K, scales, C, N, 0));
    free(A); free(scales); free(W); free(C);
    return 2.0 * M * N * K / t * 1e-9;
}

struct half_call { int fam, f; long n0, n1, K; const float *A; const void *W; const float *scales; float *C; };
static void *gemv_half(void *p) {
    struct half_call *h = p;
    lora_gemv_abt(h->fam, h->f, 1, h->n0, h->n1, h->K, h->A, h->K, h->W, h->K, h->scales, h->C, h->n1, 0);
    return NULL;
}

/// One GEMV on `threads` (1 or 2) threads: the second half of the rows on a new thread.
static void gemv_threads(int threads, int fam, int f, long N, long K, const float *A,
                         const void *W, const float *scales, float *C) {
    if (threads == 1) { lora_gemv_abt(fam, f, 1, 0, N, K, A, K, W, K, scales, C, N, 0); return; }
    long pw = lora_family_panel_width(fam), mid = (N / pw + 1) / 2 * pw;
    struct half_call h = {fam, f, mid, N, K, A, W, scales, C};
    pthread_t t;
    if (pthread_create(&t, NULL, gemv_half, &h) != 0) abort();
    lora_gemv_abt(fam, f, 1, 0, mid, K, A, K, W, K, scales, C, N, 0);
    pthread_join(t, NULL);
}

static double bench_gemv(int fam, int f, long N, long K, int threads) {
    size_t bytes = weight_bytes(f, N * K);
    int copies = (int)((256u << 20) / bytes) + 1;
    void **W = malloc(sizeof(void *) * copies);
    for (int c = 0; c < copies; c++) W[c] = make_weights(f, N * K);
    float *A = make_floats(K), *scales = make_floats(N), *C = make_floats(N);
    int c = 0;
    double t = BEST_OF(0.3, (gemv_threads(threads, fam, f, N, K, A, W[c], scales, C),
                             c = (c + 1) % copies));
    for (int i = 0; i < copies; i++) free(W[i]);
    free(W); free(A); free(scales); free(C);
    return bytes / t * 1e-9;
}

/// LLM.int8()'s int8 product (lora_llm_int8_gemm) on activations quantized once, GOP/s.
static double bench_llm_int8(int fam, long M, long N, long K) {
    float *A = make_floats(M * K), *scales = make_floats(N), *stats = make_floats(M), *C = make_floats(M * N);
    for (long i = 0; i < N; i++) scales[i] = 0.01f;
    int8_t *W = make_weights(LORA_FORMAT_I8_ROWS, N * K);
    const long ldq = K + (K & 1);
    int16_t *q = malloc(sizeof(int16_t) * M * ldq);
    uint8_t *mask = malloc(K);
    lora_llm_int8_quantize(fam, M, K, A, K, 6.0f, mask, q, ldq, stats);
    double t = BEST_OF(0.3, lora_llm_int8_gemm(fam, M, 0, N, K, q, ldq, stats, W, K, scales, C, N, 0));
    free(A); free(scales); free(stats); free(C); free(W); free(q); free(mask);
    return 2.0 * M * N * K / t * 1e-9;
}

int main(void) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[8192];
    if (f) {
        int got_model = 0, got_flags = 0;
        while (fgets(line, sizeof line, f) && !(got_model && got_flags)) {
            if (!got_model && !strncmp(line, "model name", 10)) { printf("cpu:%s", strchr(line, ':') + 1); got_model = 1; }
            if (!got_flags && !strncmp(line, "flags", 5)) {
                printf("simd flags:");
                const char *want[] = {"sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw",
                                      "avx512vl", "avx512_vnni", "avx512_bf16", NULL};
                for (int i = 0; want[i]; i++) {
                    char pat[64];
                    snprintf(pat, sizeof pat, " %s ", want[i]);
                    if (strstr(line, pat)) printf(" %s", want[i]);
                }
                printf("\n");
                got_flags = 1;
            }
        }
        fclose(f);
    }
    printf("best family: %s; single thread\n", family_names[lora_family_best()]);
    printf("%-9s %-8s %12s %12s   (LLM.int8() int8 product, M = 1024, GOP/s)\n", "family", "", "abt 576", "abt 1536");
    for (int fam = 0; fam < 3; fam++) {
        if (!lora_family_available(fam)) continue;
        printf("%-9s %-8s %12.1f", family_names[fam], "llm_int8", bench_llm_int8(fam, 1024, 576, 576)); fflush(stdout);
        printf(" %12.1f\n", bench_llm_int8(fam, 1024, 1536, 576));
    }
    if (getenv("KB_LLM_INT8_ONLY")) return 0;
    printf("%-9s %-8s %12s %12s %12s %12s %12s %12s %12s\n", "family", "format", "abt 576", "abt 1536",
           "ab 576", "ab 1536", "gemv 1536", "gemv 4096", "gemv 4096");
    printf("%-9s %-8s %12s %12s %12s %12s %12s %12s %12s\n", "", "", "GFLOP/s", "GFLOP/s", "GFLOP/s",
           "GFLOP/s", "GB/s", "GB/s", "2 thr GB/s");
    for (int fam = 0; fam < 3; fam++) {
        if (!lora_family_available(fam)) { printf("%-9s (not available on this CPU)\n", family_names[fam]); continue; }
        for (int fm = 0; fm < NFORMATS; fm++) {
            printf("%-9s %-8s", family_names[fam], format_names[fm]);
            fflush(stdout);
            printf(" %12.1f", bench_gemm(fam, fm, 0, 1024, 576, 576)); fflush(stdout);
            printf(" %12.1f", bench_gemm(fam, fm, 0, 1024, 1536, 576)); fflush(stdout);
            printf(" %12.1f", bench_gemm(fam, fm, 1, 1024, 576, 576)); fflush(stdout);
            printf(" %12.1f", bench_gemm(fam, fm, 1, 1024, 1536, 576)); fflush(stdout);
            printf(" %12.2f", bench_gemv(fam, fm, 1536, 576, 1)); fflush(stdout);
            printf(" %12.2f", bench_gemv(fam, fm, 4096, 4096, 1)); fflush(stdout);
            printf(" %12.2f\n", bench_gemv(fam, fm, 4096, 4096, 2));
        }
    }
    printf("abt N,K: C[1024, N] = A[1024, K] @ W[N, K]^T; ab N,K: C[1024, K] = A[1024, N] @ W[N, K];\n"
           "gemv N x K: M = 1, weights cycled over >= 256 MiB of copies (2 thr: a thread started per call\n"
           "for half the rows); q* formats: GGUF blocks, GB/s of block bytes\n");
    return 0;
}
