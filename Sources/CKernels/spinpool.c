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

// The job word: generation (24 bits), task count (20) and next task (20), in one atomic, so a
// claim checks all three at once. The caller waits only for tasks claimed and not yet done,
// never for a worker to check in: a worker that another process keeps off its core (on 2
// cores, the HTTP threads and clients of `lora serve`) costs the step nothing unless it holds a
// task, where the old "every worker signs off" barrier made the caller spin until the
// scheduler gave the worker back its core. A claim is only ever of the job now running, so
// fn and ctx, read after it, are that job's.
#define JOB_IDX_BITS 20
#define JOB_N_BITS 20
#define JOB_MAX_TASKS ((1L << JOB_N_BITS) - 1)
#define JOB_GEN(v) ((v) >> (JOB_IDX_BITS + JOB_N_BITS))
#define JOB_N(v) (((v) >> JOB_IDX_BITS) & JOB_MAX_TASKS)
#define JOB_IDX(v) ((v) & ((1UL << JOB_IDX_BITS) - 1))

struct lora_pool {
    int threads;                 // workers + the caller
    pthread_t *tid;
    _Atomic unsigned long job;   // generation | n | next
    _Atomic long done;           // tasks of the current job finished
    _Atomic int stop;
    unsigned long generation;    // the caller's count of jobs (wraps at 24 bits: harmless, see claim)
    lora_task_fn fn;
    void *ctx;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int sleepers;
    pthread_mutex_t busy;        // a second caller meanwhile runs its job itself
};

typedef struct { lora_pool *p; int index; } worker_arg;

/// Claims and runs tasks of the job with generation g until none is left. Tasks go in order to
/// whoever is free: a core that is slower this time (interrupts, another process) takes fewer.
/// Each task's output is its own, so which thread runs it changes no result.
static void run_share(lora_pool *p, unsigned long g) {
    unsigned long v = atomic_load_explicit(&p->job, memory_order_acquire);
    for (;;) {
        if (JOB_GEN(v) != g || JOB_IDX(v) >= JOB_N(v)) return;
        // A successful claim is of the job now running (its generation may have wrapped, but
        // then this is its task i all the same), so fn and ctx below are that job's: the caller
        // cannot publish another until this task is counted done.
        if (atomic_compare_exchange_weak_explicit(&p->job, &v, v + 1, memory_order_acq_rel, memory_order_acquire)) {
            p->fn(p->ctx, (long)JOB_IDX(v));
            atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
            v++;
        }
    }
}

static void *worker(void *arg) {
    worker_arg a = *(worker_arg *)arg;
    free(arg);
    lora_pool *p = a.p;
    unsigned long seen = JOB_GEN(atomic_load(&p->job));
    for (;;) {
        unsigned long g;
        int spins = 0;
        while ((g = JOB_GEN(atomic_load_explicit(&p->job, memory_order_acquire))) == seen) {
            if (atomic_load_explicit(&p->stop, memory_order_relaxed)) return NULL;
            if (++spins < SPIN_ROUNDS) { PAUSE(); continue; }
            pthread_mutex_lock(&p->mu);
            p->sleepers++;
            while (JOB_GEN(atomic_load(&p->job)) == seen && !atomic_load(&p->stop)) pthread_cond_wait(&p->cv, &p->mu);
            p->sleepers--;
            pthread_mutex_unlock(&p->mu);
            spins = 0;
        }
        if (atomic_load(&p->stop)) return NULL;
        seen = g;
        run_share(p, g);
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
    if (p->threads == 1 || n <= 1 || n > JOB_MAX_TASKS || pthread_mutex_trylock(&p->busy) != 0) {
        for (long i = 0; i < n; i++) fn(ctx, i);
        return;
    }
    p->fn = fn; p->ctx = ctx;
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    const unsigned long g = ++p->generation & ((1UL << 24) - 1);
    // Release: fn, ctx and done = 0 are seen by whoever claims a task of this job.
    atomic_store_explicit(&p->job, (g << (JOB_IDX_BITS + JOB_N_BITS)) | ((unsigned long)n << JOB_IDX_BITS), memory_order_release);
    pthread_mutex_lock(&p->mu);
    if (p->sleepers) pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    run_share(p, g);
    while (atomic_load_explicit(&p->done, memory_order_acquire) < n) PAUSE();
    pthread_mutex_unlock(&p->busy);
}

void lora_count_add(long *counter) { __atomic_add_fetch(counter, 1, __ATOMIC_RELEASE); }
void lora_count_wait(const long *counter, long target) {
    while (__atomic_load_n(counter, __ATOMIC_ACQUIRE) < target) PAUSE();
}
