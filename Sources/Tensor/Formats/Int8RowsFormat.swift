/// Int8 rows, bitsandbytes' row-wise scheme (LLM.int8 without outliers), what alpaca-lora's
/// `load_in_8bit` stores: per output row `scale = absmax / 127`, `q = round_half_even(w /
/// scale)` clamped to [-127, 127], and `w ≈ q * scale`. Bytes: q [rows, cols] int8, then one
/// f32 scale per row.
///
/// The same bytes serve two arithmetics. `int8` multiplies them dequantized in f32 (what
/// bitsandbytes computes when it trains on a CPU, MatMul8bitFp). `llm_int8` (an
/// `outlierThreshold`) runs the forward product as LLM.int8() does (MatMul8bitLt, transformers'
/// load_in_8bit on a GPU and in eval): activations rounded to half and quantized per row to
/// int8, exact int32 sums, the columns holding a value at or over the threshold in f32
/// (CKernels.h, llmint8.c). Its input gradient stays `dy @ dequantized W` in f32, as
/// bitsandbytes' backward computes it.
public struct Int8RowsFormat: WeightFormat {
    /// LLM.int8()'s outlier threshold (bitsandbytes' and transformers' default 6.0); nil for
    /// the f32 arithmetic.
    public let outlierThreshold: Float?
    public init(outlierThreshold: Float? = nil) { self.outlierThreshold = outlierThreshold }
    public var name: String { outlierThreshold == nil ? "int8" : "llm_int8" }
    public var kernelID: Int32? { 1 }   // LORA_FORMAT_I8_ROWS
    public func byteCount(rows: Int, cols: Int) -> Int { rows * cols + rows * 4 }

    /// Quantizes one f32 row of `cols` values into `q` and returns its scale.
    @inline(__always)
    public static func quantizeRow(_ w: UnsafePointer<Float>, cols: Int, into q: UnsafeMutablePointer<Int8>) -> Float {
        var absmax: Float = 0
        for j in 0..<cols { absmax = max(absmax, abs(w[j])) }
        let scale = absmax / 127
        if scale == 0 {
            q.update(repeating: 0, count: cols)
            return 0
        }
        for j in 0..<cols {
            let v = (w[j] / scale).rounded(.toNearestOrEven)
            q[j] = Int8(max(-127, min(127, v)))
        }
        return scale
    }

    public func make(from w: UnsafePointer<Float>, rows: Int, cols: Int, pool: WorkerPool) -> Weight {
        let s = WeightStorage(byteCount: rows * cols, scaleCount: max(rows, 1))
        let q = s.bytes.assumingMemoryBound(to: Int8.self)
        let scales = s.scales!
        pool.chunks(rows, grain: 16) { r in
            for i in r { scales[i] = Self.quantizeRow(w + i * cols, cols: cols, into: q + i * cols) }
        }
        return Weight(format: self, rows: rows, cols: cols, data: UnsafeRawPointer(s.bytes),
                      scales: UnsafePointer(scales), owner: s)
    }

    public func dequantizeRows(_ w: Weight, _ r0: Int, _ r1: Int, into out: UnsafeMutablePointer<Float>) {
        let q = w.data.assumingMemoryBound(to: Int8.self), scales = w.scales!
        for i in r0..<r1 {
            let s = scales[i], src = q + i * w.cols, dst = out + (i - r0) * w.cols
            for j in 0..<w.cols { dst[j] = Float(src[j]) * s }
        }
    }
}
