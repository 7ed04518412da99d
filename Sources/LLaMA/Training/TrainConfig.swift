import Foundation
import Tensor

/// Every `lora finetune` option, with the YAML key as its name. The defaults are alpaca-lora
/// finetune.py's (and transformers TrainingArguments' as finetune.py sets them); this struct is
/// the one place they live: configs/finetune.yml, the CLI flags and the README repeat them.
public struct TrainConfig: Codable, Sendable, Equatable {
    // Model and data
    /// alpaca-lora has no default model; ours is the one setup downloads.
    public var baseModel: String = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    /// alpaca-lora's default, yahma/alpaca-cleaned, is a Hub dataset (no network here); the
    /// bundled task set is ours.
    public var dataPath: String = "data/tasks_train.json"
    public var outputDir: String = "./lora-alpaca"
    // Training hyper-parameters
    public var batchSize: Int = 128
    public var microBatchSize: Int = 4
    public var numEpochs: Double = 3
    public var learningRate: Double = 3e-4
    public var cutoffLen: Int = 256
    public var valSetSize: Int = 2000
    // LoRA hyper-parameters
    public var loraR: Int = 8
    public var loraAlpha: Double = 16
    public var loraDropout: Double = 0.05
    public var loraTargetModules: [Projection] = [.q, .v]
    public var useRslora: Bool = false
    /// DoRA (PEFT's use_dora): a trained magnitude per output row of each target.
    public var useDora: Bool = false
    // LLM hyper-parameters
    public var trainOnInputs: Bool = true
    public var addEosToken: Bool = false
    public var groupByLength: Bool = false
    public var promptTemplateName: String = "alpaca"
    /// For chat-format data (`{"messages": [...]}` records): a template kind (chatml, llama2,
    /// llama3, mistral, alpaca) or a Jinja file; nil uses the model's own chat template.
    public var chatTemplate: String? = nil
    public var resumeFromCheckpoint: String? = nil
    // Trainer (transformers TrainingArguments as finetune.py sets them)
    public var warmupSteps: Int = 100
    public var loggingSteps: Int = 10
    public var evalSteps: Int = 200
    public var saveSteps: Int = 200
    public var saveTotalLimit: Int = 3
    public var maxGradNorm: Double = 1.0
    public var weightDecay: Double = 0
    public var seed: UInt64 = 42
    public var maxSteps: Int = -1
    // Machine
    /// What the frozen projections are stored as; `load_8bit: true|false` is read as int8|none.
    public var quantization: Quantization = .int8
    public var threads: Int = 0
    /// Keep only each block's input and recompute the block in backward (`auto`: when the
    /// memory plan without it does not fit the available memory; see `MemoryPlan`).
    public var gradientCheckpointing: GradientCheckpointing = .auto
    /// auto: a GPU when CUDA loads, else the CPU.
    public var device: DeviceRequest = .auto

    public init() {}

    public enum CodingKeys: String, CodingKey, CaseIterable {
        case baseModel = "base_model", dataPath = "data_path", outputDir = "output_dir"
        case batchSize = "batch_size", microBatchSize = "micro_batch_size", numEpochs = "num_epochs"
        case learningRate = "learning_rate", cutoffLen = "cutoff_len", valSetSize = "val_set_size"
        case loraR = "lora_r", loraAlpha = "lora_alpha", loraDropout = "lora_dropout"
        case loraTargetModules = "lora_target_modules", useRslora = "use_rslora", useDora = "use_dora"
        case trainOnInputs = "train_on_inputs", addEosToken = "add_eos_token", groupByLength = "group_by_length"
        case promptTemplateName = "prompt_template_name", chatTemplate = "chat_template", resumeFromCheckpoint = "resume_from_checkpoint"
        case warmupSteps = "warmup_steps", loggingSteps = "logging_steps", evalSteps = "eval_steps"
        case saveSteps = "save_steps", saveTotalLimit = "save_total_limit", maxGradNorm = "max_grad_norm"
        case weightDecay = "weight_decay", seed, maxSteps = "max_steps", quantization, threads
        case gradientCheckpointing = "gradient_checkpointing", device
    }

    /// Keys accepted for compatibility and mapped onto a CodingKeys one.
    public enum AliasKeys: String, CodingKey, CaseIterable {
        /// alpaca-lora's flag: true = int8, false = none.
        case load8bit = "load_8bit"
    }

