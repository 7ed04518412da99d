import Tensor

/// ggml's tensor element types (`enum ggml_type` in ggml.h), as stored in GGUF tensor infos.
/// Every type ggml knows is listed, so a file's layout can be checked even where we cannot
/// dequantize a type; `canDequantize` says which ones we can.
public enum GGMLType: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9
    case q2_K = 10, q3_K = 11, q4_K = 12, q5_K = 13, q6_K = 14, q8_K = 15
    case iq2_XXS = 16, iq2_XS = 17, iq3_XXS = 18, iq1_S = 19, iq4_NL = 20, iq3_S = 21, iq2_S = 22, iq4_XS = 23
    case i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28, iq1_M = 29, bf16 = 30
    case tq1_0 = 34, tq2_0 = 35, mxfp4 = 39, nvfp4 = 40, q1_0 = 41

    /// ggml's name ("Q4_K").
    public var description: String {
        switch self {
        case .f32: return "F32"
        case .f16: return "F16"
        case .q4_0: return "Q4_0"
        case .q4_1: return "Q4_1"
        case .q5_0: return "Q5_0"
        case .q5_1: return "Q5_1"
        case .q8_0: return "Q8_0"
        case .q8_1: return "Q8_1"
        case .q2_K: return "Q2_K"
        case .q3_K: return "Q3_K"
        case .q4_K: return "Q4_K"
        case .q5_K: return "Q5_K"
        case .q6_K: return "Q6_K"
        case .q8_K: return "Q8_K"
        case .iq2_XXS: return "IQ2_XXS"
        case .iq2_XS: return "IQ2_XS"
        case .iq3_XXS: return "IQ3_XXS"
        case .iq1_S: return "IQ1_S"
        case .iq4_NL: return "IQ4_NL"
        case .iq3_S: return "IQ3_S"
        case .iq2_S: return "IQ2_S"
        case .iq4_XS: return "IQ4_XS"
        case .i8: return "I8"
        case .i16: return "I16"
        case .i32: return "I32"
        case .i64: return "I64"
        case .f64: return "F64"
        case .iq1_M: return "IQ1_M"
        case .bf16: return "BF16"
        case .tq1_0: return "TQ1_0"
        case .tq2_0: return "TQ2_0"
        case .mxfp4: return "MXFP4"
        case .nvfp4: return "NVFP4"
        case .q1_0: return "Q1_0"
        }
    }

    /// Elements per block and bytes per block (ggml's `blck_size`, `type_size`). QK_K = 256.
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16, .f64, .i8, .i16, .i32, .i64: return 1
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q8_1, .iq4_NL, .mxfp4: return 32
        case .nvfp4: return 64
        case .q1_0: return 128
        default: return 256
        }
    }

    public var typeSize: Int {
        switch self {
        case .f32, .i32: return 4
        case .f16, .bf16, .i16: return 2
        case .f64, .i64: return 8
        case .i8: return 1
        case .q4_0: return 18            // f16 d, 16 bytes of nibbles
        case .q4_1: return 20            // f16 d, f16 m, 16 bytes of nibbles
        case .q5_0: return 22            // f16 d, u32 high bits, 16 bytes of nibbles
        case .q5_1: return 24            // f16 d, f16 m, u32 high bits, 16 bytes of nibbles
        case .q8_0: return 34            // f16 d, 32 int8
        case .q8_1: return 36            // f16 d, f16 s, 32 int8
        case .q2_K: return 84            // 16 scales, 64 quants, f16 d, f16 dmin
        case .q3_K: return 110           // 32 hmask, 64 quants, 12 scales, f16 d
        case .q4_K: return 144           // f16 d, f16 dmin, 12 scales, 128 nibbles
        case .q5_K: return 176           // f16 d, f16 dmin, 12 scales, 32 high bits, 128 nibbles
        case .q6_K: return 210           // 128 low nibbles, 64 high 2-bits, 16 int8 scales, f16 d
        case .q8_K: return 292           // f32 d, 256 int8, 16 i16 sums
        case .iq2_XXS: return 66
        case .iq2_XS: return 74
        case .iq3_XXS: return 98
        case .iq1_S: return 50
        case .iq4_NL: return 18
        case .iq3_S: return 110
        case .iq2_S: return 82
        case .iq4_XS: return 136
        case .iq1_M: return 56
        case .tq1_0: return 54
        case .tq2_0: return 66
        case .mxfp4: return 17
        case .nvfp4: return 36
        case .q1_0: return 18
        }
    }

    /// The types `GGMLQuants.dequantize` handles.
    public static let dequantizable: [GGMLType] = [.f32, .f16, .bf16, .q8_0, .q4_0, .q4_1, .q5_0, .q5_1, .q4_K, .q5_K, .q6_K]
    public var canDequantize: Bool { Self.dequantizable.contains(self) }

    /// Bytes of `elements` values (a multiple of `blockSize`), or nil on overflow.
    public func byteCount(elements: Int) -> Int? {
        guard elements >= 0, elements % blockSize == 0 else { return nil }
        let (n, o) = (elements / blockSize).multipliedReportingOverflow(by: typeSize)
        return o ? nil : n
    }
}

