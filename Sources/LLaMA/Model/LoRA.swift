import Foundation
import Tensor

// Seam 3: LoRA as one concept in one file. A `LoRALayer` is the adapter of one projection
// (parameters, forward, backward, dropout, merge); a `LoRAAdapter` is every layer of one
// adapter plus its PEFT config and the list of trainable tensors that AdamW, checkpoints and
// the best-adapter copy iterate; an `AdapterSet` is what a forward call is given. The loaded
// base model holds no adapter and is never changed, so any number of calls with different
// adapter sets can share it.

/// The seven projections of a LLaMA block that LoRA may target (PEFT's module names).
public enum Projection: String, CaseIterable, Sendable, Codable {
    case q = "q_proj", k = "k_proj", v = "v_proj", o = "o_proj"
    case gate = "gate_proj", up = "up_proj", down = "down_proj"

    /// The projection's place in `allCases` (a switch: decoding asks per projection and step).
    public var ordinal: Int {
        switch self {
        case .q: return 0
        case .k: return 1
        case .v: return 2
        case .o: return 3
        case .gate: return 4
        case .up: return 5
        case .down: return 6
        }
    }

    /// The submodule the projection lives in: `self_attn` or `mlp`.
    public var parent: String {
        switch self {
        case .q, .k, .v, .o: return "self_attn"
        case .gate, .up, .down: return "mlp"
        }
    }

    /// `model.layers.{i}.self_attn.q_proj` etc.
    public func path(layer i: Int) -> String { "model.layers.\(i).\(parent).\(rawValue)" }
}

/// Where an adapter layer sits: block index and projection.
public struct LoRASite: Hashable, Sendable, Comparable {
    public let layer: Int
    public let projection: Projection
    public init(_ layer: Int, _ projection: Projection) { self.layer = layer; self.projection = projection }
    /// PEFT module path, `model.layers.{i}.self_attn.q_proj`.
    public var path: String { projection.path(layer: layer) }
    public static func < (a: LoRASite, b: LoRASite) -> Bool {
        a.layer != b.layer ? a.layer < b.layer
            : Projection.allCases.firstIndex(of: a.projection)! < Projection.allCases.firstIndex(of: b.projection)!
    }
}

/// One LoRA adapter on one linear layer, PEFT's convention:
///   y = W x + scale * B (A (dropout(x)))
///   A [r, in] (kaiming-uniform init), B [out, r] (zeros), scale = alpha / r (or alpha / sqrt(r)).
///
/// With a `magnitude` it is a DoRA layer (PEFT `use_dora=True`, arXiv 2402.09353), with
///   n = ||W + scale B A|| per output row (a constant in backward: PEFT detaches it), c = m / n,
///   y = c * (W x + scale B A x)                                   (no dropout, or eval)
///   y = W x + (c - 1) * W z + c * scale * B A z,  z = dropout(x)   (training with dropout)
/// the second being PEFT's form, whose DoRA term sees the dropped-out input.
public final class LoRALayer: @unchecked Sendable {
    public let r: Int
    public let inFeatures: Int
    public let outFeatures: Int
    /// alpha / r (or alpha / sqrt r): the adapter's own multiplier of B A x.
    public let scale: Float
    public let dropout: Float
    public let A: Tensor   // [r, in]
    public let B: Tensor   // [out, r]
    /// Gradients, allocated only for training.
    public private(set) var gradA: Tensor? = nil   // [r, in]
    public private(set) var gradB: Tensor? = nil   // [out, r]
    /// DoRA's magnitude m [out] (PEFT's `lora_magnitude_vector`); nil for plain LoRA.
    public let magnitude: Tensor?
    public private(set) var gradMagnitude: Tensor? = nil   // [out]
    /// DoRA: n = ||W + scale B A|| per row [out], valid while `normStale` is false. It depends on
    /// A and B, so whoever changes them calls `parametersChanged()`. c = m / n [out] is formed
    /// from it at each call (m may differ from the m n was computed with; a finite-difference
    /// check that holds n fixed relies on that).
    let weightNorm: Tensor?
    let ratio: Tensor?
    private(set) var normStale = true

