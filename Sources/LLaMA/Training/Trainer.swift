import Foundation
import Tensor

/// What the trainer reports; the CLI decides how to show it. The trainer never prints.
public enum TrainingEvent: Sendable {
    case started(totalSteps: Int, examples: Int, validation: Int, trainableParameters: Int, resumedAt: Int)
    case step(Progress)
    case log(Progress)
    case evaluated(step: Int, loss: Double)
    case saved(step: Int, path: String)
    case finished(Summary)

    public struct Progress: Sendable {
        public let step: Int
        public let totalSteps: Int
        public let epoch: Double
        public let loss: Double
        public let learningRate: Double
        public let gradNorm: Double
        public let tokensPerSecond: Double
        public let elapsed: Double
    }

    public struct Summary: Sendable {
        public let steps: Int
        public let seconds: Double
        public let tokens: Int
        public let tokensPerSecond: Double
        public let finalLoss: Double?
        public let bestEvalLoss: Double?
        public let adapterPath: String
    }
}

public enum TrainingError: Error, CustomStringConvertible, Equatable {
    case nonFinite(step: Int, what: String)
    case interrupted(checkpoint: String?)
    case dataTooSmall(detail: String)
    case badCheckpoint(path: String, detail: String)

    public var description: String {
        switch self {
        case let .nonFinite(step, what):
            return "step \(step): \(what) is not finite; stopped (the last checkpoint, if any, is intact)"
        case let .interrupted(cp):
            return "interrupted" + (cp.map { "; checkpoint written to \($0)" } ?? "")
        case let .dataTooSmall(d): return d
        case let .badCheckpoint(path, d): return "\(path): \(d)"
        }
    }
}

/// The training loop: micro-batches with gradient accumulation, clipping, AdamW, the linear
/// schedule, periodic logging, evaluation and checkpoints, and exact resume.
public final class Trainer {
    public let config: TrainConfig
    public let model: LlamaModel
    /// The adapter being trained (the model itself is never changed).
    public let adapter: LoRAAdapter
    public let ctx: ExecutionContext
    public let train: [Example]
    public let validation: [Example]
    public let padID: Int32
    public let outputDir: URL
    public var state = TrainerState()

    let optimizer: AdamW
    let schedule: LinearSchedule
    let acts: Activations
    let stepsPerEpoch: Int
    let microBatchesPerEpoch: Int
    var best: [Tensor]? = nil   // copy of the adapter at the best eval loss

    /// Trains `adapter` (fresh or loaded) on `model`; `ctx.cancellation` stops the run at the
    /// next step with a checkpoint.
    public init(config: TrainConfig, model: LlamaModel, adapter: LoRAAdapter, ctx: ExecutionContext,
                train: [Example], validation: [Example], padID: Int32) throws {
        self.config = config
        self.model = model
        self.adapter = adapter
        self.ctx = ctx
        self.train = train
        self.validation = validation
        self.padID = padID
        outputDir = URL(fileURLWithPath: config.outputDir)
        guard !train.isEmpty else { throw TrainingError.dataTooSmall(detail: "no training examples left after the validation split") }
        adapter.enableGradients()
        let trainable = adapter.trainable
        optimizer = AdamW(params: trainable.map(\.param), grads: trainable.map { $0.grad! })
        optimizer.weightDecay = config.weightDecay
        microBatchesPerEpoch = (train.count + config.microBatchSize - 1) / config.microBatchSize
        stepsPerEpoch = max(1, (microBatchesPerEpoch + config.gradientAccumulationSteps - 1) / config.gradientAccumulationSteps)
        let total = config.maxSteps > 0 ? config.maxSteps : Int((config.numEpochs * Double(stepsPerEpoch)).rounded(.up))
        schedule = LinearSchedule(baseLR: config.learningRate, warmup: config.warmupSteps, total: total)
        state.totalSteps = total
        state.rng = RNG(seed: config.seed &+ 1)
        let longest = (train + validation).map(\.count).max() ?? 1
        let maxT = (longest + Collator.padToMultipleOf - 1) / Collator.padToMultipleOf * Collator.padToMultipleOf
        acts = Activations(model: model, trained: adapter, maxB: config.microBatchSize, maxT: maxT)
    }

    public var trainableParameters: Int { adapter.parameterCount }

