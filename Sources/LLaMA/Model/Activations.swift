import Tensor

/// Everything the forward pass keeps for backward, sized once for [maxB, maxT] and reused
/// every step, so the training loop allocates nothing. Shapes use M = B*T rows.
public final class Activations: @unchecked Sendable {
    public final class Layer: @unchecked Sendable {
        let xIn: Tensor     // [M, C]  block input (residual stream)
        let rstd1: Tensor   // [M]     (the normed input is recomputed in backward)
        let q: Tensor       // [M, nH*hd]  after RoPE
        let k: Tensor       // [M, nKV*hd] after RoPE
        let v: Tensor       // [M, nKV*hd]
        let probs: Tensor   // [B, nH, T, T]
        let att: Tensor     // [M, nH*hd]  attention output, o_proj input
        let xMid: Tensor    // [M, C]  residual after attention
        let rstd2: Tensor   // [M]
        let gate: Tensor    // [M, I]
        let up: Tensor      // [M, I]  (silu(gate) * up is recomputed in backward)
        /// Per projection the trained adapter acts on: u = xin A^T [M, r], and the dropout
        /// keep-mask [M, in].
        var loraU: [Projection: Tensor] = [:]
        var loraKeep: [Projection: UnsafeMutablePointer<UInt8>] = [:]

        init(c: LlamaConfig, B: Int, T: Int) {
            let M = B * T, C = c.hiddenSize, I = c.intermediateSize
            xIn = Tensor([M, C]); rstd1 = Tensor([M])
            q = Tensor([M, c.qDim]); k = Tensor([M, c.kvDim]); v = Tensor([M, c.kvDim])
            probs = Tensor([B, c.numAttentionHeads, T, T]); att = Tensor([M, c.qDim])
            xMid = Tensor([M, C]); rstd2 = Tensor([M])
            gate = Tensor([M, I]); up = Tensor([M, I])
        }
        deinit { for p in loraKeep.values { p.deallocate() } }
    }

    public let maxB: Int
    public let maxT: Int
    let layers: [Layer]
    let xFinal: Tensor   // [M, C]
    let rstdF: Tensor    // [M]
    let xnF: Tensor      // [M, C]
    /// Rows of logits computed at a time by the lm_head (the full [M, V] never exists).
    public let headRows: Int
    let logits: Tensor   // [headRows, V] (dlogits in place)
    // Shared by all layers: the normed block input and silu(gate) * up, as forward needs them
    // and as backward recomputes them.
    let xn: Tensor       // [M, C]
    let h: Tensor        // [M, I]
    let rstdScratch: Tensor // [M]
    // Backward work buffers, shared by all layers.
    let dres: Tensor     // [M, C]
    let dxn: Tensor      // [M, C]
    let dq: Tensor       // [M, nH*hd]
    let dk: Tensor       // [M, nKV*hd]
    let dv: Tensor       // [M, nKV*hd]
    let datt: Tensor     // [M, nH*hd]
    let dgate: Tensor    // [M, I]
    let dup: Tensor      // [M, I]
    let dh: Tensor       // [M, I]
    let du: Tensor       // [M, maxR]
    let dz: Tensor       // [M, maxIn]
    let z: Tensor        // [M, maxIn] dropped-out LoRA input
    let uScratch: Tensor // [M, maxR] u of adapters that are applied but not trained
    /// DoRA (trained adapter only): x W^T + scale u B^T and m / n * dy, [M, maxOut] each.
    let doraPre: Tensor?
    let doraDy: Tensor?
    let positions: UnsafeMutablePointer<Int32>   // [M]
    let attentionScratch: Tensor  // Attention.backward's dS buffers
    let scratch = MatmulScratch()
    /// The adapter whose gradients backward computes (its u and dropout masks are kept here).
    public let trained: LoRAAdapter?

    /// Buffers for batches up to [maxB, maxT], for training `trained` (or forward only, nil)
    /// and for applying adapters of rank up to `maxRank` besides it.
    public init(model: LlamaModel, trained: LoRAAdapter? = nil, maxRank: Int = 0, maxB: Int, maxT: Int) {
        self.trained = trained
        let c = model.config
        self.maxB = maxB; self.maxT = maxT
        let M = maxB * maxT, C = c.hiddenSize, I = c.intermediateSize
        layers = (0..<c.numHiddenLayers).map { _ in Layer(c: c, B: maxB, T: maxT) }
        xFinal = Tensor([M, C]); rstdF = Tensor([M]); xnF = Tensor([M, C])
        headRows = min(M, 256)
        logits = Tensor([headRows, c.vocabSize])
        xn = Tensor([M, C]); h = Tensor([M, I]); rstdScratch = Tensor([M])
        dres = Tensor([M, C]); dxn = Tensor([M, C])
        dq = Tensor([M, c.qDim]); dk = Tensor([M, c.kvDim]); dv = Tensor([M, c.kvDim])
        datt = Tensor([M, c.qDim]); dgate = Tensor([M, I]); dup = Tensor([M, I]); dh = Tensor([M, I])
        var maxR = max(1, maxRank), maxIn = 1, maxDoRAOut = 0
        if let trained {
            for site in trained.sites {
                let a = trained.layers[site]!
                maxR = max(maxR, a.r); maxIn = max(maxIn, a.inFeatures)
                if a.isDoRA { maxDoRAOut = max(maxDoRAOut, a.outFeatures) }
                layers[site.layer].loraU[site.projection] = Tensor([M, a.r])
                if a.dropout > 0 {
                    let keep = UnsafeMutablePointer<UInt8>.allocate(capacity: M * a.inFeatures)
                    keep.initialize(repeating: 1, count: M * a.inFeatures)
                    layers[site.layer].loraKeep[site.projection] = keep
                }
            }
        }
        doraPre = maxDoRAOut > 0 ? Tensor([M, maxDoRAOut]) : nil
        doraDy = maxDoRAOut > 0 ? Tensor([M, maxDoRAOut]) : nil
        du = Tensor([M, maxR]); dz = Tensor([M, maxIn]); z = Tensor([M, maxIn]); uScratch = Tensor([M, maxR])
        attentionScratch = Tensor([Attention.backwardScratchCount(B: maxB, T: maxT, nKV: c.numKeyValueHeads)])
        positions = .allocate(capacity: M)
        positions.initialize(repeating: 0, count: M)
    }

    deinit { positions.deallocate() }

    /// Bytes held (for memory reports).
    public var byteCount: Int {
        var n = 0
        for l in layers {
            n += [l.xIn, l.rstd1, l.q, l.k, l.v, l.probs, l.att, l.xMid, l.rstd2, l.gate, l.up]
                .reduce(0) { $0 + $1.count * 4 }
            n += l.loraU.values.reduce(0) { $0 + $1.count * 4 }
        }
        return n + (xFinal.count * 2 + logits.count + xn.count + h.count + dres.count * 2 + dq.count * 2 + dk.count * 2
                     + dgate.count * 3 + du.count * 2 + dz.count * 2
                     + (doraPre?.count ?? 0) + (doraDy?.count ?? 0)) * 4
    }
}
