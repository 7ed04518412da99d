import CJSONC
import Foundation

/// A parsed JSON value. Parsing goes through json-c; writing is our own (deterministic key
/// order, so files we write are byte-stable across runs).
public indirect enum JSON: Equatable, Sendable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSON])
    case object([(String, JSON)])

    public static func == (a: JSON, b: JSON) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case let (.bool(x), .bool(y)): return x == y
        case let (.int(x), .int(y)): return x == y
        case let (.double(x), .double(y)): return x == y
        case let (.int(x), .double(y)), let (.double(y), .int(x)): return Double(x) == y
        case let (.string(x), .string(y)): return x == y
        case let (.array(x), .array(y)): return x == y
        case let (.object(x), .object(y)):
            return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    // MARK: parsing

    /// Parses JSON text; `source` names the file in errors.
    public static func parse(_ text: String, source: String) throws -> JSON {
        let tok = json_tokener_new()
        defer { json_tokener_free(tok) }
        let bytes = Array(text.utf8)
        guard let obj = bytes.withUnsafeBufferPointer({ buf -> OpaquePointer? in
            buf.withMemoryRebound(to: CChar.self) { cbuf in
                json_tokener_parse_ex(tok, cbuf.baseAddress, Int32(buf.count))
            }
        }) else {
            let err = json_tokener_get_error(tok)
            // json-c reports input that ends mid-value as "continue" (it waits for more bytes).
            let msg = err == json_tokener_continue ? "unexpected end of text (truncated?)" : String(cString: json_tokener_error_desc(err))
            let offset = Int(json_tokener_get_parse_end(tok))
            throw JSONError.syntax(source: source, message: msg, offset: offset)
        }
        defer { json_object_put(obj) }
        let end = Int(json_tokener_get_parse_end(tok))
        if bytes[end...].contains(where: { !($0 == 32 || $0 == 9 || $0 == 10 || $0 == 13) }) {
            throw JSONError.syntax(source: source, message: "trailing characters", offset: end)
        }
        return convert(obj)
    }

    public static func parse(contentsOf url: URL) throws -> JSON {
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw JSONError.unreadable(path: url.path, reason: ioReason(error))
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw JSONError.syntax(source: url.path, message: "not UTF-8", offset: 0)
        }
        return try parse(text, source: url.path)
    }

    private static func convert(_ o: OpaquePointer?) -> JSON {
        guard let o else { return .null }
        switch json_object_get_type(o) {
        case json_type_null: return .null
        case json_type_boolean: return .bool(json_object_get_boolean(o) != 0)
        case json_type_int: return .int(json_object_get_int64(o))
        case json_type_double: return .double(json_object_get_double(o))
        case json_type_string:
            let len = Int(json_object_get_string_len(o))
            let p = json_object_get_string(o)!
            return .string(p.withMemoryRebound(to: UInt8.self, capacity: len) {
                String(decoding: UnsafeBufferPointer(start: $0, count: len), as: UTF8.self)
            })
        case json_type_array:
            let n = json_object_array_length(o)
            return .array((0..<n).map { convert(json_object_array_get_idx(o, $0)) })
        case json_type_object:
            var items: [(String, JSON)] = []
            var it = json_object_iter_begin(o)
            let end = json_object_iter_end(o)
            var endIt = end
            while json_object_iter_equal(&it, &endIt) == 0 {
                let name = String(cString: json_object_iter_peek_name(&it))
                items.append((name, convert(json_object_iter_peek_value(&it))))
                json_object_iter_next(&it)
            }
            return .object(items)
        default: return .null
        }
    }

    // MARK: access

    public subscript(key: String) -> JSON? {
        if case .object(let items) = self { return items.first { $0.0 == key }?.1 }
        return nil
    }

    public var keys: [String] {
        if case .object(let items) = self { return items.map(\.0) }
        return []
    }

    public var string: String? { if case .string(let s) = self { return s }; return nil }
    public var bool: Bool? { if case .bool(let b) = self { return b }; return nil }
    public var array: [JSON]? { if case .array(let a) = self { return a }; return nil }
    public var int: Int? {
        switch self {
        case .int(let i): return Int(i)
        case .double(let d) where d == d.rounded() && abs(d) < 9e15: return Int(d)
        default: return nil
        }
    }
    public var double: Double? {
        switch self {
        case .int(let i): return Double(i)
        case .double(let d): return d
        default: return nil
        }
    }
    public var isNull: Bool { if case .null = self { return true }; return false }

    public var typeName: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .int: return "an integer"
        case .double: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }

    // MARK: writing

    /// Serializes with two-space indentation (pretty) or compactly.
    public func serialized(pretty: Bool = true) -> String {
        var out = ""
        write(into: &out, indent: pretty ? 0 : -1)
        return out
    }

    private func write(into out: inout String, indent: Int) {
        let pretty = indent >= 0
        let pad = pretty ? String(repeating: "  ", count: indent + 1) : ""
        let closePad = pretty ? String(repeating: "  ", count: indent) : ""
        let nl = pretty ? "\n" : ""
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let i): out += String(i)
        case .double(let d):
            if d.isFinite, d == d.rounded(), abs(d) < 1e15 { out += String(format: "%.1f", d) }
            else if d.isFinite { out += "\(d)" } else { out += "null" }
        case .string(let s): JSON.escape(s, into: &out)
        case .array(let a):
            if a.isEmpty { out += "[]"; return }
            out += "[" + nl
            for (i, v) in a.enumerated() {
                out += pad
                v.write(into: &out, indent: pretty ? indent + 1 : -1)
                out += (i + 1 < a.count ? "," : "") + nl
            }
            out += closePad + "]"
        case .object(let items):
            if items.isEmpty { out += "{}"; return }
            out += "{" + nl
            for (i, (k, v)) in items.enumerated() {
                out += pad
                JSON.escape(k, into: &out)
                out += pretty ? ": " : ":"
                v.write(into: &out, indent: pretty ? indent + 1 : -1)
                out += (i + 1 < items.count ? "," : "") + nl
            }
            out += closePad + "}"
        }
    }

    static func escape(_ s: String, into out: inout String) {
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where u.value < 0x20: out += String(format: "\\u%04x", u.value)
            default: out.unicodeScalars.append(u)
            }
        }
        out += "\""
    }
}

public enum JSONError: Error, CustomStringConvertible, Equatable {
    case syntax(source: String, message: String, offset: Int)
    case unreadable(path: String, reason: String)

    public var description: String {
        switch self {
        case let .syntax(source, message, offset):
            return "\(source): invalid JSON at byte \(offset): \(message)"
        case let .unreadable(path, reason):
            return "\(path): cannot read: \(reason)"
        }
    }
}
