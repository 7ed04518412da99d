import Foundation
import Hummingbird
import LLaMA

/// The routes of `lora serve`: OpenAI's completions, chat, models; adapter management; the
/// page, health and metrics. Generation goes through `ServeEngine`, which batches requests.
final class ServeRoutes: @unchecked Sendable {
    let engine: ServeEngine
    let registry: AdapterRegistry
    let tokenizer: Tokenizer
    let apiKey: String?
    let maxBodyBytes: Int
    let maxContext: Int
    let defaultChatMaxTokens: Int
    let chatTemplate: Result<ChatTemplate, Error>
    let started = Int(Date().timeIntervalSince1970)
    private let lock = NSLock()
    private var perModel: [String: Int] = [:]
    private var perStatus: [Int: Int] = [:]
    private var draining = false

    init(engine: ServeEngine, registry: AdapterRegistry, tokenizer: Tokenizer, apiKey: String?, maxBodyBytes: Int,
         maxContext: Int, defaultChatMaxTokens: Int, chatTemplate: Result<ChatTemplate, Error>) {
        self.engine = engine; self.registry = registry; self.tokenizer = tokenizer; self.apiKey = apiKey
        self.maxBodyBytes = maxBodyBytes; self.maxContext = maxContext
        self.defaultChatMaxTokens = defaultChatMaxTokens; self.chatTemplate = chatTemplate
    }

    func beginDrain() { lock.withLock { draining = true } }

    // MARK: dispatch

    func respond(_ request: Request) async -> Response {
        let r: Response
        do { r = try await route(request) } catch let e as ServeError {
            r = json(e.json, status: e.status)
        } catch {
            r = json(ServeError(status: 500, type: "server_error", message: "\(error)", param: nil, code: nil).json, status: 500)
        }
        lock.withLock { perStatus[r.status.code, default: 0] += 1 }
        return r
    }

    private func route(_ request: Request) async throws -> Response {
        let path = request.uri.path
        let method = request.method
        if path == "/health" && method == .get {
            return json(["status": "ok"], status: 200)
        }
        // The page is static and holds nothing secret; its own API calls carry the key.
        if path == "/" && method == .get { return page() }
        try authorize(request)
        switch (method, path) {
        case (.get, "/v1/models"): return models()
        case (.get, "/metrics"): return metrics()
        case (.post, "/v1/completions"): return try await generate(request, chat: false)
        case (.post, "/v1/chat/completions"): return try await generate(request, chat: true)
        case (.post, "/v1/adapters"): return try await loadAdapter(request)
        default:
            if method == .delete, path.hasPrefix("/v1/adapters/") {
                let name = String(path.dropFirst("/v1/adapters/".count)).removingPercentEncoding ?? ""
                try registry.remove(name)
                return json(["id": name, "object": "model", "deleted": true], status: 200)
            }
            let known = ["/v1/models", "/metrics", "/v1/completions", "/v1/chat/completions", "/v1/adapters", "/health", "/"]
            if known.contains(path) || path.hasPrefix("/v1/adapters/") {
                throw ServeError(status: 405, type: "invalid_request_error", message: "\(method.rawValue) is not allowed on \(path)", param: nil, code: "method_not_allowed")
            }
            throw ServeError.notFound("no route \(method.rawValue) \(path)", code: "not_found")
        }
    }

    private func authorize(_ request: Request) throws {
        guard let key = apiKey else { return }
        let given = request.headers[.authorization] ?? ""
        let expected = "Bearer " + key
        // Length and every byte compared, so timing says little about the key.
        var diff = given.utf8.count ^ expected.utf8.count
        for (a, b) in zip(given.utf8, expected.utf8) { diff |= Int(a ^ b) }
        if diff != 0 {
            throw ServeError(status: 401, type: "invalid_request_error",
                             message: given.isEmpty ? "missing API key: send 'Authorization: Bearer KEY'" : "incorrect API key",
                             param: nil, code: "invalid_api_key")
        }
    }

