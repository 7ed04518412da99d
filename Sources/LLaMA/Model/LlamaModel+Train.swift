import Tensor

/// The training pass over a micro-batch: forward keeping activations, cross-entropy, and
/// backward into the trained adapter's gradients. Frozen weights get no gradient and no buffer.
/// Every op runs on `ctx.backend`.
extension LlamaModel {
    /// Forward through the blocks and the final norm with `adapters` applied; the normed hidden
    /// states land in `acts.xnF` [B*T, C] (the lm_head runs by row chunks in `headLoss` or
    /// `logits`). With `training`, the trained adapter's dropout draws its masks from `rng`.
    public func forwardHidden(_ batch: Batch, adapters: AdapterSet, acts: Activations, ctx: ExecutionContext,
                              rng: inout RNG, training: Bool) {
        let c = config, B = batch.B, T = batch.T, M = B * T, C = c.hiddenSize
        let be = ctx.backend, prof = ctx.profile
        precondition(B <= acts.maxB && T <= acts.maxT, "batch [\(B), \(T)] exceeds activations [\(acts.maxB), \(acts.maxT)]")
        // Positions are 0..<T in every row, as transformers uses when given only an attention
        // mask (left padding shifts real tokens to later positions; the reference does the same).
        for b in 0..<B { for t in 0..<T { acts.positions[b * T + t] = Int32(t) } }
        batch.inputIDs.withUnsafeBufferPointer { ids in
            prof.time(.embedding) { be.embedding(out: acts.layers[0].xIn.data, ids: ids.baseAddress!, table: embed.data, N: M, C: C) }
        }
        if acts.checkpointing {
            acts.forwardAdapters = adapters
            acts.forwardTraining = training
            acts.blockRNG.removeAll(keepingCapacity: true)
        }
        batch.attentionMask.withUnsafeBufferPointer { maskBuf in
            for l in blocks.indices {
                if acts.checkpointing { acts.blockRNG.append(rng) }
                blockForward(l, B: B, T: T, keyMask: maskBuf.baseAddress!, adapters: adapters, acts: acts, ctx: ctx,
                             rng: &rng, training: training)
            }
        }
        prof.time(.rmsnorm) { be.rmsnormForward(y: acts.xnF.data, rstd: acts.rstdF.data, x: acts.xFinal.data, weight: norm.data, N: M, C: C, eps: c.rmsNormEps) }
    }

    /// Block `l` forward from `acts.layers[l].xIn` to the next block's input (or `acts.xFinal`),
    /// keeping what backward needs in `acts.layers[l]`.
    func blockForward(_ l: Int, B: Int, T: Int, keyMask: UnsafePointer<Float>, adapters: AdapterSet, acts: Activations,
                      ctx: ExecutionContext, rng: inout RNG, training: Bool) {
        let c = config, M = B * T, C = c.hiddenSize, I = c.intermediateSize
        let be = ctx.backend, prof = ctx.profile
        func project(_ lin: Linear, _ l: Int, _ p: Projection, y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>) {
            self.project(lin, LoRASite(l, p), y: y, x: x, M: M, adapters: adapters, acts: acts, ctx: ctx, rng: &rng, training: training)
        }
        let blk = blocks[l], a = acts.layers[l]
        let xOut = l + 1 < blocks.count ? acts.layers[l + 1].xIn : acts.xFinal
        // Attention: x -> norm -> q, k, v -> RoPE -> causal attention -> o, + residual.
        prof.time(.rmsnorm) { be.rmsnormForward(y: acts.xn.data, rstd: a.rstd1.data, x: a.xIn.data, weight: blk.attnNorm.data, N: M, C: C, eps: c.rmsNormEps) }
        project(blk.q, l, .q, y: a.q.data, x: acts.xn.data)
        project(blk.k, l, .k, y: a.k.data, x: acts.xn.data)
        project(blk.v, l, .v, y: a.v.data, x: acts.xn.data)
        prof.time(.rope) { be.ropeForward(x: a.q.data, positions: acts.positions, rows: M, nHeads: c.numAttentionHeads, headDim: c.headDim, table: rope) }
        prof.time(.rope) { be.ropeForward(x: a.k.data, positions: acts.positions, rows: M, nHeads: c.numKeyValueHeads, headDim: c.headDim, table: rope) }
        prof.time(.attention) {
            be.attentionForward(out: a.att.data, stats: a.attStats.data, q: a.q.data, k: a.k.data, v: a.v.data, keyMask: keyMask,
                                B: B, T: T, nH: c.numAttentionHeads, nKV: c.numKeyValueHeads, hd: c.headDim)
        }
        project(blk.o, l, .o, y: a.xMid.data, x: a.att.data)
        prof.time(.residual) { be.add(out: a.xMid.data, a: a.xMid.data, b: a.xIn.data, count: M * C) }
        // MLP: x -> norm -> silu(gate) * up -> down, + residual.
        prof.time(.rmsnorm) { be.rmsnormForward(y: acts.xn.data, rstd: a.rstd2.data, x: a.xMid.data, weight: blk.mlpNorm.data, N: M, C: C, eps: c.rmsNormEps) }
        project(blk.gate, l, .gate, y: a.gate.data, x: acts.xn.data)
        project(blk.up, l, .up, y: a.up.data, x: acts.xn.data)
        prof.time(.swiglu) { be.swigluForward(h: acts.h.data, gate: a.gate.data, up: a.up.data, count: M * I) }
        project(blk.down, l, .down, y: xOut.data, x: acts.h.data)
        prof.time(.residual) { be.add(out: xOut.data, a: xOut.data, b: a.xMid.data, count: M * C) }
    }

