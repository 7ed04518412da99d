import Foundation

/// The tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata.
///   model "gpt2":  byte-level BPE (tokens, merges, token types, `pre` names the pre-tokenizer)
///   model "llama": a SentencePiece vocabulary (tokens, scores, types), handed to
///                  libsentencepiece as a ModelProto we build, so ids equal sentencepiece's.
public func loadTokenizer(gguf f: GGUFFile) throws -> Tokenizer {
    guard let model = try f.string("tokenizer.ggml.model") else {
        throw CheckpointError.missingKey(file: f.path, key: "tokenizer.ggml.model")
    }
    guard let tokens = try f.strings("tokenizer.ggml.tokens") else {
        throw CheckpointError.missingKey(file: f.path, key: "tokenizer.ggml.tokens")
    }
    guard tokens.count <= TokenizerLimits.maxVocabSize else {
        throw CheckpointError.badValue(file: f.path, key: "tokenizer.ggml.tokens", value: "\(tokens.count) tokens",
                                       expected: "at most \(TokenizerLimits.maxVocabSize)")
    }
    // Values are converted with `exactly`: a hostile 64-bit value is an error, not a trap.
    let types = try f.ints("tokenizer.ggml.token_type").map { list in
        try list.enumerated().map { i, t -> Int32 in
            // llama.cpp's types: 0 undefined (read as normal), 1 normal, 2 unknown, 3 control,
            // 4 user-defined, 5 unused, 6 byte. Anything else is a damaged file.
            guard let x = Int32(exactly: t), (0...6).contains(x) else {
                throw CheckpointError.badValue(file: f.path, key: "tokenizer.ggml.token_type[\(i)]", value: "\(t)", expected: "a token type (0 ... 6)")
            }
            return x == 0 ? 1 : x
        }
    }
    func id(_ k: String) throws -> Int32? {
        guard let v = try f.int("tokenizer.ggml.\(k)") else { return nil }
        guard v >= 0, v < tokens.count, let x = Int32(exactly: v) else {
            throw CheckpointError.badValue(file: f.path, key: "tokenizer.ggml.\(k)", value: "\(v)",
                                           expected: "a token id below the \(tokens.count) tokens of tokenizer.ggml.tokens")
        }
        return x
    }
    switch model {
    case "gpt2":
        guard let merges = try f.strings("tokenizer.ggml.merges") else {
            throw CheckpointError.missingKey(file: f.path, key: "tokenizer.ggml.merges")
        }
        return try BPETokenizer(ggufTokens: tokens, tokenTypes: types, merges: merges,
                                pre: try f.string("tokenizer.ggml.pre"),
                                bosID: try id("bos_token_id"), eosID: try id("eos_token_id"),
                                unkID: try id("unknown_token_id"), padID: try id("padding_token_id"),
                                addBOS: try f.bool("tokenizer.ggml.add_bos_token"), source: f.path)
    case "llama":
        let scores = try f.floats("tokenizer.ggml.scores") ?? [Float](repeating: 0, count: tokens.count)
        guard scores.count == tokens.count, types == nil || types!.count == tokens.count else {
            throw CheckpointError.corrupt(file: f.path, detail: "tokenizer.ggml.tokens, .scores and .token_type differ in length")
        }
        let proto = SentencePieceProtoWriter.model(
            pieces: tokens.indices.map { (tokens[$0], scores[$0], types?[$0] ?? 1) },
            unkID: try id("unknown_token_id") ?? 0, bosID: try id("bos_token_id") ?? 1,
            eosID: try id("eos_token_id") ?? 2, padID: try id("padding_token_id") ?? -1,
            addDummyPrefix: try f.bool("tokenizer.ggml.add_space_prefix") ?? true)
        let tok = try SentencePieceTokenizer(serializedModel: proto, source: f.path)
        return tok
    default:
        throw TokenizerError.unsupported(file: f.path, what: "tokenizer.ggml.model '\(model)' (expected 'llama' or 'gpt2')")
    }
}

/// Opens the tokenizer of whatever `--base-model` names: a folder or a .gguf file.
public func loadTokenizer(path: String) throws -> Tokenizer {
    if path.lowercased().hasSuffix(".gguf") { return try loadTokenizer(gguf: try GGUFFile(path: path)) }
    if let problem = folderProblem(URL(fileURLWithPath: path)) {
        throw CheckpointError.unreadable(path: path, reason: "\(problem) (expected a model folder with a tokenizer, or a .gguf file)")
    }
    return try loadTokenizer(folder: URL(fileURLWithPath: path))
}

/// Writes the parts of SentencePiece's ModelProto that libsentencepiece needs to encode like
/// LLaMA's tokenizer.model: pieces (1: piece, 2: score, 3: type), trainer_spec (3: model_type
/// BPE = 2, 35: byte_fallback, 40-43: unk/bos/eos/pad ids), normalizer_spec (1: name
/// "identity", 3: add_dummy_prefix, 4: remove_extra_whitespaces, 5: escape_whitespaces).
enum SentencePieceProtoWriter {
    static func model(pieces: [(String, Float, Int32)], unkID: Int32, bosID: Int32, eosID: Int32, padID: Int32,
                      addDummyPrefix: Bool) -> [UInt8] {
        var m = ProtoWriter()
        for (piece, score, type) in pieces {
            var p = ProtoWriter()
            p.string(1, piece)
            p.float(2, score)
            p.varint(3, UInt64(max(type, 1)))
            m.message(1, p)
        }
        var t = ProtoWriter()
        t.varint(3, 2)
        t.varint(4, UInt64(pieces.count))
        t.varint(35, pieces.contains { $0.2 == 6 } ? 1 : 0)
        t.varint(40, UInt64(bitPattern: Int64(unkID)))
        t.varint(41, UInt64(bitPattern: Int64(bosID)))
        t.varint(42, UInt64(bitPattern: Int64(eosID)))
        t.varint(43, UInt64(bitPattern: Int64(padID)))
        m.message(2, t)
        var n = ProtoWriter()
        n.string(1, "identity")
        n.varint(3, addDummyPrefix ? 1 : 0)
        n.varint(4, 0)
        n.varint(5, 1)
        m.message(3, n)
        return m.bytes
    }
}

/// Protobuf wire format, writing side: varints, fixed32 floats, length-delimited fields.
struct ProtoWriter {
    var bytes: [UInt8] = []
    mutating func raw(_ v: UInt64) {
        var v = v
        while v >= 0x80 { bytes.append(UInt8(v & 0x7F) | 0x80); v >>= 7 }
        bytes.append(UInt8(v))
    }
    mutating func varint(_ field: UInt64, _ v: UInt64) { raw(field << 3); raw(v) }
    mutating func float(_ field: UInt64, _ v: Float) {
        raw(field << 3 | 5)
        withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes.append(contentsOf: $0) }
    }
    mutating func data(_ field: UInt64, _ d: [UInt8]) { raw(field << 3 | 2); raw(UInt64(d.count)); bytes += d }
    mutating func string(_ field: UInt64, _ s: String) { data(field, Array(s.utf8)) }
    mutating func message(_ field: UInt64, _ m: ProtoWriter) { data(field, m.bytes) }
}