    /// The body, refused with 413 past --max-body-bytes (by Content-Length or as it streams in).
    private func body(_ request: Request) async throws -> [UInt8] {
        let tooLarge = ServeError(status: 413, type: "invalid_request_error",
                                  message: "the request body is larger than the server's limit of \(maxBodyBytes) bytes",
                                  param: nil, code: "request_too_large")
        if let cl = request.headers[.contentLength].flatMap(Int.init), cl > maxBodyBytes { throw tooLarge }
        var out: [UInt8] = []
        for try await buf in request.body {
            if out.count + buf.readableBytes > maxBodyBytes { throw tooLarge }
            out += buf.getBytes(at: buf.readerIndex, length: buf.readableBytes) ?? []
        }
        return out
    }

    // MARK: models and adapters

    private func models() -> Response {
        var data: [[String: Any]] = [["id": registry.baseName, "object": "model", "created": started, "owned_by": "lora"]]
        for e in registry.list() {
            var d: [String: Any] = ["id": e.id, "object": "model", "created": e.created, "owned_by": "lora", "parent": registry.baseName]
            if let r = e.root { d["root"] = r }
            if let m = e.mix { d["adapters"] = m }
            data.append(d)
        }
        return json(["object": "list", "data": data], status: 200)
    }

    private func loadAdapter(_ request: Request) async throws -> Response {
        let bytes = try await body(request)
        guard let o = (try? JSONSerialization.jsonObject(with: Data(bytes))) as? [String: Any] else {
            throw ServeError.badRequest("the body must be a JSON object", code: "invalid_json")
        }
        guard let name = o["name"] as? String else { throw ServeError.badRequest("'name' is required: a string", param: "name") }
        if let mix = o["adapters"] {
            guard let d = mix as? [String: Any] else { throw ServeError.badRequest("'adapters' must map adapter names to weights", param: "adapters") }
            var w: [String: Float] = [:]
            for (k, v) in d {
                guard let n = v as? NSNumber, !isJSONBool(v) else { throw ServeError.badRequest("weight of '\(k)' must be a number", param: "adapters") }
                w[k] = n.floatValue
            }
            try registry.addMix(name: name, weights: w)
        } else {
            try AdapterRegistry.checkName(name)
            var rel = (o["path"] as? String) ?? name
            let dir: URL
            do { dir = try registry.resolveInside(rel) } catch let e as ServeError where e.status == 404 && o["path"] == nil {
                // No folder named like the adapter: a GGUF LoRA file of that name, if there is one.
                rel = name + ".gguf"
                do { dir = try registry.resolveInside(rel) } catch let e2 as ServeError where e2.status == 404 { throw e }
            }
            do { try registry.add(name: name, adapterAt: dir) } catch let e as ServeError { throw e } catch {
                throw ServeError.badRequest("cannot load adapter '\(rel)': \(fileErrorDescription(error) ?? "\(error)")", param: "path", code: "bad_adapter")
            }
        }
        return json(["id": name, "object": "model", "loaded": true], status: 200)
    }

    // MARK: generation

