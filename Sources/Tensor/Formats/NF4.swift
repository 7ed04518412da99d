import CKernels

/// NF4 with double quantization, as bitsandbytes stores a `Linear4bit` weight under
/// `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
/// bnb_4bit_use_double_quant=True)` (QLoRA). The weight is flattened row-major and cut into
/// blocks of 64 (a block may straddle rows; a partial last block is its own block):
///   q        [ceil(n/2)] u8   two 4-bit indices into the NF4 code book per byte, the even
///                             element in the high nibble
///   absmax8  [ceil(n/64)] u8  each block's absmax minus `offset`, 8-bit quantized with the
///                             signed dynamic map in blocks of 256 (quantize_blockwise)
///   nested   [ceil(n/64/256)] f32  the absmax of each block of 256 centred absmaxes
///   offset   f32              the mean of the f32 absmaxes
/// Dequantized: absmax = dynamic[absmax8[b]] * nested[b / 256] + offset (two float
/// roundings), w = code[q] * absmax; equal to `bitsandbytes.functional.dequantize_4bit` bit for
/// bit (Tests/Fixtures/reference/nf4). The C kernels (LORA_FORMAT_NF4) take a `lora_nf4`
/// descriptor of these arrays as the weight's `data`; the code book and the dynamic map are the
/// C tables in CKernels/nf4.c, so there is one copy of each.
public struct NF4Format: WeightFormat {
    public let name = "nf4"
    public var kernelID: Int32? { 6 }   // LORA_FORMAT_NF4
    public static let blockSize = 64
    public static let nestedBlockSize = 256

    /// The 16 NF4 values (bitsandbytes' `get_4bit_type("nf4")`).
    public static let code: [Float] = withUnsafeBytes(of: lora_nf4_code) { Array($0.bindMemory(to: Float.self)) }
    /// bitsandbytes' signed dynamic 8-bit map (`create_dynamic_map()`, the state2.code of a QuantState).
    public static let dynamic: [Float] = withUnsafeBytes(of: lora_nf4_dynamic) { Array($0.bindMemory(to: Float.self)) }

    /// Array sizes for n = rows * cols weights.
    public static func counts(_ n: Int) -> (bytes: Int, blocks: Int, nested: Int) {
        let blocks = (n + blockSize - 1) / blockSize
        return ((n + 1) / 2, blocks, (blocks + nestedBlockSize - 1) / nestedBlockSize)
    }

    public func byteCount(rows: Int, cols: Int) -> Int {
        let c = Self.counts(rows * cols)
        return c.bytes + c.blocks + 4 * c.nested + 4
    }

    /// bitsandbytes 0.50.2 on the CPU, step for step (checked bit for bit against it in
    /// NF4Tests): quantize_4bit (backends/default/ops.py), then for double quantization
    /// `offset = absmax.mean()` (torch's float sum, `torchFloatSum`) and quantize_blockwise of
    /// `absmax - offset` in blocks of 256 (the CPU library's 65536-entry lookup table).
    public func make(from w: UnsafePointer<Float>, rows: Int, cols: Int, pool: WorkerPool) -> Weight {
        let n = rows * cols, c = Self.counts(n)
        let s = NF4Storage(count: n)
        let absmax = UnsafeMutablePointer<Float>.allocate(capacity: max(c.blocks, 1))
        defer { absmax.deallocate() }
        pool.chunks(c.blocks, grain: 64) { r in
            for b in r { absmax[b] = Self.quantizeBlock(w, n: n, block: b, into: s.q) }
        }
        let offset = c.blocks == 0 ? 0 : Self.torchFloatSum(absmax, c.blocks) / Float(c.blocks)
        s.descriptor.pointee.offset = offset
        for b in 0..<c.blocks { absmax[b] = absmax[b] - offset }
        pool.chunks(c.nested, grain: 4) { r in
            for g in r { s.nested[g] = Self.quantizeNested(absmax, count: c.blocks, group: g, into: s.absmax8) }
        }
        return Weight(format: self, rows: rows, cols: cols, data: UnsafeRawPointer(s.descriptor), scales: nil, owner: s)
    }

    /// Bucket boundaries: the midpoints of neighbouring code values, in float.
    static let bounds: [Float] = (0..<15).map { (code[$0] + code[$0 + 1]) / 2 }

