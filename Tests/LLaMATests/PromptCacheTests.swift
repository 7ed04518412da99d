import Foundation
import XCTest
@testable import LLaMA
import Tensor

/// The server's prompt cache: a prompt that starts from cached rows gets the same bits (KV rows
/// and logits) as the same prompt computed from scratch, on the integer decoding path that the
/// server's guarantee "alone equals batched" rests on; keys, budget and replacement behave.
final class PromptCacheTests: XCTestCase {
    static let adapterDir = Fixtures.root.appendingPathComponent("merge/tiny-gqa-a.adapter")

    func model(_ q: Quantization) throws -> LlamaModel {
        try LlamaModel(checkpoint: try SafeTensorsCheckpoint(folder: Fixtures.model("tiny-gqa")), quantization: q, pool: testPool)
    }

    /// The K and V rows 0..<n of `slot`, every layer, as one array.
    func rows(_ c: SlotCache, slot: Int, n: Int) -> [Float] {
        var out: [Float] = []
        for l in 0..<c.k.count {
            // Each head's rows 0..<n (the cache is head-major: rows past n hold other data).
            let base = slot * c.capacity * c.kvDim
            for g in 0..<c.nKV {
                out += Array(UnsafeBufferPointer(start: c.k[l].data + base + g * c.layout.head, count: n * c.hd))
                out += Array(UnsafeBufferPointer(start: c.v[l].data + base + g * c.layout.head, count: n * c.hd))
            }
        }
        return out
    }

