/// ggml's 32-element block formats, byte for byte as GGUF files store them (ggml-common.h),
/// so a GGUF model's projections can be used as they are in the file: the decoding step then
/// reads the same bytes llama.cpp reads. A row of K elements (K a multiple of 32) is K / 32
/// blocks; multi-byte fields are little-endian, scales IEEE half:
///   Q8_0 (34 bytes): half d, int8 qs[32];   w[j] = qs[j] * d
///   Q4_0 (18 bytes): half d, u8 qs[16];     w[j] = ((qs[j] & 15) - 8) * d, w[j+16] = ((qs[j] >> 4) - 8) * d
///   Q4_1 (20 bytes): half d, half m, u8 qs[16]; w[j] = (qs[j] & 15) * d + m, w[j+16] = (qs[j] >> 4) * d + m
/// The arithmetic is ggml's `dequantize_row_*` (float products, then the add), so values equal
/// ggml's and the `gguf` Python package's bit for bit; `GGMLQuants` in LLaMA uses these too.
public struct GGUFBlockFormat: WeightFormat {
    public enum Kind: String, Sendable, CaseIterable {
        case q8_0, q4_0, q4_1
        public var blockBytes: Int {
            switch self {
            case .q8_0: return 34
            case .q4_0: return 18
            case .q4_1: return 20
            }
        }
    }

    public let kind: Kind
    public var name: String { kind.rawValue }
    public var kernelID: Int32? {
        switch kind {
        case .q8_0: return 3   // LORA_FORMAT_Q8_0
        case .q4_0: return 4   // LORA_FORMAT_Q4_0
        case .q4_1: return 5   // LORA_FORMAT_Q4_1
        }
    }

    public static let blockSize = 32

    public func byteCount(rows: Int, cols: Int) -> Int { rows * (cols / Self.blockSize) * kind.blockBytes }

    @inline(__always)
    static func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
        Float(Float16(bitPattern: UInt16(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self))))
    }

    @inline(__always)
    static func storeHalf(_ x: Float, _ p: UnsafeMutableRawPointer, _ offset: Int) {
        p.storeBytes(of: Float16(x).bitPattern.littleEndian, toByteOffset: offset, as: UInt16.self)
    }

    /// One block's 32 values into y.
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
        }
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
        }
    }

    public func make(from w: UnsafePointer<Float>, rows: Int, cols: Int, pool: WorkerPool) -> Weight {
        precondition(cols % Self.blockSize == 0, "\(kind.rawValue) rows are whole blocks of 32, not \(cols) values")
        let nb = cols / Self.blockSize, bb = kind.blockBytes
        let s = WeightStorage(byteCount: rows * nb * bb, scaleCount: 0)
        pool.chunks(rows, grain: 16) { r in
            for i in r {
                for b in 0..<nb { Self.quantizeBlock(kind, w + i * cols + b * 32, s.bytes + (i * nb + b) * bb) }
            }
        }
        return Weight(format: self, rows: rows, cols: cols, data: UnsafeRawPointer(s.bytes), scales: nil, owner: s)
    }

    public func dequantizeRows(_ w: Weight, _ r0: Int, _ r1: Int, into out: UnsafeMutablePointer<Float>) {
        let nb = w.cols / Self.blockSize, bb = kind.blockBytes
        for i in r0..<r1 {
            for b in 0..<nb {
                Self.dequantizeBlock(kind, w.data + (i * nb + b) * bb, out + (i - r0) * w.cols + b * 32)
            }
        }
    }
}
