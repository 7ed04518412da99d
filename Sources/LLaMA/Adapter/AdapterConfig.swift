import Foundation

/// PEFT's `adapter_config.json` for a LoRA adapter: the fields `lora` reads and writes.
/// Anything PEFT supports that we do not (biases, modules_to_save, per-module rank or
/// alpha patterns) is refused with a message naming the field, never silently ignored.
public struct AdapterConfig: Sendable, Equatable {
    public var r: Int
    public var loraAlpha: Double
    public var loraDropout: Double
    public var targetModules: [Projection]
    public var useRslora: Bool
    /// DoRA (`use_dora`): a magnitude vector per target and the row-normalised weight.
    public var useDora: Bool
    public var baseModelNameOrPath: String?
    public var layersToTransform: [Int]?

    public init(r: Int, loraAlpha: Double, loraDropout: Double, targetModules: [Projection],
                useRslora: Bool, useDora: Bool = false, baseModelNameOrPath: String?, layersToTransform: [Int]? = nil) {
        self.r = r; self.loraAlpha = loraAlpha; self.loraDropout = loraDropout
        self.targetModules = targetModules; self.useRslora = useRslora; self.useDora = useDora
        self.baseModelNameOrPath = baseModelNameOrPath; self.layersToTransform = layersToTransform
    }

    /// alpha / r, or alpha / sqrt(r) with rsLoRA (PEFT's `scaling`).
    public var scale: Float {
        Float(useRslora ? loraAlpha / Double(r).squareRoot() : loraAlpha / Double(r))
    }

