import Foundation
import XCTest

/// `kill -9` at any moment of `lora finetune`, then `--resume-from-checkpoint latest` until a
/// run finishes, gives the adapter an uninterrupted run gives, byte for byte, whatever the
/// thread count of the resumed runs; no temporary or half-written files are left and the log
/// holds every step once.
final class KillResumeTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    static let maxSteps = 10
    static let kills = 20

    var tmp: URL!

    override func setUpWithError() throws {
        tmp = FileManager.default.temporaryDirectory.appendingPathComponent("lora-kill-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
    }
    override func tearDown() {
        try? FileManager.default.removeItem(at: tmp)
    }

    /// 6 records: 2 held out for eval, 4 trained in micro-batches of 1 with 2 accumulated per
    /// step (2 steps an epoch, 5 epochs), dropout on, a checkpoint every step (2 kept, the best too).
    func args(_ out: URL, threads: Int, resume: Bool) -> [String] {
        ["finetune", "--base-model", Self.fixtures.appendingPathComponent("tiny-gqa").path,
         "--data-path", Self.fixtures.appendingPathComponent("records.json").path, "--output-dir", out.path,
         "--batch-size", "2", "--micro-batch-size", "1", "--val-set-size", "2", "--eval-steps", "2",
         "--max-steps", "\(Self.maxSteps)", "--warmup-steps", "1", "--logging-steps", "1", "--save-steps", "1",
         "--save-total-limit", "2", "--lora-dropout", "0.1", "--learning-rate", "0.01", "--cutoff-len", "64",
         "--load-8bit", "false", "--threads", "\(threads)"] + (resume ? ["--resume-from-checkpoint", "latest"] : [])
    }

    struct Outcome { let status: Int32; let killed: Bool; let seconds: Double; let stderr: String }

    /// Runs `lora` with its stderr in a file; with `killAfter`, sends SIGKILL after that many
    /// seconds unless the run has ended by then.
    func run(_ args: [String], killAfter: Double? = nil) throws -> Outcome {
        let p = Process()
        p.executableURL = LoraProcess.binary
        p.arguments = args
        let errURL = tmp.appendingPathComponent("stderr-\(UInt32.random(in: 0...UInt32.max)).txt")
        FileManager.default.createFile(atPath: errURL.path, contents: nil)
        let err = try FileHandle(forWritingTo: errURL)
        defer { try? err.close(); try? FileManager.default.removeItem(at: errURL) }
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        let t0 = Date()
        try p.run()
        var killed = false
        if let killAfter {
            let deadline = t0.addingTimeInterval(killAfter)
            while p.isRunning && Date() < deadline { usleep(1000) }
            if p.isRunning { killed = kill(p.processIdentifier, SIGKILL) == 0 }
        }
        p.waitUntilExit()
        killed = killed && p.terminationReason == .uncaughtSignal
        let text = (try? String(contentsOf: errURL, encoding: .utf8)) ?? ""
        return Outcome(status: p.terminationStatus, killed: killed, seconds: Date().timeIntervalSince(t0), stderr: text)
    }

    /// trainer_log.jsonl as (step, kind, values that must not depend on interruptions).
    func logEntries(_ out: URL) throws -> [(step: Int, eval: Bool, values: [Double])] {
        let text = try String(contentsOf: out.appendingPathComponent("trainer_log.jsonl"), encoding: .utf8)
        return try text.split(separator: "\n").map { line in
            let j = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], String(line))
            let step = try XCTUnwrap(j["step"] as? Int, String(line))
            if let e = j["eval_loss"] as? Double { return (step, true, [e]) }
            return (step, false, ["loss", "grad_norm", "learning_rate"].map { (j[$0] as? Double) ?? .nan })
        }
    }

    /// Every name under `dir` (recursively) that a complete run must not leave.
    func leftovers(_ dir: URL) -> [String] {
        let fm = FileManager.default
        var bad: [String] = []
        for n in (try? fm.contentsOfDirectory(atPath: dir.path)) ?? [] {
            let u = dir.appendingPathComponent(n)
            if n.hasPrefix(".") || n.contains(".tmp-") || n.contains(".del-") || n.contains(".old-") { bad.append(u.path) }
            if n.hasPrefix("checkpoint-") {
                let files = Set((try? fm.contentsOfDirectory(atPath: u.path)) ?? [])
                let expected = Set(["adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json"])
                if files != expected { bad.append("\(u.path) holds \(files.sorted())") }
            }
        }
        return bad
    }

    func testKillNineAtRandomMomentsResumesToIdenticalAdapter() throws {
        let start = Date()
        let reference = tmp.appendingPathComponent("reference")
        let ref = try run(args(reference, threads: 2, resume: false))
        XCTAssertEqual(ref.status, 0, ref.stderr)
        let refAdapter = try Data(contentsOf: reference.appendingPathComponent("adapter_model.safetensors"))
        let refLog = try logEntries(reference)
        XCTAssertEqual(refLog.filter { !$0.eval }.map(\.step), Array(1...Self.maxSteps))
        XCTAssertEqual(leftovers(reference), [])
        // The same run on one thread: the same bytes (and a second measure of the duration).
        let single = tmp.appendingPathComponent("single")
        let one = try run(args(single, threads: 1, resume: false))
        XCTAssertEqual(one.status, 0, one.stderr)
        XCTAssertEqual(try Data(contentsOf: single.appendingPathComponent("adapter_model.safetensors")), refAdapter,
                       "the adapter depends on the thread count")
        var duration = min(ref.seconds, one.seconds)   // shortened when a run ends before its kill
        print(String(format: "kill-resume: uninterrupted runs %.3f s (2 threads), %.3f s (1 thread)", ref.seconds, one.seconds))

        // A seeded LCG (Knuth's MMIX constants): the same moments on every run of the test.
        var lcg: UInt64 = 0x5EED_0014
        func uniform() -> Double {
            lcg = lcg &* 6364136223846793005 &+ 1442695040888963407
            return Double(lcg >> 11) / Double(1 << 53)
        }
        var runs = 0, killedRuns = 0, resumes = 0
        for i in 0..<Self.kills {
            let out = tmp.appendingPathComponent("run-\(i)")
            // A moment in the run's duration; drawn again (at most 5 times) when the run ended first.
            var story = "run \(i):"
            var first: Outcome
            var tries = 0
            repeat {
                let moment = uniform() * duration
                try? FileManager.default.removeItem(at: out)
                first = try run(args(out, threads: 2, resume: false), killAfter: moment)
                runs += 1; tries += 1
                story += String(format: " killed at %.3f s", moment) + (first.killed ? "" : " (had ended);")
                if !first.killed { duration = min(duration, first.seconds) }
            } while !first.killed && tries < 5
            if first.killed { killedRuns += 1 } else { XCTAssertEqual(first.status, 0, "run \(i): \(first.stderr)") }
            var done = !first.killed
            var threads = i % 2 == 0 ? 1 : 2   // alternates between resumed runs, and between iterations
            var attempt = 0
            while !done {
                attempt += 1
                XCTAssertLessThan(attempt, 10, "run \(i): no end in sight")
                if attempt >= 10 { break }
                // The first resume is itself killed half the time; later ones run to the end.
                let again = attempt == 1 && uniform() < 0.5 ? uniform() * duration : nil
                let latest = (try? FileManager.default.contentsOfDirectory(atPath: out.path))?
                    .compactMap { $0.hasPrefix("checkpoint-") ? Int($0.dropFirst("checkpoint-".count)) : nil }.max()
                story += "; resume from \(latest.map { "checkpoint-\($0)" } ?? "step 0") on \(threads) thread\(threads == 1 ? "" : "s")"
                let r = try run(args(out, threads: threads, resume: true), killAfter: again)
                runs += 1; resumes += 1
                if let again { story += r.killed ? String(format: ", killed at %.3f s", again) : String(format: " (had ended before %.3f s)", again) }
                if r.killed { killedRuns += 1 } else {
                    XCTAssertEqual(r.status, 0, "run \(i) resume \(attempt) (threads \(threads)): \(r.stderr)")
                    done = r.status == 0
                    if !done { break }
                }
                threads = 3 - threads
            }
            print("kill-resume: " + story)
            guard done else { continue }
            let adapter = try Data(contentsOf: out.appendingPathComponent("adapter_model.safetensors"))
            if adapter != refAdapter {
                // Say where the run first parted from the uninterrupted one.
                let log = try logEntries(out)
                let firstDiff = zip(log, refLog).first { a, b in a.step != b.step || a.eval != b.eval || a.values != b.values }
                XCTFail("run \(i): adapter differs from the uninterrupted run; first differing log entry: "
                        + (firstDiff.map { "step \($0.0.step)\($0.0.eval ? " (eval)" : ""): \($0.0.values) vs \($0.1.values)" } ?? "none"))
            }
            let log = try logEntries(out)
            XCTAssertEqual(log.filter { !$0.eval }.map(\.step), Array(1...Self.maxSteps), "run \(i): repeated or missing steps")
            XCTAssertEqual(log.filter(\.eval).map(\.step), refLog.filter(\.eval).map(\.step), "run \(i): repeated or missing evals")
            for (a, b) in zip(log, refLog) where a.step == b.step && a.eval == b.eval {
                XCTAssertEqual(a.values, b.values, "run \(i): log of step \(a.step)\(a.eval ? " (eval)" : "") differs")
            }
            XCTAssertEqual(leftovers(out), [], "run \(i)")
            try? FileManager.default.removeItem(at: out)
        }
        XCTAssertGreaterThanOrEqual(killedRuns, Self.kills, "a kill should land in every one of the runs")
        print(String(format: "kill-resume: %d kill points, %d runs (%d killed, %d resumed) in %.1f s",
                     Self.kills, runs, killedRuns, resumes, Date().timeIntervalSince(start)))
    }
}
