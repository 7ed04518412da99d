import Foundation

/// A byte-level BPE tokenizer (GPT-2's scheme, as Hugging Face `tokenizers` runs it): SmolLM2, GPT-2,
/// LLaMA 3 and their kin.
///
/// Encoding, as `Tokenizer.encode` in `tokenizers` does it (no normalizer):
/// 1. Added tokens (`<|im_start|>`, ...) are found whole in the text, longest first at the leftmost
///    position; those not `normalized` first, then the others in what is left. They become their id.
/// 2. The pre-tokenizer (`PreTokenizer`) cuts each stretch of text between them into words.
/// 3. Each word's UTF-8 bytes become one symbol each (GPT-2's bytes-to-unicode alphabet spells them
///    in the vocabulary: "Ġ" is the space byte), and adjacent symbols merge, lowest merge rank first
///    (leftmost among equal ranks), until no pair has a merge. With `ignoresMerges` (LLaMA 3), a
///    word that is in the vocabulary as a whole is that token.
///
/// Decoding joins each id's bytes and reads them as UTF-8, an invalid sequence becoming U+FFFD
/// (`errors='replace'`), as `decode(ids, skip_special_tokens=False)` does; except that the BOS, EOS
/// and pad ids decode to nothing when they are special tokens (the `Tokenizer` contract, as
/// SentencePiece's control pieces). Other special tokens print their text ("<|endoftext|>").
/// Ids outside the vocabulary are skipped.
///
/// Immutable after loading but for a bounded cache of word encodings behind a lock, hence
/// `@unchecked Sendable`; encode and decode may run on several threads at once.
public final class BPETokenizer: Tokenizer, @unchecked Sendable {
    /// A token matched whole in the input text before pre-tokenization (`added_tokens` in
    /// tokenizer.json; control and user-defined tokens in GGUF).
    public struct AddedToken: Sendable, Equatable {
        public var id: Int32
        public var content: String
        /// Special tokens (control tokens) are the ones BOS/EOS/pad may be, and the ones Hugging
        /// Face skips with `skip_special_tokens`.
        public var special: Bool
        /// Swallow the whitespace before (lstrip) or after (rstrip) the token.
        public var lstrip: Bool
        public var rstrip: Bool
        /// Matched in the second pass, after the tokens that are not normalized.
        public var normalized: Bool

        public init(id: Int32, content: String, special: Bool, lstrip: Bool = false, rstrip: Bool = false,
                    normalized: Bool = false) {
            self.id = id
            self.content = content
            self.special = special
            self.lstrip = lstrip
            self.rstrip = rstrip
            self.normalized = normalized
        }
    }

    /// Where the tokenizer came from (a path or a description), for messages.
    public let source: String
    public let vocabSize: Int
    public let bosID: Int32?
    public let eosID: Int32?
    public let eosIDs: Set<Int32>
    public let unkID: Int32?
    public let padID: Int32?
    public let addsBOS: Bool
    public let preTokenizer: PreTokenizer
    public let ignoresMerges: Bool
    public let addedTokens: [AddedToken]
    public let mergeCount: Int

    /// Vocabulary entry per id ("" for an id nothing names).
    private let pieces: [String]
    private let ids: [String: Int32]
    /// What each id decodes to; `hidden` ids decode to nothing.
    private let pieceBytes: [[UInt8]]
    private let hidden: [Bool]
    private let special: [Bool]
    /// The id of each single-byte symbol, -1 when the vocabulary lacks it.
    private let byteIDs: [Int32]
    /// (left id << 32 | right id) -> (rank << 32 | merged id).
    private let mergeTable: [UInt64: UInt64]
    /// Byte spelling -> id of every vocabulary entry, only with `ignoresMerges`.
    private let wholeWords: [[UInt8]: Int32]
    /// Pass 1: added tokens not normalized; pass 2: the normalized ones.
    private let matchers: [AddedTokenMatcher]
    private let cache = WordCache(capacity: 1 << 16)

