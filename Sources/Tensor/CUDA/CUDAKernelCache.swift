import CUDAShim
import Foundation

/// NVRTC failed: the log names the kernel line.
public struct CUDACompileError: Error, CustomStringConvertible {
    public let target: String
    public let status: String
    public let log: String
    public var description: String { "NVRTC could not compile the CUDA kernels for \(target): \(status)\n\(log)" }
}

/// Compiles `CUDAKernels.source` with NVRTC to a CUBIN for one compute capability, and keeps it
/// on disk so later runs skip NVRTC (~1 s). A CUBIN, not PTX: PTX from a newer NVRTC than the
/// driver fails at load (CUDA_ERROR_UNSUPPORTED_PTX_VERSION), a CUBIN needs no driver JIT.
/// File: <cacheDir>/<16 hex digits of FNV-1a(source, NVRTC version)>-sm_XX.cubin, written
/// to a temporary name and renamed, so concurrent runs never read half a file.
public enum CUDAKernelCache {
    /// $LORA_CUDA_CACHE, else $XDG_CACHE_HOME/lora/cuda, else ~/.cache/lora/cuda.
    public static func directory(environment: [String: String]) -> URL {
        if let d = environment["LORA_CUDA_CACHE"], !d.isEmpty { return URL(fileURLWithPath: d) }
        if let x = environment["XDG_CACHE_HOME"], !x.isEmpty { return URL(fileURLWithPath: x).appendingPathComponent("lora/cuda") }
        let home = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
        return URL(fileURLWithPath: home).appendingPathComponent(".cache/lora/cuda")
    }

    /// 64-bit FNV-1a: a cache key, not a security hash (the cache is the user's own folder).
    public static func fnv1a(_ parts: [String]) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for p in parts {
            for b in p.utf8 { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
            h = (h ^ 0xff) &* 0x0000_0100_0000_01b3     // separator: ("ab","c") != ("a","bc")
        }
        return h
    }

    /// Compiles `source` (NVRTC must be loaded). `cubin` false gives PTX (the compile check
    /// reads its entry points).
    public static func compile(source: String, name: String = "lora_kernels.cu", sm: Int, cubin: Bool) throws -> [UInt8] {
        var image: UnsafeMutableRawPointer?
        var len = 0
        var log: UnsafeMutablePointer<CChar>?
        let rc = lora_nvrtc_compile(source, name, Int32(sm), cubin ? 1 : 0, &image, &len, &log)
        defer { lora_cuda_free(image); lora_cuda_free(log) }
        let logText = log.map { String(cString: $0) } ?? ""
        guard rc == 0, let image else {
            throw CUDACompileError(target: "\(cubin ? "sm" : "compute")_\(sm)", status: String(cString: lora_nvrtc_error_string(rc)), log: logText)
        }
        return Array(UnsafeRawBufferPointer(start: image, count: len))
    }

    /// The CUBIN for `sm`, from the cache or compiled and stored. `nvrtcVersion` is part of
    /// the key: a new NVRTC may generate different code.
    public static func cubin(source: String, sm: Int, nvrtcVersion: (Int, Int), environment: [String: String]) throws -> (image: [UInt8], path: URL, cached: Bool) {
        let key = String(fnv1a([source, "nvrtc \(nvrtcVersion.0).\(nvrtcVersion.1)"]), radix: 16)
        let dir = directory(environment: environment)
        let file = dir.appendingPathComponent(String(repeating: "0", count: 16 - key.count) + key + "-sm_\(sm).cubin")
        if let data = try? Data(contentsOf: file), !data.isEmpty { return ([UInt8](data), file, true) }
        let image = try compile(source: source, sm: sm, cubin: true)
        // A cache that cannot be written costs a recompile next time, nothing more.
        do {
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            let tmp = dir.appendingPathComponent(".\(file.lastPathComponent).\(getpid()).tmp")
            try Data(image).write(to: tmp)
            if rename(tmp.path, file.path) != 0 { try? FileManager.default.removeItem(at: tmp) }
        } catch {}
        return (image, file, false)
    }

    /// Every `.entry` name in a PTX text.
    public static func ptxEntries(_ ptx: [UInt8]) -> Set<String> {
        let text = String(decoding: ptx.prefix { $0 != 0 }, as: UTF8.self)
        var names = Set<String>()
        for line in text.split(separator: "\n") {
            guard let r = line.range(of: ".entry ") else { continue }
            let rest = line[r.upperBound...]
            names.insert(String(rest.prefix { $0.isLetter || $0.isNumber || $0 == "_" }))
        }
        return names
    }
}
