import Foundation
import Tensor

/// The KV cache of a server: `slots` independent sequences, each at its own length, that one
/// step can advance together (continuous batching). Unlike `KVCache`, sequences do not move in
/// lock-step: a new request prefills its prompt in the same step that others decode one token.
public final class SlotCache: @unchecked Sendable {
    public let slots: Int
    public let capacity: Int        // max tokens per slot
    public let maxRows: Int         // max new tokens over all slots in one step
    public private(set) var lengths: [Int]
    let kvDim: Int
    let nKV: Int, hd: Int
    /// Each slot's block of a layer, [nKV, capacity, hd]: a head's rows contiguous.
    public let layout: KVLayout
    var k: [Tensor]                 // per layer [slots, nKV, capacity, hd] (after RoPE)
    var v: [Tensor]                 // per layer [slots, nKV, capacity, hd]
    let x, xn, q, kNew, vNew, att, gate, up, h, tmp: Tensor   // [maxRows, ...]
    private(set) var u: Tensor      // [maxRows, rank] LoRA intermediate, grown for larger ranks
    let lastHidden: Tensor          // [slots, C]
    public let logits: Tensor       // [slots, V]: row i = logits of the i-th item of the last step
    let positions: UnsafeMutablePointer<Int32>   // [maxRows]
    let scores: Tensor              // [nH, maxRows, capacity] attention scratch
    let scratch = MatmulScratch()
    /// The last step's LoRA terms (`terms(for:layers:)`).
    var lastTerms: StepTerms?

    public init(model: LlamaModel, slots: Int, capacity: Int, maxRows: Int) {
        let c = model.config
        precondition(slots >= 1 && capacity >= 1 && maxRows >= slots)
        self.slots = slots; self.capacity = capacity; self.maxRows = maxRows; kvDim = c.kvDim
        nKV = c.numKeyValueHeads; hd = c.headDim
        layout = .headMajor(capacity: capacity, hd: c.headDim)
        lengths = Array(repeating: 0, count: slots)
        k = (0..<c.numHiddenLayers).map { _ in Tensor([slots, c.numKeyValueHeads, capacity, c.headDim], hugePages: true) }
        v = (0..<c.numHiddenLayers).map { _ in Tensor([slots, c.numKeyValueHeads, capacity, c.headDim], hugePages: true) }
        let M = maxRows, C = c.hiddenSize, I = c.intermediateSize
        x = Tensor([M, C]); xn = Tensor([M, C]); q = Tensor([M, c.qDim])
        kNew = Tensor([M, c.kvDim]); vNew = Tensor([M, c.kvDim]); att = Tensor([M, c.qDim])
        gate = Tensor([M, I]); up = Tensor([M, I]); h = Tensor([M, I]); tmp = Tensor([M, C])
        u = Tensor([M, 8])
        lastHidden = Tensor([slots, C])
        logits = Tensor([slots, c.vocabSize])
        positions = .allocate(capacity: M)
        positions.initialize(repeating: 0, count: M)
        scores = Tensor([c.numAttentionHeads, maxRows, capacity])
    }

    deinit { positions.deallocate() }

    /// Frees a slot for the next request.
    public func reset(slot: Int) { lengths[slot] = 0 }

    func ensureRank(_ r: Int) { if r > u.shape[1] { u = Tensor([maxRows, r]) } }
    /// u as scratch of at least n floats (grouped LoRA products: one [rows, rank] per term).
    func ensureScratch(_ n: Int) { if n > u.count { u = Tensor([(n + u.shape[1] - 1) / u.shape[1], u.shape[1]]) } }
    func advance(slot: Int, by n: Int) { lengths[slot] += n }
}

extension SlotCache: DecodeBuffers {}

/// A step's plain LoRA terms at every site (layer * perLayer + projection ordinal), built for
/// one term plan. Holds the plan's adapters, so the factors the terms point at stay alive and
/// an adapter's identity cannot be reused while the table exists; `versions` tells when an
/// adapter's parameters changed since (its packed factors are then repacked on rebuild).
final class StepTerms {
    static let perLayer = Projection.allCases.count
    struct Entry: Equatable {
        let adapter: ObjectIdentifier, version: Int, r0: Int, r1: Int, weights: [UInt32]
    }
    let key: [Entry]
    let adapters: [LoRAAdapter]
    private(set) var sites: [[LoRATerm]] = []
    /// Floats of u the largest site needs (`LoRATerm.scratchCount`).
    private(set) var maxScratch = 0
    /// Per-row alphas (weight * scale) of mixed terms, a region per site.
    private let alphas: UnsafeMutablePointer<Float>