    /// Missing keys keep their defaults; present keys must have the right type.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = TrainConfig.defaults
        func get<T: Decodable>(_ k: CodingKeys, _ def: T) throws -> T { try c.decodeIfPresent(T.self, forKey: k) ?? def }
        baseModel = try get(.baseModel, d.baseModel)
        dataPath = try get(.dataPath, d.dataPath)
        outputDir = try get(.outputDir, d.outputDir)
        batchSize = try get(.batchSize, d.batchSize)
        microBatchSize = try get(.microBatchSize, d.microBatchSize)
        numEpochs = try get(.numEpochs, d.numEpochs)
        learningRate = try get(.learningRate, d.learningRate)
        cutoffLen = try get(.cutoffLen, d.cutoffLen)
        valSetSize = try get(.valSetSize, d.valSetSize)
        loraR = try get(.loraR, d.loraR)
        loraAlpha = try get(.loraAlpha, d.loraAlpha)
        loraDropout = try get(.loraDropout, d.loraDropout)
        loraTargetModules = try get(.loraTargetModules, d.loraTargetModules)
        useRslora = try get(.useRslora, d.useRslora)
        useDora = try get(.useDora, d.useDora)
        trainOnInputs = try get(.trainOnInputs, d.trainOnInputs)
        addEosToken = try get(.addEosToken, d.addEosToken)
        groupByLength = try get(.groupByLength, d.groupByLength)
        promptTemplateName = try get(.promptTemplateName, d.promptTemplateName)
        chatTemplate = try c.decodeIfPresent(String.self, forKey: .chatTemplate)
        resumeFromCheckpoint = try c.decodeIfPresent(String.self, forKey: .resumeFromCheckpoint)
        warmupSteps = try get(.warmupSteps, d.warmupSteps)
        loggingSteps = try get(.loggingSteps, d.loggingSteps)
        evalSteps = try get(.evalSteps, d.evalSteps)
        saveSteps = try get(.saveSteps, d.saveSteps)
        saveTotalLimit = try get(.saveTotalLimit, d.saveTotalLimit)
        maxGradNorm = try get(.maxGradNorm, d.maxGradNorm)
        weightDecay = try get(.weightDecay, d.weightDecay)
        seed = try get(.seed, d.seed)
        maxSteps = try get(.maxSteps, d.maxSteps)
        quantization = try get(.quantization, d.quantization)
        let aliases = try decoder.container(keyedBy: AliasKeys.self)
        if let l8 = try aliases.decodeIfPresent(Bool.self, forKey: .load8bit) {
            if c.contains(.quantization) {
                if !quantization.agrees(load8bit: l8) {
                    throw ConfigError.badValue(key: AliasKeys.load8bit.rawValue, value: "\(l8)",
                                               expected: "to agree with quantization: \(quantization.rawValue) (give one of the two)")
                }
            } else {
                quantization = Quantization(load8bit: l8)
            }
        }
        threads = try get(.threads, d.threads)
        gradientCheckpointing = try get(.gradientCheckpointing, d.gradientCheckpointing)
        device = try get(.device, d.device)
    }

    public static let defaults = TrainConfig()

    /// The settings as YAML, one `key: value` line each in CodingKeys order (what
    /// `lora finetune --print-config` shows).
    public var yaml: String {
        func num(_ d: Double) -> String { d == d.rounded() && abs(d) < 1e15 ? String(format: "%.1f", d) : "\(d)" }
        func str(_ s: String) -> String { JSON.string(s).serialized(pretty: false) }
        var out = ""
        for k in CodingKeys.allCases {
            let v: String
            switch k {
            case .baseModel: v = str(baseModel)
            case .dataPath: v = str(dataPath)
            case .outputDir: v = str(outputDir)
            case .batchSize: v = "\(batchSize)"
            case .microBatchSize: v = "\(microBatchSize)"
            case .numEpochs: v = num(numEpochs)
            case .learningRate: v = "\(learningRate)"
            case .cutoffLen: v = "\(cutoffLen)"
            case .valSetSize: v = "\(valSetSize)"
            case .loraR: v = "\(loraR)"
            case .loraAlpha: v = num(loraAlpha)
            case .loraDropout: v = "\(loraDropout)"
            case .loraTargetModules: v = "[" + loraTargetModules.map(\.rawValue).joined(separator: ", ") + "]"
            case .useRslora: v = "\(useRslora)"
            case .useDora: v = "\(useDora)"
            case .trainOnInputs: v = "\(trainOnInputs)"
            case .addEosToken: v = "\(addEosToken)"
            case .groupByLength: v = "\(groupByLength)"
            case .promptTemplateName: v = str(promptTemplateName)
            case .chatTemplate: v = chatTemplate.map(str) ?? "null"
            case .resumeFromCheckpoint: v = resumeFromCheckpoint.map(str) ?? "null"
            case .warmupSteps: v = "\(warmupSteps)"
            case .loggingSteps: v = "\(loggingSteps)"
            case .evalSteps: v = "\(evalSteps)"
            case .saveSteps: v = "\(saveSteps)"
            case .saveTotalLimit: v = "\(saveTotalLimit)"
            case .maxGradNorm: v = num(maxGradNorm)
            case .weightDecay: v = num(weightDecay)
            case .seed: v = "\(seed)"
            case .maxSteps: v = "\(maxSteps)"
            case .quantization: v = quantization.rawValue
            case .threads: v = "\(threads)"
            case .gradientCheckpointing: v = gradientCheckpointing.rawValue
            case .device: v = device.description
            }
            out += "\(k.rawValue): \(v)\n"
        }
        return out
    }

    /// Upper (and lower) bounds of every size and hyper-parameter, checked by `validate()` before
    /// anything is allocated from them. Documented in README's finetune section; each is far past
    /// what a CPU run uses and small enough that buffers sized from it cannot overflow.
    public enum Limits {
        public static let loraR = 1...1024
        public static let microBatchSize = 1...1024
        public static let batchSize = 1...65536
        public static let cutoffLen = 2...(1 << 20)            // also at most the model's context
        public static let numEpochs = 0.0...10_000
        public static let maxSteps = -1...100_000_000          // -1 or 0: from num_epochs
        public static let valSetSize = 0...100_000_000
        public static let steps = 1...100_000_000              // logging, eval and save steps
        public static let warmupSteps = 0...100_000_000
        public static let saveTotalLimit = 1...10_000
        public static let threads = 0...4096
        public static let learningRate = 1e-12...10.0
        public static let loraAlpha = 1e-12...1e6
        public static let maxGradNorm = 1e-12...1e9
        public static let weightDecay = 0.0...10.0
        /// A finetune YAML file: bytes, and nesting of mappings/sequences (a flat file uses 2).
        public static let configFileBytes = 1 << 20
        public static let configNesting = 32
    }

    public var gradientAccumulationSteps: Int { batchSize / microBatchSize }

    public var adapterConfig: AdapterConfig {
        AdapterConfig(r: loraR, loraAlpha: loraAlpha, loraDropout: loraDropout, targetModules: loraTargetModules,
                      useRslora: useRslora, useDora: useDora, baseModelNameOrPath: baseModel)
    }

    /// Refuses nonsense before any work starts; each message names the key and the value.
    /// Ranges come from `Limits`; NaN and infinities fail every range check.
    public func validate() throws {
        func bad(_ k: CodingKeys, _ v: Any, _ e: String) -> ConfigError { .badValue(key: k.rawValue, value: "\(v)", expected: e) }
        func check(_ k: CodingKeys, _ v: Int, _ r: ClosedRange<Int>) throws {
            guard r.contains(v) else { throw bad(k, v, "an integer in \(r.lowerBound) ... \(r.upperBound)") }
        }
        func check(_ k: CodingKeys, _ v: Double, _ r: ClosedRange<Double>, _ what: String) throws {
            guard v.isFinite, r.contains(v) else { throw bad(k, v, "\(what), at most \(r.upperBound)") }
        }
        if baseModel.isEmpty { throw ConfigError.missing(key: CodingKeys.baseModel.rawValue) }
        if outputDir.isEmpty { throw ConfigError.missing(key: CodingKeys.outputDir.rawValue) }
        try check(.loraR, loraR, Limits.loraR)
        try check(.loraAlpha, loraAlpha, Limits.loraAlpha, "a positive finite number")
        if !(loraDropout.isFinite && loraDropout >= 0 && loraDropout < 1) { throw bad(.loraDropout, loraDropout, "a number in [0, 1)") }
        if loraTargetModules.isEmpty { throw bad(.loraTargetModules, "[]", "at least one of \(Projection.allCases.map(\.rawValue).joined(separator: ", "))") }
        try check(.microBatchSize, microBatchSize, Limits.microBatchSize)
        try check(.batchSize, batchSize, Limits.batchSize)
        if microBatchSize > batchSize { throw bad(.microBatchSize, microBatchSize, "at most batch_size (\(batchSize))") }
        if batchSize % microBatchSize != 0 { throw bad(.batchSize, batchSize, "a multiple of micro_batch_size (\(microBatchSize))") }
        try check(.cutoffLen, cutoffLen, Limits.cutoffLen)
        try check(.maxSteps, maxSteps, Limits.maxSteps)
        try check(.numEpochs, numEpochs, Limits.numEpochs, "0 or a positive finite number")
        if !(numEpochs > 0) && maxSteps <= 0 { throw bad(.numEpochs, numEpochs, "a positive number (or set max_steps)") }
        try check(.learningRate, learningRate, Limits.learningRate, "a positive finite number")
        try check(.valSetSize, valSetSize, Limits.valSetSize)
        try check(.warmupSteps, warmupSteps, Limits.warmupSteps)
        try check(.loggingSteps, loggingSteps, Limits.steps)
        try check(.evalSteps, evalSteps, Limits.steps)
        try check(.saveSteps, saveSteps, Limits.steps)
        try check(.saveTotalLimit, saveTotalLimit, Limits.saveTotalLimit)
        try check(.maxGradNorm, maxGradNorm, Limits.maxGradNorm, "a positive finite number")
        try check(.weightDecay, weightDecay, Limits.weightDecay, "0 or a positive finite number")
        try check(.threads, threads, Limits.threads)
        // Steps times batch must not overflow the step and token counters.
        if maxSteps < 0, numEpochs * Double(batchSize) > 1e12 { throw bad(.numEpochs, numEpochs, "fewer epochs (num_epochs x batch_size is past 10^12)") }
    }

    /// The closest valid key to a misspelt one (edit distance), for "unknown key" messages.
    public static func nearestKey(to key: String) -> String {
        CodingKeys.allCases.map(\.rawValue).min { editDistance($0, key) < editDistance($1, key) }!
    }
}

