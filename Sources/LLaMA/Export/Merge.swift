import Foundation
import Tensor

// Merging LoRA adapters into a base model's weights, on full-precision (f32) tensors:
//
//     W' = W + sum_i weight_i * scale_i * B_i @ A_i       W [out, in], B_i [out, r_i], A_i [r_i, in]
//
// scale_i = lora_alpha / r (or lora_alpha / sqrt(r) with rsLoRA) from adapter i's own config;
// weight_i is the user's `DIR:WEIGHT` (1 by default). W is read from the checkpoint as f32 (a
// quantized GGUF base is dequantized first); the int8 copy used for training is never involved.
// Exporters ask for merged tensors by Hugging Face name, one at a time.

extension Projection {
    /// [out, in] of this projection's weight in a model of config `c`.
    public func shape(_ c: LlamaConfig) -> [Int] {
        switch self {
        case .q: return [c.qDim, c.hiddenSize]
        case .k, .v: return [c.kvDim, c.hiddenSize]
        case .o: return [c.hiddenSize, c.qDim]
        case .gate, .up: return [c.intermediateSize, c.hiddenSize]
        case .down: return [c.hiddenSize, c.intermediateSize]
        }
    }

    /// `model.layers.{i}.self_attn.q_proj.weight` etc.
    public func weightName(layer i: Int) -> String { path(layer: i) + ".weight" }
}

extension LlamaConfig {
    /// Every tensor of a LLaMA checkpoint, by Hugging Face name, in the order transformers'
    /// state_dict() lists them; `lm_head.weight` only when the embedding is not tied.
    public var tensorShapes: [(name: String, shape: [Int])] {
        let C = hiddenSize, V = vocabSize
        var out: [(String, [Int])] = [("model.embed_tokens.weight", [V, C])]
        for i in 0..<numHiddenLayers {
            for p in Projection.allCases { out.append((p.weightName(layer: i), p.shape(self))) }
            out.append(("model.layers.\(i).input_layernorm.weight", [C]))
            out.append(("model.layers.\(i).post_attention_layernorm.weight", [C]))
        }
        out.append(("model.norm.weight", [C]))
        if !tieWordEmbeddings { out.append(("lm_head.weight", [V, C])) }
        return out
    }
}

/// One PEFT adapter's factors, read without a model and checked against a model config:
/// `A` [r, in] and `B` [out, r] for each targeted weight, by the weight's Hugging Face name.
public struct AdapterFactors {
    public let source: String
    public let config: AdapterConfig
    /// The user's multiplier (`DIR:WEIGHT`).
    public let weight: Float
    public let factors: [String: (A: Tensor, B: Tensor)]
    /// DoRA adapters: the magnitude vector [out] of each targeted weight, by the weight's name.
    public var magnitudes: [String: Tensor] = [:]

    /// The multiplier of B @ A in the merge: weight * alpha / r (or alpha / sqrt r).
    public var scale: Float { weight * config.scale }

