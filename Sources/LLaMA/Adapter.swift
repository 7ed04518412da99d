import Foundation
import Tensor

/// Reading and writing LoRA adapters in Hugging Face PEFT's format: a folder with
/// `adapter_config.json` and `adapter_model.safetensors` (f32, keys
/// `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`, no adapter name).
public enum Adapter {
    public static let configFile = "adapter_config.json"
    public static let weightsFile = "adapter_model.safetensors"

    public static func key(layer: Int, _ p: Projection, _ ab: String) -> String {
        "base_model.model.\(p.path(layer: layer)).lora_\(ab).weight"
    }

    /// Creates fresh adapters (A kaiming-uniform, B zero) on every target of every layer.
    @discardableResult
    public static func attachNew(to model: LlamaModel, config: AdapterConfig, rng: inout RNG) -> [LoRA] {
        var out: [LoRA] = []
        for (i, b) in model.blocks.enumerated() where config.layersToTransform?.contains(i) ?? true {
            for p in config.targetModules {
                let lin = b.linear(p)
                let a = LoRA(r: config.r, inFeatures: lin.inFeatures, outFeatures: lin.outFeatures,
                             scale: config.scale, dropout: Float(config.loraDropout))
                a.initialize(rng: &rng)
                lin.adapters.append(a)
                out.append(a)
            }
        }
        return out
    }

    /// Reads an adapter folder and attaches it to `model` with `weight` times its scale.
    /// Shapes are checked against the model before anything is attached.
    @discardableResult
    public static func load(_ dir: URL, into model: LlamaModel, weight: Float = 1) throws -> AdapterConfig {
        let cfgURL = dir.appendingPathComponent(configFile)
        let wURL = dir.appendingPathComponent(weightsFile)
        let fm = FileManager.default
        guard fm.fileExists(atPath: cfgURL.path) else {
            throw CheckpointError.notFound(path: cfgURL.path, expected: "a PEFT adapter folder with adapter_config.json")
        }
        guard fm.fileExists(atPath: wURL.path) else {
            if fm.fileExists(atPath: dir.appendingPathComponent("adapter_model.bin").path) {
                throw CheckpointError.pickle(path: dir.appendingPathComponent("adapter_model.bin").path)
            }
            throw CheckpointError.notFound(path: wURL.path, expected: "the adapter weights")
        }
        let json: JSON
        do { json = try JSON.parse(contentsOf: cfgURL) } catch let e as JSONError {
            throw CheckpointError.corrupt(file: cfgURL.path, detail: e.description)
        }
        let cfg = try AdapterConfig(json: json, file: cfgURL.path)
        let st = try SafeTensorsFile(path: wURL.path)
        // Accept keys with PEFT's adapter name too (".lora_A.default.weight").
        func find(_ k: String) -> String? {
            if st.entries[k] != nil { return k }
            let alt = k.replacingOccurrences(of: ".weight", with: ".default.weight")
            return st.entries[alt] != nil ? alt : nil
        }
        var pending: [(Linear, LoRA)] = []
        var used = Set<String>()
        for (i, b) in model.blocks.enumerated() where cfg.layersToTransform?.contains(i) ?? true {
            for p in cfg.targetModules {
                let lin = b.linear(p)
                guard let ka = find(key(layer: i, p, "A")), let kb = find(key(layer: i, p, "B")) else {
                    throw CheckpointError.missingTensor(file: wURL.path, name: key(layer: i, p, "A"))
                }
                let ea = st.entries[ka]!, eb = st.entries[kb]!
                let r = ea.shape.first ?? 0
                guard ea.shape == [r, lin.inFeatures], r > 0 else {
                    throw CheckpointError.shapeMismatch(file: wURL.path, name: ka, expected: [cfg.r, lin.inFeatures], found: ea.shape)
                }
                guard eb.shape == [lin.outFeatures, r] else {
                    throw CheckpointError.shapeMismatch(file: wURL.path, name: kb, expected: [lin.outFeatures, r], found: eb.shape)
                }
                let lora = LoRA(r: r, inFeatures: lin.inFeatures, outFeatures: lin.outFeatures,
                                scale: cfg.scale * weight, dropout: Float(cfg.loraDropout))
                lora.A.copy(from: try st.f32(ka)!)
                lora.B.copy(from: try st.f32(kb)!)
                pending.append((lin, lora))
                used.insert(ka); used.insert(kb)
            }
        }
        if let extra = st.order.first(where: { !used.contains($0) }) {
            throw CheckpointError.unsupported(file: wURL.path, what: "tensor '\(extra)' does not belong to a LoRA target in adapter_config.json")
        }
        for (lin, lora) in pending { lin.adapters.append(lora) }
        return cfg
    }

    /// The safetensors bytes of the model's first adapter on each target (training state).
    public static func encodeWeights(model: LlamaModel) -> [UInt8] {
        var items: [SafeTensorsWriter.Item] = []
        for (i, b) in model.blocks.enumerated() {
            for p in Projection.allCases {
                guard let a = b.linear(p).adapters.first else { continue }
                items.append(.tensor(key(layer: i, p, "A"), a.A))
                items.append(.tensor(key(layer: i, p, "B"), a.B))
            }
        }
        items.sort { $0.name < $1.name }
        return SafeTensorsWriter.encode(items, metadata: ["format": "pt"])
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir` (each file
    /// atomically; the folder is created if needed).
    public static func save(model: LlamaModel, config: AdapterConfig, to dir: URL) throws {
        do { try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true) } catch {
            throw WriteError(path: dir.path, reason: error.localizedDescription)
        }
        try AtomicFile.write(encodeWeights(model: model), to: dir.appendingPathComponent(weightsFile))
        try AtomicFile.write(config.json().serialized() + "\n", to: dir.appendingPathComponent(configFile))
    }
}
