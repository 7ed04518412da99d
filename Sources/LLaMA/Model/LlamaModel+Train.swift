import Tensor

/// The training pass over a micro-batch: forward keeping activations, cross-entropy, and
/// backward into the LoRA gradients. Frozen weights get no gradient and no buffer.
extension LlamaModel {
    /// Forward through the blocks and the final norm; the normed hidden states land in
    /// `acts.xnF` [B*T, C] (the lm_head runs by row chunks in `headLoss` or `logits`).
    /// With `training`, LoRA dropout draws its masks from `rng`.
    public func forwardHidden(_ batch: Batch, acts: Activations, rng: inout RNG, training: Bool) {
        let c = config, B = batch.B, T = batch.T, M = B * T, C = c.hiddenSize, I = c.intermediateSize
        precondition(B <= acts.maxB && T <= acts.maxT, "batch [\(B), \(T)] exceeds activations [\(acts.maxB), \(acts.maxT)]")
        // Positions are 0..<T in every row, as transformers uses when given only an attention
        // mask (left padding shifts real tokens to later positions; the reference does the same).
        for b in 0..<B { for t in 0..<T { acts.positions[b * T + t] = Int32(t) } }
        batch.inputIDs.withUnsafeBufferPointer { ids in
            acts.profile.time(.embedding) { Embedding.forward(out: acts.layers[0].xIn.data, ids: ids.baseAddress!, table: embed.data, N: M, C: C) }
        }
        batch.attentionMask.withUnsafeBufferPointer { maskBuf in
            let keyMask = maskBuf.baseAddress!
            for (l, blk) in blocks.enumerated() {
                let a = acts.layers[l]
                let xOut = l + 1 < blocks.count ? acts.layers[l + 1].xIn : acts.xFinal
                // Attention: x -> norm -> q, k, v -> RoPE -> causal attention -> o, + residual.
                acts.profile.time(.rmsnorm) { RMSNorm.forward(y: acts.xn.data, rstd: a.rstd1.data, x: a.xIn.data, weight: blk.attnNorm.data, N: M, C: C, eps: c.rmsNormEps) }
                project(blk.q, .q, y: a.q.data, x: acts.xn.data, M: M, layer: a, acts: acts, rng: &rng, training: training)
                project(blk.k, .k, y: a.k.data, x: acts.xn.data, M: M, layer: a, acts: acts, rng: &rng, training: training)
                project(blk.v, .v, y: a.v.data, x: acts.xn.data, M: M, layer: a, acts: acts, rng: &rng, training: training)
                acts.profile.time(.rope) { RoPE.forward(x: a.q.data, positions: acts.positions, rows: M, nHeads: c.numAttentionHeads, headDim: c.headDim, table: rope) }
                acts.profile.time(.rope) { RoPE.forward(x: a.k.data, positions: acts.positions, rows: M, nHeads: c.numKeyValueHeads, headDim: c.headDim, table: rope) }
                acts.profile.time(.attention) {
                    Attention.forward(out: a.att.data, probs: a.probs.data, q: a.q.data, k: a.k.data, v: a.v.data, keyMask: keyMask,
                                      B: B, T: T, nH: c.numAttentionHeads, nKV: c.numKeyValueHeads, hd: c.headDim)
                }
                project(blk.o, .o, y: a.xMid.data, x: a.att.data, M: M, layer: a, acts: acts, rng: &rng, training: training)
                acts.profile.time(.residual) { VectorOps.add(out: a.xMid.data, a: a.xMid.data, b: a.xIn.data, count: M * C) }
                // MLP: x -> norm -> silu(gate) * up -> down, + residual.
                acts.profile.time(.rmsnorm) { RMSNorm.forward(y: acts.xn.data, rstd: a.rstd2.data, x: a.xMid.data, weight: blk.mlpNorm.data, N: M, C: C, eps: c.rmsNormEps) }
                project(blk.gate, .gate, y: a.gate.data, x: acts.xn.data, M: M, layer: a, acts: acts, rng: &rng, training: training)
                project(blk.up, .up, y: a.up.data, x: acts.xn.data, M: M, layer: a, acts: acts, rng: &rng, training: training)
                acts.profile.time(.swiglu) { SwiGLU.forward(h: acts.h.data, gate: a.gate.data, up: a.up.data, count: M * I) }
                project(blk.down, .down, y: xOut.data, x: acts.h.data, M: M, layer: a, acts: acts, rng: &rng, training: training)
                acts.profile.time(.residual) { VectorOps.add(out: xOut.data, a: xOut.data, b: a.xMid.data, count: M * C) }
            }
        }
        acts.profile.time(.rmsnorm) { RMSNorm.forward(y: acts.xnF.data, rstd: acts.rstdF.data, x: acts.xFinal.data, weight: norm.data, N: M, C: C, eps: c.rmsNormEps) }
    }