    /// Micro-batch `i` of `epoch` in the seeded order.
    func microBatch(epoch: Int, index i: Int, order: [Int]) -> Batch {
        let lo = i * config.microBatchSize, hi = min(train.count, lo + config.microBatchSize)
        return Collator.batch(order[lo..<hi].map { train[$0] }, padID: padID)
    }

    func order(epoch: Int) -> [Int] {
        Sampler.order(count: train.count, lengths: train.map(\.count), epoch: epoch, seed: config.seed,
                      groupByLength: config.groupByLength, microBatchSize: config.microBatchSize)
    }

    /// Mean token loss over the validation set.
    public func evaluate() -> Double {
        Evaluation.loss(model: model, adapters: AdapterSet(adapter), ctx: ctx, examples: validation, padID: padID,
                        microBatchSize: config.microBatchSize, acts: acts).loss
    }

    /// Runs to the end (or to an interruption), reporting through `report`.
    public func run(report: (TrainingEvent) -> Void) throws -> TrainingEvent.Summary {
        let accum = config.gradientAccumulationSteps
        report(.started(totalSteps: state.totalSteps, examples: train.count, validation: validation.count,
                        trainableParameters: trainableParameters, resumedAt: state.step))
        let t0 = Date()
        var tokensSeen = 0
        var windowLoss = 0.0, windowSteps = 0
        var lastLoss: Double? = nil
        var epochOrder = order(epoch: state.epoch)
        var lastProgress: TrainingEvent.Progress? = nil
        while state.step < state.totalSteps {
            if ctx.cancellation.isCancelled {
                let path = try saveCheckpoint()
                throw TrainingError.interrupted(checkpoint: path)
            }
            // Gather this step's micro-batches (the epoch may roll over at its end).
            var batches: [Batch] = []
            for _ in 0..<accum {
                if state.microBatch >= microBatchesPerEpoch {
                    if !batches.isEmpty { break }   // an epoch's last, shorter step
                    state.epoch += 1; state.microBatch = 0
                    epochOrder = order(epoch: state.epoch)
                }
                batches.append(microBatch(epoch: state.epoch, index: state.microBatch, order: epochOrder))
                state.microBatch += 1
                if state.microBatch >= microBatchesPerEpoch { break }
            }
            let tokens = batches.reduce(0) { $0 + $1.trainedTokens }
            optimizer.zeroGradients()
            var lossSum = 0.0
            if tokens > 0 {
                let scale = 1 / Float(tokens)
                for b in batches {
                    lossSum += model.forwardBackward(b, adapters: AdapterSet(adapter), acts: acts, ctx: ctx,
                                                     rng: &state.rng, gradScale: scale).lossSum
                }
            }
            tokensSeen += batches.reduce(0) { $0 + $1.B * $1.T }
            let loss = tokens > 0 ? lossSum / Double(tokens) : 0
            guard loss.isFinite else { throw TrainingError.nonFinite(step: state.step + 1, what: "the loss (\(loss))") }
            let norm = optimizer.clipGradients(maxNorm: config.maxGradNorm)
            guard norm.isFinite else { throw TrainingError.nonFinite(step: state.step + 1, what: "the gradient norm (\(norm))") }
            let lr = schedule.lr(at: state.step)
            optimizer.update(lr: lr)
            adapter.parametersChanged()   // DoRA's norms follow the new A, B and m
            state.step += 1
            lastLoss = loss
            windowLoss += loss; windowSteps += 1
            let elapsed = Date().timeIntervalSince(t0)
            let epochF = Double(state.epoch) + Double(state.microBatch) / Double(microBatchesPerEpoch)
            let p = TrainingEvent.Progress(step: state.step, totalSteps: state.totalSteps, epoch: epochF,
                                           loss: loss, learningRate: lr, gradNorm: norm,
                                           tokensPerSecond: Double(tokensSeen) / max(elapsed, 1e-9), elapsed: elapsed)
            lastProgress = p
            report(.step(p))
            if state.step % config.loggingSteps == 0 || state.step == state.totalSteps {
                report(.log(.init(step: p.step, totalSteps: p.totalSteps, epoch: p.epoch, loss: windowLoss / Double(windowSteps),
                                  learningRate: lr, gradNorm: norm, tokensPerSecond: p.tokensPerSecond, elapsed: elapsed)))
                windowLoss = 0; windowSteps = 0
            }
            if !validation.isEmpty && (state.step % config.evalSteps == 0 || state.step == state.totalSteps) {
                let e = evaluate()
                report(.evaluated(step: state.step, loss: e))
                if state.bestEvalLoss == nil || e < state.bestEvalLoss! {
                    state.bestEvalLoss = e; state.bestStep = state.step
                    best = adapter.trainable.map { $0.param.clone() }
                }
            }
            if state.step % config.saveSteps == 0 && state.step < state.totalSteps {
                let path = try saveCheckpoint()
                report(.saved(step: state.step, path: path))
            }
        }
        // The final adapter: the best by eval loss, else the last.
        if let best, state.bestStep != state.step {
            let current = adapter.trainable.map { $0.param.clone() }
            restore(best)
            try Adapter.save(adapter, to: outputDir)
            restore(current)
        } else {
            try Adapter.save(adapter, to: outputDir)
        }
        let seconds = Date().timeIntervalSince(t0)
        let summary = TrainingEvent.Summary(steps: state.step, seconds: seconds, tokens: tokensSeen,
                                            tokensPerSecond: Double(tokensSeen) / max(seconds, 1e-9),
                                            finalLoss: lastLoss ?? lastProgress?.loss, bestEvalLoss: state.bestEvalLoss,
                                            adapterPath: outputDir.path)
        report(.finished(summary))
        return summary
    }

