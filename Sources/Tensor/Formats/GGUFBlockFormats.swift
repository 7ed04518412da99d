/// ggml's block formats, byte for byte as GGUF files store them (ggml-common.h), so a GGUF
/// model's projections can be used as they are in the file: the decoding step then reads the
/// same bytes llama.cpp reads. A row of K elements is K / `kind.blockSize` blocks (32, or 256
/// for the K-quants' super-blocks); multi-byte fields are little-endian, scales IEEE half:
///   Q8_0 (34 bytes): half d, int8 qs[32];   w[j] = qs[j] * d
///   Q4_0 (18 bytes): half d, u8 qs[16];     w[j] = ((qs[j] & 15) - 8) * d, w[j+16] = ((qs[j] >> 4) - 8) * d
///   Q4_1 (20 bytes): half d, half m, u8 qs[16]; w[j] = (qs[j] & 15) * d + m, w[j+16] = (qs[j] >> 4) * d + m
///   Q5_0 (22 bytes): half d, u32 qh, u8 qs[16]; as Q4_0 with bit j of qh as 5th bit of
///                    element j, minus 16 instead of 8
///   Q5_1 (24 bytes): half d, half m, u32 qh, u8 qs[16]; as Q4_1 with the 5th bits of Q5_0
///   Q4_K (144), Q5_K (176), Q6_K (210): 256-element super-blocks, see `dequantizeBlock`
/// The arithmetic is ggml's `dequantize_row_*` (float products, then the add), so values equal
/// ggml's and the `gguf` Python package's bit for bit; `GGMLQuants` in LLaMA uses these too.
/// The K-quants are only ever read from GGUF files: `make` (quantizing) supports the 32-element
/// formats, whose reference quantizers are a few lines; ggml's K-quant search is not reproduced.
public struct GGUFBlockFormat: WeightFormat {
    public enum Kind: String, Sendable, CaseIterable {
        case q8_0, q4_0, q4_1, q5_0, q5_1, q4_K, q5_K, q6_K
        public var blockBytes: Int {
            switch self {
            case .q8_0: return 34
            case .q4_0: return 18
            case .q4_1: return 20
            case .q5_0: return 22
            case .q5_1: return 24
            case .q4_K: return 144
            case .q5_K: return 176
            case .q6_K: return 210
            }
        }
        /// Weights per block: 32, or 256 (QK_K) for the K-quants.
        public var blockSize: Int {
            switch self {
            case .q4_K, .q5_K, .q6_K: return 256
            default: return 32
            }
        }
        public var isKQuant: Bool { blockSize == 256 }
        /// ggml's type name ("Q4_K").
        public var ggmlName: String { rawValue.uppercased() }
    }

    public let kind: Kind
    public init(kind: Kind) { self.kind = kind }
    public var name: String { kind.rawValue }
    public var kernelID: Int32? {
        switch kind {
        case .q8_0: return 3   // LORA_FORMAT_Q8_0
        case .q4_0: return 4   // LORA_FORMAT_Q4_0
        case .q4_1: return 5   // LORA_FORMAT_Q4_1
        case .q5_0: return 7   // LORA_FORMAT_Q5_0 (dequantized per tile: CKernels/kquant.c)
        case .q5_1: return 8   // LORA_FORMAT_Q5_1
        case .q4_K: return 9   // LORA_FORMAT_Q4_K
        case .q5_K: return 10  // LORA_FORMAT_Q5_K
        case .q6_K: return 11  // LORA_FORMAT_Q6_K
        }
    }

    /// The 32-element formats' block size (`kind.blockSize` is each kind's own).
    public static let blockSize = 32

    public func byteCount(rows: Int, cols: Int) -> Int { rows * (cols / kind.blockSize) * kind.blockBytes }

