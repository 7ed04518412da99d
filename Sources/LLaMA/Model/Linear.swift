import Tensor

/// A frozen linear layer of the base model (no bias, as in LLaMA): its weight in some format.
/// Immutable: adapters are not attached here but passed to each forward call (`AdapterSet`).
public final class Linear: @unchecked Sendable {
    public let weight: Weight          // [out, in]

    public init(_ weight: Weight) { self.weight = weight }

    public var inFeatures: Int { weight.inFeatures }
    public var outFeatures: Int { weight.outFeatures }
}
