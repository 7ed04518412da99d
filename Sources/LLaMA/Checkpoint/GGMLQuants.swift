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

    @inline(__always)
    private static func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
        halfToFloat(p.loadUnaligned(fromByteOffset: offset, as: UInt16.self).littleEndian)
    }

    @inline(__always)
    private static func byte(_ p: UnsafeRawPointer, _ offset: Int) -> UInt8 { p.load(fromByteOffset: offset, as: UInt8.self) }

    // Q8_0, Q4_0, Q4_1: the block formats models can also keep as weights (Tensor's
    // GGUFBlockFormat holds their one definition).
    @inline(__always)
    static func q8_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) { GGUFBlockFormat.dequantizeBlock(.q8_0, p, y) }
    @inline(__always)
    static func q4_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) { GGUFBlockFormat.dequantizeBlock(.q4_0, p, y) }
    @inline(__always)
    static func q4_1(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) { GGUFBlockFormat.dequantizeBlock(.q4_1, p, y) }

    // block_q5_0 { half d; u8 qh[4] (u32, bit j = 5th bit of element j); u8 qs[16] }: y = (q - 16) * d
    @inline(__always)
    static func q5_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        let qh = p.loadUnaligned(fromByteOffset: 2, as: UInt32.self).littleEndian
        for j in 0..<16 {
            let b = byte(p, 6 + j)
            let h0 = Int((qh >> UInt32(j)) & 1) << 4, h1 = Int((qh >> UInt32(j + 16)) & 1) << 4
            y[j] = Float((Int(b & 0x0F) | h0) - 16) * d
            y[j + 16] = Float((Int(b >> 4) | h1) - 16) * d
        }
    }

    // block_q5_1 { half d; half m; u8 qh[4]; u8 qs[16] }: y = q * d + m
    @inline(__always)
    static func q5_1(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0), m = half(p, 2)
        let qh = p.loadUnaligned(fromByteOffset: 4, as: UInt32.self).littleEndian
        for j in 0..<16 {
            let b = byte(p, 8 + j)
            let h0 = Int((qh >> UInt32(j)) & 1) << 4, h1 = Int((qh >> UInt32(j + 16)) & 1) << 4
            let lo = Float(Int(b & 0x0F) | h0) * d, hi = Float(Int(b >> 4) | h1) * d
            y[j] = lo + m
            y[j + 16] = hi + m
        }
    }

    /// The 6-bit scale and min of sub-block j (0..<8) from the 12 packed bytes of a Q4_K/Q5_K
    /// block: sub-blocks 0-3 use the low 6 bits of bytes j and j+4; sub-blocks 4-7 take their
    /// low 4 bits from byte j+4 and their top 2 bits from the top bits of bytes j-4 and j.
    @inline(__always)
    static func scaleMinK4(_ j: Int, _ q: UnsafeRawPointer) -> (sc: UInt8, m: UInt8) {
        if j < 4 { return (byte(q, j) & 63, byte(q, j + 4) & 63) }
        let sc = (byte(q, j + 4) & 0x0F) | ((byte(q, j - 4) >> 6) << 4)
        let m = (byte(q, j + 4) >> 4) | ((byte(q, j) >> 6) << 4)
        return (sc, m)
    }

    // block_q4_K { half d; half dmin; u8 scales[12]; u8 qs[128] }, 8 sub-blocks of 32:
    // bytes qs[32*k ..< 32*k+32] hold sub-block 2k in their low nibbles and 2k+1 in their high
    // nibbles; y = (d * sc) * q - (dmin * m)
    @inline(__always)
    static func q4_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0), dmin = half(p, 2)
        let scales = p + 4, qs = p + 16
        for k in 0..<4 {
            let (s0, m0) = scaleMinK4(2 * k, scales), (s1, m1) = scaleMinK4(2 * k + 1, scales)
            let d0 = d * Float(s0), dm0 = dmin * Float(m0)
            let d1 = d * Float(s1), dm1 = dmin * Float(m1)
            for l in 0..<32 {
                let b = byte(qs, 32 * k + l)
                y[64 * k + l] = d0 * Float(b & 0x0F) - dm0
                y[64 * k + 32 + l] = d1 * Float(b >> 4) - dm1
            }
        }
    }

    // block_q5_K { half d; half dmin; u8 scales[12]; u8 qh[32]; u8 qs[128] }: as Q4_K, plus a 5th
    // bit for element l of sub-block i in bit i of qh[l]
    @inline(__always)
    static func q5_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0), dmin = half(p, 2)
        let scales = p + 4, qh = p + 16, qs = p + 48
        for k in 0..<4 {
            let (s0, m0) = scaleMinK4(2 * k, scales), (s1, m1) = scaleMinK4(2 * k + 1, scales)
            let d0 = d * Float(s0), dm0 = dmin * Float(m0)
            let d1 = d * Float(s1), dm1 = dmin * Float(m1)
            for l in 0..<32 {
                let b = byte(qs, 32 * k + l), h = byte(qh, l)
                let q0 = (b & 0x0F) | (((h >> UInt8(2 * k)) & 1) << 4)
                let q1 = (b >> 4) | (((h >> UInt8(2 * k + 1)) & 1) << 4)
                y[64 * k + l] = d0 * Float(q0) - dm0
                y[64 * k + 32 + l] = d1 * Float(q1) - dm1
            }
        }
    }

    // block_q6_K { u8 ql[128]; u8 qh[64]; int8 scales[16]; half d }, two halves of 128 elements.
    // In half h, for l < 32: element l      = low nibble of ql[64h+l]    | bits 0-1 of qh[32h+l]
    //                        element l + 32 = low nibble of ql[64h+32+l] | bits 2-3
    //                        element l + 64 = high nibble of ql[64h+l]   | bits 4-5
    //                        element l + 96 = high nibble of ql[64h+32+l]| bits 6-7
    // minus 32; y = (d * scales[element / 16]) * q
    @inline(__always)
    static func q6_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 208)
        for h in 0..<2 {
            let ql = p + 64 * h, qh = p + 128 + 32 * h, sc = p + 192 + 8 * h
            let out = y + 128 * h
            for l in 0..<32 {
                let a = byte(ql, l), b = byte(ql, l + 32), hb = byte(qh, l)
                let q1 = Int((a & 0x0F) | ((hb & 3) << 4)) - 32
                let q2 = Int((b & 0x0F) | (((hb >> 2) & 3) << 4)) - 32
                let q3 = Int((a >> 4) | (((hb >> 4) & 3) << 4)) - 32
                let q4 = Int((b >> 4) | (((hb >> 6) & 3) << 4)) - 32
                let s = l / 16
                out[l] = d * Float(sc.load(fromByteOffset: s, as: Int8.self)) * Float(q1)
                out[l + 32] = d * Float(sc.load(fromByteOffset: s + 2, as: Int8.self)) * Float(q2)
                out[l + 64] = d * Float(sc.load(fromByteOffset: s + 4, as: Int8.self)) * Float(q3)
                out[l + 96] = d * Float(sc.load(fromByteOffset: s + 6, as: Int8.self)) * Float(q4)
            }
        }
    }

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
