import Foundation

/// One turn of a conversation, as OpenAI's `messages` and chat-format training records hold it.
public struct ChatMessage: Codable, Sendable, Equatable {
    public var role: String
    public var content: String
    public init(role: String, content: String) { self.role = role; self.content = content }
}

/// The chat formats `lora` renders itself. A model's Jinja template is recognised as one of these
/// (`ChatTemplate.detect`); there is no general Jinja interpreter.
public enum ChatTemplateKind: String, CaseIterable, Sendable {
    /// `<|im_start|>role\ncontent<|im_end|>\n` (SmolLM2, Qwen, OpenHermes).
    case chatml
    /// `<s>[INST] <<SYS>>\n...\n<</SYS>>\n\n... [/INST] answer </s>` (Llama 2 chat).
    case llama2
    /// `<|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>` (Llama 3 instruct).
    case llama3
    /// `<s>[INST] ... [/INST]answer</s>`, user and assistant only (Mistral 7B instruct v0.1-v0.3).
    case mistral
    /// `### Instruction:` / `### Response:` turns after a preamble (alpaca-lora's prompt as a chat).
    case alpaca
}

/// A chat template: how a list of messages becomes the model's prompt text, rendered exactly as
/// `transformers`' `apply_chat_template` renders the real Jinja template of that kind
/// (Tests/Fixtures/chat/reference.json, written by scripts/make_chat_reference.py, holds it to that).
public struct ChatTemplate: Sendable, Equatable {
    public let kind: ChatTemplateKind
    /// The system prompt the template inserts when the conversation has none: SmolLM2's "You are
    /// a helpful AI assistant named SmolLM, ..." (ChatML), Alpaca's "Below is an instruction ...".
    /// nil: none is inserted.
    public var defaultSystemPrompt: String?
    /// The texts of `bos_token` and `eos_token` as the template sees them (the tokenizer's).
    public var bosToken: String
    public var eosToken: String
    /// Mistral v0.1's template writes a space after each assistant turn's EOS; later ones do not.
    public var spaceAfterEOS: Bool
    /// The first Llama 3 instruct template appends the assistant header whatever
    /// `add_generation_prompt` says; the later one only when asked.
    public var generationPromptAlways: Bool
    /// Whether the text starts with `bos_token` (ChatML and Alpaca templates differ; Llama 2,
    /// Llama 3 and Mistral place BOS as their templates do, whatever this says).
    public var bosAtStart: Bool

    /// The preamble of alpaca-lora's `prompt_no_input`, Alpaca's system prompt when none is given.
    public static let alpacaPreamble = "Below is an instruction that describes a task. Write a response that appropriately completes the request."

    public init(kind: ChatTemplateKind, defaultSystemPrompt: String? = nil, bosToken: String? = nil,
                eosToken: String? = nil, spaceAfterEOS: Bool = false, generationPromptAlways: Bool = false,
                bosAtStart: Bool? = nil) {
        self.kind = kind
        self.defaultSystemPrompt = defaultSystemPrompt ?? (kind == .alpaca ? Self.alpacaPreamble : nil)
        let d = Self.defaultTokens(kind)
        self.bosToken = bosToken ?? d.bos
        self.eosToken = eosToken ?? d.eos
        self.spaceAfterEOS = spaceAfterEOS
        self.generationPromptAlways = generationPromptAlways
        self.bosAtStart = bosAtStart ?? (kind == .alpaca)
    }

    /// The special-token texts of the models each kind comes from, used until a tokenizer's own
    /// are given (`withSpecialTokens`).
    static func defaultTokens(_ kind: ChatTemplateKind) -> (bos: String, eos: String) {
        switch kind {
        case .chatml: return ("", "<|im_end|>")
        case .llama3: return ("<|begin_of_text|>", "<|eot_id|>")
        case .llama2, .mistral, .alpaca: return ("<s>", "</s>")
        }
    }

    /// The same template with the model's BOS/EOS texts (nil keeps the current one).
    public func withSpecialTokens(bos: String?, eos: String?) -> ChatTemplate {
        var t = self
        if let bos { t.bosToken = bos }
        if let eos { t.eosToken = eos }
        return t
    }

    /// The template with the BOS/EOS texts of `tokenizer` (its pieces for `bosID` and `eosID`).
    public func withSpecialTokens(of tokenizer: Tokenizer) -> ChatTemplate {
        func text(_ id: Int32?) -> String? {
            guard let id else { return nil }
            let p = tokenizer.piece(id)
            return p.isEmpty ? nil : p
        }
        return withSpecialTokens(bos: text(tokenizer.bosID), eos: text(tokenizer.eosID))
    }

