import XCTest
@testable import LLaMA

/// Chat-format training records: loading, errors, and the label mask (loss on assistant turns
/// only) checked token by token against the rendered segments.
final class ChatDataTests: XCTestCase {
    static let conversations = Fixtures.root.appendingPathComponent("chat/conversations.json")

    static func bpe() throws -> BPETokenizer {
        try BPETokenizer(tokenizerJSON: Fixtures.root.appendingPathComponent("bpe/tokenizer.json"),
                         tokenizerConfig: Fixtures.root.appendingPathComponent("bpe/tokenizer_config.json"))
    }

    func testFormatIsDetectedPerFile() throws {
        guard case .chat(let chat) = try TrainingRecords.load(Self.conversations) else { return XCTFail("not chat") }
        XCTAssertEqual(chat.count, 8)
        XCTAssertEqual(chat[1].messages.map(\.role), ["system", "user", "assistant"])
        XCTAssertEqual(chat[6].messages[1].content, " Red \n")
        guard case .alpaca(let alpaca) = try TrainingRecords.load(Fixtures.root.appendingPathComponent("records.json")) else {
            return XCTFail("not alpaca")
        }
        XCTAssertEqual(alpaca, try AlpacaData.load(Fixtures.root.appendingPathComponent("records.json")))
        // JSON lines too.
        let jsonl = FileManager.default.temporaryDirectory.appendingPathComponent("lora-chat-\(getpid()).jsonl")
        defer { try? FileManager.default.removeItem(at: jsonl) }
        try #"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}"#
            .appending("\n\n").write(to: jsonl, atomically: true, encoding: .utf8)
        XCTAssertEqual(try TrainingRecords.load(jsonl), .chat([ChatRecord(messages: [.init(role: "user", content: "a"), .init(role: "assistant", content: "b")])]))
    }

    func testBadRecordsNameFileRecordAndField() throws {
        let ok = #"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}"#
        let cases: [(String, [String])] = [
            ("[\(ok), {\"messages\": 3}]", ["record 1", "'messages'", "an integer"]),
            ("[\(ok), {\"messages\": []}]", ["record 1", "empty"]),
            ("[\(ok), {\"messages\": [{\"role\": \"user\"}]}]", ["record 1", "messages[0].content", "missing"]),
            ("[\(ok), {\"messages\": [{\"role\": 1, \"content\": \"x\"}]}]", ["record 1", "messages[0].role", "an integer"]),
            ("[\(ok), {\"messages\": [{\"role\": \"\", \"content\": \"x\"}]}]", ["record 1", "messages[0].role", "empty"]),
            ("[\(ok), {\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}]", ["record 1", "no assistant"]),
            ("[\(ok), [1]]", ["record 1", "(record)"]),
            ("[\(ok), {\"instruction\": \"a\", \"output\": \"b\"}]", ["record 1", "'messages'", "missing"]),
        ]
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("lora-chat-bad-\(getpid()).json")
        defer { try? FileManager.default.removeItem(at: file) }
        for (text, expect) in cases {
            try text.write(to: file, atomically: true, encoding: .utf8)
            XCTAssertThrowsError(try TrainingRecords.load(file), text) { e in
                let m = "\(e)"
                XCTAssertTrue(m.hasPrefix(file.path + ": "), m)
                for x in expect { XCTAssertTrue(m.contains(x), "\(m) lacks \(x)") }
            }
        }
        // A conversation the template refuses names the record and the message.
        let records = [ChatRecord(messages: [.init(role: "user", content: "a"), .init(role: "assistant", content: "b")]),
                       ChatRecord(messages: [.init(role: "assistant", content: "a"), .init(role: "user", content: "b")])]
        let b = ChatExampleBuilder(tokenizer: try Self.bpe(), template: ChatTemplate(kind: .mistral), cutoffLen: 64)
        XCTAssertThrowsError(try b.examples(records, indices: [0, 1], path: "d.json")) { e in
            XCTAssertEqual(e as? DataError, .badRecord(path: "d.json", record: 1, field: "messages[0]",
                                                       problem: "Conversation roles must alternate user/assistant/user/assistant/... (got 'assistant' at turn 0)"))
        }
    }

