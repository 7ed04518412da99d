import Foundation

/// Every file `lora` writes goes through here: write to a temporary sibling, flush, rename.
/// A crash or Ctrl-C at any moment leaves either the old file or the new one, never half.
public enum AtomicFile {
    public static func write(_ bytes: [UInt8], to url: URL) throws {
        let dir = url.deletingLastPathComponent()
        let tmp = dir.appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())")
        guard FileManager.default.createFile(atPath: tmp.path, contents: nil) else {
            throw WriteError(path: url.path, reason: "cannot create \(tmp.path)")
        }
        do {
            let h = try FileHandle(forWritingTo: tmp)
            try bytes.withUnsafeBytes { try h.write(contentsOf: Data($0)) }
            try h.synchronize()
            try h.close()
            if rename(tmp.path, url.path) != 0 {
                throw WriteError(path: url.path, reason: String(cString: strerror(errno)))
            }
        } catch let e as WriteError {
            try? FileManager.default.removeItem(at: tmp)
            throw e
        } catch {
            try? FileManager.default.removeItem(at: tmp)
            throw WriteError(path: url.path, reason: "\(error.localizedDescription)")
        }
    }

    /// Streams a file too large to build in memory: `body` writes through the handle into the
    /// temporary sibling, which is flushed and renamed into place only when `body` returns.
    /// An error from `body` removes the temporary file and is rethrown (file-system errors as
    /// `WriteError`).
    public static func write(to url: URL, _ body: (FileHandle) throws -> Void) throws {
        let fm = FileManager.default
        let tmp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())")
        guard fm.createFile(atPath: tmp.path, contents: nil) else {
            throw WriteError(path: url.path, reason: "cannot create \(tmp.path)")
        }
        func fail(_ error: Error) -> Error {
            try? fm.removeItem(at: tmp)
            let ns = error as NSError
            if ns.domain == NSCocoaErrorDomain || ns.domain == NSPOSIXErrorDomain {
                return WriteError(path: url.path, reason: ns.localizedDescription)
            }
            return error
        }
        let h: FileHandle
        do { h = try FileHandle(forWritingTo: tmp) } catch { throw fail(error) }
        do {
            try body(h)
            try h.synchronize()
            try h.close()
        } catch {
            try? h.close()
            throw fail(error)
        }
        if rename(tmp.path, url.path) != 0 {
            let reason = String(cString: strerror(errno))
            try? fm.removeItem(at: tmp)
            throw WriteError(path: url.path, reason: reason)
        }
    }

    public static func write(_ text: String, to url: URL) throws {
        try write(Array(text.utf8), to: url)
    }

    /// Builds a directory under a temporary sibling name, then renames it into place
    /// (replacing an existing directory only after the new one is complete).
    public static func writeDirectory(_ url: URL, _ fill: (URL) throws -> Void) throws {
        let fm = FileManager.default
        let parent = url.deletingLastPathComponent()
        try? fm.createDirectory(at: parent, withIntermediateDirectories: true)
        let tmp = parent.appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())")
        try? fm.removeItem(at: tmp)
        do {
            try fm.createDirectory(at: tmp, withIntermediateDirectories: false)
            try fill(tmp)
        } catch {
            try? fm.removeItem(at: tmp)
            throw error
        }
        var old: URL? = nil
        if fm.fileExists(atPath: url.path) {
            let o = parent.appendingPathComponent(".\(url.lastPathComponent).old-\(getpid())")
            try? fm.removeItem(at: o)
            if rename(url.path, o.path) != 0 {
                try? fm.removeItem(at: tmp)
                throw WriteError(path: url.path, reason: String(cString: strerror(errno)))
            }
            old = o
        }
        if rename(tmp.path, url.path) != 0 {
            let reason = String(cString: strerror(errno))
            if let old { _ = rename(old.path, url.path) }
            throw WriteError(path: url.path, reason: reason)
        }
        if let old { try? fm.removeItem(at: old) }
    }
}

public struct WriteError: Error, CustomStringConvertible, Equatable {
    public let path: String
    public let reason: String
    public var description: String { "\(path): cannot write: \(reason)" }
}
