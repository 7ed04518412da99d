import ArgumentParser
import Foundation
import LLaMA
import Tensor

/// Hidden: what CUDA this machine has, the NVRTC compile check (CI, no GPU needed) and the
/// kernel self-test (a GPU machine, scripts/gpu_check.sh).
struct CudaCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cuda-check",
        abstract: "Probe the CUDA libraries, compile the CUDA kernels with NVRTC, or test them against the CPU ops.",
        shouldDisplay: false)

    @Flag(help: "Only compile every kernel with NVRTC (no driver or GPU needed) for each --arch; check every entry point is in the PTX.")
    var compileOnly = false

    @Option(help: "Compute capabilities for --compile-only, comma-separated (e.g. 80,90).")
    var arch = "80,90"

    @Option(help: "--compile-only: compile this CUDA file instead of the built-in kernels (to try an edit, or to see a compile error).")
    var source: String?

    @Flag(help: "Print the built-in kernel source (one NVRTC compilation unit) and exit.")
    var printSource = false

    @Flag(help: "Open the GPU and compare every kernel with the CPU op it mirrors.")
    var selftest = false

    @Option(help: "The GPU for --selftest (cuda:N).")
    var device: DeviceRequest = .cuda(index: 0)

    func validate() throws {
        if compileOnly && selftest { throw ValidationError("--compile-only and --selftest exclude each other") }
        for a in arch.split(separator: ",") where Int(a).map({ $0 < 50 || $0 > 200 }) ?? true {
            throw ValidationError("--arch '\(a)': expected compute capabilities like 80,90")
        }
        if case .cuda = device {} else if selftest { throw ValidationError("--device: --selftest needs cuda or cuda:N") }
    }

    func run() throws {
        try runReportingErrors {
            let env = ProcessInfo.processInfo.environment
            if printSource { print(CUDAKernels.source, terminator: ""); return }
            if compileOnly { return try compile(env) }
            if selftest {
                guard case .cuda(let index) = device else { return }
                let t0 = Date()
                let dev = try CUDADevice(index: index, environment: env)
                print("device: \(dev.summary)")
                print(String(format: "kernels: %@ (%@), ready in %.2f s", dev.kernelFile.path, dev.kernelsWereCached ? "cached" : "compiled now", Date().timeIntervalSince(t0)))
                var test = CUDASelfTest(dev: dev, cpu: CPUBackend(pool: .allCores))
                if try !test.run() { throw ExitCode(1) }
                return
            }
            do {
                let r = try CUDALibraries.loadAll(environment: env, index: 0)
                print("driver: \(r.driverPath) (\(r.driverDescription), \(r.deviceCount) device\(r.deviceCount == 1 ? "" : "s"))")
                print("nvrtc: \(r.nvrtcPath) (\(r.nvrtcVersion.major).\(r.nvrtcVersion.minor))")
                print("cublas: \(r.cublasPath) (\(r.cublasVersion / 10000).\(r.cublasVersion / 100 % 100).\(r.cublasVersion % 100))")
            } catch let e as CUDAUnavailable {
                note("\(e)")
                throw ExitCode(1)
            }
        }
    }

    /// NVRTC alone: PTX for the lowest arch (entry points checked), then a CUBIN per arch.
    func compile(_ env: [String: String]) throws {
        var r = CUDALibraryReport()
        do { try CUDALibraries.loadNVRTC(environment: env, maxMajor: 0, report: &r) } catch let e as CUDAUnavailable {
            note("\(e)")
            throw ExitCode(1)
        }
        print("nvrtc: \(r.nvrtcPath) (\(r.nvrtcVersion.major).\(r.nvrtcVersion.minor))")
        let archs = arch.split(separator: ",").compactMap { Int($0) }
        let src = try source.map { try String(contentsOfFile: $0, encoding: .utf8) } ?? CUDAKernels.source
        var t = Date()
        let ptx = try CUDAKernelCache.compile(source: src, sm: archs.min()!, cubin: false)
        let missing = source != nil ? [] : Set(CUDAKernels.entryPoints).subtracting(CUDAKernelCache.ptxEntries(ptx))
        guard missing.isEmpty else {
            note("error: entry points missing from the PTX: \(missing.sorted().joined(separator: ", "))")
            throw ExitCode(1)
        }
        print(String(format: "compute_%d: PTX %d bytes, all %d entry points, %.2f s", archs.min()!, ptx.count, CUDAKernels.entryPoints.count, Date().timeIntervalSince(t)))
        for a in archs {
            t = Date()
            let cubin = try CUDAKernelCache.compile(source: src, sm: a, cubin: true)
            print(String(format: "sm_%d: CUBIN %d bytes, %.2f s", a, cubin.count, Date().timeIntervalSince(t)))
        }
    }
}