    /// Builds the tokenizer from its parts; the GGUF and tokenizer.json initialisers come here.
    ///
    /// - `tokens[id]`: the vocabulary in GPT-2's byte alphabet ("Ġthe"); "" leaves an id unnamed.
    /// - `merges`: pairs of vocabulary entries, rank = position (a pair listed twice keeps the later
    ///   rank, as in `tokenizers`). `mergesKey` names them in messages ("model.merges").
    /// - `addedTokens`: may name ids past `tokens.count` (LLaMA 3's specials); `vocabSize` covers them.
    /// - `eosIDs`: ids that end generation; `eosID` is added to them.
    /// - `addsBOS`: whether `tokenizer(text)` puts `bosID` in front (needs `bosID`).
    public init(tokens: [String], merges: [(String, String)], addedTokens: [AddedToken] = [],
                bosID: Int32?, eosID: Int32?, eosIDs: Set<Int32> = [], unkID: Int32? = nil, padID: Int32? = nil,
                addsBOS: Bool, preTokenizer: PreTokenizer, ignoresMerges: Bool = false,
                source: String, mergesKey: String = "merges") throws {
        func fail(_ reason: String) -> TokenizerError { .unreadable(file: source, reason: reason) }

        var size = tokens.count
        for (n, t) in addedTokens.enumerated() {
            guard t.id >= 0 else { throw fail("added token \(n) \"\(t.content)\": negative id \(t.id)") }
            guard !t.content.isEmpty else { throw fail("added token \(n) (id \(t.id)): empty content") }
            size = max(size, Int(t.id) + 1)
        }
        for (name, id) in [("bos", bosID), ("eos", eosID), ("unk", unkID), ("pad", padID)] + eosIDs.map({ ("eos", $0) }) {
            if let id, id < 0 || Int(id) >= size {
                throw fail("\(name) id \(id) is outside the vocabulary (\(size) tokens)")
            }
        }
        if addsBOS && bosID == nil { throw fail("BOS is to be added, but there is no BOS id") }

        var pieces = tokens + [String](repeating: "", count: size - tokens.count)
        var ids: [String: Int32] = [:]
        ids.reserveCapacity(size)
        for (i, t) in tokens.enumerated() where !t.isEmpty { ids[t] = Int32(i) }
        var special = [Bool](repeating: false, count: size)
        for t in addedTokens {
            pieces[Int(t.id)] = t.content
            special[Int(t.id)] = t.special
        }

        var table: [UInt64: UInt64] = [:]
        table.reserveCapacity(merges.count)
        for (rank, (a, b)) in merges.enumerated() {
            guard let l = ids[a] else { throw fail("\(mergesKey)[\(rank)] \"\(a) \(b)\": \"\(a)\" is not in the vocabulary") }
            guard let r = ids[b] else { throw fail("\(mergesKey)[\(rank)] \"\(a) \(b)\": \"\(b)\" is not in the vocabulary") }
            guard let m = ids[a + b] else {
                throw fail("\(mergesKey)[\(rank)] \"\(a) \(b)\": the merged token \"\(a + b)\" is not in the vocabulary")
            }
            table[Self.pair(l, r)] = UInt64(rank) << 32 | UInt64(UInt32(m))
        }

        let allEOS = eosIDs.union(eosID.map { [$0] } ?? [])
        var hidden = [Bool](repeating: false, count: size)
        for id in [bosID, padID].compactMap({ $0 }) + Array(allEOS) where special[Int(id)] {
            hidden[Int(id)] = true
        }
        var whole: [[UInt8]: Int32] = [:]
        if ignoresMerges {
            for (i, t) in tokens.enumerated() where !t.isEmpty { whole[ByteAlphabet.bytes(of: t)] = Int32(i) }
        }
        let byteIDs = ByteAlphabet.symbols.map { ids[String($0)] ?? -1 }
        for t in addedTokens { ids[t.content] = t.id }

        self.source = source
        self.vocabSize = size
        self.bosID = bosID
        self.eosID = eosID
        self.eosIDs = allEOS
        self.unkID = unkID
        self.padID = padID
        self.addsBOS = addsBOS
        self.preTokenizer = preTokenizer
        self.ignoresMerges = ignoresMerges
        self.addedTokens = addedTokens
        self.mergeCount = merges.count
        self.pieces = pieces
        self.ids = ids
        self.pieceBytes = pieces.map(ByteAlphabet.bytes(of:))
        self.hidden = hidden
        self.special = special
        self.byteIDs = byteIDs
        self.mergeTable = table
        self.wholeWords = whole
        self.matchers = [AddedTokenMatcher(addedTokens.filter { !$0.normalized }),
                         AddedTokenMatcher(addedTokens.filter { $0.normalized })]
    }

