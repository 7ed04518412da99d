import ArgumentParser
import Foundation
import LLaMA
import Tensor

// Options shared by the subcommands, one type each (swift-argument-parser option groups), so a
// flag means the same thing, parses the same way and is validated once everywhere. `finetune`
// mirrors every YAML key as its own flag (TrainConfig is its one source of defaults) and uses
// the same value types (`Quantization`, `AdapterSpec`).

extension Quantization: ExpressibleByArgument {}
extension GradientCheckpointing: ExpressibleByArgument {}

/// `--base-model` with how its projections are stored.
struct ModelOptions: ParsableArguments {
    @Option(name: .customLong("base-model"), help: "Model: a Hugging Face folder (config.json, model.safetensors, tokenizer) or a .gguf file.")
    var baseModel: String

    @Option(help: "Frozen projection weights: none (f32), bf16, int8 (bitsandbytes row-wise, multiplied in f32), llm_int8 (the same bytes, LLM.int8() products with int8 activations as bitsandbytes on a GPU), q8_0, q4_0, q4_1 (ggml blocks), nf4 (bitsandbytes 4-bit NF4 with double quantization, QLoRA), or stored (a GGUF file's own Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/Q4_K/Q5_K/Q6_K/BF16 tensors, memory-mapped). Default: none for generate, int8 for eval (as finetune).")
    var quantization: Quantization?

    @Option(name: .customLong("load-8bit"), help: "alpaca-lora's flag: true = --quantization int8, false = none.")
    var load8bit: String?

    mutating func validate() throws {
        if let s = load8bit {
            guard let b = Bool.parse(s) else { throw ValidationError("--load-8bit takes true or false, not '\(s)'") }
            if let q = quantization, !q.agrees(load8bit: b) {
                throw ValidationError("--load-8bit \(s) disagrees with --quantization \(q.rawValue); give one of them")
            }
        }
    }

    /// The quantization asked for, else `fallback` (the command's default).
    func quantization(default fallback: Quantization) -> Quantization {
        if let q = quantization { return q }  // agrees with --load-8bit (validate)
        if let s = load8bit, let b = Bool.parse(s) { return Quantization(load8bit: b) }
        return fallback
    }

    func load(default fallback: Quantization, ctx: ExecutionContext, purpose: LoadPurpose = .training,
              progress: ProgressRenderer? = nil) throws -> LoadedModel {
        try loadModel(baseModel, quantization: quantization(default: fallback), ctx: ctx, purpose: purpose, progress: progress)
    }
}

/// `--lora-weights PATH[:WEIGHT]`, repeatable: a weighted stack of PEFT adapter folders or GGUF LoRA files.
struct AdapterOptions: ParsableArguments {
    @Option(name: .customLong("lora-weights"), help: "PEFT adapter folder or GGUF LoRA file (llama.cpp's), optionally PATH:WEIGHT (default weight 1); repeat to stack adapters.")
    var loraWeights: [String] = []

    mutating func validate() throws {
        for a in loraWeights where AdapterSpec(argument: a) == nil {
            throw ValidationError("--lora-weights '\(a)': expected DIR or DIR:WEIGHT")
        }
    }

    var specs: [AdapterSpec] { loraWeights.compactMap(AdapterSpec.init(argument:)) }

    /// Every adapter read and checked against `model`, as one weighted set.
    func load(model: LlamaConfig) throws -> AdapterSet { try Adapter.loadSet(specs, model: model) }
}

extension DeviceRequest: ExpressibleByArgument {
    public init?(argument: String) { self.init(argument) }
}

/// `--threads` and `--device`, and the execution context built from them.
struct ComputeOptions: ParsableArguments {
    @Option(help: "Worker threads (0 = all cores).")
    var threads = 0

    @Option(help: "Where to compute: auto (a GPU when CUDA loads, else the CPU; says which on stderr), cpu, cuda or cuda:N.")
    var device: DeviceRequest = .auto

    mutating func validate() throws {
        if threads < 0 || threads > 1024 { throw ValidationError("--threads \(threads): expected 0 (all cores) to 1024") }
    }

    func context() throws -> (ExecutionContext, DeviceLine) { try makeContext(threads: threads, device: device) }
}

/// The context for `device` with `threads` CPU workers (0 = all cores) and the kernel family
/// LORA_KERNELS names; prints which device runs when that was not the user's explicit choice.
func makeContext(threads: Int, device: DeviceRequest) throws -> (ExecutionContext, DeviceLine) {
    let (ctx, line) = try DeviceSelection.context(for: device, threads: threads, environment: ProcessInfo.processInfo.environment)
    return (ctx, DeviceLine(text: line))
}

/// The stderr line saying which device runs (none for an explicit --device cpu). Commands print
/// it once the model has loaded, so an error before that stays one line; --quiet drops it and
/// --json makes it an event.
struct DeviceLine {
    let text: String?
    func print(quiet: Bool, json: Bool = false) {
        guard let text, !quiet else { return }
        note(json ? JSON.object([("event", .string("device")), ("message", .string(text))]).serialized(pretty: false) : text)
    }
}

/// Loads `path` (a folder, a .gguf file or a Hub name in the local cache), reporting tensors
/// loaded (and quantized) to `progress`.
func loadModel(_ path: String, quantization q: Quantization, ctx: ExecutionContext, purpose: LoadPurpose = .training,
               progress: ProgressRenderer?) throws -> LoadedModel {
    let resolved = try resolveModelPath(path)
    progress?.labels[.load] = [.none, .stored].contains(q) ? "loading" : "loading and quantizing (\(q.rawValue))"
    progress?.begin(.load)
    return try LoadedModel(path: resolved, quantization: q, pool: ctx.pool, purpose: purpose, progress: progress?.handler)
}

/// A path as given when it exists; else a Hub name (`ORG/NAME`) looked up in the local
/// Hugging Face cache (HF_HUB_CACHE, HF_HOME, ~/.cache/huggingface/hub); never downloads.
func resolveModelPath(_ path: String) throws -> String {
    if FileManager.default.fileExists(atPath: path) || !HubCache.isRepoID(path) { return path }
    return try HubCache.resolve(path, environment: ProcessInfo.processInfo.environment).path
}
