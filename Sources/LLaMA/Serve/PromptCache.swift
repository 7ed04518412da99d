import Foundation
import Tensor

/// The KV rows of recent prompts, kept after their requests move on, so that a request whose
/// prompt starts like an earlier one with the same adapters copies those rows into its slot
/// instead of computing them again (llama.cpp server's `cache_prompt`, vLLM's prefix caching).
/// A shared instruction or system preamble is then computed once per adapter set.
///
/// Entries are keyed by the request's adapter key (the KV of every layer after the first
/// depends on the adapters): a prompt once prefilled, and prompt plus answer once the request
/// ends, so a chat's next turn starts from the last one. Every row has the bits a fresh
/// prefill would give it (decoding and prompt rows are computed alike). Bounded by bytes;
/// the least recently used entry leaves first. Used by the engine's thread only.
public final class PromptCache {
    public let budgetBytes: Int
    public private(set) var bytes = 0
    private let rowFloats: Int        // floats of one token's K and V over all layers
    private var entries: [Entry] = []
    private var clock = 0

    private final class Entry {
        let key: String
        let tokens: [Int32]
        let data: UnsafeMutablePointer<Float>   // [layers][2][nKV][tokens][hd]
        let count: Int
        var lastUse: Int
        init(key: String, tokens: [Int32], floats: Int, lastUse: Int) {
            self.key = key; self.tokens = tokens; self.lastUse = lastUse
            count = floats
            data = .allocate(capacity: max(1, floats))
        }
        deinit { data.deallocate() }
    }

    public init(budgetBytes: Int, layers: Int, kvDim: Int) {
        self.budgetBytes = max(0, budgetBytes)
        rowFloats = 2 * layers * kvDim
    }

    public var entryCount: Int { entries.count }

    /// The longest run of `prompt`'s first tokens cached for `key`, at most `limit` tokens: how
    /// many rows `restore` would copy (0: none).
    public func match(key: String, prompt: [Int32], limit: Int) -> Int {
        best(key: key, prompt: prompt, limit: limit)?.n ?? 0
    }

    private func best(key: String, prompt: [Int32], limit: Int) -> (entry: Entry, n: Int)? {
        var found: (Entry, Int)?
        for e in entries where e.key == key {
            var n = 0
            let m = min(limit, e.tokens.count, prompt.count)
            while n < m && e.tokens[n] == prompt[n] { n += 1 }
            if n > (found?.1 ?? 0) { found = (e, n) }
        }
        return found
    }

    /// Copies the cached rows of `prompt`'s longest cached start (at most `limit` tokens) into
    /// `slot`, which must be empty, and returns how many it copied.
    public func restore(key: String, prompt: [Int32], limit: Int, into cache: SlotCache, slot: Int) -> Int {
        guard let (e, n) = best(key: key, prompt: prompt, limit: limit), n > 0 else { return 0 }
        precondition(cache.lengths[slot] == 0 && n <= cache.capacity)
        clock += 1
        e.lastUse = clock
        let kv = cache.kvDim, T = e.tokens.count, own = KVLayout.headMajor(capacity: T, hd: cache.hd)
        for l in 0..<cache.k.count {
            let src = e.data + l * 2 * T * kv, base = slot * cache.capacity * kv
            own.copyRows(n, from: src, to: cache.k[l].data + base, layout: cache.layout, nKV: cache.nKV, hd: cache.hd)
            own.copyRows(n, from: src + T * kv, to: cache.v[l].data + base, layout: cache.layout, nKV: cache.nKV, hd: cache.hd)
        }
        cache.advance(slot: slot, by: n)
        return n
    }

    /// Keeps the rows of `tokens` (a prompt, all of it in `slot`) for `key`, evicting the least
    /// recently used entries to stay within the budget. An entry that already holds them is
    /// only marked used; one that holds a start of them is replaced.
    public func store(key: String, tokens: [Int32], from cache: SlotCache, slot: Int) {
        let n = tokens.count, floats = n * rowFloats
        guard n > 0, floats * MemoryLayout<Float>.stride <= budgetBytes, cache.lengths[slot] >= n else { return }
        clock += 1
        if let (e, m) = best(key: key, prompt: tokens, limit: n), m == n {
            e.lastUse = clock
            return
        }
        // Entries of this key that are a start of the new prompt add nothing once it is kept.
        entries.removeAll { e in
            let covered = e.key == key && e.tokens.count <= n && Array(tokens[0..<e.tokens.count]) == e.tokens
            if covered { bytes -= e.count * MemoryLayout<Float>.stride }
            return covered
        }
        let need = floats * MemoryLayout<Float>.stride
        while bytes + need > budgetBytes, let i = entries.indices.min(by: { entries[$0].lastUse < entries[$1].lastUse }) {
            bytes -= entries[i].count * MemoryLayout<Float>.stride
            entries.remove(at: i)
        }
        let e = Entry(key: key, tokens: tokens, floats: floats, lastUse: clock)
        let kv = cache.kvDim, own = KVLayout.headMajor(capacity: n, hd: cache.hd)
        for l in 0..<cache.k.count {
            let dst = e.data + l * 2 * n * kv, base = slot * cache.capacity * kv
            cache.layout.copyRows(n, from: cache.k[l].data + base, to: dst, layout: own, nKV: cache.nKV, hd: cache.hd)
            cache.layout.copyRows(n, from: cache.v[l].data + base, to: dst + n * kv, layout: own, nKV: cache.nKV, hd: cache.hd)
        }
        entries.append(e)
        bytes += need
    }
}
