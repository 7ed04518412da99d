import Foundation

/// A scratch folder for this process: parsers that take a path get the fuzz input as a file,
/// exactly as the CLI hands them one.
public let scratch: URL = {
    let u = URL(fileURLWithPath: NSTemporaryDirectory())
        .appendingPathComponent("lora-fuzz-\(getpid())")
    try? FileManager.default.createDirectory(at: u, withIntermediateDirectories: true)
    return u
}()

/// Writes `bytes` to `name` in the scratch folder (replacing it) and returns its URL.
@discardableResult
public func put(_ bytes: UnsafeRawBufferPointer, _ name: String, in dir: URL = scratch) -> URL {
    let u = dir.appendingPathComponent(name)
    _ = FileManager.default.createFile(atPath: u.path, contents: Data(bytes))
    return u
}

public func input(_ data: UnsafePointer<UInt8>, _ size: Int) -> UnsafeRawBufferPointer {
    UnsafeRawBufferPointer(start: data, count: size)
}

/// Runs `body`; a thrown error is the expected outcome for most inputs (crashes, hangs and
/// runaway allocations are what libFuzzer reports).
public func expectErrors(_ body: () throws -> Void) {
    do { try body() } catch { _ = "\(error)" }   // the message is built, as the CLI prints it
}

/// Joins the files of a multi-file input; Fuzz/make_corpus.py writes seeds with it.
public let separator: [UInt8] = [0, 0] + Array("FUZZ".utf8) + [0, 0]

/// The input cut at `separator` into exactly `n` files (missing ones empty, extra separators
/// left inside the last).
public func parts(_ bytes: UnsafeRawBufferPointer, _ n: Int) -> [UnsafeRawBufferPointer] {
    var out: [UnsafeRawBufferPointer] = []
    var start = 0, i = 0
    let s = separator.count
    while out.count < n - 1, i + s <= bytes.count {
        if bytes[i] == 0, separator.withUnsafeBytes({ memcmp($0.baseAddress!, bytes.baseAddress! + i, s) }) == 0 {
            out.append(UnsafeRawBufferPointer(rebasing: bytes[start..<i]))
            i += s; start = i
        } else { i += 1 }
    }
    out.append(UnsafeRawBufferPointer(rebasing: bytes[start...]))
    while out.count < n { out.append(UnsafeRawBufferPointer(start: nil, count: 0)) }
    return out
}

/// A fresh empty folder in the scratch folder (model and checkpoint folders are rebuilt for
/// every input, so a file from the previous one never leaks into the next).
public func folder(_ name: String) -> URL {
    let u = scratch.appendingPathComponent(name)
    try? FileManager.default.removeItem(at: u)
    try? FileManager.default.createDirectory(at: u, withIntermediateDirectories: true)
    return u
}

/// Tests/Fixtures, found from this file's place in the repository.
public let fixtures = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("Tests/Fixtures")

/// Tensors past this many elements are not converted: the check of sizes against the file is
/// what is fuzzed, and converting a large valid tensor only slows the run.
public let maxConvertedElements = 1 << 20
