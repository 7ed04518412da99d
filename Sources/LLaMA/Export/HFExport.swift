import Foundation
import Tensor

/// Writes a merged model as a Hugging Face folder that `AutoModelForCausalLM.from_pretrained`
/// loads: config.json, generation_config.json, model.safetensors (or shards
/// model-0000i-of-0000n.safetensors listed in model.safetensors.index.json) and the base's
/// tokenizer files (from a GGUF base: its tokenizer metadata as tokenizer.json or
/// tokenizer.model, see `HFTokenizerExport`). The folder is built under a temporary sibling and renamed into place at the
/// end; tensors are merged and written one at a time, so memory holds one tensor, not the model.
public enum HFExport {
    public struct Options: Sendable {
        /// F32, F16 or BF16 (safetensors has no Q8_0). alpaca-lora exported f16.
        public var dtype: ExportDType = .f16
        /// Shards above this many bytes (transformers' max_shard_size, default "2GB").
        public var maxShardSize: Int = 2_000_000_000
        public init(dtype: ExportDType = .f16, maxShardSize: Int = 2_000_000_000) {
            self.dtype = dtype; self.maxShardSize = maxShardSize
        }
    }

    public struct Summary: Sendable {
        /// File names written into the folder.
        public var files: [String] = []
        public var shards = 0
        /// Bytes of tensor data.
        public var tensorBytes = 0
        /// Things the user should know (e.g. no tokenizer files to copy).
        public var notes: [String] = []
    }

    /// Tokenizer files copied from the base folder when present.
    public static let tokenizerFiles = ["tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                                        "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                                        "vocab.json", "merges.txt"]

    @discardableResult
    public static func write(_ merger: Merger, to url: URL, options: Options = Options(),
                             progress: ProgressHandler? = nil) throws -> Summary {
        let dtype: DType
        switch options.dtype {
        case .f32: dtype = .f32
        case .f16: dtype = .f16
        case .bf16: dtype = .bf16
        case .q8_0: throw ExportError.unsupported(what: "dtype q8_0 in a Hugging Face (safetensors) export; use --format gguf, or f32, f16 or bf16")
        }
        let sizes = merger.tensors.map { (name: $0.name, bytes: $0.shape.reduce(1, *) * dtype.size) }
        let plan = shards(sizes, maxBytes: options.maxShardSize)
        let shapes = Dictionary(uniqueKeysWithValues: merger.tensors.map { ($0.name, $0.shape) })
        let folder = (merger.base as? SafeTensorsCheckpoint)?.folder
        var summary = Summary()
        summary.shards = plan.count
        summary.tensorBytes = sizes.reduce(0) { $0 + $1.bytes }

        try AtomicFile.writeDirectory(url) { dir in
            var done = 0, written = 0
            var weightMap: [(String, JSON)] = []
            for (k, names) in plan.enumerated() {
                let file = plan.count == 1 ? "model.safetensors"
                    : String(format: "model-%05d-of-%05d.safetensors", k + 1, plan.count)
                let items = names.map { n in SafeTensorsWriter.Item(name: n, dtype: dtype, shape: shapes[n]!) { _ in } }
                try AtomicFile.write(to: dir.appendingPathComponent(file)) { h in
                    try h.write(contentsOf: Data(SafeTensorsWriter.header(items, metadata: ["format": "pt"])))
                    for n in names {
                        let t = try merger.tensor(n)
                        let item = SafeTensorsWriter.Item.tensor(n, t, as: dtype)
                        var bytes = [UInt8](repeating: 0, count: item.byteCount)
                        bytes.withUnsafeMutableBytes { item.bytes($0) }
                        try h.write(contentsOf: Data(bytes))
                        done += 1; written += bytes.count
                        progress?(TaskProgress(task: .merge, done: done, total: merger.tensors.count, unit: "tensors", bytes: written))
                    }
                }
                summary.files.append(file)
                weightMap += names.map { ($0, .string(file)) }
            }
            if plan.count > 1 {
                let index = JSON.object([
                    ("metadata", .object([("total_size", .int(Int64(summary.tensorBytes)))])),
                    ("weight_map", .object(weightMap.sorted { $0.0 < $1.0 })),
                ])
                try AtomicFile.write(index.serialized() + "\n", to: dir.appendingPathComponent("model.safetensors.index.json"))
                summary.files.append("model.safetensors.index.json")
            }
            try AtomicFile.write(merger.config.json(dtype: options.dtype.torchName).serialized() + "\n",
                                 to: dir.appendingPathComponent("config.json"))
            summary.files.append("config.json")
            try AtomicFile.write(generationConfig(merger.config, folder: folder), to: dir.appendingPathComponent("generation_config.json"))
            summary.files.append("generation_config.json")
            if let folder {
                var copied = 0
                for f in tokenizerFiles {
                    let src = folder.appendingPathComponent(f)
                    guard FileManager.default.fileExists(atPath: src.path) else { continue }
                    let data: Data
                    do { data = try Data(contentsOf: src) } catch {
                        throw CheckpointError.unreadable(path: src.path, reason: ioReason(error))
                    }
                    try AtomicFile.write([UInt8](data), to: dir.appendingPathComponent(f))
                    summary.files.append(f)
                    copied += 1
                }
                if copied == 0 { summary.notes.append("\(folder.path) has no tokenizer files to copy") }
            } else if let g = merger.base as? GGUFCheckpoint {
                // The GGUF's tokenizer metadata, rewritten as the files transformers reads.
                for (name, bytes) in try HFTokenizerExport.files(gguf: g.file, contextLength: merger.config.maxPositionEmbeddings) {
                    try AtomicFile.write(bytes, to: dir.appendingPathComponent(name))
                    summary.files.append(name)
                }
            } else {
                summary.notes.append("\(merger.base.source) has no tokenizer files to copy")
            }
        }
        return summary
    }

