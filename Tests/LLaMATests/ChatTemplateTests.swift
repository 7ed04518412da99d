import XCTest
@testable import LLaMA

/// Chat templates against transformers' `apply_chat_template` on the real Jinja templates
/// (Tests/Fixtures/chat/reference.json, written by scripts/make_chat_reference.py).
final class ChatTemplateTests: XCTestCase {
    struct Reference {
        var templates: [String: JSON] = [:]
        var conversations: [String: [ChatMessage]] = [:]
        var cases: [JSON] = []
    }

    static func reference() throws -> Reference {
        let j = try JSON.parse(contentsOf: Fixtures.root.appendingPathComponent("chat/reference.json"))
        var r = Reference()
        guard case .object(let ts)? = j["templates"], case .object(let cs)? = j["conversations"] else {
            throw XCTSkip("malformed fixture")
        }
        for (k, v) in ts { r.templates[k] = v }
        for (k, v) in cs {
            r.conversations[k] = v.array!.map { ChatMessage(role: $0["role"]!.string!, content: $0["content"]!.string!) }
        }
        r.cases = j["cases"]!.array!
        return r
    }

    static func template(_ t: JSON) throws -> ChatTemplate {
        try ChatTemplate.detect(source: t["source"]!.string!)
            .withSpecialTokens(bos: t["bos_token"]!.string!, eos: t["eos_token"]!.string!)
    }

    func testDetectsEveryReferenceTemplateAsItsKindAndRefusesOthers() throws {
        let r = try Self.reference()
        XCTAssertGreaterThanOrEqual(r.templates.count, 10)
        for (name, t) in r.templates {
            let source = t["source"]!.string!
            if let kind = t["kind"]?.string {
                XCTAssertEqual(try ChatTemplate.detect(source: source).kind.rawValue, kind, name)
            } else {
                XCTAssertThrowsError(try ChatTemplate.detect(source: source), name) { e in
                    guard case ChatTemplateError.unrecognized = e else { return XCTFail("\(name): \(e)") }
                }
            }
        }
        XCTAssertEqual(try ChatTemplate.detect(source: r.templates["smollm2"]!["source"]!.string!).defaultSystemPrompt,
                       "You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        XCTAssertEqual(try ChatTemplate.detect(source: r.templates["qwen2"]!["source"]!.string!).defaultSystemPrompt,
                       "You are a helpful assistant.")
        XCTAssertNil(try ChatTemplate.detect(source: r.templates["chatml"]!["source"]!.string!).defaultSystemPrompt)
        XCTAssertTrue(try ChatTemplate.detect(source: r.templates["mistral_v01"]!["source"]!.string!).spaceAfterEOS)
        XCTAssertFalse(try ChatTemplate.detect(source: r.templates["mistral_v02"]!["source"]!.string!).spaceAfterEOS)
    }

    /// Re-spaced and re-quoted copies (as a user's template file may be) are still recognised.
    func testDetectionSurvivesReformatting() throws {
        let r = try Self.reference()
        for name in ["smollm2", "llama2", "llama3", "mistral_v01", "alpaca"] {
            let t = r.templates[name]!
            let original = try Self.template(t)
            let reformatted = t["source"]!.string!
                .replacingOccurrences(of: "{% ", with: "{%- ").replacingOccurrences(of: "%}{", with: "%}\n{")
            XCTAssertEqual(try ChatTemplate.detect(source: reformatted).withSpecialTokens(bos: original.bosToken, eos: original.eosToken),
                           original, name)
        }
        // SmolLM2's template as tokenizer_config.json escapes it (backslash-n inside the literal).
        let escaped = r.templates["smollm2"]!["source"]!.string!.replacingOccurrences(of: "\n", with: "\\n")
        XCTAssertEqual(try ChatTemplate.detect(source: escaped).defaultSystemPrompt,
                       "You are a helpful AI assistant named SmolLM, trained by Hugging Face")
    }

    func testRendersExactlyAsTransformers() throws {
        let r = try Self.reference()
        var compared = 0, refused = 0
        for c in r.cases {
            let name = c["template"]!.string!, conv = c["conversation"]!.string!
            let gen = c["add_generation_prompt"]!.bool!
            let what = "\(name) / \(conv) / add_generation_prompt=\(gen)"
            let template = try Self.template(r.templates[name]!)
            let messages = r.conversations[conv]!
            if let expected = c["text"]?.string {
                // Llama 2's Jinja silently drops roles other than user/assistant at odd turns;
                // lora refuses the conversation instead of losing text.
                if name == "llama2", messages.contains(where: { !["system", "user", "assistant"].contains($0.role) }) {
                    XCTAssertThrowsError(try template.render(messages, addGenerationPrompt: gen), what)
                    continue
                }
                XCTAssertEqual(try template.render(messages, addGenerationPrompt: gen), expected, what)
                compared += 1
            } else {
                XCTAssertThrowsError(try template.render(messages, addGenerationPrompt: gen), what) { e in
                    XCTAssertTrue("\(e)".contains(c["error"]!.string!), "\(what): \(e)")
                }
                refused += 1
            }
        }
        XCTAssertGreaterThanOrEqual(compared, 150)
        XCTAssertGreaterThanOrEqual(refused, 30)
    }

