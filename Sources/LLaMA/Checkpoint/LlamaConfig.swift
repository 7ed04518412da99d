import Foundation

/// The model hyper-parameters, named as in Hugging Face's `config.json` for LLaMA.
public struct LlamaConfig: Sendable, Equatable {
    public var hiddenSize: Int            // hidden_size
    public var intermediateSize: Int      // intermediate_size
    public var numAttentionHeads: Int     // num_attention_heads
    public var numKeyValueHeads: Int      // num_key_value_heads (defaults to the head count)
    public var numHiddenLayers: Int       // num_hidden_layers
    public var rmsNormEps: Float          // rms_norm_eps
    public var ropeTheta: Float           // rope_theta or rope_parameters.rope_theta
    public var headDim: Int               // head_dim (defaults to hidden / heads)
    public var vocabSize: Int             // vocab_size
    public var tieWordEmbeddings: Bool    // tie_word_embeddings
    public var bosTokenID: Int32?         // bos_token_id
    public var eosTokenIDs: [Int32]       // eos_token_id (int or list)
    public var padTokenID: Int32?         // pad_token_id
    public var maxPositionEmbeddings: Int // max_position_embeddings
    public var torchDtype: String?        // torch_dtype / dtype, informational

    public init(hiddenSize: Int, intermediateSize: Int, numAttentionHeads: Int, numKeyValueHeads: Int,
                numHiddenLayers: Int, rmsNormEps: Float, ropeTheta: Float, headDim: Int, vocabSize: Int,
                tieWordEmbeddings: Bool, bosTokenID: Int32?, eosTokenIDs: [Int32], padTokenID: Int32? = nil,
                maxPositionEmbeddings: Int, torchDtype: String? = nil) {
        self.hiddenSize = hiddenSize; self.intermediateSize = intermediateSize
        self.numAttentionHeads = numAttentionHeads; self.numKeyValueHeads = numKeyValueHeads
        self.numHiddenLayers = numHiddenLayers; self.rmsNormEps = rmsNormEps; self.ropeTheta = ropeTheta
        self.headDim = headDim; self.vocabSize = vocabSize; self.tieWordEmbeddings = tieWordEmbeddings
        self.bosTokenID = bosTokenID; self.eosTokenIDs = eosTokenIDs; self.padTokenID = padTokenID
        self.maxPositionEmbeddings = maxPositionEmbeddings; self.torchDtype = torchDtype
    }

    /// Upper bounds on every size a checkpoint declares, checked at load before anything is
    /// allocated from them (the RoPE table, the KV cache and the activations are sized from
    /// these). Each is well above any released LLaMA-family model.
    public enum Limits {
        public static let maxPositionEmbeddings = 1 << 20   // 1M positions
        /// The RoPE table holds positions x head_dim floats: at most 512 MiB.
        public static let maxRoPETableElements = 1 << 27
        public static let hiddenSize = 1 << 16
        public static let intermediateSize = 1 << 18
        public static let attentionHeads = 1 << 10
        public static let headDim = 1 << 12
        public static let hiddenLayers = 1 << 10
        public static let vocabSize = 1 << 22               // 4M tokens (largest released: ~256K)
    }

