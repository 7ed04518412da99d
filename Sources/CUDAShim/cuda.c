// The CUDA libraries, opened at run time. No NVIDIA header is included: the few types and
// signatures we call are declared here (checked against the wheels' cuda.h, nvrtc.h and
// cublas_api.h; see ../shared/notes/wave2-feasibility.md section 1.3). Name traps:
//   - cuda.h #defines cuMemAlloc to cuMemAlloc_v2 (likewise MemFree, Memcpy*, MemGetInfo,
//     DevicePrimaryCtxRelease); dlsym("cuMemAlloc") would find the legacy 32-bit entry point.
//   - libcublas exports the handle-less legacy API too; only the _v2 names take a handle.
//   - libcublas NEEDs libcublasLt: open Lt first by absolute path so the soname is satisfied.
// The function tables are process-wide because the libraries are: dlopen'ed once, never
// closed; a mutex makes loading safe from any thread.
#define _GNU_SOURCE    // dladdr, Dl_info
#include "CUDAShim.h"
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext;
typedef void *CUmodule;
typedef void *CUfunction;
typedef void *CUstream;
typedef uint64_t CUdeviceptr;
typedef int nvrtcResult;
typedef void *nvrtcProgram;
typedef int cublasStatus_t;
typedef void *cublasHandle_t;

enum { CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75,
       CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76 };
enum { CUBLAS_DEFAULT_MATH = 0, CUBLAS_TF32_TENSOR_OP_MATH = 3 };
enum { CUBLAS_GEMM_DEFAULT = -1 };

// X(name, symbol, return, params)
#define DRIVER_FUNCS(X) \
    X(cuInit, "cuInit", CUresult, (unsigned)) \
    X(cuDriverGetVersion, "cuDriverGetVersion", CUresult, (int *)) \
    X(cuDeviceGetCount, "cuDeviceGetCount", CUresult, (int *)) \
    X(cuDeviceGet, "cuDeviceGet", CUresult, (CUdevice *, int)) \
    X(cuDeviceGetName, "cuDeviceGetName", CUresult, (char *, int, CUdevice)) \
    X(cuDeviceGetAttribute, "cuDeviceGetAttribute", CUresult, (int *, int, CUdevice)) \
    X(cuDeviceTotalMem, "cuDeviceTotalMem_v2", CUresult, (size_t *, CUdevice)) \
    X(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", CUresult, (CUcontext *, CUdevice)) \
    X(cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2", CUresult, (CUdevice)) \
    X(cuCtxSetCurrent, "cuCtxSetCurrent", CUresult, (CUcontext)) \
    X(cuCtxSynchronize, "cuCtxSynchronize", CUresult, (void)) \
    X(cuMemGetInfo, "cuMemGetInfo_v2", CUresult, (size_t *, size_t *)) \
    X(cuMemAlloc, "cuMemAlloc_v2", CUresult, (CUdeviceptr *, size_t)) \
    X(cuMemFree, "cuMemFree_v2", CUresult, (CUdeviceptr)) \
    X(cuMemcpyHtoD, "cuMemcpyHtoD_v2", CUresult, (CUdeviceptr, const void *, size_t)) \
    X(cuMemcpyDtoH, "cuMemcpyDtoH_v2", CUresult, (void *, CUdeviceptr, size_t)) \
    X(cuMemcpyDtoD, "cuMemcpyDtoD_v2", CUresult, (CUdeviceptr, CUdeviceptr, size_t)) \
    X(cuMemsetD8, "cuMemsetD8_v2", CUresult, (CUdeviceptr, unsigned char, size_t)) \
    X(cuModuleLoadData, "cuModuleLoadData", CUresult, (CUmodule *, const void *)) \
    X(cuModuleGetFunction, "cuModuleGetFunction", CUresult, (CUfunction *, CUmodule, const char *)) \
    X(cuLaunchKernel, "cuLaunchKernel", CUresult, (CUfunction, unsigned, unsigned, unsigned, unsigned, \
                                                   unsigned, unsigned, unsigned, CUstream, void **, void **)) \
    X(cuGetErrorName, "cuGetErrorName", CUresult, (CUresult, const char **)) \
    X(cuGetErrorString, "cuGetErrorString", CUresult, (CUresult, const char **))