    public init(r: Int, inFeatures: Int, outFeatures: Int, scale: Float, dropout: Float = 0, dora: Bool = false) {
        self.r = r
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        self.scale = scale
        self.dropout = dropout
        A = Tensor([r, inFeatures])
        B = Tensor([outFeatures, r])
        magnitude = dora ? Tensor([outFeatures]) : nil
        weightNorm = dora ? Tensor([outFeatures]) : nil
        ratio = dora ? Tensor([outFeatures]) : nil
    }

    public var isDoRA: Bool { magnitude != nil }

    /// PEFT's init: A ~ kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), B = 0.
    public func initialize(rng: inout RNG) {
        let bound = 1 / Float(inFeatures).squareRoot()
        for i in 0..<A.count { A[i] = (rng.uniform() * 2 - 1) * bound }
        B.zero()
        parametersChanged()
    }

    public func enableGradients() {
        if gradA == nil { gradA = Tensor(A.shape); gradB = Tensor(B.shape) }
        if let m = magnitude, gradMagnitude == nil { gradMagnitude = Tensor(m.shape) }
    }

    // MARK: DoRA's weight norm

    /// Marks n and the packed factors out of date (after an optimizer step or a copy into A,
    /// B or m).
    public func parametersChanged() {
        normStale = true
        packLock.lock(); packedStale = (true, true); halfUnfit = false; packLock.unlock()
        version?.bump()
    }

    /// The owning adapter's count of parameter changes (set by `LoRAAdapter`): a serve step
    /// keeps its LoRA terms while it stays the same.
    var version: ParameterVersion?

    // MARK: decoding's packed factors

    /// Where `decodingFactors` places its copies: the adapter's arena (set by `LoRAAdapter`),
    /// else one of the layer's own.
    var packArena: WeightArena?
    private var packedF32: PackedLoRAFactors?, packedHalf: PackedLoRAFactors?
    private var packedStale = (f32: true, half: true)
    /// A value of A or B does not fit a half: half requests get the f32 copies.
    private var halfUnfit = false
    private let packLock = NSLock()

    /// A and B packed for decoding's products (`PackedLoRAFactors`): packed on first use and
    /// again, in place, on the first use after `parametersChanged()`. Decoding passes them in
    /// its `LoRATerm`s; training reads A and B. `half` (for a base whose products are quantized,
    /// `WeightFormat.productsAreExact` false) gives half copies, or the f32 ones when a value
    /// does not fit a half.
    public func decodingFactors(half: Bool = false) -> PackedLoRAFactors {
        packLock.lock(); defer { packLock.unlock() }
        if half && !halfUnfit {
            let p = packedHalf ?? PackedLoRAFactors(rank: r, inFeatures: inFeatures, outFeatures: outFeatures, half: true,
                                                    arena: packArena ?? WeightArena(chunkBytes: packedBytes / 2))
            packedHalf = p
            if !packedStale.half { return p }
            packedStale.half = false
            if p.pack(A: A.data, B: B.data) { return p }
            halfUnfit = true
        }
        let p = packedF32 ?? PackedLoRAFactors(rank: r, inFeatures: inFeatures, outFeatures: outFeatures,
                                               arena: packArena ?? WeightArena(chunkBytes: packedBytes))
        packedF32 = p
        if packedStale.f32 {
            p.pack(A: A.data, B: B.data)
            packedStale.f32 = false
        }
        return p
    }

    /// Bytes `decodingFactors` carves for f32 copies (with the alignment of its two copies).
    var packedBytes: Int { PackedLoRAFactors.byteCount(rank: r, inFeatures: inFeatures, outFeatures: outFeatures) + 128 }

