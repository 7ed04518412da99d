import ArgumentParser
import Foundation
import LLaMA
import Tensor

struct Finetune: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train LoRA adapters on Alpaca-format or chat-format data (alpaca-lora's finetune.py).",
        discussion: "Settings come from --config (YAML, keys as in configs/finetune.yml); every key is also a flag that overrides the file.")

    @Option(help: "YAML file with finetune settings.")
    var config: String?

    @Option(name: .customLong("base-model"), help: Self.help(.baseModel, "Model folder (config.json, model.safetensors, tokenizer) or .gguf file")) var baseModel: String?
    @Option(name: .customLong("data-path"), help: Self.help(.dataPath, "JSON list or JSON lines of Alpaca {instruction, input, output} or chat {messages} records")) var dataPath: String?
    @Option(name: .customLong("output-dir"), help: Self.help(.outputDir, "Where the adapter, checkpoints, trainer_log.jsonl and loss.svg go")) var outputDir: String?
    @Option(name: .customLong("batch-size"), help: Self.help(.batchSize, "Examples per optimizer step")) var batchSize: Int?
    @Option(name: .customLong("micro-batch-size"), help: Self.help(.microBatchSize, "Examples per forward/backward pass")) var microBatchSize: Int?
    @Option(name: .customLong("num-epochs"), help: Self.help(.numEpochs, "Passes over the training split")) var numEpochs: Double?
    @Option(name: .customLong("learning-rate"), help: Self.help(.learningRate, "Peak AdamW learning rate")) var learningRate: Double?
    @Option(name: .customLong("cutoff-len"), help: Self.help(.cutoffLen, "Tokens per example; longer ones are truncated")) var cutoffLen: Int?
    @Option(name: .customLong("val-set-size"), help: Self.help(.valSetSize, "Records held out for eval loss (0 = none)")) var valSetSize: Int?
    @Option(name: .customLong("lora-r"), help: Self.help(.loraR, "Adapter rank")) var loraR: Int?
    @Option(name: .customLong("lora-alpha"), help: Self.help(.loraAlpha, "Scale = alpha / r (alpha / sqrt(r) with rsLoRA)")) var loraAlpha: Double?
    @Option(name: .customLong("lora-dropout"), help: Self.help(.loraDropout, "Dropout on the adapter input")) var loraDropout: Double?
    @Option(name: .customLong("lora-target-modules"), help: Self.help(.loraTargetModules, "Comma-separated projections, e.g. q_proj,v_proj")) var loraTargetModules: String?
    @Option(name: .customLong("use-rslora"), help: Self.help(.useRslora, "Scale alpha / sqrt(r) (true|false)")) var useRslora: Bool?
    @Option(name: .customLong("use-dora"), help: Self.help(.useDora, "DoRA: learn a magnitude per output row besides A and B (true|false)")) var useDora: Bool?
    @Option(name: .customLong("train-on-inputs"), help: Self.help(.trainOnInputs, "false masks the prompt out of the loss (true|false)")) var trainOnInputs: Bool?
    @Option(name: .customLong("add-eos-token"), help: Self.help(.addEosToken, "As finetune.py: shifts the prompt mask when train_on_inputs is false (true|false)")) var addEosToken: Bool?
    @Option(name: .customLong("group-by-length"), help: Self.help(.groupByLength, "Batch examples of similar length (true|false)")) var groupByLength: Bool?
    @Option(name: .customLong("prompt-template-name"), help: Self.help(.promptTemplateName, "alpaca, alpaca_short, alpaca_legacy, vigogne, or a JSON file")) var promptTemplateName: String?
    @Option(name: .customLong("chat-template"), help: Self.help(.chatTemplate, "Chat-format data: chatml, llama2, llama3, mistral, alpaca, or a Jinja file (null = the model's own)")) var chatTemplate: String?
    @Option(name: .customLong("resume-from-checkpoint"), help: Self.help(.resumeFromCheckpoint, "A checkpoint-N folder (continues exactly) or an adapter folder")) var resumeFromCheckpoint: String?
    @Option(name: .customLong("warmup-steps"), help: Self.help(.warmupSteps, "Linear warm-up steps")) var warmupSteps: Int?
    @Option(name: .customLong("logging-steps"), help: Self.help(.loggingSteps, "Log the mean loss every N steps")) var loggingSteps: Int?
    @Option(name: .customLong("eval-steps"), help: Self.help(.evalSteps, "Eval loss every N steps")) var evalSteps: Int?
    @Option(name: .customLong("save-steps"), help: Self.help(.saveSteps, "Write checkpoint-N every N steps")) var saveSteps: Int?
    @Option(name: .customLong("save-total-limit"), help: Self.help(.saveTotalLimit, "Checkpoints kept (the best is never removed)")) var saveTotalLimit: Int?
    @Option(name: .customLong("max-grad-norm"), help: Self.help(.maxGradNorm, "Gradient clipping norm")) var maxGradNorm: Double?
    @Option(name: .customLong("weight-decay"), help: Self.help(.weightDecay, "AdamW decoupled weight decay")) var weightDecay: Double?
    @Option(help: Self.help(.seed, "Seed of data order, split, LoRA init and dropout")) var seed: UInt64?
    @Option(name: .customLong("max-steps"), help: Self.help(.maxSteps, "Stop after N optimizer steps (-1 = from num_epochs)")) var maxSteps: Int?
    @Option(help: Self.help(.quantization, "Frozen weights: none (f32), bf16, int8, llm_int8 (int8 with LLM.int8() forward products), q8_0, q4_0, q4_1, nf4 (QLoRA's 4-bit NF4), or stored (a GGUF's own formats)")) var quantization: Quantization?
    @OptionGroup var output: OutputOptions
    @Option(name: .customLong("load-8bit"), help: "alpaca-lora's flag: true = --quantization int8, false = none") var load8bit: Bool?
    @Option(help: Self.help(.threads, "Threads (0 = all cores)")) var threads: Int?
    @Option(name: .customLong("gradient-checkpointing"), help: Self.help(.gradientCheckpointing, "Recompute each block in backward, keeping only its input: auto (when the plan does not fit), true, false")) var gradientCheckpointing: GradientCheckpointing?
    @Flag(name: .customLong("plan-only"), help: "Print the memory plan (micro-batch x cutoff_len tokens; weights from the config and quantization) and exit; the model folder needs only config.json.") var planOnly = false
    @Option(help: Self.help(.device, "auto (a GPU when CUDA loads, else the CPU), cpu, cuda or cuda:N")) var device: DeviceRequest?
    @Flag(name: .customLong("print-config"), help: "Print the resolved settings as YAML and exit.") var printConfig = false

    /// Help text with the default from TrainConfig (the one place defaults live).
    static func help(_ k: TrainConfig.CodingKeys, _ text: String) -> ArgumentHelp {
        let line = TrainConfig.defaults.yaml.split(separator: "\n").first { $0.hasPrefix(k.rawValue + ": ") }
        return ArgumentHelp("\(text) (\(k.rawValue), default: \(line.map { String($0.dropFirst(k.rawValue.count + 2)) } ?? "?"))")
    }

    /// The YAML file's settings with the flags given on the command line on top.
    func resolved() throws -> TrainConfig {
        var c = try config.map(ConfigFile.load) ?? TrainConfig()
        if let v = baseModel { c.baseModel = v }
        if let v = dataPath { c.dataPath = v }
        if let v = outputDir { c.outputDir = v }
        if let v = batchSize { c.batchSize = v }
        if let v = microBatchSize { c.microBatchSize = v }
        if let v = numEpochs { c.numEpochs = v }
        if let v = learningRate { c.learningRate = v }
        if let v = cutoffLen { c.cutoffLen = v }
        if let v = valSetSize { c.valSetSize = v }
        if let v = loraR { c.loraR = v }
        if let v = loraAlpha { c.loraAlpha = v }
        if let v = loraDropout { c.loraDropout = v }
        if let v = loraTargetModules {
            c.loraTargetModules = try v.split(separator: ",").map { s in
                let n = s.trimmingCharacters(in: .whitespaces)
                guard let p = Projection(rawValue: n) else {
                    throw ValidationError("--lora-target-modules: unknown module '\(n)' (expected \(Projection.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                return p
            }
        }
        if let v = useRslora { c.useRslora = v }
        if let v = useDora { c.useDora = v }
        if let v = trainOnInputs { c.trainOnInputs = v }
        if let v = addEosToken { c.addEosToken = v }
        if let v = groupByLength { c.groupByLength = v }
        if let v = promptTemplateName { c.promptTemplateName = v }
        if let v = chatTemplate { c.chatTemplate = v }
        if let v = resumeFromCheckpoint { c.resumeFromCheckpoint = v }
        if let v = warmupSteps { c.warmupSteps = v }
        if let v = loggingSteps { c.loggingSteps = v }
        if let v = evalSteps { c.evalSteps = v }
        if let v = saveSteps { c.saveSteps = v }
        if let v = saveTotalLimit { c.saveTotalLimit = v }
        if let v = maxGradNorm { c.maxGradNorm = v }
        if let v = weightDecay { c.weightDecay = v }
        if let v = seed { c.seed = v }
        if let v = maxSteps { c.maxSteps = v }
        if let v = load8bit {
            if let q = quantization, !q.agrees(load8bit: v) {
                throw ValidationError("--load-8bit \(v) disagrees with --quantization \(q.rawValue); give one of them")
            }
            c.quantization = Quantization(load8bit: v)
        }
        if let v = quantization { c.quantization = v }
        if let v = threads { c.threads = v }
        if let v = gradientCheckpointing { c.gradientCheckpointing = v }
        if let v = device { c.device = v }
        try c.validate()
        return c
    }

    func run() throws {
        try runReportingErrors {
            let c = try resolved()
            if printConfig { print(c.yaml, terminator: ""); return }
            if planOnly { try printPlanOnly(c, available: try availableMemory()); return }
            let comm = try makeCommunicator(environment: ProcessInfo.processInfo.environment)
            guard comm.size > 1 else { return try train(c, comm: comm) }
            // Every rank's error stops the job, with the rank named.
            do { try train(c, comm: comm) } catch { abortJob(comm, error: error) }
            finishCommunicator(comm)
        }
    }

    /// One rank's run (the only one without MPI): rank 0 claims the output folder, prints and
    /// writes; the others train silently.
    func train(_ c: TrainConfig, comm: Communicator) throws {
        let cores = ProcessInfoCores.count
        let threads = comm.size > 1 ? Launcher.threadsPerRank(requested: c.threads, cores: cores,
                                                              environment: ProcessInfo.processInfo.environment) : c.threads
        let (ctx, deviceLine) = try makeContext(threads: threads, device: c.device)
        let memory = MemoryMeter()
        let quiet = output.quiet
        let say: (String) -> Void = comm.isWriter && !quiet ? note : { _ in }
        say("Training Alpaca-LoRA model with params:")
        say(c.yaml.split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
        if comm.size > 1 {
            let accum = c.gradientAccumulationSteps
            say("data parallel: \(comm.size) ranks, \(accum) micro-batches of \(c.microBatchSize) per step of \(c.batchSize) examples" +
                (accum % comm.size == 0 ? ", \(accum / comm.size) per rank"
                                        : "; \(accum) is not a multiple of \(comm.size), so some ranks run one micro-batch more (the result is the same)"))
            if threads != c.threads { say("threads: \(threads) per rank (this host's \(cores) cores shared by its ranks; --threads overrides)") }
        }
        // Rank 0 alone shows progress; the other ranks run silently.
        let renderer = ProgressRenderer(quiet: quiet || !comm.isWriter)
        let loaded = try loadModel(c.baseModel, quantization: c.quantization, ctx: ctx, progress: renderer)
        if comm.isWriter { deviceLine.print(quiet: quiet) }
        // Positions past the model's context have no RoPE rows: refuse rather than truncate.
        if c.cutoffLen > loaded.model.config.maxPositionEmbeddings {
            throw ConfigError.badValue(key: "cutoff_len", value: "\(c.cutoffLen)",
                                       expected: "at most the model's context length (\(loaded.model.config.maxPositionEmbeddings), max_position_embeddings)")
        }
        // Alpaca or chat records, whichever the file holds (its first record decides).
        let data = try TrainingRecords.load(URL(fileURLWithPath: c.dataPath))
        if c.valSetSize >= data.count {
            throw ConfigError.badValue(key: "val_set_size", value: "\(c.valSetSize)", expected: "fewer than the \(data.count) records in \(c.dataPath)")
        }
        let (trainIdx, valIdx) = Sampler.split(count: data.count, valSize: c.valSetSize, seed: c.seed)
        let train: [Example], val: [Example]
        switch data {
        case .alpaca(let records):
            let prompter = try loadPrompter(c.promptTemplateName)
            let builder = ExampleBuilder(tokenizer: loaded.tokenizer, prompter: prompter, cutoffLen: c.cutoffLen,
                                         trainOnInputs: c.trainOnInputs, addEOSToken: c.addEosToken)
            renderer.begin(.tokenize)
            let tokenized = builder.examples(records, progress: renderer.handler)
            train = trainIdx.map { tokenized[$0] }
            val = valIdx.map { tokenized[$0] }
        case .chat(let records):
            // Loss on assistant turns only, whatever train_on_inputs says (it is Alpaca's).
            let template = try loaded.chatTemplate(override: c.chatTemplate)
            say("chat-format data: \(records.count) conversations, chat template \(template.kind.rawValue)\(c.chatTemplate == nil ? " (the model's)" : ""), loss on assistant turns")
            let builder = ChatExampleBuilder(tokenizer: loaded.tokenizer, template: template, cutoffLen: c.cutoffLen)
            train = try builder.examples(records, indices: trainIdx, path: c.dataPath)
            val = try builder.examples(records, indices: valIdx, path: c.dataPath)
        }
        // The plan, before the activations and optimizer state exist; refused with its table.
        let plan = MemoryPlan(config: loaded.model.config, weightBytes: loaded.model.weightBytes, adapter: c.adapterConfig,
                              microBatch: c.microBatchSize, tokens: Trainer.longestMicroBatch(train: train, validation: val),
                              threads: ctx.pool.threads, availableBytes: try availableMemory())
        let checkpointing = c.gradientCheckpointing.resolved(fitsWithout: plan.fits(checkpointing: false))
        guard plan.fits(checkpointing: checkpointing) else { throw TrainingError.doesNotFit(plan: plan.table(checkpointing: checkpointing)) }
        say(plan.table(checkpointing: checkpointing))
        var rng = RNG(seed: c.seed)
        let adapter = LoRAAdapter(new: c.adapterConfig, model: loaded.model, rng: &rng)
        let trainer = try Trainer(config: c, model: loaded.model, adapter: adapter, ctx: ctx,
                                  train: train, validation: val, padID: loaded.padID, comm: comm,
                                  checkpointing: checkpointing)
        // Claimed before training: writable, locked against a second run, stale temporaries
        // cleaned. Released (and removed if this run left it empty) on every exit path.
        // Only rank 0 writes, so only rank 0 claims it.
        let outputURL = URL(fileURLWithPath: c.outputDir)
        let folder = comm.isWriter ? try OutputFolder(outputURL) : nil
        defer { folder?.release() }
        if let r = c.resumeFromCheckpoint {
            if r == "latest" {
                if let latest = OutputFolder.latestCheckpoint(in: outputURL) {
                    say("resuming from \(latest.path)")
                    try trainer.resume(from: latest)
                } else {
                    say("resume_from_checkpoint: latest: no complete checkpoint in \(outputURL.path); starting from step 0")
                    if comm.isWriter { try TrainingLog.truncate(in: outputURL, after: 0) }
                }
            } else {
                try trainer.resume(from: URL(fileURLWithPath: r))
            }
        } else if comm.isWriter {
            try TrainingLog.truncate(in: outputURL, after: 0)   // a fresh run starts a fresh log
        }
        let progress = comm.isWriter ? ProgressPrinter(outputDir: outputURL, renderer: renderer) : nil
        if comm.size > 1 {
            DistributedSignals.install(rank: comm.rank, size: comm.size)
        } else {
            SignalHandling.installInterruptHandler(ctx.cancellation)
        }
        let firstStep = trainer.state.step
        let summary = try trainer.run { progress?.handle($0) }
        try progress?.finish()
        if let folder, let progress {
            let card = ModelCard(config: c, records: data.count, trainRecords: train.count, validationRecords: val.count,
                                 steps: summary.steps, finalLoss: summary.finalLoss, finalEvalLoss: progress.lastEvalLoss,
                                 bestEvalLoss: summary.bestEvalLoss, bestStep: trainer.state.bestStep,
                                 command: ["lora"] + CommandLine.arguments.dropFirst())
            try AtomicFile.write(card.markdown, to: folder.url.appendingPathComponent(ModelCard.fileName))
        }
        // The result line is printed even under --quiet (rank 0 only).
        if comm.isWriter { note(String(format: "done: %d steps in %.1f s, %.1f tokens/s, peak memory %@; adapter in %@",
                   summary.steps, summary.seconds, summary.tokensPerSecond, memory.peakDescription, summary.adapterPath)) }
        if comm.size > 1 {
            let n = Double(max(1, summary.steps - firstStep)), total = max(summary.seconds, 1e-9)
            say(String(format: "data parallel: %d ranks, %.3f s per step; rank 0 spent %.4f s (%.2f%%) per step in the gradient allreduce and %.3f s (%.1f%%) waiting for other ranks",
                       comm.size, total / n, trainer.allreduceSeconds / n, 100 * trainer.allreduceSeconds / total,
                       trainer.waitSeconds / n, 100 * trainer.waitSeconds / total))
        }
    }

    /// LORA_AVAILABLE_MEMORY (bytes, or 512M / 24G) stands for the machine's available memory
    /// (tests of the refusal, planning for another machine); otherwise /proc and the cgroup.
    func availableMemory() throws -> Int? {
        if let s = ProcessInfo.processInfo.environment["LORA_AVAILABLE_MEMORY"] {
            guard let v = AvailableMemory.parse(s) else {
                throw ValidationError("LORA_AVAILABLE_MEMORY=\(s): expected bytes or a size such as 512M or 24G")
            }
            return v
        }
        return AvailableMemory.read()
    }

    /// The plan from the model's config alone: a folder's config.json (no weights needed) or a
    /// GGUF's header, the activations at micro_batch_size x cutoff_len.
    func printPlanOnly(_ c: TrainConfig, available: Int?) throws {
        let config: LlamaConfig
        var stored: (String) -> Int? = { _ in nil }
        if c.baseModel.lowercased().hasSuffix(".gguf") {
            let g = try GGUFCheckpoint(path: c.baseModel)
            config = g.config
            stored = g.storedByteCount
        } else {
            config = try LlamaConfig(contentsOf: URL(fileURLWithPath: c.baseModel).appendingPathComponent("config.json"))
        }
        let threads = c.threads > 0 ? c.threads : ProcessInfoCores.count
        let plan = MemoryPlan(config: config, weightBytes: MemoryPlan.weightBytes(config: config, quantization: c.quantization, storedBytes: stored),
                              adapter: c.adapterConfig, microBatch: c.microBatchSize, tokens: c.cutoffLen,
                              threads: threads, availableBytes: available)
        let checkpointing = c.gradientCheckpointing.resolved(fitsWithout: plan.fits(checkpointing: false))
        print(plan.table(checkpointing: checkpointing))
        print(plan.fits(checkpointing: checkpointing) ? "fits" : "does not fit")
    }
}