#define NVRTC_FUNCS(X) \
    X(nvrtcVersion, "nvrtcVersion", nvrtcResult, (int *, int *)) \
    X(nvrtcCreateProgram, "nvrtcCreateProgram", nvrtcResult, (nvrtcProgram *, const char *, const char *, \
                                                               int, const char *const *, const char *const *)) \
    X(nvrtcCompileProgram, "nvrtcCompileProgram", nvrtcResult, (nvrtcProgram, int, const char *const *)) \
    X(nvrtcGetProgramLogSize, "nvrtcGetProgramLogSize", nvrtcResult, (nvrtcProgram, size_t *)) \
    X(nvrtcGetProgramLog, "nvrtcGetProgramLog", nvrtcResult, (nvrtcProgram, char *)) \
    X(nvrtcGetCUBINSize, "nvrtcGetCUBINSize", nvrtcResult, (nvrtcProgram, size_t *)) \
    X(nvrtcGetCUBIN, "nvrtcGetCUBIN", nvrtcResult, (nvrtcProgram, char *)) \
    X(nvrtcGetPTXSize, "nvrtcGetPTXSize", nvrtcResult, (nvrtcProgram, size_t *)) \
    X(nvrtcGetPTX, "nvrtcGetPTX", nvrtcResult, (nvrtcProgram, char *)) \
    X(nvrtcDestroyProgram, "nvrtcDestroyProgram", nvrtcResult, (nvrtcProgram *)) \
    X(nvrtcGetErrorString, "nvrtcGetErrorString", const char *, (nvrtcResult))

#define CUBLAS_FUNCS(X) \
    X(cublasCreate, "cublasCreate_v2", cublasStatus_t, (cublasHandle_t *)) \
    X(cublasDestroy, "cublasDestroy_v2", cublasStatus_t, (cublasHandle_t)) \
    X(cublasGetProperty, "cublasGetProperty", cublasStatus_t, (int, int *)) \
    X(cublasSetMathMode, "cublasSetMathMode", cublasStatus_t, (cublasHandle_t, int)) \
    X(cublasGemmEx, "cublasGemmEx", cublasStatus_t, (cublasHandle_t, int, int, int, int, int, const void *, \
        const void *, int, int, const void *, int, int, const void *, void *, int, int, int, int)) \
    X(cublasGemmStridedBatchedEx, "cublasGemmStridedBatchedEx", cublasStatus_t, (cublasHandle_t, int, int, \
        int, int, int, const void *, const void *, int, int, long long, const void *, int, int, long long, \
        const void *, void *, int, int, long long, int, int, int)) \
    X(cublasGetStatusString, "cublasGetStatusString", const char *, (cublasStatus_t))

#define DECLARE(name, sym, ret, params) ret (*name) params;
static struct { DRIVER_FUNCS(DECLARE) } cu;
static struct { NVRTC_FUNCS(DECLARE) } nvrtc;
static struct { CUBLAS_FUNCS(DECLARE) } cublas;
#undef DECLARE

static int loaded_major[3];          // 0 = not loaded; the driver counts as major 1
static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;

// Fills a table from `h`; on a missing symbol names it in `path` and returns 0.
#define RESOLVE(name, sym, ret, params) \
    if (!(tmp = dlsym(h, sym))) { snprintf(path, path_len, "symbol %s missing", sym); return 0; } \
    *(void **)(&table->name) = tmp;
static int resolve_driver(void *h, char *path, size_t path_len) {
    void *tmp; __typeof__(cu) *table = &cu; DRIVER_FUNCS(RESOLVE) return 1;
}
static int resolve_nvrtc(void *h, char *path, size_t path_len) {
    void *tmp; __typeof__(nvrtc) *table = &nvrtc; NVRTC_FUNCS(RESOLVE) return 1;
}
static int resolve_cublas(void *h, char *path, size_t path_len) {
    void *tmp; __typeof__(cublas) *table = &cublas; CUBLAS_FUNCS(RESOLVE) return 1;
}
#undef RESOLVE

static void set(char *dst, size_t len, const char *src) {
    if (len == 0) return;
    snprintf(dst, len, "%s", src ? src : "");
}

