import Foundation
import Tensor

/// Autoregressive decoding: greedy, sampling (temperature, top-k, top-p) or beam search,
/// as Hugging Face's `generate` does them. Stops at any EOS id or after maxNewTokens.
public final class Generator {
    public let model: LlamaModel
    public let adapters: AdapterSet
    public let ctx: ExecutionContext
    public let eosIDs: Set<Int32>

    /// Prompt tokens fed per step (the KV cache's step buffers are sized for this many).
    public let prefillChunk: Int

    /// Decodes `model` with `adapters` applied (a weighted stack, or none) on `ctx`.
    public init(model: LlamaModel, adapters: AdapterSet = .none, ctx: ExecutionContext, eosIDs: Set<Int32>, prefillChunk: Int = 512) {
        self.prefillChunk = max(1, prefillChunk)
        self.model = model
        self.adapters = adapters
        self.ctx = ctx
        self.eosIDs = eosIDs
        _ = model.decodeHead   // quantize the head now, not inside the first token's time
    }

    /// Generates new token ids after `prompt`. `onToken` sees each new id as soon as it is
    /// chosen when a single sequence is decoded (greedy or sampling); beam search reports
    /// only the final sequence. The returned ids exclude the prompt and include no EOS.
    /// `onPrefill` sees the prompt's tokens fed, chunk by chunk.
    public func generate(prompt: [Int32], options o: GenerationOptions,
                         onToken: ((Int32) -> Void)? = nil, onPrefill: ProgressHandler? = nil) throws -> [Int32] {
        try o.validate()
        guard !prompt.isEmpty else { throw GenerationError.emptyPrompt }
        // The KV cache holds prompt + new tokens, so the model's context bounds both (a huge
        // max_new_tokens would otherwise size a cache of terabytes): generation stops when
        // the context is full, as llama.cpp's does.
        let context = model.rope.maxT
        guard prompt.count < context else {
            throw LlamaModel.DecodeError.tooLong(needed: prompt.count + 1, capacity: context)
        }
        var o = o
        o.maxNewTokens = min(o.maxNewTokens, context - prompt.count)
        if o.numBeams > 1 { return try beamSearch(prompt: prompt, options: o, onToken: onToken, onPrefill: onPrefill) }
        let V = model.config.vocabSize
        let cache = KVCache(model: model, sequences: 1, capacity: prompt.count + o.maxNewTokens,
                            maxChunk: min(prompt.count, prefillChunk), maxRank: adapters.maxRank)
        var rng = RNG(seed: o.seed)
        var seq = prompt
        var out: [Int32] = []
        try prefill(prompt, cache: cache, progress: onPrefill)
        let scores = cache.logits.data
        for _ in 0..<o.maxNewTokens {
            LogitsProcessing.repetitionPenalty(scores, seen: seq, penalty: o.repetitionPenalty)
            LogitsProcessing.suppressEOS(scores, eos: eosIDs, generated: out.count, minNew: o.minNewTokens)
            let next: Int
            if o.doSample {
                LogitsProcessing.temperature(scores, V: V, o.temperature)
                LogitsProcessing.topK(scores, V: V, o.topK)
                LogitsProcessing.topP(scores, V: V, o.topP)
                next = LogitsProcessing.sample(scores, V: V, rng: &rng)
            } else {
                next = ctx.backend.argmax(scores, count: V)
            }
            let id = Int32(next)
            if eosIDs.contains(id) { break }
            out.append(id); seq.append(id)
            onToken?(id)
            if out.count == o.maxNewTokens { break }
            try model.step(tokens: [id], sequences: 1, cache: cache, adapters: adapters, ctx: ctx)
        }
        return out
    }

    /// Feeds the prompt as one sequence. With `progress`, in the very chunks `model.step` would
    /// cut a long prompt into (cache.maxRows tokens), so the logits are the same either way.
    func prefill(_ prompt: [Int32], cache: KVCache, progress: ProgressHandler?) throws {
        // Chunks as `step` cuts them, so that progress counts what was computed.
        let chunk = max(1, cache.maxChunk)
        progress?(TaskProgress(task: .prefill, done: 0, total: prompt.count, unit: "tokens"))
        var t0 = 0
        while t0 < prompt.count {
            let t1 = min(prompt.count, t0 + chunk)
            try model.step(tokens: Array(prompt[t0..<t1]), sequences: 1, cache: cache, adapters: adapters, ctx: ctx)
            t0 = t1
            progress?(TaskProgress(task: .prefill, done: t0, total: prompt.count, unit: "tokens"))
        }
    }

