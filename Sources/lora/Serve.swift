import ArgumentParser
import Dispatch
import Foundation
import Hummingbird
import LLaMA
import Tensor

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve the base model and many adapters over an OpenAI-compatible HTTP API, with a web page.",
        discussion: """
            Routes: GET / (page), GET /health, GET /metrics, GET /v1/models, POST /v1/completions, \
            POST /v1/chat/completions, POST /v1/adapters, DELETE /v1/adapters/NAME. A request's "model" \
            picks the adapter (the base model's name for none). Concurrent requests decode together.
            """)

    @OptionGroup var model: ModelOptions

    @Option(name: .customLong("adapter"), help: "NAME=PATH: a PEFT adapter folder or a GGUF LoRA file (llama.cpp's) served as model NAME (repeatable).")
    var adapters: [String] = []

    @Option(name: .customLong("adapters-dir"), help: "Folder that POST /v1/adapters may load adapters (PEFT folders, .gguf LoRA files) from (nothing outside it).")
    var adaptersDir: String?

    @Option(help: "Address to bind (loopback unless told otherwise).")
    var host = "127.0.0.1"

    @Option(help: "TCP port (0 = any free port; the chosen one is printed).")
    var port = 8080

    @Option(name: .customLong("api-key"), help: "Require 'Authorization: Bearer KEY' on every route but /health (and the static page).")
    var apiKey: String?

    @Option(name: .customLong("max-batch"), help: "Requests decoded together (slots).")
    var maxBatch = 8

    @Option(name: .customLong("max-context"), help: "Most tokens per request, prompt plus answer (default: the model's max_position_embeddings, at most 2048).")
    var maxContext: Int?

    @Option(name: .customLong("max-queue"), help: "Requests that may wait for a slot before new ones get 429.")
    var maxQueue = 64

    @Option(name: .customLong("prompt-cache-mb"), help: "MiB of prompt KV rows kept for reuse: a prompt that starts like an earlier one with the same model skips computing that start (0 = off).")
    var promptCacheMB = 256

    @Option(name: .customLong("max-body-bytes"), help: "Largest request body (413 past it).")
    var maxBodyBytes = 1 << 20

    @Option(name: .customLong("chat-template"), help: "Chat template NAME or PATH for /v1/chat/completions (default: the model's own).")
    var chatTemplate: String?

    @Option(name: .customLong("model-name"), help: "The base model's name in /v1/models (default: the --base-model file or folder name).")
    var modelName: String?

    @Option(name: .customLong("drain-timeout"), help: "Seconds SIGTERM waits for requests in flight before exiting.")
    var drainTimeout = 30.0

    @Option(name: .customLong("test-step-delay-ms"), help: .hidden)
    var testStepDelayMs = 0

    @OptionGroup var compute: ComputeOptions

    func validate() throws {
        if maxBatch < 1 || maxBatch > 256 { throw ValidationError("--max-batch \(maxBatch): expected 1 to 256") }
        if let m = maxContext, m < 2 { throw ValidationError("--max-context \(m): expected at least 2") }
        if maxQueue < 0 { throw ValidationError("--max-queue \(maxQueue): expected 0 or more") }
        if promptCacheMB < 0 || promptCacheMB > 1 << 20 { throw ValidationError("--prompt-cache-mb \(promptCacheMB): expected 0 (off) to \(1 << 20)") }
        if maxBodyBytes < 1024 { throw ValidationError("--max-body-bytes \(maxBodyBytes): expected at least 1024") }
        if port < 0 || port > 65535 { throw ValidationError("--port \(port): expected 0 to 65535") }
        if !(drainTimeout >= 0) { throw ValidationError("--drain-timeout \(drainTimeout): expected seconds >= 0") }
        for a in adapters {
            guard let eq = a.firstIndex(of: "="), eq != a.startIndex, a.index(after: eq) != a.endIndex else {
                throw ValidationError("--adapter '\(a)': expected NAME=PATH")
            }
        }
    }

    func run() throws {
        try runReportingErrors {
            let (ctx, deviceLine) = try compute.context()
            let loaded = try model.load(default: .none, ctx: ctx, purpose: .decoding)
            deviceLine.print(quiet: false)
            let cfg = loaded.model.config
            let context = min(maxContext ?? min(cfg.maxPositionEmbeddings, 2048), cfg.maxPositionEmbeddings)
            var base = modelName ?? URL(fileURLWithPath: model.baseModel).lastPathComponent
            if modelName == nil, base.lowercased().hasSuffix(".gguf") { base = String(base.dropLast(5)) }
            let registry = AdapterRegistry(baseName: base, adaptersDir: adaptersDir, model: cfg)
            for a in adapters {
                let eq = a.firstIndex(of: "=")!
                let name = String(a[..<eq]), dir = String(a[a.index(after: eq)...])
                do { try registry.add(name: name, adapterAt: URL(fileURLWithPath: dir)) } catch let e as ServeError {
                    throw ValidationError("--adapter \(a): \(e.message)")
                }
            }
            let template = Result { try loaded.chatTemplate(override: chatTemplate) }
            if chatTemplate != nil, case let .failure(e) = template { throw e }
            let engine = ServeEngine(model: loaded.model, ctx: ctx, eosIDs: loaded.eosIDs, maxBatch: maxBatch,
                                     maxContext: context, maxQueue: maxQueue, promptCacheBytes: promptCacheMB << 20)
            engine.stepDelay = Double(testStepDelayMs) / 1000
            engine.start()
            let routes = ServeRoutes(engine: engine, registry: registry, tokenizer: loaded.tokenizer, apiKey: apiKey,
                                     maxBodyBytes: maxBodyBytes, maxContext: context,
                                     defaultChatMaxTokens: min(512, context - 1), chatTemplate: template)
            let host = self.host, port = self.port, drain = drainTimeout
            note("lora serve: \(base) (\(loaded.model.quantization == .none ? "f32" : loaded.model.quantization.rawValue) weights), \(registry.list().count) adapters, batch \(maxBatch), context \(context)")
            // SIGTERM: Hummingbird stops accepting and lets requests in flight finish; this
            // watchdog bounds that wait.
            signal(SIGTERM, SIG_IGN)
            let term = DispatchSource.makeSignalSource(signal: SIGTERM, queue: .global())
            term.setEventHandler {
                routes.beginDrain()
                engine.beginShutdown()
                note("lora serve: SIGTERM, draining (at most \(drain) s)")
                DispatchQueue.global().asyncAfter(deadline: .now() + drain) {
                    // Out of time: end the answers in flight (each stream gets its last chunk and
                    // [DONE]), give the writes a moment, then go.
                    let left = engine.snapshot
                    note("lora serve: drain timeout, ending \(left.active + left.queued) requests and exiting")
                    engine.cutShort()
                    _ = engine.waitIdle(timeout: 0.5)
                    Thread.sleep(forTimeInterval: 0.2)
                    Foundation.exit(0)
                }
            }
            term.resume()
            let done = DispatchSemaphore(value: 0)
            nonisolated(unsafe) var failure: Error? = nil
            Task {
                do {
                    let app = Application(
                        responder: CallbackResponder<BasicRequestContext> { req, _ in await routes.respond(req) },
                        configuration: .init(address: .hostname(host, port: port), serverName: "lora"),
                        onServerRunning: { ch in
                            note("lora serve: listening on http://\(host):\(ch.localAddress?.port ?? port)")
                        })
                    try await app.runService()
                } catch { failure = error }
                done.signal()
            }
            done.wait()
            if let failure { throw failure }
            _ = engine.waitIdle(timeout: drain)
            note("lora serve: stopped")
        }
    }
}
