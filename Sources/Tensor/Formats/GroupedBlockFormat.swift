import CKernels

/// Q8_0 / Q4_0 / Q4_1 bytes regrouped for the integer decoding GEMV: CKernels.h's _X8 layouts.
/// Rows go in groups of 8, and a group keeps its rows' block b side by side, laid out as the
/// kernel's registers hold them (one 32-bit lane per row), so decoding loads them instead of
/// transposing every block, from one stream instead of eight. Same byte count and the same
/// products, bit for bit (`lora_q8_gemv` gives the plain layout's bits), as llama.cpp's
/// repacked Q4_0_8x8 does for its CPU kernels. Made at load for models that only decode
/// (generate, serve); `lora_q8_gemv` is the one product that reads it, others dequantize rows.
public struct GroupedBlockFormat: WeightFormat {
    public let base: GGUFBlockFormat
    /// Rows per group.
    public static let groupRows = 8

    /// nil for formats that have no grouped layout.
    public init?(base: GGUFBlockFormat) {
        guard [.q8_0, .q4_0, .q4_1].contains(base.kind) else { return nil }
        self.base = base
    }

    public var name: String { base.name + "x8" }
    public var kernelID: Int32? {
        switch base.kind {
        case .q8_0: return 12   // LORA_FORMAT_Q8_0_X8
        case .q4_0: return 13   // LORA_FORMAT_Q4_0_X8
        default: return 14      // LORA_FORMAT_Q4_1_X8
        }
    }
    public func byteCount(rows: Int, cols: Int) -> Int { base.byteCount(rows: rows, cols: cols) }

    public func make(from w: UnsafePointer<Float>, rows: Int, cols: Int, pool: WorkerPool) -> Weight {
        precondition(rows % Self.groupRows == 0, "\(name) needs whole groups of \(Self.groupRows) rows, not \(rows)")
        return Self.regroup(base.make(from: w, rows: rows, cols: cols, pool: pool), into: self, arena: nil)
    }

    /// Each row's blocks taken back out of its group (lora_q8x8_block), then the base format's
    /// scalar reference: the plain layout's values.
    public func dequantizeRows(_ w: Weight, _ r0: Int, _ r1: Int, into out: UnsafeMutablePointer<Float>) {
        let nb = w.cols / GGUFBlockFormat.blockSize, id = kernelID!
        var block = [UInt8](repeating: 0, count: 34)
        block.withUnsafeMutableBufferPointer { b in
            for i in r0..<r1 {
                for j in 0..<nb {
                    lora_q8x8_block(id, w.data, w.cols, i, j, b.baseAddress!)
                    GGUFBlockFormat.dequantizeBlock(base.kind, UnsafeRawPointer(b.baseAddress!), out + (i - r0) * w.cols + j * 32)
                }
            }
        }
    }

    /// `w` regrouped when it is Q8_0, Q4_0 or Q4_1 with whole groups of rows (and whole
    /// blocks), else `w` itself.
    /// `arena`: where the regrouped bytes go (a model's weights together, on huge pages), else
    /// a storage of their own.
    public static func grouped(_ w: Weight, arena: WeightArena? = nil) -> Weight {
        guard let b = w.format as? GGUFBlockFormat, let f = GroupedBlockFormat(base: b),
              w.rows % groupRows == 0, w.cols % GGUFBlockFormat.blockSize == 0 else { return w }
        return regroup(w, into: f, arena: arena)
    }

    private static func regroup(_ w: Weight, into f: GroupedBlockFormat, arena: WeightArena?) -> Weight {
        let bytes: UnsafeMutableRawPointer, owner: AnyObject
        if let arena {
            (bytes, owner) = arena.carve(w.byteCount)
        } else {
            let s = WeightStorage(byteCount: w.byteCount, scaleCount: 0)
            (bytes, owner) = (s.bytes, s)
        }
        lora_q8x8_pack(f.base.kernelID!, w.rows, w.cols, w.data, bytes)
        return Weight(format: f, rows: w.rows, cols: w.cols, data: UnsafeRawPointer(bytes), scales: nil, owner: owner)
    }
}
