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

    public init(r: Int, inFeatures: Int, outFeatures: Int, scale: Float, dropout: Float = 0) {
        self.r = r
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        self.scale = scale
        self.dropout = dropout
        A = Tensor([r, inFeatures])
        B = Tensor([outFeatures, r])
    }

    /// PEFT's init: A ~ kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), B = 0.
    public func initialize(rng: inout RNG) {
        let bound = 1 / Float(inFeatures).squareRoot()
        for i in 0..<A.count { A[i] = (rng.uniform() * 2 - 1) * bound }
        B.zero()
    }

    public func enableGradients() {
        if gradA == nil { gradA = Tensor(A.shape); gradB = Tensor(B.shape) }
    }

    // MARK: dropout (on the adapter's input only, as PEFT's lora_dropout)

    /// Draws the keep-mask [M, in] from `rng` and writes the dropped-out input z = x * keep / (1 - p).
    public func drop(x: UnsafePointer<Float>, M: Int, keep: UnsafeMutablePointer<UInt8>, z: UnsafeMutablePointer<Float>, rng: inout RNG) {
        let n = M * inFeatures, p = dropout, s = 1 / (1 - p)
        for i in 0..<n {
            keep[i] = rng.uniform() < p ? 0 : 1
            z[i] = keep[i] != 0 ? x[i] * s : 0
        }
    }

    /// Recomputes z from a saved mask (backward does not keep z).
    public func redrop(x: UnsafePointer<Float>, M: Int, keep: UnsafePointer<UInt8>, z: UnsafeMutablePointer<Float>) {
        let n = M * inFeatures, s = 1 / (1 - dropout)
        for i in 0..<n { z[i] = keep[i] != 0 ? x[i] * s : 0 }
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
        if let keep, let dz {
            // dz = du @ A, then dx += dz * keep / (1 - p): dropout's backward.
            be.gemm(transA: false, transB: false, M: M, N: inF, K: r, alpha: 1, A: du, lda: r, B: A.data, ldb: inF,
                    beta: 0, C: dz, ldc: inF)
            let n = M * inF, s = 1 / (1 - dropout)
            for i in 0..<n where keep[i] != 0 { dx[i] += dz[i] * s }
        } else {
            // dx[M, in] += du[M, r] @ A[r, in]
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
}

/// Every layer of one adapter, with its PEFT config.
public final class LoRAAdapter: @unchecked Sendable {
    public let config: AdapterConfig
    public let layers: [LoRASite: LoRALayer]
    /// Sites in model order (layer, then projection), for stable iteration and file order.
    public let sites: [LoRASite]

    public init(config: AdapterConfig, layers: [LoRASite: LoRALayer]) {
        self.config = config
        self.layers = layers
        sites = layers.keys.sorted()
    }

    /// A fresh adapter (A kaiming-uniform, B zero) on every target of every selected layer of
    /// a model, drawn from `rng` in model order.
    public convenience init(new config: AdapterConfig, model: LlamaConfig, rng: inout RNG) {
        var layers: [LoRASite: LoRALayer] = [:]
        for i in 0..<model.numHiddenLayers where config.layersToTransform?.contains(i) ?? true {
            for p in config.targetModules {
                let shape = p.shape(model)
                let l = LoRALayer(r: config.r, inFeatures: shape[1], outFeatures: shape[0],
                                  scale: config.scale, dropout: Float(config.loraDropout))
                l.initialize(rng: &rng)
                layers[LoRASite(i, p)] = l
            }
        }
        self.init(config: config, layers: layers)
    }

    /// An adapter from factors read from a PEFT folder (`AdapterFactors`, already checked
    /// against the model's shapes).
    public convenience init(factors f: AdapterFactors, model: LlamaConfig) {
        var layers: [LoRASite: LoRALayer] = [:]
        for i in 0..<model.numHiddenLayers {
            for p in f.config.targetModules {
                guard let (A, B) = f.factors[p.weightName(layer: i)] else { continue }
                let l = LoRALayer(r: A.shape[0], inFeatures: A.shape[1], outFeatures: B.shape[0],
                                  scale: f.config.scale, dropout: Float(f.config.loraDropout))
                l.A.copy(from: A)
                l.B.copy(from: B)
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
            return [(Adapter.key(layer: s.layer, s.projection, "A"), l.A, l.gradA),
                    (Adapter.key(layer: s.layer, s.projection, "B"), l.B, l.gradB)]
        }
    }

    public var parameterCount: Int { trainable.reduce(0) { $0 + $1.param.count } }
    public var maxRank: Int { layers.values.map(\.r).max() ?? 0 }

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
        entries.compactMap { e in e.adapter.layers[site].map { ($0, e.weight) } }
    }

    /// Whether any adapter acts on one of `projections` of block `layer`.
    public func touches(layer: Int, _ projections: Projection...) -> Bool {
        entries.contains { e in projections.contains { e.adapter.layers[LoRASite(layer, $0)] != nil } }
    }
}
