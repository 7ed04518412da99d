import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A read-only memory-mapped file. Checkpoints are mapped, not read, so loading a model
/// costs no second copy of the file in memory.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let size: Int
    public let base: UnsafeRawPointer

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw CheckpointError.unreadable(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw CheckpointError.unreadable(path: path, reason: String(cString: strerror(errno))) }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            throw CheckpointError.unreadable(path: path, reason: "is a directory, expected a file")
        }
        size = Int(st.st_size)
        if size == 0 {
            base = UnsafeRawPointer(UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 64))
            isEmptyAllocation = true
            return
        }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw CheckpointError.unreadable(path: path, reason: "mmap failed: \(String(cString: strerror(errno)))")
        }
        base = UnsafeRawPointer(p)
        isEmptyAllocation = false
    }

    private let isEmptyAllocation: Bool

    deinit {
        if isEmptyAllocation { UnsafeMutableRawPointer(mutating: base).deallocate() }
        else { munmap(UnsafeMutableRawPointer(mutating: base), size) }
    }

    /// Drops the pages wholly inside `range` from this process's resident memory once their
    /// bytes have been converted into the model (the mapping is read-only and private, so a
    /// later read faults them in again from the file): loading then never holds a converted
    /// tensor and its source pages at once.
    public func evict(_ range: Range<Int>) {
        guard !isEmptyAllocation else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let lo = (range.lowerBound + page - 1) / page * page, hi = min(range.upperBound, size) / page * page
        guard hi > lo else { return }
        _ = madvise(UnsafeMutableRawPointer(mutating: base + lo), hi - lo, Int32(MADV_DONTNEED))
    }

    public func bytes(_ range: Range<Int>) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base + range.lowerBound, count: range.count)
    }
}
