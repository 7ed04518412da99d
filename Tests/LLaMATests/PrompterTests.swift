import Foundation
import XCTest
import LLaMA

/// alpaca-lora's templates and utils/prompter.py, reproduced exactly.
final class PrompterTests: XCTestCase {
    static let templatesFolder = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("configs").appendingPathComponent("templates")

    /// configs/templates/*.json and the strings compiled into the binary are the same bytes, and
    /// those are alpaca-lora's (sizes of tloen/alpaca-lora templates/*.json at 8bb8579).
    func testBuiltinTemplatesEqualConfigFilesByteForByte() throws {
        let upstreamSizes = ["alpaca": 542, "alpaca_short": 281, "alpaca_legacy": 561, "vigogne": 605]
        XCTAssertEqual(Prompter.builtinNames, ["alpaca", "alpaca_short", "alpaca_legacy", "vigogne"])
        for name in Prompter.builtinNames {
            let file = try Data(contentsOf: Self.templatesFolder.appendingPathComponent("\(name).json"))
            let builtin = Data(try XCTUnwrap(Prompter.builtinJSON(named: name)).utf8)
            XCTAssertEqual(file, builtin, "configs/templates/\(name).json differs from BuiltinTemplates.swift")
            XCTAssertEqual(builtin.count, upstreamSizes[name], name)
        }
        let files = try FileManager.default.contentsOfDirectory(atPath: Self.templatesFolder.path)
            .filter { $0.hasSuffix(".json") }.sorted()
        XCTAssertEqual(files, Prompter.builtinNames.map { "\($0).json" }.sorted(),
                       "every template in configs/templates is built in, and the other way round")
        // The details an editor would destroy: trailing spaces, the final newline, precomposed é.
        XCTAssertTrue(Prompter.builtinJSON(named: "alpaca")!.hasSuffix("\"### Response:\"    \n}\n"))
        XCTAssertTrue(Prompter.builtinJSON(named: "vigogne")!.hasSuffix("\"### R\u{E9}ponse:\"\n}\n"))
        XCTAssertTrue(Array(Prompter.builtinJSON(named: "vigogne")!.utf8).starts(with: Array("{\n    \"description\": \"French".utf8)))
    }

    func testBuiltinEqualsTheSameFileLoadedFromDisk() throws {
        for name in Prompter.builtinNames {
            let builtin = try Prompter(named: name)
            let file = try Prompter(path: Self.templatesFolder.appendingPathComponent("\(name).json"))
            XCTAssertEqual(builtin, file)
            XCTAssertEqual(builtin.source, "built-in template '\(name)'")
        }
    }

    func testAlpacaPrompts() throws {
        let p = try Prompter(named: "alpaca")
        XCTAssertEqual(p.description, "Template used by Alpaca-LoRA.")
        XCTAssertEqual(p.responseSplit, "### Response:")
        XCTAssertEqual(p.generatePrompt(instruction: "Add the numbers.", input: "2 and 3", label: "5"),
                       "Below is an instruction that describes a task, paired with an input that provides further context. "
                       + "Write a response that appropriately completes the request.\n\n"
                       + "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n5")
        let noInput = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
            + "### Instruction:\nName a color.\n\n### Response:\n"
        XCTAssertEqual(p.generatePrompt(instruction: "Name a color.", input: nil, label: nil), noInput)
        XCTAssertEqual(p.generatePrompt(instruction: "Name a color.", input: "", label: ""), noInput,
                       "empty input and label count as absent, as Python's truthiness")
        XCTAssertEqual(p.generatePrompt(instruction: "Name a color."), noInput)
        XCTAssertTrue(p.generatePrompt(instruction: "i", input: " ").contains("### Input:\n \n\n"),
                      "a blank but non-empty input is an input")
    }

    func testOtherBuiltinTemplates() throws {
        let short = try Prompter(named: "alpaca_short")
        XCTAssertEqual(short.generatePrompt(instruction: "I", input: "X"), "### Instruction:\nI\n\n### Input:\nX\n\n### Response:\n")
        XCTAssertEqual(short.generatePrompt(instruction: "I"), "### Instruction:\nI\n\n### Response:\n")
        let legacy = try Prompter(named: "alpaca_legacy")
        XCTAssertTrue(legacy.generatePrompt(instruction: "I").hasSuffix("### Instruction:\nI\n\n### Response:"),
                      "the legacy template has no newline after 'Response:'")
        XCTAssertTrue(legacy.generatePrompt(instruction: "I", label: "out").hasSuffix("### Response:out"))
        let vigogne = try Prompter(named: "vigogne")
        XCTAssertEqual(vigogne.responseSplit, "### Réponse:")
        XCTAssertEqual(vigogne.generatePrompt(instruction: "Dis bonjour.", input: "à Paul"),
                       "Ci-dessous se trouve une instruction qui décrit une tâche, associée à une entrée qui fournit un "
                       + "contexte supplémentaire. Écrivez une réponse qui complète correctement la demande.\n\n"
                       + "### Instruction:\nDis bonjour.\n\n### Entrée:\nà Paul\n\n### Réponse:\n")
    }

    func testSubstitutedTextIsNotScannedForPlaceholders() throws {
        let p = try Prompter(named: "alpaca_short")
        XCTAssertEqual(p.generatePrompt(instruction: "Use {input} and {{braces}}", input: "{instruction}"),
                       "### Instruction:\nUse {input} and {{braces}}\n\n### Input:\n{instruction}\n\n### Response:\n")
    }