    /// The base's generation_config.json, or one made from config.json's token ids (as
    /// transformers does with `_from_model_config`).
    static func generationConfig(_ c: LlamaConfig, folder: URL?) throws -> String {
        if let src = folder?.appendingPathComponent("generation_config.json"),
           FileManager.default.fileExists(atPath: src.path) {
            do { return try String(contentsOf: src, encoding: .utf8) } catch {
                throw CheckpointError.unreadable(path: src.path, reason: ioReason(error))
            }
        }
        var items: [(String, JSON)] = [("_from_model_config", .bool(true))]
        if let b = c.bosTokenID { items.append(("bos_token_id", .int(Int64(b)))) }
        if c.eosTokenIDs.count == 1 { items.append(("eos_token_id", .int(Int64(c.eosTokenIDs[0])))) }
        else if !c.eosTokenIDs.isEmpty { items.append(("eos_token_id", .array(c.eosTokenIDs.map { .int(Int64($0)) }))) }
        if let p = c.padTokenID { items.append(("pad_token_id", .int(Int64(p)))) }
        return JSON.object(items).serialized() + "\n"
    }

    /// Groups tensors into shards in order, as huggingface_hub's split_torch_state_dict_into_shards:
    /// a tensor that would take the current shard past `maxBytes` starts a new one; a tensor
    /// larger than `maxBytes` gets a shard of its own.
    public static func shards(_ sizes: [(name: String, bytes: Int)], maxBytes: Int) -> [[String]] {
        var out: [[String]] = []
        var current: [String] = [], size = 0
        for (name, bytes) in sizes {
            if bytes > maxBytes {
                if !current.isEmpty { out.append(current); current = []; size = 0 }
                out.append([name])
                continue
            }
            if size + bytes > maxBytes, !current.isEmpty { out.append(current); current = []; size = 0 }
            current.append(name)
            size += bytes
        }
        if !current.isEmpty || out.isEmpty { out.append(current) }
        return out
    }

    /// "2GB" (10^9), "500MB", "10KB", "1.5GiB" (2^30), or a plain number of bytes, as
    /// transformers' max_shard_size takes it. Nil for anything else, or a size below 1 byte.
    public static func parseSize(_ text: String) -> Int? {
        let s = text.trimmingCharacters(in: .whitespaces)
        let units: [(String, Double)] = [("TIB", 1_099_511_627_776), ("GIB", 1_073_741_824), ("MIB", 1_048_576), ("KIB", 1024),
                                         ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3), ("B", 1)]
        var number = Substring(s), factor = 1.0
        for (u, f) in units where s.uppercased().hasSuffix(u) {
            number = s.dropLast(u.count)
            factor = f
            break
        }
        guard let v = Double(number.trimmingCharacters(in: .whitespaces)), v.isFinite, v * factor >= 1, v * factor < 1e18 else { return nil }
        return Int(v * factor)
    }
}
