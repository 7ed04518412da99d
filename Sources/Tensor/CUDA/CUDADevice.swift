import CUDAShim
import Foundation

/// A CUDA call failed; names the call and the library's message.
public struct CUDAError: Error, CustomStringConvertible {
    public let call: String
    public let message: String
    public var description: String { "\(call): \(message)" }
}

@inline(__always) func check(_ rc: Int32, _ call: @autoclosure () -> String) throws {
    if rc != 0 { throw CUDAError(call: call(), message: String(cString: lora_cu_error_string(rc))) }
}
@inline(__always) func checkBLAS(_ rc: Int32, _ call: @autoclosure () -> String) throws {
    if rc != 0 { throw CUDAError(call: call(), message: String(cString: lora_cublas_status_string(rc))) }
}

/// A device buffer (CUdeviceptr); freed with its owner.
public final class CUDABuffer: @unchecked Sendable {
    public let ptr: UInt64
    public let bytes: Int
    public init(bytes: Int) throws {
        var p: UInt64 = 0
        try check(lora_cu_malloc(&p, bytes), "cuMemAlloc(\(bytes) bytes)")
        ptr = p; self.bytes = bytes
    }
    deinit { _ = lora_cu_free(ptr) }

    public func upload(_ src: UnsafeRawPointer, bytes n: Int, offset: Int = 0) throws {
        precondition(offset + n <= bytes)
        try check(lora_cu_htod(ptr + UInt64(offset), src, n), "cuMemcpyHtoD")
    }
    public func download(_ dst: UnsafeMutableRawPointer, bytes n: Int, offset: Int = 0) throws {
        precondition(offset + n <= bytes)
        try check(lora_cu_dtoh(dst, ptr + UInt64(offset), n), "cuMemcpyDtoH")
    }
    public func zero() throws { try check(lora_cu_memset(ptr, 0, bytes), "cuMemsetD8") }

    /// A buffer holding `values`.
    public static func from<T>(_ values: [T]) throws -> CUDABuffer {
        let b = try CUDABuffer(bytes: max(1, values.count * MemoryLayout<T>.stride))
        try values.withUnsafeBytes { try b.upload($0.baseAddress!, bytes: $0.count) }
        return b
    }
    public func read<T>(_ type: T.Type, count: Int) throws -> [T] where T: Numeric {
        var out = [T](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { try download($0.baseAddress!, bytes: $0.count) }
        return out
    }
}

/// One kernel argument, passed by value to cuLaunchKernel.
public enum KernelArg {
    case buffer(CUDABuffer?)    // nil = a null pointer
    case i32(Int32)
    case i64(Int64)
    case f32(Float)

    public static func int(_ v: Int) -> KernelArg { .i32(Int32(v)) }
}

/// One GPU: its primary context, our kernels loaded from the CUBIN, and a cuBLAS handle.
/// Everything is issued on the default stream in order; `synchronize` waits for it.
public final class CUDADevice: @unchecked Sendable {
    public let ordinal: Int
    public let name: String
    public let computeCapability: (major: Int, minor: Int)
    public let totalMemory: Int
    public let multiprocessors: Int
    public let libraries: CUDALibraryReport
    /// Where the CUBIN came from (the cache file) and whether it was already there.
    public let kernelFile: URL
    public let kernelsWereCached: Bool
    private var functions: [String: UnsafeMutableRawPointer] = [:]
    let blas: UnsafeMutableRawPointer

    /// sm_XX for NVRTC.
    public var sm: Int { computeCapability.major * 10 + computeCapability.minor }

    /// Loads the libraries (throws `CUDAUnavailable` naming what is missing), opens the device
    /// and loads the kernels (compiling them at first use).
    public init(index: Int, environment: [String: String]) throws {
        libraries = try CUDALibraries.loadAll(environment: environment, index: index)
        ordinal = index
        var nameBuf = [CChar](repeating: 0, count: 256)
        var ccMajor: Int32 = 0, ccMinor: Int32 = 0, sms: Int32 = 0
        var total = 0
        try check(lora_cu_device_open(Int32(index), &nameBuf, nameBuf.count, &ccMajor, &ccMinor, &total, &sms), "open cuda:\(index)")
        name = String(cString: nameBuf)
        computeCapability = (Int(ccMajor), Int(ccMinor))
        totalMemory = total
        multiprocessors = Int(sms)
        let sm = Int(ccMajor) * 10 + Int(ccMinor)
        let c = try CUDAKernelCache.cubin(source: CUDAKernels.source, sm: sm, nvrtcVersion: libraries.nvrtcVersion, environment: environment)
        kernelFile = c.path
        kernelsWereCached = c.cached
        var module: UnsafeMutableRawPointer?
        try c.image.withUnsafeBytes { try check(lora_cu_module_load($0.baseAddress!, &module), "cuModuleLoadData(\(c.path.path))") }
        for entry in CUDAKernels.entryPoints {
            var f: UnsafeMutableRawPointer?
            try check(lora_cu_module_function(module, entry, &f), "cuModuleGetFunction(\(entry))")
            functions[entry] = f!
        }
        var h: UnsafeMutableRawPointer?
        try checkBLAS(lora_cublas_create(&h), "cublasCreate")
        blas = h!
        // f32 GEMMs stay f32 (no TF32), for parity with the CPU.
        try checkBLAS(lora_cublas_set_math(blas, 0), "cublasSetMathMode")
    }

