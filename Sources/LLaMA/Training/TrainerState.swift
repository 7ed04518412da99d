import Foundation
import Tensor

/// What a checkpoint must hold to continue a run exactly: the step, where the data stream
/// stands, the RNG, the best eval so far, and the log. Saved as trainer_state.json next to
/// the adapter and optimizer.safetensors (AdamW moments) in `checkpoint-N/`.
public struct TrainerState: Sendable, Equatable {
    public var step = 0                 // optimizer steps done
    public var epoch = 0                // current epoch index
    public var microBatch = 0           // next micro-batch index within the epoch's order
    public var rng = RNG(seed: 0)       // dropout RNG
    public var bestEvalLoss: Double? = nil
    public var bestStep: Int? = nil
    public var totalSteps = 0

    public init() {}

    public func json() -> JSON {
        let s = rng.state
        return .object([
            ("step", .int(Int64(step))),
            ("epoch", .int(Int64(epoch))),
            ("micro_batch", .int(Int64(microBatch))),
            ("total_steps", .int(Int64(totalSteps))),
            ("rng", .array([s.0, s.1, s.2, s.3].map { .string(String($0)) })),
            ("best_eval_loss", bestEvalLoss.map { .double($0) } ?? .null),
            ("best_step", bestStep.map { .int(Int64($0)) } ?? .null),
        ])
    }

    /// Reads trainer_state.json. Values that cannot be a run's state (negative counters, a
    /// step past the total, a zero RNG) are `TrainingError.badCheckpoint` naming the file and
    /// key; consistency with the run (epoch length, total) is checked by `Trainer.resume`.
    public init(json j: JSON, file: String) throws {
        func bad(_ k: String, _ detail: String) -> TrainingError { .badCheckpoint(path: file, detail: "key '\(k)' \(detail); the checkpoint is unusable") }
        guard case .object = j else { throw TrainingError.badCheckpoint(path: file, detail: "expected a JSON object; the checkpoint is unusable") }
        func int(_ k: String, min: Int) throws -> Int {
            guard let v = j[k], !v.isNull else { throw bad(k, "is missing") }
            guard let i = v.int else { throw bad(k, "should be an integer, found \(v.typeName)") }
            guard i >= min, i <= Self.maxCounter else { throw bad(k, "is \(i), expected \(min) ... \(Self.maxCounter)") }
            return i
        }
        step = try int("step", min: 0); epoch = try int("epoch", min: 0); microBatch = try int("micro_batch", min: 0)
        totalSteps = try int("total_steps", min: 1)
        guard step <= totalSteps else { throw bad("step", "is \(step), past total_steps (\(totalSteps))") }
        guard let r = j["rng"]?.array, r.count == 4, let words = Optional(r.compactMap { $0.string.flatMap(UInt64.init) }), words.count == 4 else {
            throw bad("rng", "should be a list of 4 decimal strings")
        }
        guard words.contains(where: { $0 != 0 }) else { throw bad("rng", "is all zero (not a state the generator can reach)") }
        rng.state = (words[0], words[1], words[2], words[3])
        if let v = j["best_eval_loss"], !v.isNull {
            guard let d = v.double, d.isFinite, d >= 0 else { throw bad("best_eval_loss", "is \(v.serialized(pretty: false)), expected a finite loss") }
            bestEvalLoss = d
        }
        if let v = j["best_step"], !v.isNull {
            guard let b = v.int, b >= 1, b <= step else { throw bad("best_step", "is \(v.serialized(pretty: false)), expected 1 ... step (\(step))") }
            bestStep = b
        }
        if (bestStep == nil) != (bestEvalLoss == nil) { throw bad("best_step", "and best_eval_loss must be both set or both null") }
    }

    /// Counters past this are not a real run (TrainConfig.Limits.maxSteps is 10^8).
    static let maxCounter = 1 << 40
}