    /// Reads `adapter_config.json` and `adapter_model.safetensors` from `dir` and checks every
    /// tensor against `model` (a model config): a wrong shape, a layer the model lacks, or a
    /// tensor that belongs to no target is refused, naming the file and tensor or key.
    /// A GGUF LoRA file (llama.cpp's adapter format) in place of the folder is read by `GGUFLoRA`.
    public static func load(_ dir: URL, weight: Float = 1, model c: LlamaConfig) throws -> AdapterFactors {
        if GGUFLoRA.isGGUF(dir) { return try GGUFLoRA.load(dir, weight: weight, model: c) }
        let cfgURL = dir.appendingPathComponent(Adapter.configFile)
        let wURL = dir.appendingPathComponent(Adapter.weightsFile)
        let fm = FileManager.default
        if let problem = folderProblem(dir) {
            throw CheckpointError.unreadable(path: dir.path, reason: "\(problem) (expected a PEFT adapter folder with adapter_config.json and adapter_model.safetensors)")
        }
        guard fm.fileExists(atPath: cfgURL.path) else {
            throw CheckpointError.notFound(path: cfgURL.path, expected: "a PEFT adapter folder with adapter_config.json")
        }
        guard fm.fileExists(atPath: wURL.path) else {
            let bin = dir.appendingPathComponent("adapter_model.bin")
            if fm.fileExists(atPath: bin.path) { throw CheckpointError.pickle(path: bin.path) }
            throw CheckpointError.notFound(path: wURL.path, expected: "the adapter weights")
        }
        let json: JSON
        do { json = try JSON.parse(contentsOf: cfgURL) } catch let e as JSONError {
            throw CheckpointError.corrupt(file: cfgURL.path, detail: e.description)
        }
        let cfg = try AdapterConfig(json: json, file: cfgURL.path)
        let layers = cfg.layersToTransform ?? Array(0..<c.numHiddenLayers)
        if let bad = layers.first(where: { $0 < 0 || $0 >= c.numHiddenLayers }) {
            throw CheckpointError.badValue(file: cfgURL.path, key: "layers_to_transform", value: "\(bad)",
                                           expected: "layer indices below the base model's \(c.numHiddenLayers) layers")
        }
        let st = try SafeTensorsFile(path: wURL.path)
        // PEFT writes keys without the adapter name; accept ".lora_A.default.weight" as well.
        func find(_ k: String) -> String? {
            if st.entries[k] != nil { return k }
            let alt = k.replacingOccurrences(of: ".weight", with: ".default.weight")
            return st.entries[alt] != nil ? alt : nil
        }
        var factors: [String: (A: Tensor, B: Tensor)] = [:]
        var magnitudes: [String: Tensor] = [:]
        var used = Set<String>()
        for i in layers {
            for p in cfg.targetModules {
                let shape = p.shape(c), out = shape[0], inF = shape[1]
                guard let ka = find(Adapter.key(layer: i, p, "A")) else {
                    throw CheckpointError.missingTensor(file: wURL.path, name: Adapter.key(layer: i, p, "A"))
                }
                guard let kb = find(Adapter.key(layer: i, p, "B")) else {
                    throw CheckpointError.missingTensor(file: wURL.path, name: Adapter.key(layer: i, p, "B"))
                }
                let ea = st.entries[ka]!, eb = st.entries[kb]!
                let r = ea.shape.count == 2 ? ea.shape[0] : 0
                guard ea.shape == [r, inF], r > 0 else {
                    throw CheckpointError.shapeMismatch(file: wURL.path, name: ka, expected: [cfg.r, inF], found: ea.shape)
                }
                guard eb.shape == [out, r] else {
                    throw CheckpointError.shapeMismatch(file: wURL.path, name: kb, expected: [out, r], found: eb.shape)
                }
                guard r == cfg.r else {
                    throw CheckpointError.badValue(file: cfgURL.path, key: "r", value: "\(cfg.r)",
                                                   expected: "the rank of the saved tensors (\(ka) has rank \(r))")
                }
                let (A, B) = (try st.f32(ka)!, try st.f32(kb)!)
                // NaN or Inf in an adapter would silently poison every output it touches.
                try checkFinite(A, name: ka, file: wURL.path)
                try checkFinite(B, name: kb, file: wURL.path)
                factors[p.weightName(layer: i)] = (A, B)
                used.insert(ka); used.insert(kb)
                if cfg.useDora {
                    let mk = Adapter.magnitudeKey(layer: i, p)
                    // PEFT saves the key bare; accept the in-memory ".default.weight" name too.
                    let key = st.entries[mk] != nil ? mk : (st.entries[mk + ".default.weight"] != nil ? mk + ".default.weight" : nil)
                    guard let key else { throw CheckpointError.missingTensor(file: wURL.path, name: mk) }
                    guard st.entries[key]!.shape == [out] else {
                        throw CheckpointError.shapeMismatch(file: wURL.path, name: key, expected: [out], found: st.entries[key]!.shape)
                    }
                    let m = try st.f32(key)!
                    try checkFinite(m, name: key, file: wURL.path)
                    magnitudes[p.weightName(layer: i)] = m
                    used.insert(key)
                }
            }
        }
        if let extra = st.order.first(where: { !used.contains($0) }) {
            throw CheckpointError.unsupported(file: wURL.path, what: "tensor '\(extra)' does not belong to a LoRA target of this model (adapter_config.json target_modules / layers_to_transform)")
        }
        var f = AdapterFactors(source: dir.path, config: cfg, weight: weight, factors: factors)
        f.magnitudes = magnitudes
        return f
    }
}

/// Merged weights of a base checkpoint plus adapters, computed on demand by Hugging Face name.
/// Adapters are read and checked against the base model's shapes when this is created, so an
/// adapter that does not fit is refused before any output exists.
public final class Merger {
    public let base: Checkpoint
    public let adapters: [AdapterFactors]
    public var config: LlamaConfig { base.config }
    /// Every tensor an export writes, in checkpoint order.
    public let tensors: [(name: String, shape: [Int])]

    public init(base: Checkpoint, adapters: [AdapterFactors]) throws {
        self.base = base
        self.adapters = adapters
        tensors = base.config.tensorShapes
        for (name, _) in tensors where !base.has(name) {
            throw CheckpointError.missingTensor(file: base.source, name: name)
        }
        // DoRA rescales rows by m / ||W + scale B A||: no weighted sum with it is defined.
        if let d = adapters.first(where: { $0.config.useDora }), adapters.count != 1 || d.weight != 1 {
            throw AdapterSetError.doraInStack(count: adapters.count, weight: d.weight)
        }
    }