    /// Packs block `b` of the flattened weight into `q`; returns the absmax bitsandbytes keeps.
    /// Whole blocks: `clamp(w * (1 / max(absmax, 1e-38)), -1, 1)`; a partial last block divides
    /// by its clamped absmax and keeps that. The code is torch.bucketize's: the number of
    /// boundaries strictly below the value.
    static func quantizeBlock(_ w: UnsafePointer<Float>, n: Int, block b: Int, into q: UnsafeMutablePointer<UInt8>) -> Float {
        let lo = b * blockSize, hi = min(n, lo + blockSize), whole = hi - lo == blockSize
        var amax: Float = 0
        for i in lo..<hi { amax = max(amax, abs(w[i])) }
        let clamped = max(amax, 1e-38), inv: Float = 1 / clamped
        let bounds = Self.bounds
        for i in lo..<hi {
            let x = whole ? w[i] * inv : w[i] / clamped
            let v = min(max(x, -1), 1)
            var idx = 0
            while idx < 15 && bounds[idx] < v { idx += 1 }
            // Blocks are whole bytes (64 is even), so each byte is written by one worker.
            if i & 1 == 0 { q[i >> 1] = UInt8(idx) << 4 } else { q[i >> 1] |= UInt8(idx) }
        }
        // An odd n: bitsandbytes pads with one 0.0, whose code is the exact zero (index 7).
        if hi == n, n & 1 == 1 { q[n >> 1] |= 7 }
        return whole ? amax : clamped
    }

    /// torch's sum of a contiguous float32 vector on the CPU (aten SumKernel.cpp cascade_sum:
    /// 8-wide vectors, 4 of them interleaved, partial sums carried up 4 levels every
    /// 2^max(4, ceil(log2(rows)) / 4) rows, then the leftovers), so the mean matches bit for bit.
    static func torchFloatSum(_ a: UnsafePointer<Float>, _ n: Int) -> Float {
        let V = 8, ilp = 4, vectors = n / V, rows = vectors / ilp
        var levelPower = 4
        if rows > 1 { levelPower = max(4, (Int.bitWidth - (rows - 1).leadingZeroBitCount) / 4) }
        let step = 1 << levelPower, mask = step - 1
        // acc[level][lane], lane = ilp index * V + vector lane
        var acc = [[Float]](repeating: [Float](repeating: 0, count: ilp * V), count: 4)
        func addRow(_ r: Int) {
            for l in 0..<(ilp * V) { acc[0][l] += a[r * ilp * V + l] }
        }
        var i = 0
        while i + step <= rows {
            for _ in 0..<step { addRow(i); i += 1 }
            for j in 1..<4 {
                for l in 0..<(ilp * V) { acc[j][l] += acc[j - 1][l]; acc[j - 1][l] = 0 }
                if i & (mask << (j * levelPower)) != 0 { break }
            }
        }
        while i < rows { addRow(i); i += 1 }
        for j in 1..<4 { for l in 0..<(ilp * V) { acc[0][l] += acc[j][l] } }
        // partial_sums[0] = row sum of vector 0: leftover whole vectors, then the other ilp lanes
        var p = Array(acc[0][0..<V])
        for v in (rows * ilp)..<vectors { for l in 0..<V { p[l] += a[v * V + l] } }
        for k in 1..<ilp { for l in 0..<V { p[l] += acc[0][k * V + l] } }
        var total: Float = 0
        for k in (vectors * V)..<n { total += a[k] }
        for l in 0..<V { total += p[l] }
        return total
    }

    /// bitsandbytes' CPU lookup table for 8-bit blockwise quantization with the dynamic map:
    /// entry i covers the value -1 + 2i / 65535 and holds the nearest map index (the number of
    /// map midpoints below it).
    static let dynamicLUT: [UInt8] = {
        let map = dynamic
        let mids = (0..<255).map { 0.5 * (map[$0] + map[$0 + 1]) }
        var lut = [UInt8](repeating: 0, count: 65536), idx = 0
        for i in 0..<65536 {
            let v: Float = -1 + (2 * Float(i)) / 65535
            while idx < 255 && mids[idx] < v { idx += 1 }
            lut[i] = UInt8(idx)
        }
        return lut
    }()

