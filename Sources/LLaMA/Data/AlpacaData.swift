import Foundation
import Tensor

/// One Alpaca-format record: {instruction, input (may be empty or absent), output}.
public struct AlpacaRecord: Sendable, Equatable {
    public var instruction: String
    public var input: String
    public var output: String
    public init(instruction: String, input: String = "", output: String) {
        self.instruction = instruction; self.input = input; self.output = output
    }
}

public enum DataError: Error, CustomStringConvertible, Equatable {
    case unreadable(path: String, reason: String)
    case syntax(path: String, detail: String)
    case notAList(path: String, found: String)
    case badRecord(path: String, record: Int, field: String, problem: String)
    case empty(path: String)
    case tooFew(path: String, records: Int, needed: String)

    public var description: String {
        switch self {
        case let .unreadable(p, r): return "\(p): cannot read: \(r)"
        case let .syntax(p, d): return "\(p): \(d)"
        case let .notAList(p, f): return "\(p): expected a JSON list of records (or JSON lines), found \(f)"
        case let .badRecord(p, i, f, problem): return "\(p): record \(i): field '\(f)' \(problem)"
        case let .empty(p): return "\(p): no records"
        case let .tooFew(p, n, needed): return "\(p): \(n) records, \(needed)"
        }
    }
}

public enum AlpacaData {
    /// Reads a JSON list of records, or JSON lines (one object per line). Record numbers in
    /// errors count from 0, as the list index.
    public static func load(_ url: URL) throws -> [AlpacaRecord] {
        try records(DataFile.objects(url), path: url.path)
    }

    /// The records of a data file's objects; errors name `path`, the record and the field.
    public static func records(_ objects: [JSON], path: String) throws -> [AlpacaRecord] {
        var out: [AlpacaRecord] = []
        out.reserveCapacity(objects.count)
        for (i, o) in objects.enumerated() {
            guard case .object = o else {
                throw DataError.badRecord(path: path, record: i, field: "(record)", problem: "is \(o.typeName), expected an object")
            }
            func str(_ k: String, required: Bool) throws -> String {
                guard let v = o[k], !v.isNull else {
                    if required { throw DataError.badRecord(path: path, record: i, field: k, problem: "is missing") }
                    return ""
                }
                guard let s = v.string else {
                    throw DataError.badRecord(path: path, record: i, field: k, problem: "is \(v.typeName), expected a string")
                }
                return s
            }
            out.append(AlpacaRecord(instruction: try str("instruction", required: true),
                                    input: try str("input", required: false),
                                    output: try str("output", required: true)))
        }
        if out.isEmpty { throw DataError.empty(path: path) }
        return out
    }
}

/// The JSON objects of a data file: a JSON list, or JSON lines (one object per line).
public enum DataFile {
    public static func objects(_ url: URL) throws -> [JSON] {
        let path = url.path
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw DataError.unreadable(path: path, reason: ioReason(error))
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw DataError.syntax(path: path, detail: "not UTF-8 text")
        }
        return try objects(text: text, path: path)
    }

    public static func objects(text: String, path: String) throws -> [JSON] {
        var objects: [JSON] = []
        let trimmed = text.drop { $0.isWhitespace }
        if trimmed.first == "[" {
            let j: JSON
            do { j = try JSON.parse(text, source: path) } catch let JSONError.syntax(_, message, offset) {
                throw DataError.syntax(path: path, detail: "invalid JSON at byte \(offset): \(message)")
            }
            guard let arr = j.array else { throw DataError.notAList(path: path, found: j.typeName) }
            objects = arr
        } else if trimmed.first == "{" {
            for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let l = line.trimmingCharacters(in: .whitespacesAndNewlines)
                if l.isEmpty { continue }
                do { objects.append(try JSON.parse(l, source: "\(path) line \(n + 1)")) } catch let JSONError.syntax(_, message, offset) {
                    throw DataError.syntax(path: path, detail: "line \(n + 1): invalid JSON at byte \(offset) of the line: \(message)")
                }
            }
        } else if trimmed.isEmpty {
            throw DataError.empty(path: path)
        } else {
            throw DataError.syntax(path: path, detail: "not JSON: expected '[' or '{' at the start")
        }
        if objects.isEmpty { throw DataError.empty(path: path) }
        return objects
    }
}

/// A tokenized training example: ids and labels (-100 where no loss is taken).
public struct Example: Sendable, Equatable {
    public var inputIDs: [Int32]
    public var labels: [Int32]
    public var count: Int { inputIDs.count }
}

/// alpaca-lora's finetune.py tokenization.
public struct ExampleBuilder: Sendable {
    public let tokenizer: Tokenizer
    public let prompter: Prompter
    public let cutoffLen: Int
    public let trainOnInputs: Bool
    public let addEOSToken: Bool