    deinit {
        _ = lora_cublas_destroy(blas)
        _ = lora_cu_device_close(Int32(ordinal))
    }

    /// "cuda:0 (NVIDIA H200, sm_90, 139.8 GiB; CUDA 13.0 driver, NVRTC 13.5, cuBLAS 13.1.0)"
    public var summary: String {
        let l = libraries
        return String(format: "cuda:%d (%@, sm_%d, %.1f GiB; %@ driver, NVRTC %d.%d, cuBLAS %d.%d.%d)", ordinal, name, sm,
                      Double(totalMemory) / 1_073_741_824, l.driverDescription, l.nvrtcVersion.major, l.nvrtcVersion.minor,
                      l.cublasVersion / 10000, l.cublasVersion / 100 % 100, l.cublasVersion % 100)
    }

    /// Makes this device's context current on the calling thread (worker threads start with none).
    public func makeCurrent() throws { try check(lora_cu_set_current(Int32(ordinal)), "cuCtxSetCurrent") }

    public func synchronize() throws { try check(lora_cu_synchronize(), "cuCtxSynchronize") }

    public func memoryInfo() throws -> (free: Int, total: Int) {
        var f = 0, t = 0
        try check(lora_cu_mem_info(&f, &t), "cuMemGetInfo")
        return (f, t)
    }

    /// Launches `kernel` on a 1-D grid.
    public func launch(_ kernel: String, grid: Int, block: Int, _ args: [KernelArg]) throws {
        guard let f = functions[kernel] else { throw CUDAError(call: "launch", message: "no kernel named \(kernel)") }
        guard grid > 0 else { return }
        // Each argument's value lives in its own 8-byte slot for the call.
        let slots = UnsafeMutableRawPointer.allocate(byteCount: max(1, args.count) * 8, alignment: 8)
        defer { slots.deallocate() }
        var params = [UnsafeMutableRawPointer?]()
        for (i, a) in args.enumerated() {
            let s = slots + i * 8
            switch a {
            case .buffer(let b): s.storeBytes(of: b?.ptr ?? 0, as: UInt64.self)
            case .i32(let v): s.storeBytes(of: v, as: Int32.self)
            case .i64(let v): s.storeBytes(of: v, as: Int64.self)
            case .f32(let v): s.storeBytes(of: v, as: Float.self)
            }
            params.append(s)
        }
        try params.withUnsafeMutableBufferPointer { p in
            try check(lora_cu_launch(f, UInt32(grid), 1, 1, UInt32(block), 1, 1, 0, p.baseAddress), "launch \(kernel)")
        }
    }

    /// Blocks for a grid-stride loop over `count` elements.
    public func gridFor(_ count: Int, block: Int = 256) -> Int { max(1, min((count + block - 1) / block, multiprocessors * 32)) }

    /// cuBLAS data types (cudaDataType) and compute types.
    public enum DataType: Int32 { case f32 = 0, bf16 = 14 }

    /// Row-major C[M, N] = alpha op(A) op(B) + beta C through column-major cuBLAS: the
    /// row-major product is the column-major C^T = op(B)^T op(A)^T, so A and B swap places and
    /// M and N swap; lda/ldb/ldc are the row-major leading dimensions.
    public func gemm(transA: Bool, transB: Bool, M: Int, N: Int, K: Int, alpha: Float,
                     A: CUDABuffer, aType: DataType = .f32, lda: Int, B: CUDABuffer, bType: DataType = .f32, ldb: Int,
                     beta: Float, C: CUDABuffer, cType: DataType = .f32, ldc: Int, tf32: Bool = false) throws {
        try checkBLAS(lora_cublas_gemm_ex(blas, transB ? 1 : 0, transA ? 1 : 0, Int32(N), Int32(M), Int32(K), alpha,
                                          B.ptr, bType.rawValue, Int32(ldb), A.ptr, aType.rawValue, Int32(lda), beta,
                                          C.ptr, cType.rawValue, Int32(ldc), tf32 ? 77 : 68),
                      "cublasGemmEx(M \(M), N \(N), K \(K))")
    }
}
