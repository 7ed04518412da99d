// Seam 1: a frozen weight is (format, shape, bytes). Each format lives in one file of this
// folder: its byte layout, how to make it from f32 rows, and `dequantizeRows`, the scalar
// reference every kernel of the format is tested against. Its fast products are the C kernels
// named by `kernelID` (Sources/CKernels: one per kernel family); a format without C kernels
// still works everywhere, through tiles dequantized into scratch and OpenBLAS (CPUBackend).
//
// Adding a format: a new file here with a `WeightFormat` value, a line in `WeightFormats.all`,
// and (for speed) its case in the C dispatch. Nothing else switches on formats.

/// A weight storage format.
public protocol WeightFormat: Sendable {
    /// The name users and configs use (`quantization:`), e.g. "int8".
    var name: String { get }
    /// The C kernels' format id (LORA_FORMAT_*), or nil when the format has none yet.
    var kernelID: Int32? { get }
    /// Bytes of a [rows, cols] weight, side data (scales) included.
    func byteCount(rows: Int, cols: Int) -> Int
    /// Makes a weight of this format from f32 rows [rows, cols] (quantizing where lossy).
    func make(from w: UnsafePointer<Float>, rows: Int, cols: Int, pool: WorkerPool) -> Weight
    /// Writes rows r0..<r1 as f32 into `out` ([r1 - r0, cols]): the scalar reference.
    func dequantizeRows(_ w: Weight, _ r0: Int, _ r1: Int, into out: UnsafeMutablePointer<Float>)
    /// Whether products with this format are f32 products of the stored values (f32, bf16).
    /// The others quantize (their weights, and in their products the activations), and
    /// decoding then reads LoRA factors as half copies (`PackedLoRAFactors.half`): their
    /// rounding, 2^-12 of the LoRA term, is far below the base's own.
    var productsAreExact: Bool { get }
}

extension WeightFormat {
    public var productsAreExact: Bool { false }
}

/// The registry: every format a model may store its frozen weights in.
public enum WeightFormats {
    public static let f32: any WeightFormat = F32Format()
    public static let bf16: any WeightFormat = BF16Format()
    public static let int8: any WeightFormat = Int8RowsFormat()
    /// int8's bytes with LLM.int8()'s forward arithmetic (threshold 6.0, bitsandbytes' default).
    public static let llmInt8: any WeightFormat = Int8RowsFormat(outlierThreshold: 6)
    public static let q8_0: any WeightFormat = GGUFBlockFormat(kind: .q8_0)
    public static let q4_0: any WeightFormat = GGUFBlockFormat(kind: .q4_0)
    public static let q4_1: any WeightFormat = GGUFBlockFormat(kind: .q4_1)
    public static let nf4: any WeightFormat = NF4Format()
    public static let q5_0: any WeightFormat = GGUFBlockFormat(kind: .q5_0)
    public static let q5_1: any WeightFormat = GGUFBlockFormat(kind: .q5_1)
    // The K-quants: weights read from GGUF files only (they cannot be made from f32 here).
    public static let q4_K: any WeightFormat = GGUFBlockFormat(kind: .q4_K)
    public static let q5_K: any WeightFormat = GGUFBlockFormat(kind: .q5_K)
    public static let q6_K: any WeightFormat = GGUFBlockFormat(kind: .q6_K)

    /// Every format that can be made from f32 rows (`make`).
    public static let all: [any WeightFormat] = [f32, bf16, int8, llmInt8, q8_0, q4_0, q4_1, nf4, q5_0, q5_1]
    /// Formats that only come from a file as they are stored there.
    public static let storedOnly: [any WeightFormat] = [q4_K, q5_K, q6_K]

    public static func named(_ name: String) -> (any WeightFormat)? { (all + storedOnly).first { $0.name == name } }
}

/// A frozen weight matrix W [out, in] in PyTorch's Linear layout, in some format. Frozen
/// weights get no gradient; only the products with activations are needed (CPUBackend):
///   forward        y[M, out]  = x[M, in] @ W^T
///   backward input dx[M, in] += dy[M, out] @ W
/// Immutable once made, so one model is shared by every thread and request.
public final class Weight: @unchecked Sendable {
    public let format: any WeightFormat
    public let rows: Int     // out features
    public let cols: Int     // in features
    /// The format's bytes, row-major [rows][cols] elements of the format.
    public let data: UnsafeRawPointer
    /// Per-row (or per-block) scales for formats that have them.
    public let scales: UnsafePointer<Float>?
    /// Keeps `data` and `scales` alive (a Tensor, a WeightStorage, a mapped file).
    let owner: AnyObject

    public init(format: any WeightFormat, rows: Int, cols: Int, data: UnsafeRawPointer,
                scales: UnsafePointer<Float>?, owner: AnyObject) {
        self.format = format; self.rows = rows; self.cols = cols
        self.data = data; self.scales = scales; self.owner = owner
    }

    /// Whether the bytes live in a `WeightArena` (huge pages where the kernel allows).
    public var inArena: Bool { owner is WeightArena.Chunk }

    public var outFeatures: Int { rows }
    public var inFeatures: Int { cols }
    public var byteCount: Int { format.byteCount(rows: rows, cols: cols) }

    /// Rows r0..<r1 as f32, through the format's scalar reference.
    public func dequantizeRows(_ r0: Int, _ r1: Int, into out: UnsafeMutablePointer<Float>) {
        format.dequantizeRows(self, r0, r1, into: out)
    }

    /// Full-precision copy (for merges, exports and tests).
    public func dense() -> Tensor {
        let t = Tensor([rows, cols])
        dequantizeRows(0, rows, into: t.data)
        return t
    }

    /// An f32 weight over a tensor's storage (no copy).
    public static func f32(_ t: Tensor) -> Weight {
        precondition(t.rank == 2, "a weight is [out, in], not \(t.shape)")
        return Weight(format: WeightFormats.f32, rows: t.shape[0], cols: t.shape[1],
                      data: UnsafeRawPointer(t.data), scales: nil, owner: t)
    }

    /// `tensor` [rows, cols] converted to `format`.
    public static func make(_ format: any WeightFormat, from t: Tensor, pool: WorkerPool) -> Weight {
        precondition(t.rank == 2, "a weight is [out, in], not \(t.shape)")
        if format.name == WeightFormats.f32.name { return .f32(t) }
        return format.make(from: t.data, rows: t.shape[0], cols: t.shape[1], pool: pool)
    }
}

/// 64-byte aligned raw storage owned by a weight (element bytes plus optional f32 scales).
public final class WeightStorage: @unchecked Sendable {
    public let bytes: UnsafeMutableRawPointer
    public let scales: UnsafeMutablePointer<Float>?
    public let byteCount: Int

    public init(byteCount: Int, scaleCount: Int) {
        self.byteCount = byteCount
        bytes = .allocate(byteCount: max(byteCount, 1), alignment: 64)
        bytes.initializeMemory(as: UInt8.self, repeating: 0, count: max(byteCount, 1))
        if scaleCount > 0 {
            let s = UnsafeMutablePointer<Float>.allocate(capacity: scaleCount)
            s.initialize(repeating: 0, count: scaleCount)
            scales = s
        } else {
            scales = nil
        }
    }

    deinit {
        bytes.deallocate()
        scales?.deallocate()
    }
}
