// Turning `--device` into an execution context. The CPU stays the default whenever CUDA is
// missing: `auto` never fails for want of a GPU, `cuda` always does (one line naming what is
// missing). The GPU's model ops are not wired yet (the Backend seam passes host pointers; see
// docs/ARCHITECTURE.md, "CUDA"), so a usable GPU is reported and the model runs on the CPU.

/// `--device cuda` found a usable GPU, but the model cannot run there yet.
public struct CUDABackendIncomplete: Error, CustomStringConvertible {
    public let device: String
    public var description: String {
        "\(device) is usable, but the model does not run on CUDA yet: the Backend seam passes host pointers (docs/ARCHITECTURE.md, CUDA); use --device cpu or auto"
    }
}

public enum DeviceSelection {
    /// The context for `request`, and one line for stderr saying which device runs (nil when
    /// the user asked for the CPU and got it).
    public static func context(for request: DeviceRequest, threads: Int,
                               environment: [String: String]) throws -> (context: ExecutionContext, note: String?) {
        switch request {
        case .cpu:
            return (try ExecutionContext.cpu(threads: threads, environment: environment), nil)
        case .cuda(let index):
            let found = try CUDALibraries.loadAll(environment: environment, index: index)
            throw CUDABackendIncomplete(device: "cuda:\(index) (\(found.driverDescription) driver, \(found.deviceCount) device\(found.deviceCount == 1 ? "" : "s"))")
        case .auto:
            let ctx = try ExecutionContext.cpu(threads: threads, environment: environment)
            do {
                let found = try CUDALibraries.loadAll(environment: environment, index: 0)
                return (ctx, "device: cpu (\(ctx.backend.name)); cuda:0 was found (\(found.driverDescription) driver) but the model does not run on CUDA yet")
            } catch let e as CUDAUnavailable {
                return (ctx, "device: cpu (\(ctx.backend.name)); no GPU: \(e.reason.rawValue)")
            }
        }
    }
}
