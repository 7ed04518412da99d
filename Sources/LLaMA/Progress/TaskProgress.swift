import Foundation

/// How far a long step has got (model loading, tokenizing a dataset, eval, merge/export,
/// a prompt's prefill). The library reports through a `ProgressHandler` and never prints;
/// the CLI's one renderer turns these into a live line, plain lines or JSON events.
public struct TaskProgress: Sendable, Equatable {
    public enum Task: String, Sendable, CaseIterable {
        case load, tokenize, eval, merge, export, prefill
    }
    public var task: Task
    /// Units done so far, of `total` (done == total is the last report of a task).
    public var done: Int
    public var total: Int
    /// What is counted: "tensors", "records", "tokens".
    public var unit: String
    /// Bytes handled so far, where the task has a size (weights loaded or written).
    public var bytes: Int?
    /// A running figure shown beside the count: ("accuracy", 0.61), ("loss", 1.93).
    public var metricName: String?
    public var metricValue: Double?

    public init(task: Task, done: Int, total: Int, unit: String, bytes: Int? = nil,
                metricName: String? = nil, metricValue: Double? = nil) {
        self.task = task; self.done = done; self.total = total; self.unit = unit
        self.bytes = bytes; self.metricName = metricName; self.metricValue = metricValue
    }

    public var isFinished: Bool { done >= total }
}

/// Called on the thread doing the work, after each unit; must be cheap.
public typealias ProgressHandler = (TaskProgress) -> Void
