// A stand-in libcuda.so.1 for the CPU-only tests of the loader's error paths (DeviceTests):
// it exports every driver symbol Sources/CUDAShim resolves and answers as a machine would.
//   -DNO_DEVICE   cuInit fails with CUDA_ERROR_NO_DEVICE (100)
//   -DDRIVER=N    cuInit succeeds, one device, cuDriverGetVersion = N (e.g. 12040)
// Every other call fails with CUDA_ERROR_NOT_SUPPORTED (801): the tests never get that far.
#ifndef DRIVER
#define DRIVER 13000
#endif
typedef unsigned long long u64;
typedef unsigned long size_t;
int cuInit(unsigned f) { (void)f;
#ifdef NO_DEVICE
    return 100;
#else
    return 0;
#endif
}
int cuDriverGetVersion(int *v) { *v = DRIVER; return 0; }
int cuDeviceGetCount(int *n) { *n = 1; return 0; }
int cuGetErrorName(int e, const char **s) { *s = e == 100 ? "CUDA_ERROR_NO_DEVICE" : "CUDA_ERROR_NOT_SUPPORTED"; return 0; }
int cuGetErrorString(int e, const char **s) { *s = e == 100 ? "no CUDA-capable device is detected" : "operation not supported"; return 0; }
#define UNSUPPORTED(name) int name(void) { return 801; }
UNSUPPORTED(cuDeviceGet) UNSUPPORTED(cuDeviceGetName) UNSUPPORTED(cuDeviceGetAttribute) UNSUPPORTED(cuDeviceTotalMem_v2)
UNSUPPORTED(cuDevicePrimaryCtxRetain) UNSUPPORTED(cuDevicePrimaryCtxRelease_v2) UNSUPPORTED(cuCtxSetCurrent)
UNSUPPORTED(cuCtxSynchronize) UNSUPPORTED(cuMemGetInfo_v2) UNSUPPORTED(cuMemAlloc_v2) UNSUPPORTED(cuMemFree_v2)
UNSUPPORTED(cuMemcpyHtoD_v2) UNSUPPORTED(cuMemcpyDtoH_v2) UNSUPPORTED(cuMemcpyDtoD_v2) UNSUPPORTED(cuMemsetD8_v2)
UNSUPPORTED(cuModuleLoadData) UNSUPPORTED(cuModuleGetFunction) UNSUPPORTED(cuLaunchKernel)
