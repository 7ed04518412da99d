import Foundation
import LLaMA

// OpenAI's request and error shapes for `lora serve`, with no HTTP in them: parsing a body
// into a typed request (every bad value named), and the JSON the responses carry.

/// An error a client caused (or the server's state), with OpenAI's error JSON and a status.
struct ServeError: Error {
    let status: Int
    let type: String
    let message: String
    let param: String?
    let code: String?

    static func badRequest(_ m: String, param: String? = nil, code: String? = nil) -> ServeError {
        ServeError(status: 400, type: "invalid_request_error", message: m, param: param, code: code)
    }
    static func notFound(_ m: String, param: String? = nil, code: String? = nil) -> ServeError {
        ServeError(status: 404, type: "invalid_request_error", message: m, param: param, code: code)
    }
    static func conflict(_ m: String) -> ServeError { ServeError(status: 409, type: "invalid_request_error", message: m, param: "name", code: nil) }

    var json: [String: Any] {
        ["error": ["message": message, "type": type, "param": param ?? NSNull(), "code": code ?? NSNull()] as [String: Any]]
    }
}

/// JSON bytes of a value built from dictionaries and arrays.
func jsonBytes(_ v: Any) -> [UInt8] {
    (try? Array(JSONSerialization.data(withJSONObject: v, options: [.withoutEscapingSlashes]))) ?? Array("{}".utf8)
}

/// The fields of a completions or chat request that `lora serve` reads.
struct GenerationRequest {
    enum Input { case text(String), tokens([Int32]), chat([ChatMessage]) }
    var model: String
    var input: Input
    var sampling = ServeSampling()
    var maxTokensGiven = false
    var stop: [String] = []
    var stream = false
    var includeUsage = false