    /// Training segments are the rendered text cut up; trainable ones are exactly the assistant
    /// contents (as the template writes them) with their end-of-turn marker.
    func testTrainingSegmentsJoinToTheRenderedTextAndMarkAssistantTurns() throws {
        let r = try Self.reference()
        let messages = r.conversations["system_two_turns"]!
        let expectedTrainable: [String: [String]] = [
            "smollm2": ["Hello.<|im_end|>", "1, 2, 3.<|im_end|>"],
            "llama2": ["Hello. </s>", "1, 2, 3. </s>"],
            "llama3": ["Hello.<|eot_id|>", "1, 2, 3.<|eot_id|>"],
            "alpaca": ["Hello.</s>", "1, 2, 3.</s>"],
        ]
        for (name, trainable) in expectedTrainable {
            let t = try Self.template(r.templates[name]!)
            let segments = try t.renderForTraining(messages)
            XCTAssertEqual(segments.map(\.text).joined(), try t.render(messages, addGenerationPrompt: false), name)
            XCTAssertEqual(segments.filter(\.trainable).map(\.text), trainable, name)
        }
        let mistral = try Self.template(r.templates["mistral_v01"]!)
        let m = Array(messages.dropFirst())
        let segments = try mistral.renderForTraining(m)
        XCTAssertEqual(segments.map(\.text).joined(), try mistral.render(m, addGenerationPrompt: false))
        XCTAssertEqual(segments.filter(\.trainable).map(\.text), ["Hello.</s>", "1, 2, 3.</s>"])
    }

    func testResolveOverrideModelAndErrors() throws {
        let smol = ChatTemplate.alpacaJinja
        XCTAssertEqual(try ChatTemplate.resolve(override: "llama3", modelTemplate: smol).kind, .llama3)
        XCTAssertEqual(try ChatTemplate.resolve(override: nil, modelTemplate: smol).kind, .alpaca)
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("lora-chat-\(getpid()).jinja")
        try "{{ bos_token }}{% for message in messages %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endfor %}"
            .write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        XCTAssertEqual(try ChatTemplate.resolve(override: file.path, modelTemplate: nil).kind, .mistral)
        XCTAssertThrowsError(try ChatTemplate.resolve(override: nil, modelTemplate: nil)) { e in
            XCTAssertEqual(e as? ChatTemplateError, .noTemplate)
            XCTAssertTrue("\(e)".contains("--chat-template"))
        }
        XCTAssertThrowsError(try ChatTemplate.resolve(override: "vicuna", modelTemplate: smol)) { e in
            XCTAssertEqual(e as? ChatTemplateError, .unknownName("vicuna"))
            XCTAssertTrue("\(e)".contains("chatml, llama2, llama3, mistral, alpaca"), "\(e)")
        }
        XCTAssertThrowsError(try ChatTemplate.resolve(override: nil, modelTemplate: "{{ messages }}")) { e in
            XCTAssertTrue("\(e)".contains("unrecognized chat template"), "\(e)")
        }
        XCTAssertThrowsError(try ChatTemplate(kind: .chatml).render([], addGenerationPrompt: true))
    }

    func testStopStrings() {
        XCTAssertEqual(ChatTemplate(kind: .chatml).stopStrings, ["<|im_end|>"])
        XCTAssertEqual(ChatTemplate(kind: .llama3).stopStrings, ["<|eot_id|>"])
        XCTAssertEqual(ChatTemplate(kind: .llama2).stopStrings, ["</s>"])
        XCTAssertEqual(ChatTemplate(kind: .mistral).withSpecialTokens(bos: nil, eos: "<eos>").stopStrings, ["<eos>"])
        XCTAssertEqual(ChatTemplate(kind: .alpaca).stopStrings, ["</s>", "### Instruction:"])
    }

    /// The SmolLM2 GGUF's own template, read from the file's metadata, is ChatML with its
    /// default system prompt; the tiny HF fixture folder reads tokenizer_config.json.
    func testTemplateSourceFromCheckpoints() throws {
        let gguf = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        if FileManager.default.fileExists(atPath: gguf.path) {
            let source = try XCTUnwrap(try loadChatTemplateSource(modelPath: gguf.path))
            let r = try Self.reference()
            XCTAssertEqual(source, r.templates["smollm2"]!["source"]!.string!)
        }
        XCTAssertNil(try loadChatTemplateSource(modelPath: Fixtures.root.appendingPathComponent("gguf/tiny-mha.gguf").path))
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lora-chat-src-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        XCTAssertNil(try chatTemplateSource(folder: dir))
        let config = dir.appendingPathComponent("tokenizer_config.json")
        try #"{"chat_template": "{{ x }}"}"#.write(to: config, atomically: true, encoding: .utf8)
        XCTAssertEqual(try chatTemplateSource(folder: dir), "{{ x }}")
        try #"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#
            .write(to: config, atomically: true, encoding: .utf8)
        XCTAssertEqual(try chatTemplateSource(folder: dir), "D")
        try #"{"chat_template": 3}"#.write(to: config, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try chatTemplateSource(folder: dir)) { e in
            XCTAssertTrue("\(e)".contains("chat_template"), "\(e)")
        }
        try "J".write(to: dir.appendingPathComponent("chat_template.jinja"), atomically: true, encoding: .utf8)
        XCTAssertEqual(try chatTemplateSource(folder: dir), "J")
    }
}
