#if defined(__linux__)
#define _GNU_SOURCE
#include <sched.h>
#endif
#include <unistd.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include "CKernels.h"
// CPU feature detection; kernels pick their path from it at run time.
int lora_cpu_has_avx512f(void) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? 1 : 0;
#else
    return 0;
#endif
}

/// The CPUs this process may run on: its affinity mask on Linux (what `taskset`, `nproc` and
/// container cpusets give), else the online CPUs. Spinning workers beyond this count wait on
/// each other for whole scheduler slices.
int lora_cpu_count(void) {
#if defined(__linux__)
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        const int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
#endif
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/// Returns freed heap pages to the system (glibc's malloc_trim), e.g. after a load that copied
/// its weights elsewhere; large frees below glibc's dynamic mmap threshold otherwise stay in the
/// process's resident set.
void lora_release_free_memory(void) {
#if defined(__GLIBC__)
    malloc_trim(0);
#endif
}