    /// Bounds and consistency shared by config.json and GGUF metadata; `key` names each field
    /// as the file spells it, so the message points at the right line.
    func checkBounds(file: String, key: (String) -> String) throws {
        func bound(_ name: String, _ v: Int, _ limit: Int) throws {
            guard v > 0, v <= limit else {
                throw CheckpointError.badValue(file: file, key: key(name), value: "\(v)", expected: "a positive integer at most \(limit)")
            }
        }
        try bound("hidden_size", hiddenSize, Limits.hiddenSize)
        try bound("intermediate_size", intermediateSize, Limits.intermediateSize)
        try bound("num_attention_heads", numAttentionHeads, Limits.attentionHeads)
        try bound("num_key_value_heads", numKeyValueHeads, Limits.attentionHeads)
        try bound("num_hidden_layers", numHiddenLayers, Limits.hiddenLayers)
        try bound("head_dim", headDim, Limits.headDim)
        try bound("vocab_size", vocabSize, Limits.vocabSize)
        try bound("max_position_embeddings", maxPositionEmbeddings, Limits.maxPositionEmbeddings)
        guard numKeyValueHeads <= numAttentionHeads, numAttentionHeads % numKeyValueHeads == 0 else {
            throw CheckpointError.badValue(file: file, key: key("num_key_value_heads"), value: "\(numKeyValueHeads)",
                                           expected: "a divisor of \(key("num_attention_heads")) (\(numAttentionHeads))")
        }
        guard headDim % 2 == 0 else {
            throw CheckpointError.badValue(file: file, key: key("head_dim"), value: "\(headDim)", expected: "an even number (RoPE rotates pairs)")
        }
        guard maxPositionEmbeddings * headDim <= Limits.maxRoPETableElements else {
            throw CheckpointError.badValue(file: file, key: key("max_position_embeddings"), value: "\(maxPositionEmbeddings)",
                                           expected: "at most \(Limits.maxRoPETableElements / headDim) with a head_dim of \(headDim) (the RoPE table would exceed 512 MiB)")
        }
        guard rmsNormEps.isFinite, rmsNormEps > 0, ropeTheta.isFinite, ropeTheta > 0 else {
            throw CheckpointError.badValue(file: file, key: key(rmsNormEps.isFinite && rmsNormEps > 0 ? "rope_theta" : "rms_norm_eps"),
                                           value: "\(rmsNormEps.isFinite && rmsNormEps > 0 ? ropeTheta : rmsNormEps)", expected: "a positive finite number")
        }
        for (name, id) in [("bos_token_id", bosTokenID), ("pad_token_id", padTokenID)] + eosTokenIDs.map({ ("eos_token_id", Optional($0)) }) {
            if let id, id < 0 || Int(id) >= vocabSize {
                throw CheckpointError.badValue(file: file, key: key(name), value: "\(id)", expected: "a token id below \(key("vocab_size")) (\(vocabSize))")
            }
        }
    }

    public var qDim: Int { numAttentionHeads * headDim }
    public var kvDim: Int { numKeyValueHeads * headDim }

    /// Reads and validates `config.json`.
    public init(contentsOf url: URL) throws {
        let json: JSON
        do { json = try JSON.parse(contentsOf: url) } catch let e as JSONError {
            throw CheckpointError.corrupt(file: url.path, detail: e.description)
        }
        try self.init(json: json, file: url.path)
    }

    public init(json: JSON, file: String) throws {
        guard case .object = json else {
            throw CheckpointError.wrongType(file: file, key: "(top level)", expected: "an object", found: json.typeName)
        }
        func int(_ key: String) throws -> Int {
            guard let v = json[key], !v.isNull else { throw CheckpointError.missingKey(file: file, key: key) }
            guard let i = v.int else { throw CheckpointError.wrongType(file: file, key: key, expected: "an integer", found: v.typeName) }
            guard i > 0 else { throw CheckpointError.badValue(file: file, key: key, value: "\(i)", expected: "a positive integer") }
            return i
        }
        func optInt(_ key: String) throws -> Int? {
            guard let v = json[key], !v.isNull else { return nil }
            return try int(key)
        }
        func float(_ key: String, in obj: JSON? = nil, default d: Float? = nil) throws -> Float {
            let o = obj ?? json
            guard let v = o[key], !v.isNull else {
                if let d { return d }
                throw CheckpointError.missingKey(file: file, key: key)
            }
            guard let x = v.double else { throw CheckpointError.wrongType(file: file, key: key, expected: "a number", found: v.typeName) }
            guard x > 0, x.isFinite else { throw CheckpointError.badValue(file: file, key: key, value: "\(x)", expected: "a positive number") }
            return Float(x)
        }
        func tokenIDs(_ key: String) throws -> [Int32] {
            guard let v = json[key], !v.isNull else { return [] }
            // Converted with `exactly`: an id past Int32 is an error, not a trap.
            func id(_ i: Int) throws -> Int32 {
                guard let x = Int32(exactly: i), x >= 0 else {
                    throw CheckpointError.badValue(file: file, key: key, value: "\(i)", expected: "a token id (0 ..< 2^31)")
                }
                return x
            }
            if let i = v.int { return [try id(i)] }
            if let a = v.array {
                guard a.count <= 1024 else {
                    throw CheckpointError.badValue(file: file, key: key, value: "a list of \(a.count) ids", expected: "at most 1024 ids")
                }
                return try a.map {
                    guard let i = $0.int else { throw CheckpointError.wrongType(file: file, key: key, expected: "an integer or a list of integers", found: $0.typeName) }
                    return try id(i)
                }
            }
            throw CheckpointError.wrongType(file: file, key: key, expected: "an integer or a list of integers", found: v.typeName)
        }

        if let mt = json["model_type"]?.string, !["llama", "mistral"].contains(mt) {
            throw CheckpointError.unsupported(file: file, what: "model_type '\(mt)' (expected 'llama')")
        }
        if let rs = json["rope_scaling"], !rs.isNull {
            let kind = rs["rope_type"]?.string ?? rs["type"]?.string ?? "?"
            if kind != "default" {
                throw CheckpointError.unsupported(file: file, what: "rope_scaling of type '\(kind)' (only plain RoPE is implemented)")
            }
        }
        for key in ["attention_bias", "mlp_bias"] where json[key]?.bool == true {
            throw CheckpointError.unsupported(file: file, what: "\(key): true (LLaMA projections have no bias)")
        }

        hiddenSize = try int("hidden_size")
        intermediateSize = try int("intermediate_size")
        numAttentionHeads = try int("num_attention_heads")
        numKeyValueHeads = try optInt("num_key_value_heads") ?? numAttentionHeads
        numHiddenLayers = try int("num_hidden_layers")
        vocabSize = try int("vocab_size")
        rmsNormEps = try float("rms_norm_eps", default: 1e-6)
        if let rp = json["rope_parameters"], rp["rope_theta"] != nil {
            ropeTheta = try float("rope_theta", in: rp)
        } else {
            ropeTheta = try float("rope_theta", default: 10000)
        }
        headDim = try optInt("head_dim") ?? (hiddenSize / numAttentionHeads)
        if let v = json["tie_word_embeddings"], !v.isNull {
            guard let b = v.bool else { throw CheckpointError.wrongType(file: file, key: "tie_word_embeddings", expected: "a boolean", found: v.typeName) }
            tieWordEmbeddings = b
        } else {
            tieWordEmbeddings = false
        }
        bosTokenID = try tokenIDs("bos_token_id").first
        eosTokenIDs = try tokenIDs("eos_token_id")
        padTokenID = try tokenIDs("pad_token_id").first
        maxPositionEmbeddings = try optInt("max_position_embeddings") ?? 2048
        torchDtype = json["torch_dtype"]?.string ?? json["dtype"]?.string

        guard numAttentionHeads % numKeyValueHeads == 0 else {
            throw CheckpointError.badValue(file: file, key: "num_key_value_heads", value: "\(numKeyValueHeads)",
                                           expected: "a divisor of num_attention_heads (\(numAttentionHeads))")
        }
        guard headDim % 2 == 0 else {
            throw CheckpointError.badValue(file: file, key: "head_dim", value: "\(headDim)", expected: "an even number (RoPE rotates pairs)")
        }
        if json["head_dim"] == nil, hiddenSize % numAttentionHeads != 0 {
            throw CheckpointError.badValue(file: file, key: "hidden_size", value: "\(hiddenSize)",
                                           expected: "a multiple of num_attention_heads (\(numAttentionHeads))")
        }
        try checkBounds(file: file) { $0 }
    }

