import Foundation
import Tensor

/// One decoder block's frozen weights: pre-norms and the seven projections.
public final class Block: @unchecked Sendable {
    public let attnNorm: Tensor      // [C]   input_layernorm
    public let mlpNorm: Tensor       // [C]   post_attention_layernorm
    public let q, k, v, o: Linear    // q [nH*hd, C], k/v [nKV*hd, C], o [C, nH*hd]
    public let gate, up, down: Linear // gate/up [I, C], down [C, I]

    init(attnNorm: Tensor, mlpNorm: Tensor, q: Linear, k: Linear, v: Linear, o: Linear,
         gate: Linear, up: Linear, down: Linear) {
        self.attnNorm = attnNorm; self.mlpNorm = mlpNorm
        self.q = q; self.k = k; self.v = v; self.o = o
        self.gate = gate; self.up = up; self.down = down
    }

    public func linear(_ p: Projection) -> Linear {
        switch p {
        case .q: return q
        case .k: return k
        case .v: return v
        case .o: return o
        case .gate: return gate
        case .up: return up
        case .down: return down
        }
    }
}

/// What a model is loaded for: `training` keeps the f32 lm_head (training, eval, `logits`);
/// `decoding` (generate, serve) keeps only the head decoding uses (`decodeHead`).
public enum LoadPurpose: Sendable { case training, decoding }

/// What the frozen projection weights are stored as (`quantization:` in YAML, `--quantization`
/// on the command line). Embeddings, norms and the training lm_head stay f32, as alpaca-lora's
/// prepare_model_for_int8_training leaves them.
public enum Quantization: String, CaseIterable, Sendable, Codable {
    /// f32, the checkpoint's values.
    case none
    /// bfloat16 (exact for bf16 checkpoints, half the memory of f32).
    case bf16
    /// int8 rows, bitsandbytes' row-wise absmax scheme (alpaca-lora's `load_in_8bit`),
    /// multiplied dequantized in f32 (bitsandbytes' arithmetic when it trains on a CPU).
    case int8
    /// The same int8 rows with LLM.int8()'s forward (bitsandbytes on a GPU, and in eval):
    /// activations quantized to int8 per row, outlier columns (a value >= 6.0) in f32. About
    /// 1.4x the f32 product's speed on AVX2 (Int8RowsFormat, llmint8.c).
    case llm_int8
    /// ggml's block formats: a GGUF file's tensors already stored so are used as they are
    /// (memory-mapped); others are quantized with ggml's reference quantizer.
    case q8_0, q4_0, q4_1
    /// NF4 with double quantization, bitsandbytes' `load_in_4bit` as QLoRA uses it (the
    /// projections of every block; embeddings, norms and lm_head stay as they are).
    case nf4
    /// Each projection as the checkpoint stores it where that is a weight format (a GGUF
    /// file's Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q4_K / Q5_K / Q6_K / BF16 tensors,
    /// memory-mapped), else f32.
    case stored

    public var format: any WeightFormat {
        switch self {
        case .none: return WeightFormats.f32
        case .bf16: return WeightFormats.bf16
        case .int8: return WeightFormats.int8
        case .llm_int8: return WeightFormats.llmInt8
        case .q8_0: return WeightFormats.q8_0
        case .q4_0: return WeightFormats.q4_0
        case .q4_1: return WeightFormats.q4_1
        case .nf4: return WeightFormats.nf4
        case .stored: return WeightFormats.f32
        }
    }

    /// The lm_head format for decoding: a 4-bit head costs quality for little speed (llama.cpp
    /// keeps GGUF outputs at Q6_K or better), so the block formats decode with a Q8_0 head;
    /// NF4 with an int8 head (bitsandbytes leaves lm_head unquantized; int8 rows is the
    /// closest format of ours that needs no whole blocks of 32).
    var decodeHeadFormat: any WeightFormat {
        switch self {
        case .nf4, .llm_int8: return WeightFormats.int8
        case .q4_0, .q4_1, .stored: return WeightFormats.q8_0
        default: return format
        }
    }

    /// `load_8bit: true|false`, as alpaca-lora users write it.
    public init(load8bit: Bool) { self = load8bit ? .int8 : .none }

    /// Whether `load_8bit: flag` says the same: int8 and llm_int8 are both 8-bit loads.
    public func agrees(load8bit flag: Bool) -> Bool { flag ? (self == .int8 || self == .llm_int8) : self == .none }
}

