#include "CUDAShim.h"
#include <dlfcn.h>
#include <stddef.h>

// libcudart is opened at run time so the build needs no CUDA toolkit.
static const char *status = "not probed";

int lora_cuda_device_count(void) {
    void *h = dlopen("libcudart.so", RTLD_LAZY | RTLD_LOCAL);
    if (!h) h = dlopen("libcudart.so.12", RTLD_LAZY | RTLD_LOCAL);
    if (!h) { status = "libcudart not found"; return 0; }
    typedef int (*count_fn)(int *);
    count_fn f = (count_fn)dlsym(h, "cudaGetDeviceCount");
    int n = 0;
    if (!f || f(&n) != 0) { status = "cudaGetDeviceCount failed"; n = 0; }
    else status = n > 0 ? "ok" : "no CUDA device";
    return n;
}

const char *lora_cuda_status(void) { return status; }