    /// n[j] = ||W[j] + scale (B A)[j]|| for every output row j, with W the frozen weight as its
    /// format dequantizes it (an int8 base gives the norm of the dequantized rows, as PEFT's
    /// dequantize_module_weight). Summed in double: the rows are long and the result is a
    /// divisor of every output. Rows go 64 at a time through a [64, in] buffer.
    public static func rowNorms(_ w: Weight, A: Tensor, B: Tensor, scale: Float, into n: UnsafeMutablePointer<Float>) {
        let out = w.outFeatures, inF = w.inFeatures, r = A.shape[0], chunk = min(64, out)
        let rows = Tensor([chunk, inF])
        var r0 = 0
        while r0 < out {
            let r1 = min(out, r0 + chunk), k = r1 - r0
            w.dequantizeRows(r0, r1, into: rows.data)
            // rows[k, in] += scale * B[r0..<r1, r] @ A[r, in]
            sgemm(M: k, N: inF, K: r, alpha: scale, A: B.data + r0 * r, lda: r, B: A.data, ldb: inF,
                  beta: 1, C: rows.data, ldc: inF)
            for j in 0..<k {
                var s = 0.0
                let row = rows.data + j * inF
                for i in 0..<inF { s += Double(row[i]) * Double(row[i]) }
                n[r0 + j] = Float(s.squareRoot())
            }
            r0 = r1
        }
    }

    /// DoRA: recomputes n from the frozen weight `w` when A or B changed since the last call
    /// (once per optimizer step in training, once in all for inference).
    public func refreshNorm(_ w: Weight) {
        guard let n = weightNorm, normStale else { return }
        precondition(w.outFeatures == outFeatures && w.inFeatures == inFeatures, "DoRA layer [\(outFeatures), \(inFeatures)] on weight [\(w.outFeatures), \(w.inFeatures)]")
        Self.rowNorms(w, A: A, B: B, scale: scale, into: n.data)
        normStale = false
    }

    /// c = m / n into `ratio`, for one forward or backward call.
    private func formRatio() -> UnsafeMutablePointer<Float> {
        guard let m = magnitude, let n = weightNorm, let c = ratio else { preconditionFailure("not a DoRA layer") }
        precondition(!normStale, "DoRA norm is stale: call refreshNorm after changing A or B")
        for j in 0..<outFeatures { c[j] = m[j] / n[j] }
        return c.data
    }

    /// PEFT's DoRA init: m = ||W + scale B A|| per row (= ||W|| with B = 0), so the adapted
    /// layer starts equal to the base.
    public func initializeMagnitude(_ w: Weight) {
        guard let m = magnitude else { return }
        Self.rowNorms(w, A: A, B: B, scale: scale, into: m.data)
        normStale = true
    }

    // MARK: dropout (on the adapter's input only, as PEFT's lora_dropout)

    /// Draws the keep-mask [M, in] and writes the dropped-out input z = x * keep / (1 - p).
    /// One draw from `rng` seeds the call; element i is dropped when 32 bits of a hash of
    /// (seed, i / 2) fall under p * 2^32 (SplitMix64's mixer, two elements per hash:
    /// `Backend.dropout`). The mask depends on the seed and i only, so the result is the same at
    /// every thread count and in every kernel family (until session 10 one xoshiro draw per
    /// element on one thread; until session 13 the hash in a Swift loop, ~1.8 ns per element).
    public func drop(x: UnsafePointer<Float>, M: Int, keep: UnsafeMutablePointer<UInt8>, z: UnsafeMutablePointer<Float>,
                     rng: inout RNG, backend: any Backend) {
        let threshold = UInt64(min(Double(dropout), 1) * 4_294_967_296)  // P(u < threshold) = p for u uniform in 0..<2^32
        backend.dropout(seed: rng.next(), threshold: threshold, x: x, scale: 1 / (1 - dropout), keep: keep, z: z,
                        count: M * inFeatures)
    }

