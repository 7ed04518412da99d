import CUDAShim
import Foundation

// Finding and loading the CUDA libraries (Sources/CUDAShim does the dlopen). Search order,
// the same for all three libraries (the feasibility notes, section 1.5):
//   1. $LORA_CUDA_LIB_DIR (one folder, or several separated by ':')
//   2. <python3 purelib>/nvidia/cu13/lib, then the cu12 wheels' nvidia/{cuda_nvrtc,cublas}/lib
//   3. /usr/local/cuda/lib64
//   4. the bare soname (ld.so cache, LD_LIBRARY_PATH; where the driver's libcuda.so.1 lives)
// Python is asked for its purelib only once the driver has loaded, so a machine with no GPU
// never starts a python3 process.

/// Why CUDA cannot be used; `description` is the one line `--device cuda` prints.
public struct CUDAUnavailable: Error, CustomStringConvertible, Equatable {
    public enum Reason: String, Sendable {
        case noDriver = "no NVIDIA driver"
        case driverError = "the CUDA driver failed"
        case noDevice = "no CUDA device"
        case noSuchDevice = "no such CUDA device"
        case driverTooOld = "NVIDIA driver too old"
        case noNVRTC = "no NVRTC"
        case noCUBLAS = "no cuBLAS"
    }
    public let reason: Reason
    public let detail: String
    public init(_ reason: Reason, _ detail: String) { self.reason = reason; self.detail = detail }
    public var description: String { "CUDA is not usable: \(reason.rawValue) (\(detail))" }
}

/// What loaded, for logs and `lora cuda-info`.
public struct CUDALibraryReport: Sendable {
    public var driverPath = "", nvrtcPath = "", cublasPath = ""
    /// cuDriverGetVersion: 13000 = CUDA 13.0.
    public var driverVersion = 0
    public var deviceCount = 0
    public var nvrtcVersion = (major: 0, minor: 0)
    /// major * 10000 + minor * 100 + patch.
    public var cublasVersion = 0

    public init() {}

    public var driverDescription: String { "CUDA \(driverVersion / 1000).\(driverVersion % 1000 / 10)" }
}

public enum CUDALibraries {
    /// The folders searched before the bare soname, in order. `purelib` is called only when
    /// the caller needs more than the driver.
    public static func searchDirectories(environment: [String: String], purelib: String?) -> [String] {
        var dirs: [String] = []
        if let d = environment["LORA_CUDA_LIB_DIR"], !d.isEmpty {
            dirs += d.split(separator: ":").map(String.init)
        }
        if let p = purelib {
            dirs += ["nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib", "nvidia/cublas/lib"].map { p + "/" + $0 }
        }
        dirs.append("/usr/local/cuda/lib64")
        return dirs
    }

