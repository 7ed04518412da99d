import ArgumentParser
import Foundation
import LLaMA
import Tensor

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Mean loss per trained token and perplexity over an Alpaca dataset.")

    @Option(name: .customLong("base-model")) var baseModel: String
    @Option(name: .customLong("lora-weights"), help: "PEFT adapter folder, optionally DIR:WEIGHT; repeatable.") var loraWeights: [String] = []
    @Option(name: .customLong("data-path")) var dataPath: String
    @Option(name: .customLong("prompt-template")) var promptTemplate = TrainConfig.defaults.promptTemplateName
    @Option(name: .customLong("cutoff-len")) var cutoffLen = TrainConfig.defaults.cutoffLen
    @Option(name: .customLong("train-on-inputs")) var trainOnInputs = TrainConfig.defaults.trainOnInputs
    @Option(name: .customLong("add-eos-token")) var addEosToken = TrainConfig.defaults.addEosToken
    @Option(name: .customLong("micro-batch-size")) var microBatchSize = TrainConfig.defaults.microBatchSize
    @Option(name: .customLong("load-8bit")) var load8bit = TrainConfig.defaults.load8bit
    @Option(help: "Threads (0 = all cores).") var threads = 0
    @Flag(help: "Print one JSON object.") var json = false

    func validate() throws {
        if cutoffLen < 2 { throw ValidationError("--cutoff-len must be at least 2") }
        if microBatchSize < 1 { throw ValidationError("--micro-batch-size must be at least 1") }
    }

    func run() throws {
        try runReportingErrors {
            configureThreads(threads)
            let loaded = try LoadedModel(path: baseModel, load8bit: load8bit)
            for a in loraWeights {
                guard let spec = AdapterSpec(argument: a) else { throw ValidationError("--lora-weights '\(a)': expected DIR or DIR:WEIGHT") }
                try Adapter.load(URL(fileURLWithPath: spec.path), into: loaded.model, weight: spec.weight)
            }
            let records = try AlpacaData.load(URL(fileURLWithPath: dataPath))
            let builder = ExampleBuilder(tokenizer: loaded.tokenizer, prompter: try loadPrompter(promptTemplate),
                                         cutoffLen: cutoffLen, trainOnInputs: trainOnInputs, addEOSToken: addEosToken)
            let r = Evaluation.loss(model: loaded.model, examples: records.map(builder.example), padID: loaded.padID,
                                    microBatchSize: microBatchSize)
            if json {
                print(JSON.object([("loss", .double(r.loss)), ("perplexity", .double(r.perplexity)),
                                   ("tokens", .int(Int64(r.tokens))), ("records", .int(Int64(records.count)))]).serialized(pretty: false))
            } else {
                print(String(format: "loss %.4f  perplexity %.3f  (%d tokens, %d records)", r.loss, r.perplexity, r.tokens, records.count))
            }
        }
    }
}
