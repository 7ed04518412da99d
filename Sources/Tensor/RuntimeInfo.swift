import COpenBLAS
import CUDAShim
import Foundation

/// What the running binary computes with, for `lora --version` and `lora info`.
public enum RuntimeInfo {
    /// OpenBLAS's own build line and the core it picked, e.g.
    /// "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Haswell MAX_THREADS=64 (core Haswell)".
    public static var blas: String {
        let config = openblas_get_config().map { String(cString: $0) } ?? "OpenBLAS"
        let core = openblas_get_corename().map { String(cString: $0) } ?? "?"
        return "\(config.trimmingCharacters(in: .whitespaces)) (core \(core))"
    }

    /// "CUDA, N devices" when libcudart loads and sees a device, else why not.
    public static var gpu: String {
        let n = lora_cuda_device_count()
        if n > 0 { return "CUDA runtime loaded, \(n) device\(n == 1 ? "" : "s")" }
        return "none (\(lora_cuda_status().map { String(cString: $0) } ?? "no CUDA runtime"))"
    }
}