    /// Parses a JSON body; `chat` selects /v1/chat/completions' fields.
    static func parse(_ body: [UInt8], chat: Bool) throws -> GenerationRequest {
        guard let obj = try? JSONSerialization.jsonObject(with: Data(body)) else {
            throw ServeError.badRequest("the body is not valid JSON", code: "invalid_json")
        }
        guard let o = obj as? [String: Any] else { throw ServeError.badRequest("the body must be a JSON object") }
        guard let model = o["model"] as? String else { throw ServeError.badRequest("'model' is required: a string naming the base model or an adapter", param: "model") }
        let input: Input
        if chat {
            guard let msgs = o["messages"] as? [Any], !msgs.isEmpty else {
                throw ServeError.badRequest("'messages' is required: a non-empty array of {role, content}", param: "messages")
            }
            var out: [ChatMessage] = []
            for (i, m) in msgs.enumerated() {
                guard let d = m as? [String: Any], let role = d["role"] as? String else {
                    throw ServeError.badRequest("messages[\(i)]: expected an object with a string 'role'", param: "messages")
                }
                let content: String
                if let s = d["content"] as? String { content = s }
                else if let parts = d["content"] as? [Any] {
                    // The array form: text parts are concatenated; other kinds are refused.
                    var s = ""
                    for p in parts {
                        guard let pd = p as? [String: Any], pd["type"] as? String == "text", let t = pd["text"] as? String else {
                            throw ServeError.badRequest("messages[\(i)].content: only text parts are supported", param: "messages")
                        }
                        s += t
                    }
                    content = s
                } else {
                    throw ServeError.badRequest("messages[\(i)]: expected a string 'content'", param: "messages")
                }
                out.append(ChatMessage(role: role, content: content))
            }
            input = .chat(out)
        } else {
            switch o["prompt"] {
            case let s as String: input = .text(s)
            case let a as [Any] where a.count == 1 && a[0] is String: input = .text(a[0] as! String)
            case let a as [Any] where !a.isEmpty && a.allSatisfy({ !isJSONBool($0) && (($0 as? NSNumber).map { $0.doubleValue == $0.doubleValue.rounded() && abs($0.doubleValue) < 2e9 } ?? false) }):
                input = .tokens(a.map { Int32(truncatingIfNeeded: ($0 as! NSNumber).int64Value) })
            case nil: throw ServeError.badRequest("'prompt' is required: a string", param: "prompt")
            default: throw ServeError.badRequest("'prompt' must be a string, a one-string array or an array of token ids (one prompt per request)", param: "prompt")
            }
        }
        var r = GenerationRequest(model: model, input: input)
        func int(_ k: String) throws -> Int? {
            guard let v = o[k], !(v is NSNull) else { return nil }
            guard let n = v as? NSNumber, !isJSONBool(v), n.doubleValue == n.doubleValue.rounded(),
                  abs(n.doubleValue) < 1e15 else {
                throw ServeError.badRequest("'\(k)' must be an integer", param: k)
            }
            return n.intValue
        }
        func num(_ k: String) throws -> Double? {
            guard let v = o[k], !(v is NSNull) else { return nil }
            guard let n = v as? NSNumber, !isJSONBool(v), n.doubleValue.isFinite else { throw ServeError.badRequest("'\(k)' must be a number", param: k) }
            return n.doubleValue
        }
        if let m = try int(chat && o["max_completion_tokens"] != nil ? "max_completion_tokens" : "max_tokens") {
            if m < 1 { throw ServeError.badRequest("'max_tokens' must be at least 1, got \(m)", param: "max_tokens") }
            r.sampling.maxTokens = m; r.maxTokensGiven = true
        }
        if let t = try num("temperature") {
            if t < 0 || t > 2 { throw ServeError.badRequest("'temperature' must be between 0 and 2, got \(t)", param: "temperature") }
            r.sampling.temperature = Float(t)
        }
        if let p = try num("top_p") {
            if !(p > 0 && p <= 1) { throw ServeError.badRequest("'top_p' must be in (0, 1], got \(p)", param: "top_p") }
            r.sampling.topP = Float(p)
        }
        if let k = try int("top_k") {
            if k < -1 { throw ServeError.badRequest("'top_k' must be -1 or 0 (off) or a positive count, got \(k)", param: "top_k") }
            r.sampling.topK = max(0, k)
        }
        if let s = try int("seed") { r.sampling.seed = UInt64(bitPattern: Int64(s)) }
        if let n = try int("n"), n != 1 { throw ServeError.badRequest("'n' must be 1: one choice per request", param: "n") }
        switch o["stop"] {
        case nil, is NSNull: break
        case let s as String: r.stop = [s]
        case let a as [Any] where a.count <= 4 && a.allSatisfy({ $0 is String }): r.stop = a as! [String]
        default: throw ServeError.badRequest("'stop' must be a string or an array of at most 4 strings", param: "stop")
        }
        if r.stop.contains(where: \.isEmpty) { throw ServeError.badRequest("'stop' strings must not be empty", param: "stop") }
        if let s = o["stream"], !(s is NSNull) {
            guard let b = s as? Bool else { throw ServeError.badRequest("'stream' must be true or false", param: "stream") }
            r.stream = b
        }
        if let lb = o["logit_bias"], !(lb is NSNull) {
            guard let d = lb as? [String: Any] else { throw ServeError.badRequest("'logit_bias' must map token ids to numbers", param: "logit_bias") }
            for (k, v) in d {
                guard let id = Int32(k), id >= 0, let n = v as? NSNumber, !isJSONBool(v), n.doubleValue >= -100, n.doubleValue <= 100 else {
                    throw ServeError.badRequest("'logit_bias' entry \(k): expected a token id mapped to a number in [-100, 100]", param: "logit_bias")
                }
                r.sampling.logitBias[id] = n.floatValue
            }
        }
        if let so = o["stream_options"] as? [String: Any], let u = so["include_usage"] as? Bool { r.includeUsage = u }
        return r
    }
}

/// Holds back text that may be the start of a stop string, and cuts at the first stop.
struct StopMatcher {
    let stops: [String]
    var pending = ""
    init(_ stops: [String]) { self.stops = stops }

    /// Text safe to emit now, and whether a stop string ended the answer.
    mutating func push(_ piece: String) -> (text: String, stopped: Bool) {
        pending += piece
        guard !stops.isEmpty else { defer { pending = "" }; return (pending, false) }
        var cut: String.Index? = nil
        for s in stops {
            if let r = pending.range(of: s), cut.map({ r.lowerBound < $0 }) ?? true { cut = r.lowerBound }
        }
        if let cut { let t = String(pending[..<cut]); pending = ""; return (t, true) }
        // Keep the longest suffix that is a prefix of some stop string.
        var keep = 0
        for s in stops {
            var n = min(s.count - 1, pending.count)
            while n > 0 { if pending.hasSuffix(String(s.prefix(n))) { break }; n -= 1 }
            keep = max(keep, n)
        }
        let emitEnd = pending.index(pending.endIndex, offsetBy: -keep)
        let t = String(pending[..<emitEnd])
        pending = String(pending[emitEnd...])
        return (t, false)
    }

    mutating func finish() -> String { defer { pending = "" }; return pending }
}

/// JSONSerialization gives `true`/`false` as Bool; an NSNumber 1 may also cast to Bool, so the
/// dynamic type decides.
func isJSONBool(_ v: Any) -> Bool { type(of: v) == Bool.self }
