import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// `output_dir/trainer_log.jsonl` (one JSON object per logged step and per eval) and
/// `output_dir/loss.svg` (train and eval loss curves), kept up to date during a run.
public final class TrainingLog {
    public let dir: URL
    var train: [(step: Int, loss: Double)] = []
    var eval: [(step: Int, loss: Double)] = []
    var handle: FileHandle?

    public init(outputDir: URL) {
        dir = outputDir
    }

    public static let fileName = "trainer_log.jsonl"

    private func append(_ j: JSON) {
        if handle == nil {
            try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            let url = dir.appendingPathComponent(Self.fileName)
            // O_NOFOLLOW: a symlink planted at the log's name is never followed out of the folder.
            let fd = open(url.path, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0o644)
            if fd >= 0 { handle = FileHandle(fileDescriptor: fd, closeOnDealloc: true) }
        }
        try? handle?.write(contentsOf: Data((j.serialized(pretty: false) + "\n").utf8))
    }

    /// Drops the entries of steps after `step` (and a torn last line), so a run resumed from
    /// checkpoint-`step` does not log those steps twice. Rewritten atomically.
    public static func truncate(in dir: URL, after step: Int) throws {
        let url = dir.appendingPathComponent(fileName)
        try OutputFolder.refuseSymlink(url)
        guard let data = FileManager.default.contents(atPath: url.path) else { return }
        var kept = ""
        var dropped = false
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: true) {
            if let j = try? JSON.parse(String(line), source: url.path), let s = j["step"]?.int, s <= step {
                kept += line + "\n"
            } else {
                dropped = true
            }
        }
        if dropped { try AtomicFile.write(kept, to: url) }
    }

    public func logged(_ p: TrainingEvent.Progress) {
        train.append((p.step, p.loss))
        append(.object([("step", .int(Int64(p.step))), ("epoch", .double(p.epoch)), ("loss", .double(p.loss)),
                        ("learning_rate", .double(p.learningRate)), ("grad_norm", .double(p.gradNorm)),
                        ("tokens_per_second", .double(p.tokensPerSecond)), ("elapsed", .double(p.elapsed))]))
    }

    public func evaluated(step: Int, loss: Double) {
        eval.append((step, loss))
        append(.object([("step", .int(Int64(step))), ("eval_loss", .double(loss))]))
    }

    public func close() throws {
        try? handle?.close()
        handle = nil
        try AtomicFile.write(svg(), to: dir.appendingPathComponent("loss.svg"))
    }

    /// A small self-contained SVG plot; no dependencies.
    public func svg(width: Double = 640, height: Double = 360) -> String {
        let pad = 48.0
        let all = train + eval
        let maxStep = Double(all.map(\.step).max() ?? 1)
        let losses = all.map(\.loss).filter(\.isFinite)
        let lo = (losses.min() ?? 0), hi = max((losses.max() ?? 1), lo + 1e-9)
        func x(_ s: Int) -> Double { pad + (width - 2 * pad) * Double(s) / max(maxStep, 1) }
        func y(_ l: Double) -> Double { height - pad - (height - 2 * pad) * (l - lo) / (hi - lo) }
        func path(_ pts: [(step: Int, loss: Double)]) -> String {
            pts.filter { $0.loss.isFinite }.enumerated().map { i, p in
                String(format: "%@%.1f,%.1f", i == 0 ? "M" : "L", x(p.step), y(p.loss))
            }.joined(separator: " ")
        }
        var s = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" font-family="sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <line x1="\(pad)" y1="\(height - pad)" x2="\(width - pad)" y2="\(height - pad)" stroke="black"/>
        <line x1="\(pad)" y1="\(pad)" x2="\(pad)" y2="\(height - pad)" stroke="black"/>
        <text x="\(width / 2)" y="\(height - 12)" text-anchor="middle">step</text>
        <text x="12" y="\(pad - 12)">loss</text>
        <text x="\(pad - 4)" y="\(y(hi) + 4)" text-anchor="end">\(String(format: "%.3g", hi))</text>
        <text x="\(pad - 4)" y="\(y(lo) + 4)" text-anchor="end">\(String(format: "%.3g", lo))</text>
        <text x="\(width - pad)" y="\(height - pad + 16)" text-anchor="end">\(Int(maxStep))</text>

        """
        if !train.isEmpty { s += "<path d=\"\(path(train))\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\"/>\n" }
        if !eval.isEmpty {
            s += "<path d=\"\(path(eval))\" fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\" stroke-dasharray=\"6 3\"/>\n"
            for p in eval where p.loss.isFinite { s += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"#d62728\"/>\n", x(p.step), y(p.loss)) }
        }
        s += "<text x=\"\(width - pad - 120)\" y=\"\(pad)\" fill=\"#1f77b4\">train loss</text>\n"
        s += "<text x=\"\(width - pad - 120)\" y=\"\(pad + 16)\" fill=\"#d62728\">eval loss</text>\n</svg>\n"
        return s
    }
}