    static func key(_ plan: [(adapter: LoRAAdapter, r0: Int, r1: Int, weights: [Float])]) -> [Entry] {
        plan.map { Entry(adapter: ObjectIdentifier($0.adapter), version: $0.adapter.parametersVersion, r0: $0.r0, r1: $0.r1,
                         weights: $0.weights.map(\.bitPattern)) }
    }

    /// half(site): whether the base's products there are quantized (`LlamaModel.halfLoRAFactors`).
    init(plan: [(adapter: LoRAAdapter, r0: Int, r1: Int, weights: [Float])], key: [Entry], layers: Int,
         half: (LoRASite) -> Bool) {
        self.key = key
        adapters = plan.map(\.adapter)
        let perSite = plan.reduce(0) { $0 + ($1.weights.count > 1 ? $1.weights.count : 0) }
        alphas = .allocate(capacity: max(1, perSite * layers * Self.perLayer))
        sites.reserveCapacity(layers * Self.perLayer)
        for l in 0..<layers {
            for p in Projection.allCases {
                let site = LoRASite(l, p), h = half(site)
                var ab = alphas + sites.count * perSite
                var terms: [LoRATerm] = []
                for t in plan {
                    guard let layer = t.adapter.layer(at: site) else { continue }
                    if t.weights.count == 1 {
                        terms.append(LoRATerm(r0: t.r0, r1: t.r1, rank: layer.r, alpha: t.weights[0] * layer.scale,
                                              A: layer.A.data, B: layer.B.data, packed: layer.decodingFactors(half: h)))
                    } else {
                        // The same product as alone: weight * scale, per row.
                        for (i, w) in t.weights.enumerated() { ab[i] = w * layer.scale }
                        terms.append(LoRATerm(r0: t.r0, r1: t.r1, rank: layer.r, alpha: 1, A: layer.A.data, B: layer.B.data,
                                              alphas: UnsafePointer(ab), packed: layer.decodingFactors(half: h)))
                        ab += t.weights.count
                    }
                }
                maxScratch = max(maxScratch, LoRATerm.scratchCount(terms))
                sites.append(terms)
            }
        }
    }

    deinit { alphas.deallocate() }
}

extension SlotCache {
    /// The terms of `plan` at every site: the last step's table when its plan was the same.
    /// (A cache serves one model, so `half` is the same at every call.)
    func terms(for plan: [(adapter: LoRAAdapter, r0: Int, r1: Int, weights: [Float])], layers: Int,
               half: (LoRASite) -> Bool) -> StepTerms {
        let key = StepTerms.key(plan)
        if let t = lastTerms, t.key == key, t.sites.count == layers * StepTerms.perLayer { return t }
        let t = StepTerms(plan: plan, key: key, layers: layers, half: half)
        lastTerms = t
        return t
    }
}

/// One sequence's part of a batched step: its slot, its new tokens (a prompt chunk or one
/// decoded token) and the adapters that apply to it.
public struct SlotItem {
    public var slot: Int
    public var tokens: [Int32]
    public var adapters: AdapterSet
    /// Groups items whose adapters are the same objects with the same weights, so their LoRA
    /// products run as one GEMM pair.
    public var adapterKey: String
    public init(slot: Int, tokens: [Int32], adapters: AdapterSet, adapterKey: String) {
        self.slot = slot; self.tokens = tokens; self.adapters = adapters; self.adapterKey = adapterKey
    }
}