// dlopen `soname` from each dir, then bare. RTLD_NOW so a broken library fails here, not at
// first call; RTLD_LOCAL so its symbols do not leak into ours.
static void *open_in(const char *const *dirs, int ndirs, const char *soname, char *path, size_t path_len) {
    char full[4096];
    for (int i = 0; i < ndirs; i++) {
        if (!dirs[i] || !dirs[i][0]) continue;
        snprintf(full, sizeof full, "%s/%s", dirs[i], soname);
        void *h = dlopen(full, RTLD_NOW | RTLD_LOCAL);
        if (h) { set(path, path_len, full); return h; }
    }
    void *h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
    if (h) {
        // Report where the loader found it.
        Dl_info info;
        void *any = dlsym(h, "cuInit");
        if (!any) any = dlsym(h, "nvrtcVersion");
        if (!any) any = dlsym(h, "cublasCreate_v2");
        if (any && dladdr(any, &info) && info.dli_fname) set(path, path_len, info.dli_fname);
        else set(path, path_len, soname);
        return h;
    }
    set(path, path_len, dlerror());
    return NULL;
}

int lora_cuda_load(lora_cuda_lib lib, const char *const *dirs, int ndirs, int max_major,
                   char *path, size_t path_len) {
    pthread_mutex_lock(&load_lock);
    int rc = 1;
    if (loaded_major[lib]) { rc = 0; goto done; }
    if (lib == LORA_LIB_DRIVER) {
        void *h = open_in(dirs, ndirs, "libcuda.so.1", path, path_len);
        if (!h) goto done;
        if (!resolve_driver(h, path, path_len)) { rc = 2; goto done; }
        loaded_major[lib] = 1; rc = 0; goto done;
    }
    static const int majors[] = {13, 12};
    int too_new = 0;
    char name[64], lt[64];
    for (unsigned i = 0; i < sizeof majors / sizeof *majors; i++) {
        int major = majors[i];
        if (lib == LORA_LIB_NVRTC) {
            snprintf(name, sizeof name, "libnvrtc.so.%d", major);
            void *h = open_in(dirs, ndirs, name, path, path_len);
            if (!h) continue;
            if (max_major && major > max_major) { too_new = major; continue; }
            if (!resolve_nvrtc(h, path, path_len)) { rc = 2; goto done; }
        } else {
            snprintf(lt, sizeof lt, "libcublasLt.so.%d", major);
            snprintf(name, sizeof name, "libcublas.so.%d", major);
            if (!open_in(dirs, ndirs, lt, path, path_len)) continue;
            void *h = open_in(dirs, ndirs, name, path, path_len);
            if (!h) continue;
            if (max_major && major > max_major) { too_new = major; continue; }
            if (!resolve_cublas(h, path, path_len)) { rc = 2; goto done; }
        }
        loaded_major[lib] = major; rc = 0; goto done;
    }
    if (too_new) {
        snprintf(path, path_len, "only %s.%d was found, newer than the driver's CUDA %d",
                 lib == LORA_LIB_NVRTC ? "libnvrtc.so" : "libcublas.so", too_new, max_major);
        rc = 3;
    }
done:
    pthread_mutex_unlock(&load_lock);
    return rc;
}

int lora_cuda_loaded_major(lora_cuda_lib lib) { return loaded_major[lib]; }

#define NEED(lib) if (!loaded_major[lib]) return LORA_CUDA_NOT_LOADED

// ---- Driver ----
int lora_cu_init(void) { NEED(LORA_LIB_DRIVER); return cu.cuInit(0); }
int lora_cu_driver_version(int *v) { NEED(LORA_LIB_DRIVER); *v = 0; return cu.cuDriverGetVersion(v); }
int lora_cu_device_count(int *n) {
    NEED(LORA_LIB_DRIVER);
    *n = 0;    // left unwritten by some failures
    int rc = cu.cuDeviceGetCount(n);
    if (rc) *n = 0;
    return rc;
}

int lora_cu_device_open(int ordinal, char *name, size_t name_len, int *cc_major, int *cc_minor,
                        size_t *total_mem, int *sm_count) {
    NEED(LORA_LIB_DRIVER);
    CUdevice dev;
    CUcontext ctx;
    int rc;
    if ((rc = cu.cuDeviceGet(&dev, ordinal))) return rc;
    if (name && name_len) {
        name[0] = 0;
        if ((rc = cu.cuDeviceGetName(name, (int)name_len, dev))) return rc;
    }
    if ((rc = cu.cuDeviceGetAttribute(cc_major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev))) return rc;
    if ((rc = cu.cuDeviceGetAttribute(cc_minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev))) return rc;
    if ((rc = cu.cuDeviceGetAttribute(sm_count, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev))) return rc;
    if ((rc = cu.cuDeviceTotalMem(total_mem, dev))) return rc;
    if ((rc = cu.cuDevicePrimaryCtxRetain(&ctx, dev))) return rc;
    return cu.cuCtxSetCurrent(ctx);
}

