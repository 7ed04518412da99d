import ArgumentParser
import Foundation
import LLaMA
import Tensor

enum EvalMetric: String, ExpressibleByArgument, CaseIterable {
    case loss
    case exactMatch = "exact_match"
}

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Loss and perplexity, or exact-match accuracy of greedy answers, over an Alpaca (or, for loss, chat-format) dataset.",
        discussion: """
            --metric loss (default): mean loss per trained token and perplexity, with finetune's masking \
            (chat records: assistant turns, with the model's chat template or --chat-template).
            --metric exact_match: each record's prompt (template, no output) is answered greedily, stopping \
            at EOS or --max-new-tokens; the response must equal the record's output once both are trimmed \
            of surrounding whitespace.
            """)

    @OptionGroup var model: ModelOptions
    @OptionGroup var adapters: AdapterOptions
    @Option(name: .customLong("data-path")) var dataPath: String
    @Option(help: "loss or exact_match.") var metric: EvalMetric = .loss
    @Option(name: .customLong("prompt-template")) var promptTemplate = TrainConfig.defaults.promptTemplateName
    @Option(name: .customLong("chat-template"), help: "Chat-format data: chatml, llama2, llama3, mistral, alpaca, or a Jinja file (default: the model's own).")
    var chatTemplate: String?
    @Option(name: .customLong("cutoff-len"), help: "loss only.") var cutoffLen = TrainConfig.defaults.cutoffLen
    @Option(name: .customLong("train-on-inputs"), help: "loss only.") var trainOnInputs = TrainConfig.defaults.trainOnInputs
    @Option(name: .customLong("add-eos-token"), help: "loss only.") var addEosToken = TrainConfig.defaults.addEosToken
    @Option(name: .customLong("micro-batch-size"), help: "loss only.") var microBatchSize = TrainConfig.defaults.microBatchSize
    @Option(name: .customLong("max-new-tokens"), help: "exact_match: most new tokens per answer.")
    var maxNewTokens = ExactMatch.defaultMaxNewTokens
    @Option(help: "Evaluate a random sample of N records (chosen with --seed) instead of all.") var limit: Int?
    @Option(help: "Seed of the --limit sample.") var seed: UInt64 = 0
    @Option(name: .customLong("show-failures"), help: "exact_match: failures to print (or list in --json).")
    var showFailures = 5
    @OptionGroup var compute: ComputeOptions
    @Flag(help: "Print one JSON object (and progress as JSON lines on stderr).") var json = false
    @OptionGroup var output: OutputOptions

    func validate() throws {
        // finetune's bounds (the model's context is checked once it is loaded)
        let cut = TrainConfig.Limits.cutoffLen, mb = TrainConfig.Limits.microBatchSize
        if !cut.contains(cutoffLen) { throw ValidationError("--cutoff-len \(cutoffLen): expected \(cut.lowerBound) ... \(cut.upperBound)") }
        if !mb.contains(microBatchSize) { throw ValidationError("--micro-batch-size \(microBatchSize): expected \(mb.lowerBound) ... \(mb.upperBound)") }
        if maxNewTokens < 1 { throw ValidationError("--max-new-tokens must be at least 1") }
        if let limit, limit < 1 { throw ValidationError("--limit must be at least 1") }
        if showFailures < 0 { throw ValidationError("--show-failures must be 0 or more") }
    }

    func run() throws {
        try runReportingErrors {
            let (ctx, deviceLine) = try compute.context()
            let progress = ProgressRenderer(quiet: output.quiet, json: json)
            let loaded = try model.load(default: TrainConfig.defaults.quantization, ctx: ctx, progress: progress)
            deviceLine.print(quiet: output.quiet, json: json)
            let context = loaded.model.config.maxPositionEmbeddings
            if metric == .loss && cutoffLen > context {
                throw ValidationError("--cutoff-len \(cutoffLen): expected at most the model's context length (\(context), max_position_embeddings)")
            }
            let set = try adapters.load(model: loaded.model.config)
            let data = try TrainingRecords.load(URL(fileURLWithPath: dataPath))
            let indices = EvalSample.indices(count: data.count, limit: limit, seed: seed)
            guard case .alpaca(let all) = data else {
                guard case .chat(let records) = data, metric == .loss else {
                    throw ValidationError("--metric exact_match needs Alpaca records ({instruction, input, output}); \(dataPath) holds chat records")
                }
                let template = try loaded.chatTemplate(override: chatTemplate)
                let builder = ChatExampleBuilder(tokenizer: loaded.tokenizer, template: template, cutoffLen: cutoffLen)
                report(try builder.examples(records, indices: indices, path: dataPath), loaded: loaded, adapters: set, ctx: ctx,
                       progress: progress)
                return
            }
            let prompter = try loadPrompter(promptTemplate)
            switch metric {
            case .loss: loss(indices.map { all[$0] }, loaded: loaded, adapters: set, ctx: ctx, prompter: prompter, progress: progress)
            case .exactMatch: try exactMatch(all, indices: indices, loaded: loaded, adapters: set, ctx: ctx, prompter: prompter,
                                             progress: progress)
            }
        }
    }

    func loss(_ records: [AlpacaRecord], loaded: LoadedModel, adapters: AdapterSet, ctx: ExecutionContext, prompter: Prompter,
              progress: ProgressRenderer) {
        let builder = ExampleBuilder(tokenizer: loaded.tokenizer, prompter: prompter,
                                     cutoffLen: cutoffLen, trainOnInputs: trainOnInputs, addEOSToken: addEosToken)
        progress.begin(.tokenize)
        report(builder.examples(records, progress: progress.handler), loaded: loaded, adapters: adapters, ctx: ctx, progress: progress)
    }

    func report(_ examples: [Example], loaded: LoadedModel, adapters: AdapterSet, ctx: ExecutionContext, progress: ProgressRenderer) {
        let records = examples
        progress.begin(.eval, total: examples.count, unit: "records")
        let r = Evaluation.loss(model: loaded.model, adapters: adapters, ctx: ctx, examples: examples, padID: loaded.padID,
                                microBatchSize: microBatchSize, progress: progress.handler)
        if json {
            print(JSON.object([("loss", .double(r.loss)), ("perplexity", .double(r.perplexity)),
                               ("tokens", .int(Int64(r.tokens))), ("records", .int(Int64(records.count)))]).serialized(pretty: false))
        } else {
            print(String(format: "loss %.4f  perplexity %.3f  (%d tokens, %d records)", r.loss, r.perplexity, r.tokens, records.count))
        }
    }

    func exactMatch(_ records: [AlpacaRecord], indices: [Int], loaded: LoadedModel, adapters: AdapterSet, ctx: ExecutionContext,
                    prompter: Prompter, progress: ProgressRenderer) throws {
        let generator = Generator(model: loaded.model, adapters: adapters, ctx: ctx, eosIDs: loaded.eosIDs)
        progress.begin(.eval, total: indices.count, unit: "records")
        let r = try ExactMatch.evaluate(records: records, indices: indices, prompter: prompter,
                                        tokenizer: loaded.tokenizer, generator: generator,
                                        maxNewTokens: maxNewTokens, progress: progress.handler)
        let shown = Array(r.failures.prefix(showFailures))
        if json {
            let failures: [JSON] = shown.map { f in
                .object([("index", .int(Int64(f.index))), ("instruction", .string(f.instruction)), ("input", .string(f.input)),
                         ("expected", .string(f.expected)), ("got", .string(f.got))])
            }
            print(JSON.object([("metric", .string(EvalMetric.exactMatch.rawValue)), ("accuracy", .double(r.accuracy)),
                               ("correct", .int(Int64(r.correct))), ("total", .int(Int64(r.total))),
                               ("failures", .array(failures))]).serialized(pretty: false))
            return
        }
        print(String(format: "exact match %.4f  (%d of %d correct)", r.accuracy, r.correct, r.total))
        guard !shown.isEmpty else { return }
        print("failures (\(shown.count) of \(r.failures.count) shown):")
        for f in shown {
            print("  record \(f.index): \(quoted(f.instruction))" + (f.input.isEmpty ? "" : "  input \(quoted(f.input))"))
            print("    expected \(quoted(f.expected))")
            print("    got      \(quoted(f.got))")
        }
    }

    /// A string on one line, as a JSON string literal (newlines escaped).
    func quoted(_ s: String) -> String { JSON.string(s).serialized(pretty: false) }
}