extension LlamaModel {
    /// Feeds each item's tokens to its slot (at positions lengths[slot] ..< + n) and leaves the
    /// logits of item i's last token in cache.logits row i. One base GEMM per projection over
    /// all rows of all items (M = total new tokens); then the LoRA products per group of items
    /// sharing adapters (S-LoRA / Punica's idea: the base weights are read once per step).
    /// Items must name distinct slots; the total of tokens must fit cache.maxRows. Each row
    /// gets the bits it gets alone, whatever else shares the step.
    public func step(items: [SlotItem], cache: SlotCache, ctx: ExecutionContext) throws {
        let c = config
        precondition(!items.isEmpty && items.count <= cache.slots)
        for it in items {
            precondition(!it.tokens.isEmpty)
            let start = cache.lengths[it.slot]
            guard start + it.tokens.count <= cache.capacity else {
                throw DecodeError.tooLong(needed: start + it.tokens.count, capacity: cache.capacity)
            }
            guard start + it.tokens.count <= rope.maxT else {
                throw DecodeError.tooLong(needed: start + it.tokens.count, capacity: rope.maxT)
            }
        }
        let place = Self.rowOrder(items)
        var offsets = [Int](repeating: 0, count: items.count)   // first row of each item
        var M = 0
        for i in place { offsets[i] = M; M += items[i].tokens.count }
        precondition(M <= cache.maxRows, "\(M) rows exceed the step's \(cache.maxRows)")
        // Adapter groups: runs of adjacent rows with one key -> (row range, adapters).
        var groups: [(r0: Int, r1: Int, set: AdapterSet)] = []
        for (k, i) in place.enumerated() where !items[i].adapters.isEmpty {
            let it = items[i], r1 = offsets[i] + it.tokens.count
            if let last = groups.last, k > 0, items[place[k - 1]].adapterKey == it.adapterKey, last.r1 == offsets[i] {
                groups[groups.count - 1].r1 = r1
            } else {
                groups.append((offsets[i], r1, it.adapters))
            }
            cache.ensureRank(it.adapters.maxRank)
        }
        let plan = Self.termPlan(groups)
        // Every site's plain LoRA terms, kept from the last step while the plan is the same
        // (a batch changes only when a request joins or leaves).
        let table = plan.map { cache.terms(for: $0, layers: c.numHiddenLayers, half: halfLoRAFactors) }
        if let table { cache.ensureScratch(3 * table.maxScratch) }
        let be = ctx.backend
        func project(_ lin: Linear, _ l: Int, _ p: Projection, y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>) {
            let out = lin.outFeatures, inF = lin.inFeatures
            // Plain LoRA: every group's terms in one grouped product (the backend spreads them
            // over its workers). DoRA rescales its group's rows and stays one call per group.
            if let table {
                let terms = table.sites[l * StepTerms.perLayer + p.ordinal]
                if ctx.profile == nil {
                    // The base product and the terms as one backend call (one job on the CPU).
                    be.decodeProjection(y: y, x: x, w: lin.weight, M: M, scratch: cache.scratch, terms: terms, u: cache.u.data)
                    return
                }
                ctx.profile.time(.projection) { be.matmulDecoding(y: y, x: x, w: lin.weight, M: M, scratch: cache.scratch) }
                if !terms.isEmpty {
                    ctx.profile.time(.lora) {
                        be.loraGrouped(y: y, x: x, inFeatures: inF, outFeatures: out, terms: terms, u: cache.u.data)
                    }
                }
                return
            }
            ctx.profile.time(.projection) { be.matmulDecoding(y: y, x: x, w: lin.weight, M: M, scratch: cache.scratch) }
            for g in groups {
                for (layer, weight) in g.set.layers(at: LoRASite(l, p)) {
                    let yr = y + g.r0 * out, xr = x + g.r0 * inF, n = g.r1 - g.r0
                    if layer.isDoRA {
                        // DoRA rescales the group's whole rows (base + LoRA); n is computed once.
                        layer.refreshNorm(lin.weight)
                        layer.forwardDoRA(be, y: yr, xin: xr, M: n, dropped: false, base: lin.weight, u: cache.u.data,
                                          pre: nil, scratch: cache.scratch)
                    } else {
                        layer.forward(be, y: yr, xin: xr, M: n, weight: weight, u: cache.u.data)
                    }
                }
            }
        }
        var ids: [Int32] = []
        ids.reserveCapacity(M)
        for i in place {
            let it = items[i], start = cache.lengths[it.slot]
            for t in 0..<it.tokens.count { cache.positions[offsets[i] + t] = Int32(start + t) }
            ids += it.tokens
        }
        let kvDim = c.kvDim
        // Logits only for each item's last token.
        let lastRows = items.indices.map { offsets[$0] + items[$0].tokens.count - 1 }
        let nH = c.numAttentionHeads
        // Projections of one x as one call: plain LoRA only (DoRA groups, no plan), and not in a
        // profiled step with terms (their time is counted apart).
        let shared = { (l: Int, ps: [Projection]) -> (terms: [[LoRATerm]], u: UnsafeMutablePointer<Float>)? in
            guard let table, ps.count <= 3 else { return nil }
            let all = ps.map { table.sites[l * StepTerms.perLayer + $0.ordinal] }
            if ctx.profile != nil && all.contains(where: { !$0.isEmpty }) { return nil }
            return (all, cache.u.data)
        }
        decodeRows(ids, buffers: cache, lastRows: lastRows, ctx: ctx, shared: shared, project: project) { l in
            var batch: [CachedAttention] = []
            batch.reserveCapacity(items.count)
            for (i, it) in items.enumerated() {
                let n = it.tokens.count, start = cache.lengths[it.slot], r0 = offsets[i]
                let base = it.slot * cache.capacity * kvDim
                cache.layout.store(cache.kNew.data + r0 * kvDim, rows: n, at: start, into: cache.k[l].data + base, nKV: cache.nKV, hd: cache.hd)
                cache.layout.store(cache.vNew.data + r0 * kvDim, rows: n, at: start, into: cache.v[l].data + base, nKV: cache.nKV, hd: cache.hd)
                // Scratch: the item's own rows of scores ([nH, n, capacity] fits in rows
                // r0 * nH ..< (r0 + n) * nH of [nH * maxRows, capacity]).
                batch.append(CachedAttention(out: cache.att.data + r0 * c.qDim, scores: cache.scores.data + r0 * nH * cache.capacity,
                                             q: cache.q.data + r0 * c.qDim,
                                             kCache: cache.k[l].data + base, vCache: cache.v[l].data + base, start: start, Tq: n,
                                             layout: cache.layout))
            }
            ctx.profile.time(.attention) { be.attentionCachedBatch(batch, nH: nH, nKV: c.numKeyValueHeads, hd: c.headDim) }
        }
        for it in items { cache.advance(slot: it.slot, by: it.tokens.count) }
    }