/// A LLaMA-family causal LM: embedding, blocks, final norm, lm_head (tied or not). Immutable
/// after loading and shared: adapters and execution settings come with each call.
public final class LlamaModel: @unchecked Sendable {
    public let config: LlamaConfig
    public let embed: Tensor          // [V, C]
    public let blocks: [Block]
    public let norm: Tensor           // [C]
    /// [V, C] f32, the same storage as `embed` when tied: training's and `logits`' head. A model
    /// loaded for decoding only (`LoadPurpose.decoding`, untied) has none: its `decodeHead` was
    /// made at load and the f32 copy (0.5 GB for LLaMA-7B) let go.
    public var lmHead: Tensor {
        guard let h = _lmHead else { preconditionFailure("model loaded for decoding only: no f32 lm_head (load with purpose .training)") }
        return h
    }
    private let _lmHead: Tensor?
    public let rope: RoPETable
    public let quantization: Quantization

    /// The lm_head as generation uses it: for a quantized model, a copy in the projections'
    /// format (decoding is bound by memory traffic, and the f32 head is ~40% of a step's bytes
    /// for a small model; llama.cpp uses the GGUF's quantized output the same way). Training and
    /// `logits` keep the f32 head, as alpaca-lora's int8 training does. Made on first use.
    public var decodeHead: Weight {
        headLock.lock(); defer { headLock.unlock() }
        if let h = _decodeHead { return h }
        // An f32 head tied to the embedding is that tensor itself: a copy would double it.
        let shared = lmHead === embed && quantization.decodeHeadFormat is F32Format
        let h = Self.makeDecodeHead(from: lmHead, quantization: quantization, hiddenSize: config.hiddenSize,
                                    arena: groupsDecodeWeights && !shared ? WeightArena() : nil)
        _decodeHead = h
        return h
    }

    /// `arena`: given when decoding weights are grouped (`groupsDecodeWeights`); the head is
    /// regrouped into it.
    static func makeDecodeHead(from head: Tensor, quantization: Quantization, hiddenSize: Int, arena: WeightArena?) -> Weight {
        var f = quantization.decodeHeadFormat
        if f is GGUFBlockFormat, hiddenSize % GGUFBlockFormat.blockSize != 0 { f = WeightFormats.int8 }
        let w = Weight.make(f, from: head, pool: .allCores)
        guard let arena else { return w }
        let p = placed(w, in: arena)
        if p !== w { WeightArena.releaseFreedMemory() }   // `w`'s storage, freed on return
        return p
    }

    /// A decoding weight in `arena` (huge pages): GGUF blocks regrouped into the integer GEMV's
    /// layout, other formats copied as they are where they can be.
    static func placed(_ w: Weight, in arena: WeightArena) -> Weight {
        let g = GroupedBlockFormat.grouped(w, arena: arena)
        return g === w ? arena.place(w) : g
    }
    /// A model loaded for decoding only keeps its Q8_0 / Q4_0 / Q4_1 weights (and decoding
    /// head) in `GroupedBlockFormat`, the integer decoding GEMV's own layout.
    public let groupsDecodeWeights: Bool
    private var _decodeHead: Weight?
    private let headLock = NSLock()

    public convenience init(config: LlamaConfig, embed: Tensor, blocks: [Block], norm: Tensor, lmHead: Tensor, quantization: Quantization) {
        self.init(config: config, embed: embed, blocks: blocks, norm: norm, lmHead: lmHead, decodeHead: nil, quantization: quantization)
    }

    /// `lmHead` nil needs `decodeHead` (a model for decoding only).
    init(config: LlamaConfig, embed: Tensor, blocks: [Block], norm: Tensor, lmHead: Tensor?, decodeHead: Weight?, quantization: Quantization,
         groupsDecodeWeights: Bool = false) {
        precondition(lmHead != nil || decodeHead != nil, "a model needs an lm_head")
        self.groupsDecodeWeights = groupsDecodeWeights
        self.config = config
        self.embed = embed
        self.blocks = blocks
        self.norm = norm
        _lmHead = lmHead
        _decodeHead = decodeHead
        self.quantization = quantization
        rope = RoPETable(maxT: max(config.maxPositionEmbeddings, 1), headDim: config.headDim, theta: config.ropeTheta)
    }

