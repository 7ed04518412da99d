import Foundation

/// A GGUF file's tokenizer (`tokenizer.ggml.*`) as the Hugging Face files transformers'
/// `AutoTokenizer` reads, for `lora merge --format hf` from a GGUF base.
///
/// - model "gpt2" (byte-level BPE): `tokenizer.json` with the vocabulary, the merges, the
///   pre-tokenizer `tokenizer.ggml.pre` names (GPT-2's ByteLevel regex; SmolLM's Digits +
///   ByteLevel; LLaMA 3's Split + ByteLevel), a ByteLevel decoder, and a TemplateProcessing
///   post-processor that puts BOS in front when `add_bos_token` is true. Tokens of type
///   CONTROL (3) are special added tokens, USER_DEFINED (4) plain added tokens.
/// - model "llama" (SentencePiece): `tokenizer.model`, the ModelProto lora itself builds
///   from the pieces (as `loadTokenizer(gguf:)`), read by transformers' LlamaTokenizer.
/// Both get `tokenizer_config.json` (special tokens, add_bos/eos_token, the GGUF's
/// `tokenizer.chat_template`, model_max_length) and `special_tokens_map.json`.
public enum HFTokenizerExport {
    public static func files(gguf f: GGUFFile, contextLength: Int?) throws -> [(name: String, text: [UInt8])] {
        guard let model = try f.string("tokenizer.ggml.model") else {
            throw CheckpointError.missingKey(file: f.path, key: "tokenizer.ggml.model")
        }
        guard let tokens = try f.strings("tokenizer.ggml.tokens") else {
            throw CheckpointError.missingKey(file: f.path, key: "tokenizer.ggml.tokens")
        }
        let types = try f.ints("tokenizer.ggml.token_type") ?? []
        func type(_ i: Int) -> Int { i < types.count ? types[i] : 1 }
        func id(_ k: String) throws -> Int? {
            guard let v = try f.int("tokenizer.ggml.\(k)") else { return nil }
            return v >= 0 && v < tokens.count ? v : nil
        }
        let bos = try id("bos_token_id"), eos = try id("eos_token_id")
        let unk = try id("unknown_token_id"), pad = try id("padding_token_id")
        let addBOS = try f.bool("tokenizer.ggml.add_bos_token") ?? (model == "llama")
        let addEOS = try f.bool("tokenizer.ggml.add_eos_token") ?? false

        var out: [(String, [UInt8])] = []
        var tokenizerClass: String
        switch model {
        case "gpt2":
            guard let merges = try f.strings("tokenizer.ggml.merges") else {
                throw CheckpointError.missingKey(file: f.path, key: "tokenizer.ggml.merges")
            }
            let pre = try PreTokenizer(ggmlPre: try f.string("tokenizer.ggml.pre") ?? "default", file: f.path)
            let json = tokenizerJSON(tokens: tokens, types: types, merges: merges, pre: pre,
                                     bos: addBOS ? bos.map { ($0, tokens[$0]) } : nil)
            out.append(("tokenizer.json", Array((json.serialized(pretty: false) + "\n").utf8)))
            tokenizerClass = "PreTrainedTokenizerFast"
        case "llama":
            let scores = try f.floats("tokenizer.ggml.scores") ?? [Float](repeating: 0, count: tokens.count)
            guard scores.count == tokens.count else {
                throw CheckpointError.corrupt(file: f.path, detail: "tokenizer.ggml.tokens and .scores differ in length")
            }
            let proto = SentencePieceProtoWriter.model(
                pieces: tokens.indices.map { (tokens[$0], scores[$0], Int32(clamping: type($0))) },
                unkID: Int32(unk ?? 0), bosID: Int32(bos ?? 1), eosID: Int32(eos ?? 2), padID: Int32(pad ?? -1),
                addDummyPrefix: try f.bool("tokenizer.ggml.add_space_prefix") ?? true)
            out.append(("tokenizer.model", proto))
            tokenizerClass = "LlamaTokenizer"
        default:
            throw TokenizerError.unsupported(file: f.path, what: "tokenizer.ggml.model '\(model)' (expected 'llama' or 'gpt2')")
        }

        // tokenizer_config.json and special_tokens_map.json
        var decoder: [(String, JSON)] = []
        for i in tokens.indices where type(i) == 3 || type(i) == 4 {
            decoder.append(("\(i)", addedToken(tokens[i], id: nil, special: type(i) == 3)))
        }
        var cfg: [(String, JSON)] = [("add_bos_token", .bool(addBOS)), ("add_eos_token", .bool(addEOS)),
                                     ("added_tokens_decoder", .object(decoder))]
        var map: [(String, JSON)] = []
        for (key, v) in [("bos_token", bos), ("eos_token", eos), ("unk_token", unk), ("pad_token", pad)] {
            guard let v else { continue }
            cfg.append((key, .string(tokens[v]))); map.append((key, .string(tokens[v])))
        }
        if let t = try f.string("tokenizer.chat_template") { cfg.append(("chat_template", .string(t))) }
        cfg.append(("clean_up_tokenization_spaces", .bool(false)))
        if let n = contextLength { cfg.append(("model_max_length", .int(Int64(n)))) }
        cfg.append(("tokenizer_class", .string(tokenizerClass)))
        if model == "llama" { cfg.append(("legacy", .bool(true))); cfg.append(("sp_model_kwargs", .object([]))) }
        out.append(("tokenizer_config.json", Array((JSON.object(cfg).serialized() + "\n").utf8)))
        out.append(("special_tokens_map.json", Array((JSON.object(map).serialized() + "\n").utf8)))
        return out
    }

