import Foundation
import Tensor

/// A model with its tokenizer, loaded from what a user points at: a Hugging Face folder or a
/// GGUF file.
public struct LoadedModel {
    public let model: LlamaModel
    public let tokenizer: Tokenizer
    /// The model's Jinja chat template (GGUF `tokenizer.chat_template`, or the folder's
    /// chat_template.jinja / tokenizer_config.json `chat_template`); nil when it has none.
    /// `ChatTemplate.resolve(override:modelTemplate:)` turns it into a renderer.
    public let chatTemplateSource: String?

    /// The checkpoint is read and let go: the model holds copies, so the mapped file (a GGUF
    /// is mapped whole) leaves memory once loading is done.
    /// Projections are stored as `quantization` says; `pool` does the converting. `purpose`
    /// `.decoding` (generate, serve) keeps no f32 lm_head, only the one decoding uses.
    public init(path: String, quantization: Quantization, pool: WorkerPool, purpose: LoadPurpose = .training,
                progress: ProgressHandler? = nil) throws {
        let ck = try openCheckpoint(path)
        let tokenizerFile: String
        if let g = ck as? GGUFCheckpoint {
            tokenizer = try loadTokenizer(gguf: g.file)
            tokenizerFile = g.file.path + " (tokenizer.ggml.tokens)"
            chatTemplateSource = try LLaMA.chatTemplateSource(gguf: g.file)
        } else {
            tokenizer = try loadTokenizer(folder: URL(fileURLWithPath: path))
            let folder = URL(fileURLWithPath: path)
            let spm = folder.appendingPathComponent("tokenizer.model").path
            tokenizerFile = FileManager.default.fileExists(atPath: spm) ? spm : folder.appendingPathComponent("tokenizer.json").path
            chatTemplateSource = try LLaMA.chatTemplateSource(folder: folder)
        }
        // Checked before the weights are read: an id past the embedding's rows would read past
        // it in generate and write past the gradient buffer in finetune.
        try Self.checkTokenizer(tokenizer, fits: ck.config, file: tokenizerFile)
        model = try LlamaModel(checkpoint: ck, quantization: quantization, pool: pool, purpose: purpose, progress: progress)
    }

    /// Every id the tokenizer can produce (its vocabulary, BOS, EOS, pad) is a row of the model's
    /// embedding.
    public static func checkTokenizer(_ t: Tokenizer, fits c: LlamaConfig, file: String) throws {
        guard t.vocabSize <= c.vocabSize else {
            throw CheckpointError.badValue(file: file, key: "vocabulary size", value: "\(t.vocabSize)",
                                           expected: "at most the model's vocab_size (\(c.vocabSize)): its ids would run past the embedding table")
        }
        let special = [("bos id", t.bosID), ("eos id", t.eosID), ("pad id", t.padID)] + t.eosIDs.sorted().map { ("eos id", Optional($0)) }
        for (name, id) in special {
            if let id, id < 0 || Int(id) >= c.vocabSize {
                throw CheckpointError.badValue(file: file, key: name, value: "\(id)", expected: "a token id below the model's vocab_size (\(c.vocabSize))")
            }
        }
    }

    /// End-of-sequence ids: the tokenizer's and the config's (an instruct model's EOS).
    public var eosIDs: Set<Int32> { tokenizer.eosIDs.union(model.config.eosTokenIDs) }

    /// alpaca-lora pads with id 0 (`tokenizer.pad_token_id = 0`); a tokenizer's own pad id
    /// wins when it has one.
    public var padID: Int32 { tokenizer.padID ?? 0 }

    /// The chat template to use: `override` (`--chat-template NAME|PATH`) or the model's own,
    /// with this tokenizer's BOS/EOS texts.
    public func chatTemplate(override: String?) throws -> ChatTemplate {
        try ChatTemplate.resolve(override: override, modelTemplate: chatTemplateSource, tokenizer: tokenizer)
    }
}

/// `DIR` or `DIR:WEIGHT`, as `--lora-weights` takes it.
public struct AdapterSpec: Sendable, Equatable {
    public let path: String
    public let weight: Float
    public init(path: String, weight: Float = 1) { self.path = path; self.weight = weight }

    public init?(argument: String) {
        if let i = argument.lastIndex(of: ":"), let w = Float(argument[argument.index(after: i)...]), w.isFinite {
            path = String(argument[..<i]); weight = w
        } else {
            path = argument; weight = 1
        }
        if path.isEmpty { return nil }
    }
}