    /// A projection with its LoRA adapter (dropout applied to the adapter's input only).
    private func project(_ lin: Linear, _ p: Projection, y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>,
                         M: Int, layer a: Activations.Layer, acts: Activations, rng: inout RNG, training: Bool) {
        guard let lora = lin.adapters.first, let u = a.loraU[p] else {
            acts.profile.time(.projection) { Matmul.forward(y: y, x: x, w: lin.weight, M: M, scratch: acts.scratch) }
            return
        }
        var input: UnsafePointer<Float>? = nil
        if training, lora.dropout > 0, let keep = a.loraKeep[p] {
            let n = M * lora.inFeatures, p = lora.dropout, s = 1 / (1 - p), z = acts.z.data
            for i in 0..<n {
                keep[i] = rng.uniform() < p ? 0 : 1
                z[i] = keep[i] != 0 ? x[i] * s : 0
            }
            input = UnsafePointer(z)
        }
        lin.forward(y: y, x: x, M: M, scratch: acts.scratch, u: [u.data], loraInput: [input], profile: acts.profile)
    }

    /// Backward from d(xnF) (in `acts.dxn`, written by `headLoss`) down to the first block;
    /// accumulates into every LoRA adapter's gradA / gradB. The normed inputs and silu(gate)*up
    /// are not kept by forward: they are recomputed here, and only for adapted projections.
    public func backward(_ batch: Batch, acts: Activations) {
        let c = config, B = batch.B, T = batch.T, M = B * T, C = c.hiddenSize, I = c.intermediateSize
        acts.dres.zero()
        acts.profile.time(.rmsnorm) { RMSNorm.backward(dx: acts.dres.data, dy: acts.dxn.data, x: acts.xFinal.data, weight: norm.data, rstd: acts.rstdF.data, N: M, C: C) }
        let mask = batch.attentionMask
        mask.withUnsafeBufferPointer { mb in
        let keyMask = mb.baseAddress!
        for l in stride(from: blocks.count - 1, through: 0, by: -1) {
            let blk = blocks[l], a = acts.layers[l]
            // MLP backward. dres holds d(block output).
            if !blk.down.adapters.isEmpty {
                acts.profile.time(.swiglu) { SwiGLU.forward(h: acts.h.data, gate: a.gate.data, up: a.up.data, count: M * I) }
            }
            if !blk.gate.adapters.isEmpty || !blk.up.adapters.isEmpty {
                acts.profile.time(.rmsnorm) { RMSNorm.forward(y: acts.xn.data, rstd: acts.rstdScratch.data, x: a.xMid.data, weight: blk.mlpNorm.data, N: M, C: C, eps: c.rmsNormEps) }
            }
            projectBack(blk.down, .down, dx: acts.dh.data, dy: acts.dres.data, x: acts.h.data, M: M, accumulate: false, layer: a, acts: acts)
            acts.profile.time(.swiglu) { SwiGLU.backward(dgate: acts.dgate.data, dup: acts.dup.data, dh: acts.dh.data, gate: a.gate.data, up: a.up.data, count: M * I) }
            projectBack(blk.gate, .gate, dx: acts.dxn.data, dy: acts.dgate.data, x: acts.xn.data, M: M, accumulate: false, layer: a, acts: acts)
            projectBack(blk.up, .up, dx: acts.dxn.data, dy: acts.dup.data, x: acts.xn.data, M: M, accumulate: true, layer: a, acts: acts)
            acts.profile.time(.rmsnorm) { RMSNorm.backward(dx: acts.dres.data, dy: acts.dxn.data, x: a.xMid.data, weight: blk.mlpNorm.data, rstd: a.rstd2.data, N: M, C: C) }
            // Attention backward. dres now holds d(xMid).
            projectBack(blk.o, .o, dx: acts.datt.data, dy: acts.dres.data, x: a.att.data, M: M, accumulate: false, layer: a, acts: acts)
            acts.profile.time(.attention) {
                Attention.backward(dq: acts.dq.data, dk: acts.dk.data, dv: acts.dv.data, dout: acts.datt.data, probs: a.probs.data,
                                   q: a.q.data, k: a.k.data, v: a.v.data, keyMask: keyMask,
                                   scratch: acts.attentionScratch.data, B: B, T: T,
                                   nH: c.numAttentionHeads, nKV: c.numKeyValueHeads, hd: c.headDim)
            }
            acts.profile.time(.rope) { RoPE.backward(dx: acts.dq.data, positions: acts.positions, rows: M, nHeads: c.numAttentionHeads, headDim: c.headDim, table: rope) }
            acts.profile.time(.rope) { RoPE.backward(dx: acts.dk.data, positions: acts.positions, rows: M, nHeads: c.numKeyValueHeads, headDim: c.headDim, table: rope) }
            if !blk.q.adapters.isEmpty || !blk.k.adapters.isEmpty || !blk.v.adapters.isEmpty {
                acts.profile.time(.rmsnorm) { RMSNorm.forward(y: acts.xn.data, rstd: acts.rstdScratch.data, x: a.xIn.data, weight: blk.attnNorm.data, N: M, C: C, eps: c.rmsNormEps) }
            }
            projectBack(blk.q, .q, dx: acts.dxn.data, dy: acts.dq.data, x: acts.xn.data, M: M, accumulate: false, layer: a, acts: acts)
            projectBack(blk.k, .k, dx: acts.dxn.data, dy: acts.dk.data, x: acts.xn.data, M: M, accumulate: true, layer: a, acts: acts)
            projectBack(blk.v, .v, dx: acts.dxn.data, dy: acts.dv.data, x: acts.xn.data, M: M, accumulate: true, layer: a, acts: acts)
            acts.profile.time(.rmsnorm) { RMSNorm.backward(dx: acts.dres.data, dy: acts.dxn.data, x: a.xIn.data, weight: blk.attnNorm.data, rstd: a.rstd1.data, N: M, C: C) }
        }
        }
    }