    /// utils/prompter.py get_response: output.split(response_split)[1].strip().
    func testResponseExtraction() throws {
        let p = try Prompter(named: "alpaca")
        let prompt = p.generatePrompt(instruction: "Name a color.")
        XCTAssertEqual(p.response(from: prompt + " Blue.\n"), "Blue.")
        XCTAssertEqual(p.response(from: prompt), "")
        XCTAssertEqual(p.response(from: "### Response: first ### Response: second"), "first",
                       "the text between the first and the second split, as split(...)[1]")
        XCTAssertEqual(p.response(from: "no split here"), "", "alpaca-lora raises IndexError; we return empty")
        XCTAssertEqual(p.response(from: "### response: lower case"), "", "the split is case-sensitive")
        XCTAssertEqual(p.response(from: "### Response:\u{1C}\u{A0}\t x y \u{2003}\n\u{85}"), "x y",
                       "Python's strip() whitespace, including U+001C and NEL")
        XCTAssertEqual(p.response(from: "### Response:\u{200B}z"), "\u{200B}z", "zero-width space is not whitespace")
        // Matching is by code point: a decomposed "é" does not match vigogne's precomposed split.
        let v = try Prompter(named: "vigogne")
        XCTAssertEqual(v.response(from: "### Réponse: oui"), "oui")
        XCTAssertEqual(v.response(from: "### Re\u{301}ponse: oui"), "")
    }

    // MARK: user templates and errors

    func withTemplate(_ json: String, _ body: (URL) throws -> Void) throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("lora-template-\(UUID().uuidString).json")
        try Data(json.utf8).write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        try body(url)
    }

    func testUserTemplate() throws {
        let json = #"{"prompt_input": "Q {{literal}}: {instruction} | {input}\n", "prompt_no_input": "Q: {instruction}\n", "response_split": "A:"}"#
        try withTemplate(json) { url in
            let p = try Prompter(path: url)
            XCTAssertEqual(p.source, url.path)
            XCTAssertEqual(p.description, "", "description is optional")
            XCTAssertEqual(p.generatePrompt(instruction: "i", input: "x", label: "A: y"), "Q {literal}: i | x\nA: y")
            XCTAssertEqual(p.generatePrompt(instruction: "i"), "Q: i\n")
            XCTAssertEqual(p.response(from: "Q: i\nA: y "), "y")
        }
    }

    func testTemplateErrorsNameFileAndKey() throws {
        func expect(_ json: String, _ expected: (String) -> PrompterError, line: UInt = #line) throws {
            try withTemplate(json) { url in
                XCTAssertThrowsError(try Prompter(path: url), line: line) { error in
                    XCTAssertEqual(error as? PrompterError, expected(url.path), line: line)
                    XCTAssertTrue("\(error)".contains(url.path), "\(error)", line: line)
                }
            }
        }
        try expect(#"{"prompt_input": "{instruction}", "response_split": "R"}"#) {
            .missingKey(file: $0, key: "prompt_no_input")
        }
        try expect(#"{"prompt_input": "{instruction}", "prompt_no_input": "", "response_split": 3}"#) {
            .wrongType(file: $0, key: "response_split", expected: "a string, found an integer")
        }
        try expect(#"{"prompt_input": "{instruction}", "prompt_no_input": "", "response_split": ""}"#) {
            .badTemplate(file: $0, key: "response_split", reason: "must not be empty (it is the text the response follows)")
        }
        try expect(#"{"prompt_input": "x", "prompt_no_input": "{input}", "response_split": "R"}"#) {
            .badTemplate(file: $0, key: "prompt_no_input",
                         reason: "placeholder {input} is not supported here (only {instruction}; write '{{' and '}}' for literal braces)")
        }
        try withTemplate(#"{"prompt_input": "{output}", "prompt_no_input": "", "response_split": "R"}"#) { url in
            XCTAssertThrowsError(try Prompter(path: url)) { error in
                guard case .badTemplate(url.path, "prompt_input", _)? = error as? PrompterError else {
                    return XCTFail("\(error)")
                }
            }
        }
        for bad in ["{instruction", "a } b", "{instruction!r}"] {
            try withTemplate(#"{"prompt_input": "\#(bad)", "prompt_no_input": "", "response_split": "R"}"#) { url in
                XCTAssertThrowsError(try Prompter(path: url), bad) { error in
                    guard case .badTemplate(url.path, "prompt_input", _)? = error as? PrompterError else {
                        return XCTFail("\(bad): \(error)")
                    }
                }
            }
        }
        for bad in ["{", "[1, 2]", "not json"] {
            try withTemplate(bad) { url in
                XCTAssertThrowsError(try Prompter(path: url), bad) { error in
                    guard case .invalidJSON(url.path, _)? = error as? PrompterError else {
                        return XCTFail("\(bad): \(error)")
                    }
                }
            }
        }
        let absent = URL(fileURLWithPath: "/nonexistent/template.json")
        XCTAssertThrowsError(try Prompter(path: absent)) { error in
            guard case .unreadable(absent.path, _)? = error as? PrompterError else { return XCTFail("\(error)") }
        }
        XCTAssertThrowsError(try Prompter(named: "alpaca.json")) { error in
            XCTAssertEqual(error as? PrompterError,
                           .unknownTemplate(name: "alpaca.json", available: ["alpaca", "alpaca_short", "alpaca_legacy", "vigogne"]))
        }
    }
}
