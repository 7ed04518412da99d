import COpenBLAS
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

    /// "CUDA 13.0 driver, N devices" when the driver loads and sees a device, else why not
    /// (only the driver is loaded: NVRTC and cuBLAS are `lora cuda-check`'s business).
    public static func gpu(environment: [String: String]) -> String {
        var r = CUDALibraryReport()
        do {
            try CUDALibraries.loadDriver(environment: environment, report: &r)
            return "\(r.driverDescription) driver, \(r.deviceCount) device\(r.deviceCount == 1 ? "" : "s") (\(r.driverPath))"
        } catch let e as CUDAUnavailable {
            return "none (\(e.reason.rawValue))"
        } catch {
            return "none (\(error))"
        }
    }
}