    /// `override` is `--chat-template NAME|PATH` (a kind name, or a file holding a Jinja template);
    /// else the model's own template; throws a clear error when neither gives a known kind.
    public static func resolve(override: String?, modelTemplate: String?) throws -> ChatTemplate {
        if let override {
            if let kind = ChatTemplateKind(rawValue: override) { return ChatTemplate(kind: kind) }
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: override, isDirectory: &isDir), !isDir.boolValue else {
                throw ChatTemplateError.unknownName(override)
            }
            let text: String
            do { text = try String(contentsOfFile: override, encoding: .utf8) } catch {
                throw ChatTemplateError.unreadable(file: override, reason: ioReason(error))
            }
            return try detect(source: text, origin: override)
        }
        guard let modelTemplate else { throw ChatTemplateError.noTemplate }
        return try detect(source: modelTemplate, origin: "the model's chat template")
    }

    /// `resolve`, then the tokenizer's BOS/EOS texts (what `bos_token`/`eos_token` are in Jinja).
    public static func resolve(override: String?, modelTemplate: String?, tokenizer: Tokenizer) throws -> ChatTemplate {
        try resolve(override: override, modelTemplate: modelTemplate).withSpecialTokens(of: tokenizer)
    }

    /// Strings that end an assistant turn (e.g. "<|im_end|>" for ChatML): generation stops on them.
    public var stopStrings: [String] {
        switch kind {
        case .chatml: return ["<|im_end|>"]
        case .llama3: return ["<|eot_id|>"]
        case .llama2, .mistral: return eosToken.isEmpty ? [] : [eosToken]
        // A base model answering in Alpaca format goes on with the next instruction.
        case .alpaca: return (eosToken.isEmpty ? [] : [eosToken]) + ["### Instruction:"]
        }
    }

    public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool) throws -> String {
        var text = try segments(messages).map(\.text).joined()
        if addGenerationPrompt && !generationPromptAlways { text += generationPrompt }
        return text
    }

    /// The same text split into segments; `trainable` is true for assistant turns' content and
    /// their end-of-turn marker only (loss on assistant turns only).
    public func renderForTraining(_ messages: [ChatMessage]) throws -> [(text: String, trainable: Bool)] {
        try segments(messages).map { ($0.text, $0.trainable) }
    }

    /// What opens the assistant's turn after the conversation (`add_generation_prompt=True`).
    /// Llama 2's and Mistral's templates ignore the flag: their prompt already ends with `[/INST]`.
    public var generationPrompt: String {
        switch kind {
        case .chatml: return "<|im_start|>assistant\n"
        case .llama3: return "<|start_header_id|>assistant<|end_header_id|>\n\n"
        case .alpaca: return "### Response:\n"
        case .llama2, .mistral: return ""
        }
    }
}

/// Everything that can go wrong choosing a template or rendering a conversation.
public enum ChatTemplateError: Error, CustomStringConvertible, Equatable {
    /// `--chat-template` names neither a kind nor a file.
    case unknownName(String)
    case unreadable(file: String, reason: String)
    /// The model has no chat template and none was given.
    case noTemplate
    /// A Jinja template that is none of the known kinds; `excerpt` is its beginning.
    case unrecognized(origin: String, excerpt: String, reason: String)
    /// A conversation the template refuses (the real template raises, or would drop text).
    case badConversation(message: Int?, reason: String)

    static var kindList: String { ChatTemplateKind.allCases.map(\.rawValue).joined(separator: ", ") }

    public var description: String {
        switch self {
        case let .unknownName(name):
            return "chat template '\(name)' is neither a known kind (\(Self.kindList)) nor a readable file holding a Jinja template"
        case let .unreadable(file, reason):
            return "\(file): cannot read the chat template: \(reason)"
        case .noTemplate:
            return "the model has no chat template (GGUF tokenizer.chat_template, tokenizer_config.json chat_template, or chat_template.jinja); give one with --chat-template NAME|PATH (\(Self.kindList))"
        case let .unrecognized(origin, excerpt, reason):
            return "\(origin): unrecognized chat template (\(reason)), starting \"\(excerpt)\"; give --chat-template NAME (\(Self.kindList)) to choose the format"
        case let .badConversation(i, reason):
            return i.map { "message \($0): \(reason)" } ?? reason
        }
    }
}
