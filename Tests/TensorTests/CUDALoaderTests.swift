import Foundation
import XCTest
@testable import Tensor

/// The CPU-side pieces of the CUDA backend: device spellings, the library search order, the
/// kernel cache's key and folder, and that the kernel list matches the source. (Compiling the
/// kernels is scripts/nvrtc_check.sh; running them is scripts/gpu_check.sh.)
final class CUDALoaderTests: XCTestCase {
    func testDeviceSpellings() {
        XCTAssertEqual(DeviceRequest("auto"), .auto)
        XCTAssertEqual(DeviceRequest("cpu"), .cpu)
        XCTAssertEqual(DeviceRequest("cuda"), .cuda(index: 0))
        XCTAssertEqual(DeviceRequest("cuda:7"), .cuda(index: 7))
        for bad in ["", "gpu", "CUDA", "cuda:", "cuda:-1", "cuda:+1", "cuda:x", "cuda:1024", " cuda", "cuda:1:2"] {
            XCTAssertNil(DeviceRequest(bad), bad)
        }
        for d: DeviceRequest in [.auto, .cpu, .cuda(index: 0), .cuda(index: 3)] { XCTAssertEqual(DeviceRequest(d.description), d) }
    }

    func testSearchOrder() {
        let env = ["LORA_CUDA_LIB_DIR": "/a:/b"]
        XCTAssertEqual(CUDALibraries.searchDirectories(environment: env, purelib: "/py"),
                       ["/a", "/b", "/py/nvidia/cu13/lib", "/py/nvidia/cuda_nvrtc/lib", "/py/nvidia/cublas/lib", "/usr/local/cuda/lib64"])
        XCTAssertEqual(CUDALibraries.searchDirectories(environment: [:], purelib: nil), ["/usr/local/cuda/lib64"])
        XCTAssertEqual(CUDALibraries.searchDirectories(environment: ["LORA_CUDA_LIB_DIR": ""], purelib: nil), ["/usr/local/cuda/lib64"])
    }

    func testCacheKeyAndFolder() {
        XCTAssertEqual(CUDAKernelCache.fnv1a(["x"]), CUDAKernelCache.fnv1a(["x"]))
        XCTAssertNotEqual(CUDAKernelCache.fnv1a(["ab", "c"]), CUDAKernelCache.fnv1a(["a", "bc"]))
        XCTAssertNotEqual(CUDAKernelCache.fnv1a([CUDAKernels.source, "nvrtc 13.5"]), CUDAKernelCache.fnv1a([CUDAKernels.source, "nvrtc 13.0"]))
        XCTAssertEqual(CUDAKernelCache.directory(environment: ["LORA_CUDA_CACHE": "/c", "HOME": "/h"]).path, "/c")
        XCTAssertEqual(CUDAKernelCache.directory(environment: ["XDG_CACHE_HOME": "/x", "HOME": "/h"]).path, "/x/lora/cuda")
        XCTAssertEqual(CUDAKernelCache.directory(environment: ["HOME": "/h"]).path, "/h/.cache/lora/cuda")
    }

    /// The names the backend resolves are exactly the source's entry points, and PTX parsing
    /// (what the compile check relies on) finds them.
    func testEntryPointsMatchTheSource() {
        let declared = CUDAKernels.source.components(separatedBy: "extern \"C\" __global__ void ").dropFirst()
            .map { String($0.prefix { $0 != "(" }) }
        XCTAssertEqual(declared.sorted(), CUDAKernels.entryPoints.sorted())
        XCTAssertEqual(Set(declared).count, declared.count, "no duplicates")
        let ptx = Array(".visible .entry rmsnorm_forward(\n\t.param .u64 a\n)\n.visible .entry add_f32(\n".utf8) + [0, 1, 2]
        XCTAssertEqual(CUDAKernelCache.ptxEntries(ptx), ["rmsnorm_forward", "add_f32"])
    }

    /// Loading with no driver anywhere fails with the typed reason and names the folders.
    func testNoDriverIsATypedError() throws {
        if dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL) != nil { throw XCTSkip("this machine has an NVIDIA driver") }
        var r = CUDALibraryReport()
        XCTAssertThrowsError(try CUDALibraries.loadDriver(environment: ["LORA_CUDA_LIB_DIR": "/nonexistent"], report: &r)) { e in
            let u = e as? CUDAUnavailable
            XCTAssertEqual(u?.reason, .noDriver)
            XCTAssertTrue(u?.description.contains("/nonexistent") ?? false, "\(e)")
        }
    }
}
