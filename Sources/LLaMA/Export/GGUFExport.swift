import Foundation
import Tensor

/// Exports for llama.cpp, following the conventions of its convert_hf_to_gguf.py and
/// convert_lora_to_gguf.py:
///
/// - a merged model: `llama` architecture metadata from the config, the tokenizer as
///   tokenizer.ggml.* (see `GGUFVocab`), tensors under llama.cpp's names (token_embd, blk.N.attn_q,
///   ..., output_norm, output; no `output` when the embedding is tied), q and k rows permuted to
///   llama.cpp's interleaved RoPE layout, dims in GGUF order ([out, in] is written as [in, out]);
///   2-D tensors as F32, F16, BF16 or Q8_0 (a row length that is not a multiple of 32 falls back
///   to F16 for Q8_0, as the converter does), 1-D tensors (norms) always F32.
/// - a LoRA adapter (general.type `adapter`, adapter.type `lora`, adapter.lora.alpha): tensors
///   `blk.N.attn_q.weight.lora_a` (A [r, in], dims [in, r]) and `.lora_b` (B [out, r], dims
///   [r, out]), lora_b rows of q and k permuted as the weights are. llama.cpp scales each pair by
///   alpha / r with r = lora_b's dims[0]; alpha is written as scale * r, so rsLoRA adapters and a
///   user weight keep their exact scale (convert_lora_to_gguf.py writes lora_alpha and ignores
///   use_rslora).
public enum GGUFExport {
    public struct Summary: Sendable {
        public var tensors = 0
        public var bytes = 0
        /// Tensors stored in another type than asked (Q8_0 rows not a multiple of 32).
        public var fallbacks: [String] = []
    }

    /// llama.cpp's `general.file_type` (enum llama_ftype) for an export dtype.
    public static func fileType(_ d: ExportDType) -> UInt32 {
        switch d {
        case .f32: return 0    // LLAMA_FTYPE_ALL_F32
        case .f16: return 1    // LLAMA_FTYPE_MOSTLY_F16
        case .q8_0: return 7   // LLAMA_FTYPE_MOSTLY_Q8_0
        case .bf16: return 32  // LLAMA_FTYPE_MOSTLY_BF16
        }
    }

    /// The stored type of a tensor with GGUF `dims` when `dtype` is asked for.
    public static func tensorType(dims: [Int], dtype: ExportDType) -> GGMLType {
        if dims.count < 2 { return .f32 }
        switch dtype {
        case .f32: return .f32
        case .f16: return .f16
        case .bf16: return .bf16
        case .q8_0: return dims[0] % GGMLType.q8_0.blockSize == 0 ? .q8_0 : .f16
        }
    }

    /// convert_hf_to_gguf.py's permute for a [heads * head_dim, cols] matrix (q or k, or a q/k
    /// lora_B): within each head, GGUF row 2i + j is Hugging Face row j * (head_dim / 2) + i.
    /// `GGUFCheckpoint.unpermuteRoPE` is its inverse.
    public static func permuteRoPE(_ w: Tensor, heads: Int) -> Tensor {
        let rows = w.shape[0], cols = w.count / max(rows, 1)
        precondition(heads > 0 && rows % heads == 0 && (rows / heads) % 2 == 0, "rows \(rows) do not split into \(heads) heads of pairs")
        let hd = rows / heads, half = hd / 2
        let out = Tensor(w.shape)
        for h in 0..<heads {
            for i in 0..<half {
                for j in 0..<2 {
                    (out.data + (h * hd + 2 * i + j) * cols).update(from: w.data + (h * hd + j * half + i) * cols, count: cols)
                }
            }
        }
        return out
    }

    /// The heads to permute a tensor's rows over: q by attention heads, k by key-value heads.
    static func ropeHeads(_ hfName: String, _ c: LlamaConfig) -> Int? {
        if hfName.hasSuffix(".self_attn.q_proj.weight") { return c.numAttentionHeads }
        if hfName.hasSuffix(".self_attn.k_proj.weight") { return c.numKeyValueHeads }
        return nil
    }

    /// Encodes f32 values as `type` into `dst` (exactly the type's byte count).
    static func encode(_ t: Tensor, as type: GGMLType, into dst: UnsafeMutableRawBufferPointer) {
        switch type {
        case .bf16:
            let d = dst.bindMemory(to: UInt16.self)
            for i in 0..<t.count { d[i] = floatToBF16(t.data[i]).littleEndian }
        default:
            GGMLQuants.quantizeParallel(t.data, type: type, count: t.count, into: dst.baseAddress!)
        }
    }