    /// Recomputes z from a saved mask (backward does not keep z).
    public func redrop(x: UnsafePointer<Float>, M: Int, keep: UnsafePointer<UInt8>, z: UnsafeMutablePointer<Float>, pool: WorkerPool) {
        let n = M * inFeatures, s = 1 / (1 - dropout)
        pool.blocks(n, block: 16384) { r in
            for i in r { z[i] = keep[i] != 0 ? x[i] * s : 0 }
        }
    }

    // MARK: forward / backward

    /// y[M, out] += weight * scale * (xin A^T) B^T; `u` receives xin A^T [M, r] (kept for backward).
    public func forward(_ be: any Backend, y: UnsafeMutablePointer<Float>, xin: UnsafePointer<Float>, M: Int,
                        weight: Float = 1, u: UnsafeMutablePointer<Float>) {
        // u[M, r] = xin[M, in] @ A^T
        be.gemm(transA: false, transB: true, M: M, N: r, K: inFeatures, alpha: 1, A: xin, lda: inFeatures,
                B: A.data, ldb: inFeatures, beta: 0, C: u, ldc: r)
        // y[M, out] += s * u[M, r] @ B^T
        be.gemm(transA: false, transB: true, M: M, N: outFeatures, K: r, alpha: weight * scale, A: u, lda: r,
                B: B.data, ldb: r, beta: 1, C: y, ldc: outFeatures)
    }

    /// Backward of `forward` (weight 1, training):
    ///   gradB[out, r] += scale * dy^T @ u,  du = scale * dy @ B,  gradA[r, in] += du^T @ xin
    ///   dx[M, in] += du @ A, through the dropout mask when there is one
    /// `du` is scratch [M, r]; `dz` scratch [M, in] needed only with dropout.
    public func backward(_ be: any Backend, dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, M: Int,
                         u: UnsafePointer<Float>, xin: UnsafePointer<Float>, keep: UnsafePointer<UInt8>?,
                         du: UnsafeMutablePointer<Float>, dz: UnsafeMutablePointer<Float>?) {
        guard gradA != nil else { return }
        let inF = inFeatures
        factorGradients(be, dy: dy, M: M, u: u, xin: xin, du: du)
        if let keep, let dz {
            // dz = du @ A, then dx += dz * keep / (1 - p): dropout's backward.
            be.gemm(transA: false, transB: false, M: M, N: inF, K: r, alpha: 1, A: du, lda: r, B: A.data, ldb: inF,
                    beta: 0, C: dz, ldc: inF)
            be.maskedAdd(dx: dx, dz: dz, keep: keep, scale: 1 / (1 - dropout), count: M * inF)
        } else {
            // dx[M, in] += du[M, r] @ A[r, in]
            be.gemm(transA: false, transB: false, M: M, N: inF, K: r, alpha: 1, A: du, lda: r, B: A.data, ldb: inF,
                    beta: 1, C: dx, ldc: inF)
        }
    }

    /// gradB[out, r] += scale * dy^T @ u;  du[M, r] = scale * dy @ B;  gradA[r, in] += du^T @ xin.
    private func factorGradients(_ be: any Backend, dy: UnsafePointer<Float>, M: Int, u: UnsafePointer<Float>,
                                 xin: UnsafePointer<Float>, du: UnsafeMutablePointer<Float>) {
        guard let gA = gradA, let gB = gradB else { return }
        let out = outFeatures, inF = inFeatures
        // gradB[out, r] += scale * dy^T[out, M] @ u[M, r]
        be.gemm(transA: true, transB: false, M: out, N: r, K: M, alpha: scale, A: dy, lda: out, B: u, ldb: r,
                beta: 1, C: gB.data, ldc: r)
        // du[M, r] = scale * dy[M, out] @ B[out, r]
        be.gemm(transA: false, transB: false, M: M, N: r, K: out, alpha: scale, A: dy, lda: out, B: B.data, ldb: r,
                beta: 0, C: du, ldc: r)
        // gradA[r, in] += du^T[r, M] @ xin[M, in]
        be.gemm(transA: true, transB: false, M: r, N: inF, K: M, alpha: 1, A: du, lda: r, B: xin, ldb: inF,
                beta: 1, C: gA.data, ldc: inF)
    }