    public init(json j: JSON, file: String) throws {
        func bad(_ key: String, _ v: JSON, _ expected: String) -> CheckpointError {
            .badValue(file: file, key: key, value: v.serialized(pretty: false), expected: expected)
        }
        if let t = j["peft_type"]?.string, t != "LORA" { throw bad("peft_type", j["peft_type"]!, "\"LORA\"") }
        guard let rj = j["r"] else { throw CheckpointError.missingKey(file: file, key: "r") }
        // The same bound as lora_r in a finetune config: the factors are sized from it.
        guard let r = rj.int, r > 0, r <= TrainConfig.Limits.loraR.upperBound else {
            throw bad("r", rj, "a positive integer at most \(TrainConfig.Limits.loraR.upperBound)")
        }
        self.r = r
        guard let aj = j["lora_alpha"] else { throw CheckpointError.missingKey(file: file, key: "lora_alpha") }
        guard let a = aj.double, a > 0, a.isFinite else { throw bad("lora_alpha", aj, "a positive finite number") }
        loraAlpha = a
        loraDropout = j["lora_dropout"]?.double ?? 0
        guard loraDropout >= 0, loraDropout < 1 else { throw bad("lora_dropout", j["lora_dropout"] ?? .null, "a number in [0, 1)") }
        useRslora = j["use_rslora"]?.bool ?? false
        baseModelNameOrPath = j["base_model_name_or_path"]?.string
        if let d = j["use_dora"], !d.isNull, d.bool == nil { throw bad("use_dora", d, "true or false") }
        useDora = j["use_dora"]?.bool ?? false
        if let b = j["bias"], let s = b.string, s != "none" { throw bad("bias", b, "\"none\"") }
        if j["fan_in_fan_out"]?.bool == true { throw bad("fan_in_fan_out", .bool(true), "false (LLaMA uses nn.Linear)") }
        if let m = j["modules_to_save"], !m.isNull, m.array?.isEmpty == false {
            throw bad("modules_to_save", m, "null (fully trained extra modules are not supported)")
        }
        if j["lora_bias"]?.bool == true { throw bad("lora_bias", .bool(true), "false (a bias on lora_B is not supported)") }
        // Fields of newer PEFT versions that change which weights an adapter touches or how.
        for (key, what) in [("target_parameters", "LoRA on raw parameters"), ("trainable_token_indices", "trainable token embeddings"),
                            ("alora_invocation_tokens", "activated LoRA (aLoRA)"), ("layer_replication", "layer replication"),
                            ("exclude_modules", "excluded modules")] {
            guard let v = j[key] else { continue }
            var empty = v.isNull || v.array?.isEmpty == true || v.string?.isEmpty == true
            if case .object(let o) = v, o.isEmpty { empty = true }
            if !empty {
                throw bad(key, v, "null (\(what) is not supported)")
            }
        }
        for key in ["rank_pattern", "alpha_pattern"] {
            if case .object(let items)? = j[key], !items.isEmpty {
                throw bad(key, j[key]!, "{} (per-module ranks or alphas are not supported)")
            }
        }
        if let l = j["layers_to_transform"], !l.isNull {
            if let i = l.int { layersToTransform = [i] }
            else if let arr = l.array, arr.count <= LlamaConfig.Limits.hiddenLayers, arr.allSatisfy({ $0.int != nil }) { layersToTransform = arr.map { $0.int! } }
            else { throw bad("layers_to_transform", l, "null, an integer or a list of integers") }
        } else {
            layersToTransform = nil
        }
        guard let tm = j["target_modules"] else { throw CheckpointError.missingKey(file: file, key: "target_modules") }
        var names: [String] = []
        if let s = tm.string {
            // PEFT accepts a regex string; we accept the common `(q_proj|v_proj)`-style forms by name search.
            names = Projection.allCases.map(\.rawValue).filter { s.contains($0) }
            if names.isEmpty { throw bad("target_modules", tm, "a list of LLaMA projection names") }
        } else if let arr = tm.array {
            for v in arr {
                guard let s = v.string else { throw bad("target_modules", tm, "a list of strings") }
                names.append(s)
            }
        } else {
            throw bad("target_modules", tm, "a list of module names")
        }
        targetModules = try names.map { n in
            // Accept fully qualified names like "self_attn.q_proj".
            let short = n.split(separator: ".").last.map(String.init) ?? n
            guard let p = Projection(rawValue: short) else {
                throw CheckpointError.badValue(file: file, key: "target_modules", value: "\"\(n)\"",
                    expected: "one of \(Projection.allCases.map(\.rawValue).joined(separator: ", ")) (a LLaMA model has no module '\(n)')")
            }
            return p
        }
        targetModules = Projection.allCases.filter { targetModules.contains($0) }
    }

    /// The JSON PEFT writes (peft 0.x field set), so PEFT's from_pretrained loads it unchanged.
    public func json() -> JSON {
        let items: [(String, JSON)] = [
            ("alpha_pattern", .object([])),
            ("auto_mapping", .null),
            ("base_model_name_or_path", baseModelNameOrPath.map { .string($0) } ?? .null),
            ("bias", .string("none")),
            ("fan_in_fan_out", .bool(false)),
            ("inference_mode", .bool(true)),
            ("init_lora_weights", .bool(true)),
            ("layer_replication", .null),
            ("layers_pattern", .null),
            ("layers_to_transform", layersToTransform.map { .array($0.map { .int(Int64($0)) }) } ?? .null),
            ("loftq_config", .object([])),
            ("lora_alpha", loraAlpha == loraAlpha.rounded() ? .int(Int64(loraAlpha)) : .double(loraAlpha)),
            ("lora_bias", .bool(false)),
            ("lora_dropout", .double(loraDropout)),
            ("megatron_config", .null),
            ("megatron_core", .string("megatron.core")),
            ("modules_to_save", .null),
            ("peft_type", .string("LORA")),
            ("r", .int(Int64(r))),
            ("rank_pattern", .object([])),
            ("revision", .null),
            ("target_modules", .array(targetModules.map { .string($0.rawValue) })),
            ("task_type", .string("CAUSAL_LM")),
            ("use_dora", .bool(useDora)),
            ("use_rslora", .bool(useRslora)),
        ]
        return .object(items)
    }
}
