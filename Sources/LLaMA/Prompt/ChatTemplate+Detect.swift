import Foundation

extension ChatTemplate {
    /// lora's Alpaca chat template in Jinja (there is no upstream one): alpaca-lora's
    /// `prompt_no_input` for a one-turn conversation, more turns in the same form. Written for
    /// `--chat-template` files and as the reference script's input; `detect` recognises it.
    public static let alpacaJinja = #"{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] %}{% set loop_messages = messages[1:] %}{% else %}{% set system_message = 'Below is an instruction that describes a task. Write a response that appropriately completes the request.' %}{% set loop_messages = messages %}{% endif %}{{ system_message + '\n\n' }}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}{% elif message['role'] == 'assistant' %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"#

    /// Recognise a Jinja chat template string (GGUF `tokenizer.chat_template` or
    /// tokenizer_config.json's `chat_template`) as one of the known kinds; throws naming it otherwise.
    public static func detect(source: String) throws -> ChatTemplate {
        try detect(source: source, origin: "chat template")
    }

    /// Detection reads the markers each format writes (`<|im_start|>`, `<<SYS>>`, ...) and the
    /// few things the real templates vary in (a default system prompt, BOS, a space after EOS),
    /// so re-spaced or re-quoted copies of a template are recognised; templates that use what
    /// the renderers do not implement (dates, reasoning blocks, tool prompts) are refused by
    /// name rather than rendered differently.
    static func detect(source: String, origin: String) throws -> ChatTemplate {
        let s = source
        func refuse(_ reason: String) -> ChatTemplateError {
            var excerpt = String(s.prefix(60)).replacingOccurrences(of: "\n", with: "\\n")
            if s.count > 60 { excerpt += "..." }
            return .unrecognized(origin: origin, excerpt: excerpt, reason: reason)
        }
        if s.contains("<|im_start|>") && s.contains("<|im_end|>") {
            if s.contains("<think>") || s.contains("reasoning_content") {
                throw refuse("ChatML with <think> reasoning blocks, which the ChatML renderer does not write")
            }
            let system = defaultSystem(in: s, after: "<|im_start|>system", before: "<|im_end|>")
            return ChatTemplate(kind: .chatml, defaultSystemPrompt: system, bosAtStart: s.contains("bos_token"))
        }
        if s.contains("<|start_header_id|>") && s.contains("<|eot_id|>") {
            if s.contains("Cutting Knowledge Date") || s.contains("date_string") || s.contains("strftime_now") {
                throw refuse("Llama 3.1 or later: it writes a dated system preamble; --chat-template llama3 gives the Llama 3 format without it")
            }
            return ChatTemplate(kind: .llama3, generationPromptAlways: !s.contains("add_generation_prompt"))
        }
        if s.contains("<<SYS>>") && s.contains("[INST]") {
            if s.contains("DEFAULT_SYSTEM_MESSAGE") || s.contains("USE_DEFAULT_PROMPT") || s.contains("You are a helpful, respectful and honest assistant") {
                throw refuse("a Llama 2 template with a built-in default system prompt, which the Llama 2 renderer does not insert")
            }
            return ChatTemplate(kind: .llama2)
        }
        if s.contains("[INST]") && s.contains("[/INST]") {
            for marker in ["[SYSTEM_PROMPT]", "[AVAILABLE_TOOLS]", "[TOOL_CALLS]"] where s.contains(marker) {
                throw refuse("a Mistral template with \(marker), newer than the [INST] ... [/INST] format")
            }
            guard s.contains(" [/INST]") else {
                throw refuse("a Mistral template without the space before [/INST] (v0.3 with tools, or later)")
            }
            let space = s.range(of: #"eos_token\s*\+\s*(' '|" ")"#, options: .regularExpression) != nil
            return ChatTemplate(kind: .mistral, spaceAfterEOS: space)
        }
        if s.contains("### Instruction") && s.contains("### Response") {
            let system = literal(in: s, pattern: #"set\s+system_message\s*=\s*('(?:[^'\\]|\\.)+'|"(?:[^"\\]|\\.)+")"#)
            return ChatTemplate(kind: .alpaca, defaultSystemPrompt: system ?? "", bosAtStart: s.contains("bos_token"))
                .withEmptySystemAsNone()
        }
        throw refuse("none of the markers of \(ChatTemplateError.kindList)")
    }

    private func withEmptySystemAsNone() -> ChatTemplate {
        var t = self
        if t.defaultSystemPrompt == "" { t.defaultSystemPrompt = nil }
        return t
    }

    /// The text of a string literal that holds `after` + newline + TEXT + `before`, e.g. SmolLM2's
    /// `'<|im_start|>system\nYou are a helpful AI assistant named SmolLM, ...<|im_end|>\n'`;
    /// nil when every such literal is built from variables (Qwen's system branch).
    static func defaultSystem(in s: String, after: String, before: String) -> String? {
        let a = NSRegularExpression.escapedPattern(for: after), b = NSRegularExpression.escapedPattern(for: before)
        // One literal: no unescaped quote between the markers.
        for quote in ["'", "\""] {
            let pattern = "\(quote)\(a)(?:\\\\n|\\n)((?:[^\(quote)\\\\]|\\\\.)*?)\(b)"
            guard let re = try? NSRegularExpression(pattern: pattern) else { continue }
            let ns = s as NSString
            for m in re.matches(in: s, range: NSRange(location: 0, length: ns.length)) {
                let text = unescapeJinja(ns.substring(with: m.range(at: 1)))
                if !text.isEmpty { return text }
            }
        }
        return nil
    }

    /// The first capture of `pattern` (a quoted literal, quotes included), unescaped.
    static func literal(in s: String, pattern: String) -> String? {
        guard let re = try? NSRegularExpression(pattern: pattern) else { return nil }
        let ns = s as NSString
        guard let m = re.firstMatch(in: s, range: NSRange(location: 0, length: ns.length)) else { return nil }
        let quoted = ns.substring(with: m.range(at: 1))
        return unescapeJinja(String(quoted.dropFirst().dropLast()))
    }

    /// A Jinja (Python-style) string literal's body: \n, \t, \r, \\, \' and \" escapes.
    static func unescapeJinja(_ s: String) -> String {
        var out = ""
        var it = s.makeIterator()
        while let c = it.next() {
            guard c == "\\", let e = it.next() else { out.append(c); continue }
            switch e {
            case "n": out.append("\n")
            case "t": out.append("\t")
            case "r": out.append("\r")
            case "\\", "'", "\"": out.append(e)
            default: out.append("\\"); out.append(e)
            }
        }
        return out
    }
}