    /// Bit-for-bit equality, reported as a count and the largest difference.
    func assertSameBits(_ a: [Float], _ b: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, what, file: file, line: line)
        let differ = zip(a, b).filter { $0.bitPattern != $1.bitPattern }
        if !differ.isEmpty {
            let worst = differ.map { abs($0 - $1) }.max() ?? 0
            XCTFail("\(what): \(differ.count) of \(a.count) values differ (largest by \(worst))", file: file, line: line)
        }
    }

    func logitsRow(_ c: SlotCache, _ i: Int, V: Int) -> [Float] {
        Array(UnsafeBufferPointer(start: c.logits.data + i * V, count: V))
    }

    func testCachedStartGivesTheBitsOfAFreshPrompt() throws {
        for q in [Quantization.q8_0, .q4_1] {
            let m = try model(q)
            let V = m.config.vocabSize
            let adapters = AdapterSet(try Adapter.load(Self.adapterDir, model: m.config))
            // 17 shared tokens, then each prompt its own: 24 rows take two integer-GEMV chunks.
            let shared: [Int32] = (0..<17).map { Int32(3 + ($0 * 37) % 500) }
            let first = shared + (0..<9).map { Int32(11 + $0 * 13) }
            let second = shared + (0..<7).map { Int32(400 - $0 * 17) }

            // From scratch: `second` alone in slot 0.
            let fresh = SlotCache(model: m, slots: 2, capacity: 64, maxRows: 64)
            try m.step(items: [SlotItem(slot: 0, tokens: second, adapters: adapters, adapterKey: "a")], cache: fresh, ctx: testCtx)
            let freshLogits = logitsRow(fresh, 0, V: V), freshRows = rows(fresh, slot: 0, n: second.count)

            // `first` computed and kept, then `second` starts from its 17 shared rows.
            let c = SlotCache(model: m, slots: 2, capacity: 64, maxRows: 64)
            let cache = PromptCache(budgetBytes: 1 << 20, layers: m.config.numHiddenLayers, kvDim: m.config.kvDim)
            try m.step(items: [SlotItem(slot: 0, tokens: first, adapters: adapters, adapterKey: "a")], cache: c, ctx: testCtx)
            cache.store(key: "a", tokens: first, from: c, slot: 0)
            XCTAssertEqual(cache.match(key: "b", prompt: second, limit: 100), 0, "another adapter key finds nothing")
            XCTAssertEqual(cache.match(key: "a", prompt: second, limit: 10), 10, "the limit bounds the match")
            let n = cache.restore(key: "a", prompt: second, limit: second.count - 2, into: c, slot: 1)
            XCTAssertEqual(n, shared.count)
            XCTAssertEqual(c.lengths[1], shared.count)
            try m.step(items: [SlotItem(slot: 1, tokens: Array(second[n...]), adapters: adapters, adapterKey: "a")], cache: c, ctx: testCtx)
            assertSameBits(rows(c, slot: 1, n: second.count), freshRows, "\(q): KV rows of a cached start + the rest vs from scratch")
            assertSameBits(logitsRow(c, 0, V: V), freshLogits, "\(q): last-token logits, cached start vs from scratch")

            // The whole prompt but its last token from cache: that token alone is a one-row
            // step, which computes it as decoding does, with the same bits as a prompt row.
            let c1 = SlotCache(model: m, slots: 1, capacity: 64, maxRows: 64)
            XCTAssertEqual(cache.restore(key: "a", prompt: first, limit: first.count - 1, into: c1, slot: 0), first.count - 1)
            try m.step(items: [SlotItem(slot: 0, tokens: [first.last!], adapters: adapters, adapterKey: "a")], cache: c1, ctx: testCtx)
            let c2 = SlotCache(model: m, slots: 1, capacity: 64, maxRows: 64)
            try m.step(items: [SlotItem(slot: 0, tokens: first, adapters: adapters, adapterKey: "a")], cache: c2, ctx: testCtx)
            assertSameBits(logitsRow(c1, 0, V: V), logitsRow(c2, 0, V: V), "\(q): last prompt token as a one-row step")

            // Decoding on from both gives the same greedy tokens, bit-identical logits.
            var a = LogitsProcessing.argmax(fresh.logits.data, V: V), b = LogitsProcessing.argmax(c.logits.data, V: V)
            for _ in 0..<6 {
                XCTAssertEqual(a, b)
                try m.step(items: [SlotItem(slot: 0, tokens: [Int32(a)], adapters: adapters, adapterKey: "a")], cache: fresh, ctx: testCtx)
                try m.step(items: [SlotItem(slot: 1, tokens: [Int32(b)], adapters: adapters, adapterKey: "a")], cache: c, ctx: testCtx)
                assertSameBits(logitsRow(c, 0, V: V), logitsRow(fresh, 0, V: V), "\(q): decoding after a cached start")
                a = LogitsProcessing.argmax(fresh.logits.data, V: V); b = LogitsProcessing.argmax(c.logits.data, V: V)
            }
        }
    }

    /// A step holding two adapters' rows and a weighted mix of both (the mix between them, so
    /// each adapter's product covers its rows and the mix's) gives each item the bits it gets
    /// alone; and rows are placed that way.
    func testMixBesideItsAdaptersGivesEachItemItsBitsAlone() throws {
        let m = try model(.q8_0)
        let V = m.config.vocabSize
        let a = try Adapter.load(Self.adapterDir, model: m.config)
        let b = try Adapter.load(Fixtures.root.appendingPathComponent("merge/tiny-gqa-b.adapter"), model: m.config)
        let sets: [(AdapterSet, String)] = [(AdapterSet(b), "b"), (AdapterSet([(a, 0.7), (b, -1.3)]), "m"),
                                           (AdapterSet(a), "a"), (.none, ""), (AdapterSet(a), "a")]
        let items = sets.enumerated().map { i, s in
            SlotItem(slot: i, tokens: (0..<(2 + i)).map { Int32(7 + 31 * i + 5 * $0) }, adapters: s.0, adapterKey: s.1)
        }
        let order = LlamaModel.rowOrder(items)
        XCTAssertEqual(order.map { items[$0].adapterKey }, ["a", "a", "m", "b", ""], "the mix sits between its adapters")
        let together = SlotCache(model: m, slots: 5, capacity: 32, maxRows: 64)
        try m.step(items: items, cache: together, ctx: testCtx)
        for (i, it) in items.enumerated() {
            let alone = SlotCache(model: m, slots: 5, capacity: 32, maxRows: 64)
            try m.step(items: [it], cache: alone, ctx: testCtx)
            assertSameBits(logitsRow(together, i, V: V), logitsRow(alone, 0, V: V), "item \(i) (\(it.adapterKey)) batched vs alone")
            assertSameBits(rows(together, slot: it.slot, n: it.tokens.count), rows(alone, slot: it.slot, n: it.tokens.count),
                           "item \(i) KV rows")
        }
    }

    /// The engine keeps a finished request's prompt and answer: the next turn, whose prompt
    /// holds both, starts from them, and its greedy answer equals a cold engine's.
    func testEngineReusesAFinishedAnswerForTheNextTurn() throws {
        let m = try model(.q8_0)
        let adapters = AdapterSet(try Adapter.load(Self.adapterDir, model: m.config))
        func run(_ e: ServeEngine, _ prompt: [Int32], tokens: Int) throws -> (ids: [Int32], cached: Int) {
            var s = ServeSampling()
            s.maxTokens = tokens
            s.temperature = 0
            let lock = NSLock()
            nonisolated(unsafe) var ids: [Int32] = []
            let r = ServeRequest(prompt: prompt, adapters: adapters, adapterKey: "a:1", sampling: s) { ev in
                if case let .token(t) = ev { lock.lock(); ids.append(t); lock.unlock() }
            }
            try e.submit(r)
            XCTAssertTrue(e.waitIdle(timeout: 60))
            return (lock.withLock { ids }, r.cachedTokens)
        }
        let warm = ServeEngine(model: m, ctx: testCtx, eosIDs: [], maxBatch: 2, maxContext: 128, promptCacheBytes: 1 << 20)
        let cold = ServeEngine(model: m, ctx: testCtx, eosIDs: [], maxBatch: 2, maxContext: 128, promptCacheBytes: 0)
        warm.start(); cold.start()
        defer { warm.beginShutdown(); cold.beginShutdown() }
        let prompt: [Int32] = (0..<11).map { Int32(9 + 23 * $0) }
        let first = try run(warm, prompt, tokens: 8)
        XCTAssertEqual(first.ids.count, 8)
        XCTAssertEqual(first.cached, 0)
        // The next turn: the prompt, the answer, then new tokens. The slot held all but the
        // last answer token.
        let next = prompt + first.ids + [44, 55, 66]
        let second = try run(warm, next, tokens: 8)
        XCTAssertEqual(second.cached, prompt.count + first.ids.count - 1)
        XCTAssertEqual(second.ids, try run(cold, next, tokens: 8).ids, "answer from a reused turn vs from scratch")
        XCTAssertEqual(warm.snapshot.promptCacheHits, 1)
    }

    func testBudgetReplacementAndRecency() throws {
        let m = try model(.q8_0)
        let rowBytes = 2 * m.config.numHiddenLayers * m.config.kvDim * 4
        let c = SlotCache(model: m, slots: 1, capacity: 64, maxRows: 64)
        let p: [Int32] = (0..<20).map { Int32(5 + $0) }
        try m.step(items: [SlotItem(slot: 0, tokens: p, adapters: .none, adapterKey: "")], cache: c, ctx: testCtx)
        // Room for 30 rows: a 10-token start, then the whole 20 (which covers it: one entry).
        let cache = PromptCache(budgetBytes: 30 * rowBytes, layers: m.config.numHiddenLayers, kvDim: m.config.kvDim)
        cache.store(key: "", tokens: Array(p[0..<10]), from: c, slot: 0)
        XCTAssertEqual(cache.bytes, 10 * rowBytes)
        cache.store(key: "", tokens: p, from: c, slot: 0)
        XCTAssertEqual(cache.entryCount, 1, "the longer prompt replaces its own start")
        XCTAssertEqual(cache.bytes, 20 * rowBytes)
        cache.store(key: "", tokens: Array(p[0..<15]), from: c, slot: 0)
        XCTAssertEqual(cache.entryCount, 1, "a start of a kept prompt adds nothing")
        // Another key's 15 rows do not fit beside 20: the least recently used leaves.
        cache.store(key: "x", tokens: Array(p[0..<15]), from: c, slot: 0)
        XCTAssertEqual(cache.entryCount, 1)
        XCTAssertEqual(cache.bytes, 15 * rowBytes)
        XCTAssertEqual(cache.match(key: "", prompt: p, limit: 100), 0)
        XCTAssertEqual(cache.match(key: "x", prompt: p, limit: 100), 15)
        // Larger than the whole budget: not kept.
        let big = PromptCache(budgetBytes: 5 * rowBytes, layers: m.config.numHiddenLayers, kvDim: m.config.kvDim)
        big.store(key: "", tokens: p, from: c, slot: 0)
        XCTAssertEqual(big.entryCount, 0)
        XCTAssertEqual(big.bytes, 0)
    }
}