    private func projectBack(_ lin: Linear, _ p: Projection, dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>,
                             x: UnsafePointer<Float>, M: Int, accumulate: Bool, layer a: Activations.Layer, acts: Activations) {
        guard let lora = lin.adapters.first, let u = a.loraU[p] else {
            acts.profile.time(.projection) { Matmul.backwardInput(dx: dx, dy: dy, w: lin.weight, M: M, accumulate: accumulate, scratch: acts.scratch) }
            return
        }
        var input = x
        var keep: UnsafePointer<UInt8>? = nil
        if let k = a.loraKeep[p], lora.dropout > 0 {
            // Recompute the dropped-out input from the saved mask.
            let n = M * lora.inFeatures, s = 1 / (1 - lora.dropout), z = acts.z.data
            for i in 0..<n { z[i] = k[i] != 0 ? x[i] * s : 0 }
            input = UnsafePointer(z)
            keep = UnsafePointer(k)
        }
        lin.backward(dx: dx, dy: dy, M: M, accumulate: accumulate, scratch: acts.scratch,
                     u: u.data, loraInput: input, keep: keep, du: acts.du.data, dz: acts.dz.data, profile: acts.profile)
    }

    /// The lm_head and cross-entropy over row chunks of acts.xnF, so the full [M, V] logits never
    /// exist: per chunk, logits = xnF @ lmHead^T, loss and dlogits (in place), and with
    /// `gradScale` d(xnF) = dlogits @ lmHead into acts.dxn.
    func headLoss(_ batch: Batch, acts: Activations, gradScale: Float?) -> (lossSum: Double, tokens: Int) {
        let c = config, M = batch.B * batch.T, C = c.hiddenSize, V = c.vocabSize
        let targets = batch.shiftedTargets
        var sum = 0.0, count = 0
        var r0 = 0
        while r0 < M {
            let rows = min(acts.headRows, M - r0)
            let logits = acts.logits.data
            acts.profile.time(.lmHead) {
                Matmul.forward(y: logits, x: acts.xnF.data + r0 * C, w: .f32(lmHead), M: rows, scratch: acts.scratch)
            }
            let r = acts.profile.time(.crossEntropy) {
                targets.withUnsafeBufferPointer { t in
                    CrossEntropy.forwardBackward(dlogits: gradScale == nil ? nil : logits, logits: logits, targets: t.baseAddress! + r0,
                                                 N: rows, V: V, gradScale: gradScale ?? 0)
                }
            }
            sum += r.lossSum; count += r.count
            if gradScale != nil {
                // dxnF[rows, C] = dlogits[rows, V] @ lmHead[V, C]
                acts.profile.time(.lmHead) {
                    Matmul.backwardInput(dx: acts.dxn.data + r0 * C, dy: logits, w: .f32(lmHead), M: rows, accumulate: false,
                                         scratch: acts.scratch)
                }
            }
            r0 += rows
        }
        return (sum, count)
    }

    /// Forward, cross-entropy and backward for one micro-batch. The loss gradient is scaled by
    /// `gradScale` (1 / trained tokens of the whole accumulated batch). Returns the summed
    /// token loss and the number of tokens that carried loss.
    public func forwardBackward(_ batch: Batch, acts: Activations, rng: inout RNG, gradScale: Float,
                                training: Bool = true) -> (lossSum: Double, tokens: Int) {
        forwardHidden(batch, acts: acts, rng: &rng, training: training)
        let r = headLoss(batch, acts: acts, gradScale: gradScale)
        backward(batch, acts: acts)
        return r
    }

    /// Loss only (evaluation): summed token loss and token count.
    public func loss(_ batch: Batch, acts: Activations) -> (lossSum: Double, tokens: Int) {
        var rng = RNG(seed: 0)
        forwardHidden(batch, acts: acts, rng: &rng, training: false)
        return headLoss(batch, acts: acts, gradScale: nil)
    }

    /// All logits [B*T, V] of a batch (for inspection and tests; training never builds them).
    public func logits(_ batch: Batch, acts: Activations) -> Tensor {
        var rng = RNG(seed: 0)
        forwardHidden(batch, acts: acts, rng: &rng, training: false)
        let M = batch.B * batch.T, C = config.hiddenSize
        let out = Tensor([M, config.vocabSize])
        Matmul.forward(y: out.data, x: acts.xnF.data, w: .f32(lmHead), M: M, scratch: acts.scratch)
        return out
    }
}
