import Foundation
import LLaMA

/// The adapters a server holds by name: PEFT folders or GGUF LoRA files loaded at start (`--adapter NAME=PATH`) or
/// at run time from `--adapters-dir`, and weighted mixes of them. Requests take an `AdapterSet`
/// snapshot when they start, so unloading never touches a request in flight.
final class AdapterRegistry: @unchecked Sendable {
    enum Entry {
        case adapter(LoRAAdapter, path: String, serial: Int)
        case mix([(name: String, adapter: LoRAAdapter, weight: Float, serial: Int)])
    }

    let baseName: String
    let adaptersDir: URL?
    let model: LlamaConfig
    private let lock = NSLock()
    private var entries: [String: (entry: Entry, created: Int)] = [:]
    private var order: [String] = []
    /// Numbers each loaded adapter for request keys: an adapter loaded again under the same
    /// name (or at a reused address) gets a new key, so the prompt cache never mixes them.
    private var loads = 0

    init(baseName: String, adaptersDir: String?, model: LlamaConfig) {
        self.baseName = baseName
        self.adaptersDir = adaptersDir.map { URL(fileURLWithPath: $0).standardizedFileURL.resolvingSymlinksInPath() }
        self.model = model
    }

    /// Names are a plain word: letters, digits, `.`, `_`, `-` (not leading `.`), at most 64.
    static func checkName(_ name: String) throws {
        let ok = !name.isEmpty && name.count <= 64 && !name.hasPrefix(".")
            && name.unicodeScalars.allSatisfy { CharacterSet.alphanumerics.contains($0) && $0.isASCII || "._-".unicodeScalars.contains($0) }
        if !ok { throw ServeError.badRequest("adapter name '\(name)': expected 1 to 64 of A-Z a-z 0-9 . _ - (not starting with '.')", param: "name") }
    }

    /// The PEFT folder or GGUF LoRA file (`.gguf`) for `relative` inside --adapters-dir, refusing
    /// absolute paths, `..` and links that lead outside it.
    func resolveInside(_ relative: String) throws -> URL {
        guard let root = adaptersDir else {
            throw ServeError.badRequest("loading adapters at run time needs the server started with --adapters-dir", param: "path")
        }
        if relative.isEmpty || relative.hasPrefix("/") || relative.hasPrefix("~") || relative.contains("\0") {
            throw ServeError.badRequest("adapter path '\(relative)': expected a folder or .gguf file name relative to --adapters-dir", param: "path")
        }
        let parts = relative.split(separator: "/", omittingEmptySubsequences: true)
        if parts.contains(where: { $0 == ".." || $0 == "." }) {
            throw ServeError.badRequest("adapter path '\(relative)': '..' and '.' are not allowed", param: "path")
        }
        let url = root.appendingPathComponent(relative).resolvingSymlinksInPath()
        let rootPath = root.path.hasSuffix("/") ? root.path : root.path + "/"
        guard url.path.hasPrefix(rootPath) else {
            throw ServeError.badRequest("adapter path '\(relative)' leads outside --adapters-dir", param: "path")
        }
        var isDir: ObjCBool = false
        let exists = FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir)
        guard exists, isDir.boolValue || url.pathExtension.lowercased() == "gguf" else {
            throw ServeError.notFound("no adapter folder or .gguf file '\(relative)' in --adapters-dir", param: "path", code: "adapter_not_found")
        }
        return url
    }

    func add(name: String, adapterAt dir: URL) throws {
        try Self.checkName(name)
        if name == baseName { throw ServeError.conflict("'\(name)' is the base model's name") }
        let a = try Adapter.load(dir, model: model)
        lock.lock(); defer { lock.unlock() }
        if entries[name] != nil { throw ServeError.conflict("a model named '\(name)' is already loaded; DELETE it first") }
        loads += 1
        entries[name] = (.adapter(a, path: dir.path, serial: loads), Int(Date().timeIntervalSince1970))
        order.append(name)
    }

    func addMix(name: String, weights: [String: Float]) throws {
        try Self.checkName(name)
        if name == baseName { throw ServeError.conflict("'\(name)' is the base model's name") }
        if weights.isEmpty { throw ServeError.badRequest("a mix needs at least one adapter", param: "adapters") }
        lock.lock(); defer { lock.unlock() }
        if entries[name] != nil { throw ServeError.conflict("a model named '\(name)' is already loaded; DELETE it first") }
        var parts: [(String, LoRAAdapter, Float, Int)] = []
        for (n, w) in weights.sorted(by: { $0.key < $1.key }) {
            guard w.isFinite else { throw ServeError.badRequest("mix weight of '\(n)' is not a finite number", param: "adapters") }
            guard case let .adapter(a, _, serial)? = entries[n]?.entry else {
                throw ServeError.notFound("mix part '\(n)' is not a loaded adapter", param: "adapters", code: "model_not_found")
            }
            parts.append((n, a, w, serial))
        }
        do { try AdapterSet(parts.map { ($0.1, $0.2) }).validate() } catch {
            throw ServeError.badRequest("mix '\(name)': \(error)", param: "adapters")
        }
        entries[name] = (.mix(parts.map { (name: $0.0, adapter: $0.1, weight: $0.2, serial: $0.3) }), Int(Date().timeIntervalSince1970))
        order.append(name)
    }

    func remove(_ name: String) throws {
        lock.lock(); defer { lock.unlock() }
        guard entries.removeValue(forKey: name) != nil else {
            throw ServeError.notFound("no adapter named '\(name)' is loaded", param: nil, code: "model_not_found")
        }
        order.removeAll { $0 == name }
    }

    /// The adapters for a request's `model`, and a key equal for requests that share them.
    func resolve(_ name: String) throws -> (set: AdapterSet, key: String) {
        if name == baseName || name.isEmpty { return (.none, "") }
        lock.lock(); defer { lock.unlock() }
        switch entries[name]?.entry {
        case let .adapter(a, _, serial)?:
            return (AdapterSet(a), "a:\(serial)")
        case let .mix(parts)?:
            return (AdapterSet(parts.map { ($0.adapter, $0.weight) }),
                    "m:" + parts.map { "\($0.serial)*\($0.weight)" }.joined(separator: ","))
        case nil:
            throw ServeError.notFound("the model '\(name)' does not exist; GET /v1/models lists them", param: "model", code: "model_not_found")
        }
    }

    /// `/v1/models` entries after the base: (id, root path or nil, mix weights or nil, created).
    func list() -> [(id: String, root: String?, mix: [String: Float]?, created: Int)] {
        lock.lock(); defer { lock.unlock() }
        return order.compactMap { n in
            guard let e = entries[n] else { return nil }
            switch e.entry {
            case let .adapter(_, path, _): return (n, path, nil, e.created)
            case let .mix(parts): return (n, nil, Dictionary(uniqueKeysWithValues: parts.map { ($0.name, $0.weight) }), e.created)
            }
        }
    }
}