/// Block (de)quantization with ggml's layouts (ggml-common.h) and arithmetic (ggml-quants.c,
/// `dequantize_row_*`), in plain scalar Swift. Each value is computed with the same float
/// operations in the same order as ggml, so results are bit-identical to ggml and to the
/// `gguf` Python package. Multi-byte fields are little-endian; scales are IEEE half.
public enum GGMLQuants {
    /// Dequantizes `count` elements (a multiple of `type.blockSize`) from `src` into `dst`, serially.
    /// `type` must be one of `GGMLType.dequantizable`.
    public static func dequantize(_ src: UnsafeRawPointer, type: GGMLType, count: Int, into dst: UnsafeMutablePointer<Float>) {
        precondition(type.canDequantize, "GGMLQuants.dequantize called with \(type)")
        precondition(count % type.blockSize == 0, "\(count) elements is not a whole number of \(type) blocks")
        let nb = count / type.blockSize
        switch type {
        case .f32: UnsafeMutableRawPointer(dst).copyMemory(from: src, byteCount: count * 4)
        case .f16: for i in 0..<count { dst[i] = halfToFloat(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
        case .bf16: for i in 0..<count { dst[i] = bf16ToFloat(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
        case .q8_0: for b in 0..<nb { q8_0(src + b * 34, dst + b * 32) }
        case .q4_0: for b in 0..<nb { q4_0(src + b * 18, dst + b * 32) }
        case .q4_1: for b in 0..<nb { q4_1(src + b * 20, dst + b * 32) }
        case .q5_0: for b in 0..<nb { q5_0(src + b * 22, dst + b * 32) }
        case .q5_1: for b in 0..<nb { q5_1(src + b * 24, dst + b * 32) }
        case .q4_K: for b in 0..<nb { q4_K(src + b * 144, dst + b * 256) }
        case .q5_K: for b in 0..<nb { q5_K(src + b * 176, dst + b * 256) }
        case .q6_K: for b in 0..<nb { q6_K(src + b * 210, dst + b * 256) }
        default: preconditionFailure("unreachable")
        }
    }

    /// As `dequantize`, split by blocks over the worker threads (a whole tensor at a time).
    public static func dequantizeParallel(_ src: UnsafeRawPointer, type: GGMLType, count: Int, into dst: UnsafeMutablePointer<Float>) {
        precondition(type.canDequantize && count % type.blockSize == 0)
        let bs = type.blockSize, ts = type.typeSize
        let nb = count / bs
        // ~64K elements per chunk at least, so small tensors stay on one thread.
        WorkerPool.allCores.chunks(nb, grain: max(1, 65_536 / bs)) { r in
            dequantize(src + r.lowerBound * ts, type: type, count: r.count * bs, into: dst + r.lowerBound * bs)
        }
    }

    // The block formats models can also keep as weights (Tensor's GGUFBlockFormat holds their
    // one definition).
    @inline(__always)
    static func q8_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) { GGUFBlockFormat.dequantizeBlock(.q8_0, p, y) }
    @inline(__always)
    static func q4_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) { GGUFBlockFormat.dequantizeBlock(.q4_0, p, y) }
    @inline(__always)
    static func q4_1(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) { GGUFBlockFormat.dequantizeBlock(.q4_1, p, y) }
    @inline(__always)
    static func q5_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) { GGUFBlockFormat.dequantizeBlock(.q5_0, p, y) }
    @inline(__always)
    static func q5_1(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) { GGUFBlockFormat.dequantizeBlock(.q5_1, p, y) }
    @inline(__always)
    static func q4_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) { GGUFBlockFormat.dequantizeBlock(.q4_K, p, y) }
    @inline(__always)
    static func q5_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) { GGUFBlockFormat.dequantizeBlock(.q5_K, p, y) }
    @inline(__always)
    static func q6_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) { GGUFBlockFormat.dequantizeBlock(.q6_K, p, y) }

    // MARK: quantization (for GGUF export)

    /// ggml's `quantize_row_q8_0_ref`: per block of 32, d = amax / 127, id = 1/d (0 when d is 0),
    /// q = round-half-away-from-zero(x * id), d stored as half. `count` is a multiple of 32;
    /// writes count / 32 * 34 bytes. Non-finite inputs give q = 0 where ggml's C is undefined.
    public static func quantizeQ8_0(_ x: UnsafePointer<Float>, count: Int, into dst: UnsafeMutableRawPointer) {
        precondition(count % 32 == 0, "Q8_0 needs a multiple of 32 elements, got \(count)")
        for b in 0..<(count / 32) { GGUFBlockFormat.quantizeBlock(.q8_0, x + 32 * b, dst + 34 * b) }
    }

    /// F16 storage: each value rounded to the nearest half, ties to even (as numpy's astype).
    public static func quantizeF16(_ x: UnsafePointer<Float>, count: Int, into dst: UnsafeMutableRawPointer) {
        for i in 0..<count { dst.storeBytes(of: floatToHalf(x[i]).littleEndian, toByteOffset: 2 * i, as: UInt16.self) }
    }

    /// Quantizes a whole tensor to `type` (F32, F16 or Q8_0), split over the worker threads.
    public static func quantizeParallel(_ x: UnsafePointer<Float>, type: GGMLType, count: Int, into dst: UnsafeMutableRawPointer) {
        precondition([.f32, .f16, .q8_0].contains(type), "GGMLQuants.quantize supports F32, F16 and Q8_0, not \(type)")
        let bs = type.blockSize == 1 ? 32 : type.blockSize   // elements per unit of work
        precondition(type.blockSize == 1 || count % bs == 0)
        let units = (count + bs - 1) / bs
        WorkerPool.allCores.chunks(units, grain: max(1, 65_536 / bs)) { r in
            let lo = r.lowerBound * bs, n = min(count, r.upperBound * bs) - lo
            let out = dst + lo / type.blockSize * type.typeSize
            switch type {
            case .f32: out.copyMemory(from: x + lo, byteCount: n * 4)
            case .f16: quantizeF16(x + lo, count: n, into: out)
            default: quantizeQ8_0(x + lo, count: n, into: out)
            }
        }
    }
}
