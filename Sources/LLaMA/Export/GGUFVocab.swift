import Foundation

/// The tokenizer as GGUF `tokenizer.ggml.*` metadata, for a GGUF export.
///
/// - A GGUF base: its own tokenizer.* keys are copied through unchanged.
/// - A SentencePiece `tokenizer.model` (LLaMA 1/2): as convert_hf_to_gguf.py's
///   _set_vocab_sentencepiece writes it: model `llama`, pre `default`, every piece with its score
///   and type (NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6: SentencePiece's
///   own numbering, which GGUF shares), padded to the config's vocab_size with `[PAD{i}]`
///   pieces (score -10000, UNUSED); special ids from config.json, else the tokenizer;
///   add_bos_token / add_eos_token from tokenizer_config.json (LLaMA's defaults true / false).
/// - A tokenizer.json (byte-level BPE) base: model `gpt2`, `pre` the llama.cpp name of its
///   pre-tokenizer (gpt-2, smollm, llama-bpe), tokens by id (added tokens included; CONTROL 3 for
///   special ones, USER_DEFINED 4 for others, NORMAL 1 for the rest; padded to vocab_size with
///   `[PAD{i}]`, UNUSED 5), merges as "a b" strings, the special ids, add_bos_token from its
///   post-processor, and tokenizer_config.json's chat_template (or chat_template.jinja).
public enum GGUFVocab {
    public static func metadata(for base: Checkpoint) throws -> [(String, GGUFValue)] {
        if let g = base as? GGUFCheckpoint {
            return g.file.keys.filter { $0.hasPrefix("tokenizer.") }.map { ($0, g.file.metadata[$0]!) }
        }
        guard let folder = (base as? SafeTensorsCheckpoint)?.folder else {
            throw ExportError.unsupported(what: "a GGUF export of \(base.source): no tokenizer to write")
        }
        let spm = folder.appendingPathComponent("tokenizer.model")
        if FileManager.default.fileExists(atPath: spm.path) {
            return try sentencePiece(model: spm, config: base.config,
                                     tokenizerConfig: try? JSON.parse(contentsOf: folder.appendingPathComponent("tokenizer_config.json")))
        }
        if FileManager.default.fileExists(atPath: folder.appendingPathComponent("tokenizer.json").path) {
            return try bytePairs(folder: folder, config: base.config)
        }
        throw TokenizerError.notFound(folder: folder.path, expected: ["tokenizer.model"])
    }