    private func restore(_ tensors: [Tensor]) {
        for (t, saved) in zip(adapter.trainable, tensors) { t.param.copy(from: saved) }
        adapter.parametersChanged()
    }

    // MARK: checkpoints

    /// Writes `checkpoint-N/` atomically and prunes old ones beyond save_total_limit
    /// (the best checkpoint is kept, as transformers does with load_best_model_at_end).
    @discardableResult
    public func saveCheckpoint() throws -> String {
        let fm = FileManager.default
        try? fm.createDirectory(at: outputDir, withIntermediateDirectories: true)
        let dir = outputDir.appendingPathComponent("checkpoint-\(state.step)")
        try AtomicFile.writeDirectory(dir) { tmp in
            try Adapter.save(adapter, to: tmp)
            var items: [SafeTensorsWriter.Item] = []
            for (k, (m, v)) in optimizer.state.enumerated() {
                items.append(.tensor("m.\(k)", m))
                items.append(.tensor("v.\(k)", v))
            }
            if let best {
                for (k, t) in best.enumerated() { items.append(.tensor("best.\(k)", t)) }
            }
            try AtomicFile.write(SafeTensorsWriter.encode(items, metadata: ["format": "lora-optimizer", "adamw_step": String(optimizer.step)]),
                                 to: tmp.appendingPathComponent("optimizer.safetensors"))
            try AtomicFile.write(state.json().serialized() + "\n", to: tmp.appendingPathComponent("trainer_state.json"))
        }
        // Rotation.
        let names = (try? fm.contentsOfDirectory(atPath: outputDir.path)) ?? []
        let steps = names.compactMap { n -> Int? in n.hasPrefix("checkpoint-") ? Int(n.dropFirst("checkpoint-".count)) : nil }.sorted()
        var excess = steps.count - config.saveTotalLimit
        for s in steps where excess > 0 && s != state.step && s != state.bestStep {
            try? Self.removeCheckpoint(outputDir.appendingPathComponent("checkpoint-\(s)"))
            excess -= 1
        }
        return dir.path
    }

    /// Renames first, then deletes: a kill mid-delete leaves a hidden `.checkpoint-N.del-*`
    /// (cleaned at the next start), never a half-deleted `checkpoint-N` that looks complete.
    static func removeCheckpoint(_ dir: URL) throws {
        let doomed = dir.deletingLastPathComponent().appendingPathComponent(".\(dir.lastPathComponent).del-\(getpid())")
        guard rename(dir.path, doomed.path) == 0 else { throw WriteError(path: dir.path, reason: posixReason(errno)) }
        try FileManager.default.removeItem(at: doomed)
    }

    /// The checkpoint's counters against this run's data and settings: a state this run could
    /// not have reached (e.g. past the end of an epoch) would crash or train forever.
    func checkResumable(_ s: TrainerState, file: String) throws {
        func bad(_ k: String, _ d: String) -> TrainingError { .badCheckpoint(path: file, detail: "key '\(k)' \(d); the checkpoint is unusable with this run") }
        guard s.microBatch <= microBatchesPerEpoch else {
            throw bad("micro_batch", "is \(s.microBatch), past the \(microBatchesPerEpoch) micro-batches of an epoch")
        }
        // Each step takes 1 ... accum micro-batches, so the micro-batches consumed bound the step.
        let (e, o1) = s.epoch.multipliedReportingOverflow(by: microBatchesPerEpoch)
        let (consumed, o2) = e.addingReportingOverflow(s.microBatch)
        let (most, o3) = s.step.multipliedReportingOverflow(by: config.gradientAccumulationSteps)
        guard !o1, !o2, !o3, consumed <= most, consumed >= s.step else {
            throw bad("epoch", "(\(s.epoch)) and micro_batch (\(s.microBatch)) do not match step \(s.step) with \(microBatchesPerEpoch) micro-batches per epoch")
        }
    }