    /// The config.json we write for exported models (transformers' LlamaConfig keys).
    public func json(dtype: String) -> JSON {
        var items: [(String, JSON)] = [
            ("architectures", .array([.string("LlamaForCausalLM")])),
            ("attention_bias", .bool(false)),
            ("attention_dropout", .double(0)),
            ("head_dim", .int(Int64(headDim))),
            ("hidden_act", .string("silu")),
            ("hidden_size", .int(Int64(hiddenSize))),
            ("initializer_range", .double(0.02)),
            ("intermediate_size", .int(Int64(intermediateSize))),
            ("max_position_embeddings", .int(Int64(maxPositionEmbeddings))),
            ("mlp_bias", .bool(false)),
            ("model_type", .string("llama")),
            ("num_attention_heads", .int(Int64(numAttentionHeads))),
            ("num_hidden_layers", .int(Int64(numHiddenLayers))),
            ("num_key_value_heads", .int(Int64(numKeyValueHeads))),
            ("pretraining_tp", .int(1)),
            ("rms_norm_eps", .double(Double(rmsNormEps))),
            ("rope_scaling", .null),
            ("rope_theta", .double(Double(ropeTheta))),
            ("tie_word_embeddings", .bool(tieWordEmbeddings)),
            ("torch_dtype", .string(dtype)),
            ("use_cache", .bool(true)),
            ("vocab_size", .int(Int64(vocabSize))),
        ]
        if let b = bosTokenID { items.append(("bos_token_id", .int(Int64(b)))) }
        if eosTokenIDs.count == 1 { items.append(("eos_token_id", .int(Int64(eosTokenIDs[0])))) }
        else if !eosTokenIDs.isEmpty { items.append(("eos_token_id", .array(eosTokenIDs.map { .int(Int64($0)) }))) }
        if let p = padTokenID { items.append(("pad_token_id", .int(Int64(p)))) }
        return .object(items.sorted { $0.0 < $1.0 })
    }
}
