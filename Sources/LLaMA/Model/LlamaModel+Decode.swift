import Foundation
import Tensor

/// Inference with a KV cache: a prompt prefill and then one token per step, for S sequences
/// in lock-step. One GEMM per projection over all new rows (M = S x new tokens).
extension LlamaModel {
    /// Whether decoding reads the LoRA factors at `site` as half copies: where the base's own
    /// products there are quantized (`WeightFormat.productsAreExact`), so an f32 or bf16 base
    /// keeps the f32 factors (and PEFT's numbers).
    public func halfLoRAFactors(at site: LoRASite) -> Bool {
        !blocks[site.layer].linear(site.projection).weight.format.productsAreExact
    }

    public enum DecodeError: Error, CustomStringConvertible {
        case tooLong(needed: Int, capacity: Int)
        public var description: String {
            switch self {
            case let .tooLong(needed, capacity):
                return "sequence of \(needed) tokens exceeds the cache capacity of \(capacity)"
            }
        }
    }

    /// Feeds `tokens` ([S, Tq] row-major, Tq new tokens for each sequence) at positions
    /// cache.length ..< cache.length + Tq, and leaves the logits of each sequence's last new
    /// token in cache.logits [S, V]. `sequences` may be 1 for a prefill shared by all beams.
    /// `adapters` apply to every sequence; the cache must have been sized for their rank.
    public func step(tokens: [Int32], sequences S: Int, cache: KVCache, adapters: AdapterSet, ctx: ExecutionContext) throws {
        let c = config, Tq = tokens.count / S, M = S * Tq
        precondition(Tq * S == tokens.count && S <= cache.S)
        let start = cache.length
        guard start + Tq <= cache.capacity else { throw DecodeError.tooLong(needed: start + Tq, capacity: cache.capacity) }
        guard start + Tq <= rope.maxT else { throw DecodeError.tooLong(needed: start + Tq, capacity: rope.maxT) }
        // Long prompts are fed in chunks of the buffers' size: maxChunk tokens per sequence,
        // also when fewer sequences than the cache holds are fed (beam search's shared prompt
        // once went in whole, past the attention scratch: a crash past 512 prompt tokens).
        let chunk = min(cache.maxChunk, cache.maxRows / S)
        if Tq > chunk {
            var t0 = 0
            while t0 < Tq {
                let t1 = min(Tq, t0 + chunk)
                var part: [Int32] = []
                for s in 0..<S { part += tokens[(s * Tq + t0)..<(s * Tq + t1)] }
                try step(tokens: part, sequences: S, cache: cache, adapters: adapters, ctx: ctx)
                t0 = t1
            }
            return
        }
        precondition(Tq <= cache.maxChunk, "a step of \(Tq) tokens per sequence; the cache holds \(cache.maxChunk)")
        precondition(adapters.maxRank <= cache.u.shape[1], "KVCache sized for rank \(cache.u.shape[1]), adapters have \(adapters.maxRank)")
        let be = ctx.backend, prof = ctx.profile
        func project(_ lin: Linear, _ l: Int, _ p: Projection, y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>) {
            let site = adapters.layers(at: LoRASite(l, p))
            if prof == nil, !site.isEmpty, !site.contains(where: { $0.0.isDoRA }) {
                // The base product and the plain LoRA terms as one backend call (one job on the
                // CPU), with the bits of the two calls below.
                let half = !lin.weight.format.productsAreExact
                let terms = site.map { layer, weight in
                    LoRATerm(r0: 0, r1: M, rank: layer.r, alpha: weight * layer.scale, A: layer.A.data, B: layer.B.data,
                             packed: layer.decodingFactors(half: half))
                }
                cache.ensureScratch(LoRATerm.scratchCount(terms))
                be.decodeProjection(y: y, x: x, w: lin.weight, M: M, scratch: cache.scratch, terms: terms, u: cache.u.data)
                return
            }
            prof.time(.projection) { be.matmulDecoding(y: y, x: x, w: lin.weight, M: M, scratch: cache.scratch) }
            if adapters.isEmpty { return }
            prof.time(.lora) {
                // Plain LoRA through the server's grouped product (rows in pieces of 16), so a
                // prompt's rows get the bits `lora serve` gives them, alone, batched or cached.
                if !site.contains(where: { $0.0.isDoRA }) {
                    let half = !lin.weight.format.productsAreExact
                    let terms = site.map { layer, weight in
                        LoRATerm(r0: 0, r1: M, rank: layer.r, alpha: weight * layer.scale, A: layer.A.data, B: layer.B.data,
                             packed: layer.decodingFactors(half: half))
                    }
                    cache.ensureScratch(LoRATerm.scratchCount(terms))
                    be.loraGrouped(y: y, x: x, inFeatures: lin.inFeatures, outFeatures: lin.outFeatures, terms: terms, u: cache.u.data)
                    return
                }
                for (layer, weight) in site {
                    if layer.isDoRA {
                        // n is computed once (the adapter does not change while decoding).
                        layer.refreshNorm(lin.weight)
                        layer.forwardDoRA(be, y: y, xin: x, M: M, dropped: false, base: lin.weight, u: cache.u.data,
                                          pre: nil, scratch: cache.scratch)
                    } else {
                        layer.forward(be, y: y, xin: x, M: M, weight: weight, u: cache.u.data)
                    }
                }
            }
        }
        for s in 0..<S { for t in 0..<Tq { cache.positions[s * Tq + t] = Int32(start + t) } }
        // Only each sequence's last token needs logits.
        // Plain LoRA sites share a call; DoRA and a profiled step's LoRA (timed apart) do not.
        let shared = { (l: Int, ps: [Projection]) -> (terms: [[LoRATerm]], u: UnsafeMutablePointer<Float>)? in
            var all: [[LoRATerm]] = []
            for p in ps {
                let site = adapters.layers(at: LoRASite(l, p))
                if site.contains(where: { $0.0.isDoRA }) || (prof != nil && !site.isEmpty) { return nil }
                let half = self.halfLoRAFactors(at: LoRASite(l, p))
                all.append(site.map { layer, weight in
                    LoRATerm(r0: 0, r1: M, rank: layer.r, alpha: weight * layer.scale, A: layer.A.data, B: layer.B.data,
                             packed: layer.decodingFactors(half: half))
                })
            }
            cache.ensureScratch(all.reduce(0) { $0 + LoRATerm.scratchCount($1) })
            return (all, cache.u.data)
        }
        decodeRows(tokens, buffers: cache, lastRows: (0..<S).map { $0 * Tq + Tq - 1 }, ctx: ctx, shared: shared, project: project) { l in
            // Append the new keys and values to each sequence's cache.
            for s in 0..<S {
                let base = s * cache.capacity * c.kvDim
                cache.layout.store(cache.kNew.data + s * Tq * c.kvDim, rows: Tq, at: start, into: cache.k[l].data + base, nKV: cache.nKV, hd: cache.hd)
                cache.layout.store(cache.vNew.data + s * Tq * c.kvDim, rows: Tq, at: start, into: cache.v[l].data + base, nKV: cache.nKV, hd: cache.hd)
            }
            prof.time(.attention) { cachedAttention(be, cache: cache, layer: l, S: S, Tq: Tq, start: start) }
        }
        cache.advance(Tq)
    }