    /// Continues from `checkpoint-N/` exactly, or starts from a bare adapter folder's weights.
    public func resume(from dir: URL) throws {
        let fm = FileManager.default
        let stateURL = dir.appendingPathComponent("trainer_state.json")
        let optURL = dir.appendingPathComponent("optimizer.safetensors")
        let saved = try AdapterFactors.load(dir, model: model.config)
        for site in adapter.sites {
            let l = adapter.layers[site]!
            guard let (A, B) = saved.factors[site.path + ".weight"], A.shape == l.A.shape, B.shape == l.B.shape else {
                throw TrainingError.badCheckpoint(path: dir.path, detail: "its adapter does not match this run's (lora_r \(l.r) on \(site.path)); use the same lora_r and lora_target_modules")
            }
            l.A.copy(from: A); l.B.copy(from: B)
            if let m = l.magnitude {
                guard let sm = saved.magnitudes[site.path + ".weight"], sm.shape == m.shape else {
                    throw TrainingError.badCheckpoint(path: dir.path, detail: "its adapter has no DoRA magnitude for \(site.path) (use_dora must match the run's)")
                }
                m.copy(from: sm)
            } else if saved.config.useDora {
                throw TrainingError.badCheckpoint(path: dir.path, detail: "it is a DoRA adapter (use_dora: true) and this run trains plain LoRA; set use_dora: true to continue it")
            }
        }
        adapter.parametersChanged()
        guard fm.fileExists(atPath: stateURL.path) else {   // bare adapter: weights only
            try TrainingLog.truncate(in: outputDir, after: 0)
            return
        }
        let j: JSON
        do { j = try JSON.parse(contentsOf: stateURL) } catch {
            throw TrainingError.badCheckpoint(path: stateURL.path, detail: "\(error)")
        }
        let savedState = try TrainerState(json: j, file: stateURL.path)
        guard savedState.totalSteps == state.totalSteps else {
            throw TrainingError.badCheckpoint(path: stateURL.path, detail: "key 'total_steps': it was made for \(savedState.totalSteps) steps, this run has \(state.totalSteps); use the same data and settings to resume")
        }
        try checkResumable(savedState, file: stateURL.path)
        guard fm.fileExists(atPath: optURL.path) else {
            throw TrainingError.badCheckpoint(path: optURL.path, detail: "missing (the checkpoint is incomplete)")
        }
        let st = try SafeTensorsFile(path: optURL.path)
        for (k, (m, v)) in optimizer.state.enumerated() {
            guard let sm = try st.f32("m.\(k)"), let sv = try st.f32("v.\(k)"), sm.count == m.count, sv.count == v.count else {
                throw TrainingError.badCheckpoint(path: optURL.path, detail: "optimizer moments do not match this run's adapters (different r or targets?)")
            }
            try checkFinite(sm, name: "m.\(k)", file: optURL.path)
            try checkFinite(sv, name: "v.\(k)", file: optURL.path)
            m.copy(from: sm); v.copy(from: sv)
        }
        let adamStep = st.metadata["adamw_step"].map { Int($0) } ?? savedState.step
        guard let adamStep, adamStep >= 0, adamStep <= savedState.step else {
            throw TrainingError.badCheckpoint(path: optURL.path, detail: "metadata 'adamw_step' is \(st.metadata["adamw_step"] ?? "?"), expected 0 ... step (\(savedState.step))")
        }
        optimizer.restore(step: adamStep)
        if savedState.bestStep != nil {
            let n = adapter.trainable.count
            let tensors = try (0..<n).compactMap { k in try st.f32("best.\(k)") }
            if tensors.count == n { best = tensors }
        }
        state = savedState
        // The log keeps the steps up to the checkpoint; later ones will be logged again.
        try TrainingLog.truncate(in: outputDir, after: state.step)
    }
}
