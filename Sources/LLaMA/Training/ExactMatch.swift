import Foundation
import Tensor

/// Exact-match accuracy over Alpaca records (`lora eval --metric exact_match`): each record's
/// prompt is built with the template and no output, answered greedily, and the response
/// (`Prompter.response(from:)` of the full decoded text, as `lora generate` prints it) is
/// compared with the record's output after both are trimmed of surrounding whitespace.
public enum ExactMatch {
    /// The default answer length: task answers are a few tokens, and a trained model stops at EOS.
    public static let defaultMaxNewTokens = 32

    /// One wrong answer; `index` is the record's position in the data file (from 0).
    public struct Failure: Sendable, Equatable {
        public let index: Int
        public let instruction: String
        public let input: String
        public let expected: String
        public let got: String
    }

    public struct Result: Sendable, Equatable {
        public let correct: Int
        public let total: Int
        /// Every failure, in evaluation order.
        public let failures: [Failure]
        public var accuracy: Double { total > 0 ? Double(correct) / Double(total) : .nan }
    }

    /// Greedy decoding with Hugging Face semantics: argmax, no repetition penalty, stop at an
    /// EOS id or after `maxNewTokens`.
    public static func options(maxNewTokens: Int) -> GenerationOptions {
        var o = GenerationOptions()
        o.numBeams = 1
        o.doSample = false
        o.repetitionPenalty = 1
        o.maxNewTokens = maxNewTokens
        return o
    }

    /// The text that is compared: without leading or trailing whitespace and newlines.
    /// Nothing else is normalized (case, punctuation and inner spaces count).
    public static func normalize(_ s: String) -> String {
        s.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    public static func isMatch(expected: String, got: String) -> Bool {
        normalize(expected) == normalize(got)
    }

    /// The model's answer to one record: the template's prompt (instruction and input, no
    /// output) encoded with BOS as the tokenizer adds it, greedy ids, then the response part
    /// of the decoded prompt + answer ("" when the template's response marker is missing).
    public static func answer(_ r: AlpacaRecord, prompter: Prompter, tokenizer: Tokenizer, generator: Generator,
                              options: GenerationOptions) throws -> String {
        let prompt = prompter.generatePrompt(instruction: r.instruction, input: r.input)
        let ids = tokenizer.encode(prompt, addBOS: tokenizer.addsBOS)
        let generated = try generator.generate(prompt: ids, options: options)
        return prompter.response(from: tokenizer.decode(ids + generated))
    }

    /// Answers `records[i]` for each i in `indices` (all records, in order, when nil) and counts
    /// exact matches. `progress` sees each record answered, with the running accuracy.
    public static func evaluate(records: [AlpacaRecord], indices: [Int]? = nil, prompter: Prompter,
                                tokenizer: Tokenizer, generator: Generator,
                                maxNewTokens: Int = defaultMaxNewTokens,
                                progress: ProgressHandler? = nil) throws -> Result {
        let order = indices ?? Array(records.indices)
        let opts = options(maxNewTokens: maxNewTokens)
        try opts.validate()
        var correct = 0
        var failures: [Failure] = []
        for (n, i) in order.enumerated() {
            let r = records[i]
            let got = try answer(r, prompter: prompter, tokenizer: tokenizer, generator: generator, options: opts)
            if isMatch(expected: r.output, got: got) {
                correct += 1
            } else {
                failures.append(Failure(index: i, instruction: r.instruction, input: r.input,
                                        expected: normalize(r.output), got: normalize(got)))
            }
            let accuracy = Double(correct) / Double(n + 1)
            progress?(TaskProgress(task: .eval, done: n + 1, total: order.count, unit: "records",
                                   metricName: "accuracy", metricValue: accuracy))
        }
        return Result(correct: correct, total: order.count, failures: failures)
    }
}

/// Which records an evaluation visits (`lora eval --limit N --seed S`).
public enum EvalSample {
    /// All indices in order when `limit` is nil or at least `count`; otherwise `limit` distinct
    /// indices drawn with the project RNG from `seed` (the first `limit` of a Fisher-Yates
    /// shuffle), returned in file order so output reads top to bottom.
    public static func indices(count: Int, limit: Int?, seed: UInt64) -> [Int] {
        guard let limit, limit < count else { return Array(0..<count) }
        var rng = RNG(seed: seed)
        var idx = Array(0..<count)
        rng.shuffle(&idx)
        return idx.prefix(max(0, limit)).sorted()
    }
}
