import ArgumentParser
import Foundation
import LLaMA

/// `--quiet`, shared by the commands that report progress.
struct OutputOptions: ParsableArguments {
    @Flag(help: "Print only results: no progress, no notes.")
    var quiet = false
}

/// The CLI's one renderer of the library's `TaskProgress` reports, on stderr:
/// - live: one line rewritten in place (a terminal), at most every 0.1 s;
/// - plain: a line at every tenth of the total, at least every 30 s, and at the end (a log file, a pipe);
/// - json: the plain lines' moments as JSON objects {"event":"progress",...};
/// - quiet: nothing.
/// Rate and ETA come from `clock` (seconds), which tests replace.
final class ProgressRenderer {
    enum Style: Equatable { case live, plain, json, quiet }

    let style: Style
    let clock: () -> Double
    let write: (String) -> Void
    /// Shown instead of the task's name, e.g. "loading (q4_1)".
    var labels: [TaskProgress.Task: String] = [:]
    /// Tasks whose live line is erased when done instead of kept (a prompt's prefill, which
    /// precedes every answer and is over in a moment).
    var transient: Set<TaskProgress.Task> = [.prefill]

    struct State { var t0: Double; var done0: Int; var lastDraw: Double; var lastTenth: Int; var lastLine: Double }
    private var states: [TaskProgress.Task: State] = [:]

    init(style: Style, clock: @escaping () -> Double = ProgressRenderer.monotonic,
         write: @escaping (String) -> Void = { FileHandle.standardError.write(Data($0.utf8)) }) {
        self.style = style; self.clock = clock; self.write = write
    }

    /// live on a terminal (also with --json, whose result goes to stdout), plain lines or JSON
    /// lines otherwise, nothing when quiet.
    convenience init(quiet: Bool, json: Bool = false) {
        self.init(style: Self.style(quiet: quiet, json: json, terminal: isatty(STDERR_FILENO) != 0))
    }

    static func style(quiet: Bool, json: Bool, terminal: Bool) -> Style {
        quiet ? .quiet : terminal ? .live : json ? .json : .plain
    }

    static func monotonic() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

    /// The handler to pass to the library; nil when quiet, so the library does no extra work.
    var handler: ProgressHandler? { style == .quiet ? nil : { [self] in handle($0) } }

    /// Starts a task's clock now (else at its first report, counting from that report). With
    /// `total`, a terminal shows "0/total" at once, before the first unit is done.
    func begin(_ task: TaskProgress.Task, total: Int? = nil, unit: String = "") {
        let t = clock()
        states[task] = State(t0: t, done0: 0, lastDraw: -.infinity, lastTenth: 0, lastLine: t)
        if style == .live, let total, total > 0 {
            write("\r\u{1B}[K" + line(TaskProgress(task: task, done: 0, total: total, unit: unit), state: states[task]!, now: t))
        }
    }

    func handle(_ p: TaskProgress) {
        guard style != .quiet else { return }
        let now = clock()
        var s = states[p.task] ?? State(t0: now, done0: p.done, lastDraw: -.infinity, lastTenth: 0, lastLine: now)
        defer { states[p.task] = p.isFinished ? nil : s }
        switch style {
        case .quiet: return
        case .live:
            guard p.isFinished || now - s.lastDraw >= 0.1 else { return }
            s.lastDraw = now
            if p.isFinished && transient.contains(p.task) { write("\r\u{1B}[K"); return }
            write("\r\u{1B}[K" + line(p, state: s, now: now) + (p.isFinished ? "\n" : ""))
        case .plain, .json:
            let tenth = p.total > 0 ? p.done * 10 / p.total : 0
            guard p.isFinished || tenth > s.lastTenth || now - s.lastLine >= 30 else { return }
            if p.done == 0 && !p.isFinished { return }   // nothing to say yet
            s.lastTenth = tenth; s.lastLine = now
            write((style == .json ? event(p, state: s, now: now) : line(p, state: s, now: now)) + "\n")
        }
    }

    private func rate(_ p: TaskProgress, _ s: State, _ now: Double) -> Double? {
        let dt = now - s.t0, n = p.done - s.done0
        return dt > 0 && n > 0 ? Double(n) / dt : nil
    }

    /// "eval 52/208 records 25%  1.7 records/s  ETA 1m32s  accuracy 0.615".
    func line(_ p: TaskProgress, state s: State, now: Double) -> String {
        var parts = ["\(labels[p.task] ?? p.task.rawValue) \(p.done)/\(p.total) \(p.unit)"]
        if p.total > 0 { parts[0] += String(format: " %d%%", p.done * 100 / p.total) }
        if let b = p.bytes { parts.append(byteCount(b)) }
        let r = rate(p, s, now)
        if let r { parts.append(String(format: r >= 10 ? "%.0f %@/s" : "%.2f %@/s", r, p.unit)) }
        if p.isFinished {
            parts.append("done in " + duration(now - s.t0))
        } else {
            parts.append("ETA " + (r.map { duration(Double(p.total - p.done) / $0) } ?? "?"))
        }
        if let name = p.metricName, let v = p.metricValue { parts.append(String(format: "%@ %.4f", name, v)) }
        return parts.joined(separator: "  ")
    }

    func event(_ p: TaskProgress, state s: State, now: Double) -> String {
        var fields: [(String, JSON)] = [("event", .string("progress")), ("task", .string(p.task.rawValue)),
                                        ("done", .int(Int64(p.done))), ("total", .int(Int64(p.total))),
                                        ("unit", .string(p.unit)), ("elapsed_s", .double(now - s.t0))]
        if let b = p.bytes { fields.append(("bytes", .int(Int64(b)))) }
        if let r = rate(p, s, now) {
            fields.append(("rate", .double(r)))
            if !p.isFinished { fields.append(("eta_s", .double(Double(p.total - p.done) / r))) }
        }
        if let name = p.metricName, let v = p.metricValue { fields.append((name, .double(v))) }
        return JSON.object(fields).serialized(pretty: false)
    }
}
