import Foundation
import LLaMA
import Tensor

/// Shows training progress through the CLI's renderer (its style and its stderr writer): a
/// live step line on a terminal, the logged steps and evals as plain lines, nothing when quiet;
/// forwards logs and evals to trainer_log.jsonl and loss.svg.
final class ProgressPrinter {
    let log: TrainingLog
    let renderer: ProgressRenderer
    var tty: Bool { renderer.style == .live }
    var quiet: Bool { renderer.style == .quiet }
    var lastDraw = Date.distantPast
    /// The last eval loss reported (for the model card).
    var lastEvalLoss: Double?

    init(outputDir: URL, renderer: ProgressRenderer) { log = TrainingLog(outputDir: outputDir); self.renderer = renderer }

    func note(_ s: String) { renderer.write(s + "\n") }

    func handle(_ e: TrainingEvent) {
        if case let .evaluated(_, loss) = e { lastEvalLoss = loss }
        // --quiet: the log and plot are still written; nothing is printed.
        if quiet {
            if case let .log(p) = e { log.logged(p) }
            if case let .evaluated(step, loss) = e { log.evaluated(step: step, loss: loss) }
            return
        }
        switch e {
        case let .started(total, examples, val, params, resumed):
            note("training \(params) LoRA parameters on \(examples) examples (\(val) for validation), \(total) steps" +
                 (resumed > 0 ? ", resuming after step \(resumed)" : ""))
        case let .step(p):
            if tty, Date().timeIntervalSince(lastDraw) > 0.2 || p.step == p.totalSteps {
                lastDraw = Date()
                renderer.write("\r\u{1B}[K" + line(p))
            }
        case let .log(p):
            log.logged(p)
            if tty { renderer.write("\r\u{1B}[K") }
            note(line(p))
        case let .evaluated(step, loss):
            log.evaluated(step: step, loss: loss)
            if tty { renderer.write("\r\u{1B}[K") }
            note(String(format: "step %d: eval_loss %.4f (perplexity %.2f)", step, loss, Foundation.exp(loss)))
        case let .saved(step, path):
            if tty { renderer.write("\r\u{1B}[K") }
            note("step \(step): checkpoint saved to \(path)")
        case .finished:
            if tty { renderer.write("\r\u{1B}[K") }
        }
    }

    func line(_ p: TrainingEvent.Progress) -> String {
        let remaining = p.step > 0 ? p.elapsed / Double(p.step) * Double(p.totalSteps - p.step) : 0
        // With N ranks, tok/s is the aggregate over all of them.
        let ranks = p.worldSize > 1 ? "  \(p.worldSize) ranks" : ""
        return String(format: "step %d/%d  epoch %.2f  loss %.4f  lr %.3g  grad_norm %.3f  %.0f tok/s%@  ETA %@",
                      p.step, p.totalSteps, p.epoch, p.loss, p.learningRate, p.gradNorm, p.tokensPerSecond, ranks, duration(remaining))
    }

    func finish() throws { try log.close() }
}

func duration(_ s: Double) -> String {
    let t = Int(s.rounded())
    return t >= 3600 ? String(format: "%dh%02dm", t / 3600, t % 3600 / 60) : String(format: "%dm%02ds", t / 60, t % 60)
}

/// Peak resident memory (VmHWM from /proc/self/status).
struct MemoryMeter {
    var peakBytes: Int {
        guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
        for line in s.split(separator: "\n") where line.hasPrefix("VmHWM:") {
            // "VmHWM:\t 8207628 kB", but "VmHWM:\t18045120 kB" from 10 GB on: split on tabs too.
            let kb = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap { Int($0) }.first ?? 0
            return kb * 1024
        }
        return 0
    }
    var peakDescription: String { String(format: "%.0f MB", Double(peakBytes) / 1e6) }
}

enum SignalHandling {
    /// Ctrl-C asks the trainer to write a checkpoint and stop (exit 130); a second Ctrl-C
    /// exits at once (every file is written atomically, so nothing is left half-written).
    static func installInterruptHandler(_ c: Cancellation) {
        // A C signal handler cannot capture; the flag's address is the one process-wide value,
        // and only the CLI has it.
        flag = c.rawFlag
        signal(SIGINT) { _ in
            guard let f = SignalHandling.flag else { _exit(130) }
            if f.pointee != 0 { _exit(130) }
            f.pointee = 1
        }
        signal(SIGTERM) { _ in
            guard let f = SignalHandling.flag else { _exit(143) }
            if f.pointee != 0 { _exit(143) }
            f.pointee = 1
        }
    }
    nonisolated(unsafe) static var flag: UnsafeMutablePointer<Int32>?
}
