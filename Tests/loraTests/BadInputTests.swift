import Foundation
import XCTest

/// The bad-input catalogue (Tests/Fixtures/bad, written by scripts/make_bad_inputs.py): each
/// case runs the `lora` binary as a user would and must exit 1 with exactly one `error:` line
/// naming the file or key, no crash or Foundation dump, nothing on stdout and no output folder.
final class BadInputTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")

    struct Case: Decodable { let name: String; let args: [String]; let expect: [String] }

    func testEveryBadInputGivesOneCleanError() throws {
        let bad = Self.fixtures.appendingPathComponent("bad")
        let cases = try JSONDecoder().decode([Case].self, from: Data(contentsOf: bad.appendingPathComponent("cases.json")))
        XCTAssertGreaterThanOrEqual(cases.count, 40)
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("lora-bad-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: tmp) }
        let start = Date()
        for c in cases {
            let out = tmp.appendingPathComponent(c.name)
            let args = c.args.map {
                $0.replacingOccurrences(of: "$BAD", with: bad.path).replacingOccurrences(of: "$FIX", with: Self.fixtures.path)
                    .replacingOccurrences(of: "$OUT", with: out.path)
            }
            let r = try LoraProcess.run(args, cwd: tmp)
            let errors = r.stderr.split(separator: "\n").filter { $0.hasPrefix("error:") }
            XCTAssertEqual(r.status, 1, "\(c.name): exit \(r.status)\n\(r.stderr)")
            XCTAssertEqual(errors.count, 1, "\(c.name): expected one error line\n\(r.stderr)")
            if let line = errors.first {
                for e in c.expect { XCTAssert(line.contains(e), "\(c.name): '\(line)' does not name \(e)") }
            }
            for dump in ["NSCocoaErrorDomain", "Fatal error", "Error Domain="] {
                XCTAssertFalse(r.stderr.contains(dump), "\(c.name): \(r.stderr)")
            }
            XCTAssertEqual(r.stdout, "", "\(c.name): wrote to stdout")
            XCTAssertFalse(FileManager.default.fileExists(atPath: out.path), "\(c.name): left \(out.path) behind")
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 60)
    }
}
