import Foundation

/// The `README.md` written next to a trained adapter, in the shape PEFT gives its model cards
/// (YAML front matter with base_model and library_name: peft, then prose), so an adapter
/// uploaded to a hub says what it was trained from, on what, and how.
public struct ModelCard: Sendable {
    public var baseModel: String
    public var adapter: AdapterConfig
    public var dataPath: String
    public var records: Int
    public var trainRecords: Int
    public var validationRecords: Int
    public var steps: Int
    public var epochs: Double
    public var learningRate: Double
    public var batchSize: Int
    public var microBatchSize: Int
    public var cutoffLen: Int
    public var quantization: String
    public var seed: UInt64
    public var finalLoss: Double?
    public var finalEvalLoss: Double?
    public var bestEvalLoss: Double?
    public var bestStep: Int?
    /// The command that made the adapter, as typed (arguments quoted for a POSIX shell).
    public var command: [String]

    public init(config c: TrainConfig, records: Int, trainRecords: Int, validationRecords: Int, steps: Int,
                finalLoss: Double?, finalEvalLoss: Double?, bestEvalLoss: Double?, bestStep: Int?, command: [String]) {
        baseModel = c.baseModel; adapter = c.adapterConfig; dataPath = c.dataPath
        self.records = records; self.trainRecords = trainRecords; self.validationRecords = validationRecords
        self.steps = steps; epochs = c.numEpochs; learningRate = c.learningRate; batchSize = c.batchSize
        microBatchSize = c.microBatchSize; cutoffLen = c.cutoffLen; quantization = c.quantization.rawValue; seed = c.seed
        self.finalLoss = finalLoss; self.finalEvalLoss = finalEvalLoss; self.bestEvalLoss = bestEvalLoss; self.bestStep = bestStep
        self.command = command
    }

    public static let fileName = "README.md"

    /// `'it''s'`-free POSIX quoting: bare when safe, else single quotes.
    static func shellQuoted(_ s: String) -> String {
        let safe = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-_./=:,+@%"))
        if !s.isEmpty && s.unicodeScalars.allSatisfy({ safe.contains($0) }) { return s }
        return "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }

    public var markdown: String {
        func yaml(_ s: String) -> String { JSON.string(s).serialized(pretty: false) }   // a JSON string is a YAML scalar
        func num(_ v: Double?) -> String { v.map { String(format: "%.4f", $0) } ?? "n/a" }
        let a = adapter
        let modules = a.targetModules.map(\.rawValue).joined(separator: ", ")
        var s = """
            ---
            base_model: \(yaml(baseModel))
            library_name: peft
            pipeline_tag: text-generation
            tags:
            - \(yaml("base_model:adapter:" + baseModel))
            - lora
            - alpaca
            ---

            # LoRA adapter for \(baseModel)

            A PEFT LoRA adapter trained with `lora finetune` on \(records) records (Alpaca or chat format) from `\(dataPath)`.

            ## LoRA settings

            | setting | value |
            |---|---|
            | r | \(a.r) |
            | lora_alpha | \(a.loraAlpha) |
            | lora_dropout | \(a.loraDropout) |
            | target_modules | \(modules) |
            | use_rslora | \(a.useRslora) |
            | use_dora | \(a.useDora) |
            | scale | \(a.scale) |

            ## Training

            | setting | value |
            |---|---|
            | data file | \(dataPath) |
            | records | \(records) (\(trainRecords) train, \(validationRecords) validation) |
            | steps | \(steps) |
            | num_epochs | \(epochs) |
            | learning_rate | \(learningRate) |
            | batch_size | \(batchSize) (micro batch \(microBatchSize)) |
            | cutoff_len | \(cutoffLen) |
            | base weights | \(quantization) |
            | seed | \(seed) |
            | final train loss | \(num(finalLoss)) |
            | final eval loss | \(num(finalEvalLoss)) |
            | best eval loss | \(num(bestEvalLoss))\(bestStep.map { " (step \($0))" } ?? "") |

            The adapter saved is the one with the best eval loss when there is a validation split, else the last.

            ## Command

            ```sh
            \(command.map(Self.shellQuoted).joined(separator: " "))
            ```

            ## Use

            ```python
            from transformers import AutoModelForCausalLM
            from peft import PeftModel
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(\(yaml(baseModel))), "PATH/TO/THIS/FOLDER")
            ```

            """
        if baseModel.lowercased().hasSuffix(".gguf") {
            s += "\nThe base is a GGUF file; `lora merge --format hf` turns it into a folder transformers loads.\n"
        }
        return s
    }
}