    /// A projection with every adapter of the set that acts on it. The trained adapter keeps u
    /// (and its dropout mask) in `acts` for backward; dropout applies to its input only.
    private func project(_ lin: Linear, _ site: LoRASite, y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, M: Int,
                         adapters: AdapterSet, acts: Activations, ctx: ExecutionContext, rng: inout RNG, training: Bool) {
        let be = ctx.backend
        ctx.profile.time(.projection) { be.matmul(y: y, x: x, w: lin.weight, M: M, accumulate: false, scratch: acts.scratch) }
        let applied = adapters.layers(at: site)
        if applied.isEmpty { return }
        let trainedLayer = acts.trained?.layers[site]
        ctx.profile.time(.lora) {
            for (layer, weight) in applied {
                if layer.isDoRA {
                    precondition(applied.count == 1 && weight == 1, "a DoRA adapter applies alone at weight 1 (AdapterSet.validate)")
                    layer.refreshNorm(lin.weight)
                }
                guard layer === trainedLayer, let u = acts.layers[site.layer].loraU[site.projection] else {
                    if layer.isDoRA {
                        layer.forwardDoRA(be, y: y, xin: x, M: M, dropped: false, base: lin.weight, u: acts.uScratch.data,
                                          pre: nil, scratch: acts.scratch)
                    } else {
                        layer.forward(be, y: y, xin: x, M: M, weight: weight, u: acts.uScratch.data)
                    }
                    continue
                }
                var xin = x, dropped = false
                if training, layer.dropout > 0, let keep = acts.layers[site.layer].loraKeep[site.projection] {
                    layer.drop(x: x, M: M, keep: keep, z: acts.z.data, rng: &rng, backend: ctx.backend)
                    xin = UnsafePointer(acts.z.data)
                    dropped = true
                }
                if layer.isDoRA {
                    layer.forwardDoRA(be, y: y, xin: xin, M: M, dropped: dropped, base: lin.weight, u: u.data,
                                      pre: acts.doraPre?.data, scratch: acts.scratch)
                } else {
                    layer.forward(be, y: y, xin: xin, M: M, weight: weight, u: u.data)
                }
            }
        }
    }

