/// bfloat16 rows: the upper 16 bits of each f32 (round to nearest even when made from f32).
/// Half the bytes of f32 and exact for checkpoints stored in bf16 (most Hugging Face models):
/// widening back is a shift, so products equal the f32 path on such checkpoints.
public struct BF16Format: WeightFormat {
    public let name = "bf16"
    public var kernelID: Int32? { 2 }   // LORA_FORMAT_BF16
    public var productsAreExact: Bool { true }
    public func byteCount(rows: Int, cols: Int) -> Int { rows * cols * 2 }

    /// f32 -> bf16 bits, round to nearest even (as torch's `.to(torch.bfloat16)`); NaN stays NaN.
    @inline(__always)
    public static func bits(_ x: Float) -> UInt16 {
        let u = x.bitPattern
        if x.isNaN { return UInt16(truncatingIfNeeded: (u >> 16) | 0x40) }
        let rounded = u &+ 0x7FFF &+ ((u >> 16) & 1)
        return UInt16(truncatingIfNeeded: rounded >> 16)
    }

    @inline(__always)
    public static func value(_ b: UInt16) -> Float { Float(bitPattern: UInt32(b) << 16) }

    public func make(from w: UnsafePointer<Float>, rows: Int, cols: Int, pool: WorkerPool) -> Weight {
        let s = WeightStorage(byteCount: rows * cols * 2, scaleCount: 0)
        let dst = s.bytes.assumingMemoryBound(to: UInt16.self)
        pool.chunks(rows, grain: 16) { r in
            for i in r.lowerBound * cols ..< r.upperBound * cols { dst[i] = Self.bits(w[i]) }
        }
        return Weight(format: self, rows: rows, cols: cols, data: UnsafeRawPointer(s.bytes), scales: nil, owner: s)
    }

    public func dequantizeRows(_ w: Weight, _ r0: Int, _ r1: Int, into out: UnsafeMutablePointer<Float>) {
        let src = w.data.assumingMemoryBound(to: UInt16.self) + r0 * w.cols
        for i in 0..<(r1 - r0) * w.cols { out[i] = Self.value(src[i]) }
    }
}