    /// A GGUF file's "gpt2" tokenizer (`tokenizer.ggml.model` = "gpt2"), from its metadata:
    /// `tokenizer.ggml.tokens`, `.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined,
    /// 5 unused, 6 byte), `.merges` ("left right"), `.pre`, `.bos_token_id`, `.eos_token_id`,
    /// `.unknown_token_id`, `.padding_token_id`, `.add_bos_token`; pass nil for a key the file lacks.
    ///
    /// Unknown, control and user-defined tokens are matched whole in the text (as llama.cpp does
    /// with special-token parsing on); the first two are special. `pre` missing means "default".
    /// `addBOS` nil follows llama.cpp: true for LLaMA 3's pre-tokenizer, else false. LLaMA 3's
    /// names also turn on `ignoresMerges`, as in llama.cpp and LLaMA 3's tokenizer.json.
    /// `extraEOSIDs` (say `tokenizer.ggml.eot_token_id`) also end generation. `source` (the GGUF
    /// path) names the file in messages.
    public convenience init(ggufTokens tokens: [String], tokenTypes: [Int32]?, merges: [String], pre: String?,
                            bosID: Int32?, eosID: Int32?, unkID: Int32?, padID: Int32?, addBOS: Bool?,
                            extraEOSIDs: [Int32] = [], source: String) throws {
        let kind = try PreTokenizer(ggmlPre: pre ?? "default", file: source)
        if let tokenTypes, tokenTypes.count != tokens.count {
            throw TokenizerError.unreadable(
                file: source,
                reason: "tokenizer.ggml.token_type has \(tokenTypes.count) entries, tokenizer.ggml.tokens \(tokens.count)")
        }
        var pairs: [(String, String)] = []
        pairs.reserveCapacity(merges.count)
        for (i, m) in merges.enumerated() {
            let parts = m.split(separator: " ", omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                throw TokenizerError.unreadable(
                    file: source, reason: "tokenizer.ggml.merges[\(i)] \"\(m)\": expected two tokens separated by one space")
            }
            pairs.append((String(parts[0]), String(parts[1])))
        }
        var added: [AddedToken] = []
        for (i, type) in (tokenTypes ?? []).enumerated() where type == 2 || type == 3 || type == 4 {
            guard !tokens[i].isEmpty else { continue }
            added.append(AddedToken(id: Int32(i), content: tokens[i], special: type != 4))
        }
        try self.init(tokens: tokens, merges: pairs, addedTokens: added, bosID: bosID, eosID: eosID,
                      eosIDs: Set(extraEOSIDs), unkID: unkID, padID: padID, addsBOS: addBOS ?? (kind == .llama3),
                      preTokenizer: kind, ignoresMerges: kind == .llama3, source: source,
                      mergesKey: "tokenizer.ggml.merges")
    }

    // MARK: Tokenizer

    /// The ids for `text`, with `bosID` in front when `addBOS` is true and there is one (pass
    /// `addsBOS` to do what `tokenizer(text)` does). Never adds EOS.
    public func encode(_ text: String, addBOS: Bool) -> [Int32] {
        var out: [Int32] = []
        if addBOS, let bosID { out.append(bosID) }
        var text = text
        text.withUTF8 { utf8 in
            out.reserveCapacity(out.count + utf8.count / 3)
            var segments = matchers[0].split(utf8, 0..<utf8.count)
            if !matchers[1].isEmpty {
                segments = segments.flatMap { seg -> [AddedTokenMatcher.Segment] in
                    if case .text(let r) = seg { return matchers[1].split(utf8, r) }
                    return [seg]
                }
            }
            var scratch = Scratch()
            for seg in segments {
                switch seg {
                case .token(let id): out.append(id)
                case .text(let r): encodeText(utf8, r, &scratch, into: &out)
                }
            }
        }
        return out
    }