int lora_cu_device_close(int ordinal) {
    NEED(LORA_LIB_DRIVER);
    CUdevice dev;
    int rc = cu.cuDeviceGet(&dev, ordinal);
    return rc ? rc : cu.cuDevicePrimaryCtxRelease(dev);
}

// Worker threads start with no current context; the primary context is shared, so retaining
// it again is cheap and balanced by nothing (it lives until the process ends).
int lora_cu_set_current(int ordinal) {
    NEED(LORA_LIB_DRIVER);
    CUdevice dev;
    CUcontext ctx;
    int rc;
    if ((rc = cu.cuDeviceGet(&dev, ordinal))) return rc;
    if ((rc = cu.cuDevicePrimaryCtxRetain(&ctx, dev))) return rc;
    rc = cu.cuCtxSetCurrent(ctx);
    cu.cuDevicePrimaryCtxRelease(dev);
    return rc;
}

int lora_cu_synchronize(void) { NEED(LORA_LIB_DRIVER); return cu.cuCtxSynchronize(); }
int lora_cu_mem_info(size_t *f, size_t *t) { NEED(LORA_LIB_DRIVER); return cu.cuMemGetInfo(f, t); }
int lora_cu_malloc(uint64_t *p, size_t n) { NEED(LORA_LIB_DRIVER); *p = 0; return cu.cuMemAlloc(p, n ? n : 1); }
int lora_cu_free(uint64_t p) { NEED(LORA_LIB_DRIVER); return p ? cu.cuMemFree(p) : 0; }
int lora_cu_htod(uint64_t d, const void *s, size_t n) { NEED(LORA_LIB_DRIVER); return n ? cu.cuMemcpyHtoD(d, s, n) : 0; }
int lora_cu_dtoh(void *d, uint64_t s, size_t n) { NEED(LORA_LIB_DRIVER); return n ? cu.cuMemcpyDtoH(d, s, n) : 0; }
int lora_cu_dtod(uint64_t d, uint64_t s, size_t n) { NEED(LORA_LIB_DRIVER); return n ? cu.cuMemcpyDtoD(d, s, n) : 0; }
int lora_cu_memset(uint64_t d, unsigned char v, size_t n) { NEED(LORA_LIB_DRIVER); return n ? cu.cuMemsetD8(d, v, n) : 0; }
int lora_cu_module_load(const void *image, void **m) { NEED(LORA_LIB_DRIVER); return cu.cuModuleLoadData((CUmodule *)m, image); }
int lora_cu_module_function(void *m, const char *name, void **f) {
    NEED(LORA_LIB_DRIVER);
    return cu.cuModuleGetFunction((CUfunction *)f, (CUmodule)m, name);
}
int lora_cu_launch(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned shared_bytes, void **params) {
    NEED(LORA_LIB_DRIVER);
    return cu.cuLaunchKernel((CUfunction)f, gx, gy, gz, bx, by, bz, shared_bytes, NULL, params, NULL);
}

const char *lora_cu_error_string(int code) {
    static __thread char buf[256];
    if (code == LORA_CUDA_NOT_LOADED) return "the CUDA driver library is not loaded";
    const char *name = NULL, *text = NULL;
    if (loaded_major[LORA_LIB_DRIVER]) { cu.cuGetErrorName(code, &name); cu.cuGetErrorString(code, &text); }
    snprintf(buf, sizeof buf, "%s (%d): %s", name ? name : "CUDA error", code, text ? text : "unknown");
    return buf;
}

// ---- NVRTC ----
int lora_nvrtc_version(int *major, int *minor) { NEED(LORA_LIB_NVRTC); return nvrtc.nvrtcVersion(major, minor); }

