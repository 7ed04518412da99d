import Foundation
import XCTest
@testable import LLaMA

/// Foundation's file errors on Linux carry the errno as an underlying Swift `POSIXError`;
/// `ioReason` and `fileErrorDescription` turn them into "PATH: cannot read: REASON".
final class IOReasonTests: XCTestCase {
    func testFoundationFileErrorsBecomeOneLineWithPathAndReason() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lora-io-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("f.txt")
        try "x".write(to: file, atomically: true, encoding: .utf8)
        func line(_ body: () throws -> Void) -> String? {
            do { try body(); return nil } catch { return fileErrorDescription(error) }
        }
        XCTAssertEqual(line { _ = try Data(contentsOf: dir.appendingPathComponent("nope")) },
                       "\(dir.path)/nope: cannot read: no such file or directory")
        XCTAssertEqual(line { _ = try Data(contentsOf: dir) }, "\(dir.path): cannot read: is a directory")
        XCTAssertEqual(line { _ = try String(contentsOfFile: file.path + "/x", encoding: .utf8) }, "\(file.path)/x: cannot read: not a directory")
        XCTAssertEqual(line { _ = try FileManager.default.contentsOfDirectory(atPath: file.path) }, "\(file.path): cannot read: not a directory")
        let mk = line { try FileManager.default.createDirectory(atPath: file.path + "/a/b", withIntermediateDirectories: true) }
        XCTAssert(mk?.hasSuffix("cannot write: not a directory") == true, mk ?? "nil")
        XCTAssertEqual(line { throw CheckpointError.missingKey(file: "c.json", key: "r") }, nil)   // not a file-system error
        XCTAssertEqual(folderProblem(file), "not a directory")
        XCTAssertEqual(folderProblem(dir.appendingPathComponent("nope")), "no such file or directory")
        XCTAssertNil(folderProblem(dir))
    }
}
