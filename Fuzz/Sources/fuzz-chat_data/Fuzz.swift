import FuzzSupport
import Foundation
import LLaMA

/// Chat-format data (`{"messages": [...]}` records, issue 11): the first byte picks the file
/// name (bit 0: data.json or data.jsonl) and the chat template kind (byte / 2, modulo the
/// kinds); the rest is the file. It goes through finetune's path: auto-detected load, then each
/// conversation rendered for training and tokenized with its label mask. The same text is also
/// offered to the template detector, as a `--chat-template` file would be.
let tokenizer = try! BPETokenizer(tokenizerJSON: fixtures.appendingPathComponent("bpe/tokenizer.json"),
                                  tokenizerConfig: fixtures.appendingPathComponent("bpe/tokenizer_config.json"))

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let name = data[0] % 2 == 0 ? "data.json" : "data.jsonl"
    let kinds = ChatTemplateKind.allCases
    let kind = kinds[Int(data[0] / 2) % kinds.count]
    let bytes = UnsafeRawBufferPointer(start: data + 1, count: size - 1)
    let u = put(bytes, name)
    expectErrors {
        guard case .chat(let records) = try TrainingRecords.load(u) else { return }
        let template = ChatTemplate(kind: kind).withSpecialTokens(of: tokenizer)
        let builder = ChatExampleBuilder(tokenizer: tokenizer, template: template, cutoffLen: 512)
        for r in records.prefix(16) {
            let segments = try template.renderForTraining(r.messages)
            let text = try template.render(r.messages, addGenerationPrompt: false)
            precondition(segments.map(\.text).joined() == text, "segments do not join to the rendered text")
            let e = try builder.example(r)
            precondition(e.inputIDs.count == e.labels.count && e.count <= 512)
            precondition(zip(e.inputIDs, e.labels).allSatisfy { $1 == -100 || $0 == $1 })
        }
    }
    if let text = String(bytes: bytes, encoding: .utf8) {
        expectErrors { _ = try ChatTemplate.detect(source: text) }
    }
    return 0
}
