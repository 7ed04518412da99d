import Foundation
import XCTest
@testable import LLaMA
import Tensor

/// Timing of `lora serve`'s decoding step alone: one row (one client) against eight rows of four
/// models (scripts/load_test.py's load), on a real GGUF and real adapters. Runs only with
/// LORA_BENCH=1 and LORA_BENCH_GGUF (a .gguf file) and LORA_BENCH_ADAPTERS (PEFT folders,
/// comma-separated, at least two) set; prints ms per step and a per-op profile of each.
final class ServeStepBenchmark: XCTestCase {
    func testStepOneRowAgainstEight() throws {
        let env = ProcessInfo.processInfo.environment
        guard env["LORA_BENCH"] == "1", let gguf = env["LORA_BENCH_GGUF"], let dirs = env["LORA_BENCH_ADAPTERS"] else {
            throw XCTSkip("set LORA_BENCH=1, LORA_BENCH_GGUF and LORA_BENCH_ADAPTERS")
        }
        let ctx = try ExecutionContext.cpu(threads: 0, environment: env)
        print("\(KernelFamily.cpuDescription), \(ctx.backend.name)")
        // Both layouts, alternating: .training keeps the file's plain blocks, .decoding regroups
        // them (GroupedBlockFormat).
        let purposes: [LoadPurpose] = env["LORA_BENCH_LAYOUT"] == "grouped" ? [.decoding] : env["LORA_BENCH_LAYOUT"] == "plain" ? [.training] : [.training, .decoding]
        let rowCounts = (env["LORA_BENCH_ROWS"] ?? "1,8").split(separator: ",").compactMap { Int($0) }
        for round in 0..<2 { for purpose in purposes {
        let loaded = try LoadedModel(path: gguf, quantization: .stored, pool: ctx.pool, purpose: purpose)
        let m = loaded.model
        print("round \(round), \(purpose): \(m.blocks[0].q.weight.format.name) weights, \(m.decodeHead.format.name) head")
        let adapters = try dirs.split(separator: ",").map { try Adapter.load(URL(fileURLWithPath: String($0)), model: m.config) }
        XCTAssertGreaterThanOrEqual(adapters.count, 2)
        // load_test.py's four models: three adapters (the first loaded twice when two are given)
        // and a 0.5/0.5 mix of the first two.
        let third = adapters.count > 2 ? adapters[2] : try Adapter.load(URL(fileURLWithPath: String(dirs.split(separator: ",")[0])), model: m.config)
        var models: [(String, AdapterSet)] = [("a", AdapterSet(adapters[0])), ("b", AdapterSet(adapters[1])), ("c", AdapterSet(third)),
                                              ("mix", AdapterSet([(adapters[0], 0.5), (adapters[1], 0.5)]))]
        // LORA_BENCH_BASE=1: every row on the base model alone (what the adapters add, by difference).
        if env["LORA_BENCH_BASE"] == "1" { models = models.map { ($0.0, AdapterSet()) } }
        if env["LORA_BENCH_ONE"] == "1" { models = models.map { _ in models[0] } }
        let prompt = loaded.tokenizer.encode("Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nName three primary colours.\n\n### Response:\n", addBOS: true)
        let steps = Int(env["LORA_BENCH_STEPS"] ?? "") ?? 48
        for rows in rowCounts {
            let cache = SlotCache(model: m, slots: 8, capacity: prompt.count + steps + 8, maxRows: 64)
            let items = (0..<rows).map { i in
                SlotItem(slot: i, tokens: prompt, adapters: models[i % 4].1, adapterKey: models[i % 4].0)
            }
            for it in items { try m.step(items: [it], cache: cache, ctx: ctx) }
            var cur = items.map { SlotItem(slot: $0.slot, tokens: [Int32(100 + $0.slot)], adapters: $0.adapters, adapterKey: $0.adapterKey) }
            try m.step(items: cur, cache: cache, ctx: ctx)  // warm
            // Timed without a profile (a profiled step runs the base products and the LoRA
            // terms as separate calls, to time them apart), then a profiled run for the shares.
            let half = steps / 2
            var each: [Double] = []   // per step: the median and the fastest resist a noisy neighbour
            let t0 = DispatchTime.now().uptimeNanoseconds
            // LORA_BENCH_PREFILL=n: every step, slot 0 starts over with an n-token prompt (a
            // request joining with what the prompt cache left of its prompt) beside the others' tokens.
            let prefill = Int(env["LORA_BENCH_PREFILL"] ?? "") ?? 0
            for s in 0..<half {
                for i in cur.indices { cur[i].tokens = [Int32(200 + 7 * s + i)] }
                if prefill > 0 {
                    cache.reset(slot: 0)
                    cur[0].tokens = Array(prompt.prefix(prefill))
                }
                let ts = DispatchTime.now().uptimeNanoseconds
                try m.step(items: cur, cache: cache, ctx: ctx)
                each.append(Double(DispatchTime.now().uptimeNanoseconds - ts) / 1e6)
            }
            let ms = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6 / Double(half)
            each.sort()
            let prof = OpProfile()
            ctx.profile = prof
            let t1 = DispatchTime.now().uptimeNanoseconds
            for s in half..<steps {
                for i in cur.indices { cur[i].tokens = [Int32(200 + 7 * s + i)] }
                if prefill > 0 {
                    cache.reset(slot: 0)
                    cur[0].tokens = Array(prompt.prefix(prefill))
                }
                try m.step(items: cur, cache: cache, ctx: ctx)
            }
            let msProfiled = Double(DispatchTime.now().uptimeNanoseconds - t1) / 1e6 / Double(steps - half)
            ctx.profile = nil
            print(String(format: "rows %d: %.2f ms per step, %.1f tokens/s (median %.2f, fastest %.2f ms; profiled, unfused: %.2f ms)",
                         rows, ms, Double(rows) * 1000 / ms, each[each.count / 2], each[0], msProfiled))
            print(prof.report.split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
        }
        } }
    }
}