    private func generate(_ request: Request, chat: Bool) async throws -> Response {
        let bytes = try await body(request)
        var g = try GenerationRequest.parse(bytes, chat: chat)
        let (set, key) = try registry.resolve(g.model)
        var stops = g.stop
        var ids: [Int32]
        switch g.input {
        case let .text(s):
            ids = tokenizer.encode(s, addBOS: tokenizer.addsBOS)
        case let .tokens(t):
            let V = engine.model.config.vocabSize
            if let bad = t.first(where: { $0 < 0 || Int($0) >= V }) {
                throw ServeError.badRequest("token id \(bad) in 'prompt' is outside the vocabulary (0..<\(V))", param: "prompt")
            }
            ids = t
        case let .chat(msgs):
            let tpl: ChatTemplate
            switch chatTemplate {
            case let .success(t): tpl = t
            case let .failure(e): throw ServeError.badRequest("this server has no usable chat template (\(e)); start it with --chat-template NAME|PATH", param: "messages")
            }
            let text: String
            do { text = try tpl.render(msgs, addGenerationPrompt: true) } catch {
                throw ServeError.badRequest("cannot render 'messages': \(error)", param: "messages")
            }
            ids = tokenizer.encode(text, addBOS: tokenizer.addsBOS)
            stops += tpl.stopStrings
        }
        if ids.isEmpty, let bos = tokenizer.bosID { ids = [bos] }
        if ids.isEmpty { throw ServeError.badRequest("the prompt is empty and the tokenizer has no BOS token", param: "prompt") }
        if ids.count >= maxContext {
            throw ServeError.badRequest("the prompt is \(ids.count) tokens; this server's context is \(maxContext) tokens (--max-context)", param: "prompt", code: "context_length_exceeded")
        }
        if !g.maxTokensGiven { g.sampling.maxTokens = min(chat ? defaultChatMaxTokens : 16, maxContext - ids.count) }
        if ids.count + g.sampling.maxTokens > maxContext {
            throw ServeError.badRequest("max_tokens \(g.sampling.maxTokens) plus the prompt's \(ids.count) tokens exceeds this server's context of \(maxContext) tokens",
                                        param: "max_tokens", code: "context_length_exceeded")
        }
        let isDraining = lock.withLock { draining }
        if isDraining { throw ServeError(status: 503, type: "server_error", message: "the server is shutting down", param: nil, code: nil) }

        let (events, cont) = AsyncStream<ServeEvent>.makeStream()
        let req = ServeRequest(prompt: ids, adapters: set, adapterKey: key, sampling: g.sampling) { cont.yield($0) }
        cont.onTermination = { _ in req.cancel() }
        do { try engine.submit(req) } catch let e as ServeEngineError {
            switch e {
            case .queueFull: throw ServeError(status: 429, type: "rate_limit_error", message: e.description, param: nil, code: "queue_full")
            case .shuttingDown: throw ServeError(status: 503, type: "server_error", message: e.description, param: nil, code: nil)
            case .tooLong: throw ServeError.badRequest(e.description, param: "max_tokens", code: "context_length_exceeded")
            }
        }
        lock.withLock { perModel[g.model, default: 0] += 1 }
        let id = (chat ? "chatcmpl-" : "cmpl-") + UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(24).lowercased()
        let created = Int(Date().timeIntervalSince1970)
        let answer = Answer(tokenizer: tokenizer, prompt: ids, stops: stops)
        let model = g.model

        if !g.stream {
            var reason = FinishReason.length
            try await withTaskCancellationHandler {
                loop: for await e in events {
                    switch e {
                    case let .token(t): if answer.push(t) { reason = .stop; req.cancel(); break loop }
                    case let .finished(f): reason = f; break loop
                    case let .failed(m): throw ServeError(status: 500, type: "server_error", message: m, param: nil, code: nil)
                    }
                }
            } onCancel: { req.cancel() }
            answer.finish()
            let usage: [String: Any] = ["prompt_tokens": ids.count, "completion_tokens": answer.tokens, "total_tokens": ids.count + answer.tokens,
                                        "prompt_tokens_details": ["cached_tokens": req.cachedTokens]]
            let choice: [String: Any] = chat
                ? ["index": 0, "message": ["role": "assistant", "content": answer.text], "finish_reason": reason.rawValue, "logprobs": NSNull()]
                : ["index": 0, "text": answer.text, "finish_reason": reason.rawValue, "logprobs": NSNull()]
            return json(["id": id, "object": chat ? "chat.completion" : "text_completion", "created": created, "model": model,
                         "choices": [choice], "usage": usage], status: 200)
        }

        let includeUsage = g.includeUsage
        let promptCount = ids.count
        let object = chat ? "chat.completion.chunk" : "text_completion"
        // A token's chunk, the stream's bulk: bytes around the text laid out once (see TextChunk).
        let tokenChunk = TextChunk(id: id, object: object, created: created, model: model, chat: chat)
        @Sendable func chunk(_ text: String?, role: Bool = false, finish: FinishReason?) -> [UInt8] {
            var choice: [String: Any] = ["index": 0, "finish_reason": finish?.rawValue ?? NSNull(), "logprobs": NSNull()]
            if chat {
                var delta: [String: Any] = [:]
                if role { delta["role"] = "assistant" }
                if let text { delta["content"] = text }
                choice["delta"] = delta
            } else {
                choice["text"] = text ?? ""
            }
            return sse(["id": id, "object": object, "created": created, "model": model, "choices": [choice]])
        }
        let body = ResponseBody { writer in
            do {
                if chat { try await writer.write(ByteBuffer(bytes: chunk("", role: true, finish: nil))) }
                var reason = FinishReason.length
                loop: for await e in events {
                    switch e {
                    case let .token(t):
                        let stopped = answer.push(t)
                        let piece = answer.take()
                        if !piece.isEmpty { try await writer.write(ByteBuffer(bytes: tokenChunk.bytes(piece))) }
                        if stopped { reason = .stop; req.cancel(); break loop }
                    case let .finished(f): reason = f; break loop
                    case let .failed(m):
                        try await writer.write(ByteBuffer(bytes: sse(ServeError(status: 500, type: "server_error", message: m, param: nil, code: nil).json)))
                        break loop
                    }
                }
                answer.finish()
                let rest = answer.take()
                if !rest.isEmpty { try await writer.write(ByteBuffer(bytes: chunk(rest, finish: nil))) }
                try await writer.write(ByteBuffer(bytes: chunk(chat ? nil : "", finish: reason)))
                if includeUsage {
                    try await writer.write(ByteBuffer(bytes: sse(["id": id, "object": object, "created": created, "model": model, "choices": [Any](),
                        "usage": ["prompt_tokens": promptCount, "completion_tokens": answer.tokens, "total_tokens": promptCount + answer.tokens,
                                  "prompt_tokens_details": ["cached_tokens": req.cachedTokens]] as [String: Any]])))
                }
                try await writer.write(ByteBuffer(bytes: Array("data: [DONE]\n\n".utf8)))
                try await writer.finish(nil)
            } catch {
                // The client went away: free the slot now rather than after max_tokens.
                req.cancel()
                throw error
            }
        }
        return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: body)
    }

    // MARK: page and metrics

    private func page() -> Response {
        Response(status: .ok, headers: [.contentType: "text/html; charset=utf-8"], body: ResponseBody(byteBuffer: ByteBuffer(string: servePageHTML)))
    }

    private func metrics() -> Response {
        let s = engine.snapshot
        let (pm, ps) = lock.withLock { (perModel, perStatus) }
        var t = ""
        func metric(_ name: String, _ type: String, _ help: String, _ samples: [(String, Int)]) {
            t += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for (labels, v) in samples { t += "\(name)\(labels) \(v)\n" }
        }
        func esc(_ s: String) -> String { s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") }
        metric("lora_requests_total", "counter", "Generation requests accepted.", [("", s.requests)])
        metric("lora_prompt_tokens_total", "counter", "Prompt tokens of accepted requests.", [("", s.promptTokens)])
        metric("lora_generated_tokens_total", "counter", "Tokens generated.", [("", s.generatedTokens)])
        metric("lora_prompt_cache_hits_total", "counter", "Requests that started from cached prompt rows.", [("", s.promptCacheHits)])
        metric("lora_prompt_cached_tokens_total", "counter", "Prompt tokens taken from the prompt cache instead of computed.", [("", s.cachedPromptTokens)])
        metric("lora_prompt_cache_bytes", "gauge", "Bytes of prompt KV rows kept for reuse.", [("", s.promptCacheBytes)])
        metric("lora_prompt_cache_entries", "gauge", "Prompts kept for reuse.", [("", s.promptCacheEntries)])
        metric("lora_engine_steps_total", "counter", "Batched decoding steps.", [("", s.steps)])
        metric("lora_engine_rows_total", "counter", "Token rows over all steps (prefill and decode).", [("", s.rowsStepped)])
        func fmetric(_ name: String, _ help: String, _ v: Double) {
            t += "# HELP \(name) \(help)\n# TYPE \(name) counter\n\(name) \(v)\n"
        }
        fmetric("lora_engine_step_seconds_total", "Seconds spent in batched steps.", s.stepSeconds)
        metric("lora_engine_decode_steps_total", "counter", "Steps in which every request decoded one token (no prompt rows).", [("", s.decodeSteps)])
        fmetric("lora_engine_decode_step_seconds_total", "Seconds spent in those steps.", s.decodeStepSeconds)
        metric("lora_batch_size", "gauge", "Requests in the last step.", [("", s.lastBatch)])
        metric("lora_active_requests", "gauge", "Requests holding a slot.", [("", s.active)])
        metric("lora_queue_length", "gauge", "Requests waiting for a slot.", [("", s.queued)])
        metric("lora_model_requests_total", "counter", "Generation requests per model (base or adapter).",
               pm.sorted { $0.key < $1.key }.map { ("{model=\"\(esc($0.key))\"}", $0.value) })
        metric("lora_http_responses_total", "counter", "HTTP responses by status.",
               ps.sorted { $0.key < $1.key }.map { ("{status=\"\($0.key)\"}", $0.value) })
        return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"], body: ResponseBody(byteBuffer: ByteBuffer(string: t)))
    }

    private func json(_ v: Any, status: Int) -> Response {
        Response(status: .init(code: status), headers: [.contentType: "application/json"],
                 body: ResponseBody(byteBuffer: ByteBuffer(bytes: jsonBytes(v))))
    }
}

