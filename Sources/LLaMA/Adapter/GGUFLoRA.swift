import Foundation
import Tensor

/// Reading a llama.cpp LoRA adapter file (what convert_lora_to_gguf.py and
/// `lora merge --format gguf --adapter-only` write) as the same `AdapterFactors` a PEFT folder
/// gives, so every command that takes an adapter takes this file too.
///
/// Layout (llama.cpp's src/llama-adapter.cpp reads the same): `general.type = adapter`,
/// `adapter.type = lora`, `general.architecture = llama`, `adapter.lora.alpha` (f32); tensors
/// `blk.N.attn_q.weight.lora_a` with GGUF dims [in, r] (A [r, in]) and `.lora_b` with dims
/// [r, out] (B [out, r]). llama.cpp scales each pair by alpha / r with r = lora_b's dims[0], or
/// by 1 when alpha is missing or 0. The rows of q and k lora_b are in llama.cpp's interleaved
/// RoPE order and are put back into Hugging Face's here (`GGUFCheckpoint.unpermuteRoPE`).
public enum GGUFLoRA {
    /// Whether `url` names a GGUF file rather than a PEFT folder: a regular file with the GGUF
    /// magic, or any path ending in `.gguf` (so a missing or damaged one gets GGUF's errors).
    public static func isGGUF(_ url: URL) -> Bool {
        if url.pathExtension.lowercased() == "gguf" { return true }
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir), !isDir.boolValue,
              let h = FileHandle(forReadingAtPath: url.path) else { return false }
        defer { try? h.close() }
        return (try? h.read(upToCount: 4)) == Data("GGUF".utf8)
    }

    /// Reads and checks the file against `c` (the base model's config): every tensor must be a
    /// lora_a / lora_b pair of a projection the model has, with the model's shapes and one rank.
    public static func load(_ url: URL, weight: Float = 1, model c: LlamaConfig) throws -> AdapterFactors {
        let path = url.path
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw CheckpointError.notFound(path: path, expected: "a GGUF LoRA adapter file (llama.cpp's convert_lora_to_gguf.py layout)")
        }
        if isDir.boolValue {
            throw CheckpointError.unreadable(path: path, reason: "is a folder (expected a GGUF LoRA adapter file, or a PEFT folder not named .gguf)")
        }
        let f = try GGUFFile(path: path)
        func requireString(_ key: String, _ wanted: String, _ why: String) throws {
            // Model files often have no general.type at all: say what was expected, not only "missing".
            let v = try f.string(key)
            if v != wanted {
                throw CheckpointError.badValue(file: path, key: key, value: v.map { "\"\($0)\"" } ?? "absent", expected: "\"\(wanted)\" (\(why))")
            }
        }
        try requireString("general.type", "adapter", "a GGUF LoRA adapter; a model file goes to --base-model")
        try requireString("adapter.type", "lora", "only LoRA adapters are supported")
        try requireString("general.architecture", "llama", "the base model is a LLaMA-family model")
        if f.value("adapter.alora.invocation_tokens") != nil {
            throw CheckpointError.unsupported(file: path, what: "activated LoRA (adapter.alora.invocation_tokens)")
        }
        let alpha = try f.float("adapter.lora.alpha") ?? 0
        guard alpha.isFinite, alpha >= 0 else {
            throw CheckpointError.badValue(file: path, key: "adapter.lora.alpha", value: "\(alpha)", expected: "a finite number >= 0")
        }

        // llama.cpp name of each projection weight this model has -> (layer, projection).
        var sites: [String: LoRASite] = [:]
        for i in 0..<c.numHiddenLayers {
            for p in Projection.allCases {
                if let g = GGUFCheckpoint.ggufName(p.weightName(layer: i)) { sites[g] = LoRASite(i, p) }
            }
        }
        var pairs: [LoRASite: (a: GGUFTensorInfo?, b: GGUFTensorInfo?)] = [:]
        for t in f.tensors {
            let half: String
            if t.name.hasSuffix(".lora_a") { half = "a" } else if t.name.hasSuffix(".lora_b") { half = "b" } else {
                throw CheckpointError.unsupported(file: path, what: "tensor '\(t.name)' is not a '.lora_a' / '.lora_b' half of a LoRA pair")
            }
            let base = String(t.name.dropLast(7))
            guard let site = sites[base] else {
                throw CheckpointError.unsupported(file: path, what: "tensor '\(t.name)': '\(base)' is not an attention or MLP projection of the base model "
                                                  + "(\(c.numHiddenLayers) layers; LoRA on embeddings or the output head is not supported)")
            }
            if half == "a" { pairs[site, default: (nil, nil)].a = t } else { pairs[site, default: (nil, nil)].b = t }
        }
        if pairs.isEmpty { throw CheckpointError.unsupported(file: path, what: "the file holds no LoRA tensors") }

        var factors: [String: (A: Tensor, B: Tensor)] = [:]
        var rank: Int? = nil
        for site in pairs.keys.sorted() {
            let g = GGUFCheckpoint.ggufName(site.projection.weightName(layer: site.layer))!
            guard let ta = pairs[site]!.a else { throw CheckpointError.missingTensor(file: path, name: g + ".lora_a") }
            guard let tb = pairs[site]!.b else { throw CheckpointError.missingTensor(file: path, name: g + ".lora_b") }
            let shape = site.projection.shape(c), out = shape[0], inF = shape[1]
            // Shapes are [r, in] and [out, r] (GGUF dims reversed).
            let r = tb.shape.count == 2 ? tb.shape[1] : 0
            guard ta.shape.count == 2, ta.shape[1] == inF, ta.shape[0] > 0 else {
                throw CheckpointError.shapeMismatch(file: path, name: ta.name, expected: [max(r, 1), inF], found: ta.shape)
            }
            guard tb.shape == [out, ta.shape[0]] else {
                throw CheckpointError.shapeMismatch(file: path, name: tb.name, expected: [out, ta.shape[0]], found: tb.shape)
            }
            if let r0 = rank, r0 != r {
                throw CheckpointError.unsupported(file: path, what: "tensor '\(tb.name)' has rank \(r) but others rank \(r0) (one rank per adapter is supported)")
            }
            guard r <= TrainConfig.Limits.loraR.upperBound else {
                throw CheckpointError.unsupported(file: path, what: "tensor '\(tb.name)' has rank \(r), above the largest supported \(TrainConfig.Limits.loraR.upperBound)")
            }
            rank = r
            let A = try f.f32(ta)
            var B = try f.f32(tb)
            try checkFinite(A, name: ta.name, file: path)
            try checkFinite(B, name: tb.name, file: path)
            switch site.projection {
            case .q: B = try GGUFCheckpoint.unpermuteRoPE(B, heads: c.numAttentionHeads, name: tb.name, file: path)
            case .k: B = try GGUFCheckpoint.unpermuteRoPE(B, heads: c.numKeyValueHeads, name: tb.name, file: path)
            default: break
            }
            factors[site.projection.weightName(layer: site.layer)] = (A, B)
        }
        let r = rank!
        let layers = Set(pairs.keys.map(\.layer)).sorted()
        let targets = Projection.allCases.filter { p in pairs.keys.contains { $0.projection == p } }
        // alpha 0 or missing: llama.cpp applies the pair at scale 1, which is alpha = r here.
        let cfg = AdapterConfig(r: r, loraAlpha: alpha > 0 ? Double(alpha) : Double(r), loraDropout: 0, targetModules: targets,
                                useRslora: false, useDora: false, baseModelNameOrPath: nil,
                                layersToTransform: layers.count == c.numHiddenLayers ? nil : layers)
        return AdapterFactors(source: path, config: cfg, weight: weight, factors: factors)
    }
}
