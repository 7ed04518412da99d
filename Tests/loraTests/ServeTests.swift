import Foundation
import XCTest
import TestHelpers

/// `lora serve` run as a user runs it, on a free loopback port, with the tiny fixture model and
/// the two tiny fixture adapters: answers equal `lora generate`'s greedy ones, batching changes
/// no token, adapters load and unload while serving, bad requests get their status, SIGTERM drains.
final class ServeTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    static let model = fixtures.appendingPathComponent("tiny-mha").path
    static func adapter(_ k: String) -> String { fixtures.appendingPathComponent("merge/tiny-mha-\(k).adapter").path }
    static let prompt = "The sky is a bright and calm blue that"
    static let prompts = ["The sky is a bright and calm blue that", "Once upon a time", "A list of fruit:", "Water boils at",
                          "My favourite colour", "The capital of France", "One two three", "Hello"]

    func server(_ extra: [String] = []) throws -> ServeProcess {
        try ServeProcess(["--base-model", Self.model, "--adapter", "a=\(Self.adapter("a"))", "--adapter", "b=\(Self.adapter("b"))",
                          "--chat-template", "chatml"] + extra)
    }

    /// `lora generate`'s greedy answer (no template) for `prompt` with `adapters`.
    func generate(_ prompt: String, adapters: [String], tokens: Int) throws -> String {
        let r = try LoraProcess.run(["generate", "--base-model", Self.model, "--prompt", prompt, "--prompt-template", "none",
                                     "--num-beams", "1", "--max-new-tokens", "\(tokens)"] + adapters.flatMap { ["--lora-weights", $0] })
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssert(r.stdout.hasSuffix("\n"))
        return String(r.stdout.dropLast())
    }

    func completion(_ s: ServeProcess, model: String, prompt: String, tokens: Int, stream: Bool = false, extra: [String: Any] = [:]) -> ServeProcess.Reply {
        var body: [String: Any] = ["model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": stream]
        body.merge(extra) { $1 }
        return s.post("/v1/completions", body)
    }

    func testCompletionsAndChatStreamedAndNot() throws {
        let s = try server()
        defer { XCTAssertEqual(s.stop(), 0, s.stderr) }
        XCTAssertEqual(s.request("GET", "/health").status, 200)
        let models = s.request("GET", "/v1/models").json
        XCTAssertEqual(((models["data"] as? [[String: Any]]) ?? []).compactMap { $0["id"] as? String }, ["tiny-mha", "a", "b"])

        let expected = try generate(Self.prompt, adapters: [Self.adapter("a")], tokens: 24)
        XCTAssertFalse(expected.isEmpty)
        let plain = completion(s, model: "a", prompt: Self.prompt, tokens: 24)
        XCTAssertEqual(plain.status, 200, plain.text)
        XCTAssertEqual(ServeProcess.answer(plain, stream: false), expected)
        XCTAssertEqual(plain.json["object"] as? String, "text_completion")
        let usage = plain.json["usage"] as? [String: Any] ?? [:]
        XCTAssertEqual(usage["completion_tokens"] as? Int, 24, plain.text)
        XCTAssertGreaterThan(usage["prompt_tokens"] as? Int ?? 0, 5)
        XCTAssertEqual(usage["total_tokens"] as? Int, (usage["prompt_tokens"] as? Int ?? 0) + 24)
        XCTAssertEqual((plain.json["choices"] as? [[String: Any]])?.first?["finish_reason"] as? String, "length")

        let streamed = completion(s, model: "a", prompt: Self.prompt, tokens: 24, stream: true, extra: ["stream_options": ["include_usage": true]])
        XCTAssertEqual(streamed.status, 200)
        let ev = ServeProcess.events(streamed.text)
        XCTAssertEqual(ev.last, "[DONE]")
        XCTAssertGreaterThan(ev.count, 3, "streamed in pieces")
        XCTAssertEqual(ServeProcess.answer(streamed, stream: true), expected)
        XCTAssert(ev[ev.count - 2].contains("\"completion_tokens\":24"), ev[ev.count - 2])

        // The base model's name means no adapter.
        XCTAssertEqual(ServeProcess.answer(completion(s, model: "tiny-mha", prompt: Self.prompt, tokens: 24), stream: false),
                       try generate(Self.prompt, adapters: [], tokens: 24))

        // A stop string cuts the answer before it, with finish_reason stop.
        let cut = String(expected.dropFirst(3).prefix(4))
        let stopped = completion(s, model: "a", prompt: Self.prompt, tokens: 24, extra: ["stop": [cut]])
        let stoppedText = ServeProcess.answer(stopped, stream: false)
        XCTAssert(expected.hasPrefix(stoppedText + cut), "'\(stoppedText)' + '\(cut)' starts '\(expected)'")
        XCTAssertEqual((stopped.json["choices"] as? [[String: Any]])?.first?["finish_reason"] as? String, "stop")

        // Chat: ChatML-rendered messages; streamed deltas add up to the whole answer.
        let msgs: [[String: Any]] = [["role": "system", "content": "Be brief."], ["role": "user", "content": "Name a colour."]]
        let chat = s.post("/v1/chat/completions", ["model": "b", "messages": msgs, "max_tokens": 16, "temperature": 0])
        XCTAssertEqual(chat.status, 200, chat.text)
        XCTAssertEqual(chat.json["object"] as? String, "chat.completion")
        let content = ServeProcess.answer(chat, stream: false)
        let chatStream = s.post("/v1/chat/completions", ["model": "b", "messages": msgs, "max_tokens": 16, "temperature": 0, "stream": true])
        XCTAssertEqual(ServeProcess.answer(chatStream, stream: true), content)
        let first = ServeProcess.events(chatStream.text).first ?? ""
        XCTAssert(first.contains("\"role\":\"assistant\"") && first.contains("chat.completion.chunk"), first)
        // The rendered prompt is what `lora generate` answers for the same text.
        let rendered = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
        let viaGenerate = try generate(rendered, adapters: [Self.adapter("b")], tokens: 16)
        XCTAssertEqual(content, viaGenerate)

        // Seeded sampling repeats; metrics count what happened.
        let sample: [String: Any] = ["temperature": 0.9, "top_p": 0.9, "top_k": 20, "seed": 7]
        let s1 = ServeProcess.answer(completion(s, model: "b", prompt: "Hello", tokens: 12, extra: sample), stream: false)
        let s2 = ServeProcess.answer(completion(s, model: "b", prompt: "Hello", tokens: 12, extra: sample), stream: false)
        XCTAssertEqual(s1, s2)
        let m = s.request("GET", "/metrics").text
        XCTAssert(m.contains("lora_model_requests_total{model=\"a\"} 3"), m)
        XCTAssert(m.contains("# TYPE lora_generated_tokens_total counter"), m)
        XCTAssert(s.request("GET", "/").text.contains("<title>lora serve</title>"))
    }

    /// Two adapters at once, and one request among 7 others: every greedy answer equals
    /// `lora generate --lora-weights` alone.
    func testConcurrentAdaptersAndBatchedEqualsAlone() throws {
        // Steps of 5 ms at least: the tiny model's 32 steps would otherwise end before the next
        // client's request arrives on a busy machine, and nothing would be batched.
        let s = try server(["--max-batch", "8", "--test-step-delay-ms", "5"])
        defer { XCTAssertEqual(s.stop(), 0, s.stderr) }
        let models = ["a", "b", "tiny-mha", "a", "b", "a", "tiny-mha", "b"]
        var expected: [String] = []
        for (i, p) in Self.prompts.enumerated() {
            let m = models[i]
            expected.append(try generate(p, adapters: m == "tiny-mha" ? [] : [Self.adapter(m)], tokens: 32))
        }
        // Alone, through the server.
        let alone = ServeProcess.answer(completion(s, model: models[0], prompt: Self.prompts[0], tokens: 32), stream: false)
        XCTAssertEqual(alone, expected[0])
        // Eight at once (some streamed), started together so that they share steps.
        var got = [String](repeating: "", count: 8)
        let lock = NSLock()
        DispatchQueue.concurrentPerform(iterations: 8) { i in
            let r = completion(s, model: models[i], prompt: Self.prompts[i], tokens: 32, stream: i % 2 == 1)
            lock.lock(); got[i] = ServeProcess.answer(r, stream: i % 2 == 1); lock.unlock()
        }
        for i in 0..<8 { XCTAssertEqual(got[i], expected[i], "request \(i) (\(models[i])) batched") }
        let m = s.request("GET", "/metrics").text
        let steps = Int(m.split(separator: "\n").first { $0.hasPrefix("lora_engine_steps_total ") }?.split(separator: " ").last ?? "0") ?? 0
        // 9 requests x 32 tokens alone would take 9 x 32 steps; batched they share them.
        XCTAssertLessThan(steps, 9 * 32, "requests were decoded together\n\(m)")
        // The engine's own time: every step timed, the decode-only ones apart (the prompts'
        // steps are not among them).
        func value(_ name: String) -> Double {
            m.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") } ?? -1
        }
        let seconds = value("lora_engine_step_seconds_total"), decodeSteps = value("lora_engine_decode_steps_total")
        let decodeSeconds = value("lora_engine_decode_step_seconds_total")
        XCTAssertGreaterThan(seconds, 0, m)
        XCTAssertGreaterThan(decodeSteps, 0, m)
        XCTAssertLessThan(decodeSteps, Double(steps), m)
        XCTAssertGreaterThan(decodeSeconds, 0, m)
        XCTAssertLessThan(decodeSeconds, seconds, m)
    }

    /// A prompt that starts like an earlier one with the same model takes those rows from the
    /// prompt cache (usage says how many) and answers as from scratch; another adapter, an
    /// adapter loaded again, or `--prompt-cache-mb 0` takes none.
    func testPromptCacheReusesRowsAndKeepsAnswers() throws {
        let dir = try tempDir()
        try FileManager.default.copyItem(atPath: Self.adapter("a"), toPath: dir.appendingPathComponent("ada").path)
        func cached(_ r: ServeProcess.Reply) -> Int? {
            ((r.json["usage"] as? [String: Any])?["prompt_tokens_details"] as? [String: Any])?["cached_tokens"] as? Int
        }
        func prompts(_ r: ServeProcess.Reply) -> Int { (r.json["usage"] as? [String: Any])?["prompt_tokens"] as? Int ?? 0 }
        let longer = Self.prompt + " stretches over the hills"
        let expected = try generate(longer, adapters: [Self.adapter("a")], tokens: 16)
        let s = try server(["--adapters-dir", dir.path])
        defer { XCTAssertEqual(s.stop(), 0, s.stderr) }
        let first = completion(s, model: "a", prompt: Self.prompt, tokens: 16)
        XCTAssertEqual(cached(first), 0, first.text)
        // Starts with the first prompt: all of its tokens but the BOS-to-last match.
        let second = completion(s, model: "a", prompt: longer, tokens: 16)
        XCTAssertEqual(ServeProcess.answer(second, stream: false), expected)
        let shared = cached(second) ?? 0
        XCTAssertGreaterThan(shared, 3, second.text)
        XCTAssertLessThan(shared, prompts(first) + 1)
        // The same prompt again: all but its last token.
        let again = completion(s, model: "a", prompt: longer, tokens: 16)
        XCTAssertEqual(cached(again), prompts(again) - 1, again.text)
        XCTAssertEqual(ServeProcess.answer(again, stream: false), expected)
        // Another model's rows are not these.
        XCTAssertEqual(cached(completion(s, model: "b", prompt: longer, tokens: 4)), 0)
        // An adapter loaded again under an old name is another adapter.
        XCTAssertEqual(s.post("/v1/adapters", ["name": "hot", "path": "ada"]).status, 200)
        XCTAssertEqual(cached(completion(s, model: "hot", prompt: longer, tokens: 4)), 0)
        XCTAssertEqual(cached(completion(s, model: "hot", prompt: longer, tokens: 4)), prompts(again) - 1)
        XCTAssertEqual(s.request("DELETE", "/v1/adapters/hot").status, 200)
        XCTAssertEqual(s.post("/v1/adapters", ["name": "hot", "path": "ada"]).status, 200)
        XCTAssertEqual(cached(completion(s, model: "hot", prompt: longer, tokens: 4)), 0, "a reloaded adapter starts cold")
        let m = s.request("GET", "/metrics").text
        XCTAssert(m.contains("lora_prompt_cache_hits_total 3"), m)
        XCTAssert(m.contains("lora_prompt_cached_tokens_total \(shared + 2 * (prompts(again) - 1))"), m)

        let off = try server(["--prompt-cache-mb", "0"])
        defer { XCTAssertEqual(off.stop(), 0, off.stderr) }
        _ = completion(off, model: "a", prompt: longer, tokens: 4)
        let cold = completion(off, model: "a", prompt: longer, tokens: 16)
        XCTAssertEqual(cached(cold), 0)
        XCTAssertEqual(ServeProcess.answer(cold, stream: false), expected)

        let bad = try LoraProcess.run(["serve", "--base-model", Self.model, "--prompt-cache-mb=-1"])
        XCTAssertEqual(bad.status, 64, bad.stderr)
        XCTAssert(bad.stderr.contains("--prompt-cache-mb -1: expected 0 (off)"), bad.stderr)
    }

    func testHotLoadAndUnload() throws {
        let dir = try tempDir()
        try FileManager.default.copyItem(atPath: Self.adapter("a"), toPath: dir.appendingPathComponent("ada").path)
        try FileManager.default.copyItem(atPath: Self.adapter("b"), toPath: dir.appendingPathComponent("adb").path)
        let s = try server(["--adapters-dir", dir.path])
        defer { XCTAssertEqual(s.stop(), 0, s.stderr) }
        XCTAssertEqual(completion(s, model: "hot", prompt: Self.prompt, tokens: 8).status, 404)
        let load = s.post("/v1/adapters", ["name": "hot", "path": "ada"])
        XCTAssertEqual(load.status, 200, load.text)
        XCTAssertEqual(s.post("/v1/adapters", ["name": "adb"]).status, 200, "path defaults to the name")
        let ids = ((s.request("GET", "/v1/models").json["data"] as? [[String: Any]]) ?? []).compactMap { $0["id"] as? String }
        XCTAssertEqual(ids, ["tiny-mha", "a", "b", "hot", "adb"])
        let viaA = ServeProcess.answer(completion(s, model: "a", prompt: Self.prompt, tokens: 16), stream: false)
        XCTAssertEqual(ServeProcess.answer(completion(s, model: "hot", prompt: Self.prompt, tokens: 16), stream: false), viaA)

        // A weighted mix answers as `lora generate` with the same stack.
        XCTAssertEqual(s.post("/v1/adapters", ["name": "mix", "adapters": ["hot": 0.7, "adb": -1.3]]).status, 200)
        let mixed = ServeProcess.answer(completion(s, model: "mix", prompt: Self.prompt, tokens: 16), stream: false)
        XCTAssertEqual(mixed, try generate(Self.prompt, adapters: ["\(Self.adapter("a")):0.7", "\(Self.adapter("b")):-1.3"], tokens: 16))

        // A request in flight keeps its adapter while it is unloaded.
        nonisolated(unsafe) var inflight = ServeProcess.Reply(status: 0, body: Data())
        let started = DispatchSemaphore(value: 0)
        let t = Thread {
            started.signal()
            inflight = self.completion(s, model: "hot", prompt: Self.prompt, tokens: 200, stream: true)
        }
        t.start()
        started.wait()
        usleep(50_000)
        XCTAssertEqual(s.request("DELETE", "/v1/adapters/hot").status, 200)
        while inflight.status == 0 { usleep(10_000) }
        XCTAssertEqual(inflight.status, 200)
        XCTAssert(ServeProcess.answer(inflight, stream: true).hasPrefix(viaA), "in-flight answer kept adapter 'hot'")
        XCTAssertEqual(completion(s, model: "hot", prompt: Self.prompt, tokens: 8).status, 404)
        XCTAssertEqual(ServeProcess.answer(completion(s, model: "mix", prompt: Self.prompt, tokens: 16), stream: false), mixed,
                       "the mix holds its parts")
        XCTAssertEqual(s.request("DELETE", "/v1/adapters/mix").status, 200)
    }

    /// GGUF LoRA files (llama.cpp's format) load at start and at run time and answer as the
    /// PEFT folder they came from; a damaged or mismatched one gets a 400 naming the problem. A
    /// DoRA adapter answers as `lora generate` with it; a mix with it is refused.
    func testGGUFLoRAAndDoRA() throws {
        let dir = try tempDir()
        let ours = dir.appendingPathComponent("ga.gguf").path
        let m = try LoraProcess.run(["merge", "--base-model", Self.model, "--lora-weights", Self.adapter("a"), "--format", "gguf",
                                     "--adapter-only", "--output", ours])
        XCTAssertEqual(m.status, 0, m.stderr)
        // Written by llama.cpp's gguf-py (scripts/make_gguf_lora_reference.py), not by lora.
        try FileManager.default.copyItem(at: Self.fixtures.appendingPathComponent("gguf/tiny-mha-a.lora.gguf"),
                                         to: dir.appendingPathComponent("py.gguf"))
        try FileManager.default.copyItem(at: Self.fixtures.appendingPathComponent("gguf/tiny-gqa-b.lora.gguf"),
                                         to: dir.appendingPathComponent("gqa.gguf"))
        try Data(try Data(contentsOf: URL(fileURLWithPath: ours)).prefix(200)).write(to: dir.appendingPathComponent("cut.gguf"))
        let dora = Self.fixtures.appendingPathComponent("reference/dora/mha-qv.final.adapter").path

        let expected = try generate(Self.prompt, adapters: [Self.adapter("a")], tokens: 24)
        XCTAssertEqual(try generate(Self.prompt, adapters: [ours], tokens: 24), expected, "lora generate --lora-weights FILE.gguf")
        let doraExpected = try generate(Self.prompt, adapters: [dora], tokens: 24)
        XCTAssertNotEqual(doraExpected, try generate(Self.prompt, adapters: [], tokens: 24), "the DoRA adapter changes the answer")

        let s = try server(["--adapters-dir", dir.path, "--adapter", "g0=\(ours)", "--adapter", "d=\(dora)"])
        defer { XCTAssertEqual(s.stop(), 0, s.stderr) }
        XCTAssertEqual(s.post("/v1/adapters", ["name": "ga", "path": "ga.gguf"]).status, 200)
        XCTAssertEqual(s.post("/v1/adapters", ["name": "py"]).status, 200, "NAME.gguf when there is no folder NAME")
        for name in ["a", "g0", "ga", "py"] {
            let r = completion(s, model: name, prompt: Self.prompt, tokens: 24)
            XCTAssertEqual(r.status, 200, r.text)
            XCTAssertEqual(ServeProcess.answer(r, stream: false), expected, "model \(name)")
        }
        let streamed = completion(s, model: "ga", prompt: Self.prompt, tokens: 24, stream: true)
        XCTAssertEqual(ServeProcess.answer(streamed, stream: true), expected)

        // Damaged, or made for another model: 400 with OpenAI's error JSON naming the file and problem.
        for (path, words) in [("cut.gguf", ["cut.gguf", "corrupt or truncated"]), ("gqa.gguf", ["gqa.gguf", "blk.2.", "not an attention or MLP projection"])] {
            let r = s.post("/v1/adapters", ["name": "bad", "path": path])
            XCTAssertEqual(r.status, 400, r.text)
            let err = r.json["error"] as? [String: Any] ?? [:]
            XCTAssertEqual(err["code"] as? String, "bad_adapter", r.text)
            XCTAssertEqual(err["type"] as? String, "invalid_request_error", r.text)
            for w in words { XCTAssert((err["message"] as? String ?? "").contains(w), "'\(w)' in \(r.text)") }
        }
        XCTAssertEqual(completion(s, model: "bad", prompt: "Hello", tokens: 2).status, 404, "nothing half-loaded")

        // DoRA served alone equals generate; a batch of DoRA and GGUF requests changes nothing.
        var got = ["", "", ""]
        let lock = NSLock()
        DispatchQueue.concurrentPerform(iterations: 3) { i in
            let r = completion(s, model: ["d", "ga", "d"][i], prompt: Self.prompt, tokens: 24, stream: i == 2)
            lock.lock(); got[i] = ServeProcess.answer(r, stream: i == 2); lock.unlock()
        }
        XCTAssertEqual(got, [doraExpected, expected, doraExpected])
        let mix = s.post("/v1/adapters", ["name": "dmix", "adapters": ["d": 0.5, "ga": 0.5]])
        XCTAssertEqual(mix.status, 400, mix.text)
        XCTAssert(mix.text.contains("DoRA adapter can only be applied alone at weight 1"), mix.text)
        XCTAssertEqual(s.post("/v1/adapters", ["name": "dhalf", "adapters": ["d": 0.5]]).status, 400, "DoRA at weight 0.5")
        XCTAssertEqual(s.post("/v1/adapters", ["name": "gmix", "adapters": ["ga": 0.7, "py": 0.3]]).status, 200, "GGUF adapters mix")
    }

    /// Starts a streamed completion on its own thread and returns once the server counts it in
    /// flight; the returned function waits (at most the seconds given) for the stream to end and
    /// gives its reply (status 0 if it has not ended).
    private func streamInFlight(_ s: ServeProcess, model: String, prompt: String, tokens: Int)
        -> (TimeInterval) -> ServeProcess.Reply {
        final class Box: @unchecked Sendable { var reply = ServeProcess.Reply(status: 0, body: Data()) }
        let box = Box()
        Thread { box.reply = self.completion(s, model: model, prompt: prompt, tokens: tokens, stream: true) }.start()
        var active = false
        for _ in 0..<500 where !active {
            active = s.request("GET", "/metrics").text.contains("lora_requests_total 1")
            if !active { usleep(2_000) }
        }
        XCTAssert(active, "the request never counted as in flight")
        return { timeout in
            let deadline = Date().addingTimeInterval(timeout)
            while box.reply.status == 0 && Date() < deadline { usleep(10_000) }
            return box.reply
        }
    }

    /// --drain-timeout bounds the wait for a long request in flight: the server exits 0 about
    /// 1 s after SIGTERM and the client's stream ends with its last chunk and [DONE].
    func testDrainTimeoutBoundsSIGTERM() throws {
        // 50 ms a step and 240 tokens: the request alone would take about 12 s.
        let s = try server(["--max-context", "256", "--test-step-delay-ms", "50", "--drain-timeout", "1"])
        let reply = streamInFlight(s, model: "a", prompt: "Hello", tokens: 240)
        usleep(300_000)
        let t0 = Date()
        XCTAssertEqual(s.stop(timeout: 20), 0, s.stderr)
        let took = Date().timeIntervalSince(t0)
        XCTAssertGreaterThan(took, 0.8, "it waited for the request")
        XCTAssertLessThan(took, 3.0, "--drain-timeout 1 bounds the wait")
        let inflight = reply(10)
        XCTAssertEqual(inflight.status, 200, "the client saw the stream end")
        XCTAssert(s.stderr.contains("drain timeout"), s.stderr)
        // It ended early but properly: a last chunk with finish_reason, then [DONE].
        let ev = ServeProcess.events(inflight.text)
        XCTAssertEqual(ev.last, "[DONE]", inflight.text.suffix(300).description)
        XCTAssert(ev.dropLast().last?.contains("\"finish_reason\":\"length\"") == true, ev.suffix(2).description)
        XCTAssertLessThan(ev.count, 200, "fewer than the 240 tokens asked for were sent")
    }

    /// Every request of Tests/Fixtures/serve/bad_requests.json gets its status and OpenAI
    /// error JSON, and the server answers normally after each.
    func testBadRequestCatalogue() throws {
        let dir = try tempDir()
        try FileManager.default.copyItem(atPath: Self.adapter("a"), toPath: dir.appendingPathComponent("a").path)
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("empty"), withIntermediateDirectories: true)
        let outside = try tempDir()
        try FileManager.default.copyItem(atPath: Self.adapter("b"), toPath: outside.appendingPathComponent("b").path)
        try FileManager.default.createSymbolicLink(atPath: dir.appendingPathComponent("escape").path,
                                                   withDestinationPath: outside.appendingPathComponent("b").path)
        try Data("not a GGUF file".utf8).write(to: dir.appendingPathComponent("junk.gguf"))
        try Data("notes".utf8).write(to: dir.appendingPathComponent("notes.txt"))
        try FileManager.default.copyItem(at: Self.fixtures.appendingPathComponent("gguf/tiny-mha-a.lora.gguf"),
                                         to: outside.appendingPathComponent("a.gguf"))
        try FileManager.default.createSymbolicLink(atPath: dir.appendingPathComponent("escape.gguf").path,
                                                   withDestinationPath: outside.appendingPathComponent("a.gguf").path)
        let s = try server(["--api-key", "sekrit", "--adapters-dir", dir.path, "--max-body-bytes", "4096", "--max-context", "128"])
        defer { XCTAssertEqual(s.stop(), 0, s.stderr) }
        let auth = ["Authorization": "Bearer sekrit"]
        let data = try Data(contentsOf: Self.fixtures.appendingPathComponent("serve/bad_requests.json"))
        let cases = try XCTUnwrap((try JSONSerialization.jsonObject(with: data) as? [String: Any])?["requests"] as? [[String: Any]])
        XCTAssertGreaterThanOrEqual(cases.count, 30)
        for c in cases {
            let name = c["name"] as! String
            var body: Data? = (c["body"] as? String).map { Data($0.utf8) }
            if let rep = c["body_repeat"] as? String, let n = c["body_repeat_count"] as? Int {
                let wrap = c["body_wrap"] as? [String] ?? ["", ""]
                body = Data((wrap[0] + String(repeating: rep, count: n) + wrap[1]).utf8)
            }
            let headers = (c["headers"] as? [String: String]) ?? auth
            let r = s.request(c["method"] as! String, c["path"] as! String, body: body, headers: headers)
            XCTAssertEqual(r.status, c["status"] as? Int, "\(name): \(r.text)")
            let err = r.json["error"] as? [String: Any]
            XCTAssertNotNil(err?["message"] as? String, "\(name): OpenAI error JSON, got \(r.text)")
            if let code = c["code"] as? String { XCTAssertEqual(err?["code"] as? String, code, "\(name): \(r.text)") }
            if let param = c["param"] as? String { XCTAssertEqual(err?["param"] as? String, param, "\(name): \(r.text)") }
            XCTAssertEqual(s.request("GET", "/health").status, 200, "\(name): the server still answers")
        }
        let ok = s.post("/v1/completions", ["model": "a", "prompt": "Hello", "max_tokens": 4], headers: auth)
        XCTAssertEqual(ok.status, 200, ok.text)
        XCTAssertEqual(s.request("GET", "/v1/models", headers: auth).status, 200)
    }

    /// A full queue answers 429; SIGTERM lets the request in flight finish, then exits 0.
    func testQueueLimitAndSIGTERMDrains() throws {
        let busy = try server(["--max-queue", "0"])
        let r = completion(busy, model: "a", prompt: "Hello", tokens: 4)
        XCTAssertEqual(r.status, 429, r.text)
        XCTAssertEqual((r.json["error"] as? [String: Any])?["type"] as? String, "rate_limit_error")
        XCTAssertEqual(busy.request("GET", "/health").status, 200)
        XCTAssertEqual(busy.stop(), 0)

        // Slowed to 5 ms a step so that the request is still running when SIGTERM comes.
        let s = try server(["--max-context", "256", "--test-step-delay-ms", "5"])
        // Once the request holds a slot, ask the server to stop.
        let reply = streamInFlight(s, model: "b", prompt: Self.prompt, tokens: 200)
        XCTAssertEqual(s.stop(), 0, s.stderr)
        let inflight = reply(60)
        XCTAssertEqual(inflight.status, 200)
        XCTAssertEqual(ServeProcess.events(inflight.text).last, "[DONE]", "the request in flight finished: \(inflight.text.suffix(300))")
        XCTAssert(s.stderr.contains("draining"), s.stderr)
        let last = ServeProcess.events(inflight.text).dropLast().last ?? ""
        XCTAssert(last.contains("\"finish_reason\":\"length\"") || last.contains("\"finish_reason\":\"stop\""), last)
    }

    /// A client that hangs up mid-stream frees its slot: with one slot and slow steps, the next
    /// request is answered long before the first one's max_tokens would have run out.
    func testDisconnectFreesSlot() throws {
        let s = try server(["--max-batch", "1", "--max-context", "256", "--test-step-delay-ms", "20"])
        defer { XCTAssertEqual(s.stop(), 0, s.stderr) }
        // 240 tokens at 20 ms a step would hold the slot for about 5 s.
        let body = #"{"model": "a", "prompt": "Hello", "max_tokens": 240, "stream": true}"#
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        XCTAssertGreaterThanOrEqual(fd, 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(s.port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        XCTAssertEqual(rc, 0)
        let req = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
        _ = req.withCString { send(fd, $0, strlen($0), 0) }
        var buf = [UInt8](repeating: 0, count: 4096)
        var got = ""
        while !got.contains("data: ") {
            let n = recv(fd, &buf, buf.count, 0)
            if n <= 0 { break }
            got += String(decoding: buf[0..<n], as: UTF8.self)
        }
        XCTAssert(got.contains("200"), got)
        close(fd)
        let t0 = Date()
        let r = completion(s, model: "b", prompt: "Hello", tokens: 4)
        XCTAssertEqual(r.status, 200, r.text)
        XCTAssertLessThan(Date().timeIntervalSince(t0), 3.0, "the hung-up request's slot was freed")
        let m = s.request("GET", "/metrics").text
        let gen = Int(m.split(separator: "\n").first { $0.hasPrefix("lora_generated_tokens_total ") }?.split(separator: " ").last ?? "0") ?? 0
        XCTAssertLessThan(gen, 200, m)
    }
}
