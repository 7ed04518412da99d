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

/// A LLaMA-family causal LM: embedding, blocks, final norm, lm_head (tied or not).
/// Embeddings, norms and lm_head stay f32; projections are int8 rows when `load8bit`
/// (as alpaca-lora's prepare_model_for_int8_training leaves them).
public final class LlamaModel: @unchecked Sendable {
    public let config: LlamaConfig
    public let embed: Tensor          // [V, C]
    public let blocks: [Block]
    public let norm: Tensor           // [C]
    public let lmHead: Tensor         // [V, C]; the same storage as `embed` when tied
    public let rope: RoPETable
    public let is8bit: Bool

    /// The lm_head as generation uses it: with `load8bit`, an int8 row-quantized copy (decoding
    /// is bound by memory traffic, and the f32 head is ~40% of a step's bytes for a small model;
    /// llama.cpp uses the GGUF's quantized output the same way). Training and `logits` keep the
    /// f32 head, as alpaca-lora's int8 training does. Made on first use.
    public private(set) lazy var decodeHead: Weight = is8bit
        ? .int8(QuantizedMatrix(quantizing: lmHead.data, rows: config.vocabSize, cols: config.hiddenSize))
        : .f32(lmHead)

    public init(config: LlamaConfig, embed: Tensor, blocks: [Block], norm: Tensor, lmHead: Tensor, is8bit: Bool) {
        self.config = config
        self.embed = embed
        self.blocks = blocks
        self.norm = norm
        self.lmHead = lmHead
        self.is8bit = is8bit
        rope = RoPETable(maxT: max(config.maxPositionEmbeddings, 1), headDim: config.headDim, theta: config.ropeTheta)
    }

    /// Loads every tensor by its Hugging Face name, checking shapes against the config.
    public convenience init(checkpoint ck: Checkpoint, load8bit: Bool) throws {
        let c = ck.config
        let C = c.hiddenSize, I = c.intermediateSize, V = c.vocabSize
        let embed = try ck.tensor("model.embed_tokens.weight", shape: [V, C])
        func linear(_ name: String, _ out: Int, _ inF: Int) throws -> Linear {
            let w = try ck.tensor(name, shape: [out, inF])
            if load8bit { return Linear(.int8(QuantizedMatrix(quantizing: w.data, rows: out, cols: inF))) }
            return Linear(.f32(w))
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
        }
        let norm = try ck.tensor("model.norm.weight", shape: [C])
        let head: Tensor
        if !c.tieWordEmbeddings, ck.has("lm_head.weight") {
            head = try ck.tensor("lm_head.weight", shape: [V, C])
        } else if !c.tieWordEmbeddings {
            throw CheckpointError.missingTensor(file: ck.source, name: "lm_head.weight")
        } else {
            head = embed
        }
        self.init(config: c, embed: embed, blocks: blocks, norm: norm, lmHead: head, is8bit: load8bit)
    }

    /// All LoRA adapters currently attached, by PEFT module path.
    public var adapters: [(path: String, lora: LoRA)] {
        var out: [(String, LoRA)] = []
        for (i, b) in blocks.enumerated() {
            for p in Projection.allCases {
                for a in b.linear(p).adapters { out.append((p.path(layer: i), a)) }
            }
        }
        return out
    }

    public func removeAdapters() {
        for b in blocks { for p in Projection.allCases { b.linear(p).adapters = [] } }
    }

    /// Bytes held by weights (for memory reports).
    public var weightBytes: Int {
        var n = embed.count * 4 + norm.count * 4 + (lmHead === embed ? 0 : lmHead.count * 4)
        for b in blocks {
            n += (b.attnNorm.count + b.mlpNorm.count) * 4
            for p in Projection.allCases { n += b.linear(p).weight.byteCount }
        }
        return n
    }
}