    // MARK: DoRA forward / backward

    /// DoRA forward. On entry y[M, out] = x W^T (the base projection of the un-dropped input);
    /// `u` receives xin A^T [M, r]. Without dropout (xin = x): y = c * (y + scale u B^T). With
    /// dropout (xin = z): y += (c - 1) * (z W^T) + c * scale * u B^T, through `pre` [M, out].
    /// `refreshNorm` must have run since A, B or m last changed.
    public func forwardDoRA(_ be: any Backend, y: UnsafeMutablePointer<Float>, xin: UnsafePointer<Float>, M: Int,
                            dropped: Bool, base w: Weight, u: UnsafeMutablePointer<Float>,
                            pre: UnsafeMutablePointer<Float>?, scratch: MatmulScratch) {
        let c = formRatio(), out = outFeatures
        if !dropped {
            forward(be, y: y, xin: xin, M: M, u: u)
            for t in 0..<M { let row = y + t * out; for j in 0..<out { row[j] *= c[j] } }
            return
        }
        guard let pre else { preconditionFailure("DoRA with dropout needs a [M, out] buffer") }
        // pre[M, out] = z W^T; y -= pre; pre += scale u B^T; y += c * pre
        be.matmul(y: pre, x: xin, w: w, M: M, accumulate: false, scratch: scratch)
        for i in 0..<(M * out) { y[i] -= pre[i] }
        forward(be, y: pre, xin: xin, M: M, u: u)
        for t in 0..<M {
            let yr = y + t * out, pr = pre + t * out
            for j in 0..<out { yr[j] += c[j] * pr[j] }
        }
    }

    /// Backward of `forwardDoRA` in training, the base product's input gradient included (the
    /// caller does not run it for a DoRA layer). n is a constant (PEFT's detach), so with
    /// pre = xin W^T + scale u B^T (recomputed here; forward does not keep it):
    ///   gradM[j] += sum_t dy[t, j] pre[t, j] / n[j]
    ///   A and B get LoRA's gradients of dyc = c * dy
    ///   no dropout: dx (+)= dyc W + (scale dyc B) A
    ///   dropout:    dx (+)= dy W + keep / (1 - p) * ((c - 1) dy W + (scale dyc B) A)
    /// `pre` and `dyc` are scratch [M, out], `du` [M, r], `dz` [M, in] (dropout only).
    public func backwardDoRA(_ be: any Backend, dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, M: Int,
                             accumulate: Bool, base w: Weight, u: UnsafePointer<Float>, xin: UnsafePointer<Float>,
                             keep: UnsafePointer<UInt8>?, pre: UnsafeMutablePointer<Float>, dyc: UnsafeMutablePointer<Float>,
                             du: UnsafeMutablePointer<Float>, dz: UnsafeMutablePointer<Float>?, scratch: MatmulScratch) {
        let c = formRatio(), n = weightNorm!.data, out = outFeatures, inF = inFeatures
        if let gM = gradMagnitude?.data {
            // pre[M, out] = xin W^T + scale u B^T
            be.matmul(y: pre, x: xin, w: w, M: M, accumulate: false, scratch: scratch)
            be.gemm(transA: false, transB: true, M: M, N: out, K: r, alpha: scale, A: u, lda: r,
                    B: B.data, ldb: r, beta: 1, C: pre, ldc: out)
            for j in 0..<out {
                var s: Float = 0
                for t in 0..<M { s += dy[t * out + j] * pre[t * out + j] }
                gM[j] += s / n[j]
            }
        }
        for t in 0..<M {
            let d = dy + t * out, e = dyc + t * out
            for j in 0..<out { e[j] = c[j] * d[j] }
        }
        factorGradients(be, dy: dyc, M: M, u: u, xin: xin, du: du)
        if let keep, let dz {
            // The base path sees x; the DoRA terms see z = dropout(x).
            be.matmulBackwardInput(dx: dx, dy: dy, w: w, M: M, accumulate: accumulate, scratch: scratch)
            for t in 0..<M {
                let d = dy + t * out, e = pre + t * out
                for j in 0..<out { e[j] = (c[j] - 1) * d[j] }
            }
            // dz[M, in] = ((c - 1) dy) W + du A, then dx += dz * keep / (1 - p)
            be.matmulBackwardInput(dx: dz, dy: pre, w: w, M: M, accumulate: false, scratch: scratch)
            be.gemm(transA: false, transB: false, M: M, N: inF, K: r, alpha: 1, A: du, lda: r, B: A.data, ldb: inF,
                    beta: 1, C: dz, ldc: inF)
            be.maskedAdd(dx: dx, dz: dz, keep: keep, scale: 1 / (1 - dropout), count: M * inF)
        } else {
            // dx[M, in] (+)= dyc W + du A
            be.matmulBackwardInput(dx: dx, dy: dyc, w: w, M: M, accumulate: accumulate, scratch: scratch)
            be.gemm(transA: false, transB: false, M: M, N: inF, K: r, alpha: 1, A: du, lda: r, B: A.data, ldb: inF,
                    beta: 1, C: dx, ldc: inF)
        }
    }

