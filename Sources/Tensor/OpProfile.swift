import Dispatch

/// Wall time by op, for "where does a training step go" reports (docs/PERFORMANCE.md).
/// Owned by whoever wants a profile and passed in; nil means no timing at all.
public final class OpProfile: @unchecked Sendable {
    public enum Op: String, CaseIterable, Sendable {
        case embedding, rmsnorm, projection, lora, rope, attention, swiglu, residual, lmHead = "lm_head", crossEntropy = "cross_entropy"
    }
    public private(set) var seconds: [Op: Double] = [:]
    public private(set) var calls: [Op: Int] = [:]

    public init() {}

    @inline(__always)
    public func time<T>(_ op: Op, _ body: () -> T) -> T {
        let t0 = DispatchTime.now().uptimeNanoseconds
        let r = body()
        seconds[op, default: 0] += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        calls[op, default: 0] += 1
        return r
    }

    public func reset() { seconds = [:]; calls = [:] }

    /// One line per op, largest first: name, seconds, share.
    public var report: String {
        let total = seconds.values.reduce(0, +)
        return seconds.sorted { $0.value > $1.value }.map { op, s in
            "\(op.rawValue.padding(toLength: 14, withPad: " ", startingAt: 0)) \(String(format: "%8.3f s %5.1f%%", s, 100 * s / max(total, 1e-12)))"
        }.joined(separator: "\n")
    }
}

extension Optional where Wrapped == OpProfile {
    @inline(__always)
    public func time<T>(_ op: OpProfile.Op, _ body: () -> T) -> T {
        if let p = self { return p.time(op, body) }
        return body()
    }
}
