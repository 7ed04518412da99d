import Tensor

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

/// One LoRA adapter on one linear layer, PEFT's convention:
///   y = W x + scale * B (A (dropout(x)))
///   A [r, in] (kaiming-uniform init), B [out, r] (zeros), scale = alpha / r (or alpha / sqrt(r)).
public final class LoRA: @unchecked Sendable {
    public let r: Int
    public let inFeatures: Int
    public let outFeatures: Int
    /// The multiplier applied to B A x: alpha/r (or alpha/sqrt r) times a user weight when mixing.
    public var scale: Float
    public var dropout: Float
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

    public func zeroGradients() { gradA?.zero(); gradB?.zero() }
}
