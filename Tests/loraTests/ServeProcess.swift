import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import XCTest

/// A `lora serve` child process on a free loopback port (`--port 0`; the port is read from the
/// line it prints), with small blocking HTTP helpers. `stop()` sends SIGTERM and waits.
final class ServeProcess {
    let process = Process()
    private(set) var port = 0
    private let errPipe = Pipe()
    private let lock = NSLock()
    private var errText = ""

    init(_ args: [String]) throws {
        process.executableURL = LoraProcess.binary
        process.arguments = ["serve", "--port", "0"] + args
        process.standardOutput = FileHandle.nullDevice
        process.standardError = errPipe
        let ready = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var signalled = false
        errPipe.fileHandleForReading.readabilityHandler = { [weak self] h in
            let d = h.availableData
            guard let self else { return }
            self.lock.lock()
            self.errText += String(decoding: d, as: UTF8.self)
            if !signalled, let r = self.errText.range(of: "listening on http://127.0.0.1:") {
                let digits = self.errText[r.upperBound...].prefix { $0.isNumber }
                self.port = Int(digits) ?? 0
                signalled = true
                ready.signal()
            }
            let eof = d.isEmpty
            self.lock.unlock()
            if eof { h.readabilityHandler = nil; if !signalled { signalled = true; ready.signal() } }
        }
        try process.run()
        if ready.wait(timeout: .now() + 120) == .timedOut || port == 0 {
            process.terminate()
            throw XCTSkip("lora serve did not start: \(stderr)")
        }
    }

    var stderr: String { lock.lock(); defer { lock.unlock() }; return errText }

    /// SIGTERM, then the exit status (killed after `timeout` seconds).
    @discardableResult
    func stop(timeout: TimeInterval = 60) -> Int32 {
        if process.isRunning { kill(process.processIdentifier, SIGTERM) }
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit(); return -9 }
        process.waitUntilExit()
        return process.terminationStatus
    }

    deinit { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }

    struct Reply { let status: Int; let body: Data
        var text: String { String(decoding: body, as: UTF8.self) }
        var json: [String: Any] { ((try? JSONSerialization.jsonObject(with: body)) as? [String: Any]) ?? [:] }
    }

    /// One request; `headers` nil means none beyond Content-Type.
    func request(_ method: String, _ path: String, body: Data? = nil, headers: [String: String] = [:], timeout: TimeInterval = 120) -> Reply {
        var r = URLRequest(url: URL(string: "http://127.0.0.1:\(port)\(path)")!)
        r.httpMethod = method
        r.timeoutInterval = timeout
        if let body { r.httpBody = body; r.setValue("application/json", forHTTPHeaderField: "Content-Type") }
        for (k, v) in headers { r.setValue(v, forHTTPHeaderField: k) }
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var reply = Reply(status: -1, body: Data())
        let task = URLSession.shared.dataTask(with: r) { d, resp, err in
            reply = Reply(status: (resp as? HTTPURLResponse)?.statusCode ?? -1, body: d ?? Data(err.map { "\($0)" }.map { Data($0.utf8) } ?? Data()))
            done.signal()
        }
        task.resume()
        done.wait()
        return reply
    }

    func post(_ path: String, _ json: [String: Any], headers: [String: String] = [:]) -> Reply {
        request("POST", path, body: try! JSONSerialization.data(withJSONObject: json), headers: headers)
    }

    /// The `data:` payloads of a server-sent event stream, in order.
    static func events(_ text: String) -> [String] {
        text.components(separatedBy: "\n\n").compactMap { e in e.hasPrefix("data: ") ? String(e.dropFirst(6)) : nil }
    }

    /// The text of a completion reply (streamed or not, completions or chat).
    static func answer(_ r: Reply, stream: Bool) -> String {
        if !stream {
            let c = (r.json["choices"] as? [[String: Any]])?.first ?? [:]
            return (c["text"] as? String) ?? ((c["message"] as? [String: Any])?["content"] as? String) ?? "<none>"
        }
        var s = ""
        for e in events(r.text) where e != "[DONE]" {
            let j = (try? JSONSerialization.jsonObject(with: Data(e.utf8))) as? [String: Any] ?? [:]
            for c in (j["choices"] as? [[String: Any]]) ?? [] {
                s += (c["text"] as? String) ?? ((c["delta"] as? [String: Any])?["content"] as? String) ?? ""
            }
        }
        return s
    }
}
