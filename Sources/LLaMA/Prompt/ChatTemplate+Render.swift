import Foundation

/// A piece of rendered conversation; `trainable` pieces are what the model learns to write.
struct ChatSegment: Equatable {
    var text: String
    var trainable: Bool
}

extension ChatTemplate {
    /// The conversation rendered as the kind's Jinja template renders it with
    /// `add_generation_prompt=False`, cut where loss starts and stops. Every kind follows the
    /// real template's expressions literally (which contents are stripped, where BOS goes,
    /// what the first message's system prompt becomes); comments name the template behind each.
    func segments(_ messages: [ChatMessage]) throws -> [ChatSegment] {
        guard !messages.isEmpty else {
            throw ChatTemplateError.badConversation(message: nil, reason: "a conversation needs at least one message")
        }
        var out: [ChatSegment] = []
        func fixed(_ s: String) { if !s.isEmpty { out.append(ChatSegment(text: s, trainable: false)) } }
        func learned(_ s: String) { out.append(ChatSegment(text: s, trainable: true)) }

        switch kind {
        case .chatml:
            // SmolLM2 / Qwen2: a default system turn when the first message is not one.
            if bosAtStart { fixed(bosToken) }
            for (i, m) in messages.enumerated() {
                if i == 0, m.role != "system", let sys = defaultSystemPrompt {
                    fixed("<|im_start|>system\n" + sys + "<|im_end|>\n")
                }
                if m.role == "assistant" {
                    fixed("<|im_start|>assistant\n"); learned(m.content + "<|im_end|>"); fixed("\n")
                } else {
                    fixed("<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n")
                }
            }

        case .llama3:
            // Meta-Llama-3-8B-Instruct: BOS before the first header, contents `| trim`med.
            for (i, m) in messages.enumerated() {
                let header = (i == 0 ? bosToken : "") + "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n"
                let body = pythonStrip(m.content) + "<|eot_id|>"
                if m.role == "assistant" { fixed(header); learned(body) } else { fixed(header + body) }
            }
            if generationPromptAlways { fixed(generationPrompt) }

        case .llama2:
            // Llama-2-chat: a first system message goes inside the first [INST] (even when empty:
            // the template tests `system_message != false`); each turn's text is `.strip()`ped.
            let (system, loop) = Self.splitSystem(messages)
            let offset = system == nil ? 0 : 1
            for (j, m) in loop.enumerated() {
                try Self.checkAlternation(m, j, offset)
                var content = m.content
                if j == 0, let system { content = "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content }
                switch m.role {
                case "user": fixed(bosToken + "[INST] " + pythonStrip(content) + " [/INST]")
                case "assistant": fixed(" "); learned(pythonStrip(content) + " " + eosToken)
                default:
                    // The Jinja writes nothing for such a message; refusing beats dropping text.
                    throw ChatTemplateError.badConversation(message: j + offset, reason: "role '\(m.role)' is not rendered by the Llama 2 template (use user and assistant, after an optional first system message)")
                }
            }

        case .mistral:
            // Mistral-7B-Instruct: BOS once, user and assistant only, contents as they are.
            fixed(bosToken)
            for (i, m) in messages.enumerated() {
                try Self.checkAlternation(m, i, 0)
                switch m.role {
                case "user": fixed("[INST] " + m.content + " [/INST]")
                case "assistant": learned(m.content + eosToken); if spaceAfterEOS { fixed(" ") }
                default: throw ChatTemplateError.badConversation(message: i, reason: "Only user and assistant roles are supported! (the Mistral template has no system role; got '\(m.role)')")
                }
            }

        case .alpaca:
            // lora's Alpaca chat template (ChatTemplate.alpacaJinja): alpaca-lora's prompt_no_input
            // for the first turn, "### Instruction:" / "### Response:" for the next ones.
            let (system, loop) = Self.splitSystem(messages)
            let offset = system == nil ? 0 : 1
            fixed((bosAtStart ? bosToken : "") + ((system ?? defaultSystemPrompt).map { $0 + "\n\n" } ?? ""))
            for (j, m) in loop.enumerated() {
                try Self.checkAlternation(m, j, offset)
                switch m.role {
                case "user": fixed("### Instruction:\n" + m.content + "\n\n")
                case "assistant": fixed("### Response:\n"); learned(m.content + eosToken); fixed("\n\n")
                default: throw ChatTemplateError.badConversation(message: j + offset, reason: "Only user and assistant roles are supported! (after an optional first system message; got '\(m.role)')")
                }
            }
        }
        return out
    }

    /// A first message with role system, and the rest.
    static func splitSystem(_ messages: [ChatMessage]) -> (String?, ArraySlice<ChatMessage>) {
        if messages.first?.role == "system" { return (messages[0].content, messages.dropFirst()) }
        return (nil, messages[...])
    }

    /// The templates' `(message['role'] == 'user') != (loop.index0 % 2 == 0)` check.
    static func checkAlternation(_ m: ChatMessage, _ j: Int, _ offset: Int) throws {
        if (m.role == "user") != (j % 2 == 0) {
            throw ChatTemplateError.badConversation(message: j + offset, reason: "Conversation roles must alternate user/assistant/user/assistant/... (got '\(m.role)' at turn \(j)\(offset > 0 ? " after the system message" : ""))")
        }
    }
}

/// Python's `str.strip()` (Jinja's `trim` filter is the same): Unicode White_Space plus the
/// separators U+001C...U+001F, compared by scalar.
func pythonStrip(_ s: String) -> String {
    func ws(_ c: Unicode.Scalar) -> Bool { c.properties.isWhitespace || (0x1C...0x1F).contains(c.value) }
    let u = Array(s.unicodeScalars)
    var lo = 0, hi = u.count
    while lo < hi, ws(u[lo]) { lo += 1 }
    while hi > lo, ws(u[hi - 1]) { hi -= 1 }
    if lo == 0 && hi == u.count { return s }
    var v = String.UnicodeScalarView()
    v.append(contentsOf: u[lo..<hi])
    return String(v)
}
