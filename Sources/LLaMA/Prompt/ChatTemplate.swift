import Foundation

// Stand-in until the chat-template work lands on main (same API): ChatML only, which is what
// SmolLM2 uses. The `chat` branch replaces this file whole.

public struct ChatMessage: Codable, Sendable, Equatable {
    public var role: String
    public var content: String
    public init(role: String, content: String) { self.role = role; self.content = content }
}

public enum ChatTemplateError: Error, CustomStringConvertible {
    case unknown(String)
    public var description: String {
        switch self {
        case let .unknown(name): return "unknown chat template '\(name)': expected chatml"
        }
    }
}

public struct ChatTemplate: Sendable {
    public let name: String

    /// `override` (a name) wins; else the model's template text; ChatML when neither says.
    public static func resolve(override: String?, modelTemplate: String?) throws -> ChatTemplate {
        if let o = override {
            guard o.lowercased() == "chatml" else { throw ChatTemplateError.unknown(o) }
            return ChatTemplate(name: "chatml")
        }
        if let t = modelTemplate, !t.contains("<|im_start|>") { throw ChatTemplateError.unknown("model template") }
        return ChatTemplate(name: "chatml")
    }

    public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool) throws -> String {
        var s = ""
        for m in messages { s += "<|im_start|>\(m.role)\n\(m.content)<|im_end|>\n" }
        if addGenerationPrompt { s += "<|im_start|>assistant\n" }
        return s
    }

    public var stopStrings: [String] { ["<|im_end|>"] }
}
