import Foundation
import Tensor

/// Per-request decoding settings of the server (OpenAI's names). temperature 0 is greedy.
public struct ServeSampling: Sendable, Equatable {
    public var maxTokens = 16
    public var temperature: Float = 1
    public var topP: Float = 1
    public var topK = 0
    public var seed: UInt64 = 0
    /// Added to a token's logit before sampling (OpenAI's logit_bias; -100 bans a token).
    public var logitBias: [Int32: Float] = [:]
    public init() {}

    public func validate() throws {
        func bad(_ k: String, _ v: String, _ e: String) -> GenerationError { .badOption(name: k, value: v, expected: e) }
        if maxTokens < 1 { throw bad("max_tokens", "\(maxTokens)", "at least 1") }
        if !(temperature >= 0 && temperature <= 100) { throw bad("temperature", "\(temperature)", "a number in [0, 100]") }
        if !(topP > 0 && topP <= 1) { throw bad("top_p", "\(topP)", "a number in (0, 1]") }
        if topK < 0 { throw bad("top_k", "\(topK)", "0 (off) or more") }
    }
}

public enum FinishReason: String, Sendable { case stop, length }

/// What a request hears from the engine, on the engine's thread (keep handlers short).
public enum ServeEvent: Sendable {
    case token(Int32)
    case finished(FinishReason)
    case failed(String)
}

/// One generation request. `adapters` are fixed at submission: unloading an adapter later
/// does not touch a request that already holds it.
public final class ServeRequest: @unchecked Sendable {
    public let prompt: [Int32]
    public let adapters: AdapterSet
    public let adapterKey: String
    public let sampling: ServeSampling
    let onEvent: @Sendable (ServeEvent) -> Void
    private let lock = NSLock()
    private var _cancelled = false
    private var _cachedTokens = 0

    public init(prompt: [Int32], adapters: AdapterSet, adapterKey: String, sampling: ServeSampling,
                onEvent: @escaping @Sendable (ServeEvent) -> Void) {
        self.prompt = prompt; self.adapters = adapters; self.adapterKey = adapterKey
        self.sampling = sampling; self.onEvent = onEvent
    }

    /// The client went away or a stop string matched: the engine frees the slot before its next step.
    public func cancel() { lock.lock(); _cancelled = true; lock.unlock() }
    public var isCancelled: Bool { lock.lock(); defer { lock.unlock() }; return _cancelled }
    /// Prompt tokens whose KV rows came from the prompt cache (set before the first event).
    public internal(set) var cachedTokens: Int {
        get { lock.lock(); defer { lock.unlock() }; return _cachedTokens }
        set { lock.lock(); _cachedTokens = newValue; lock.unlock() }
    }
}

public enum ServeEngineError: Error, CustomStringConvertible, Equatable {
    case queueFull(limit: Int)
    case shuttingDown
    case tooLong(tokens: Int, limit: Int)
    public var description: String {
        switch self {
        case let .queueFull(limit): return "the server is busy: \(limit) requests are already waiting; retry later"
        case .shuttingDown: return "the server is shutting down"
        case let .tooLong(tokens, limit): return "prompt plus max_tokens is \(tokens) tokens; the context limit is \(limit)"
        }
    }
}

/// Counters for /metrics, read under the engine's lock.
public struct ServeStats: Sendable {
    public var requests = 0, promptTokens = 0, generatedTokens = 0, steps = 0, rowsStepped = 0
    /// Wall time inside `step(items:)`, and the steps that only decoded (one row per request)
    /// with their time: the engine's own cost per step, apart from HTTP and sampling.
    public var stepSeconds = 0.0, decodeSteps = 0, decodeStepSeconds = 0.0
    public var active = 0, queued = 0, lastBatch = 0
    /// Requests that started from cached prompt rows, and the prompt tokens those rows spared.
    public var promptCacheHits = 0, cachedPromptTokens = 0
    public var promptCacheBytes = 0, promptCacheEntries = 0
}

/// Continuous batching over one model: up to `maxBatch` requests hold a slot each and advance
/// together, one `step(items:)` per iteration; waiting requests take free slots between steps,
/// their prompts prefilled in chunks in the same steps that others decode. Runs on its own
/// thread; `submit` is safe from any thread.
public final class ServeEngine: @unchecked Sendable {
    public let model: LlamaModel
    public let ctx: ExecutionContext
    public let eosIDs: Set<Int32>
    public let maxBatch: Int
    public let maxContext: Int
    public let maxQueue: Int
    /// Prompt tokens fed per step over all prefilling requests (bounds one step's latency).
    public let prefillChunk: Int
    /// Bytes of prompt KV rows kept for reuse (`PromptCache`); 0 turns the cache off.
    public let promptCacheBytes: Int
    /// Sleep after each step (tests: makes a tiny model slow enough to interrupt). 0 in use.
    public var stepDelay: TimeInterval = 0

    private let cond = NSCondition()
    private var queue: [ServeRequest] = []
    private var stopping = false
    private var cutting = false
    private var stopped = false
    private var stats = ServeStats()
    private var thread: Thread?

