/// Incremental detokenization for streaming output: feed generated ids one at a time and get back
/// only the text they complete. The concatenation of everything `push` and `finish` return is
/// exactly `tokenizer.decode(context + ids)` minus `tokenizer.decode(context)`.
///
/// Two things make this more than decoding each id alone:
/// - A character outside the vocabulary arrives as several byte-fallback ids ("😀" is
///   <0xF0> <0x9F> <0x98> <0x80>); until the last one, the decoded text ends in U+FFFD, and that
///   text is held back.
/// - SentencePiece drops the leading space of the first piece it decodes ("▁Hello" alone decodes
///   to "Hello"), and with `remove_extra_whitespaces` it drops every leading space piece; so the
///   text of an id depends on what comes before it.
///
/// The scheme (Hugging Face text-generation-inference's `decode_token`, made safe for the second
/// point): decode a short window `ids[windowStart...]` and emit what it adds to the window's
/// already-emitted prefix `ids[windowStart..<readEnd]`. The window only moves to a start whose
/// prefix text is non-empty and ends on a complete character; from there on the decoder is in the
/// same state as when decoding the whole sequence (no leading space left to drop, no byte
/// sequence open), so the difference is the same. Each push costs two decodes of a few ids.
public struct StreamingDecoder: Sendable {
    public let tokenizer: Tokenizer
    /// Every id so far: the context, then what was pushed.
    public private(set) var ids: [Int32]

    /// Start of the decode window.
    private var windowStart: Int
    /// `ids[..<readEnd]` is accounted for: its text has been emitted (or is the context).
    private var readEnd: Int
    /// UTF-8 of `decode(ids[windowStart..<readEnd])`.
    private var windowText: [UInt8]
    /// Byte length of `decode(ids[..<readEnd])`: the context's text plus all that was emitted.
    private var emittedBytes: Int

    /// `context` is what precedes the generated ids (usually the prompt); its text is not
    /// returned, but the first generated ids are decoded as its continuation (so "▁Hello" after
    /// a prompt yields " Hello", as a decode of the whole sequence would).
    public init(tokenizer: Tokenizer, context: [Int32] = []) {
        self.tokenizer = tokenizer
        self.ids = context
        self.windowStart = 0
        self.readEnd = context.count
        self.windowText = context.isEmpty ? [] : Array(tokenizer.decode(context).utf8)
        self.emittedBytes = windowText.count
    }

    /// Appends `id`; returns the text it completes, possibly "" (a control id, or part of a
    /// character still awaiting its other bytes).
    public mutating func push(_ id: Int32) -> String {
        ids.append(id)
        return emit(final: false)
    }

    /// Appends several ids; returns the text they complete.
    public mutating func push<S: Sequence>(contentsOf newIDs: S) -> String where S.Element == Int32 {
        ids.append(contentsOf: newIDs)
        return emit(final: false)
    }

    /// Returns whatever is still held back (an unfinished byte sequence decodes to U+FFFD, as in
    /// a full decode). Call once generation has stopped.
    public mutating func finish() -> String {
        emit(final: true)
    }

    private mutating func emit(final: Bool) -> String {
        guard readEnd < ids.count else { return "" }
        let text = Array(tokenizer.decode(Array(ids[windowStart...])).utf8)
        // Text ending in U+FFFD (EF BF BD) may be a character whose bytes have not all arrived.
        let open = text.count >= 3 && text[(text.count - 3)...].elementsEqual([0xEF, 0xBF, 0xBD])
        if open && !final { return "" }
        guard text.starts(with: windowText) else { return emitFromFullDecode(final: final) }
        guard text.count > windowText.count else { return "" }
        let new = String(decoding: text[windowText.count...], as: UTF8.self)
        emittedBytes += text.count - windowText.count

        // Move the window to the ids just emitted, when their own text can serve as a prefix.
        let tail = Array(tokenizer.decode(Array(ids[readEnd...])).utf8)
        if !tail.isEmpty {
            windowStart = readEnd
            windowText = tail
        } else {
            windowText = text
        }
        readEnd = ids.count
        return new
    }

    /// The slow path, for a tokenizer whose decode is not local (a SentencePiece model with a
    /// denormalizer, say): decode everything, emit past what was emitted, restart the window at 0.
    /// Not taken with LLaMA's tokenizers; kept so an odd model degrades to O(n) per id, not to
    /// wrong text.
    private mutating func emitFromFullDecode(final: Bool) -> String {
        let text = Array(tokenizer.decode(ids).utf8)
        let open = text.count >= 3 && text[(text.count - 3)...].elementsEqual([0xEF, 0xBF, 0xBD])
        guard text.count > emittedBytes, !open || final else { return "" }
        let new = String(decoding: text[emittedBytes...], as: UTF8.self)
        windowStart = 0
        windowText = text
        emittedBytes = text.count
        readEnd = ids.count
        return new
    }
}
