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
        let attStats: Tensor // [B, nH, T, 2] attention's row (max, 1/sum); probabilities are recomputed
        let att: Tensor     // [M, nH*hd]  attention output, o_proj input
        let xMid: Tensor    // [M, C]  residual after attention
        let rstd2: Tensor   // [M]
        let gate: Tensor    // [M, I]
        let up: Tensor      // [M, I]  (silu(gate) * up is recomputed in backward)
        /// Per projection the trained adapter acts on: u = xin A^T [M, r], and the dropout
        /// keep-mask [M, in] (owned by `Activations`).
        var loraU: [Projection: Tensor] = [:]
        var loraKeep: [Projection: UnsafeMutablePointer<UInt8>] = [:]

        init(c: LlamaConfig, B: Int, T: Int) {
            let M = B * T, C = c.hiddenSize, I = c.intermediateSize
            xIn = Tensor([M, C]); rstd1 = Tensor([M])
            q = Tensor([M, c.qDim]); k = Tensor([M, c.kvDim]); v = Tensor([M, c.kvDim])
            attStats = Tensor([FlashAttention.statsCount(B: B, T: T, nH: c.numAttentionHeads)]); att = Tensor([M, c.qDim])
            xMid = Tensor([M, C]); rstd2 = Tensor([M])
            gate = Tensor([M, I]); up = Tensor([M, I])
        }

        /// A layer with its own block input and every other buffer shared with `work`
        /// (gradient checkpointing: backward recomputes the block into `work`).
        init(xIn: Tensor, sharing work: Layer) {
            self.xIn = xIn
            rstd1 = work.rstd1; q = work.q; k = work.k; v = work.v; attStats = work.attStats; att = work.att
            xMid = work.xMid; rstd2 = work.rstd2; gate = work.gate; up = work.up
            loraU = work.loraU; loraKeep = work.loraKeep
        }

        var tensors: [Tensor] { [xIn, rstd1, q, k, v, attStats, att, xMid, rstd2, gate, up] + Array(loraU.values) }
    }

    /// With gradient checkpointing, forward keeps only each block's input (`layers[l].xIn`);
    /// all other per-layer buffers are one shared set, and backward recomputes each block's
    /// forward into it from its input. What forward needs to redo a block the same way:
    public let checkpointing: Bool
    /// The generator state at the start of each block (dropout masks are redrawn identically).
    var blockRNG: [RNG] = []
    /// The adapters and training flag of the last forward (a recomputed block applies the same).
    var forwardAdapters: AdapterSet = .none
    var forwardTraining = false

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
    /// The dropout keep-masks (shared between layers with checkpointing), freed here.
    let ownedKeeps: [(mask: UnsafeMutablePointer<UInt8>, count: Int)]
    let scratch = MatmulScratch()
    /// The adapter whose gradients backward computes (its u and dropout masks are kept here).
    public let trained: LoRAAdapter?

    /// Buffers for batches up to [maxB, maxT], for training `trained` (or forward only, nil)
    /// and for applying adapters of rank up to `maxRank` besides it. With `checkpointing`, the
    /// per-layer buffers are kept once (see `checkpointing`).
    public init(model: LlamaModel, trained: LoRAAdapter? = nil, maxRank: Int = 0, maxB: Int, maxT: Int,
                checkpointing: Bool = false) {
        self.trained = trained
        self.checkpointing = checkpointing
        let c = model.config
        self.maxB = maxB; self.maxT = maxT
        let M = maxB * maxT, C = c.hiddenSize, I = c.intermediateSize
        var maxR = max(1, maxRank), maxIn = 1, maxDoRAOut = 0
        for site in trained?.sites ?? [] where trained!.layers[site]!.isDoRA {
            maxDoRAOut = max(maxDoRAOut, trained!.layers[site]!.outFeatures)
        }
        var owned: [(mask: UnsafeMutablePointer<UInt8>, count: Int)] = []
        func keepMask(_ count: Int) -> UnsafeMutablePointer<UInt8> {
            let keep = UnsafeMutablePointer<UInt8>.allocate(capacity: count)
            keep.initialize(repeating: 1, count: count)
            owned.append((mask: keep, count: count))
            return keep
        }
        let sites = trained?.sites ?? []
        if checkpointing {
            // One shared set, its LoRA buffers sized for the largest site of each projection.
            let work = Layer(c: c, B: maxB, T: maxT)
            if let trained {
                for p in Set(sites.map(\.projection)) {
                    let ofP = sites.filter { $0.projection == p }
                    let r = ofP.map { trained.layers[$0]!.r }.max()!, inF = ofP.map { trained.layers[$0]!.inFeatures }.max()!
                    maxR = max(maxR, r); maxIn = max(maxIn, inF)
                    work.loraU[p] = Tensor([M, r])
                    if ofP.contains(where: { trained.layers[$0]!.dropout > 0 }) { work.loraKeep[p] = keepMask(M * inF) }
                }
            }
            layers = (0..<c.numHiddenLayers).map { l in l == 0 ? work : Layer(xIn: Tensor([M, C]), sharing: work) }
        } else {
            layers = (0..<c.numHiddenLayers).map { _ in Layer(c: c, B: maxB, T: maxT) }
            for site in sites {
                let a = trained!.layers[site]!
                maxR = max(maxR, a.r); maxIn = max(maxIn, a.inFeatures)
                layers[site.layer].loraU[site.projection] = Tensor([M, a.r])
                if a.dropout > 0 { layers[site.layer].loraKeep[site.projection] = keepMask(M * a.inFeatures) }
            }
        }
        ownedKeeps = owned
        xFinal = Tensor([M, C]); rstdF = Tensor([M]); xnF = Tensor([M, C])
        headRows = min(M, 256)
        logits = Tensor([headRows, c.vocabSize])
        xn = Tensor([M, C]); h = Tensor([M, I]); rstdScratch = Tensor([M])
        dres = Tensor([M, C]); dxn = Tensor([M, C])
        dq = Tensor([M, c.qDim]); dk = Tensor([M, c.kvDim]); dv = Tensor([M, c.kvDim])
        datt = Tensor([M, c.qDim]); dgate = Tensor([M, I]); dup = Tensor([M, I]); dh = Tensor([M, I])
        doraPre = maxDoRAOut > 0 ? Tensor([M, maxDoRAOut]) : nil
        doraDy = maxDoRAOut > 0 ? Tensor([M, maxDoRAOut]) : nil
        du = Tensor([M, maxR]); dz = Tensor([M, maxIn]); z = Tensor([M, maxIn]); uScratch = Tensor([M, maxR])
        positions = .allocate(capacity: M)
        positions.initialize(repeating: 0, count: M)
    }

    deinit { positions.deallocate(); for k in ownedKeeps { k.mask.deallocate() } }

    /// Bytes held (for memory reports), each buffer once.
    public var byteCount: Int {
        var seen = Set<ObjectIdentifier>(), n = 0
        var all = layers.flatMap(\.tensors)
        all += [xFinal, rstdF, xnF, logits, xn, h, rstdScratch, dres, dxn, dq, dk, dv, datt, dgate, dup, dh, du, dz, z, uScratch]
        all += [doraPre, doraDy].compactMap { $0 }
        for t in all where seen.insert(ObjectIdentifier(t)).inserted { n += t.count * 4 }
        return n + ownedKeeps.reduce(0) { $0 + $1.count } + maxB * maxT * 4   // + positions
    }

    /// What `Activations(model:trained:maxB:maxT:checkpointing:)` allocates, from the shapes
    /// alone (the memory plan; `byteCount` of a built one equals it). `sites` are the trained
    /// adapter's (projection, r, in features, has dropout); `doraOut` the widest DoRA site's
    /// out features (0: no DoRA).
    public static func plannedBytes(config c: LlamaConfig, sites: [(projection: Projection, r: Int, inFeatures: Int, dropout: Bool)],
                                    maxB: Int, maxT: Int, checkpointing: Bool, doraOut: Int = 0) -> Int {
        let M = maxB * maxT, C = c.hiddenSize, I = c.intermediateSize, L = c.numHiddenLayers
        let layer = M * (2 * C + 2 + 2 * c.qDim + 2 * c.kvDim + 2 * I) + FlashAttention.statsCount(B: maxB, T: maxT, nH: c.numAttentionHeads)
        var floats = 0, keepBytes = 0
        var maxR = 1, maxIn = 1
        if checkpointing {
            floats += layer + (L - 1) * M * C
            for p in Set(sites.map(\.projection)) {
                let ofP = sites.filter { $0.projection == p }
                let r = ofP.map(\.r).max()!, inF = ofP.map(\.inFeatures).max()!
                maxR = max(maxR, r); maxIn = max(maxIn, inF)
                floats += M * r
                if ofP.contains(where: \.dropout) { keepBytes += M * inF }
            }
        } else {
            floats += L * layer
            for s in sites {
                maxR = max(maxR, s.r); maxIn = max(maxIn, s.inFeatures)
                floats += M * s.r
                if s.dropout { keepBytes += M * s.inFeatures }
            }
        }
        floats += 3 * M * C + 2 * M + min(M, 256) * c.vocabSize          // xFinal, xnF, xn, rstdF, rstdScratch, logits
        floats += M * I + 2 * M * C + 2 * M * c.qDim + 2 * M * c.kvDim + 3 * M * I  // h, dres, dxn, dq, datt, dk, dv, dgate, dup, dh
        floats += 2 * M * maxR + 2 * M * maxIn                          // du, uScratch, dz, z
        floats += 2 * M * doraOut                                       // doraPre, doraDy
        return floats * 4 + keepBytes + M * 4                          // + positions
    }
}