private func sse(_ v: Any) -> [UInt8] { Array("data: ".utf8) + jsonBytes(v) + Array("\n\n".utf8) }

/// The server-sent event of one streamed piece of text: `chunk(piece, finish: nil)`'s JSON
/// object, with the bytes before and after the text built once per request. Serializing a
/// Foundation dictionary per token (bridging, dynamic casts) was ~30% of the HTTP side's CPU
/// per token, and on 2 cores that time is taken from the batched step's spinning workers.
struct TextChunk: Sendable {
    let head: [UInt8], tail: [UInt8]

    init(id: String, object: String, created: Int, model: String, chat: Bool) {
        var h = Array("data: {\"id\":".utf8)
        appendJSONString(id, to: &h)
        h += Array(",\"object\":".utf8)
        appendJSONString(object, to: &h)
        h += Array(",\"created\":\(created),\"model\":".utf8)
        appendJSONString(model, to: &h)
        h += Array((chat ? ",\"choices\":[{\"index\":0,\"delta\":{\"content\":" : ",\"choices\":[{\"index\":0,\"text\":").utf8)
        head = h
        tail = Array(((chat ? "}" : "") + ",\"finish_reason\":null,\"logprobs\":null}]}\n\n").utf8)
    }

    func bytes(_ text: String) -> [UInt8] {
        var out = head
        out.reserveCapacity(head.count + text.utf8.count + 8 + tail.count)
        appendJSONString(text, to: &out)
        out += tail
        return out
    }
}