    public func decode(_ ids: [Int32]) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(ids.count * 4)
        for id in ids where id >= 0 && Int(id) < vocabSize && !hidden[Int(id)] {
            bytes.append(contentsOf: pieceBytes[Int(id)])
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    public func piece(_ id: Int32) -> String {
        id >= 0 && Int(id) < vocabSize ? pieces[Int(id)] : ""
    }

    // MARK: BPE specifics

    /// The id of a vocabulary entry or added token, spelled as `piece` returns it.
    public func id(ofPiece piece: String) -> Int32? { ids[piece] }

    /// Whether `id` is a special added token (a control token such as "<|im_end|>").
    public func isSpecial(_ id: Int32) -> Bool { id >= 0 && Int(id) < vocabSize && special[Int(id)] }

    // MARK: encoding

    /// Buffers reused across the stretches of one `encode` call.
    private struct Scratch {
        var scalars: [UInt32] = []
        var classes: [UInt8] = []
        var offsets: [Int] = []
        var words: [Range<Int>] = []
    }

    /// Pre-tokenizes `utf8[range]` and appends the BPE ids of each word.
    private func encodeText(_ utf8: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, _ scratch: inout Scratch,
                            into out: inout [Int32]) {
        scratch.scalars.removeAll(keepingCapacity: true)
        scratch.classes.removeAll(keepingCapacity: true)
        scratch.offsets.removeAll(keepingCapacity: true)
        scratch.words.removeAll(keepingCapacity: true)
        // The text is a Swift string, hence valid UTF-8.
        var i = range.lowerBound
        while i < range.upperBound {
            let b0 = UInt32(utf8[i])
            var v: UInt32, n: Int
            if b0 < 0x80 { v = b0; n = 1 }
            else if b0 < 0xE0 { v = b0 & 0x1F; n = 2 }
            else if b0 < 0xF0 { v = b0 & 0x0F; n = 3 }
            else { v = b0 & 0x07; n = 4 }
            for k in 1..<n { v = v << 6 | UInt32(utf8[i + k] & 0x3F) }
            scratch.scalars.append(v)
            scratch.classes.append(ScalarClass.of(v))
            scratch.offsets.append(i)
            i += n
        }
        scratch.offsets.append(range.upperBound)
        preTokenizer.split(scalars: scratch.scalars, classes: scratch.classes, in: 0..<scratch.scalars.count,
                           into: &scratch.words)
        for w in scratch.words {
            let bytes = UnsafeBufferPointer(rebasing: utf8[scratch.offsets[w.lowerBound]..<scratch.offsets[w.upperBound]])
            encodeWord(bytes, into: &out)
        }
    }

    private func encodeWord(_ word: UnsafeBufferPointer<UInt8>, into out: inout [Int32]) {
        if word.count == 1 {
            let id = byteIDs[Int(word[0])]
            if id >= 0 { out.append(id) } else if let unkID { out.append(unkID) }
            return
        }
        let key = Array(word)
        if let hit = cache.get(key) {
            out.append(contentsOf: hit)
            return
        }
        let ids: [Int32]
        if ignoresMerges, let id = wholeWords[key] { ids = [id] } else { ids = merge(word) }
        cache.put(key, ids)
        out.append(contentsOf: ids)
    }

    /// BPE on one word, as `tokenizers` does it (`Word::merge_all`): a queue of the adjacent pairs
    /// that have a merge, lowest (rank, position) first; a popped pair that no longer exists (one
    /// of its symbols merged elsewhere) is skipped; each merge queues the two pairs it creates.
    private func merge(_ word: UnsafeBufferPointer<UInt8>) -> [Int32] {
        var sym: [Int32] = []
        sym.reserveCapacity(word.count)
        for b in word {
            let id = byteIDs[Int(b)]
            if id >= 0 { sym.append(id) } else if let unkID { sym.append(unkID) }
        }
        let n = sym.count
        guard n > 1 else { return sym }
        // Doubly linked list over the symbols; a merged-away symbol gets alive = false.
        var next = (0..<n).map { Int32($0 + 1 < n ? $0 + 1 : -1) }
        var prev = (0..<n).map { Int32($0 - 1) }
        var alive = [Bool](repeating: true, count: n)
        var heap = MinHeap()
        func queue(_ i: Int) {
            let j = Int(next[i])
            if j >= 0, let m = mergeTable[Self.pair(sym[i], sym[j])] { heap.push((m & 0xFFFF_FFFF_0000_0000) | UInt64(i)) }
        }
        for i in 0..<(n - 1) { queue(i) }
        while let top = heap.pop() {
            let i = Int(top & 0xFFFF_FFFF), rank = top >> 32
            guard alive[i] else { continue }
            let j = Int(next[i])
            guard j >= 0, let m = mergeTable[Self.pair(sym[i], sym[j])], m >> 32 == rank else { continue }
            sym[i] = Int32(truncatingIfNeeded: m & 0xFFFF_FFFF)
            alive[j] = false
            next[i] = next[j]
            if next[j] >= 0 { prev[Int(next[j])] = Int32(i) }
            if prev[i] >= 0 { queue(Int(prev[i])) }
            queue(i)
        }
        var out: [Int32] = []
        var i = 0
        while i >= 0 {
            out.append(sym[i])
            i = Int(next[i])
        }
        return out
    }

    @inline(__always)
    private static func pair(_ l: Int32, _ r: Int32) -> UInt64 {
        UInt64(UInt32(bitPattern: l)) << 32 | UInt64(UInt32(bitPattern: r))
    }
}