    private struct Running {
        let req: ServeRequest
        let slot: Int
        var fed = 0                 // prompt tokens already in the cache
        var generated = 0
        var last: Int32 = 0
        var rng: RNG
        var fresh = true            // admitted, not yet looked up in the prompt cache
        var answer: [Int32] = []    // sampled tokens (all but the last are in the slot)
        /// The tokens whose rows the slot holds: the prompt, then the answer fed back.
        func held(_ n: Int) -> [Int32] { Array((req.prompt + answer).prefix(n)) }
    }

    public init(model: LlamaModel, ctx: ExecutionContext, eosIDs: Set<Int32>, maxBatch: Int = 8,
                maxContext: Int, maxQueue: Int = 64, prefillChunk: Int = 256, promptCacheBytes: Int = 256 << 20) {
        self.model = model; self.ctx = ctx; self.eosIDs = eosIDs
        self.maxBatch = maxBatch; self.maxContext = maxContext; self.maxQueue = maxQueue
        self.prefillChunk = max(1, prefillChunk)
        self.promptCacheBytes = max(0, promptCacheBytes)
        _ = model.decodeHead   // quantize the head now, not in the first request's time
    }

    public func start() {
        let t = Thread { [self] in loop() }
        t.name = "lora-serve-engine"
        t.stackSize = 8 << 20
        thread = t
        t.start()
    }

    /// Queues `r`; throws when the queue is full, the server is stopping or it cannot fit.
    public func submit(_ r: ServeRequest) throws {
        let need = r.prompt.count + r.sampling.maxTokens
        if need > maxContext { throw ServeEngineError.tooLong(tokens: need, limit: maxContext) }
        cond.lock(); defer { cond.unlock() }
        if stopping { throw ServeEngineError.shuttingDown }
        if queue.count >= maxQueue { throw ServeEngineError.queueFull(limit: maxQueue) }
        queue.append(r)
        stats.requests += 1
        stats.promptTokens += r.prompt.count
        stats.queued = queue.count
        cond.signal()
    }

    public var snapshot: ServeStats { cond.lock(); defer { cond.unlock() }; return stats }

    /// Stops taking requests; those queued or running finish. `waitIdle` returns when none is left.
    public func beginShutdown() { cond.lock(); stopping = true; cond.broadcast(); cond.unlock() }

    /// Ends every queued and running request at the next step with what it has so far
    /// (`finished(.length)`): a drain that ran out of time still closes each answer properly.
    public func cutShort() { cond.lock(); stopping = true; cutting = true; cond.broadcast(); cond.unlock() }

