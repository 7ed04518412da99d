#ifndef LORA_CKERNELS_H
#define LORA_CKERNELS_H
#include <stdint.h>
/// Returns 1 when the CPU supports AVX-512F (checked once at run time).
int lora_cpu_has_avx512f(void);
#endif