    /// The part of a decoding step that lock-step sequences (KVCache) and server slots
    /// (SlotCache) share, over the M = ids.count new rows whose positions are already in
    /// b.positions: embeddings, every layer, then the final norm and the head for `lastRows`
    /// (logits row i is row lastRows[i]'s). `project` runs one projection of all M rows with
    /// its LoRA terms; `shared(l, projections)`, where it gives their plain LoRA terms, runs
    /// projections of one x as one call instead. `attend(l)` stores layer l's new keys and
    /// values (b.kNew, b.vNew, after RoPE) in the cache and writes the attention of b.q into
    /// b.att. What differs between the caches (who owns which rows, which adapters apply) stays
    /// in those closures.
    func decodeRows<B: DecodeBuffers>(_ ids: [Int32], buffers b: B, lastRows: [Int], ctx: ExecutionContext,
                                      shared: ((Int, [Projection]) -> (terms: [[LoRATerm]], u: UnsafeMutablePointer<Float>)?)? = nil,
                                      project: (Linear, Int, Projection, UnsafeMutablePointer<Float>, UnsafePointer<Float>) -> Void,
                                      attend: (Int) -> Void) {
        let c = config, M = ids.count, C = c.hiddenSize, I = c.intermediateSize, S = lastRows.count
        let be = ctx.backend, prof = ctx.profile
        // Projections of one x (q, k, v; gate, up) as one backend call where `shared` gives
        // their plain LoRA terms (nil: a site needs its own calls): x prepared once, one job.
        func projectShared(_ group: [(Linear, Projection, UnsafeMutablePointer<Float>)], _ l: Int, _ x: UnsafePointer<Float>) {
            if let shared, let (terms, u) = shared(l, group.map(\.1)) {
                let outs = zip(group, terms).map { DecodeOutput(y: $0.2, w: $0.0.weight, terms: $1) }
                prof.time(.projection) { be.decodeProjections(outs, x: x, M: M, scratch: b.scratch, u: u) }
                return
            }
            for (lin, p, y) in group { project(lin, l, p, y, x) }
        }
        ids.withUnsafeBufferPointer { p in
            be.embedding(out: b.x.data, ids: p.baseAddress!, table: embed.data, N: M, C: C)
        }
        for (l, blk) in blocks.enumerated() {
            prof.time(.rmsnorm) { be.rmsnormForward(y: b.xn.data, rstd: b.tmp.data, x: b.x.data, weight: blk.attnNorm.data, N: M, C: C, eps: c.rmsNormEps) }
            projectShared([(blk.q, .q, b.q.data), (blk.k, .k, b.kNew.data), (blk.v, .v, b.vNew.data)], l, b.xn.data)
            prof.time(.rope) { be.ropeForward(x: b.q.data, positions: b.positions, rows: M, nHeads: c.numAttentionHeads, headDim: c.headDim, table: rope) }
            be.ropeForward(x: b.kNew.data, positions: b.positions, rows: M, nHeads: c.numKeyValueHeads, headDim: c.headDim, table: rope)
            attend(l)
            project(blk.o, l, .o, b.tmp.data, b.att.data)
            prof.time(.residual) { be.add(out: b.x.data, a: b.x.data, b: b.tmp.data, count: M * C) }
            prof.time(.rmsnorm) { be.rmsnormForward(y: b.xn.data, rstd: b.tmp.data, x: b.x.data, weight: blk.mlpNorm.data, N: M, C: C, eps: c.rmsNormEps) }
            projectShared([(blk.gate, .gate, b.gate.data), (blk.up, .up, b.up.data)], l, b.xn.data)
            prof.time(.swiglu) { be.swigluForward(h: b.h.data, gate: b.gate.data, up: b.up.data, count: M * I) }
            project(blk.down, l, .down, b.tmp.data, b.h.data)
            prof.time(.residual) { be.add(out: b.x.data, a: b.x.data, b: b.tmp.data, count: M * C) }
        }
        for (i, r) in lastRows.enumerated() { (b.lastHidden.data + i * C).update(from: b.x.data + r * C, count: C) }
        prof.time(.rmsnorm) { be.rmsnormForward(y: b.xn.data, rstd: b.tmp.data, x: b.lastHidden.data, weight: norm.data, N: S, C: C, eps: c.rmsNormEps) }
        prof.time(.lmHead) { be.matmulDecoding(y: b.logits.data, x: b.xn.data, w: decodeHead, M: S, scratch: b.scratch) }
    }

    /// Causal attention of the Tq new queries of each sequence against its cached keys.
    private func cachedAttention(_ be: any Backend, cache: KVCache, layer l: Int, S: Int, Tq: Int, start: Int) {
        let c = config
        for s in 0..<S {
            be.attentionCached(out: cache.att.data + s * Tq * c.qDim, scores: cache.scores.data,
                                    q: cache.q.data + s * Tq * c.qDim,
                                    kCache: cache.k[l].data + s * cache.capacity * c.kvDim,
                                    vCache: cache.v[l].data + s * cache.capacity * c.kvDim,
                                    keyMask: nil, start: start, Tq: Tq,
                                    nH: c.numAttentionHeads, nKV: c.numKeyValueHeads, hd: c.headDim, layout: cache.layout)
        }
    }
}