    /// Waits until no request is queued or running, at most `timeout` seconds; true when idle.
    public func waitIdle(timeout: TimeInterval) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        cond.lock(); defer { cond.unlock() }
        while stats.active + queue.count > 0 {
            if !cond.wait(until: deadline) { return false }
        }
        return true
    }

    private func loop() {
        let cache = SlotCache(model: model, slots: maxBatch, capacity: maxContext, maxRows: maxBatch + prefillChunk)
        let prompts = promptCacheBytes > 0
            ? PromptCache(budgetBytes: promptCacheBytes, layers: model.config.numHiddenLayers, kvDim: model.config.kvDim) : nil
        var running: [Running] = []
        var freeSlots = Array((0..<maxBatch).reversed())
        while true {
            // Admit waiting requests into free slots; sleep when there is nothing to do (the
            // last step's LoRA terms go first: they hold its adapters, maybe unloaded since).
            if running.isEmpty { cache.lastTerms = nil }
            cond.lock()
            while running.isEmpty && queue.isEmpty { cond.wait() }
            while !freeSlots.isEmpty && !queue.isEmpty {
                let r = queue.removeFirst()
                let slot = freeSlots.removeLast()
                cache.reset(slot: slot)
                running.append(Running(req: r, slot: slot, rng: RNG(seed: r.sampling.seed)))
            }
            let cut = cutting
            if cut {
                for r in queue { r.onEvent(.finished(.length)) }
                queue.removeAll()
            }
            stats.queued = queue.count
            stats.active = running.count
            cond.unlock()
            if cut {
                for r in running { r.req.onEvent(.finished(.length)); freeSlots.append(r.slot) }
                running.removeAll()
            }

            // Cancelled requests leave before the step (what their slot holds is kept).
            running.removeAll { r in
                if r.req.isCancelled {
                    prompts?.store(key: r.req.adapterKey, tokens: r.held(cache.lengths[r.slot]), from: cache, slot: r.slot)
                    freeSlots.append(r.slot)
                    return true
                }
                return false
            }
            if running.isEmpty { publish(running); continue }

            // New requests start from the longest cached start of their prompt (all but the
            // last token at most: its logits are the first answer). Every row's bits are those
            // it gets computed from scratch (PromptCacheTests).
            if let prompts {
                var hits = 0, spared = 0
                for i in running.indices where running[i].fresh {
                    running[i].fresh = false
                    let r = running[i].req
                    let n = prompts.restore(key: r.adapterKey, prompt: r.prompt, limit: r.prompt.count - 1, into: cache, slot: running[i].slot)
                    if n > 0 { running[i].fed = n; r.cachedTokens = n; hits += 1; spared += n }
                }
                if hits > 0 {
                    cond.lock(); stats.promptCacheHits += hits; stats.cachedPromptTokens += spared; cond.unlock()
                }
            }

            // Decoding requests take one row each; prefilling ones share the rest in order.
            var budget = cache.maxRows - running.filter { $0.fed == $0.req.prompt.count }.count
            var items: [(run: Int, item: SlotItem)] = []
            for (i, r) in running.enumerated() {
                if r.fed < r.req.prompt.count {
                    let n = min(r.req.prompt.count - r.fed, budget, prefillChunk)
                    if n <= 0 { continue }
                    budget -= n
                    items.append((i, SlotItem(slot: r.slot, tokens: Array(r.req.prompt[r.fed..<(r.fed + n)]),
                                              adapters: r.req.adapters, adapterKey: r.req.adapterKey)))
                } else {
                    items.append((i, SlotItem(slot: r.slot, tokens: [r.last], adapters: r.req.adapters, adapterKey: r.req.adapterKey)))
                }
            }
            // A fixed order for the step (which places rows by adapter itself).
            items.sort { $0.item.adapterKey < $1.item.adapterKey || ($0.item.adapterKey == $1.item.adapterKey && $0.run < $1.run) }
            let t0 = DispatchTime.now().uptimeNanoseconds
            do {
                try model.step(items: items.map(\.item), cache: cache, ctx: ctx)
            } catch {
                for r in running { r.req.onEvent(.failed("\(error)")); freeSlots.append(r.slot) }
                running.removeAll()
                publish(running)
                continue
            }
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            var done = Set<Int>()
            var newTokens = 0, rows = 0
            let V = model.config.vocabSize
            for (row, entry) in items.enumerated() {
                rows += entry.item.tokens.count
                var r = running[entry.run]
                let wasPrefill = r.fed < r.req.prompt.count
                if wasPrefill {
                    r.fed += entry.item.tokens.count
                    if r.fed < r.req.prompt.count { running[entry.run] = r; continue }
                    // The whole prompt is in the slot now (the sampled token is not yet).
                    prompts?.store(key: r.req.adapterKey, tokens: r.req.prompt, from: cache, slot: r.slot)
                }
                let scores = cache.logits.data + row * V
                let id = Int32(pick(scores, V: V, r.req.sampling, rng: &r.rng))
                if eosIDs.contains(id) {
                    r.req.onEvent(.finished(.stop)); done.insert(entry.run)
                } else {
                    r.generated += 1; newTokens += 1
                    r.last = id
                    if prompts != nil { r.answer.append(id) }
                    r.req.onEvent(.token(id))
                    if r.generated >= r.req.sampling.maxTokens || cache.lengths[r.slot] + 1 > cache.capacity {
                        r.req.onEvent(.finished(.length)); done.insert(entry.run)
                    }
                }
                running[entry.run] = r
            }
            for i in done {
                // A finished request's prompt and answer stay reusable: the next turn of a chat
                // starts with them (decoded rows have the bits a prompt chunk gives them).
                let r = running[i]
                prompts?.store(key: r.req.adapterKey, tokens: r.held(cache.lengths[r.slot]), from: cache, slot: r.slot)
                freeSlots.append(r.slot)
            }
            running = running.enumerated().filter { !done.contains($0.offset) }.map(\.element)
            cond.lock()
            stats.steps += 1
            stats.rowsStepped += rows
            stats.stepSeconds += seconds
            if rows == items.count { stats.decodeSteps += 1; stats.decodeStepSeconds += seconds }
            stats.lastBatch = items.count
            stats.generatedTokens += newTokens
            stats.promptCacheBytes = prompts?.bytes ?? 0
            stats.promptCacheEntries = prompts?.entryCount ?? 0
            cond.unlock()
            publish(running)
            if stepDelay > 0 { Thread.sleep(forTimeInterval: stepDelay) }
        }
    }

    private func publish(_ running: [Running]) {
        cond.lock()
        stats.active = running.count
        stats.queued = queue.count
        cond.broadcast()
        cond.unlock()
    }

    /// Greedy at temperature 0, else temperature, top-k, top-p and a draw (Hugging Face's order).
    private func pick(_ scores: UnsafeMutablePointer<Float>, V: Int, _ s: ServeSampling, rng: inout RNG) -> Int {
        for (id, b) in s.logitBias where Int(id) < V { scores[Int(id)] += b }
        if s.temperature == 0 { return ctx.backend.argmax(scores, count: V) }
        LogitsProcessing.temperature(scores, V: V, s.temperature)
        LogitsProcessing.topK(scores, V: V, s.topK)
        LogitsProcessing.topP(scores, V: V, s.topP)
        return LogitsProcessing.sample(scores, V: V, rng: &rng)
    }
}