private let hexDigits = Array("0123456789abcdef".utf8)

/// Appends `s` as a JSON string literal: quote, backslash and control characters escaped,
/// everything else as its UTF-8 (what JSONSerialization writes with .withoutEscapingSlashes).
func appendJSONString(_ s: String, to out: inout [UInt8]) {
    out.append(UInt8(ascii: "\""))
    for b in s.utf8 {
        switch b {
        case UInt8(ascii: "\""): out += [UInt8(ascii: "\\"), UInt8(ascii: "\"")]
        case UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
        case 0x0A: out += [UInt8(ascii: "\\"), UInt8(ascii: "n")]
        case 0x0D: out += [UInt8(ascii: "\\"), UInt8(ascii: "r")]
        case 0x09: out += [UInt8(ascii: "\\"), UInt8(ascii: "t")]
        case 0..<0x20: out += Array("\\u00".utf8) + [hexDigits[Int(b >> 4)], hexDigits[Int(b & 15)]]
        default: out.append(b)
        }
    }
    out.append(UInt8(ascii: "\""))
}

/// The answer's text as tokens arrive: streamed decoding (whole characters only), stop
/// strings cut out, and the count of tokens for `usage`.
final class Answer: @unchecked Sendable {
    private var decoder: StreamingDecoder
    private var matcher: StopMatcher
    private(set) var text = ""
    private var pending = ""   // text not yet taken
    private(set) var tokens = 0
    private var stopped = false

    init(tokenizer: Tokenizer, prompt: [Int32], stops: [String]) {
        decoder = StreamingDecoder(tokenizer: tokenizer, context: prompt)
        matcher = StopMatcher(stops)
    }

    /// Adds a token; true when a stop string has ended the answer.
    func push(_ id: Int32) -> Bool {
        if stopped { return true }
        tokens += 1
        let (t, s) = matcher.push(decoder.push(id))
        text += t
        pending += t
        stopped = s
        return s
    }

    func finish() {
        if stopped { return }
        let (t, s) = matcher.push(decoder.finish())
        let rest = t + (s ? "" : matcher.finish())
        text += rest
        pending += rest
        stopped = true
    }

    /// Text not yet handed out.
    func take() -> String {
        defer { pending = "" }
        return pending
    }
}
