import Foundation

/// An alpaca-lora prompt template (`templates/*.json`): builds the prompt for an instruction and
/// cuts the response out of the model's output, exactly as alpaca-lora's `utils/prompter.py`.
///
/// A template file is a JSON object with `prompt_input` (uses `{instruction}` and `{input}`),
/// `prompt_no_input` (uses `{instruction}`), `response_split`, and `description` (optional here:
/// alpaca-lora reads it only to print it). The placeholders follow Python's `str.format`: `{{` and
/// `}}` are literal braces; any other field is an error, reported when the template is loaded
/// rather than (as in Python) when the first prompt is built.
public struct Prompter: Sendable, Equatable {
    /// Where the template came from: a path, or "built-in template 'alpaca'".
    public let source: String
    public let description: String
    public let promptInput: String
    public let promptNoInput: String
    public let responseSplit: String

    private let inputParts: [Part]
    private let noInputParts: [Part]

    /// The names `Prompter(named:)` accepts.
    public static let builtinNames: [String] = BuiltinTemplates.names
    /// alpaca-lora's default template.
    public static let defaultName = "alpaca"

    /// The JSON text of a built-in template, byte for byte alpaca-lora's `templates/<name>.json`.
    public static func builtinJSON(named name: String) -> String? {
        BuiltinTemplates.json(named: name)
    }

    /// One of alpaca-lora's templates, compiled into the binary: "alpaca", "alpaca_short",
    /// "alpaca_legacy" or "vigogne".
    public init(named name: String) throws {
        guard let text = BuiltinTemplates.json(named: name) else {
            throw PrompterError.unknownTemplate(name: name, available: BuiltinTemplates.names)
        }
        try self.init(json: text, source: "built-in template '\(name)'")
    }

    /// A template from a user's JSON file, in alpaca-lora's format.
    public init(path: URL) throws {
        let data: Data
        do { data = try Data(contentsOf: path) } catch {
            throw PrompterError.unreadable(file: path.path, reason: ioReason(error))
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw PrompterError.invalidJSON(file: path.path, reason: "not UTF-8 text")
        }
        try self.init(json: text, source: path.path)
    }

    /// A template from JSON text; `source` names it in errors.
    public init(json text: String, source: String) throws {
        let object: JSON
        do { object = try JSON.parse(text, source: source) } catch let error as JSONError {
            switch error {
            case let .syntax(_, message, offset):
                throw PrompterError.invalidJSON(file: source, reason: "\(message) at byte \(offset)")
            case let .unreadable(_, reason):
                throw PrompterError.unreadable(file: source, reason: reason)
            }
        }
        guard case .object = object else {
            throw PrompterError.invalidJSON(file: source, reason: "expected a JSON object, found \(object.typeName)")
        }
        func string(_ key: String, required: Bool) throws -> String? {
            guard let value = object[key] else {
                if required { throw PrompterError.missingKey(file: source, key: key) }
                return nil
            }
            guard let s = value.string else {
                throw PrompterError.wrongType(file: source, key: key, expected: "a string, found \(value.typeName)")
            }
            return s
        }
        self.source = source
        self.description = try string("description", required: false) ?? ""
        self.promptInput = try string("prompt_input", required: true)!
        self.promptNoInput = try string("prompt_no_input", required: true)!
        self.responseSplit = try string("response_split", required: true)!
        guard !responseSplit.isEmpty else {
            throw PrompterError.badTemplate(file: source, key: "response_split",
                                            reason: "must not be empty (it is the text the response follows)")
        }
        self.inputParts = try Part.parse(promptInput, fields: ["instruction", "input"],
                                         file: source, key: "prompt_input")
        self.noInputParts = try Part.parse(promptNoInput, fields: ["instruction"],
                                           file: source, key: "prompt_no_input")
    }

    /// The full prompt: `prompt_input` when `input` is non-empty, otherwise `prompt_no_input`, with
    /// `label` (the expected response) appended when it is non-empty, as alpaca-lora's
    /// `generate_prompt`. Substituted text is never scanned for placeholders again.
    public func generatePrompt(instruction: String, input: String? = nil, label: String? = nil) -> String {
        var result = ""
        let useInput = !(input ?? "").isEmpty
        for part in useInput ? inputParts : noInputParts {
            switch part {
            case .text(let s): result += s
            case .instruction: result += instruction
            case .input: result += input ?? ""
            }
        }
        if let label, !label.isEmpty { result += label }
        return result
    }

