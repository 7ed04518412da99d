import Foundation
import Tensor

/// A model with its tokenizer, loaded from what a user points at: a Hugging Face folder or a
/// GGUF file.
public struct LoadedModel {
    public let model: LlamaModel
    public let tokenizer: Tokenizer

    /// The checkpoint is read and let go: the model holds copies, so the mapped file (a GGUF
    /// is mapped whole) leaves memory once loading is done.
    /// Projections are stored as `quantization` says; `pool` does the converting.
    public init(path: String, quantization: Quantization, pool: WorkerPool) throws {
        let ck = try openCheckpoint(path)
        if let g = ck as? GGUFCheckpoint {
            tokenizer = try loadTokenizer(gguf: g.file)
        } else {
            tokenizer = try loadTokenizer(folder: URL(fileURLWithPath: path))
        }
        model = try LlamaModel(checkpoint: ck, quantization: quantization, pool: pool)
    }

    /// End-of-sequence ids: the tokenizer's and the config's (an instruct model's EOS).
    public var eosIDs: Set<Int32> { tokenizer.eosIDs.union(model.config.eosTokenIDs) }

    /// alpaca-lora pads with id 0 (`tokenizer.pad_token_id = 0`); a tokenizer's own pad id
    /// wins when it has one.
    public var padID: Int32 { tokenizer.padID ?? 0 }
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
