import Foundation
import XCTest
import LLaMA

/// Ctrl-C during `lora finetune` writes a checkpoint and exits 130; resuming it finishes.
final class InterruptTests: XCTestCase {
    func testSIGINTWritesCheckpointAndExits130() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lora-int-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        defer { try? FileManager.default.removeItem(at: dir) }
        let args = ["finetune", "--base-model", CLITests.fixtures.appendingPathComponent("tiny-mha").path,
                    "--data-path", CLITests.fixtures.appendingPathComponent("records.json").path,
                    "--output-dir", dir.path, "--batch-size", "2", "--micro-batch-size", "1", "--val-set-size", "0",
                    "--max-steps", "100000", "--save-steps", "100000", "--logging-steps", "1", "--cutoff-len", "64",
                    "--load-8bit", "false"]
        let p = Process()
        p.executableURL = CLITests.binary
        p.arguments = args
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        // Wait for the first logged step, then interrupt.
        let h = err.fileHandleForReading
        var seen = ""
        let deadline = Date().addingTimeInterval(60)
        while !seen.contains("step 3/") && Date() < deadline {
            seen += String(decoding: h.availableData, as: UTF8.self)
        }
        XCTAssert(seen.contains("step 3/"), seen)
        kill(p.processIdentifier, SIGINT)
        seen += String(decoding: h.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 130, seen)
        let names = try FileManager.default.contentsOfDirectory(atPath: dir.path)
        let cps = names.filter { $0.hasPrefix("checkpoint-") }
        XCTAssertEqual(cps.count, 1, "\(names)")
        XCTAssertFalse(names.contains(Adapter.weightsFile), "no final adapter after an interrupt")
        XCTAssertFalse(names.contains { $0.hasPrefix(".") }, "no temporary files: \(names)")
        let cp = dir.appendingPathComponent(cps[0])
        for f in ["adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json"] {
            XCTAssert(FileManager.default.fileExists(atPath: cp.appendingPathComponent(f).path), f)
        }
        XCTAssert(seen.contains("interrupted"), seen)
    }
}
