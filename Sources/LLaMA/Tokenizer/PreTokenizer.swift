/// How a byte-level BPE tokenizer cuts text into words before it merges bytes: the regular
/// expressions of Hugging Face `tokenizers` (and llama.cpp), written out by hand as scanners over
/// Unicode scalars. Each scanner tries the pattern's alternatives in order at the current position,
/// as a backtracking regex engine (Oniguruma, in `tokenizers`) does, and takes the first that matches.
///
/// Character classes: `\p{L}` and `\p{N}` are Unicode general categories L* and N* (Swift's
/// `Unicode.Scalar.Properties.generalCategory`), `\s` is the White_Space property (what Oniguruma's
/// `\s` and Rust's `char::is_whitespace` match, U+0085 and U+00A0 included).
public enum PreTokenizer: String, Sendable, CaseIterable {
    /// GPT-2's pattern (`ByteLevel(use_regex=True)` in `tokenizers`):
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    case gpt2
    /// SmolLM's (and StarCoder's) chain: `Digits(individual_digits=True)` isolates every `\p{N}`
    /// scalar, then GPT-2's pattern runs on each stretch between them on its own (so `(?!\S)` sees
    /// the end of the stretch, not the digit after it).
    case smollm
    /// LLaMA 3's pattern (`Split(regex, Isolated)` then `ByteLevel(use_regex=False)`):
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    case llama3

    /// GGUF `tokenizer.ggml.pre` values we read, and the kind each names. llama.cpp runs the same
    /// regexes for every name in a group. One difference: llama.cpp's "default" (what it also uses
    /// when the key is missing) is a chain of four regexes of its own for unknown models; here it is
    /// GPT-2's pattern, the usual origin of such files.
    public static let ggmlNames: [(name: String, kind: PreTokenizer)] = [
        ("default", .gpt2), ("gpt-2", .gpt2), ("mpt", .gpt2), ("olmo", .gpt2),
        ("smollm", .smollm), ("starcoder", .smollm), ("refact", .smollm), ("codeshell", .smollm),
        ("llama-bpe", .llama3), ("llama3", .llama3), ("llama-v3", .llama3), ("falcon3", .llama3),
    ]

    /// The kind a GGUF `tokenizer.ggml.pre` value names; `file` is the GGUF path (or a
    /// description) for the message when the value is not one we read.
    public init(ggmlPre name: String, file: String) throws {
        guard let kind = Self.ggmlNames.first(where: { $0.name == name })?.kind else {
            let known = Self.ggmlNames.map { "\"\($0.name)\"" }.joined(separator: ", ")
            throw TokenizerError.unsupported(
                file: file, what: "tokenizer.ggml.pre \"\(name)\": no pre-tokenizer of that name (supported: \(known))")
        }
        self = kind
    }

    /// The pieces of `text`, in order; they concatenate back to `text`.
    public func split(_ text: String) -> [String] {
        let scalars = text.unicodeScalars.map(\.value)
        let classes = scalars.map(ScalarClass.of)
        var ranges: [Range<Int>] = []
        split(scalars: scalars, classes: classes, in: 0..<scalars.count, into: &ranges)
        return ranges.map { r in
            var s = String.UnicodeScalarView()
            for v in scalars[r] { s.append(Unicode.Scalar(v)!) }
            return String(s)
        }
    }

    /// Appends the pieces of `scalars[range]` to `pieces`, as ranges of scalar indices.
    /// `classes[i]` is `ScalarClass.of(scalars[i])`.
    func split(scalars: [UInt32], classes: [UInt8], in range: Range<Int>, into pieces: inout [Range<Int>]) {
        scalars.withUnsafeBufferPointer { s in
            classes.withUnsafeBufferPointer { c in
                let scanner = Scanner(s: s, c: c)
                switch self {
                case .gpt2:
                    scanner.gpt2(range, into: &pieces)
                case .llama3:
                    scanner.llama3(range, into: &pieces)
                case .smollm:
                    var start = range.lowerBound
                    for i in range where c[i] & ScalarClass.number != 0 {
                        if start < i { scanner.gpt2(start..<i, into: &pieces) }
                        pieces.append(i..<i + 1)
                        start = i + 1
                    }
                    if start < range.upperBound { scanner.gpt2(start..<range.upperBound, into: &pieces) }
                }
            }
        }
    }
}

/// Bit flags for one scalar: what the pre-tokenizer patterns ask of it.
enum ScalarClass {
    static let letter: UInt8 = 1       // \p{L}
    static let number: UInt8 = 2       // \p{N}
    static let space: UInt8 = 4        // \s (White_Space)
    static let newline: UInt8 = 8      // [\r\n]
    /// Neither letter, number nor whitespace: `[^\s\p{L}\p{N}]`.
    static let other: UInt8 = 16