    /// Quantizes centred absmaxes [256 g, 256 g + 256) into `codes`; returns the group's
    /// absmax (csrc/cpu_ops.cpp quantize_cpu: x * (1 / absmax), clamped, then
    /// lut[Int((v + 1) * 0.5 * 65535 + 0.5)]; an all-zero group gets codes 0).
    static func quantizeNested(_ a: UnsafePointer<Float>, count: Int, group g: Int, into codes: UnsafeMutablePointer<UInt8>) -> Float {
        let lo = g * nestedBlockSize, hi = min(count, lo + nestedBlockSize)
        var amax: Float = 0
        for i in lo..<hi { amax = max(amax, abs(a[i])) }
        if amax == 0 {
            for i in lo..<hi { codes[i] = 0 }
            return amax
        }
        let inv: Float = 1 / amax, lut = Self.dynamicLUT
        for i in lo..<hi {
            let v = min(max(a[i] * inv, -1), 1)
            let t: Float = (v + 1) * 0.5 * 65535 + 0.5
            codes[i] = lut[Int(t)]
        }
        return amax
    }

    public func dequantizeRows(_ w: Weight, _ r0: Int, _ r1: Int, into out: UnsafeMutablePointer<Float>) {
        let d = w.data.assumingMemoryBound(to: lora_nf4.self).pointee
        let code = Self.code, map = Self.dynamic
        let start = r0 * w.cols, end = r1 * w.cols
        var i = start
        while i < end {
            let b = i / Self.blockSize, stop = min(end, (b + 1) * Self.blockSize)
            let scaled = map[Int(d.absmax8[b])] * d.nested[b / Self.nestedBlockSize]
            let amax = scaled + d.offset
            while i < stop {
                let byte = d.q[i >> 1]
                out[i - start] = code[Int(i & 1 == 0 ? byte >> 4 : byte & 15)] * amax
                i += 1
            }
        }
    }
}

/// The arrays of one NF4 weight and the `lora_nf4` descriptor over them (what `Weight.data`
/// points to).
final class NF4Storage: @unchecked Sendable {
    let q: UnsafeMutablePointer<UInt8>
    let absmax8: UnsafeMutablePointer<UInt8>
    let nested: UnsafeMutablePointer<Float>
    let descriptor: UnsafeMutablePointer<lora_nf4>

    init(count n: Int) {
        let c = NF4Format.counts(n)
        q = .allocate(capacity: max(c.bytes, 1)); q.initialize(repeating: 0, count: max(c.bytes, 1))
        absmax8 = .allocate(capacity: max(c.blocks, 1)); absmax8.initialize(repeating: 0, count: max(c.blocks, 1))
        nested = .allocate(capacity: max(c.nested, 1)); nested.initialize(repeating: 0, count: max(c.nested, 1))
        descriptor = .allocate(capacity: 1)
        descriptor.initialize(to: lora_nf4(q: q, absmax8: absmax8, nested: nested, offset: 0))
    }

    deinit {
        q.deallocate(); absmax8.deallocate(); nested.deallocate(); descriptor.deallocate()
    }
}

extension NF4Format {
    /// A weight from bitsandbytes' arrays as they are (for tests and pre-quantized checkpoints).
    public static func weight(rows: Int, cols: Int, q: [UInt8], absmax8: [UInt8], nested: [Float], offset: Float) -> Weight {
        let s = NF4Storage(count: rows * cols), c = counts(rows * cols)
        precondition(q.count == c.bytes && absmax8.count == c.blocks && nested.count == c.nested,
                     "NF4 arrays for [\(rows), \(cols)] are \(c.bytes)/\(c.blocks)/\(c.nested), not \(q.count)/\(absmax8.count)/\(nested.count)")
        s.q.update(from: q, count: q.count)
        s.absmax8.update(from: absmax8, count: absmax8.count)
        s.nested.update(from: nested, count: nested.count)
        s.descriptor.pointee.offset = offset
        return Weight(format: WeightFormats.nf4, rows: rows, cols: cols, data: UnsafeRawPointer(s.descriptor), scales: nil, owner: s)
    }

    /// The arrays of an NF4 weight (tests compare them with bitsandbytes').
    public static func arrays(_ w: Weight) -> (q: [UInt8], absmax8: [UInt8], nested: [Float], offset: Float) {
        let d = w.data.assumingMemoryBound(to: lora_nf4.self).pointee, c = counts(w.rows * w.cols)
        return (Array(UnsafeBufferPointer(start: d.q, count: c.bytes)), Array(UnsafeBufferPointer(start: d.absmax8, count: c.blocks)),
                Array(UnsafeBufferPointer(start: d.nested, count: c.nested)), d.offset)
    }
}