    /// Opens the base and reads every adapter (`DIR:WEIGHT` specs), checking shapes.
    public convenience init(base path: String, adapters specs: [AdapterSpec]) throws {
        let ck = try openCheckpoint(path)
        let ads = try specs.map { try AdapterFactors.load(URL(fileURLWithPath: $0.path), weight: $0.weight, model: ck.config) }
        try self.init(base: ck, adapters: ads)
    }

    /// The merged weight as f32: W + sum_i weight_i * scale_i * B_i @ A_i (adapters in the
    /// order given). Tensors no adapter targets come back as the base's values.
    public func tensor(_ name: String) throws -> Tensor {
        guard let shape = tensors.first(where: { $0.name == name })?.shape else {
            throw CheckpointError.missingTensor(file: base.source, name: name)
        }
        let w = try base.tensor(name, shape: shape)   // [out, in]
        for a in adapters {
            guard let f = a.factors[name] else { continue }
            if let m = a.magnitudes[name] {
                LoRALayer.mergeDoRA(into: w.data, A: f.A, B: f.B, magnitude: m, scale: a.scale)
            } else {
                LoRALayer.merge(into: w.data, A: f.A, B: f.B, multiplier: a.scale)
            }
        }
        return w
    }

    /// Every merged tensor at once (small models and tests).
    public func mergedTensors() throws -> [String: Tensor] {
        var out: [String: Tensor] = [:]
        for (name, _) in tensors { out[name] = try tensor(name) }
        return out
    }
}

/// A merged model seen as a checkpoint, so `LlamaModel(checkpoint:)` can run it directly.
public final class MergedCheckpoint: Checkpoint {
    public let merger: Merger
    public init(_ merger: Merger) { self.merger = merger }
    public var config: LlamaConfig { merger.config }
    public var source: String { merger.base.source + " (merged)" }
    public func has(_ name: String) -> Bool { merger.tensors.contains { $0.name == name } }
    public func tensor(_ name: String, shape: [Int]) throws -> Tensor {
        let t = try merger.tensor(name)
        guard t.shape == shape else {
            throw CheckpointError.shapeMismatch(file: source, name: name, expected: shape, found: t.shape)
        }
        return t
    }
}

/// Element types an export can write: safetensors F32/F16/BF16; GGUF F32/F16/BF16/Q8_0.
public enum ExportDType: String, CaseIterable, Sendable {
    case f32, f16, bf16, q8_0

    /// config.json's torch_dtype.
    public var torchName: String {
        switch self {
        case .f32: return "float32"
        case .f16: return "float16"
        case .bf16: return "bfloat16"
        case .q8_0: return "q8_0"
        }
    }
}

/// What can go wrong with an export's destination or options.
public enum ExportError: Error, CustomStringConvertible, Equatable {
    case outputExists(path: String)
    case outputIsDirectory(path: String)
    case unsupported(what: String)

    public var description: String {
        switch self {
        case let .outputExists(path): return "\(path): exists and is not empty; pass --force to replace it"
        case let .outputIsDirectory(path): return "\(path): is a directory; a GGUF export writes one file"
        case let .unsupported(what): return "unsupported: \(what)"
        }
    }

    /// Refuses an existing non-empty output (a file, or a folder with entries) unless `force`;
    /// a single-file export also refuses an existing folder.
    /// An output whose nearest existing ancestor is a file is refused before anything is read.
    public static func checkOutput(_ url: URL, file: Bool, force: Bool) throws {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        var ancestor = url.deletingLastPathComponent()
        while !fm.fileExists(atPath: ancestor.path), ancestor.pathComponents.count > 1 { ancestor = ancestor.deletingLastPathComponent() }
        if fm.fileExists(atPath: ancestor.path, isDirectory: &isDir), !isDir.boolValue {
            throw WriteError(path: url.path, reason: "\(posixReason(ENOTDIR)) (\(ancestor.path) is a file)")
        }
        guard fm.fileExists(atPath: url.path, isDirectory: &isDir) else { return }
        if isDir.boolValue {
            if file { throw ExportError.outputIsDirectory(path: url.path) }
            let entries = (try? fm.contentsOfDirectory(atPath: url.path)) ?? []
            if !entries.isEmpty && !force { throw ExportError.outputExists(path: url.path) }
        } else if !force {
            throw ExportError.outputExists(path: url.path)
        }
    }
}