    // MARK: merge

    /// W[out, in] += multiplier * B[out, r] @ A[r, in]: folding an adapter into a dense weight
    /// (`multiplier` = user weight x scale). The one place the merge formula lives.
    public static func merge(into w: UnsafeMutablePointer<Float>, A: Tensor, B: Tensor, multiplier: Float) {
        let out = B.shape[0], r = B.shape[1], inF = A.shape[1]
        sgemm(M: out, N: inF, K: r, alpha: multiplier, A: B.data, lda: r, B: A.data, ldb: inF,
              beta: 1, C: w, ldc: inF)
    }

    /// DoRA's merge, PEFT's merge_and_unload: W[out, in] = (m / n) * (W + scale B A) per row,
    /// n = ||W + scale B A|| of the unmerged W.
    public static func mergeDoRA(into w: UnsafeMutablePointer<Float>, A: Tensor, B: Tensor, magnitude m: Tensor, scale: Float) {
        let out = B.shape[0], inF = A.shape[1]
        merge(into: w, A: A, B: B, multiplier: scale)
        for j in 0..<out {
            let row = w + j * inF
            var s = 0.0
            for i in 0..<inF { s += Double(row[i]) * Double(row[i]) }
            let c = m[j] / Float(s.squareRoot())
            for i in 0..<inF { row[i] *= c }
        }
    }
}

/// Every layer of one adapter, with its PEFT config.
/// A counter of parameter changes, shared by an adapter and its layers.
final class ParameterVersion: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    var value: Int { lock.lock(); defer { lock.unlock() }; return n }
    func bump() { lock.lock(); n += 1; lock.unlock() }
}

public final class LoRAAdapter: @unchecked Sendable {
    public let config: AdapterConfig
    public let layers: [LoRASite: LoRALayer]
    /// Sites in model order (layer, then projection), for stable iteration and file order.
    public let sites: [LoRASite]

    /// `layers` by layer * 7 + projection ordinal: a serve step looks up every site of every
    /// adapter it runs (630 lookups a step for SmolLM2 and three adapters), hashing each.
    private let table: [LoRALayer?]

