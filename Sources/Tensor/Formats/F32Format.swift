/// f32 rows: the checkpoint's values as they are.
public struct F32Format: WeightFormat {
    public let name = "f32"
    public var kernelID: Int32? { 0 }   // LORA_FORMAT_F32
    public var productsAreExact: Bool { true }
    public func byteCount(rows: Int, cols: Int) -> Int { rows * cols * 4 }

    public func make(from w: UnsafePointer<Float>, rows: Int, cols: Int, pool: WorkerPool) -> Weight {
        let t = Tensor([rows, cols])
        t.data.update(from: w, count: rows * cols)
        return .f32(t)
    }

    public func dequantizeRows(_ w: Weight, _ r0: Int, _ r1: Int, into out: UnsafeMutablePointer<Float>) {
        let src = w.data.assumingMemoryBound(to: Float.self)
        out.update(from: src + r0 * w.cols, count: (r1 - r0) * w.cols)
    }
}