    /// Beam search as transformers (length_penalty, early_stopping false): keeps numBeams
    /// running beams; a beam that picks EOS among the top numBeams candidates becomes a
    /// finished hypothesis scored sum_logprobs / generated_length^length_penalty.
    func beamSearch(prompt: [Int32], options o: GenerationOptions,
                    onToken: ((Int32) -> Void)?, onPrefill: ProgressHandler? = nil) throws -> [Int32] {
        let nb = o.numBeams, V = model.config.vocabSize
        let cache = KVCache(model: model, sequences: nb, capacity: prompt.count + o.maxNewTokens,
                            maxChunk: min(prompt.count, prefillChunk), maxRank: adapters.maxRank)
        try prefill(prompt, cache: cache, progress: onPrefill)
        cache.broadcastFirst()
        // Copy the shared prompt logits to every beam row.
        for b in 1..<nb { (cache.logits.data + b * V).update(from: cache.logits.data, count: V) }
        var beams: [[Int32]] = Array(repeating: [], count: nb)
        var beamScores = [Float](repeating: -1e9, count: nb)
        beamScores[0] = 0
        var finished: [(score: Float, ids: [Int32])] = []
        let nEOS = max(1, eosIDs.count)
        let keep = max(2, 1 + nEOS) * nb
        for step in 0..<o.maxNewTokens {
            var cand: [(score: Float, beam: Int, token: Int)] = []
            cand.reserveCapacity(nb * keep)
            for b in 0..<nb {
                let row = cache.logits.data + b * V
                LogitsProcessing.logSoftmax(row, V: V)
                LogitsProcessing.repetitionPenalty(row, seen: prompt + beams[b], penalty: o.repetitionPenalty)
                LogitsProcessing.suppressEOS(row, eos: eosIDs, generated: step, minNew: o.minNewTokens)
                // Per-beam top candidates are enough to find the global top `keep`.
                var local: [(Float, Int)] = []
                for t in 0..<V {
                    let s = row[t] + beamScores[b]
                    if local.count < keep { local.append((s, t)); if local.count == keep { local.sort { $0.0 > $1.0 } } }
                    else if s > local[keep - 1].0 {
                        var i = keep - 1
                        while i > 0 && local[i - 1].0 < s { local[i] = local[i - 1]; i -= 1 }
                        local[i] = (s, t)
                    }
                }
                for (s, t) in local { cand.append((s, b, t)) }
            }
            cand.sort { $0.score > $1.score || ($0.score == $1.score && ($0.beam * V + $0.token) < ($1.beam * V + $1.token)) }
            cand = Array(cand.prefix(keep))
            var next: [(score: Float, beam: Int, token: Int)] = []
            let generatedLength = step + 1
            for (rank, c) in cand.enumerated() {
                if eosIDs.contains(Int32(c.token)) {
                    if rank >= nb { continue }
                    let lp = Float(pow(Double(generatedLength), Double(o.lengthPenalty)))
                    finished.append((c.score / lp, beams[c.beam]))
                } else {
                    next.append(c)
                }
                if next.count == nb { break }
            }
            finished.sort { $0.score > $1.score }
            if finished.count > nb { finished.removeLast(finished.count - nb) }
            // Done when numBeams hypotheses exist and no running beam can beat the worst.
            let bestRunning = next.first?.score ?? -.infinity
            if finished.count >= nb {
                let lp = Float(pow(Double(generatedLength), Double(o.lengthPenalty)))
                if finished.last!.score >= bestRunning / lp { break }
            }
            if step == o.maxNewTokens - 1 || next.count < nb {
                beams = next.map { beams[$0.beam] + [Int32($0.token)] }
                beamScores = next.map { $0.score }
                break
            }
            beams = next.map { beams[$0.beam] + [Int32($0.token)] }
            beamScores = next.map { $0.score }
            cache.reorder(next.map { $0.beam })
            try model.step(tokens: next.map { Int32($0.token) }, sequences: nb, cache: cache, adapters: adapters, ctx: ctx)
        }
        // Unfinished beams compete with finished hypotheses at the end.
        if finished.count < nb || true {
            for (b, ids) in beams.enumerated() {
                let lp = Float(pow(Double(max(ids.count, 1)), Double(o.lengthPenalty)))
                finished.append((beamScores[b] / lp, ids))
            }
        }
        finished.sort { $0.score > $1.score }
        let best = finished.first?.ids ?? []
        if let onToken { for id in best { onToken(id) } }
        return best
    }
}
