import Foundation
import Tensor

/// What a `lora finetune` run will hold, estimated from the shapes before any of it is
/// allocated, against the memory the machine can give: the frozen weights, the LoRA state
/// (parameters, gradients, AdamW's two moments and the best-adapter copy) and the activations
/// of the longest micro-batch, with and without gradient checkpointing.
public struct MemoryPlan: Sendable, Equatable {
    public var weightBytes: Int
    public var loraParameters: Int
    /// Five f32 copies per parameter: value, gradient, AdamW m and v, the best-eval copy.
    public var loraStateBytes: Int { loraParameters * 4 * 5 }
    public var activationBytes: Int
    public var checkpointedActivationBytes: Int
    /// Attention's per-call scratch and the per-worker packing buffers of the products.
    public var scratchBytes: Int
    /// The runtime, tokenizer, examples and everything else not counted above (an allowance).
    public var overheadBytes: Int
    /// What the machine can give (nil: unknown, the plan is printed but never refuses).
    public var availableBytes: Int?
    /// The micro-batch the activations are sized for.
    public var microBatch: Int, tokens: Int

    public static let overheadAllowance = 200 << 20

    public func totalBytes(checkpointing: Bool) -> Int {
        weightBytes + loraStateBytes + (checkpointing ? checkpointedActivationBytes : activationBytes) + scratchBytes + overheadBytes
    }

    public func fits(checkpointing: Bool) -> Bool {
        guard let a = availableBytes else { return true }
        return totalBytes(checkpointing: checkpointing) <= a
    }

    /// The plan for training `adapter` (its shapes: rank and targets) on a model of `config`
    /// whose weights take `weightBytes`, at micro-batch [microBatch, tokens].
    public init(config: LlamaConfig, weightBytes: Int, adapter: AdapterConfig, microBatch: Int, tokens: Int,
                threads: Int, availableBytes: Int?) {
        self.weightBytes = weightBytes
        self.microBatch = microBatch
        self.tokens = tokens
        self.availableBytes = availableBytes
        var sites: [(projection: Projection, r: Int, inFeatures: Int, dropout: Bool)] = []
        var params = 0, doraOut = 0
        for l in 0..<config.numHiddenLayers where adapter.layersToTransform?.contains(l) ?? true {
            for p in adapter.targetModules {
                let shape = p.shape(config)
                sites.append((p, adapter.r, shape[1], adapter.loraDropout > 0))
                params += adapter.r * (shape[0] + shape[1]) + (adapter.useDora ? shape[0] : 0)   // + DoRA's magnitude
                if adapter.useDora { doraOut = max(doraOut, shape[0]) }
            }
        }
        loraParameters = params
        activationBytes = Activations.plannedBytes(config: config, sites: sites, maxB: microBatch, maxT: tokens, checkpointing: false,
                                                        doraOut: doraOut)
        checkpointedActivationBytes = Activations.plannedBytes(config: config, sites: sites, maxB: microBatch, maxT: tokens,
                                                               checkpointing: true, doraOut: doraOut)
        // Attention: two [64, T] blocks and a group's transposed keys and values per worker, and
        // every group's transposed keys in forward; products: a packed panel of the widest
        // weight per worker (at most 4 MB each in the C kernels' blocking).
        let hd = config.headDim, nKV = config.numKeyValueHeads
        scratchBytes = (FlashAttention.scratchCount(threads: threads, T: tokens, hd: hd)
                        + FlashAttention.keysScratchCount(B: microBatch, T: tokens, nKV: nKV, hd: hd)) * 4 + threads * (4 << 20)
        overheadBytes = Self.overheadAllowance
    }

    /// The frozen weights' bytes as the loader will hold them: projections in `quantization`'s
    /// format (for `stored`, `storedBytes(name)` gives a tensor's bytes as the file stores it
    /// when that is a weight format), embeddings, norms and an untied lm_head in f32.
    public static func weightBytes(config c: LlamaConfig, quantization: Quantization,
                                   storedBytes: (String) -> Int? = { _ in nil }) -> Int {
        let C = c.hiddenSize, V = c.vocabSize
        var n = V * C * 4 * (c.tieWordEmbeddings ? 1 : 2) + C * 4 * (2 * c.numHiddenLayers + 1)
        for l in 0..<c.numHiddenLayers {
            for p in Projection.allCases {
                let shape = p.shape(c)
                if quantization == .stored, let b = storedBytes(p.weightName(layer: l)) { n += b; continue }
                n += quantization.format.byteCount(rows: shape[0], cols: shape[1])
            }
        }
        return n
    }

    /// The plan as a table: one line per item, the totals with and without checkpointing, and
    /// what is available.
    public func table(checkpointing chosen: Bool) -> String {
        func gb(_ b: Int) -> String { String(format: "%8.2f GB", Double(b) / 1e9) }
        var lines = [
            "memory plan (micro-batch \(microBatch) x \(tokens) tokens):",
            "  weights                          \(gb(weightBytes))",
            "  LoRA state (5 f32 per parameter) \(gb(loraStateBytes))   (\(loraParameters) parameters)",
            "  activations, no checkpointing    \(gb(activationBytes))",
            "  activations, checkpointing       \(gb(checkpointedActivationBytes))",
            "  scratch                          \(gb(scratchBytes))",
            "  runtime and data (allowance)     \(gb(overheadBytes))",
            "  total without checkpointing      \(gb(totalBytes(checkpointing: false)))" + (chosen ? "" : "  <- this run"),
            "  total with checkpointing         \(gb(totalBytes(checkpointing: true)))" + (chosen ? "  <- this run" : ""),
        ]
        lines.append("  available                        " + (availableBytes.map(gb) ?? "   unknown"))
        return lines.joined(separator: "\n")
    }
}

/// The memory this process can still take: /proc/meminfo's MemAvailable, lowered by a cgroup
/// limit (v2 memory.max - memory.current, or v1 limit - usage) where one is set.
public enum AvailableMemory {
    public static func read(root: String = "/") -> Int? {
        func text(_ p: String) -> String? { try? String(contentsOfFile: root + p, encoding: .utf8) }
        func number(_ p: String) -> Int? { text(p).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) } }
        var best: Int? = nil
        func lower(_ v: Int?) { if let v { best = min(best ?? v, v) } }
        if let m = text("proc/meminfo") {
            for line in m.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
                lower(line.split(separator: " ").compactMap { Int($0) }.first.map { $0 * 1024 })
            }
        }
        if let limit = number("sys/fs/cgroup/memory.max"), let used = number("sys/fs/cgroup/memory.current") {
            lower(max(0, limit - used))   // "max" (no limit) does not parse and is skipped
        }
        if let limit = number("sys/fs/cgroup/memory/memory.limit_in_bytes"), limit < 1 << 60,
           let used = number("sys/fs/cgroup/memory/memory.usage_in_bytes") {
            lower(max(0, limit - used))
        }
        return best
    }

    /// "24G", "512M", "1000000" (bytes): for LORA_AVAILABLE_MEMORY, which tests and planning
    /// use to stand for another machine.
    public static func parse(_ s: String) -> Int? {
        let t = s.trimmingCharacters(in: .whitespaces).uppercased()
        let units: [(String, Double)] = [("GB", 1e9), ("MB", 1e6), ("KB", 1e3), ("G", 1_073_741_824), ("M", 1_048_576), ("K", 1024)]
        for (u, m) in units where t.hasSuffix(u) {
            guard let v = Double(t.dropLast(u.count)), v.isFinite, v >= 0, v < 1e15 else { return nil }
            return Int(v * m)
        }
        guard let v = Int(t), v >= 0 else { return nil }
        return v
    }
}