    /// `llama.*` hyper-parameters as convert_hf_to_gguf.py writes them.
    public static func llamaMetadata(_ c: LlamaConfig) -> [(String, GGUFValue)] {
        [
            ("llama.vocab_size", .uint32(UInt32(c.vocabSize))),
            ("llama.context_length", .uint32(UInt32(c.maxPositionEmbeddings))),
            ("llama.embedding_length", .uint32(UInt32(c.hiddenSize))),
            ("llama.block_count", .uint32(UInt32(c.numHiddenLayers))),
            ("llama.feed_forward_length", .uint32(UInt32(c.intermediateSize))),
            ("llama.rope.dimension_count", .uint32(UInt32(c.headDim))),
            ("llama.attention.head_count", .uint32(UInt32(c.numAttentionHeads))),
            ("llama.attention.head_count_kv", .uint32(UInt32(c.numKeyValueHeads))),
            ("llama.attention.key_length", .uint32(UInt32(c.headDim))),
            ("llama.attention.value_length", .uint32(UInt32(c.headDim))),
            ("llama.rope.freq_base", .float32(c.ropeTheta)),
            ("llama.attention.layer_norm_rms_epsilon", .float32(c.rmsNormEps)),
        ]
    }

    /// A name for general.name: the GGUF base's own, else the base folder's name.
    static func modelName(_ base: Checkpoint) -> String {
        if let g = base as? GGUFCheckpoint, let n = try? g.file.string("general.name") { return n }
        return URL(fileURLWithPath: base.source).deletingPathExtension().lastPathComponent
    }

    /// Writes the merged model as one GGUF file (atomically).
    @discardableResult
    public static func writeModel(_ merger: Merger, to url: URL, dtype: ExportDType = .f16,
                                  progress: ProgressHandler? = nil) throws -> Summary {
        let c = merger.config
        var w = GGUFWriter()
        w.add("general.architecture", .string("llama"))
        w.add("general.type", .string("model"))
        w.add("general.name", .string(modelName(merger.base)))
        for (k, v) in llamaMetadata(c) { w.add(k, v) }
        w.add("general.file_type", .uint32(fileType(dtype)))
        w.add("general.quantization_version", .uint32(2))
        for (k, v) in try GGUFVocab.metadata(for: merger.base) { w.add(k, v) }

        var summary = Summary()
        for (name, shape) in merger.tensors {
            guard let g = GGUFCheckpoint.ggufName(name) else {
                throw ExportError.unsupported(what: "tensor '\(name)' has no llama.cpp name")
            }
            let dims = Array(shape.reversed())
            let type = tensorType(dims: dims, dtype: dtype)
            if dtype == .q8_0, dims.count == 2, type != .q8_0 { summary.fallbacks.append(g) }
            let heads = ropeHeads(name, c)
            w.tensors.append(.init(name: g, dims: dims, type: type) { dst in
                var t = try merger.tensor(name)
                if let heads { t = permuteRoPE(t, heads: heads) }
                encode(t, as: type, into: dst)
            })
            summary.bytes += w.tensors.last!.byteCount
        }
        summary.tensors = w.tensors.count
        let sizes = w.tensors.map(\.byteCount)
        try w.write(to: url, progress: progress.map { report in { done, total in
            report(TaskProgress(task: .merge, done: done, total: total, unit: "tensors", bytes: sizes[..<done].reduce(0, +)))
        } })
        return summary
    }

    /// Writes one PEFT adapter as a llama.cpp LoRA adapter (F32 or F16 tensors).
    @discardableResult
    public static func writeAdapter(_ a: AdapterFactors, model c: LlamaConfig, name: String, to url: URL,
                                    dtype: ExportDType = .f32) throws -> Summary {
        guard dtype == .f32 || dtype == .f16 else {
            throw ExportError.unsupported(what: "dtype \(dtype.rawValue) for a GGUF LoRA adapter (use f32 or f16)")
        }
        if a.config.useDora {
            // llama.cpp's adapters add scale * B A x; DoRA's row rescaling has no GGUF form.
            throw ExportError.unsupported(what: "\(a.source) is a DoRA adapter (use_dora: true) and llama.cpp has no DoRA: "
                                          + "a GGUF LoRA adapter cannot hold it; merge it into the model instead (lora merge without --adapter-only)")
        }
        var w = GGUFWriter()
        w.add("general.architecture", .string("llama"))
        w.add("general.type", .string("adapter"))
        w.add("general.name", .string(name))
        w.add("general.file_type", .uint32(fileType(dtype)))
        w.add("general.quantization_version", .uint32(2))
        w.add("adapter.type", .string("lora"))
        // llama.cpp multiplies B A x by alpha / r (r = lora_b dims[0]); PEFT by `scale`.
        w.add("adapter.lora.alpha", .float32(a.scale * Float(a.config.r)))
        var summary = Summary()
        for (hf, _) in c.tensorShapes {
            guard let f = a.factors[hf], let g = GGUFCheckpoint.ggufName(hf) else { continue }
            let r = f.A.shape[0]
            let type: GGMLType = dtype == .f16 ? .f16 : .f32
            let heads = ropeHeads(hf, c)
            w.tensors.append(.init(name: g + ".lora_a", dims: [f.A.shape[1], r], type: type) { dst in
                encode(f.A, as: type, into: dst)
            })
            w.tensors.append(.init(name: g + ".lora_b", dims: [r, f.B.shape[0]], type: type) { dst in
                encode(heads.map { permuteRoPE(f.B, heads: $0) } ?? f.B, as: type, into: dst)
            })
            summary.bytes += w.tensors[w.tensors.count - 2].byteCount + w.tensors[w.tensors.count - 1].byteCount
        }
        summary.tensors = w.tensors.count
        try w.write(to: url)
        return summary
    }
}
