import Foundation

/// Finds a model that is already in the local Hugging Face cache by its Hub name
/// (`ORG/NAME`, or `ORG/NAME/FILE.gguf` for one file of a GGUF repository). Never downloads.
///
/// The cache layout is huggingface_hub's: `<root>/models--ORG--NAME/refs/main` holds a commit
/// hash, `snapshots/<hash>/` holds the files as symlinks into `blobs/`. Roots, in order:
/// `$HF_HUB_CACHE`, `$HF_HOME/hub`, `$XDG_CACHE_HOME/huggingface/hub`, `~/.cache/huggingface/hub`.
public enum HubCache {
    public static func roots(environment env: [String: String]) -> [URL] {
        var out: [String] = []
        if let v = env["HF_HUB_CACHE"] ?? env["HUGGINGFACE_HUB_CACHE"], !v.isEmpty { out.append(v) }
        if let v = env["HF_HOME"], !v.isEmpty { out.append(v + "/hub") }
        if let v = env["XDG_CACHE_HOME"], !v.isEmpty { out.append(v + "/huggingface/hub") }
        if let home = env["HOME"], !home.isEmpty { out.append(home + "/.cache/huggingface/hub") }
        var seen = Set<String>()
        return out.map { URL(fileURLWithPath: $0).standardizedFileURL }.filter { seen.insert($0.path).inserted }
    }

    /// `ORG/NAME` or `ORG/NAME/FILE.gguf`: Hub names are letters, digits, `-`, `_`, `.`; a path
    /// that starts with `/`, `.` or `~` is a path.
    public static func isRepoID(_ s: String) -> Bool {
        let parts = s.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2 || (parts.count == 3 && parts[2].lowercased().hasSuffix(".gguf")) else { return false }
        let ok = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-_."))
        return parts.prefix(2).allSatisfy { p in
            !p.isEmpty && !p.hasPrefix(".") && p.unicodeScalars.allSatisfy { ok.contains($0) }
        }
    }

    /// The snapshot folder (or the .gguf file in it) for `name`: the first root whose
    /// `models--ORG--NAME` has `refs/main` pointing at an existing snapshot.
    public static func resolve(_ name: String, environment env: [String: String]) throws -> URL {
        let parts = name.split(separator: "/").map(String.init)
        let repo = "models--\(parts[0])--\(parts[1])"
        let fm = FileManager.default
        var searched: [String] = []
        for root in roots(environment: env) {
            let dir = root.appendingPathComponent(repo)
            searched.append(dir.path)
            guard let ref = try? String(contentsOf: dir.appendingPathComponent("refs/main"), encoding: .utf8)
                .trimmingCharacters(in: .whitespacesAndNewlines), !ref.isEmpty, !ref.contains("/") else { continue }
            let snap = dir.appendingPathComponent("snapshots").appendingPathComponent(ref)
            guard fm.fileExists(atPath: snap.path) else { continue }
            if parts.count == 3 {
                let f = snap.appendingPathComponent(parts[2])
                guard fm.fileExists(atPath: f.path) else {
                    throw HubCacheError.fileNotInSnapshot(name: name, snapshot: snap.path)
                }
                return f
            }
            if fm.fileExists(atPath: snap.appendingPathComponent("config.json").path) { return snap }
            let ggufs = ((try? fm.contentsOfDirectory(atPath: snap.path)) ?? []).filter { $0.lowercased().hasSuffix(".gguf") }.sorted()
            if ggufs.count == 1 { return snap.appendingPathComponent(ggufs[0]) }
            throw HubCacheError.noModelInSnapshot(name: name, snapshot: snap.path, ggufs: ggufs)
        }
        throw HubCacheError.notFound(name: name, searched: searched)
    }
}

public enum HubCacheError: Error, CustomStringConvertible, Equatable {
    case notFound(name: String, searched: [String])
    case noModelInSnapshot(name: String, snapshot: String, ggufs: [String])
    case fileNotInSnapshot(name: String, snapshot: String)

    public var description: String {
        switch self {
        case let .notFound(name, searched):
            let repo = name.split(separator: "/").prefix(2).joined(separator: "/")
            return "\(name): no such file or folder, and not in the local Hugging Face cache (searched \(searched.joined(separator: ", "))); "
                + "get it with `huggingface-cli download \(repo)` (lora never downloads)"
        case let .noModelInSnapshot(name, snapshot, ggufs):
            return ggufs.isEmpty
                ? "\(name): \(snapshot) has no config.json and no .gguf file; expected a Hugging Face model folder"
                : "\(name): \(snapshot) has several .gguf files (\(ggufs.joined(separator: ", "))); name one, e.g. \(name)/\(ggufs[0])"
        case let .fileNotInSnapshot(name, snapshot):
            return "\(name): no such file in the cached snapshot \(snapshot)"
        }
    }
}