    /// Every token's label is its id exactly when it lies in a trainable segment: the ids of each
    /// run of labelled tokens are the tokenization of one assistant turn's content and its
    /// end marker, and the whole sequence is the tokenization of the rendered conversation.
    func testLabelMaskFollowsTheRenderedSegmentsChatML() throws {
        let tok = try Self.bpe()
        guard case .chat(let records) = try TrainingRecords.load(Self.conversations) else { return XCTFail() }
        let template = ChatTemplate(kind: .chatml, defaultSystemPrompt: "Be brief.").withSpecialTokens(of: tok)
        XCTAssertEqual(template.eosToken, "<|im_end|>")
        let b = ChatExampleBuilder(tokenizer: tok, template: template, cutoffLen: 4096)
        var labelled = 0
        for (i, r) in records.enumerated() {
            let e = try b.example(r)
            let segments = try template.renderForTraining(r.messages)
            XCTAssertEqual(e.inputIDs, tok.encode(segments.map(\.text).joined(), addBOS: false), "record \(i)")
            XCTAssertEqual(runs(e), segments.filter(\.trainable).map { tok.encode($0.text, addBOS: false) }, "record \(i)")
            XCTAssertEqual(e.labels.filter { $0 != -100 }.count(where: { $0 == tok.eosID! }),
                           r.messages.filter { $0.role == "assistant" }.count, "record \(i): one <|im_end|> per assistant turn")
            labelled += e.labels.filter { $0 != -100 }.count
        }
        XCTAssertGreaterThan(labelled, 40)
        // The prompt of a short conversation, token by token.
        let e = try b.example(records[0])
        let firstLabelled = try XCTUnwrap(e.labels.firstIndex { $0 != -100 })
        XCTAssertTrue(tok.decode(Array(e.inputIDs[..<firstLabelled])).hasSuffix("user\nWhat is the capital of France?\nassistant\n"),
                      tok.decode(Array(e.inputIDs[..<firstLabelled])))
        XCTAssertEqual(tok.decode(Array(e.inputIDs[firstLabelled...])).hasPrefix("Paris."), true)
        XCTAssertEqual(e.labels.last, -100, "the newline after <|im_end|> is not trained")
    }

    /// SentencePiece does not match "<s>" and "</s>" in text: the builder puts their ids in,
    /// and masks as the segments say (the space before a Llama 2 answer joins the answer's
    /// first token, which then counts as trainable).
    func testLabelMaskWithSentencePieceAndSpecialTokens() throws {
        let tok = try loadTokenizer(folder: Fixtures.model("tiny-mha"))
        for kind in [ChatTemplateKind.llama2, .mistral, .alpaca] {
            let template = ChatTemplate(kind: kind).withSpecialTokens(of: tok)
            let b = ChatExampleBuilder(tokenizer: tok, template: template, cutoffLen: 4096)
            let r = ChatRecord(messages: [.init(role: "user", content: "Count to three."), .init(role: "assistant", content: "1, 2, 3."),
                                          .init(role: "user", content: "Now backwards."), .init(role: "assistant", content: "3, 2, 1.")])
            let e = try b.example(r)
            XCTAssertEqual(e.inputIDs.first, tok.bosID, "\(kind)")
            XCTAssertEqual(e.inputIDs.count(where: { $0 == tok.bosID }), kind == .llama2 ? 2 : 1, "\(kind)")
            XCTAssertEqual(e.labels.count(where: { $0 == tok.eosID }), 2, "\(kind): both EOS are targets")
            XCTAssertEqual(e.inputIDs.count(where: { $0 == tok.eosID }), 2, "\(kind)")
            let answers = runs(e).map { tok.decode($0).trimmingCharacters(in: .whitespaces) }
            XCTAssertEqual(answers, ["1, 2, 3.", "3, 2, 1."], "\(kind)")
        }
    }

    /// The ids equal transformers' `apply_chat_template(tokenize=True)` with the fixtures' own
    /// tokenizers (SentencePiece: BOS/EOS in the text, no "▁" after them; byte-level BPE).
    func testIDsMatchTransformersApplyChatTemplate() throws {
        let ref = try JSON.parse(contentsOf: Fixtures.root.appendingPathComponent("chat/reference.json"))
        guard case .chat(let records) = try TrainingRecords.load(Self.conversations) else { return XCTFail() }
        let runs = try XCTUnwrap(ref["tokenized"]?.array)
        XCTAssertEqual(runs.count, 5)
        for run in runs {
            let folder = run["tokenizer"]!.string!, name = run["template"]!.string!
            let tok: Tokenizer = folder == "bpe" ? try Self.bpe() : try loadTokenizer(folder: Fixtures.model(folder))
            let t = ref["templates"]![name]!
            let template = try ChatTemplate.detect(source: t["source"]!.string!).withSpecialTokens(of: tok)
            let b = ChatExampleBuilder(tokenizer: tok, template: template, cutoffLen: 4096)
            for (k, i) in run["records"]!.array!.enumerated() {
                let expected = run["input_ids"]!.array![k].ints32
                XCTAssertEqual(try b.example(records[i.int!]).inputIDs, expected, "\(folder) \(name) record \(i.int!)")
            }
        }
    }

    func testCutoffTruncatesIdsAndLabels() throws {
        let tok = try Self.bpe()
        guard case .chat(let records) = try TrainingRecords.load(Self.conversations) else { return XCTFail() }
        let full = try ChatExampleBuilder(tokenizer: tok, template: ChatTemplate(kind: .chatml), cutoffLen: 4096).example(records[4])
        let cut = try ChatExampleBuilder(tokenizer: tok, template: ChatTemplate(kind: .chatml), cutoffLen: 20).example(records[4])
        XCTAssertEqual(cut.count, 20)
        XCTAssertEqual(cut.inputIDs, Array(full.inputIDs.prefix(20)))
        XCTAssertEqual(cut.labels, Array(full.labels.prefix(20)))
    }

    /// Consecutive labelled tokens, as runs of ids.
    func runs(_ e: Example) -> [[Int32]] {
        var out: [[Int32]] = [], cur: [Int32] = []
        for l in e.labels {
            if l != -100 { cur.append(l) } else if !cur.isEmpty { out.append(cur); cur = [] }
        }
        if !cur.isEmpty { out.append(cur) }
        return out
    }
}
