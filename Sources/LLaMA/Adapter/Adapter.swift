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
    /// Shapes are checked against the model (by `AdapterFactors`) before anything is attached.
    @discardableResult
    public static func load(_ dir: URL, into model: LlamaModel, weight: Float = 1) throws -> AdapterConfig {
        let f = try AdapterFactors.load(dir, weight: weight, model: model.config)
        for (i, b) in model.blocks.enumerated() {
            for p in f.config.targetModules {
                guard let (A, B) = f.factors[p.weightName(layer: i)] else { continue }
                let lin = b.linear(p)
                let lora = LoRA(r: A.shape[0], inFeatures: lin.inFeatures, outFeatures: lin.outFeatures,
                                scale: f.scale, dropout: Float(f.config.loraDropout))
                lora.A.copy(from: A)
                lora.B.copy(from: B)
                lin.adapters.append(lora)
            }
        }
        return f.config
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
