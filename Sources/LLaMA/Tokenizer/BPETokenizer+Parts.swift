import Foundation

// The parts of byte-level BPE that are not the tokenizer's interface: GPT-2's byte alphabet, the
// added-token matcher, the merge queue, and the word cache.

/// GPT-2's bytes-to-unicode table: the printable Latin-1 bytes spell themselves, the other 68
/// (controls, space, DEL, NBSP, soft hyphen) become U+0100 onwards, in byte order.
enum ByteAlphabet {
    static let symbols: [Unicode.Scalar] = {
        var out = [Unicode.Scalar](repeating: " ", count: 256)
        var extra: UInt32 = 256
        for b in 0..<256 {
            if (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b) {
                out[b] = Unicode.Scalar(UInt8(b))
            } else {
                out[b] = Unicode.Scalar(extra)!
                extra += 1
            }
        }
        return out
    }()

    static let byteOf: [UInt32: UInt8] = {
        var m: [UInt32: UInt8] = [:]
        for (b, u) in symbols.enumerated() { m[u.value] = UInt8(b) }
        return m
    }()

    /// The bytes a vocabulary entry stands for: through the table when every scalar is in it, else
    /// the entry's own UTF-8 (an added token such as "<|a b|>"), as the ByteLevel decoder does.
    static func bytes(of piece: String) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(piece.unicodeScalars.count)
        for u in piece.unicodeScalars {
            guard let b = byteOf[u.value] else { return Array(piece.utf8) }
            out.append(b)
        }
        return out
    }
}

/// Finds added tokens in UTF-8 text: at the leftmost position where one starts, the longest
/// (Hugging Face's leftmost-longest Aho-Corasick match), then lstrip/rstrip widen the match over
/// the whitespace around it.
struct AddedTokenMatcher {
    enum Segment { case text(Range<Int>), token(Int32) }

    /// By first byte: (content, token), longest first.
    private var candidates = [[([UInt8], BPETokenizer.AddedToken)]](repeating: [], count: 256)
    let isEmpty: Bool

    init(_ tokens: [BPETokenizer.AddedToken]) {
        isEmpty = tokens.isEmpty
        for t in tokens {
            let bytes = Array(t.content.utf8)
            candidates[Int(bytes[0])].append((bytes, t))
        }
        for b in 0..<256 { candidates[b].sort { $0.0.count > $1.0.count } }
    }

    func split(_ u: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> [Segment] {
        guard !isEmpty else { return range.isEmpty ? [] : [.text(range)] }
        var out: [Segment] = []
        var textStart = range.lowerBound
        var i = range.lowerBound
        scan: while i < range.upperBound {
            for (bytes, token) in candidates[Int(u[i])] where i + bytes.count <= range.upperBound {
                guard (0..<bytes.count).allSatisfy({ u[i + $0] == bytes[$0] }) else { continue }
                var start = i, stop = i + bytes.count
                if token.lstrip {
                    while start > textStart, let (v, n) = Self.scalar(before: start, in: u), Self.isWhitespace(v) {
                        start -= n
                    }
                }
                if token.rstrip {
                    while stop < range.upperBound, let (v, n) = Self.scalar(at: stop, in: u), Self.isWhitespace(v) {
                        stop += n
                    }
                }
                if start > textStart { out.append(.text(textStart..<start)) }
                out.append(.token(token.id))
                textStart = stop
                i = stop
                continue scan
            }
            i += 1
        }
        if textStart < range.upperBound { out.append(.text(textStart..<range.upperBound)) }
        return out
    }

    private static func isWhitespace(_ v: UInt32) -> Bool {
        Unicode.Scalar(v)?.properties.isWhitespace ?? false
    }

    private static func scalar(at i: Int, in u: UnsafeBufferPointer<UInt8>) -> (UInt32, Int)? {
        let b0 = UInt32(u[i])
        let n = b0 < 0x80 ? 1 : b0 < 0xE0 ? 2 : b0 < 0xF0 ? 3 : 4
        guard i + n <= u.count else { return nil }
        var v = n == 1 ? b0 : b0 & (0x7F >> n)
        for k in 1..<n { v = v << 6 | UInt32(u[i + k] & 0x3F) }
        return (v, n)
    }

    private static func scalar(before i: Int, in u: UnsafeBufferPointer<UInt8>) -> (UInt32, Int)? {
        var s = i - 1
        while s > 0 && u[s] & 0xC0 == 0x80 { s -= 1 }
        guard s >= 0, let (v, n) = scalar(at: s, in: u), s + n == i else { return nil }
        return (v, n)
    }
}

/// A min-heap of packed (rank << 32 | position) keys.
struct MinHeap {
    private var a: [UInt64] = []

    mutating func push(_ x: UInt64) {
        a.append(x)
        var i = a.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            if a[p] <= a[i] { break }
            a.swapAt(p, i)
            i = p
        }
    }

    mutating func pop() -> UInt64? {
        guard let top = a.first else { return nil }
        let last = a.removeLast()
        if !a.isEmpty {
            a[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < a.count && a[l] < a[m] { m = l }
                if r < a.count && a[r] < a[m] { m = r }
                if m == i { break }
                a.swapAt(i, m)
                i = m
            }
        }
        return top
    }
}

/// Word -> ids, shared by all threads; emptied when full (cheap, and keeps recent text warm).
final class WordCache: @unchecked Sendable {
    private let lock = NSLock()
    private var words: [[UInt8]: [Int32]] = [:]
    private let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    func get(_ key: [UInt8]) -> [Int32]? {
        lock.lock()
        defer { lock.unlock() }
        return words[key]
    }

    func put(_ key: [UInt8], _ ids: [Int32]) {
        lock.lock()
        defer { lock.unlock() }
        if words.count >= capacity { words.removeAll(keepingCapacity: true) }
        words[key] = ids
    }
}
