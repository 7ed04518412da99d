import Foundation
import XCTest
@testable import LLaMA

/// `ConfigFile.preScan`, the guard in front of Yams: ordinary YAML (quotes with apostrophes and
/// brackets, plain scalars holding quotes and dashes, block scalars, flow lists, comments) passes
/// and parses; nesting, anchors and aliases are refused even where a quote inside a plain scalar
/// could make a naive scan think the rest of the file is quoted (the session-7 fuzz crash).
final class ConfigPreScanTests: XCTestCase {
    func testOrdinaryYAMLPasses() throws {
        let texts = [
            "base_model: \"it's [here]\"  # a comment with 'quote\nlora_r: 8\n",
            "output_dir: 'don''t - [x'\nlora_target_modules: [q_proj, v_proj]\n",
            "output_dir: a - 'b [c {d\nlora_target_modules:\n  - q_proj\n  - v_proj\n",
            "chat_template: |\n  [INST] {x} ' \" &a *b ? c\n  - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -\nlora_r: 4\n",
            "chat_template: >-\n    folded 'text\n    more [text\nlora_alpha: 16\n",
            "lora_target_modules: [q_proj, # comment ]\n  v_proj]\n",
            "output_dir: \"multi\n  line ' [ quoted\"\nlora_r: 8\n",
        ]
        for t in texts {
            XCTAssertNoThrow(try ConfigFile.preScan(t, file: "c.yml"), t)
            // Through the whole load: Yams must read it (a key's own check may still refuse a value).
            do { try load(t) } catch {
                XCTAssertFalse(["invalid YAML", "nested", "anchors", "complex"].contains { "\(error)".contains($0) }, "\(t): \(error)")
            }
        }
    }

    func testHiddenNestingAndAliasesAreRefused() {
        let deep = "- " * 40 + "x\n"
        let cases: [(String, String)] = [
            ("lora_ ' x:\n" + deep, "nested"),                                  // the fuzz crash, minimised
            ("a: x 'y\nb:\n" + deep, "nested"),
            ("a: x 'y\nb: " + String(repeating: "[", count: 40) + "\n", "nested"),
            ("a: \"open\nb: " + String(repeating: "[", count: 40) + "\n", "nested"),  // a quote left open
            ("a: \"open\nb: &x [1]\nc: *x\n", "anchors"),
            ("chat_template: |\n  text\n" + deep, "nested"),                   // the block ends at column 0
            ("a: " + String(repeating: "[", count: 40), "nested"),
            ("? [a]\n: 1\n", "complex"),
        ]
        for (t, want) in cases {
            XCTAssertThrowsError(try ConfigFile.preScan(t, file: "c.yml"), String(t.prefix(60))) { e in
                XCTAssertTrue("\(e)".contains(want) && "\(e)".contains("c.yml"), "\(e)")
            }
        }
    }

    private func load(_ t: String) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lora-prescan-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let y = dir.appendingPathComponent("c.yml")
        try t.write(to: y, atomically: true, encoding: .utf8)
        _ = try ConfigFile.load(y.path)
    }
}

private func * (s: String, n: Int) -> String { String(repeating: s, count: n) }