    public static func bytePairs(folder: URL, config c: LlamaConfig) throws -> [(String, GGUFValue)] {
        let url = folder.appendingPathComponent("tokenizer.json")
        let cfgURL = folder.appendingPathComponent("tokenizer_config.json")
        // Parsed (and checked) by lora's own reader first: what it refuses is not exported.
        let tok = try BPETokenizer(tokenizerJSON: url, tokenizerConfig: cfgURL,
                                   generationConfig: folder.appendingPathComponent("generation_config.json"))
        let root = try JSON.parse(contentsOf: url)
        guard case .object(let vocab)? = root["model"]?["vocab"], let mergeList = root["model"]?["merges"]?.array else {
            throw TokenizerError.unreadable(file: url.path, reason: "model.vocab and model.merges: expected an object and an array")
        }
        var byID: [Int: (String, Int32)] = [:]
        for (token, v) in vocab { if let i = v.int { byID[i] = (token, 1) } }
        for a in root["added_tokens"]?.array ?? [] {
            if let i = a["id"]?.int, let content = a["content"]?.string {
                byID[i] = (content, a["special"]?.bool == true ? 3 : 4)
            }
        }
        let size = max(c.vocabSize, (byID.keys.max() ?? -1) + 1)
        var tokens: [GGUFValue] = [], types: [GGUFValue] = []
        for i in 0..<size {
            let (t, ty) = byID[i] ?? ("[PAD\(i)]", 5)
            tokens.append(.string(t)); types.append(.int32(ty))
        }
        let merges: [GGUFValue] = mergeList.compactMap { m in
            if let s = m.string { return .string(s) }
            if let p = m.array, p.count == 2, let a = p[0].string, let b = p[1].string { return .string(a + " " + b) }
            return nil
        }
        let pre: String
        switch tok.preTokenizer {
        case .gpt2: pre = "gpt-2"
        case .smollm: pre = "smollm"
        case .llama3: pre = "llama-bpe"
        }
        var out: [(String, GGUFValue)] = [
            ("tokenizer.ggml.model", .string("gpt2")),
            ("tokenizer.ggml.pre", .string(pre)),
            ("tokenizer.ggml.tokens", .array(.string, tokens)),
            ("tokenizer.ggml.token_type", .array(.int32, types)),
            ("tokenizer.ggml.merges", .array(.string, merges)),
        ]
        func id(_ key: String, _ v: Int32?) {
            if let v, v >= 0, Int(v) < size { out.append((key, .uint32(UInt32(v)))) }
        }
        id("tokenizer.ggml.bos_token_id", c.bosTokenID ?? tok.bosID)
        id("tokenizer.ggml.eos_token_id", c.eosTokenIDs.first ?? tok.eosID)
        id("tokenizer.ggml.unknown_token_id", tok.unkID)
        id("tokenizer.ggml.padding_token_id", c.padTokenID ?? tok.padID)
        out.append(("tokenizer.ggml.add_bos_token", .bool(tok.addsBOS)))
        out.append(("tokenizer.ggml.add_eos_token", .bool(false)))
        var template = (try? JSON.parse(contentsOf: cfgURL))?["chat_template"]?.string
        if template == nil { template = try? String(contentsOf: folder.appendingPathComponent("chat_template.jinja"), encoding: .utf8) }
        if let template { out.append(("tokenizer.chat_template", .string(template))) }
        return out
    }

    public static func sentencePiece(model url: URL, config c: LlamaConfig, tokenizerConfig: JSON?) throws -> [(String, GGUFValue)] {
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw CheckpointError.unreadable(path: url.path, reason: ioReason(error))
        }
        let proto = try SentencePieceModelProto(bytes: [UInt8](data), file: url.path)
        let tok = try SentencePieceTokenizer(path: url)
        let V = c.vocabSize
        var tokens: [GGUFValue] = [], scores: [GGUFValue] = [], types: [GGUFValue] = []
        for i in 0..<V {
            if i < proto.pieces.count {
                let p = proto.pieces[i]
                tokens.append(.string(p.piece)); scores.append(.float32(p.score)); types.append(.int32(p.type))
            } else {
                tokens.append(.string("[PAD\(i)]")); scores.append(.float32(-10000)); types.append(.int32(5))
            }
        }
        var out: [(String, GGUFValue)] = [
            ("tokenizer.ggml.model", .string("llama")),
            ("tokenizer.ggml.pre", .string("default")),
            ("tokenizer.ggml.tokens", .array(.string, tokens)),
            ("tokenizer.ggml.scores", .array(.float32, scores)),
            ("tokenizer.ggml.token_type", .array(.int32, types)),
        ]
        func id(_ key: String, _ v: Int32?) {
            if let v, v >= 0, Int(v) < V { out.append((key, .uint32(UInt32(v)))) }
        }
        id("tokenizer.ggml.bos_token_id", c.bosTokenID ?? tok.bosID)
        id("tokenizer.ggml.eos_token_id", c.eosTokenIDs.first ?? tok.eosID)
        id("tokenizer.ggml.unknown_token_id", tok.unkID)
        id("tokenizer.ggml.padding_token_id", c.padTokenID ?? tok.padID)
        out.append(("tokenizer.ggml.add_bos_token", .bool(tokenizerConfig?["add_bos_token"]?.bool ?? true)))
        out.append(("tokenizer.ggml.add_eos_token", .bool(tokenizerConfig?["add_eos_token"]?.bool ?? false)))
        out.append(("tokenizer.ggml.add_space_prefix", .bool(proto.addDummyPrefix)))
        return out
    }
}