    static func of(_ v: UInt32) -> UInt8 {
        if v < 128 { return ascii[Int(v)] }
        guard let u = Unicode.Scalar(v) else { return other }
        if u.properties.isWhitespace { return space }
        switch u.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            return letter
        case .decimalNumber, .letterNumber, .otherNumber:
            return number
        default:
            return other
        }
    }

    static let ascii: [UInt8] = (0..<128).map { v -> UInt8 in
        switch v {
        case 0x0A, 0x0D: return space | newline
        case 0x09, 0x0B, 0x0C, 0x20: return space
        case 0x30...0x39: return number
        case 0x41...0x5A, 0x61...0x7A: return letter
        default: return other
        }
    }
}

/// The scanners. `s` holds scalar values, `c` their `ScalarClass` flags; every match stays inside
/// the range it is given (lookahead included), as the regex would on that substring alone.
private struct Scanner {
    let s: UnsafeBufferPointer<UInt32>
    let c: UnsafeBufferPointer<UInt8>

    static let apostrophe: UInt32 = 0x27, blank: UInt32 = 0x20

    /// End of the run of scalars from `i` having any of `flags`.
    @inline(__always)
    func run(_ i: Int, _ end: Int, _ flags: UInt8) -> Int {
        var j = i
        while j < end && c[j] & flags != 0 { j += 1 }
        return j
    }

    /// `\s+(?!\S)|\s+` at `i`, a whitespace scalar: the whole run at the end of the text; else
    /// the run but its last scalar (left for the word after it), or that one scalar alone.
    @inline(__always)
    func whitespace(_ i: Int, _ end: Int) -> Int {
        let r = run(i, end, ScalarClass.space)
        if r == end { return r }
        return r - i >= 2 ? r - 1 : i + 1
    }

    /// Length of a contraction at `i` (`'s|'t|'re|'ve|'m|'ll|'d`), or 0. `foldCase` makes it
    /// case-insensitive as `(?i:...)` is in Oniguruma, where long s (U+017F) folds to "s".
    @inline(__always)
    func contraction(_ i: Int, _ end: Int, foldCase: Bool) -> Int {
        guard s[i] == Self.apostrophe, i + 1 < end else { return 0 }
        func lower(_ v: UInt32) -> UInt32 {
            guard foldCase else { return v }
            if v >= 0x41 && v <= 0x5A { return v + 0x20 }
            return v == 0x17F ? 0x73 : v
        }
        let a = lower(s[i + 1])
        if a == 0x73 || a == 0x74 || a == 0x6D || a == 0x64 { return 2 }  // s t m d
        guard i + 2 < end else { return 0 }
        let b = lower(s[i + 2])
        if (a == 0x72 && b == 0x65) || (a == 0x76 && b == 0x65) || (a == 0x6C && b == 0x6C) { return 3 }  // re ve ll
        return 0
    }

    func gpt2(_ range: Range<Int>, into pieces: inout [Range<Int>]) {
        let end = range.upperBound
        var i = range.lowerBound
        while i < end {
            let j = gpt2Match(i, end)
            pieces.append(i..<j)
            i = j
        }
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` at `i`.
    @inline(__always)
    private func gpt2Match(_ i: Int, _ end: Int) -> Int {
        let k = contraction(i, end, foldCase: false)
        if k > 0 { return i + k }
        // ` ?X+`: an optional U+0020, then a run of one class (the space is taken only if a run follows).
        let j = s[i] == Self.blank && i + 1 < end ? i + 1 : i
        let cj = c[j]
        if cj & ScalarClass.letter != 0 { return run(j, end, ScalarClass.letter) }
        if cj & ScalarClass.number != 0 { return run(j, end, ScalarClass.number) }
        if cj & ScalarClass.other != 0 { return run(j, end, ScalarClass.other) }
        return whitespace(i, end)
    }

    func llama3(_ range: Range<Int>, into pieces: inout [Range<Int>]) {
        let end = range.upperBound
        var i = range.lowerBound
        while i < end {
            let j = llama3Match(i, end)
            pieces.append(i..<j)
            i = j
        }
    }

    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    @inline(__always)
    private func llama3Match(_ i: Int, _ end: Int) -> Int {
        let k = contraction(i, end, foldCase: true)
        if k > 0 { return i + k }
        let ci = c[i]
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if ci & ScalarClass.letter != 0 { return run(i, end, ScalarClass.letter) }
        if ci & (ScalarClass.newline | ScalarClass.number) == 0, i + 1 < end, c[i + 1] & ScalarClass.letter != 0 {
            return run(i + 1, end, ScalarClass.letter)
        }
        // \p{N}{1,3}
        if ci & ScalarClass.number != 0 { return min(run(i, end, ScalarClass.number), i + 3) }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        let j = s[i] == Self.blank && i + 1 < end ? i + 1 : i
        if c[j] & ScalarClass.other != 0 {
            return run(run(j, end, ScalarClass.other), end, ScalarClass.newline)
        }
        // \s*[\r\n]+ : the whitespace run up to and including its last \r or \n.
        let r = run(i, end, ScalarClass.space)
        var last = r - 1
        while last >= i && c[last] & ScalarClass.newline == 0 { last -= 1 }
        if last >= i { return last + 1 }
        // \s+(?!\S)|\s+
        return whitespace(i, end)
    }
}
