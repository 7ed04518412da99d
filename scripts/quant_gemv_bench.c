// Decoding GEMV (C[M, N] = A[M, K] @ W^T, M = 1 or 4) of the NF4 and GGUF tile formats (Q5_0,
// Q5_1, Q4_K, Q5_K, Q6_K), one thread, one kernel family (argument: 0 portable, 1 avx2,
// 2 avx512; default the best). Weights are cycled through copies totalling >= 256 MiB so they
// come from memory, as in decoding; each figure is the best call over ~0.5 s. Values are
// arbitrary (speed only). Build and run with the CKernels sources, no Swift:
//   gcc -O2 -fno-math-errno -ISources/CKernels/include -ISources/CKernels Sources/CKernels/*.c
//       scripts/quant_gemv_bench.c -o /tmp/quant_gemv_bench -lpthread && /tmp/quant_gemv_bench
#include "CKernels.h"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/// Best seconds of one call on copy c of the weights (c cycles over `copies`).
static double best_call(int fam, int format, long M, long N, long K, const float *A, float *C,
                        void **w, int copies) {
    double best = 1e30, start = now();
    for (int reps = 0, c = 0; reps < 3 || now() - start < 0.5; reps++, c = (c + 1) % copies) {
        double t0 = now();
        lora_gemv_abt(fam, format, M, 0, N, K, A, K, w[c], K, NULL, C, N, 0);
        double t = now() - t0;
        if (t < best) best = t;
    }
    return best;
}

static unsigned char *random_bytes(size_t n) {
    unsigned char *b = malloc(n);
    for (size_t i = 0; i < n; i++) b[i] = (unsigned char)((i * 2654435761u) >> 13);
    return b;
}

int main(int argc, char **argv) {
    int fam = argc > 1 ? atoi(argv[1]) : lora_family_best();
    if (!lora_family_available(fam)) { fprintf(stderr, "family %d not available\n", fam); return 1; }
    const long shapes[][2] = {{1536, 768}, {4096, 4096}};
    const char *names[] = {"nf4", "q5_0", "q5_1", "q4_K", "q5_K", "q6_K"};
    const int formats[] = {LORA_FORMAT_NF4, LORA_FORMAT_Q5_0, LORA_FORMAT_Q5_1, LORA_FORMAT_Q4_K,
                           LORA_FORMAT_Q5_K, LORA_FORMAT_Q6_K};
    const long block[] = {0, 32, 32, 256, 256, 256}, bytes_per_block[] = {0, 22, 24, 144, 176, 210};
    const long d_at[] = {0, 0, 0, 0, 0, 208};  // where the block's half d is
    printf("family %d, 1 thread; Gweights/s (best of ~0.5 s)\n", fam);
    for (int f = 0; f < 6; f++)
        for (int s = 0; s < 2; s++) {
            long N = shapes[s][0], K = shapes[s][1], n = N * K;
            size_t bytes = f == 0 ? (size_t)(n / 2 + n / 64) : (size_t)(n / block[f] * bytes_per_block[f]);
            int copies = (int)(256.0 * 1024 * 1024 / bytes) + 1;
            void **w = malloc(sizeof(void *) * copies);
            for (int c = 0; c < copies; c++) {
                if (f == 0) {  // NF4: codes, absmax codes, nested absmax, offset
                    lora_nf4 *d = malloc(sizeof *d);
                    float *nested = malloc(sizeof(float) * (n / 16384 + 1));
                    for (long i = 0; i <= n / 16384; i++) nested[i] = 0.02f;
                    *d = (lora_nf4){random_bytes(n / 2), random_bytes(n / 64), nested, 0.01f};
                    w[c] = d;
                } else {  // small finite halves for d (and m / dmin)
                    unsigned char *b = random_bytes(bytes);
                    for (size_t o = 0; o < bytes; o += bytes_per_block[f]) {
                        b[o + d_at[f]] = 0; b[o + d_at[f] + 1] = 0x20;
                        if (f == 2 || f == 3 || f == 4) { b[o + 2] = 0; b[o + 3] = 0xA0; }
                    }
                    w[c] = b;
                }
            }
            float *A = malloc(sizeof(float) * 4 * K), *C = malloc(sizeof(float) * 4 * N);
            for (long i = 0; i < 4 * K; i++) A[i] = (float)(i % 101) / 100.0f - 0.5f;
            for (long M = 1; M <= 4; M *= 4)
                printf("%-5s M=%ld N=%-5ld K=%-5ld %7.2f\n", names[f], M, N, K,
                       n / best_call(fam, formats[f], M, N, K, A, C, w, copies) / 1e9);
            for (int c = 0; c < copies; c++) {
                if (f == 0) {
                    lora_nf4 *d = w[c];
                    free((void *)d->q); free((void *)d->absmax8); free((void *)d->nested);
                }
                free(w[c]);
            }
            free(A); free(C); free(w);
        }
    return 0;
}
