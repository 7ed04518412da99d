#ifndef LORA_CUDASHIM_H
#define LORA_CUDASHIM_H
/// Optional CUDA support. The CPU path never depends on it: when libcudart cannot be
/// loaded, `lora_cuda_device_count` returns 0 and callers stay on the CPU.
int lora_cuda_device_count(void);
/// A human-readable reason when no device is usable (static string).
const char *lora_cuda_status(void);
#endif