    /// Backward from d(xnF) (in `acts.dxn`, written by `headLoss`) down to the first block;
    /// accumulates into the trained adapter's gradients. The normed inputs and silu(gate)*up
    /// are not kept by forward: they are recomputed here, and only for adapted projections.
    public func backward(_ batch: Batch, acts: Activations, ctx: ExecutionContext) {
        let c = config, B = batch.B, T = batch.T, M = B * T, C = c.hiddenSize, I = c.intermediateSize
        let be = ctx.backend, prof = ctx.profile
        func adapted(_ l: Int, _ ps: Projection...) -> Bool {
            guard let t = acts.trained else { return false }
            return ps.contains { t.layers[LoRASite(l, $0)] != nil }
        }
        func back(_ lin: Linear, _ l: Int, _ p: Projection, dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>,
                  x: UnsafePointer<Float>, accumulate: Bool) {
            projectBack(lin, LoRASite(l, p), dx: dx, dy: dy, x: x, M: M, accumulate: accumulate, acts: acts, ctx: ctx)
        }
        acts.dres.zero()
        prof.time(.rmsnorm) { be.rmsnormBackward(dx: acts.dres.data, dy: acts.dxn.data, x: acts.xFinal.data, weight: norm.data, rstd: acts.rstdF.data, N: M, C: C) }
        batch.attentionMask.withUnsafeBufferPointer { mb in
        let keyMask = mb.baseAddress!
        for l in stride(from: blocks.count - 1, through: 0, by: -1) {
            let blk = blocks[l], a = acts.layers[l]
            if acts.checkpointing && l + 1 < blocks.count {
                // Redo this block's forward from its kept input into the shared buffers, with the
                // generator state it started from (the same dropout masks): the same bits as the
                // first time. The last block's buffers still hold its forward.
                var rng = acts.blockRNG[l]
                blockForward(l, B: B, T: T, keyMask: keyMask, adapters: acts.forwardAdapters, acts: acts, ctx: ctx,
                             rng: &rng, training: acts.forwardTraining)
            }
            // MLP backward. dres holds d(block output).
            if adapted(l, .down) {
                prof.time(.swiglu) { be.swigluForward(h: acts.h.data, gate: a.gate.data, up: a.up.data, count: M * I) }
            }
            if adapted(l, .gate, .up) {
                prof.time(.rmsnorm) { be.rmsnormForward(y: acts.xn.data, rstd: acts.rstdScratch.data, x: a.xMid.data, weight: blk.mlpNorm.data, N: M, C: C, eps: c.rmsNormEps) }
            }
            back(blk.down, l, .down, dx: acts.dh.data, dy: acts.dres.data, x: acts.h.data, accumulate: false)
            prof.time(.swiglu) { be.swigluBackward(dgate: acts.dgate.data, dup: acts.dup.data, dh: acts.dh.data, gate: a.gate.data, up: a.up.data, count: M * I) }
            back(blk.gate, l, .gate, dx: acts.dxn.data, dy: acts.dgate.data, x: acts.xn.data, accumulate: false)
            back(blk.up, l, .up, dx: acts.dxn.data, dy: acts.dup.data, x: acts.xn.data, accumulate: true)
            prof.time(.rmsnorm) { be.rmsnormBackward(dx: acts.dres.data, dy: acts.dxn.data, x: a.xMid.data, weight: blk.mlpNorm.data, rstd: a.rstd2.data, N: M, C: C) }
            // Attention backward. dres now holds d(xMid).
            back(blk.o, l, .o, dx: acts.datt.data, dy: acts.dres.data, x: a.att.data, accumulate: false)
            prof.time(.attention) {
                be.attentionBackward(dq: acts.dq.data, dk: acts.dk.data, dv: acts.dv.data, dout: acts.datt.data, stats: a.attStats.data,
                                     q: a.q.data, k: a.k.data, v: a.v.data, keyMask: keyMask, B: B, T: T,
                                     nH: c.numAttentionHeads, nKV: c.numKeyValueHeads, hd: c.headDim)
            }
            prof.time(.rope) { be.ropeBackward(dx: acts.dq.data, positions: acts.positions, rows: M, nHeads: c.numAttentionHeads, headDim: c.headDim, table: rope) }
            prof.time(.rope) { be.ropeBackward(dx: acts.dk.data, positions: acts.positions, rows: M, nHeads: c.numKeyValueHeads, headDim: c.headDim, table: rope) }
            if adapted(l, .q, .k, .v) {
                prof.time(.rmsnorm) { be.rmsnormForward(y: acts.xn.data, rstd: acts.rstdScratch.data, x: a.xIn.data, weight: blk.attnNorm.data, N: M, C: C, eps: c.rmsNormEps) }
            }
            back(blk.q, l, .q, dx: acts.dxn.data, dy: acts.dq.data, x: acts.xn.data, accumulate: false)
            back(blk.k, l, .k, dx: acts.dxn.data, dy: acts.dk.data, x: acts.xn.data, accumulate: true)
            back(blk.v, l, .v, dx: acts.dxn.data, dy: acts.dv.data, x: acts.xn.data, accumulate: true)
            prof.time(.rmsnorm) { be.rmsnormBackward(dx: acts.dres.data, dy: acts.dxn.data, x: a.xIn.data, weight: blk.attnNorm.data, rstd: a.rstd1.data, N: M, C: C) }
        }
        }
    }