    /// The adapter's layer at `site`, if any (`layers[site]` without hashing).
    @inline(__always)
    public func layer(at site: LoRASite) -> LoRALayer? {
        let i = site.layer * Projection.allCases.count + site.projection.ordinal
        return site.layer >= 0 && i < table.count ? table[i] : nil
    }

    public init(config: AdapterConfig, layers: [LoRASite: LoRALayer]) {
        self.config = config
        self.layers = layers
        maxRank = layers.values.map(\.r).max() ?? 0
        sites = layers.keys.sorted()
        var table = [LoRALayer?](repeating: nil, count: ((sites.last?.layer ?? -1) + 1) * Projection.allCases.count)
        for (site, l) in layers { table[site.layer * Projection.allCases.count + site.projection.ordinal] = l }
        self.table = table
        // Decoding's packed copies of every layer in one arena (one chunk, 2 MB pages); no
        // memory is touched until a layer is first decoded with.
        let arena = WeightArena(chunkBytes: layers.values.reduce(0) { $0 + $1.packedBytes })
        for l in layers.values { l.packArena = arena; l.version = parameterVersion }
    }

    /// Counts `parametersChanged()` calls on the adapter or any of its layers.
    let parameterVersion = ParameterVersion()
    public var parametersVersion: Int { parameterVersion.value }

    /// A fresh adapter (A kaiming-uniform, B zero) on every target of every selected layer of
    /// a model, drawn from `rng` in model order.
    public convenience init(new config: AdapterConfig, model: LlamaConfig, rng: inout RNG) {
        var layers: [LoRASite: LoRALayer] = [:]
        for i in 0..<model.numHiddenLayers where config.layersToTransform?.contains(i) ?? true {
            for p in config.targetModules {
                let shape = p.shape(model)
                let l = LoRALayer(r: config.r, inFeatures: shape[1], outFeatures: shape[0],
                                  scale: config.scale, dropout: Float(config.loraDropout), dora: config.useDora)
                l.initialize(rng: &rng)
                layers[LoRASite(i, p)] = l
            }
        }
        self.init(config: config, layers: layers)
    }

    /// A fresh adapter on a loaded model: as above, and with DoRA each magnitude set to the
    /// row norms of the model's own (possibly quantized) weights, as PEFT's init.
    public convenience init(new config: AdapterConfig, model: LlamaModel, rng: inout RNG) {
        self.init(new: config, model: model.config, rng: &rng)
        initializeMagnitudes(model: model)
    }

    /// An adapter from factors read from a PEFT folder (`AdapterFactors`, already checked
    /// against the model's shapes).
    public convenience init(factors f: AdapterFactors, model: LlamaConfig) {
        var layers: [LoRASite: LoRALayer] = [:]
        for i in 0..<model.numHiddenLayers {
            for p in f.config.targetModules {
                guard let (A, B) = f.factors[p.weightName(layer: i)] else { continue }
                let l = LoRALayer(r: A.shape[0], inFeatures: A.shape[1], outFeatures: B.shape[0],
                                  scale: f.config.scale, dropout: Float(f.config.loraDropout), dora: f.config.useDora)
                l.A.copy(from: A)
                l.B.copy(from: B)
                if let m = l.magnitude, let saved = f.magnitudes[p.weightName(layer: i)] { m.copy(from: saved) }
                layers[LoRASite(i, p)] = l
            }
        }
        self.init(config: f.config, layers: layers)
    }

    /// The trainable tensors with their gradients and PEFT names, in a fixed order: what AdamW
    /// steps, what checkpoints save and what the best-adapter copy keeps. Adapter types with
    /// more parameters (DoRA's magnitude) add to this list and nothing else has to change.
    public var trainable: [(name: String, param: Tensor, grad: Tensor?)] {
        sites.flatMap { s -> [(name: String, param: Tensor, grad: Tensor?)] in
            let l = layers[s]!
            var out: [(name: String, param: Tensor, grad: Tensor?)] =
                [(Adapter.key(layer: s.layer, s.projection, "A"), l.A, l.gradA),
                 (Adapter.key(layer: s.layer, s.projection, "B"), l.B, l.gradB)]
            if let m = l.magnitude { out.append((Adapter.magnitudeKey(layer: s.layer, s.projection), m, l.gradMagnitude)) }
            return out
        }
    }

