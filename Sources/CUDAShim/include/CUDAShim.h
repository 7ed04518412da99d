#ifndef LORA_CUDASHIM_H
#define LORA_CUDASHIM_H
// Optional CUDA support, loaded at run time with dlopen: the build needs no CUDA toolkit and
// no NVIDIA header (the ~40 signatures are declared in cuda.c). Three libraries, each found
// on its own: the driver API (libcuda.so.1, comes with the NVIDIA driver), NVRTC (compiles our
// kernels to CUBIN) and cuBLAS (the GEMMs; cublasLt is loaded first). The CPU path never
// depends on any of them.
//
// Every function returns the library's own status code (0 = success): CUresult for lora_cu_*,
// nvrtcResult for lora_nvrtc_*, cublasStatus_t for lora_cublas_*. A function whose library is
// not loaded returns LORA_CUDA_NOT_LOADED. Device pointers are CUdeviceptr (64-bit integers).
#include <stddef.h>
#include <stdint.h>

#define LORA_CUDA_NOT_LOADED (-1)

/// Which library `lora_cuda_load` looks for.
typedef enum { LORA_LIB_DRIVER = 0, LORA_LIB_NVRTC = 1, LORA_LIB_CUBLAS = 2 } lora_cuda_lib;

/// Looks for `lib` in each of `dirs` in order (an absolute path per soname), then by bare
/// soname (the ld.so cache, LD_LIBRARY_PATH). NVRTC and cuBLAS take the newest major version
/// (13, then 12) that is at most `max_major` (0 = any), so their code matches the driver.
/// Already loaded: returns 0 at once. Libraries are never unloaded (cuBLAS and the driver keep
/// threads and state that outlive a dlclose). On success `path` gets what was opened; on
/// failure `path` gets the last dlerror() and the result is non-zero:
///   1 = not found anywhere; 2 = found but a needed symbol is missing (named in `path`);
///   3 = found only with a major version above max_major (`path` names it).
int lora_cuda_load(lora_cuda_lib lib, const char *const *dirs, int ndirs, int max_major,
                   char *path, size_t path_len);
/// Whether `lib` is loaded, and (NVRTC, cuBLAS) the major version that was.
int lora_cuda_loaded_major(lora_cuda_lib lib);

// ---- Driver API (libcuda.so.1) ----
int lora_cu_init(void);
int lora_cu_driver_version(int *version);                 // e.g. 13000 = CUDA 13.0
int lora_cu_device_count(int *count);
/// Retains device `ordinal`'s primary context and makes it current on this thread; reports
/// its name, compute capability, memory and multiprocessor count.
int lora_cu_device_open(int ordinal, char *name, size_t name_len, int *cc_major, int *cc_minor,
                        size_t *total_mem, int *sm_count);
int lora_cu_device_close(int ordinal);
int lora_cu_set_current(int ordinal);
int lora_cu_synchronize(void);
int lora_cu_mem_info(size_t *free_bytes, size_t *total_bytes);
int lora_cu_malloc(uint64_t *dptr, size_t bytes);
int lora_cu_free(uint64_t dptr);
int lora_cu_htod(uint64_t dst, const void *src, size_t bytes);
int lora_cu_dtoh(void *dst, uint64_t src, size_t bytes);
int lora_cu_dtod(uint64_t dst, uint64_t src, size_t bytes);
int lora_cu_memset(uint64_t dst, unsigned char value, size_t bytes);
/// Loads a CUBIN (or PTX) image; `*module` is a CUmodule.
int lora_cu_module_load(const void *image, void **module);
int lora_cu_module_function(void *module, const char *name, void **function);
/// cuLaunchKernel on the default stream; `params[i]` points at argument i's value.
int lora_cu_launch(void *function, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                   unsigned bz, unsigned shared_bytes, void **params);
/// "CUDA_ERROR_NO_DEVICE: no CUDA-capable device is detected" (static; never NULL).
const char *lora_cu_error_string(int code);

// ---- NVRTC ----
int lora_nvrtc_version(int *major, int *minor);
/// Compiles one source for `sm` (e.g. 90). cubin != 0: a CUBIN for sm_XX (no driver JIT, see
/// the feasibility notes on PTX versions); else PTX for compute_XX. On return `*image` and
/// `*log` are malloc'ed (free with lora_cuda_free; either may be NULL) and `*image_len` set.
int lora_nvrtc_compile(const char *source, const char *name, int sm, int cubin,
                       void **image, size_t *image_len, char **log);
const char *lora_nvrtc_error_string(int code);

// ---- cuBLAS (column-major) ----
int lora_cublas_version(int *version);                    // major*10000 + minor*100 + patch
int lora_cublas_create(void **handle);
int lora_cublas_destroy(void *handle);
/// tf32 = 0: CUBLAS_DEFAULT_MATH (f32 products stay f32, for parity with the CPU).
int lora_cublas_set_math(void *handle, int tf32);
/// cublasGemmEx. Types: 0 = f32, 14 = bf16 (cudaDataType); compute: 68 = 32F, 69 = 32F pedantic,
/// 77 = 32F with TF32. trans: 0 = N, 1 = T. alpha and beta are host floats.
int lora_cublas_gemm_ex(void *handle, int transa, int transb, int m, int n, int k, float alpha,
                        uint64_t A, int atype, int lda, uint64_t B, int btype, int ldb, float beta,
                        uint64_t C, int ctype, int ldc, int compute);
int lora_cublas_gemm_strided_batched_ex(void *handle, int transa, int transb, int m, int n, int k,
                                        float alpha, uint64_t A, int atype, int lda, long long stride_a,
                                        uint64_t B, int btype, int ldb, long long stride_b, float beta,
                                        uint64_t C, int ctype, int ldc, long long stride_c, int batch,
                                        int compute);
const char *lora_cublas_status_string(int code);

void lora_cuda_free(void *p);

#endif