int lora_nvrtc_compile(const char *source, const char *name, int sm, int cubin, void **image,
                       size_t *image_len, char **log) {
    NEED(LORA_LIB_NVRTC);
    *image = NULL; *image_len = 0; *log = NULL;
    nvrtcProgram prog;
    int rc = nvrtc.nvrtcCreateProgram(&prog, source, name, 0, NULL, NULL);
    if (rc) return rc;
    char arch[64];
    // sm_XX asks for a CUBIN (SASS), compute_XX for PTX.
    snprintf(arch, sizeof arch, "--gpu-architecture=%s_%d", cubin ? "sm" : "compute", sm);
    // No -I: the kernels include no header (bf16 is done with bit operations).
    const char *opts[] = {arch, "--std=c++17", "--device-as-default-execution-space"};
    rc = nvrtc.nvrtcCompileProgram(prog, 3, opts);
    size_t n = 0;
    if (nvrtc.nvrtcGetProgramLogSize(prog, &n) == 0 && n > 1) {
        *log = malloc(n);
        if (*log && nvrtc.nvrtcGetProgramLog(prog, *log)) { free(*log); *log = NULL; }
    }
    if (rc == 0) {
        rc = cubin ? nvrtc.nvrtcGetCUBINSize(prog, &n) : nvrtc.nvrtcGetPTXSize(prog, &n);
        if (rc == 0) {
            *image = malloc(n ? n : 1);
            rc = cubin ? nvrtc.nvrtcGetCUBIN(prog, *image) : nvrtc.nvrtcGetPTX(prog, *image);
            if (rc) { free(*image); *image = NULL; } else *image_len = n;
        }
    }
    nvrtc.nvrtcDestroyProgram(&prog);
    return rc;
}

const char *lora_nvrtc_error_string(int code) {
    if (code == LORA_CUDA_NOT_LOADED) return "NVRTC is not loaded";
    return loaded_major[LORA_LIB_NVRTC] ? nvrtc.nvrtcGetErrorString(code) : "NVRTC error";
}

// ---- cuBLAS ----
int lora_cublas_version(int *v) {
    NEED(LORA_LIB_CUBLAS);
    int a = 0, b = 0, c = 0, rc;
    // libraryPropertyType: MAJOR_VERSION = 0, MINOR_VERSION = 1, PATCH_LEVEL = 2
    if ((rc = cublas.cublasGetProperty(0, &a)) || (rc = cublas.cublasGetProperty(1, &b)) ||
        (rc = cublas.cublasGetProperty(2, &c))) return rc;
    *v = a * 10000 + b * 100 + c;
    return 0;
}
int lora_cublas_create(void **h) { NEED(LORA_LIB_CUBLAS); return cublas.cublasCreate(h); }
int lora_cublas_destroy(void *h) { NEED(LORA_LIB_CUBLAS); return cublas.cublasDestroy(h); }
int lora_cublas_set_math(void *h, int tf32) {
    NEED(LORA_LIB_CUBLAS);
    return cublas.cublasSetMathMode(h, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH);
}
int lora_cublas_gemm_ex(void *h, int ta, int tb, int m, int n, int k, float alpha, uint64_t A, int at, int lda,
                        uint64_t B, int bt, int ldb, float beta, uint64_t C, int ct, int ldc, int compute) {
    NEED(LORA_LIB_CUBLAS);
    return cublas.cublasGemmEx(h, ta, tb, m, n, k, &alpha, (const void *)(uintptr_t)A, at, lda,
                               (const void *)(uintptr_t)B, bt, ldb, &beta, (void *)(uintptr_t)C, ct, ldc,
                               compute, CUBLAS_GEMM_DEFAULT);
}
int lora_cublas_gemm_strided_batched_ex(void *h, int ta, int tb, int m, int n, int k, float alpha, uint64_t A,
                                        int at, int lda, long long sa, uint64_t B, int bt, int ldb, long long sb,
                                        float beta, uint64_t C, int ct, int ldc, long long sc, int batch,
                                        int compute) {
    NEED(LORA_LIB_CUBLAS);
    return cublas.cublasGemmStridedBatchedEx(h, ta, tb, m, n, k, &alpha, (const void *)(uintptr_t)A, at, lda, sa,
                                             (const void *)(uintptr_t)B, bt, ldb, sb, &beta,
                                             (void *)(uintptr_t)C, ct, ldc, sc, batch, compute,
                                             CUBLAS_GEMM_DEFAULT);
}
const char *lora_cublas_status_string(int code) {
    if (code == LORA_CUDA_NOT_LOADED) return "cuBLAS is not loaded";
    return loaded_major[LORA_LIB_CUBLAS] ? cublas.cublasGetStatusString(code) : "cuBLAS error";
}

void lora_cuda_free(void *p) { free(p); }
