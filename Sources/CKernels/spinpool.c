// A small worker pool for the decoding step's GEMVs: each is 0.1-1 MB of weights, tens of
// microseconds of work, so waking a thread through Dispatch (several microseconds, and a cold
// core) costs more than the second core gives. Workers spin for a while after each job, so the
// next one, microseconds later, starts at once; idle longer than that, they sleep on a condition
// variable and cost nothing. Owned by whoever creates it (the CPU backend): no global state.
#include "CKernels.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define PAUSE() _mm_pause()
#else
#define PAUSE() ((void)0)
#endif

#define SPIN_ROUNDS 200000   // ~1 ms of pause loops before a worker goes to sleep

struct lora_pool {
    int threads;                 // workers + the caller
    pthread_t *tid;
    _Atomic long generation;     // bumped per job
    _Atomic int pending;         // workers still running the current job
    _Atomic int stop;
    lora_task_fn fn;
    void *ctx;
    long n;
    _Atomic long next;           // the next task to hand out
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int sleepers;
    pthread_mutex_t busy;        // a second caller meanwhile runs its job itself
};

typedef struct { lora_pool *p; int index; } worker_arg;

static void run_share(lora_pool *p) {
    // Tasks in order to whoever is free: a core that is slower this time (interrupts, another
    // process) takes fewer, so both finish together. Each task's output is its own, so which
    // thread runs it changes no result.
    for (long i; (i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed)) < p->n;) p->fn(p->ctx, i);
}

static void *worker(void *arg) {
    worker_arg a = *(worker_arg *)arg;
    free(arg);
    lora_pool *p = a.p;
    long seen = 0;
    for (;;) {
        long g;
        int spins = 0;
        while ((g = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen) {
            if (atomic_load_explicit(&p->stop, memory_order_relaxed)) return NULL;
            if (++spins < SPIN_ROUNDS) { PAUSE(); continue; }
            pthread_mutex_lock(&p->mu);
            p->sleepers++;
            while (atomic_load(&p->generation) == seen && !atomic_load(&p->stop)) pthread_cond_wait(&p->cv, &p->mu);
            p->sleepers--;
            pthread_mutex_unlock(&p->mu);
            spins = 0;
        }
        if (atomic_load(&p->stop)) return NULL;
        seen = g;
        run_share(p);
        atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel);
    }
}

lora_pool *lora_pool_create(int threads) {
    lora_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->threads = threads < 1 ? 1 : threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    pthread_mutex_init(&p->busy, NULL);
    p->tid = calloc((size_t)p->threads, sizeof(pthread_t));
    for (int i = 1; i < p->threads; i++) {
        worker_arg *a = malloc(sizeof *a);
        a->p = p; a->index = i;
        pthread_create(&p->tid[i], NULL, worker, a);
    }
    return p;
}

void lora_pool_destroy(lora_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->threads; i++) pthread_join(p->tid[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->busy);
    free(p->tid);
    free(p);
}

int lora_pool_threads(const lora_pool *p) { return p->threads; }

void lora_pool_run(lora_pool *p, long n, lora_task_fn fn, void *ctx) {
    if (p->threads == 1 || n <= 1 || pthread_mutex_trylock(&p->busy) != 0) {
        for (long i = 0; i < n; i++) fn(ctx, i);
        return;
    }
    p->fn = fn; p->ctx = ctx; p->n = n;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    atomic_store_explicit(&p->pending, p->threads - 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    pthread_mutex_lock(&p->mu);
    if (p->sleepers) pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    run_share(p);
    while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0) PAUSE();
    pthread_mutex_unlock(&p->busy);
}

void lora_count_add(long *counter) { __atomic_add_fetch(counter, 1, __ATOMIC_RELEASE); }
void lora_count_wait(const long *counter, long target) {
    while (__atomic_load_n(counter, __ATOMIC_ACQUIRE) < target) PAUSE();
}