    private func projectBack(_ lin: Linear, _ site: LoRASite, dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>,
                             x: UnsafePointer<Float>, M: Int, accumulate: Bool, acts: Activations, ctx: ExecutionContext) {
        let be = ctx.backend
        let trained = acts.trained?.layers[site]
        // A DoRA layer's backward runs the base product itself (its dy is rescaled by m / n).
        if trained?.isDoRA != true {
            ctx.profile.time(.projection) { be.matmulBackwardInput(dx: dx, dy: dy, w: lin.weight, M: M, accumulate: accumulate, scratch: acts.scratch) }
        }
        guard let layer = trained, let u = acts.layers[site.layer].loraU[site.projection] else { return }
        ctx.profile.time(.lora) {
            var xin = x
            var keep: UnsafePointer<UInt8>? = nil
            if let k = acts.layers[site.layer].loraKeep[site.projection], layer.dropout > 0 {
                layer.redrop(x: x, M: M, keep: k, z: acts.z.data, pool: ctx.pool)
                xin = UnsafePointer(acts.z.data)
                keep = UnsafePointer(k)
            }
            if layer.isDoRA, let pre = acts.doraPre, let dyc = acts.doraDy {
                layer.backwardDoRA(be, dx: dx, dy: dy, M: M, accumulate: accumulate, base: lin.weight, u: u.data, xin: xin,
                                   keep: keep, pre: pre.data, dyc: dyc.data, du: acts.du.data, dz: acts.dz.data,
                                   scratch: acts.scratch)
            } else {
                layer.backward(be, dx: dx, dy: dy, M: M, u: u.data, xin: xin, keep: keep, du: acts.du.data, dz: acts.dz.data)
            }
        }
    }

    /// The lm_head and cross-entropy over row chunks of acts.xnF, so the full [M, V] logits never
    /// exist: per chunk, logits = xnF @ lmHead^T, loss and dlogits (in place), and with
    /// `gradScale` d(xnF) = dlogits @ lmHead into acts.dxn.
    func headLoss(_ batch: Batch, acts: Activations, ctx: ExecutionContext, gradScale: Float?) -> (lossSum: Double, tokens: Int) {
        let c = config, M = batch.B * batch.T, C = c.hiddenSize, V = c.vocabSize
        let be = ctx.backend, prof = ctx.profile
        let targets = batch.shiftedTargets
        let head = Weight.f32(lmHead)
        var sum = 0.0, count = 0
        var r0 = 0
        while r0 < M {
            let rows = min(acts.headRows, M - r0)
            let logits = acts.logits.data
            prof.time(.lmHead) {
                be.matmul(y: logits, x: acts.xnF.data + r0 * C, w: head, M: rows, accumulate: false, scratch: acts.scratch)
            }
            let r = prof.time(.crossEntropy) {
                targets.withUnsafeBufferPointer { t in
                    be.crossEntropy(dlogits: gradScale == nil ? nil : logits, logits: logits, targets: t.baseAddress! + r0,
                                    N: rows, V: V, gradScale: gradScale ?? 0)
                }
            }
            sum += r.lossSum; count += r.count
            if gradScale != nil {
                // dxnF[rows, C] = dlogits[rows, V] @ lmHead[V, C]
                prof.time(.lmHead) {
                    be.matmulBackwardInput(dx: acts.dxn.data + r0 * C, dy: logits, w: head, M: rows, accumulate: false,
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
    public func forwardBackward(_ batch: Batch, adapters: AdapterSet, acts: Activations, ctx: ExecutionContext,
                                rng: inout RNG, gradScale: Float, training: Bool = true) -> (lossSum: Double, tokens: Int) {
        forwardHidden(batch, adapters: adapters, acts: acts, ctx: ctx, rng: &rng, training: training)
        let r = headLoss(batch, acts: acts, ctx: ctx, gradScale: gradScale)
        backward(batch, acts: acts, ctx: ctx)
        return r
    }

    /// Loss only (evaluation): summed token loss and token count.
    public func loss(_ batch: Batch, adapters: AdapterSet, acts: Activations, ctx: ExecutionContext) -> (lossSum: Double, tokens: Int) {
        var rng = RNG(seed: 0)
        forwardHidden(batch, adapters: adapters, acts: acts, ctx: ctx, rng: &rng, training: false)
        return headLoss(batch, acts: acts, ctx: ctx, gradScale: nil)
    }

    /// All logits [B*T, V] of a batch (for inspection and tests; training never builds them).
    public func logits(_ batch: Batch, adapters: AdapterSet, acts: Activations, ctx: ExecutionContext) -> Tensor {
        var rng = RNG(seed: 0)
        forwardHidden(batch, adapters: adapters, acts: acts, ctx: ctx, rng: &rng, training: false)
        let M = batch.B * batch.T
        let out = Tensor([M, config.vocabSize])
        ctx.backend.matmul(y: out.data, x: acts.xnF.data, w: .f32(lmHead), M: M, accumulate: false, scratch: acts.scratch)
        return out
    }
}