    /// Whether the layers are DoRA layers (`use_dora` in the config).
    public var isDoRA: Bool { config.useDora }

    /// After anything wrote into A, B or a magnitude (an optimizer step, a resume, the
    /// best-adapter copy): DoRA's norms are recomputed before the next forward.
    public func parametersChanged() { for l in layers.values { l.parametersChanged() } }

    /// DoRA's magnitude init on a fresh adapter: m = ||W + scale B A|| of the model's weights.
    public func initializeMagnitudes(model: LlamaModel) {
        for (site, l) in layers { l.initializeMagnitude(model.blocks[site.layer].linear(site.projection).weight) }
    }

    public var parameterCount: Int { trainable.reduce(0) { $0 + $1.param.count } }
    /// The largest rank of any layer (a serve step asks per group).
    public let maxRank: Int

    public func enableGradients() { for l in layers.values { l.enableGradients() } }
    public func zeroGradients() { for t in trainable { t.grad?.zero() } }
}

/// The adapters one forward call applies, each with a user weight (`--lora-weights a:0.7`):
/// y = W x + sum_i weight_i * scale_i * B_i A_i x. Training passes one adapter at weight 1;
/// `generate` a weighted stack; a server a set per request.
public struct AdapterSet: @unchecked Sendable {
    public var entries: [(adapter: LoRAAdapter, weight: Float)]

    public init(_ entries: [(adapter: LoRAAdapter, weight: Float)] = []) { self.entries = entries }
    public init(_ adapter: LoRAAdapter) { entries = [(adapter, 1)] }

    public static let none = AdapterSet()
    public var isEmpty: Bool { entries.isEmpty }
    /// The largest rank of any layer of any adapter (sizes scratch).
    public var maxRank: Int { entries.map(\.adapter.maxRank).max() ?? 0 }

    /// The adapter layers that act on `site`, with their weights.
    @inline(__always)
    public func layers(at site: LoRASite) -> [(layer: LoRALayer, weight: Float)] {
        entries.compactMap { e in e.adapter.layer(at: site).map { ($0, e.weight) } }
    }

    /// A DoRA adapter rescales each output row by m / ||W + scale B A||: a rescaling of the whole
    /// output, so it neither adds to nor commutes with other adapters, and a user weight has no
    /// meaning PEFT defines (its forward applies a second adapter to the first one's rescaled
    /// output, and add_weighted_adapter combines only lora_A / lora_B, not magnitudes). A set
    /// holding a DoRA adapter must hold only it, at weight 1.
    public func validate() throws {
        guard let d = entries.first(where: { $0.adapter.isDoRA }) else { return }
        if entries.count != 1 || d.weight != 1 {
            throw AdapterSetError.doraInStack(count: entries.count, weight: d.weight)
        }
    }

    /// Whether any adapter acts on one of `projections` of block `layer`.
    public func touches(layer: Int, _ projections: Projection...) -> Bool {
        entries.contains { e in projections.contains { e.adapter.layer(at: LoRASite(layer, $0)) != nil } }
    }
}

public enum AdapterSetError: Error, CustomStringConvertible, Equatable {
    case doraInStack(count: Int, weight: Float)
    public var description: String {
        switch self {
        case let .doraInStack(count, weight):
            return "a DoRA adapter can only be applied alone at weight 1 (got \(count) adapter\(count == 1 ? "" : "s"), DoRA weight \(weight)): "
                + "DoRA rescales each output row by m / ||W + scale B A||, so it has no weighted sum with other adapters (PEFT defines none either)"
        }
    }
}
