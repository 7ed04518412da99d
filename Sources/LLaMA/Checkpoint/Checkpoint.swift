import Foundation
import Tensor

/// Where model weights come from. The model asks for tensors by their Hugging Face name;
/// readers (safetensors folders, GGUF files) map names to their own storage.
public protocol Checkpoint: AnyObject {
    var config: LlamaConfig { get }
    /// The path shown in messages.
    var source: String { get }
    func has(_ name: String) -> Bool
    /// The tensor as f32, checked against `shape`.
    func tensor(_ name: String, shape: [Int]) throws -> Tensor
    /// The tensor as the checkpoint stores it, when that is a weight format and is `format`
    /// (nil: any): a GGUF file's Q4_1 projections as q4_1, with no dequantize-requantize round
    /// trip, the same bytes llama.cpp reads. nil when it is stored otherwise.
    func storedWeight(_ name: String, shape: [Int], format: (any WeightFormat)?) throws -> Weight?
}

extension Checkpoint {
    public func storedWeight(_ name: String, shape: [Int], format: (any WeightFormat)?) throws -> Weight? { nil }
}

/// A Hugging Face checkpoint folder: config.json plus model.safetensors, or shards listed in
/// model.safetensors.index.json.
public final class SafeTensorsCheckpoint: Checkpoint {
    public let folder: URL
    public let config: LlamaConfig
    public var source: String { folder.path }
    private var files: [String: SafeTensorsFile] = [:]   // by shard file name
    private var location: [String: String] = [:]         // tensor name -> shard file name

    public init(folder: URL) throws {
        self.folder = folder
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: folder.path, isDirectory: &isDir) else {
            throw CheckpointError.notFound(path: folder.path, expected: "a model folder with config.json and model.safetensors, or a .gguf file")
        }
        guard isDir.boolValue else {
            throw CheckpointError.unsupported(file: folder.path, what: "a file that is neither a folder nor a .gguf file")
        }
        let configURL = folder.appendingPathComponent("config.json")
        guard fm.fileExists(atPath: configURL.path) else {
            throw CheckpointError.notFound(path: configURL.path, expected: "the model's config.json")
        }
        config = try LlamaConfig(contentsOf: configURL)

        let single = folder.appendingPathComponent("model.safetensors")
        let index = folder.appendingPathComponent("model.safetensors.index.json")
        if fm.fileExists(atPath: single.path) {
            let f = try SafeTensorsFile(path: single.path)
            files["model.safetensors"] = f
            for n in f.order { location[n] = "model.safetensors" }
        } else if fm.fileExists(atPath: index.path) {
            let j: JSON
            do { j = try JSON.parse(contentsOf: index) } catch let e as JSONError {
                throw CheckpointError.corrupt(file: index.path, detail: e.description)
            }
            guard case .object(let map)? = j["weight_map"] else {
                throw CheckpointError.missingKey(file: index.path, key: "weight_map")
            }
            for (name, v) in map {
                guard let shard = v.string, !shard.contains("/") else {
                    throw CheckpointError.wrongType(file: index.path, key: "weight_map.\(name)", expected: "a shard file name", found: v.typeName)
                }
                if files[shard] == nil {
                    let p = folder.appendingPathComponent(shard)
                    guard fm.fileExists(atPath: p.path) else {
                        throw CheckpointError.notFound(path: p.path, expected: "the shard named in model.safetensors.index.json")
                    }
                    files[shard] = try SafeTensorsFile(path: p.path)
                }
                guard files[shard]?.entries[name] != nil else {
                    throw CheckpointError.missingTensor(file: folder.appendingPathComponent(shard).path, name: name)
                }
                location[name] = shard
            }
        } else {
            for bin in ["pytorch_model.bin", "pytorch_model.bin.index.json", "consolidated.00.pth"]
            where fm.fileExists(atPath: folder.appendingPathComponent(bin).path) {
                throw CheckpointError.pickle(path: folder.appendingPathComponent(bin).path)
            }
            throw CheckpointError.notFound(path: single.path, expected: "model.safetensors or model.safetensors.index.json")
        }
    }

    public func has(_ name: String) -> Bool { location[name] != nil }

    public func tensor(_ name: String, shape: [Int]) throws -> Tensor {
        guard let shard = location[name], let f = files[shard] else {
            // Name the file when there is one (model.safetensors), the folder for shards.
            throw CheckpointError.missingTensor(file: files.count == 1 ? files.values.first!.path : source, name: name)
        }
        guard let e = f.entries[name] else { throw CheckpointError.missingTensor(file: f.path, name: name) }
        guard e.shape == shape else {
            throw CheckpointError.shapeMismatch(file: f.path, name: name, expected: shape, found: e.shape)
        }
        guard let t = try f.f32(name) else { throw CheckpointError.missingTensor(file: f.path, name: name) }
        // The source pages are not needed again (as GGUFCheckpoint): without this, a 7B bf16
        // folder's 13.5 GB of mapped pages would all count in the loader's resident memory.
        f.file.evict(e.range)
        try checkFinite(t, name: name, file: f.path)
        return t
    }

    /// The dtype the checkpoint stores most of its weights in (for exports' defaults).
    public var storedDType: DType? {
        files.values.first?.entries["model.embed_tokens.weight"]?.dtype
    }
}

/// Opens a folder (safetensors) or a `.gguf` file.
public func openCheckpoint(_ path: String) throws -> Checkpoint {
    let url = URL(fileURLWithPath: path)
    let ext = url.pathExtension.lowercased()
    if ext == "bin" || ext == "pt" || ext == "pth" { throw CheckpointError.pickle(path: path) }
    if ext == "gguf" { return try GGUFCheckpoint(path: path) }
    return try SafeTensorsCheckpoint(folder: url)
}

/// NaN or infinity in a weight (a damaged download, an overflowed conversion, a NaN scale in a
/// quantized block) would silently turn every output into NaN: refuse it at load, naming the
/// tensor and the first bad element.
public func checkFinite(_ t: Tensor, name: String, file: String) throws {
    let p = t.data
    // x * 0 is 0 for every finite x and NaN otherwise: one vectorizable pass, then a search
    // for the first bad element only when there is one.
    var acc: Float = 0
    for i in 0..<t.count { acc += p[i] * 0 }
    if acc == 0 { return }
    for i in 0..<t.count where !p[i].isFinite {
        throw CheckpointError.nonFinite(file: file, name: name, index: i, value: p[i])
    }
}
