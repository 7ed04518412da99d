import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The output folder of a training run, claimed before training starts so a run never learns
/// at its end that it cannot save:
/// - created if missing, and proven writable by writing and removing a probe file;
/// - locked by `.lora.lock` holding the owner's pid: a second run into the folder is refused
///   while the owner lives; a lock whose process is gone (kill -9) is taken over;
/// - a symlinked `trainer_log.jsonl` is refused (it would be followed out of the folder);
/// - temporaries a killed run left (`.checkpoint-N.tmp-*`, `.checkpoint-N.del-*`, `.X.tmp-*`)
///   are removed, and a checkpoint caught between its two renames (`.checkpoint-N.old-*` with
///   no `checkpoint-N`) is put back. Safe because we hold the lock.
public final class OutputFolder {
    public static let lockName = ".lora.lock"
    public let url: URL
    private var locked = false
    private let created: Bool

    public init(_ url: URL) throws {
        self.url = url
        let path = url.path
        var st = stat()
        if lstat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFDIR || (st.st_mode & S_IFMT) == S_IFLNK else {
                throw WriteError(path: path, reason: "exists and is not a folder")
            }
            created = false
        } else {
            do { try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true) } catch {
                throw WriteError(path: path, reason: Self.reason(creating: url, error))
            }
            created = true
        }
        do {
            try probe()
            try lock()
            try Self.refuseSymlink(url.appendingPathComponent(TrainingLog.fileName))
            Self.cleanStale(in: url)
        } catch {
            release()
            throw error
        }
    }

    deinit { release() }

    /// Removes the lock (if ours) and, when this run created the folder and left nothing in
    /// it, the folder: a run that fails before writing anything leaves no trace.
    public func release() {
        if locked {
            unlink(url.appendingPathComponent(Self.lockName).path)
            locked = false
        }
        if created, let items = try? FileManager.default.contentsOfDirectory(atPath: url.path), items.isEmpty {
            rmdir(url.path)
        }
    }

    /// Why a folder could not be created: the errno of the first missing ancestor's parent,
    /// so a read-only parent says "permission denied".
    static func reason(creating url: URL, _ error: Error) -> String {
        var dir = url
        while !FileManager.default.fileExists(atPath: dir.deletingLastPathComponent().path), dir.pathComponents.count > 1 {
            dir = dir.deletingLastPathComponent()
        }
        if mkdir(dir.path, 0o755) != 0 { return posixReason(errno) }
        rmdir(dir.path)
        return ioReason(error)
    }

    private func probe() throws {
        let p = url.appendingPathComponent(".lora.probe-\(getpid())").path
        let fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw WriteError(path: url.path, reason: "folder is not writable: \(posixReason(errno))") }
        let ok = Glibc.write(fd, "probe", 5) == 5
        let err = errno
        close(fd)
        unlink(p)
        guard ok else { throw WriteError(path: url.path, reason: "folder is not writable: \(posixReason(err))") }
    }

    private func lock() throws {
        let p = url.appendingPathComponent(Self.lockName).path
        for _ in 0..<3 {
            let fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
            if fd >= 0 {
                let text = "\(getpid())\n" + (Self.processStart(getpid()).map { "start \($0)\n" } ?? "")
                _ = Glibc.write(fd, text, text.utf8.count)
                fsync(fd)
                close(fd)
                locked = true
                return
            }
            guard errno == EEXIST else { throw WriteError(path: p, reason: "cannot create the lock file: \(posixReason(errno))") }
            let lines = ((try? String(contentsOfFile: p, encoding: .utf8)) ?? "").split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            let owner = lines.first.flatMap { Int32($0) }
            // The owner's start time guards against a reused pid (after a reboot, or a wrapped
            // pid counter): a live process that started at another time is not the owner.
            let start = lines.dropFirst().first { $0.hasPrefix("start ") }.map { String($0.dropFirst(6)) }
            if let owner, owner > 0, owner != getpid(), kill(owner, 0) == 0 || errno == EPERM,
               start == nil || Self.processStart(owner) == nil || Self.processStart(owner) == start {
                throw WriteError(path: url.path, reason: "in use by another lora process (pid \(owner), lock file \(p)); wait for it or choose another output_dir")
            }
            // The owner is gone (or the lock is unreadable or ours): a stale lock, taken over.
            unlink(p)
        }
        throw WriteError(path: p, reason: "cannot take the lock file (another process keeps recreating it)")
    }

    /// The start time of process `pid` (field 22 of /proc/PID/stat, with the boot id, so it is
    /// unique across reboots), or nil where /proc is not available.
    static func processStart(_ pid: Int32) -> String? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 19 else { return nil }   // fields[0] is field 3 (state)
        let boot = (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
        return "\(fields[19])@\(boot)"
    }

    /// A symlink at a path we append to or replace is refused, not followed.
    public static func refuseSymlink(_ file: URL) throws {
        var st = stat()
        if lstat(file.path, &st) == 0, (st.st_mode & S_IFMT) == S_IFLNK {
            throw WriteError(path: file.path, reason: "is a symbolic link; refusing to follow it out of the output folder (remove it)")
        }
    }

    /// Removes what a killed run left behind; see the type's comment.
    public static func cleanStale(in dir: URL) {
        let fm = FileManager.default
        guard let names = try? fm.contentsOfDirectory(atPath: dir.path) else { return }
        for n in names where n.hasPrefix(".checkpoint-") {
            guard let r = n.range(of: ".old-") else { continue }
            let name = String(n.dropFirst()[..<r.lowerBound])   // checkpoint-N
            let target = dir.appendingPathComponent(name)
            if !fm.fileExists(atPath: target.path) { _ = rename(dir.appendingPathComponent(n).path, target.path) }
        }
        for n in (try? fm.contentsOfDirectory(atPath: dir.path)) ?? [] where n.hasPrefix(".") {
            if n.contains(".tmp-") || (n.hasPrefix(".checkpoint-") && (n.contains(".del-") || n.contains(".old-"))) || n.hasPrefix(".lora.probe-") {
                try? fm.removeItem(at: dir.appendingPathComponent(n))
            }
        }
    }

    /// The files a checkpoint-N folder holds when complete.
    public static let checkpointFiles = ["adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json"]

    /// The complete `checkpoint-N` with the largest N, for `resume_from_checkpoint: latest`.
    public static func latestCheckpoint(in dir: URL) -> URL? {
        let fm = FileManager.default
        let names = (try? fm.contentsOfDirectory(atPath: dir.path)) ?? []
        let steps = names.compactMap { n -> Int? in
            guard n.hasPrefix("checkpoint-"), let s = Int(n.dropFirst("checkpoint-".count)), s >= 0, "checkpoint-\(s)" == n else { return nil }
            return s
        }.sorted(by: >)
        for s in steps {
            let d = dir.appendingPathComponent("checkpoint-\(s)")
            if checkpointFiles.allSatisfy({ fm.fileExists(atPath: d.appendingPathComponent($0).path) }) { return d }
        }
        return nil
    }
}
