import Foundation
import Tensor

/// A llama.cpp GGUF model file as a `Checkpoint`: Hugging Face names are mapped to llama.cpp's,
/// GGUF dims ([in, out]) are reversed to [out, in], tensors are dequantized to f32, and the rows
/// of q_proj / k_proj are put back from llama.cpp's RoPE order into Hugging Face's.
///
/// llama.cpp's convert_hf_to_gguf.py permutes q (with n_head) and k (with n_head_kv) as
/// `w.reshape(n_head, 2, head_dim / 2, in).swapaxes(1, 2)`: within each head, GGUF row 2i + j is
/// Hugging Face row j * head_dim/2 + i (interleaved pairs instead of halves). We invert that.
public final class GGUFCheckpoint: Checkpoint {
    public let file: GGUFFile
    public let config: LlamaConfig
    public var source: String { file.path }

    public init(path: String) throws {
        guard FileManager.default.fileExists(atPath: path) else {
            throw CheckpointError.notFound(path: path, expected: "a .gguf model file")
        }
        file = try GGUFFile(path: path)
        config = try Self.readConfig(file)
        try Self.checkTensors(file, config: config)
    }

    /// The llama.cpp name of a Hugging Face LLaMA tensor name, or nil for names that have none.
    public static func ggufName(_ hf: String) -> String? {
        switch hf {
        case "model.embed_tokens.weight": return "token_embd.weight"
        case "model.norm.weight": return "output_norm.weight"
        case "lm_head.weight": return "output.weight"
        default: break
        }
        let parts = hf.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count >= 4, parts[0] == "model", parts[1] == "layers", let n = Int(parts[2]), n >= 0,
              String(n) == parts[2], parts.last == "weight" else { return nil }
        let rest = parts[3..<(parts.count - 1)].joined(separator: ".")
        let map = [
            "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
            "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
            "self_attn.o_proj": "attn_output",
            "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
        ]
        return map[rest].map { "blk.\(n).\($0).weight" }
    }

    public func has(_ name: String) -> Bool {
        guard let g = Self.ggufName(name) else { return false }
        return file.tensorInfo(g) != nil
    }

    public func tensor(_ name: String, shape: [Int]) throws -> Tensor {
        guard let g = Self.ggufName(name), let info = file.tensorInfo(g) else {
            throw CheckpointError.missingTensor(file: source, name: Self.ggufName(name).map { "\($0) (\(name))" } ?? name)
        }
        guard info.shape == shape else {
            throw CheckpointError.shapeMismatch(file: source, name: "\(g) (\(name))", expected: shape, found: info.shape)
        }
        let t = try file.f32(info)
        // The source bytes are not needed again: give their pages back (see MappedFile.evict).
        file.file.evict((file.dataStart + info.offset)..<(file.dataStart + info.offset + info.byteCount))
        try checkFinite(t, name: "\(g) (\(name))", file: source)
        if name.hasSuffix(".self_attn.q_proj.weight") {
            return try Self.unpermuteRoPE(t, heads: config.numAttentionHeads, name: g, file: source)
        }
        if name.hasSuffix(".self_attn.k_proj.weight") {
            return try Self.unpermuteRoPE(t, heads: config.numKeyValueHeads, name: g, file: source)
        }
        return t
    }

    /// Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K and BF16 tensors kept as stored: the file's mapping itself (it stays
    /// mapped while the weight lives), or for q_proj / k_proj a copy with whole rows un-permuted
    /// (rows move as they are). Block scales (and mins) are checked to be finite.
    /// Bytes of a tensor as `quantization: stored` keeps it (a weight format: Q8_0, Q4_0, Q4_1,
    /// BF16); nil when it would be converted to f32. For the memory plan; reads no data.
    public func storedByteCount(_ name: String) -> Int? {
        guard let g = Self.ggufName(name), let info = file.tensorInfo(g) else { return nil }
        switch info.type {
        case .q8_0, .q4_0, .q4_1, .bf16: return info.byteCount
        default: return nil
        }
    }