    /// The response in a model's output (prompt included), as alpaca-lora's `get_response`:
    /// `output.split(response_split)[1].strip()`, that is the text between the first and the
    /// second occurrence of `response_split` (or the end), without surrounding whitespace.
    /// alpaca-lora raises IndexError when `response_split` does not occur; this returns "".
    /// Matching is by Unicode scalars, as Python compares code points (no normalization).
    public func response(from output: String) -> String {
        let text = Array(output.unicodeScalars)
        let split = Array(responseSplit.unicodeScalars)
        guard let first = Self.firstIndex(of: split, in: text, from: 0) else { return "" }
        let start = first + split.count
        let end = Self.firstIndex(of: split, in: text, from: start) ?? text.count
        var lo = start, hi = end
        while lo < hi, Self.isPythonWhitespace(text[lo]) { lo += 1 }
        while hi > lo, Self.isPythonWhitespace(text[hi - 1]) { hi -= 1 }
        var scalars = String.UnicodeScalarView()
        scalars.append(contentsOf: text[lo..<hi])
        return String(scalars)
    }

    /// Same template texts; where they came from (`source`) is not compared.
    public static func == (a: Prompter, b: Prompter) -> Bool {
        a.description == b.description && a.promptInput == b.promptInput
            && a.promptNoInput == b.promptNoInput && a.responseSplit == b.responseSplit
    }

    // MARK: helpers

    private static func firstIndex(of needle: [Unicode.Scalar], in haystack: [Unicode.Scalar],
                                   from start: Int) -> Int? {
        guard !needle.isEmpty, haystack.count - start >= needle.count else { return nil }
        var i = start
        while i + needle.count <= haystack.count {
            if haystack[i] == needle[0], haystack[i..<(i + needle.count)].elementsEqual(needle) {
                return i
            }
            i += 1
        }
        return nil
    }

    /// Python's `str.isspace`: Unicode White_Space plus the four information separators
    /// U+001C...U+001F, which Python also strips.
    private static func isPythonWhitespace(_ s: Unicode.Scalar) -> Bool {
        s.properties.isWhitespace || (0x1C...0x1F).contains(s.value)
    }
}

/// A piece of a parsed template: literal text or a placeholder.
private enum Part: Equatable, Sendable {
    case text(String)
    case instruction
    case input

    /// Splits `template` the way Python's `str.format` does, accepting only the named `fields`.
    static func parse(_ template: String, fields: Set<String>, file: String, key: String) throws -> [Part] {
        var parts: [Part] = []
        var literal = String.UnicodeScalarView()
        let s = Array(template.unicodeScalars)
        func bad(_ reason: String) -> PrompterError {
            .badTemplate(file: file, key: key, reason: reason)
        }
        var i = 0
        while i < s.count {
            let c = s[i]
            if c == "{" {
                if i + 1 < s.count, s[i + 1] == "{" {
                    literal.append("{"); i += 2; continue
                }
                guard let close = s[(i + 1)...].firstIndex(of: "}") else {
                    throw bad("'{' at scalar \(i) is never closed (write '{{' for a literal brace)")
                }
                var nameScalars = String.UnicodeScalarView()
                nameScalars.append(contentsOf: s[(i + 1)..<close])
                let name = String(nameScalars)
                guard fields.contains(name) else {
                    let allowed = fields.sorted().map { "{\($0)}" }.joined(separator: " and ")
                    throw bad("placeholder {\(name)} is not supported here (only \(allowed); write '{{' and '}}' for literal braces)")
                }
                if !literal.isEmpty { parts.append(.text(String(literal))); literal = .init() }
                parts.append(name == "input" ? .input : .instruction)
                i = close + 1
            } else if c == "}" {
                guard i + 1 < s.count, s[i + 1] == "}" else {
                    throw bad("single '}' at scalar \(i) (write '}}' for a literal brace)")
                }
                literal.append("}"); i += 2
            } else {
                literal.append(c); i += 1
            }
        }
        if !literal.isEmpty { parts.append(.text(String(literal))) }
        return parts
    }
}

/// Everything that can be wrong with a prompt template. Each message names the file (or the
/// built-in template) and the key.
public enum PrompterError: Error, CustomStringConvertible, Equatable {
    case unknownTemplate(name: String, available: [String])
    case unreadable(file: String, reason: String)
    case invalidJSON(file: String, reason: String)
    case missingKey(file: String, key: String)
    case wrongType(file: String, key: String, expected: String)
    case badTemplate(file: String, key: String, reason: String)

    public var description: String {
        switch self {
        case let .unknownTemplate(name, available):
            return "unknown prompt template '\(name)' (built-in templates: \(available.joined(separator: ", ")); or give the path of a JSON file)"
        case let .unreadable(file, reason):
            return "\(file): cannot read: \(reason)"
        case let .invalidJSON(file, reason):
            return "\(file): not a valid JSON template: \(reason)"
        case let .missingKey(file, key):
            return "\(file): missing key '\(key)' (a template needs prompt_input, prompt_no_input and response_split)"
        case let .wrongType(file, key, expected):
            return "\(file): key '\(key)' should be \(expected)"
        case let .badTemplate(file, key, reason):
            return "\(file): key '\(key)': \(reason)"
        }
    }
}
