/// Int8 row-quantized matrix, bitsandbytes' row-wise scheme (LLM.int8 without outliers):
/// for each output row, `scale = absmax / 127`, `q = round_half_even(w / scale)` clamped to
/// [-127, 127], and `w ≈ q * scale`. Stored [rows, cols] = [out, in], the PyTorch Linear layout.
public final class QuantizedMatrix: @unchecked Sendable {
    public let rows: Int          // out features
    public let cols: Int          // in features
    public let q: UnsafeMutablePointer<Int8>     // [rows, cols]
    public let scales: UnsafeMutablePointer<Float> // [rows]

    public init(rows: Int, cols: Int) {
        self.rows = rows
        self.cols = cols
        q = UnsafeMutableRawPointer.allocate(byteCount: max(rows * cols, 1), alignment: 64)
            .bindMemory(to: Int8.self, capacity: max(rows * cols, 1))
        q.initialize(repeating: 0, count: max(rows * cols, 1))
        scales = .allocate(capacity: max(rows, 1))
        scales.initialize(repeating: 0, count: max(rows, 1))
    }

    deinit {
        UnsafeMutableRawPointer(q).deallocate()
        scales.deallocate()
    }

    /// Quantizes one f32 row (`cols` values) into row `r`.
    public func setRow(_ r: Int, from w: UnsafePointer<Float>) {
        var absmax: Float = 0
        for j in 0..<cols { absmax = max(absmax, abs(w[j])) }
        let scale = absmax / 127
        scales[r] = scale
        let out = q + r * cols
        if scale == 0 {
            out.update(repeating: 0, count: cols)
            return
        }
        for j in 0..<cols {
            let v = (w[j] / scale).rounded(.toNearestOrEven)
            out[j] = Int8(max(-127, min(127, v)))
        }
    }

    /// Quantizes a whole f32 matrix [rows, cols].
    public convenience init(quantizing w: UnsafePointer<Float>, rows: Int, cols: Int) {
        self.init(rows: rows, cols: cols)
        Parallel.chunks(rows, grain: 16) { r in
            for i in r { self.setRow(i, from: w + i * self.cols) }
        }
    }

    /// Writes rows `r0..<r1` dequantized to `out` ([r1 - r0, cols]).
    @inline(__always)
    public func dequantizeRows(_ r0: Int, _ r1: Int, into out: UnsafeMutablePointer<Float>) {
        for i in r0..<r1 {
            let s = scales[i]
            let src = q + i * cols
            let dst = out + (i - r0) * cols
            for j in 0..<cols { dst[j] = Float(src[j]) * s }
        }
    }

    public func dequantized() -> Tensor {
        let t = Tensor([rows, cols])
        dequantizeRows(0, rows, into: t.data)
        return t
    }

    public var byteCount: Int { rows * cols + rows * 4 }
}