    public func storedWeight(_ name: String, shape: [Int], format wanted: (any WeightFormat)?) throws -> Weight? {
        guard let g = Self.ggufName(name), let info = file.tensorInfo(g), info.shape == shape, shape.count == 2 else { return nil }
        let f: any WeightFormat
        switch info.type {
        case .q8_0: f = WeightFormats.q8_0
        case .q4_0: f = WeightFormats.q4_0
        case .q4_1: f = WeightFormats.q4_1
        case .q5_0: f = WeightFormats.q5_0
        case .q5_1: f = WeightFormats.q5_1
        case .q4_K: f = WeightFormats.q4_K
        case .q5_K: f = WeightFormats.q5_K
        case .q6_K: f = WeightFormats.q6_K
        case .bf16: f = WeightFormats.bf16
        default: return nil
        }
        if let wanted, wanted.name != f.name { return nil }
        let rows = shape[0], cols = shape[1]
        if let block = f as? GGUFBlockFormat, cols % block.kind.blockSize != 0 {
            // ggml itself never writes such a row; say so rather than misread the bytes.
            throw CheckpointError.badValue(file: source, key: "\(g) (\(name))", value: "row length \(cols)",
                                           expected: "a multiple of \(block.kind.blockSize) for \(block.kind.ggmlName)")
        }
        guard rows > 0, info.byteCount % rows == 0, f.byteCount(rows: rows, cols: cols) == info.byteCount else { return nil }
        let rowBytes = info.byteCount / rows
        let base = file.file.base + file.dataStart + info.offset
        if let block = f as? GGUFBlockFormat {
            let bb = block.kind.blockBytes
            // Byte offsets of each block's half scales (and mins).
            let halves: [Int]
            switch block.kind {
            case .q4_1, .q5_1, .q4_K, .q5_K: halves = [0, 2]
            case .q6_K: halves = [208]
            default: halves = [0]
            }
            for b in 0..<(info.byteCount / bb) {
                for (h, at) in halves.enumerated() {
                    let bits = UInt16(littleEndian: base.loadUnaligned(fromByteOffset: b * bb + at, as: UInt16.self))
                    if (bits & 0x7C00) == 0x7C00 {
                        throw CheckpointError.badValue(file: source, key: "\(g) (\(name))", value: "block \(b) \(h == 0 ? "scale" : "min") \(Float(Float16(bitPattern: bits)))",
                                                       expected: "finite block scales")
                    }
                }
            }
        } else {
            let t = try file.f32(info)
            try checkFinite(t, name: "\(g) (\(name))", file: source)
        }
        let heads: Int? = name.hasSuffix(".self_attn.q_proj.weight") ? config.numAttentionHeads
            : name.hasSuffix(".self_attn.k_proj.weight") ? config.numKeyValueHeads : nil
        guard let heads else {
            return Weight(format: f, rows: rows, cols: cols, data: base, scales: nil, owner: file.file)
        }
        guard heads > 0, rows % heads == 0, (rows / heads) % 2 == 0 else {
            throw CheckpointError.shapeMismatch(file: source, name: g, expected: [heads, 2, -1], found: shape)
        }
        let hd = rows / heads, half = hd / 2
        let s = WeightStorage(byteCount: rows * rowBytes, scaleCount: 0)
        for h in 0..<heads {
            for i in 0..<half {
                for j in 0..<2 {
                    (s.bytes + (h * hd + j * half + i) * rowBytes).copyMemory(from: base + (h * hd + 2 * i + j) * rowBytes, byteCount: rowBytes)
                }
            }
        }
        // The copy replaces the mapped rows: drop their pages, or q and k would count twice
        // (0.6 GB for a 7B Q4_0 file).
        file.file.evict((file.dataStart + info.offset)..<(file.dataStart + info.offset + info.byteCount))
        return Weight(format: f, rows: rows, cols: cols, data: UnsafeRawPointer(s.bytes), scales: nil, owner: s)
    }

    /// Inverse of convert_hf_to_gguf.py's permute for a [heads * head_dim, in] matrix: within
    /// each head, Hugging Face row j * (head_dim / 2) + i is GGUF row 2i + j (i < head_dim / 2, j < 2).
    public static func unpermuteRoPE(_ w: Tensor, heads: Int, name: String = "", file: String = "") throws -> Tensor {
        let rows = w.shape[0], cols = w.count / max(rows, 1)
        guard heads > 0, rows % heads == 0, (rows / heads) % 2 == 0 else {
            throw CheckpointError.shapeMismatch(file: file, name: name, expected: [heads, 2, -1], found: w.shape)
        }
        let hd = rows / heads, half = hd / 2
        let out = Tensor(w.shape)
        WorkerPool.allCores.chunks(heads) { hs in
            for h in hs {
                for i in 0..<half {
                    for j in 0..<2 {
                        let src = w.data + (h * hd + 2 * i + j) * cols
                        let dst = out.data + (h * hd + j * half + i) * cols
                        dst.update(from: src, count: cols)
                    }
                }
            }
        }
        return out
    }

    // MARK: config

