import Foundation
import XCTest

/// The output folder is claimed before training: locked, writable, no symlinked log, stale
/// temporaries cleaned; `resume_from_checkpoint: latest` and a log without repeated steps.
final class OutputFolderTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = FileManager.default.temporaryDirectory.appendingPathComponent("lora-out-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
    }
    override func tearDown() {
        _ = try? FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: tmp.path)
        try? FileManager.default.removeItem(at: tmp)
    }

    func finetune(_ out: URL, _ extra: [String] = []) throws -> LoraProcess.Result {
        try LoraProcess.run(["finetune", "--base-model", Self.fixtures.appendingPathComponent("tiny-mha").path,
                             "--data-path", Self.fixtures.appendingPathComponent("records.json").path, "--output-dir", out.path,
                             "--batch-size", "2", "--micro-batch-size", "1", "--val-set-size", "0", "--max-steps", "4",
                             "--warmup-steps", "1", "--logging-steps", "1", "--save-steps", "2", "--cutoff-len", "64",
                             "--load-8bit", "false"] + extra)
    }

    func testLiveLockIsRefusedStaleLockAndTemporariesAreTakenOver() throws {
        let out = tmp.appendingPathComponent("out")
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        let lock = out.appendingPathComponent(".lora.lock")
        try "\(getpid())\n".write(to: lock, atomically: true, encoding: .utf8)   // this test process: alive
        var r = try finetune(out)
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssert(r.stderr.contains("pid \(getpid())"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out.appendingPathComponent("adapter_model.safetensors").path))

        // A live pid whose start time is not the lock's: the pid was reused (say, after a
        // reboot), so the lock is stale.
        try "\(getpid())\nstart 1@not-this-boot\n".write(to: lock, atomically: true, encoding: .utf8)
        r = try finetune(out)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: lock.path), "lock released")
        // The same pid with its real start time is the owner: refused.
        let stat = try String(contentsOfFile: "/proc/self/stat", encoding: .utf8)
        let fields = stat[stat.index(after: stat.lastIndex(of: ")")!)...].split(separator: " ")
        let boot = try String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        try "\(getpid())\nstart \(fields[19])@\(boot)\n".write(to: lock, atomically: true, encoding: .utf8)
        r = try finetune(out)
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssert(r.stderr.contains("pid \(getpid())"), r.stderr)

        try "2147483000\n".write(to: lock, atomically: true, encoding: .utf8)    // no such process
        for stale in [".checkpoint-3.tmp-77", ".checkpoint-1.del-77"] {
            try FileManager.default.createDirectory(at: out.appendingPathComponent(stale), withIntermediateDirectories: true)
        }
        r = try finetune(out)
        XCTAssertEqual(r.status, 0, r.stderr)
        let names = try FileManager.default.contentsOfDirectory(atPath: out.path)
        XCTAssertFalse(names.contains { $0.hasPrefix(".") }, "\(names)")   // lock released, temporaries gone
        XCTAssert(names.contains("adapter_model.safetensors"))
    }

    func testSymlinkedLogIsRefused() throws {
        let out = tmp.appendingPathComponent("out")
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        let target = tmp.appendingPathComponent("elsewhere.txt")
        try "keep\n".write(to: target, atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(at: out.appendingPathComponent("trainer_log.jsonl"), withDestinationURL: target)
        let r = try finetune(out)
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssert(r.stderr.contains("trainer_log.jsonl") && r.stderr.contains("symbolic link"), r.stderr)
        XCTAssertEqual(try String(contentsOf: target, encoding: .utf8), "keep\n")
    }

    func testUnwritableFolderSaysPermissionDenied() throws {
        guard getuid() != 0 else { throw XCTSkip("root writes anywhere") }
        try FileManager.default.setAttributes([.posixPermissions: 0o555], ofItemAtPath: tmp.path)
        let r = try finetune(tmp.appendingPathComponent("out"))
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssert(r.stderr.contains("permission denied"), r.stderr)
        XCTAssertFalse(r.stderr.contains("NSCocoaErrorDomain"), r.stderr)
    }

    func testResumeLatestDoesNotRepeatLoggedSteps() throws {
        let out = tmp.appendingPathComponent("out")
        var r = try finetune(out, ["--resume-from-checkpoint", "latest"])   // nothing to resume: from step 0
        XCTAssertEqual(r.status, 0, r.stderr)
        // checkpoint-2 is the newest complete one; a half-written checkpoint-3 is ignored.
        try FileManager.default.createDirectory(at: out.appendingPathComponent("checkpoint-3"), withIntermediateDirectories: true)
        r = try finetune(out, ["--resume-from-checkpoint", "latest"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssert(r.stderr.contains("checkpoint-2"), r.stderr)
        let log = try String(contentsOf: out.appendingPathComponent("trainer_log.jsonl"), encoding: .utf8)
        let steps = log.split(separator: "\n").compactMap { line -> Int? in
            guard let j = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { return nil }
            return j["step"] as? Int
        }
        XCTAssertEqual(steps, [1, 2, 3, 4], log)
    }
}