    public init(tokenizer: Tokenizer, prompter: Prompter, cutoffLen: Int, trainOnInputs: Bool, addEOSToken: Bool) {
        self.tokenizer = tokenizer; self.prompter = prompter; self.cutoffLen = cutoffLen
        self.trainOnInputs = trainOnInputs; self.addEOSToken = addEOSToken
    }

    /// finetune.py `tokenize`: BOS as the tokenizer adds it, truncation at cutoff_len, EOS appended
    /// when the last id is not EOS and the sequence is shorter than cutoff_len.
    func tokenize(_ text: String, addEOS: Bool) -> [Int32] {
        var ids = tokenizer.encode(text, addBOS: tokenizer.addsBOS)
        if ids.count > cutoffLen { ids.removeLast(ids.count - cutoffLen) }
        if let eos = tokenizer.eosID, addEOS, ids.last != eos, ids.count < cutoffLen { ids.append(eos) }
        return ids
    }

    /// Every record tokenized, in order; `progress` sees each one.
    public func examples(_ records: [AlpacaRecord], progress: ProgressHandler? = nil) -> [Example] {
        var out: [Example] = []
        out.reserveCapacity(records.count)
        for r in records {
            out.append(example(r))
            progress?(TaskProgress(task: .tokenize, done: out.count, total: records.count, unit: "records"))
        }
        return out
    }

    /// finetune.py `generate_and_tokenize_prompt`: the full prompt always gets EOS; without
    /// train_on_inputs the user prompt's tokens are masked to -100.
    public func example(_ r: AlpacaRecord) -> Example {
        let full = prompter.generatePrompt(instruction: r.instruction, input: r.input, label: r.output)
        let ids = tokenize(full, addEOS: true)
        var labels = ids
        if !trainOnInputs {
            let user = prompter.generatePrompt(instruction: r.instruction, input: r.input, label: nil)
            var n = tokenize(user, addEOS: addEOSToken).count
            if addEOSToken { n -= 1 }
            for i in 0..<min(n, labels.count) { labels[i] = -100 }
        }
        return Example(inputIDs: ids, labels: labels)
    }
}

/// Builds micro-batches as transformers' DataCollatorForSeq2Seq with alpaca-lora's settings:
/// left padding with `padID`, labels -100 and attention mask 0 on pads, length rounded up to a
/// multiple of 8.
public enum Collator {
    public static let padToMultipleOf = 8

    public static func batch(_ examples: [Example], padID: Int32) -> Batch {
        let longest = examples.map(\.count).max() ?? 1
        let T = (longest + padToMultipleOf - 1) / padToMultipleOf * padToMultipleOf
        var ids: [Int32] = [], mask: [Float] = [], labels: [Int32] = []
        ids.reserveCapacity(examples.count * T)
        for e in examples {
            let pad = T - e.count
            ids += [Int32](repeating: padID, count: pad) + e.inputIDs
            mask += [Float](repeating: 0, count: pad) + [Float](repeating: 1, count: e.count)
            labels += [Int32](repeating: -100, count: pad) + e.labels
        }
        return Batch(B: examples.count, T: T, inputIDs: ids, attentionMask: mask, labels: labels)
    }
}

/// The order examples are visited in: reshuffled every epoch from the seed; with
/// group_by_length, transformers' LengthGroupedSampler scheme (shuffle, cut into mega-batches
/// of 50 micro-batches, sort each by length, longest first) so padding is small.
public enum Sampler {
    public static func order(count: Int, lengths: [Int], epoch: Int, seed: UInt64, groupByLength: Bool, microBatchSize: Int) -> [Int] {
        var rng = RNG(seed: seed &+ UInt64(epoch) &* 0x9E37_79B9)
        var idx = Array(0..<count)
        rng.shuffle(&idx)
        guard groupByLength else { return idx }
        let mega = max(1, 50 * microBatchSize)
        var out: [Int] = []
        var megas: [[Int]] = stride(from: 0, to: count, by: mega).map { s in
            Array(idx[s..<min(count, s + mega)]).sorted { lengths[$0] > lengths[$1] || (lengths[$0] == lengths[$1] && $0 < $1) }
        }
        // The longest example goes first so an out-of-memory shows at the first step.
        if let mi = megas.indices.max(by: { lengths[megas[$0][0]] < lengths[megas[$1][0]] }), mi != 0 {
            let a = megas[0][0]; megas[0][0] = megas[mi][0]; megas[mi][0] = a
        }
        for m in megas { out += m }
        return out
    }

    /// Splits records into (train, validation) with a fixed seed: `valSize` records chosen at
    /// random become the validation set (like datasets' train_test_split with a seed).
    public static func split(count: Int, valSize: Int, seed: UInt64) -> (train: [Int], val: [Int]) {
        guard valSize > 0 else { return (Array(0..<count), []) }
        var rng = RNG(seed: seed)
        var idx = Array(0..<count)
        rng.shuffle(&idx)
        return (Array(idx[valSize...]).sorted(), Array(idx[..<valSize]).sorted())
    }
}