    @inline(__always)
    static func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
        Float(Float16(bitPattern: UInt16(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self))))
    }

    @inline(__always)
    static func storeHalf(_ x: Float, _ p: UnsafeMutableRawPointer, _ offset: Int) {
        p.storeBytes(of: Float16(x).bitPattern.littleEndian, toByteOffset: offset, as: UInt16.self)
    }

    @inline(__always)
    static func byte(_ p: UnsafeRawPointer, _ offset: Int) -> UInt8 { p.load(fromByteOffset: offset, as: UInt8.self) }

    /// One block's `kind.blockSize` values into y.
    @inline(__always)
    public static func dequantizeBlock(_ kind: Kind, _ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        switch kind {
        case .q8_0:
            let d = half(p, 0)
            for j in 0..<32 { y[j] = Float(p.load(fromByteOffset: 2 + j, as: Int8.self)) * d }
        case .q4_0:
            let d = half(p, 0)
            for j in 0..<16 {
                let b = p.load(fromByteOffset: 2 + j, as: UInt8.self)
                y[j] = Float(Int(b & 0x0F) - 8) * d
                y[j + 16] = Float(Int(b >> 4) - 8) * d
            }
        case .q4_1:
            let d = half(p, 0), m = half(p, 2)
            for j in 0..<16 {
                let b = p.load(fromByteOffset: 4 + j, as: UInt8.self)
                let lo = Float(b & 0x0F) * d, hi = Float(b >> 4) * d
                y[j] = lo + m
                y[j + 16] = hi + m
            }
        case .q5_0:
            // bit j of qh is the 5th bit of element j; y = (q - 16) * d
            let d = half(p, 0)
            let qh = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 2, as: UInt32.self))
            for j in 0..<16 {
                let b = byte(p, 6 + j)
                let h0 = Int((qh >> UInt32(j)) & 1) << 4, h1 = Int((qh >> UInt32(j + 16)) & 1) << 4
                y[j] = Float((Int(b & 0x0F) | h0) - 16) * d
                y[j + 16] = Float((Int(b >> 4) | h1) - 16) * d
            }
        case .q5_1:
            // y = q * d + m (the product rounded, then the add)
            let d = half(p, 0), m = half(p, 2)
            let qh = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
            for j in 0..<16 {
                let b = byte(p, 8 + j)
                let h0 = Int((qh >> UInt32(j)) & 1) << 4, h1 = Int((qh >> UInt32(j + 16)) & 1) << 4
                let lo = Float(Int(b & 0x0F) | h0) * d, hi = Float(Int(b >> 4) | h1) * d
                y[j] = lo + m
                y[j + 16] = hi + m
            }
        case .q4_K:
            // { half d; half dmin; u8 scales[12]; u8 qs[128] }, 8 sub-blocks of 32: bytes
            // qs[32k ..< 32k+32] hold sub-block 2k in their low nibbles, 2k+1 in their high ones;
            // y = (d * sc) * q - (dmin * m)
            let d = half(p, 0), dmin = half(p, 2)
            let scales = p + 4, qs = p + 16
            for k in 0..<4 {
                let (s0, m0) = scaleMinK4(2 * k, scales), (s1, m1) = scaleMinK4(2 * k + 1, scales)
                let d0 = d * Float(s0), dm0 = dmin * Float(m0)
                let d1 = d * Float(s1), dm1 = dmin * Float(m1)
                for l in 0..<32 {
                    let b = byte(qs, 32 * k + l)
                    let v0 = d0 * Float(b & 0x0F), v1 = d1 * Float(b >> 4)
                    y[64 * k + l] = v0 - dm0
                    y[64 * k + 32 + l] = v1 - dm1
                }
            }
        case .q5_K:
            // { half d; half dmin; u8 scales[12]; u8 qh[32]; u8 qs[128] }: as Q4_K, plus a 5th
            // bit for element l of sub-block i in bit i of qh[l]
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
                    let v0 = d0 * Float(q0), v1 = d1 * Float(q1)
                    y[64 * k + l] = v0 - dm0
                    y[64 * k + 32 + l] = v1 - dm1
                }
            }
        case .q6_K:
            // { u8 ql[128]; u8 qh[64]; int8 scales[16]; half d }, two halves of 128 elements.
            // In half h, for l < 32: element l      = low nibble of ql[64h+l]     | bits 0-1 of qh[32h+l]
            //                        element l + 32 = low nibble of ql[64h+32+l]  | bits 2-3
            //                        element l + 64 = high nibble of ql[64h+l]    | bits 4-5
            //                        element l + 96 = high nibble of ql[64h+32+l] | bits 6-7
            // minus 32; y = (d * scales[element / 16]) * q
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
    }

    /// The 6-bit scale and min of sub-block j (0..<8) from the 12 packed bytes of a Q4_K/Q5_K
    /// block: sub-blocks 0-3 use the low 6 bits of bytes j and j+4; sub-blocks 4-7 take their
    /// low 4 bits from byte j+4 and their top 2 bits from the top bits of bytes j-4 and j.
    @inline(__always)
    public static func scaleMinK4(_ j: Int, _ q: UnsafeRawPointer) -> (sc: UInt8, m: UInt8) {
        if j < 4 { return (byte(q, j) & 63, byte(q, j + 4) & 63) }
        let sc = (byte(q, j + 4) & 0x0F) | ((byte(q, j - 4) >> 6) << 4)
        let m = (byte(q, j + 4) >> 4) | ((byte(q, j) >> 6) << 4)
        return (sc, m)
    }

    /// One block from 32 values, with ggml's reference quantizers (`quantize_row_*_ref`).
    /// Non-finite inputs give q = 0 where ggml's C is undefined.
    public static func quantizeBlock(_ kind: Kind, _ x: UnsafePointer<Float>, _ out: UnsafeMutableRawPointer) {
        switch kind {
        case .q8_0:
            var amax: Float = 0
            for j in 0..<32 { amax = max(amax, abs(x[j])) }
            let d = amax / 127, id: Float = d != 0 ? 1 / d : 0
            storeHalf(d, out, 0)
            for j in 0..<32 {
                let r = (x[j] * id).rounded(.toNearestOrAwayFromZero)
                out.storeBytes(of: r.isNaN ? 0 : Int8(max(-128, min(127, r))), toByteOffset: 2 + j, as: Int8.self)
            }
        case .q4_0:
            // d = (the value of largest magnitude) / -8, so that value maps to q = 0 exactly.
            var amax: Float = 0, vmax: Float = 0
            for j in 0..<32 where abs(x[j]) > amax { amax = abs(x[j]); vmax = x[j] }
            let d = vmax / -8, id: Float = d != 0 ? 1 / d : 0
            storeHalf(d, out, 0)
            for j in 0..<16 {
                func q(_ v: Float) -> UInt8 {
                    let t = v * id + 8.5
                    return t.isNaN ? 8 : UInt8(max(0, min(15, Int(max(-128, min(127, t.rounded(.towardZero)))))))
                }
                out.storeBytes(of: q(x[j]) | (q(x[j + 16]) << 4), toByteOffset: 2 + j, as: UInt8.self)
            }
        case .q4_1:
            var lo = Float.infinity, hi = -Float.infinity
            for j in 0..<32 { lo = min(lo, x[j]); hi = max(hi, x[j]) }
            let d = (hi - lo) / 15, id: Float = d != 0 ? 1 / d : 0
            storeHalf(d, out, 0)
            storeHalf(lo, out, 2)
            for j in 0..<16 {
                func q(_ v: Float) -> UInt8 {
                    let t = (v - lo) * id + 0.5
                    return t.isNaN ? 0 : UInt8(max(0, min(15, Int(max(-128, min(127, t.rounded(.towardZero)))))))
                }
                out.storeBytes(of: q(x[j]) | (q(x[j + 16]) << 4), toByteOffset: 4 + j, as: UInt8.self)
            }
        case .q5_0:
            // As Q4_0 with 5 bits: d = (the value of largest magnitude) / -16.
            var amax: Float = 0, vmax: Float = 0
            for j in 0..<32 where abs(x[j]) > amax { amax = abs(x[j]); vmax = x[j] }
            let d = vmax / -16, id: Float = d != 0 ? 1 / d : 0
            storeHalf(d, out, 0)
            var qh: UInt32 = 0
            for j in 0..<16 {
                func q(_ v: Float) -> UInt8 {
                    let t = v * id + 16.5
                    return t.isNaN ? 16 : UInt8(max(0, min(31, Int(max(-128, min(127, t.rounded(.towardZero)))))))
                }
                let a = q(x[j]), b = q(x[j + 16])
                out.storeBytes(of: (a & 15) | ((b & 15) << 4), toByteOffset: 6 + j, as: UInt8.self)
                qh |= UInt32(a >> 4) << UInt32(j) | UInt32(b >> 4) << UInt32(j + 16)
            }
            out.storeBytes(of: qh.littleEndian, toByteOffset: 2, as: UInt32.self)
        case .q5_1:
            var lo = Float.infinity, hi = -Float.infinity
            for j in 0..<32 { lo = min(lo, x[j]); hi = max(hi, x[j]) }
            let d = (hi - lo) / 31, id: Float = d != 0 ? 1 / d : 0
            storeHalf(d, out, 0)
            storeHalf(lo, out, 2)
            var qh: UInt32 = 0
            for j in 0..<16 {
                func q(_ v: Float) -> UInt8 {
                    let t = (v - lo) * id + 0.5
                    return t.isNaN ? 0 : UInt8(max(0, min(31, Int(max(-128, min(127, t.rounded(.towardZero)))))))
                }
                let a = q(x[j]), b = q(x[j + 16])
                out.storeBytes(of: (a & 15) | ((b & 15) << 4), toByteOffset: 8 + j, as: UInt8.self)
                qh |= UInt32(a >> 4) << UInt32(j) | UInt32(b >> 4) << UInt32(j + 16)
            }
            out.storeBytes(of: qh.littleEndian, toByteOffset: 4, as: UInt32.self)
        case .q4_K, .q5_K, .q6_K:
            preconditionFailure("\(kind.ggmlName) weights are read from GGUF files, not quantized here")
        }
    }

    public func make(from w: UnsafePointer<Float>, rows: Int, cols: Int, pool: WorkerPool) -> Weight {
        precondition(!kind.isKQuant, "\(kind.ggmlName) weights are read from GGUF files, not quantized here")
        precondition(cols % kind.blockSize == 0, "\(kind.rawValue) rows are whole blocks of \(kind.blockSize), not \(cols) values")
        let nb = cols / kind.blockSize, bb = kind.blockBytes
        let s = WeightStorage(byteCount: rows * nb * bb, scaleCount: 0)
        pool.chunks(rows, grain: 16) { r in
            for i in r {
                for b in 0..<nb { Self.quantizeBlock(kind, w + i * cols + b * 32, s.bytes + (i * nb + b) * bb) }
            }
        }
        return Weight(format: self, rows: rows, cols: cols, data: UnsafeRawPointer(s.bytes), scales: nil, owner: s)
    }

    public func dequantizeRows(_ w: Weight, _ r0: Int, _ r1: Int, into out: UnsafeMutablePointer<Float>) {
        let bs = kind.blockSize, nb = w.cols / bs, bb = kind.blockBytes
        for i in r0..<r1 {
            for b in 0..<nb {
                Self.dequantizeBlock(kind, w.data + (i * nb + b) * bb, out + (i - r0) * w.cols + b * bs)
            }
        }
    }
}
