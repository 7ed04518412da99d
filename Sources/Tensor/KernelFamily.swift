import CKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How the CPU backend's decoding products (M <= 16 rows) multiply Q4_0 / Q4_1 / Q8_0 weights.
public enum DecodeArithmetic: String, Sendable, CaseIterable {
    /// As llama.cpp does on CPUs: the activations quantized to int8 per 32 (lora_q8_quantize),
    /// exact integer block dots, then scaled. Q4: about 1.4x faster per core at M = 1 and 2.5x
    /// at M = 8 here; Q8_0: 2.3x at M = 8. Used at every M <= 16 so results do not depend on M.
    /// Not for int8 rows: their products keep bitsandbytes' semantics (f32 activations).
    /// Differs from the f32 product by the activation rounding only.
    case q8
    /// The weights dequantized to f32 in registers and multiplied in f32 (the reference).
    case f32
}

/// The instruction-set family the CPU backend's fast kernels run with, picked once when a
/// backend is made: the best the CPU has, or the one `LORA_KERNELS` names (tests force each).
public enum KernelFamily: String, Sendable, CaseIterable {
    /// Plain C loops: any CPU, and the scalar reference of the other families.
    case portable
    /// AVX2 + FMA (x86-64 since Haswell / Zen 1).
    case avx2
    /// AVX-512 F/BW/VL + FMA (Zen 4+, Skylake-X+).
    case avx512
    /// OpenBLAS sgemm with quantized weights dequantized tile by tile: the oracle the C
    /// kernels are held against, and the path of any format without C kernels.
    case blas

    /// The C kernels' family id (LORA_FAMILY_*); nil for the OpenBLAS path.
    public var kernelID: Int32? {
        switch self {
        case .portable: return 0
        case .avx2: return 1
        case .avx512: return 2
        case .blas: return nil
        }
    }

    /// The C family for element-wise helpers (dot, axpy): this family's, or for the OpenBLAS
    /// path the best the CPU has.
    public var vectorID: Int32 { kernelID ?? KernelFamily.best.kernelID! }

    public var isAvailable: Bool {
        guard let id = kernelID else { return true }
        return lora_family_available(id) != 0
    }

    /// Every family this CPU can run.
    public static var available: [KernelFamily] { allCases.filter(\.isAvailable) }

    /// The fastest family this CPU has.
    public static var best: KernelFamily {
        switch lora_family_best() {
        case 2: return .avx512
        case 1: return .avx2
        default: return .portable
        }
    }

    public enum SelectionError: Error, CustomStringConvertible, Equatable {
        case unknown(String)
        case unavailable(KernelFamily)
        case unknownDecode(String)
        public var description: String {
            switch self {
            case .unknown(let s):
                return "LORA_KERNELS=\(s) is not a kernel family (expected one of: \(KernelFamily.allCases.map(\.rawValue).joined(separator: ", ")))"
            case .unknownDecode(let s):
                return "LORA_DECODE=\(s) is not a decoding arithmetic (expected one of: \(DecodeArithmetic.allCases.map(\.rawValue).joined(separator: ", ")))"
            case .unavailable(let k):
                return "LORA_KERNELS=\(k.rawValue): this CPU cannot run it (available: \(KernelFamily.available.map(\.rawValue).joined(separator: ", ")))"
            }
        }
    }

    /// The family named by `LORA_KERNELS` in `environment`, else the best available.
    public static func select(environment: [String: String]) throws -> KernelFamily {
        guard let raw = environment["LORA_KERNELS"], !raw.isEmpty else { return best }
        guard let k = KernelFamily(rawValue: raw.lowercased()) else { throw SelectionError.unknown(raw) }
        guard k.isAvailable else { throw SelectionError.unavailable(k) }
        return k
    }

    /// `LORA_DECODE` in `environment`: how the decoding GEMVs multiply 4-bit GGUF weights.
    public static func selectDecoding(environment: [String: String]) throws -> DecodeArithmetic {
        guard let raw = environment["LORA_DECODE"], !raw.isEmpty else { return .q8 }
        guard let d = DecodeArithmetic(rawValue: raw.lowercased()) else { throw SelectionError.unknownDecode(raw) }
        return d
    }

    /// The CPU's model name and the SIMD flags that matter here (for bench and logs).
    public static var cpuDescription: String {
        var model = "unknown CPU", flags: [String] = []
        if let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) {
            for line in text.split(separator: "\n") {
                if model == "unknown CPU", line.hasPrefix("model name"), let i = line.firstIndex(of: ":") {
                    model = line[line.index(after: i)...].trimmingCharacters(in: .whitespaces)
                }
                if flags.isEmpty, line.hasPrefix("flags"), let i = line.firstIndex(of: ":") {
                    let all = Set(line[line.index(after: i)...].split(separator: " ").map(String.init))
                    flags = ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni"].filter(all.contains)
                }
            }
        }
        return "\(model) [\(flags.joined(separator: " "))]"
    }
}
import Foundation