    /// `LlamaConfig` from `llama.*` and `tokenizer.ggml.*` metadata, with the checks
    /// `LlamaConfig(json:)` makes for config.json, naming GGUF keys.
    static func readConfig(_ f: GGUFFile) throws -> LlamaConfig {
        let path = f.path
        guard let arch = try f.string("general.architecture") else {
            throw CheckpointError.missingKey(file: path, key: "general.architecture")
        }
        guard arch == "llama" else {
            throw CheckpointError.unsupported(file: path, what: "general.architecture '\(arch)' (only 'llama' is implemented)")
        }
        let p = "llama."
        func int(_ key: String) throws -> Int? {
            guard let v = try f.int(p + key) else { return nil }
            guard v > 0, v <= 1 << 31 else {
                throw CheckpointError.badValue(file: path, key: p + key, value: "\(v)", expected: "a positive integer below 2^31")
            }
            return v
        }
        func required(_ key: String) throws -> Int {
            guard let v = try int(key) else { throw CheckpointError.missingKey(file: path, key: p + key) }
            return v
        }
        func positive(_ key: String) throws -> Float? {
            guard let v = try f.float(key) else { return nil }
            guard v > 0, v.isFinite else { throw CheckpointError.badValue(file: path, key: key, value: "\(v)", expected: "a positive number") }
            return v
        }
        func tokenID(_ key: String) throws -> Int32? {
            guard let v = try f.int(key) else { return nil }
            guard let i = Int32(exactly: v), i >= 0 else {
                throw CheckpointError.badValue(file: path, key: key, value: "\(v)", expected: "a token id")
            }
            return i
        }

        // What this model does not implement: refuse rather than compute something else.
        if let n = try f.int(p + "expert_count"), n > 0 {
            throw CheckpointError.unsupported(file: path, what: "\(p)expert_count \(n) (mixture-of-experts models are not implemented)")
        }
        if let v = f.value(p + "rope.scaling.type") {
            guard let s = v.string else {
                throw CheckpointError.wrongType(file: path, key: p + "rope.scaling.type", expected: "a string", found: v.typeName)
            }
            if s != "none" {
                throw CheckpointError.unsupported(file: path, what: "\(p)rope.scaling.type '\(s)' (only plain RoPE is implemented)")
            }
        }
        if let s = try f.float(p + "rope.scale_linear"), s != 1 {
            throw CheckpointError.unsupported(file: path, what: "\(p)rope.scale_linear \(s) (only plain RoPE is implemented)")
        }
        if f.tensorInfo("rope_freqs.weight") != nil {
            throw CheckpointError.unsupported(file: path, what: "tensor 'rope_freqs.weight' (Llama 3.1-style RoPE frequency scaling is not implemented)")
        }
        if let v = f.value(p + "attention.head_count_kv"), case .array = v {
            throw CheckpointError.unsupported(file: path, what: "\(p)attention.head_count_kv given per layer")
        }

        let layers = try required("block_count")
        let hidden = try required("embedding_length")
        let ffn = try required("feed_forward_length")
        let heads = try required("attention.head_count")
        let kvHeads = try int("attention.head_count_kv") ?? heads
        guard let eps = try positive(p + "attention.layer_norm_rms_epsilon") else {
            throw CheckpointError.missingKey(file: path, key: p + "attention.layer_norm_rms_epsilon")
        }
        let theta = try positive(p + "rope.freq_base") ?? 10000
        let context = try int("context_length") ?? 2048
        let ropeDims = try int("rope.dimension_count")
        let keyLength = try int("attention.key_length")
        let headDim = keyLength ?? ropeDims ?? hidden / heads
        if let v = try int("attention.value_length"), v != headDim {
            throw CheckpointError.unsupported(file: path, what: "\(p)attention.value_length \(v) differs from the key length \(headDim)")
        }
        if let r = ropeDims, r != headDim {
            throw CheckpointError.unsupported(file: path, what: "\(p)rope.dimension_count \(r) (RoPE on part of a head of \(headDim) is not implemented)")
        }
        guard heads % kvHeads == 0 else {
            throw CheckpointError.badValue(file: path, key: p + "attention.head_count_kv", value: "\(kvHeads)",
                                           expected: "a divisor of \(p)attention.head_count (\(heads))")
        }
        guard headDim % 2 == 0 else {
            throw CheckpointError.badValue(file: path, key: p + "rope.dimension_count", value: "\(headDim)", expected: "an even number (RoPE rotates pairs)")
        }
        if keyLength == nil, ropeDims == nil, hidden % heads != 0 {
            throw CheckpointError.badValue(file: path, key: p + "embedding_length", value: "\(hidden)",
                                           expected: "a multiple of \(p)attention.head_count (\(heads))")
        }

        // Vocabulary: llama.vocab_size, else the embedding's rows, else the tokenizer's size.
        var vocab = try int("vocab_size")
        if vocab == nil, let e = f.tensorInfo("token_embd.weight"), e.dims.count == 2 { vocab = e.dims[1] }
        if vocab == nil, let t = try f.strings("tokenizer.ggml.tokens"), !t.isEmpty { vocab = t.count }
        guard let vocab else { throw CheckpointError.missingKey(file: path, key: p + "vocab_size") }

        let config = LlamaConfig(
            hiddenSize: hidden, intermediateSize: ffn, numAttentionHeads: heads, numKeyValueHeads: kvHeads,
            numHiddenLayers: layers, rmsNormEps: eps, ropeTheta: theta, headDim: headDim, vocabSize: vocab,
            tieWordEmbeddings: f.tensorInfo("output.weight") == nil,
            bosTokenID: try tokenID("tokenizer.ggml.bos_token_id"),
            eosTokenIDs: try tokenID("tokenizer.ggml.eos_token_id").map { [$0] } ?? [],
            padTokenID: try tokenID("tokenizer.ggml.padding_token_id"),
            maxPositionEmbeddings: context, torchDtype: nil)
        // The same bounds as config.json, named by their GGUF keys.
        let ggufKeys = [
            "hidden_size": p + "embedding_length", "intermediate_size": p + "feed_forward_length",
            "num_attention_heads": p + "attention.head_count", "num_key_value_heads": p + "attention.head_count_kv",
            "num_hidden_layers": p + "block_count", "head_dim": p + "attention.key_length", "vocab_size": p + "vocab_size",
            "max_position_embeddings": p + "context_length", "rms_norm_eps": p + "attention.layer_norm_rms_epsilon",
            "rope_theta": p + "rope.freq_base", "bos_token_id": "tokenizer.ggml.bos_token_id",
            "eos_token_id": "tokenizer.ggml.eos_token_id", "pad_token_id": "tokenizer.ggml.padding_token_id",
        ]
        try config.checkBounds(file: path) { ggufKeys[$0] ?? $0 }
        return config
    }