    static func addedToken(_ content: String, id: Int?, special: Bool) -> JSON {
        var f: [(String, JSON)] = []
        if let id { f.append(("id", .int(Int64(id)))) }
        f += [("content", .string(content)), ("single_word", .bool(false)), ("lstrip", .bool(false)),
              ("rstrip", .bool(false)), ("normalized", .bool(false)), ("special", .bool(special))]
        return .object(f)
    }

    static func byteLevel(useRegex: Bool) -> JSON {
        .object([("type", .string("ByteLevel")), ("add_prefix_space", .bool(false)), ("trim_offsets", .bool(true)),
                 ("use_regex", .bool(useRegex))])
    }

    /// tokenizers' serialization of a byte-level BPE tokenizer (format "1.0").
    static func tokenizerJSON(tokens: [String], types: [Int], merges: [String], pre: PreTokenizer,
                              bos: (id: Int, token: String)?) -> JSON {
        var added: [JSON] = []
        for i in tokens.indices where i < types.count && (types[i] == 3 || types[i] == 4) {
            added.append(addedToken(tokens[i], id: i, special: types[i] == 3))
        }
        let preTokenizer: JSON
        switch pre {
        case .gpt2: preTokenizer = byteLevel(useRegex: true)
        case .smollm:
            preTokenizer = .object([("type", .string("Sequence")), ("pretokenizers", .array([
                .object([("type", .string("Digits")), ("individual_digits", .bool(true))]), byteLevel(useRegex: true)]))])
        case .llama3:
            preTokenizer = .object([("type", .string("Sequence")), ("pretokenizers", .array([
                .object([("type", .string("Split")), ("pattern", .object([("Regex", .string(BPETokenizer.llama3Regex))])),
                         ("behavior", .string("Isolated")), ("invert", .bool(false))]),
                byteLevel(useRegex: false)]))])
        }
        var post: JSON = .null
        if let bos {
            func seq(_ id: String, _ type: Int) -> JSON { .object([("Sequence", .object([("id", .string(id)), ("type_id", .int(Int64(type)))]))]) }
            func special(_ type: Int) -> JSON { .object([("SpecialToken", .object([("id", .string(bos.token)), ("type_id", .int(Int64(type)))]))]) }
            post = .object([
                ("type", .string("TemplateProcessing")),
                ("single", .array([special(0), seq("A", 0)])),
                ("pair", .array([special(0), seq("A", 0), special(1), seq("B", 1)])),
                ("special_tokens", .object([(bos.token, .object([("id", .string(bos.token)), ("ids", .array([.int(Int64(bos.id))])),
                                                                 ("tokens", .array([.string(bos.token)]))]))])),
            ])
        }
        let vocab = JSON.object(tokens.enumerated().map { ($0.element, .int(Int64($0.offset))) })
        let model = JSON.object([
            ("type", .string("BPE")), ("dropout", .null), ("unk_token", .null), ("continuing_subword_prefix", .null),
            ("end_of_word_suffix", .null), ("fuse_unk", .bool(false)), ("byte_fallback", .bool(false)),
            ("ignore_merges", .bool(pre == .llama3)), ("vocab", vocab), ("merges", .array(merges.map { .string($0) })),
        ])
        return .object([
            ("version", .string("1.0")), ("truncation", .null), ("padding", .null), ("added_tokens", .array(added)),
            ("normalizer", .null), ("pre_tokenizer", preTokenizer), ("post_processor", post),
            ("decoder", .object([("type", .string("ByteLevel")), ("add_prefix_space", .bool(true)), ("trim_offsets", .bool(true)),
                                 ("use_regex", .bool(true))])),
            ("model", model),
        ])
    }
}
