import Foundation
import Tensor

/// Mean loss per trained token over examples (the same masking as training).
public enum Evaluation {
    public struct Result: Sendable {
        public let loss: Double
        public let tokens: Int
        /// The summed token losses (loss = lossSum / tokens), for reducing shards.
        public let lossSum: Double
        public var perplexity: Double { Foundation.exp(loss) }
    }

    /// `acts` may be passed to reuse the trainer's buffers; it must fit the examples. With
    /// `shard` (i, n), only micro-batches i, i + n, i + 2n ... are evaluated: a data-parallel
    /// rank's share, whose lossSum and tokens the ranks then sum. `progress` sees each
    /// micro-batch done (records), with the running mean loss.
    public static func loss(model: LlamaModel, adapters: AdapterSet, ctx: ExecutionContext, examples: [Example],
                            padID: Int32, microBatchSize: Int, acts: Activations? = nil,
                            shard: (index: Int, count: Int) = (0, 1),
                            progress: ProgressHandler? = nil) -> Result {
        let longest = examples.map(\.count).max() ?? 1
        // No batch holds more records than there are (a micro-batch size far above the data
        // would otherwise size activations for records that do not exist).
        let acts = acts ?? Activations(model: model, maxRank: adapters.maxRank, maxB: max(1, min(microBatchSize, examples.count)),
                                       maxT: (longest + Collator.padToMultipleOf - 1) / Collator.padToMultipleOf * Collator.padToMultipleOf)
        var sum = 0.0, tokens = 0
        var i = shard.index * microBatchSize
        while i < examples.count {
            let b = Collator.batch(Array(examples[i..<min(examples.count, i + microBatchSize)]), padID: padID)
            let r = model.loss(b, adapters: adapters, acts: acts, ctx: ctx)
            sum += r.lossSum; tokens += r.tokens
            i += microBatchSize * shard.count
            progress?(TaskProgress(task: .eval, done: min(i, examples.count), total: examples.count, unit: "records",
                                   metricName: "loss", metricValue: tokens > 0 ? sum / Double(tokens) : nil))
        }
        return Result(loss: tokens > 0 ? sum / Double(tokens) : .nan, tokens: tokens, lossSum: sum)
    }
}
