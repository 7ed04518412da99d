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

    public init(json j: JSON, file: String) throws {
        func int(_ k: String) throws -> Int {
            guard let v = j[k]?.int else { throw CheckpointError.missingKey(file: file, key: k) }
            return v
        }
        step = try int("step"); epoch = try int("epoch"); microBatch = try int("micro_batch")
        totalSteps = try int("total_steps")
        guard let r = j["rng"]?.array, r.count == 4, let words = Optional(r.compactMap { $0.string.flatMap(UInt64.init) }), words.count == 4 else {
            throw CheckpointError.missingKey(file: file, key: "rng")
        }
        rng.state = (words[0], words[1], words[2], words[3])
        bestEvalLoss = j["best_eval_loss"]?.double
        bestStep = j["best_step"]?.int
    }
}
