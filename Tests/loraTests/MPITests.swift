import Foundation
import LLaMA
import XCTest

/// Data-parallel `lora finetune` under mpirun against the single-process run it must equal.
/// The MPI build lives in its own scratch path (`swift build --traits MPI --scratch-path
/// .build-mpi`); scripts/test.sh builds it and names it in LORA_MPI_BINARY. Without that
/// variable only the default build's refusal is tested and the rest is skipped.
final class MPITests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    /// The issue's bound. The trainer sums micro-batch gradients in double (Trainer
    /// `accumulateGradients`), so adapters are in fact equal bit for bit, which is asserted
    /// too; losses are double sums in another order and agree to rounding.
    static let relativeTolerance = 1e-6
    static let maxSteps = 6

    var tmp: URL!

    override func setUpWithError() throws {
        tmp = FileManager.default.temporaryDirectory.appendingPathComponent("lora-mpi-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(at: tmp) }

    /// The MPI build and mpirun, or a skip saying how to get them.
    func mpi() throws -> (binary: String, mpirun: String) {
        guard let bin = ProcessInfo.processInfo.environment["LORA_MPI_BINARY"] else {
            throw XCTSkip("LORA_MPI_BINARY is not set (scripts/test.sh builds .build-mpi/release/lora and sets it)")
        }
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: bin), "LORA_MPI_BINARY=\(bin) is not an executable")
        let mpirun = "/usr/bin/mpirun"
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: mpirun), "\(mpirun) missing (apt-get install openmpi-bin)")
        return (bin, mpirun)
    }

    /// 6 records: 2 held out (eval sharded over the ranks), 4 trained as 4 micro-batches of 1
    /// per step of 4 (2 per rank with 2 ranks), dropout on (ranks skip each other's draws).
    func args(_ out: URL, extra: [String] = []) -> [String] {
        ["finetune", "--base-model", Self.fixtures.appendingPathComponent("tiny-gqa").path,
         "--data-path", Self.fixtures.appendingPathComponent("records.json").path, "--output-dir", out.path,
         "--batch-size", "4", "--micro-batch-size", "1", "--val-set-size", "2", "--eval-steps", "2",
         "--max-steps", "\(Self.maxSteps)", "--warmup-steps", "1", "--logging-steps", "1", "--save-steps", "3",
         "--lora-dropout", "0.1", "--learning-rate", "0.01", "--cutoff-len", "64", "--load-8bit", "false",
         "--threads", "1"] + extra
    }

    static let mpirunFlags = ["--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
                              "--mca", "btl", "self,vader,tcp"]

    struct Outcome { let status: Int32; let stderr: String; let seconds: Double }

    /// Runs `exe args`, stderr to a file; `whileRunning` is called every 50 ms with the pid
    /// until the process ends; after `timeout` seconds the process is killed and the test fails.
    func run(_ exe: String, _ args: [String], environment: [String: String]? = nil, timeout: Double = 300,
             whileRunning: ((Int32) -> Void)? = nil) throws -> Outcome {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        if let environment { p.environment = environment }
        let errURL = tmp.appendingPathComponent("stderr-\(UInt32.random(in: 0...UInt32.max)).txt")
        _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
        let err = try FileHandle(forWritingTo: errURL)
        defer { try? err.close() }
        p.standardError = err
        p.standardOutput = err
        let t0 = Date()
        try p.run()
        while p.isRunning {
            if Date().timeIntervalSince(t0) > timeout {
                kill(p.processIdentifier, SIGKILL)
                XCTFail("\(exe) \(args.joined(separator: " ")) did not end within \(timeout) s")
                break
            }
            whileRunning?(p.processIdentifier)
            usleep(50_000)
        }
        p.waitUntilExit()
        let text = (try? String(contentsOf: errURL, encoding: .utf8)) ?? ""
        return Outcome(status: p.terminationStatus, stderr: text, seconds: Date().timeIntervalSince(t0))
    }

    /// Every tensor of two adapters: the largest element difference relative to the tensor's
    /// largest magnitude.
    func assertAdaptersClose(_ a: URL, _ b: URL, _ what: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let fa = try SafeTensorsFile(path: a.appendingPathComponent("adapter_model.safetensors").path)
        let fb = try SafeTensorsFile(path: b.appendingPathComponent("adapter_model.safetensors").path)
        XCTAssertEqual(fa.order, fb.order, what, file: file, line: line)
        var worst = 0.0, changed = 0
        for name in fa.order {
            let ta = try XCTUnwrap(try fa.f32(name)), tb = try XCTUnwrap(try fb.f32(name))
            XCTAssertEqual(ta.count, tb.count, name, file: file, line: line)
            var scale = 0.0, diff = 0.0
            for i in 0..<ta.count {
                scale = max(scale, abs(Double(ta[i])))
                diff = max(diff, abs(Double(ta[i]) - Double(tb[i])))
                if ta[i] != 0 { changed += 1 }
            }
            let rel = scale > 0 ? diff / scale : diff
            worst = max(worst, rel)
            XCTAssertLessThanOrEqual(rel, Self.relativeTolerance, "\(what): \(name) differs by \(rel) relative", file: file, line: line)
        }
        XCTAssertGreaterThan(changed, 0, "\(what): the adapters are all zero (nothing was trained)", file: file, line: line)
        let identical = try Data(contentsOf: a.appendingPathComponent("adapter_model.safetensors")) ==
            Data(contentsOf: b.appendingPathComponent("adapter_model.safetensors"))
        XCTAssertTrue(identical, "\(what): not bit-exact (largest relative difference \(worst))", file: file, line: line)
        print("\(what): largest relative difference \(worst), bit-exact: \(identical)")
    }

    /// trainer_log.jsonl entries as (step, loss | eval_loss, grad_norm).
    func log(_ out: URL) throws -> [(step: Int, values: [Double])] {
        let text = try String(contentsOf: out.appendingPathComponent("trainer_log.jsonl"), encoding: .utf8)
        return try text.split(separator: "\n").map { line in
            let j = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], String(line))
            let step = try XCTUnwrap(j["step"] as? Int, String(line))
            if let e = j["eval_loss"] as? Double { return (step, [e]) }
            return (step, [(j["loss"] as? Double) ?? .nan, (j["grad_norm"] as? Double) ?? .nan])
        }
    }

    func assertLogsClose(_ a: URL, _ b: URL, file: StaticString = #filePath, line: UInt = #line) throws {
        let la = try log(a), lb = try log(b)
        XCTAssertEqual(la.map(\.step), lb.map(\.step), "logged steps", file: file, line: line)
        XCTAssertEqual(la.count, Self.maxSteps + Self.maxSteps / 2, "a loss per step and an eval every 2 steps", file: file, line: line)
        for (x, y) in zip(la, lb) {
            XCTAssertEqual(x.values.count, y.values.count, file: file, line: line)
            for (u, v) in zip(x.values, y.values) {
                XCTAssertTrue(u.isFinite && u > 0, "step \(x.step): \(u)", file: file, line: line)
                XCTAssertLessThanOrEqual(abs(u - v), Self.relativeTolerance * abs(u), "step \(x.step): \(u) vs \(v)", file: file, line: line)
            }
        }
    }

    /// 2 ranks = 1 process with the same global batch: final adapter, losses, grad norms and
    /// eval losses; a checkpoint written by 2 ranks resumed by 1 process ends at the same adapter.
    func testTwoRanksEqualOneProcessAndResumeAcrossWorldSizes() throws {
        let (bin, mpirun) = try mpi()
        let single = tmp.appendingPathComponent("single"), two = tmp.appendingPathComponent("two")
        let r1 = try run(bin, args(single))
        XCTAssertEqual(r1.status, 0, r1.stderr)
        let r2 = try run(mpirun, Self.mpirunFlags + ["-np", "2", bin] + args(two))
        XCTAssertEqual(r2.status, 0, r2.stderr)
        XCTAssertTrue(r2.stderr.contains("tok/s  2 ranks"), "the progress line names the world size:\n\(r2.stderr)")
        XCTAssertTrue(r2.stderr.contains("in the gradient allreduce and"), r2.stderr)
        XCTAssertEqual(r2.stderr.components(separatedBy: "Training Alpaca-LoRA model with params").count, 2, "only rank 0 prints:\n\(r2.stderr)")
        print(String(format: "1 process %.1f s, 2 ranks %.1f s", r1.seconds, r2.seconds))
        try assertAdaptersClose(single, two, "2 ranks vs 1 process")
        try assertLogsClose(single, two)

        let resumed = tmp.appendingPathComponent("resumed")
        let cp = two.appendingPathComponent("checkpoint-3")
        XCTAssertTrue(FileManager.default.fileExists(atPath: cp.appendingPathComponent("trainer_state.json").path), "rank 0 wrote \(cp.path)")
        let r3 = try run(bin, args(resumed, extra: ["--resume-from-checkpoint", cp.path]))
        XCTAssertEqual(r3.status, 0, r3.stderr)
        XCTAssertTrue(r3.stderr.contains("resuming after step 3"), r3.stderr)
        try assertAdaptersClose(single, resumed, "2 ranks to step 3, then 1 process, vs 1 process")
    }

    /// DoRA's magnitude is one more trainable tensor in the same flat allreduce: 2 ranks give
    /// the single-process DoRA adapter too.
    func testDoRATwoRanksEqualOneProcess() throws {
        let (bin, mpirun) = try mpi()
        let single = tmp.appendingPathComponent("single"), two = tmp.appendingPathComponent("two")
        let dora = ["--use-dora", "true"]
        let r1 = try run(bin, args(single, extra: dora))
        XCTAssertEqual(r1.status, 0, r1.stderr)
        let r2 = try run(mpirun, Self.mpirunFlags + ["-np", "2", bin] + args(two, extra: dora))
        XCTAssertEqual(r2.status, 0, r2.stderr)
        try assertAdaptersClose(single, two, "DoRA, 2 ranks vs 1 process")
        try assertLogsClose(single, two)
    }

    /// SIGKILL of rank 1 mid-training: mpirun stops rank 0 (no hang), which says why, and the
    /// job fails, all within a bound.
    func testKilledRankStopsTheJob() throws {
        let (bin, mpirun) = try mpi()
        let out = tmp.appendingPathComponent("killed")
        var killed: Int32? = nil
        let r = try run(mpirun, Self.mpirunFlags + ["-np", "2", bin] + args(out, extra: ["--max-steps", "100000", "--save-steps", "100000"]),
                        timeout: 120) { mpirunPID in
            guard killed == nil, let text = try? String(contentsOf: out.appendingPathComponent("trainer_log.jsonl"), encoding: .utf8),
                  text.contains("\"step\":1") || text.contains("\"step\": 1") else { return }
            // mpirun starts the local ranks as its children; rank 1 is the one whose environment says so.
            for pid in Self.children(of: mpirunPID) where Self.environment(of: pid)["OMPI_COMM_WORLD_RANK"] == "1" {
                if kill(pid, SIGKILL) == 0 { killed = pid }
            }
        }
        XCTAssertNotNil(killed, "rank 1 was never found and killed:\n\(r.stderr)")
        XCTAssertNotEqual(r.status, 0, r.stderr)
        XCTAssertLessThan(r.seconds, 120, "the job ended")
        XCTAssertTrue(r.stderr.contains("rank 0 of 2: stopped by the MPI runtime"), "rank 0 says why it stops:\n\(r.stderr)")
        print("killed rank 1; mpirun ended after \(String(format: "%.1f", r.seconds)) s with status \(r.status):\n\(r.stderr.suffix(1200))")
    }

    /// The default build started as one of N MPI processes refuses and says how to build with
    /// MPI, instead of N independent runs writing the same folder.
    func testDefaultBuildRefusesUnderMPILauncher() throws {
        var env = ProcessInfo.processInfo.environment
        env["OMPI_COMM_WORLD_SIZE"] = "2"; env["OMPI_COMM_WORLD_RANK"] = "0"
        let out = tmp.appendingPathComponent("refused")
        let r = try run(LoraProcess.binary.path, args(out), environment: env)
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("built without MPI") && r.stderr.contains("OMPI_COMM_WORLD_SIZE=2") && r.stderr.contains("--traits MPI"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out.path), "nothing written")
    }

    /// An error on one rank (rank 0 cannot lock the output folder) names the rank and stops
    /// the others, which would otherwise wait for it in the first allreduce.
    func testErrorOnOneRankStopsTheJob() throws {
        let (bin, mpirun) = try mpi()
        let out = tmp.appendingPathComponent("locked")
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        try "\(getpid())\n".write(to: out.appendingPathComponent(".lora.lock"), atomically: true, encoding: .utf8)
        let r = try run(mpirun, Self.mpirunFlags + ["-np", "2", bin] + args(out, extra: ["--max-steps", "100000"]), timeout: 120)
        XCTAssertNotEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("error (rank 0 of 2)") && r.stderr.contains("in use by another lora process"), r.stderr)
        XCTAssertLessThan(r.seconds, 120, "the job ended")
    }

    static func children(of pid: Int32) -> [Int32] {
        let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)) ?? ""
        return text.split(separator: " ").compactMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    static func environment(of pid: Int32) -> [String: String] {
        guard let d = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { return [:] }
        var env: [String: String] = [:]
        for kv in d.split(separator: 0) {
            let s = String(decoding: kv, as: UTF8.self)
            if let eq = s.firstIndex(of: "=") { env[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
        }
        return env
    }
}
