#define _GNU_SOURCE
#include "CTestSupport.h"
#if defined(__linux__)
#include <sched.h>

static cpu_set_t saved;

int lora_test_pin_one_cpu(void) {
    if (sched_getaffinity(0, sizeof saved, &saved) != 0) return -1;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &saved)) {
            cpu_set_t one;
            CPU_ZERO(&one);
            CPU_SET(c, &one);
            return sched_setaffinity(0, sizeof one, &one) == 0 ? c : -1;
        }
    return -1;
}

void lora_test_unpin(void) { sched_setaffinity(0, sizeof saved, &saved); }
#else
int lora_test_pin_one_cpu(void) { return -1; }
void lora_test_unpin(void) {}
#endif