/// The parts of SentencePiece's ModelProto (sentencepiece_model.proto) a GGUF vocabulary needs:
///   ModelProto: 1 pieces (repeated SentencePiece), 3 normalizer_spec (NormalizerSpec)
///   SentencePiece: 1 piece (string), 2 score (float), 3 type (enum, default NORMAL = 1)
///   NormalizerSpec: 3 add_dummy_prefix (bool, default true)
/// Every length is checked against the bytes left.
struct SentencePieceModelProto {
    var pieces: [(piece: String, score: Float, type: Int32)] = []
    var addDummyPrefix = true

    init(bytes: [UInt8], file: String) throws {
        var r = ProtoReader(bytes: bytes[...], file: file)
        while let (field, wire) = try r.tag() {
            switch (field, wire) {
            case (1, 2):
                var p = ProtoReader(bytes: try r.lengthDelimited(), file: file)
                var piece = "", score: Float = 0, type: Int32 = 1
                while let (f, w) = try p.tag() {
                    switch (f, w) {
                    case (1, 2):
                        guard let s = String(bytes: try p.lengthDelimited(), encoding: .utf8) else {
                            throw CheckpointError.corrupt(file: file, detail: "piece \(pieces.count) is not UTF-8")
                        }
                        piece = s
                    case (2, 5): score = Float(bitPattern: try p.fixed32())
                    case (3, 0): type = Int32(truncatingIfNeeded: try p.varint())
                    default: try p.skip(w)
                    }
                }
                pieces.append((piece, score, type))
            case (3, 2):
                var n = ProtoReader(bytes: try r.lengthDelimited(), file: file)
                while let (f, w) = try n.tag() {
                    if f == 3, w == 0 { addDummyPrefix = try n.varint() != 0 } else { try n.skip(w) }
                }
            default: try r.skip(wire)
            }
        }
        guard !pieces.isEmpty else {
            throw CheckpointError.corrupt(file: file, detail: "no pieces in the SentencePiece model")
        }
    }
}

/// A bounds-checked cursor over protobuf wire-format bytes.
private struct ProtoReader {
    var bytes: ArraySlice<UInt8>
    let file: String

    func corrupt(_ what: String) -> CheckpointError { .corrupt(file: file, detail: "SentencePiece model: \(what)") }

    mutating func varint() throws -> UInt64 {
        var v: UInt64 = 0, shift: UInt64 = 0
        while true {
            guard let b = bytes.popFirst() else { throw corrupt("truncated varint") }
            guard shift < 64 else { throw corrupt("varint longer than 10 bytes") }
            v |= UInt64(b & 0x7F) << shift
            if b & 0x80 == 0 { return v }
            shift += 7
        }
    }

    /// The next (field number, wire type), or nil at the end.
    mutating func tag() throws -> (Int, Int)? {
        if bytes.isEmpty { return nil }
        let t = try varint()
        return (Int(t >> 3), Int(t & 7))
    }

    mutating func take(_ n: Int) throws -> ArraySlice<UInt8> {
        guard n >= 0, n <= bytes.count else { throw corrupt("field of \(n) bytes with \(bytes.count) left") }
        defer { bytes = bytes.dropFirst(n) }
        return bytes.prefix(n)
    }

    mutating func lengthDelimited() throws -> ArraySlice<UInt8> {
        let n = try varint()
        guard n <= UInt64(bytes.count) else { throw corrupt("field of \(n) bytes with \(bytes.count) left") }
        return try take(Int(n))
    }

    mutating func fixed32() throws -> UInt32 {
        let b = try take(4)
        return b.reversed().reduce(0) { $0 << 8 | UInt32($1) }
    }

    mutating func skip(_ wire: Int) throws {
        switch wire {
        case 0: _ = try varint()
        case 1: _ = try take(8)
        case 2: _ = try lengthDelimited()
        case 5: _ = try take(4)
        default: throw corrupt("unknown wire type \(wire)")
        }
    }
}