    /// Every tensor the model needs is present with the shape the config implies, and every
    /// tensor in the file is one the model uses: an unknown one (a bias, an expert, a layer past
    /// block_count) means a model this code would run wrongly. Only names and dims are read, so
    /// this is cheap, and it bounds every size in the config by what the file holds.
    static func checkTensors(_ f: GGUFFile, config c: LlamaConfig) throws {
        let C = c.hiddenSize, I = c.intermediateSize, V = c.vocabSize
        guard c.numHiddenLayers <= f.tensors.count / 9 else {
            throw CheckpointError.corrupt(file: f.path, detail: "llama.block_count \(c.numHiddenLayers) needs \(c.numHiddenLayers * 9) block tensors, the file has \(f.tensors.count) tensors")
        }
        var expected: [(String, [Int])] = [("model.embed_tokens.weight", [V, C]), ("model.norm.weight", [C])]
        if !c.tieWordEmbeddings { expected.append(("lm_head.weight", [V, C])) }
        for n in 0..<c.numHiddenLayers {
            let p = "model.layers.\(n)."
            expected += [
                (p + "input_layernorm.weight", [C]), (p + "post_attention_layernorm.weight", [C]),
                (p + "self_attn.q_proj.weight", [c.qDim, C]), (p + "self_attn.k_proj.weight", [c.kvDim, C]),
                (p + "self_attn.v_proj.weight", [c.kvDim, C]), (p + "self_attn.o_proj.weight", [C, c.qDim]),
                (p + "mlp.gate_proj.weight", [I, C]), (p + "mlp.up_proj.weight", [I, C]), (p + "mlp.down_proj.weight", [C, I]),
            ]
        }
        var known = Set<String>()
        for (hf, shape) in expected {
            let g = ggufName(hf)!
            guard let t = f.tensorInfo(g) else { throw CheckpointError.missingTensor(file: f.path, name: "\(g) (\(hf))") }
            guard t.shape == shape else {
                throw CheckpointError.shapeMismatch(file: f.path, name: "\(g) (\(hf))", expected: shape, found: t.shape)
            }
            known.insert(g)
        }
        for t in f.tensors where !known.contains(t.name) {
            throw CheckpointError.unsupported(file: f.path, what: "tensor '\(t.name)' is not part of a LLaMA model with \(c.numHiddenLayers) blocks (biases, experts and extra tensors are not implemented)")
        }
    }
}
