import Foundation

/// Loading a byte-level BPE from a Hugging Face `tokenizer.json` (the `tokenizers` library's file).
///
/// Read: `model` {type "BPE", vocab, merges as "a b" strings or [a, b] pairs, unk_token,
/// ignore_merges}, `added_tokens`, `pre_tokenizer` (one of the chains `PreTokenizer` implements),
/// `post_processor` (whether a BOS goes in front), `normalizer` (must be null), `decoder`
/// (ByteLevel). Everything else is refused with `TokenizerError.unsupported`, never guessed: a
/// tokenizer.json that is not byte-level BPE (SentencePiece-style BPE with byte fallback,
/// Unigram, WordPiece) names what it is. A malformed file gives `TokenizerError.unreadable` naming
/// the key ("model.merges[3]: ...").
///
/// tokenizer.json does not say which tokens are BOS, EOS and pad; `tokenizer_config.json`
/// (`bos_token`, `eos_token`, `pad_token`, `unk_token`) does, and `generation_config.json`'s
/// `eos_token_id` (one id or a list) adds ids that end generation.
extension BPETokenizer {
    public convenience init(tokenizerJSON url: URL, tokenizerConfig: URL? = nil, generationConfig: URL? = nil) throws {
        let file = url.path
        let root = try Self.parse(url)
        func bad(_ reason: String) -> TokenizerError { .unreadable(file: file, reason: reason) }
        func unsupported(_ what: String) -> TokenizerError { .unsupported(file: file, what: what) }
        guard case .object = root else { throw bad("expected a JSON object at the top level, found \(root.typeName)") }

        // model
        guard let model = root["model"], case .object = model else {
            throw unsupported("no \"model\" object: not a Hugging Face tokenizers file with a BPE model")
        }
        let type = model["type"]?.string
        guard type == "BPE" else {
            throw unsupported("model.type \(type.map { "\"\($0)\"" } ?? "missing"): only byte-level \"BPE\" is read")
        }
        if model["byte_fallback"]?.bool == true {
            throw unsupported("model.byte_fallback true: SentencePiece-style BPE is not read yet; use the model's tokenizer.model")
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let v = model[key], !v.isNull, v.string != "" { throw unsupported("model.\(key) \(v.serialized(pretty: false))") }
        }
        if let d = model["dropout"], !d.isNull, d.double != 0 { throw unsupported("model.dropout \(d.serialized(pretty: false))") }
        guard case .object(let vocab)? = model["vocab"] else {
            throw bad("model.vocab: expected an object of token -> id, found \(model["vocab"]?.typeName ?? "nothing")")
        }
        var pairs: [(String, Int32)] = []
        pairs.reserveCapacity(vocab.count)
        var size = 0
        for (token, id) in vocab {
            guard let i = id.int, i >= 0, i < TokenizerLimits.maxVocabSize else {
                throw bad("model.vocab[\"\(token)\"]: expected an integer id in 0 ..< \(TokenizerLimits.maxVocabSize), found \(id.serialized(pretty: false))")
            }
            pairs.append((token, Int32(i)))
            size = max(size, i + 1)
        }
        var tokens = [String](repeating: "", count: size)
        for (token, id) in pairs {
            guard tokens[Int(id)].isEmpty else { throw bad("model.vocab: id \(id) is given to both \"\(tokens[Int(id)])\" and \"\(token)\"") }
            tokens[Int(id)] = token
        }
        guard let mergeList = model["merges"]?.array else {
            throw bad("model.merges: expected an array, found \(model["merges"]?.typeName ?? "nothing")")
        }
        var merges: [(String, String)] = []
        merges.reserveCapacity(mergeList.count)
        for (i, m) in mergeList.enumerated() {
            switch m {
            case .string(let s):
                let parts = s.split(separator: " ", omittingEmptySubsequences: false)
                guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                    throw bad("model.merges[\(i)] \"\(s)\": expected two tokens separated by one space")
                }
                merges.append((String(parts[0]), String(parts[1])))
            case .array(let a) where a.count == 2 && a[0].string != nil && a[1].string != nil:
                merges.append((a[0].string!, a[1].string!))
            default:
                throw bad("model.merges[\(i)]: expected \"left right\" or [\"left\", \"right\"], found \(m.serialized(pretty: false))")
            }
        }
        var ids: [String: Int32] = [:]
        for (token, id) in pairs { ids[token] = id }

        // added tokens
        var added: [AddedToken] = []
        if let list = root["added_tokens"], !list.isNull {
            guard let items = list.array else { throw bad("added_tokens: expected an array, found \(list.typeName)") }
            for (n, item) in items.enumerated() {
                guard let id = item["id"]?.int, id >= 0, id < TokenizerLimits.maxVocabSize else {
                    throw bad("added_tokens[\(n)].id: expected an integer id in 0 ..< \(TokenizerLimits.maxVocabSize)")
                }
                guard let content = item["content"]?.string, !content.isEmpty else {
                    throw bad("added_tokens[\(n)].content: expected a non-empty string")
                }
                if item["single_word"]?.bool == true {
                    throw unsupported("added_tokens[\(n)] \"\(content)\": single_word tokens are not read yet")
                }
                added.append(AddedToken(id: Int32(id), content: content, special: item["special"]?.bool ?? false,
                                        lstrip: item["lstrip"]?.bool ?? false, rstrip: item["rstrip"]?.bool ?? false,
                                        normalized: item["normalized"]?.bool ?? false))
                ids[content] = Int32(id)
            }
        }

        // normalizer, pre-tokenizer, decoder
        if let n = root["normalizer"], !n.isNull {
            throw unsupported("normalizer \(Self.excerpt(n)): byte-level BPE with a normalizer is not read yet")
        }
        let pre = try Self.preTokenizer(root["pre_tokenizer"], file: file)
        if let d = root["decoder"], d["type"]?.string != "ByteLevel" {
            throw unsupported("decoder \(Self.excerpt(d)): expected ByteLevel")
        }

        // post-processor: a template that starts with a special token puts it in front (BOS).
        let templateBOS = try Self.templateBOS(root["post_processor"], file: file)

        // BOS, EOS, pad, unk
        var config: [String: Int32] = [:]
        if let tokenizerConfig, FileManager.default.fileExists(atPath: tokenizerConfig.path) {
            let cfg = try Self.parse(tokenizerConfig)
            for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
                guard let v = cfg[key], !v.isNull else { continue }
                guard let content = v.string ?? v["content"]?.string else {
                    throw TokenizerError.unreadable(file: tokenizerConfig.path,
                                                    reason: "\(key): expected a string or {\"content\": ...}, found \(v.typeName)")
                }
                guard let id = ids[content] else {
                    throw TokenizerError.unreadable(file: tokenizerConfig.path,
                                                    reason: "\(key) \"\(content)\" is not in the vocabulary of \(file)")
                }
                config[key] = id
            }
        }
        var extraEOS: Set<Int32> = []
        if let generationConfig, FileManager.default.fileExists(atPath: generationConfig.path) {
            let gen = try Self.parse(generationConfig)
            if let v = gen["eos_token_id"], !v.isNull {
                guard let list = v.int.map({ [JSON.int(Int64($0))] }) ?? v.array,
                      list.allSatisfy({ $0.int.map { $0 >= 0 && $0 < TokenizerLimits.maxVocabSize } ?? false }) else {
                    throw TokenizerError.unreadable(file: generationConfig.path,
                                                    reason: "eos_token_id: expected a token id or a list of token ids (0 ..< \(TokenizerLimits.maxVocabSize))")
                }
                extraEOS = Set(list.map { Int32($0.int!) })
            }
        }
        var unk = config["unk_token"]
        if let name = model["unk_token"]?.string {
            guard let id = ids[name] else { throw bad("model.unk_token \"\(name)\" is not in model.vocab") }
            unk = id
        }
        var bos = config["bos_token"]
        if let templateBOS {
            guard let id = ids[templateBOS] else {
                throw bad("post_processor: the token \"\(templateBOS)\" it puts in front is not in the vocabulary")
            }
            bos = id
        }
        let eos = config["eos_token"] ?? extraEOS.min()
        try self.init(tokens: tokens, merges: merges, addedTokens: added, bosID: bos, eosID: eos,
                      eosIDs: extraEOS, unkID: unk, padID: config["pad_token"], addsBOS: templateBOS != nil,
                      preTokenizer: pre, ignoresMerges: model["ignore_merges"]?.bool ?? false,
                      source: file, mergesKey: "model.merges")
    }

    private static func parse(_ url: URL) throws -> JSON {
        do { return try JSON.parse(contentsOf: url) } catch let e as JSONError {
            switch e {
            case let .syntax(_, message, offset):
                throw TokenizerError.unreadable(file: url.path, reason: "invalid JSON at byte \(offset): \(message)")
            case let .unreadable(_, reason):
                throw TokenizerError.unreadable(file: url.path, reason: reason)
            }
        }
    }

    private static func excerpt(_ j: JSON) -> String {
        let s = j.serialized(pretty: false)
        return s.count > 200 ? String(s.prefix(200)) + "..." : s
    }

    static let gpt2Regex = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#
    static let llama3Regex = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    /// The `PreTokenizer` a `pre_tokenizer` entry spells: ByteLevel with its regex (GPT-2),
    /// Digits(individual_digits) then that (SmolLM), or a Split on GPT-2's or LLaMA 3's regex
    /// (behavior Isolated) then ByteLevel without its regex.
    private static func preTokenizer(_ j: JSON?, file: String) throws -> PreTokenizer {
        guard let j, !j.isNull else {
            throw TokenizerError.unsupported(file: file, what: "pre_tokenizer null: byte-level BPE needs a ByteLevel pre-tokenizer")
        }
        let steps = j["type"]?.string == "Sequence" ? (j["pretokenizers"]?.array ?? []) : [j]
        var names: [String] = []
        for step in steps {
            switch step["type"]?.string {
            case "ByteLevel":
                if step["add_prefix_space"]?.bool == true {
                    throw TokenizerError.unsupported(file: file, what: "pre_tokenizer ByteLevel with add_prefix_space true")
                }
                names.append(step["use_regex"]?.bool ?? true ? "ByteLevel+regex" : "ByteLevel")
            case "Digits" where step["individual_digits"]?.bool == true:
                names.append("Digits")
            case "Split" where step["behavior"]?.string == "Isolated" && step["invert"]?.bool != true:
                switch step["pattern"]?["Regex"]?.string {
                case gpt2Regex?: names.append("Split(gpt2)")
                case llama3Regex?: names.append("Split(llama3)")
                default: names.append("?")
                }
            default:
                names.append("?")
            }
        }
        switch names {
        case ["ByteLevel+regex"], ["Split(gpt2)", "ByteLevel"]: return .gpt2
        case ["Digits", "ByteLevel+regex"], ["Digits", "Split(gpt2)", "ByteLevel"]: return .smollm
        case ["Split(llama3)", "ByteLevel"]: return .llama3
        default:
            throw TokenizerError.unsupported(
                file: file,
                what: "pre_tokenizer \(excerpt(j)): supported are ByteLevel (GPT-2's regex), Digits(individual_digits) + ByteLevel (SmolLM), Split(LLaMA 3's regex) + ByteLevel")
        }
    }

    /// The special token a `post_processor` puts in front of a single sequence, or nil.
    /// Tokens a template puts after the sequence (an EOS) are not added: `encode` never adds EOS.
    private static func templateBOS(_ j: JSON?, file: String) throws -> String? {
        guard let j, !j.isNull else { return nil }
        switch j["type"]?.string {
        case "ByteLevel":
            return nil
        case "Sequence":
            var bos: String?
            for p in j["processors"]?.array ?? [] {
                if let b = try templateBOS(p, file: file) { bos = b }
            }
            return bos
        case "TemplateProcessing":
            guard let single = j["single"]?.array,
                  let a = single.firstIndex(where: { $0["Sequence"]?["id"]?.string == "A" }) else {
                throw TokenizerError.unreadable(file: file, reason: "post_processor.single: expected a template with the sequence $A")
            }
            let before = single[..<a]
            guard let first = before.first else { return nil }
            guard before.count == 1, let name = first["SpecialToken"]?["id"]?.string else {
                throw TokenizerError.unsupported(file: file, what: "post_processor.single \(excerpt(.array(single))): only one special token before $A")
            }
            let ids = j["special_tokens"]?[name]?["tokens"]?.array?.compactMap(\.string) ?? [name]
            guard ids.count == 1 else {
                throw TokenizerError.unsupported(file: file, what: "post_processor.special_tokens[\"\(name)\"]: \(ids.count) tokens")
            }
            return ids[0]
        default:
            throw TokenizerError.unsupported(file: file, what: "post_processor \(excerpt(j)): only ByteLevel and TemplateProcessing are read")
        }
    }
}
