import Foundation

/// Text to token ids and back, as the model's own tokenizer does it.
///
/// Ids are `Int32`, SentencePiece's type. `encode` never adds EOS: alpaca-lora appends EOS itself
/// when building training examples, and the data layer does the same here.
public protocol Tokenizer: Sendable {
    /// The ids for `text`, with the BOS id in front when `addBOS` is true and the model has one
    /// (what Hugging Face's LlamaTokenizer returns for `tokenizer(text)`).
    func encode(_ text: String, addBOS: Bool) -> [Int32]

    /// The text for `ids`. Control ids (BOS, EOS) are invisible; ids outside the vocabulary are
    /// skipped (a model's embedding may have more rows than its tokenizer has pieces).
    func decode(_ ids: [Int32]) -> String

    var bosID: Int32? { get }
    /// Whether `tokenizer(text)` puts BOS in front for this model (true for LLaMA's
    /// SentencePiece; GGUF's tokenizer.ggml.add_bos_token or tokenizer.json's post-processor
    /// decide for BPE models). Training examples and prompts follow it.
    var addsBOS: Bool { get }
    var eosID: Int32? { get }
    /// Every id that ends generation (for SentencePiece models, just `eosID`).
    var eosIDs: Set<Int32> { get }
    /// The tokenizer's own pad id; nil when it defines none, as LLaMA's tokenizer.model does
    /// (alpaca-lora then pads with id 0, `<unk>`; that choice belongs to the data layer).
    var padID: Int32? { get }
    var vocabSize: Int { get }

    /// The vocabulary entry for `id` (e.g. "▁the", "<0x0A>", "<s>"); "" when out of range.
    func piece(_ id: Int32) -> String
}

/// Bounds on what a tokenizer file may declare, checked before tables are sized from it.
public enum TokenizerLimits {
    /// Ids at or past this are refused: tables are sized by the largest id, so an id near 2^31
    /// would ask for tens of GiB (the largest released vocabularies are ~256K).
    public static let maxVocabSize = 1 << 22
}

/// Everything that can be wrong with a tokenizer a user points us at. Each message names the
/// file (or folder) and what was expected.
public enum TokenizerError: Error, CustomStringConvertible, Equatable {
    /// The folder holds no tokenizer file we know.
    case notFound(folder: String, expected: [String])
    /// The file exists but is a format we do not read yet.
    case unsupported(file: String, what: String)
    /// The file cannot be read at all.
    case unreadable(file: String, reason: String)
    /// libsentencepiece rejected the model (`file` names the source: a path, or a description
    /// such as "serialized SentencePiece model (1234 bytes)").
    case invalidModel(file: String, reason: String)
    /// libsentencepiece loaded the vocabulary but cannot segment ordinary text with it.
    case cannotEncode(file: String, reason: String)

    public var description: String {
        switch self {
        case let .notFound(folder, expected):
            return "\(folder): no tokenizer found (expected \(expected.joined(separator: " or ")))"
        case let .unsupported(file, what):
            return "\(file): unsupported: \(what)"
        case let .unreadable(file, reason):
            return "\(file): cannot read: \(reason)"
        case let .invalidModel(file, reason):
            return "\(file): not a valid SentencePiece model (expected a serialized ModelProto, as in LLaMA's tokenizer.model): \(reason)"
        case let .cannotEncode(file, reason):
            return "\(file): the tokenizer's vocabulary cannot encode ordinary text (are its token types right?): \(reason)"
        }
    }
}

/// The tokenizer stored in a model folder (a Hugging Face checkpoint folder).
///
/// `tokenizer.model` (SentencePiece, LLaMA 1 and 2) is preferred when present, as Hugging Face's
/// slow LlamaTokenizer does; otherwise `tokenizer.json` is read as byte-level BPE (`BPETokenizer`).
public func loadTokenizer(folder: URL) throws -> Tokenizer {
    let fm = FileManager.default
    let spm = folder.appendingPathComponent("tokenizer.model")
    if fm.fileExists(atPath: spm.path) {
        return try SentencePieceTokenizer(path: spm)
    }
    let json = folder.appendingPathComponent("tokenizer.json")
    if fm.fileExists(atPath: json.path) {
        // Byte-level BPE (SmolLM2, GPT-2, LLaMA 3); other tokenizer.json models are refused by name.
        // BOS/EOS/pad come from tokenizer_config.json, more end-of-generation ids from
        // generation_config.json, when the folder has them.
        return try BPETokenizer(tokenizerJSON: json,
                                tokenizerConfig: folder.appendingPathComponent("tokenizer_config.json"),
                                generationConfig: folder.appendingPathComponent("generation_config.json"))
    }
    throw TokenizerError.notFound(folder: folder.path, expected: ["tokenizer.model", "tokenizer.json"])
}
