import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Every file `lora` writes goes through here: write to a temporary sibling, flush, rename.
/// A crash or Ctrl-C at any moment leaves either the old file or the new one, never half.
public enum AtomicFile {
    public static func write(_ bytes: [UInt8], to url: URL) throws {
        let dir = url.deletingLastPathComponent()
        let tmp = dir.appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())")
        // POSIX calls, so a failure reports errno ("permission denied"), and O_NOFOLLOW so a
        // symlink planted at the temporary name is not followed out of the folder.
        let fd = open(tmp.path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw WriteError(path: url.path, reason: posixReason(errno)) }
        var failure: Int32 = 0
        bytes.withUnsafeBytes { buf in
            var off = 0
            while off < buf.count {
                let w = Glibc.write(fd, buf.baseAddress! + off, buf.count - off)
                if w < 0 { if errno == EINTR { continue }; failure = errno; return }
                off += w
            }
        }
        if failure == 0, fsync(fd) != 0 { failure = errno }
        if close(fd) != 0, failure == 0 { failure = errno }
        if failure == 0, rename(tmp.path, url.path) != 0 { failure = errno }
        if failure != 0 {
            unlink(tmp.path)
            throw WriteError(path: url.path, reason: posixReason(failure))
        }
    }

    /// Streams a file too large to build in memory: `body` writes through the handle into the
    /// temporary sibling, which is flushed and renamed into place only when `body` returns.
    /// An error from `body` removes the temporary file and is rethrown (file-system errors as
    /// `WriteError`).
    public static func write(to url: URL, _ body: (FileHandle) throws -> Void) throws {
        let fm = FileManager.default
        let tmp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())")
        let fd = open(tmp.path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw WriteError(path: url.path, reason: posixReason(errno)) }
        func fail(_ error: Error) -> Error {
            try? fm.removeItem(at: tmp)
            let ns = error as NSError
            if ns.domain == NSCocoaErrorDomain || ns.domain == NSPOSIXErrorDomain {
                return WriteError(path: url.path, reason: ioReason(error))
            }
            return error
        }
        let h = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        do {
            try body(h)
            try h.synchronize()
            try h.close()
        } catch {
            try? h.close()
            throw fail(error)
        }
        if rename(tmp.path, url.path) != 0 {
            let reason = posixReason(errno)
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
            guard mkdir(tmp.path, 0o755) == 0 else { throw WriteError(path: url.path, reason: posixReason(errno)) }
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
                throw WriteError(path: url.path, reason: posixReason(errno))
            }
            old = o
        }
        if rename(tmp.path, url.path) != 0 {
            let reason = posixReason(errno)
            if let old { _ = rename(old.path, url.path) }
            throw WriteError(path: url.path, reason: reason)
        }
        if let old { try? fm.removeItem(at: old) }
        // The renames are durable only once the parent directory is synced.
        let dfd = open(parent.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 { _ = fsync(dfd); close(dfd) }
    }
}

public struct WriteError: Error, CustomStringConvertible, Equatable {
    public let path: String
    public let reason: String
    public init(path: String, reason: String) { self.path = path; self.reason = reason }
    public var description: String { "\(path): cannot write: \(reason)" }
}