    /// Loads every tensor by its Hugging Face name, checking shapes against the config; the
    /// projections are converted to `quantization`'s format one tensor at a time.
    /// `progress` sees each tensor loaded (bytes: f32 values read, 4 bytes each). For
    /// `.decoding`, an untied lm_head is read first, turned into `decodeHead` and let go before
    /// the projections load, so it never adds to the peak.
    public convenience init(checkpoint ck: Checkpoint, quantization: Quantization, pool: WorkerPool,
                            purpose: LoadPurpose = .training, progress: ProgressHandler? = nil) throws {
        let c = ck.config
        let C = c.hiddenSize, I = c.intermediateSize, V = c.vocabSize
        let total = 2 + 7 * c.numHiddenLayers + (c.tieWordEmbeddings ? 0 : 1)   // embed, projections, norm, head
        var done = 0, bytes = 0
        func loaded(_ count: Int) {
            done += 1; bytes += count * 4
            progress?(TaskProgress(task: .load, done: done, total: total, unit: "tensors", bytes: bytes))
        }
        let embed = try ck.tensor("model.embed_tokens.weight", shape: [V, C])
        loaded(V * C)
        // Decoding only: the grouped weights side by side on huge pages (`WeightArena`).
        let arena = purpose == .decoding ? WeightArena() : nil
        var decodeHead: Weight? = nil
        if let arena, !c.tieWordEmbeddings, ck.has("lm_head.weight") {
            decodeHead = Self.makeDecodeHead(from: try ck.tensor("lm_head.weight", shape: [V, C]), quantization: quantization, hiddenSize: C,
                                             arena: arena)
            loaded(V * C)
        }
        func linear(_ name: String, _ out: Int, _ inF: Int) throws -> Linear {
            defer { loaded(out * inF) }
            // Decoding only: the integer GEMV's grouped layout, made as each weight loads.
            if let w = try ck.storedWeight(name, shape: [out, inF], format: quantization == .stored ? nil : quantization.format) {
                // A file's own bytes stay mapped unless regrouped (a copy would be resident
                // twice: the file's pages and the arena's).
                return Linear(arena.map { GroupedBlockFormat.grouped(w, arena: $0) } ?? w)
            }
            let layout = { (w: Weight) in arena.map { Self.placed(w, in: $0) } ?? w }
            if quantization.format is GGUFBlockFormat, inF % GGUFBlockFormat.blockSize != 0 {
                throw CheckpointError.unsupported(file: ck.source, what: "quantization \(quantization.rawValue) for \(name): rows of \(inF) values are not whole blocks of 32")
            }
            return Linear(layout(Weight.make(quantization.format, from: try ck.tensor(name, shape: [out, inF]), pool: pool)))
        }
        var blocks: [Block] = []
        for i in 0..<c.numHiddenLayers {
            let p = "model.layers.\(i)."
            blocks.append(Block(
                attnNorm: try ck.tensor(p + "input_layernorm.weight", shape: [C]),
                mlpNorm: try ck.tensor(p + "post_attention_layernorm.weight", shape: [C]),
                q: try linear(p + "self_attn.q_proj.weight", c.qDim, C),
                k: try linear(p + "self_attn.k_proj.weight", c.kvDim, C),
                v: try linear(p + "self_attn.v_proj.weight", c.kvDim, C),
                o: try linear(p + "self_attn.o_proj.weight", C, c.qDim),
                gate: try linear(p + "mlp.gate_proj.weight", I, C),
                up: try linear(p + "mlp.up_proj.weight", I, C),
                down: try linear(p + "mlp.down_proj.weight", C, I)))
            // The weights placed in the arena freed their first storage: hand those pages back
            // as we go, so the copies never add up to a second model.
            if arena != nil { WeightArena.releaseFreedMemory() }
        }
        let norm = try ck.tensor("model.norm.weight", shape: [C])
        loaded(C)
        let head: Tensor?
        if decodeHead != nil {
            head = nil
        } else if !c.tieWordEmbeddings, ck.has("lm_head.weight") {
            head = try ck.tensor("lm_head.weight", shape: [V, C])
            loaded(V * C)
        } else if !c.tieWordEmbeddings {
            throw CheckpointError.missingTensor(file: ck.source, name: "lm_head.weight")
        } else {
            head = embed
        }
        self.init(config: c, embed: embed, blocks: blocks, norm: norm, lmHead: head, decodeHead: decodeHead, quantization: quantization,
                  groupsDecodeWeights: purpose == .decoding)
    }

    /// Bytes held by weights (for memory reports).
    public var weightBytes: Int {
        var n = embed.count * 4 + norm.count * 4
        if let h = _lmHead, h !== embed { n += h.count * 4 }
        if _lmHead == nil, let d = _decodeHead { n += d.byteCount }
        for b in blocks {
            n += (b.attnNorm.count + b.mlpNorm.count) * 4
            for p in Projection.allCases { n += b.linear(p).weight.byteCount }
        }
        return n
    }
}