    /// The order of the items' rows: items with one adapter key together, in the order given,
    /// and each weighted mix between the groups of its first and last adapters, so that an
    /// adapter's rows and a mix's are adjacent and one product covers both (its factors are
    /// then read once per step).
    static func rowOrder(_ items: [SlotItem]) -> [Int] {
        var keys: [String] = []
        var byKey: [String: [Int]] = [:]
        for (i, it) in items.enumerated() {
            if byKey[it.adapterKey] == nil { keys.append(it.adapterKey) }
            byKey[it.adapterKey, default: []].append(i)
        }
        if keys.count < 3 { return keys.flatMap { byKey[$0]! } }
        var single: [ObjectIdentifier: String] = [:]
        for k in keys {
            let e = items[byKey[k]![0]].adapters.entries
            if e.count == 1 { single[ObjectIdentifier(e[0].adapter)] = k }
        }
        var order: [String] = []
        var placed = Set<String>()
        func put(_ k: String?) { if let k, placed.insert(k).inserted { order.append(k) } }
        for k in keys where !placed.contains(k) {
            let e = items[byKey[k]![0]].adapters.entries
            guard e.count > 1 else { continue }
            put(single[ObjectIdentifier(e[0].adapter)])
            put(k)
            put(single[ObjectIdentifier(e[e.count - 1].adapter)])
        }
        for k in keys { put(k) }
        return order.flatMap { byKey[$0]! }
    }

    /// The LoRA terms of a step, by adapter: an adapter's term extends over the next group when
    /// that group's rows follow on and the extension keeps, for every row, its adapters in the
    /// order of its own set (terms on a row add in list order). `weights` holds one weight
    /// (all rows) or one per row. nil when a group holds a DoRA adapter (one call per group).
    static func termPlan(_ groups: [(r0: Int, r1: Int, set: AdapterSet)]) -> [(adapter: LoRAAdapter, r0: Int, r1: Int, weights: [Float])]? {
        var plan: [(adapter: LoRAAdapter, r0: Int, r1: Int, weights: [Float])] = []
        var latest: [ObjectIdentifier: Int] = [:]
        for g in groups {
            var last = -1
            let n = g.r1 - g.r0
            for (adapter, weight) in g.set.entries {
                if adapter.isDoRA { return nil }
                let id = ObjectIdentifier(adapter)
                if let j = latest[id], j > last, plan[j].r1 == g.r0 {
                    var w = plan[j].weights
                    if w.count == 1 && w[0].bitPattern == weight.bitPattern {
                        // still one weight for every row
                    } else {
                        if w.count == 1 { w = [Float](repeating: w[0], count: plan[j].r1 - plan[j].r0) }
                        w += [Float](repeating: weight, count: n)
                    }
                    plan[j].weights = w
                    plan[j].r1 = g.r1
                    last = j
                } else {
                    plan.append((adapter, g.r0, g.r1, [weight]))
                    latest[id] = plan.count - 1
                    last = plan.count - 1
                }
            }
        }
        return plan
    }
}