    /// `python3`'s purelib (site-packages) folder, or nil when there is no python3. The
    /// interpreter is $LORA_PYTHON when set, else python3 on PATH.
    public static func pythonPurelib(environment: [String: String]) -> String? {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = [environment["LORA_PYTHON"] ?? "python3", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        do { try p.run() } catch { return nil }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { return nil }
        let s = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return s.isEmpty ? nil : s
    }

    /// dlopen one library through the search order; the message names what was searched.
    static func load(_ lib: lora_cuda_lib, dirs: [String], maxMajor: Int) -> (rc: Int32, path: String) {
        var buf = [CChar](repeating: 0, count: 4096)
        let rc = withCStrings(dirs) { ptrs in
            lora_cuda_load(lib, ptrs, Int32(dirs.count), Int32(maxMajor), &buf, buf.count)
        }
        return (rc, String(cString: buf))
    }

    /// Loads the driver, initialises it and counts devices.
    public static func loadDriver(environment: [String: String], report: inout CUDALibraryReport) throws {
        let dirs = searchDirectories(environment: environment, purelib: nil)
        let (rc, path) = load(LORA_LIB_DRIVER, dirs: dirs, maxMajor: 0)
        guard rc == 0 else {
            throw CUDAUnavailable(.noDriver, "\(path); searched \(dirs.joined(separator: ", ")) and the system path")
        }
        report.driverPath = path
        let initRC = lora_cu_init()
        if initRC == 100 { throw CUDAUnavailable(.noDevice, "cuInit: \(String(cString: lora_cu_error_string(initRC)))") }
        guard initRC == 0 else { throw CUDAUnavailable(.driverError, "cuInit: \(String(cString: lora_cu_error_string(initRC)))") }
        var v: Int32 = 0, n: Int32 = 0
        _ = lora_cu_driver_version(&v)
        report.driverVersion = Int(v)
        let countRC = lora_cu_device_count(&n)
        report.deviceCount = Int(n)
        guard countRC == 0 else { throw CUDAUnavailable(.driverError, "cuDeviceGetCount: \(String(cString: lora_cu_error_string(countRC)))") }
        guard n > 0 else { throw CUDAUnavailable(.noDevice, "the driver at \(path) sees 0 devices") }
    }

    /// Loads NVRTC, the newest major version not above `maxMajor` (0 = any).
    public static func loadNVRTC(environment: [String: String], maxMajor: Int, report: inout CUDALibraryReport) throws {
        let dirs = searchDirectories(environment: environment, purelib: pythonPurelib(environment: environment))
        let (rc, path) = load(LORA_LIB_NVRTC, dirs: dirs, maxMajor: maxMajor)
        switch rc {
        case 0: break
        case 3: throw CUDAUnavailable(.driverTooOld, "\(path) (driver \(report.driverDescription))")
        default:
            throw CUDAUnavailable(.noNVRTC, "libnvrtc.so.13/.12: \(path); searched \(dirs.joined(separator: ", ")) and the system path; pip install nvidia-cuda-nvrtc, or set LORA_CUDA_LIB_DIR")
        }
        report.nvrtcPath = path
        var a: Int32 = 0, b: Int32 = 0
        _ = lora_nvrtc_version(&a, &b)
        report.nvrtcVersion = (Int(a), Int(b))
    }

    /// Loads cuBLAS (cublasLt first), the newest major version not above `maxMajor`.
    public static func loadCUBLAS(environment: [String: String], maxMajor: Int, report: inout CUDALibraryReport) throws {
        let dirs = searchDirectories(environment: environment, purelib: pythonPurelib(environment: environment))
        let (rc, path) = load(LORA_LIB_CUBLAS, dirs: dirs, maxMajor: maxMajor)
        switch rc {
        case 0: break
        case 3: throw CUDAUnavailable(.driverTooOld, "\(path) (driver \(report.driverDescription))")
        default:
            throw CUDAUnavailable(.noCUBLAS, "libcublasLt/libcublas.so.13/.12: \(path); searched \(dirs.joined(separator: ", ")) and the system path; pip install nvidia-cublas, or set LORA_CUDA_LIB_DIR")
        }
        report.cublasPath = path
        var v: Int32 = 0
        _ = lora_cublas_version(&v)
        report.cublasVersion = Int(v)
    }

    /// Everything a CUDA backend needs, in the order that gives the most useful error: the
    /// driver and a device first, then NVRTC and cuBLAS of a major version the driver runs.
    public static func loadAll(environment: [String: String], index: Int) throws -> CUDALibraryReport {
        var r = CUDALibraryReport()
        try loadDriver(environment: environment, report: &r)
        guard index < r.deviceCount else {
            throw CUDAUnavailable(.noSuchDevice, "cuda:\(index) asked for, the driver sees \(r.deviceCount) device\(r.deviceCount == 1 ? "" : "s") (cuda:0 ... cuda:\(r.deviceCount - 1))")
        }
        let driverMajor = r.driverVersion / 1000
        try loadNVRTC(environment: environment, maxMajor: driverMajor, report: &r)
        try loadCUBLAS(environment: environment, maxMajor: driverMajor, report: &r)
        return r
    }
}

/// Calls `body` with a C array of C strings that live for the call.
func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> R) -> R {
    let dup = strings.map { UnsafePointer<CChar>(strdup($0)) }
    defer { dup.forEach { free(UnsafeMutablePointer(mutating: $0)) } }
    return dup.withUnsafeBufferPointer { body($0.baseAddress ?? UnsafePointer(bitPattern: 8)!) }
}
