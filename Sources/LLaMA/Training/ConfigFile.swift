import Foundation
import Yams
import Tensor

/// Reads a finetune YAML file into `TrainConfig`: unknown keys are an error that names the
/// closest valid key, wrong types name the key and the expected type. In the library (not the
/// CLI) so the fuzz targets reach the same code `lora finetune --config` runs.
public enum ConfigFile {
    public static func load(_ path: String) throws -> TrainConfig {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw ConfigError.unreadable(file: path, reason: "cannot read: \(ioReason(error))")
        }
        guard data.count <= TrainConfig.Limits.configFileBytes else {
            throw ConfigError.unreadable(file: path, reason: "\(data.count) bytes; a finetune config is at most \(TrainConfig.Limits.configFileBytes)")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ConfigError.unreadable(file: path, reason: "not UTF-8 text")
        }
        // Before Yams sees the text: its composer recurses per nesting level (a deep file
        // overflows the stack) and copies aliased subtrees (exponential "billion laughs").
        try preScan(text, file: path)
        let root: Node?
        do { root = try Yams.compose(yaml: text) } catch {
            throw ConfigError.unreadable(file: path, reason: "invalid YAML: \(oneLine(error))")
        }
        guard let root else { return TrainConfig() }   // an empty file: all defaults
        if case .scalar(let s) = root, s.string.isEmpty || s.string == "~" || s.string == "null" { return TrainConfig() }
        guard let mapping = root.mapping else {
            throw ConfigError.unreadable(file: path, reason: "expected a mapping of keys to values at the top level")
        }
        try checkKeys(root, file: path, at: "")
        let valid = Set(TrainConfig.CodingKeys.allCases.map(\.rawValue) + TrainConfig.AliasKeys.allCases.map(\.rawValue))
        for key in mapping.keys.compactMap(\.string).sorted() where !valid.contains(key) {
            throw ConfigError.unknownKey(file: path, key: key, suggestion: TrainConfig.nearestKey(to: key))
        }
        do {
            return try YAMLDecoder().decode(TrainConfig.self, from: text)
        } catch let DecodingError.typeMismatch(type, ctx), let DecodingError.valueNotFound(type, ctx) {
            throw ConfigError.wrongType(file: path, key: keyPath(ctx), expected: describe(type))
        } catch let DecodingError.dataCorrupted(ctx) {
            // TrainConfig's own checks (load_8bit against quantization) arrive wrapped by Yams.
            if let e = ctx.underlyingError as? ConfigError { throw ConfigError.unreadable(file: path, reason: e.description) }
            throw ConfigError.wrongType(file: path, key: keyPath(ctx), expected: expectation(for: ctx))
        } catch let e as ConfigError {
            throw e
        } catch {
            throw ConfigError.unreadable(file: path, reason: oneLine(error))
        }
    }

    /// Mapping keys must be plain scalars: a complex key (`? [a]`, `[a]: 1`) is refused here
    /// instead of reaching code that expects string keys.
    static func checkKeys(_ node: Node, file: String, at path: String) throws {
        switch node {
        case .mapping(let m):
            for (k, v) in m {
                guard let key = k.scalar?.string else {
                    throw ConfigError.unreadable(file: file, reason: "\(path.isEmpty ? "" : "under '\(path)': ")complex mapping keys (a list or mapping used as a key) are not supported")
                }
                try checkKeys(v, file: file, at: path.isEmpty ? key : path + "." + key)
            }
        case .sequence(let items):
            for (i, v) in items.enumerated() { try checkKeys(v, file: file, at: "\(path)[\(i)]") }
        case .scalar(let s):
            // Yams reads a plain scalar with ':' given to an integer key as sexagesimal (1:30 =
            // 90) with unchecked arithmetic, which traps on overflow: refuse those first.
            if s.style == .plain, s.string.contains(":"), sexagesimalOverflows(s.string) {
                throw ConfigError.wrongType(file: file, key: path, expected: "a number (the value has ':' parts and is too large as a sexagesimal number)")
            }
        default: break
        }
    }

    /// Whether Yams' sexagesimal reading of `text` as a 64-bit integer overflows: the same
    /// steps (numeric ':' parts from the last, value += part * base, base *= 60), checked.
    static func sexagesimalOverflows(_ text: String) -> Bool {
        var t = Substring(text)
        if t.hasPrefix("-") || t.hasPrefix("+") { t = t.dropFirst() }
        var base: Int64 = 1, value: Int64 = 0
        for part in t.split(separator: ":", omittingEmptySubsequences: false).compactMap({ Int64($0, radix: 10) }).reversed() {
            let (m, o1) = part.multipliedReportingOverflow(by: base)
            let (v, o2) = value.addingReportingOverflow(m)
            let (b, o3) = base.multipliedReportingOverflow(by: 60)
            if o1 || o2 || o3 { return true }
            value = v; base = b
        }
        return false
    }

    /// A scan of the raw text, outside quotes and comments: refuses anchors and aliases (`&a`,
    /// `*a`), complex-key indicators (`? `), and nesting deeper than
    /// `TrainConfig.Limits.configNesting` (block indentation levels, `- ` chains and flow
    /// brackets together). Every finetune key is a scalar or a flat list, so none of these is
    /// ever needed; refusing them bounds the work Yams does (its composer recurses per level).
    ///
    /// The scan follows YAML's tokens as far as the depth needs: quotes, brackets and `- ` are
    /// indicators only where a scalar may start (inside a plain scalar such as `a - 'b [c` they
    /// are text), and the lines of a `|` / `>` block scalar are text. Where it cannot be sure
    /// it errs towards counting: every line start is checked, even inside a quote that began on
    /// an earlier line, and there brackets count as opened but never as closed.
    static func preScan(_ text: String, file: String) throws {
        let b = Array(text.utf8), n = b.count
        let maxDepth = TrainConfig.Limits.configNesting
        let space: UInt8 = 0x20, tab: UInt8 = 0x09, nl: UInt8 = 0x0A, cr: UInt8 = 0x0D
        func blank(_ c: UInt8) -> Bool { c == space || c == tab || c == nl || c == cr }
        var line = 1, i = 0, flow = 0
        var indents: [Int] = []
        var quote: UInt8? = nil
        var carried = false          // the open quote began on an earlier line
        var plain = false            // inside a plain scalar
        var blockParent: Int? = nil  // inside a block scalar: the indentation of its key's line
        var atLineStart = true
        func fail(_ what: String) -> ConfigError { .unreadable(file: file, reason: "line \(line): \(what)") }
        func tooDeep() -> ConfigError { fail("nested more than \(maxDepth) levels deep") }
        func open() throws {
            flow += 1
            if flow + indents.count > maxDepth { throw tooDeep() }
        }
        while i < n {
            if atLineStart {
                atLineStart = false
                plain = false
                var col = 0
                while i < n, b[i] == space { col += 1; i += 1 }
                let empty = i >= n || b[i] == nl || b[i] == cr
                if let parent = blockParent {
                    // A block scalar's lines are its text while more indented than its key.
                    if empty || col > parent {
                        while i < n, b[i] != nl { i += 1 }
                        continue
                    }
                    blockParent = nil
                }
                if flow == 0 && !empty && b[i] != UInt8(ascii: "#") {
                    while let last = indents.last, last >= col { indents.removeLast() }
                    indents.append(col)
                    var dashes = 0, j = i
                    while j + 1 < n, b[j] == UInt8(ascii: "-"), b[j + 1] == space || b[j + 1] == tab {
                        dashes += 1; j += 2
                        while j < n, b[j] == space || b[j] == tab { j += 1 }
                    }
                    if indents.count + dashes > maxDepth { throw tooDeep() }
                }
                continue
            }
            let c = b[i]
            let prev: UInt8 = i == 0 ? nl : b[i - 1]
            let tokenStart = blank(prev) || prev == UInt8(ascii: "[") || prev == UInt8(ascii: "{") || prev == UInt8(ascii: ",")
            let next: UInt8 = i + 1 < n ? b[i + 1] : nl
            if c == nl {
                line += 1; atLineStart = true; plain = false
                if quote != nil { carried = true }
                i += 1; continue
            }
            if let q = quote {
                if q == UInt8(ascii: "\"") && c == UInt8(ascii: "\\") { i += 2; continue }
                if c == q {
                    if q == UInt8(ascii: "'") && next == q { i += 2; continue }   // '' inside '...'
                    quote = nil; carried = false
                } else if carried && tokenStart {
                    // Perhaps not a quote after all: brackets count (and never uncount), and
                    // what would be an anchor or alias outside a quote is refused.
                    if c == UInt8(ascii: "[") || c == UInt8(ascii: "{") { try open() }
                    if (c == UInt8(ascii: "&") || c == UInt8(ascii: "*")) && !blank(next) {
                        throw fail("YAML anchors and aliases (&name, *name) are not supported in a finetune config")
                    }
                }
                i += 1; continue
            }
            if plain {
                // A plain scalar ends at ': ', ' #', the line's end, and in flow context at a
                // flow indicator; quotes and brackets inside it are text.
                let flowIndicator = [UInt8(ascii: ","), UInt8(ascii: "["), UInt8(ascii: "]"), UInt8(ascii: "{"), UInt8(ascii: "}")].contains(c)
                if c == UInt8(ascii: ":") && blank(next) { plain = false; i += 1; continue }
                if !(c == UInt8(ascii: "#") && blank(prev)) && !(flow > 0 && flowIndicator) { i += 1; continue }
                plain = false
            }
            switch c {
            case UInt8(ascii: "#") where tokenStart:
                while i + 1 < n, b[i + 1] != nl { i += 1 }
            case UInt8(ascii: "\""), UInt8(ascii: "'"):
                if tokenStart { quote = c } else { plain = true }
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                if tokenStart || flow > 0 { try open() } else { plain = true }
            case UInt8(ascii: "]"), UInt8(ascii: "}"):
                if flow > 0 { flow -= 1 }
            case UInt8(ascii: ","):
                if flow == 0 && tokenStart { plain = true }
            case UInt8(ascii: "&"), UInt8(ascii: "*"):
                if tokenStart && !blank(next) {
                    throw fail("YAML anchors and aliases (&name, *name) are not supported in a finetune config")
                }
                if !tokenStart { plain = true }
            case UInt8(ascii: "?"):
                if tokenStart && blank(next) {
                    throw fail("complex mapping keys ('? ') are not supported in a finetune config")
                }
                plain = true
            case UInt8(ascii: "|"), UInt8(ascii: ">"):
                if tokenStart && flow == 0 { blockParent = indents.last ?? 0 } else { plain = true }
            case UInt8(ascii: "-"), UInt8(ascii: ":"):
                if !blank(next) && !(flow > 0 && [UInt8(ascii: ","), UInt8(ascii: "]"), UInt8(ascii: "}")].contains(next)) { plain = true }
            case space, tab, cr:
                break
            default:
                plain = true
            }
            i += 1
        }
    }

    /// The first line of an error's description (Yams' parser errors quote the source over
    /// several lines).
    static func oneLine(_ error: Error) -> String {
        "\(error)".split(separator: "\n").first.map(String.init) ?? "\(error)"
    }

    static func keyPath(_ ctx: DecodingError.Context) -> String {
        ctx.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
    }

    static func expectation(for ctx: DecodingError.Context) -> String {
        if ctx.codingPath.first?.stringValue == TrainConfig.CodingKeys.loraTargetModules.rawValue {
            return "a list of \(Projection.allCases.map(\.rawValue).joined(separator: ", "))"
        }
        if ctx.codingPath.first?.stringValue == TrainConfig.CodingKeys.quantization.rawValue {
            return "one of \(Quantization.allCases.map(\.rawValue).joined(separator: ", "))"
        }
        if ctx.codingPath.first?.stringValue == TrainConfig.CodingKeys.gradientCheckpointing.rawValue {
            return "one of \(GradientCheckpointing.allCases.map(\.rawValue).joined(separator: ", "))"
        }
        if ctx.codingPath.first?.stringValue == TrainConfig.CodingKeys.device.rawValue {
            return "one of \(DeviceRequest.spellings)"
        }
        return "a valid value (\(ctx.debugDescription))"
    }

    static func describe(_ t: Any.Type) -> String {
        switch t {
        case is Int.Type, is UInt64.Type: return "an integer"
        case is Double.Type, is Float.Type: return "a number"
        case is Bool.Type: return "true or false"
        case is String.Type: return "a string"
        default: return "\(t)"
        }
    }
}

