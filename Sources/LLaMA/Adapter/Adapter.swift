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

    /// DoRA's magnitude vector [out]: PEFT saves it without a `.weight` suffix.
    public static func magnitudeKey(layer: Int, _ p: Projection) -> String {
        "base_model.model.\(p.path(layer: layer)).lora_magnitude_vector"
    }

    /// Reads an adapter folder; shapes are checked against the model (by `AdapterFactors`).
    public static func load(_ dir: URL, model: LlamaConfig) throws -> LoRAAdapter {
        LoRAAdapter(factors: try AdapterFactors.load(dir, model: model), model: model)
    }

    /// Reads every `DIR[:WEIGHT]` spec into one weighted set (generate's and eval's stacking).
    public static func loadSet(_ specs: [AdapterSpec], model: LlamaConfig) throws -> AdapterSet {
        let set = AdapterSet(try specs.map { (try load(URL(fileURLWithPath: $0.path), model: model), $0.weight) })
        try set.validate()
        return set
    }

    /// The safetensors bytes of an adapter's trainable tensors, sorted by name.
    public static func encodeWeights(_ adapter: LoRAAdapter) -> [UInt8] {
        var items = adapter.trainable.map { SafeTensorsWriter.Item.tensor($0.name, $0.param) }
        items.sort { $0.name < $1.name }
        return SafeTensorsWriter.encode(items, metadata: ["format": "pt"])
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir` (each file
    /// atomically; the folder is created if needed).
    public static func save(_ adapter: LoRAAdapter, to dir: URL) throws {
        do { try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true) } catch {
            throw WriteError(path: dir.path, reason: ioReason(error))
        }
        try AtomicFile.write(encodeWeights(adapter), to: dir.appendingPathComponent(weightsFile))
        try AtomicFile.write(adapter.config.json().serialized() + "\n", to: dir.appendingPathComponent(configFile))
    }
}
