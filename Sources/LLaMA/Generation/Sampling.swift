import Foundation
import Tensor

/// Decoding settings, with alpaca-lora generate.py's defaults and Hugging Face semantics.
public struct GenerationOptions: Sendable, Equatable {
    public var maxNewTokens = 128
    /// EOS is suppressed until this many tokens exist (HF's min_new_tokens; benchmarks use it).
    public var minNewTokens = 0
    public var numBeams = 4
    public var doSample = false
    public var temperature: Float = 0.1
    public var topP: Float = 0.75
    public var topK = 40
    public var repetitionPenalty: Float = 1.0
    public var lengthPenalty: Float = 1.0
    public var seed: UInt64 = 0
    /// Beams keep a KV cache each (and a spare copy): a bound on memory, far above use.
    public static let maxBeams = 64
    public init() {}

    public var isGreedy: Bool { !doSample && numBeams == 1 }

    public func validate() throws {
        func bad(_ k: String, _ v: String, _ e: String) -> GenerationError { .badOption(name: k, value: v, expected: e) }
        if maxNewTokens < 1 { throw bad("max_new_tokens", "\(maxNewTokens)", "at least 1") }
        if numBeams < 1 || numBeams > Self.maxBeams { throw bad("num_beams", "\(numBeams)", "1 to \(Self.maxBeams)") }
        if doSample && numBeams > 1 { throw bad("num_beams", "\(numBeams)", "1 with do_sample (beam sampling is not implemented)") }
        if !(temperature > 0) { throw bad("temperature", "\(temperature)", "a number > 0") }
        if !(topP > 0 && topP <= 1) { throw bad("top_p", "\(topP)", "a number in (0, 1]") }
        if topK < 0 { throw bad("top_k", "\(topK)", "0 (off) or more") }
        if !(repetitionPenalty > 0) { throw bad("repetition_penalty", "\(repetitionPenalty)", "a number > 0") }
    }
}

public enum GenerationError: Error, CustomStringConvertible, Equatable {
    case badOption(name: String, value: String, expected: String)
    case emptyPrompt
    public var description: String {
        switch self {
        case let .badOption(name, value, expected): return "\(name) = \(value): expected \(expected)"
        case .emptyPrompt: return "the prompt is empty and the tokenizer has no BOS token"
        }
    }
}

/// Logits processors, each as Hugging Face defines it.
public enum LogitsProcessing {
    /// CTRL-style penalty on every token already in the sequence: divide positive scores,
    /// multiply negative ones.
    public static func repetitionPenalty(_ scores: UnsafeMutablePointer<Float>, seen: [Int32], penalty: Float) {
        guard penalty != 1 else { return }
        for id in Set(seen) {
            let s = scores[Int(id)]
            scores[Int(id)] = s < 0 ? s * penalty : s / penalty
        }
    }

    public static func temperature(_ scores: UnsafeMutablePointer<Float>, V: Int, _ t: Float) {
        guard t != 1 else { return }
        for i in 0..<V { scores[i] /= t }
    }

    /// Keeps the k highest scores (ties with the k-th kept), sets the rest to -inf.
    public static func topK(_ scores: UnsafeMutablePointer<Float>, V: Int, _ k: Int) {
        guard k > 0, k < V else { return }
        var vals = Array(UnsafeBufferPointer(start: scores, count: V))
        vals.sort(by: >)
        let kth = vals[k - 1]
        for i in 0..<V where scores[i] < kth { scores[i] = -.infinity }
    }

    /// Nucleus: keeps the smallest set of top tokens whose probability mass reaches top_p
    /// (HF: drop tokens whose ascending cumulative probability is <= 1 - top_p; keep >= 1).
    public static func topP(_ scores: UnsafeMutablePointer<Float>, V: Int, _ p: Float) {
        guard p < 1 else { return }
        let order = (0..<V).sorted { scores[$0] < scores[$1] }   // ascending
        var mx = -Float.infinity
        for i in 0..<V { mx = max(mx, scores[i]) }
        var sum = 0.0
        for i in 0..<V { sum += Double(expf(scores[i] - mx)) }
        var cum = 0.0
        for (rank, i) in order.enumerated() {
            cum += Double(expf(scores[i] - mx)) / sum
            if rank == V - 1 { break }   // always keep the best token
            if cum <= Double(1 - p) { scores[i] = -.infinity } else { break }
        }
    }

    public static func argmax(_ scores: UnsafePointer<Float>, V: Int) -> Int {
        var best = 0
        for i in 1..<V where scores[i] > scores[best] { best = i }
        return best
    }

    /// Draws from softmax(scores) with the given RNG.
    public static func sample(_ scores: UnsafePointer<Float>, V: Int, rng: inout RNG) -> Int {
        var mx = -Float.infinity
        for i in 0..<V { mx = max(mx, scores[i]) }
        var sum = 0.0
        for i in 0..<V { sum += Double(expf(scores[i] - mx)) }
        let r = rng.uniformDouble() * sum
        var cum = 0.0
        var last = 0
        for i in 0..<V where scores[i] > -.infinity {
            cum += Double(expf(scores[i] - mx))
            last = i
            if cum > r { return i }
        }
        return last
    }

    /// HF's MinNewTokensLengthLogitsProcessor: EOS impossible before `minNew` new tokens.
    public static func suppressEOS(_ scores: UnsafeMutablePointer<Float>, eos: Set<Int32>, generated: Int, minNew: Int) {
        guard generated < minNew else { return }
        for id in eos { scores[Int(id)] = -.infinity }
    }

    /// log_softmax in place.
    public static func logSoftmax(_ x: UnsafeMutablePointer<Float>, V: Int) {
        var mx = -Float.infinity
        for i in 0..<V { mx = max(mx, x[i]) }
        var sum = 0.0
        for i in 0..<V { sum += Double(expf(x[i] - mx)) }
        let lse = mx + Float(Foundation.log(sum))
        for i in 0..<V { x[i] -= lse }
    }
}
