import Tensor

/// Keys and values of every layer for S sequences decoded in lock-step (beams, or one
/// sequence), plus the work buffers of a decoding step. Sized once for capacity tokens.
public final class KVCache: @unchecked Sendable {
    public let S: Int            // sequences
    public let capacity: Int     // max tokens per sequence
    public private(set) var length: Int = 0
    let kvDim: Int
    let nKV: Int, hd: Int
    /// Each sequence's block of a layer, [nKV, capacity, hd]: a head's rows contiguous.
    let layout: KVLayout
    var k: [Tensor]              // per layer [S, nKV, capacity, hd] (after RoPE)
    var v: [Tensor]              // per layer [S, nKV, capacity, hd]
    private var spareK: [Tensor]  // for reordering beams without allocating
    private var spareV: [Tensor]
    // Step buffers for up to maxRows = S * maxChunk rows; at most maxChunk new tokens per
    // sequence in one step (the attention scratch), even when fewer sequences are fed.
    let maxRows: Int
    let maxChunk: Int
    let x, xn, q, kNew, vNew, att, gate, up, h, tmp: Tensor
    private(set) var u: Tensor   // [maxRows, maxRank] LoRA intermediate, grown for several adapters
    let lastHidden: Tensor       // [S, C]
    public let logits: Tensor    // [S, V]
    let positions: UnsafeMutablePointer<Int32>
    let scores: Tensor           // [nH, maxChunk, capacity] attention scratch
    let scratch = MatmulScratch()

    public init(model: LlamaModel, sequences S: Int, capacity: Int, maxChunk: Int, maxRank: Int = 0) {
        let c = model.config
        self.S = S; self.capacity = capacity; kvDim = c.kvDim
        nKV = c.numKeyValueHeads; hd = c.headDim
        layout = .headMajor(capacity: capacity, hd: c.headDim)
        k = (0..<c.numHiddenLayers).map { _ in Tensor([S, c.numKeyValueHeads, capacity, c.headDim], hugePages: true) }
        v = (0..<c.numHiddenLayers).map { _ in Tensor([S, c.numKeyValueHeads, capacity, c.headDim], hugePages: true) }
        spareK = S > 1 ? (0..<c.numHiddenLayers).map { _ in Tensor([S, c.numKeyValueHeads, capacity, c.headDim], hugePages: true) } : []
        spareV = S > 1 ? (0..<c.numHiddenLayers).map { _ in Tensor([S, c.numKeyValueHeads, capacity, c.headDim], hugePages: true) } : []
        maxRows = S * maxChunk
        self.maxChunk = maxChunk
        let M = maxRows, C = c.hiddenSize, I = c.intermediateSize
        x = Tensor([M, C]); xn = Tensor([M, C]); q = Tensor([M, c.qDim])
        kNew = Tensor([M, c.kvDim]); vNew = Tensor([M, c.kvDim]); att = Tensor([M, c.qDim])
        gate = Tensor([M, I]); up = Tensor([M, I]); h = Tensor([M, I]); tmp = Tensor([M, C])
        let maxR = max(1, maxRank)
        u = Tensor([M, maxR])
        lastHidden = Tensor([S, C])
        logits = Tensor([S, c.vocabSize])
        positions = .allocate(capacity: M)
        positions.initialize(repeating: 0, count: M)
        scores = Tensor([c.numAttentionHeads, maxChunk, capacity])
    }

    deinit { positions.deallocate() }

    public func reset() { length = 0 }

    /// u as scratch of at least n floats (grouped LoRA products: one [rows, rank] per adapter).
    func ensureScratch(_ n: Int) { if n > u.count { u = Tensor([(n + u.shape[1] - 1) / u.shape[1], u.shape[1]]) } }

    func advance(_ n: Int) { length += n }

    /// Sequence i takes the cache of sequence `source[i]` (beam search reordering).
    public func reorder(_ source: [Int]) {
        precondition(source.count == S)
        if source == Array(0..<S) { return }
        for l in 0..<k.count {
            for (i, s) in source.enumerated() {
                layout.copyRows(length, from: k[l].data + s * capacity * kvDim, to: spareK[l].data + i * capacity * kvDim, layout: layout, nKV: nKV, hd: hd)
                layout.copyRows(length, from: v[l].data + s * capacity * kvDim, to: spareV[l].data + i * capacity * kvDim, layout: layout, nKV: nKV, hd: hd)
            }
        }
        swap(&k, &spareK)
        swap(&v, &spareV)
    }

    /// Copies sequence 0's cache to all others (after a shared prompt prefill).
    public func broadcastFirst() {
        for l in 0..<k.count {
            for i in 1..<S {
                layout.copyRows(length, from: k[l].data, to: k[l].data + i * capacity * kvDim, layout: layout, nKV: nKV, hd: hd)
                layout.copyRows(length, from: v[l].data, to: v[l].data + i * capacity * kvDim, layout: layout, nKV: nKV, hd: hd)
            }
        }
    }
}

/// The step buffers of a decoding step (LlamaModel.decodeRows): rows of new tokens in x .. tmp,
/// their positions, the last rows' hidden states and logits.
protocol DecodeBuffers: AnyObject {
    var x: Tensor { get }
    var xn: Tensor { get }
    var q: Tensor { get }
    var kNew: Tensor { get }
    var vNew: Tensor { get }
    var att: Tensor { get }
    var gate: Tensor { get }
    var up: Tensor { get }
    var h: Tensor { get }
    var tmp: Tensor { get }
    var lastHidden: Tensor { get }
    var logits: Tensor { get }
    var positions: UnsafeMutablePointer<Int32> { get }
    var scratch: MatmulScratch { get }
}

extension KVCache: DecodeBuffers {}