/// `gradient_checkpointing`: a closed set; `true`/`false` read as YAML booleans or strings.
public enum GradientCheckpointing: String, CaseIterable, Sendable, Codable {
    /// On when the plan without checkpointing does not fit the available memory.
    case auto
    case on = "true"
    case off = "false"

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let b = try? c.decode(Bool.self) { self = b ? .on : .off; return }
        let s = try c.decode(String.self)
        guard let v = GradientCheckpointing(rawValue: s) else {
            throw DecodingError.dataCorruptedError(in: c, debugDescription: "'\(s)' is not one of auto, true, false")
        }
        self = v
    }

    /// Whether to checkpoint, given whether the plan without it fits.
    public func resolved(fitsWithout: Bool) -> Bool {
        switch self { case .on: return true; case .off: return false; case .auto: return !fitsWithout }
    }
}

public enum ConfigError: Error, CustomStringConvertible, Equatable {
    case unknownKey(file: String, key: String, suggestion: String)
    case wrongType(file: String, key: String, expected: String)
    case badValue(key: String, value: String, expected: String)
    case missing(key: String)
    case unreadable(file: String, reason: String)

    public var description: String {
        switch self {
        case let .unknownKey(file, key, suggestion): return "\(file): unknown key '\(key)' (did you mean '\(suggestion)'?)"
        case let .wrongType(file, key, expected): return "\(file): key '\(key)' should be \(expected)"
        case let .badValue(key, value, expected): return "\(key) = \(value): expected \(expected)"
        case let .missing(key): return "\(key) is required"
        case let .unreadable(file, reason): return "\(file): \(reason)"
        }
    }
}

/// Levenshtein distance, for suggestions.
public func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var prev = Array(0...b.count), cur = [Int](repeating: 0, count: b.count + 1)
    for i in 1...a.count {
        cur[0] = i
        for j in 1...b.count {
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        swap(&prev, &cur)
    }
    return prev[b.count]
}
