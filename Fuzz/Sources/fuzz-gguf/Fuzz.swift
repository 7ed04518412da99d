import FuzzSupport
import LLaMA

/// A .gguf file as `--base-model x.gguf` opens it: header, metadata, tensor table, the model
/// config and tensor checks (GGUFCheckpoint), then each tensor dequantized by its HF name.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let u = put(input(data, size), "model.gguf")
    expectErrors {
        let f = try GGUFFile(path: u.path)
        for t in f.tensors.prefix(64) where t.elementCount <= maxConvertedElements { _ = try? f.f32(t) }
        let ck = try openCheckpoint(u.path)
        let c = ck.config
        let names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
                     "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                     "model.layers.0.mlp.down_proj.weight"]
        for n in names where ck.has(n) {
            let q = c.numAttentionHeads * c.headDim, kv = c.numKeyValueHeads * c.headDim
            let shape: [Int]
            switch n {
            case "model.norm.weight": shape = [c.hiddenSize]
            case "model.embed_tokens.weight", "lm_head.weight": shape = [c.vocabSize, c.hiddenSize]
            case "model.layers.0.self_attn.q_proj.weight": shape = [q, c.hiddenSize]
            case "model.layers.0.self_attn.k_proj.weight": shape = [kv, c.hiddenSize]
            default: shape = [c.hiddenSize, c.intermediateSize]
            }
            guard shape.reduce(1, *) <= maxConvertedElements else { continue }
            _ = try ck.tensor(n, shape: shape)
        }
    }
    return 0
}
