import Tensor

/// One micro-batch, as alpaca-lora's collator builds it: rows left-padded to a common
/// length T with pad id, attention mask 0 on pads, labels -100 on pads and masked prompts.
public struct Batch: Sendable {
    public let B: Int
    public let T: Int
    public var inputIDs: [Int32]       // [B, T]
    public var attentionMask: [Float]  // [B, T] 1 = token, 0 = padding
    public var labels: [Int32]         // [B, T] -100 = no loss

    public init(B: Int, T: Int, inputIDs: [Int32], attentionMask: [Float], labels: [Int32]) {
        precondition(inputIDs.count == B * T && attentionMask.count == B * T && labels.count == B * T)
        self.B = B; self.T = T
        self.inputIDs = inputIDs; self.attentionMask = attentionMask; self.labels = labels
    }

    /// Next-token targets: target[b, t] = labels[b, t + 1], and -100 at the last position.
    public var shiftedTargets: [Int32] {
        var out = [Int32](repeating: -100, count: B * T)
        for b in 0..<B { for t in 0..<(T - 1) { out[b * T + t] = labels[b * T + t + 1] } }
        return out
    }

    /// Number of tokens that carry loss (shifted labels != -100).
    public var trainedTokens: Int { shiftedTargets.reduce(0) { $0 + ($1 == -100 ? 0 : 1) } }
}
