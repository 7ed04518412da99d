import Foundation
import XCTest

// Helpers the test targets share (a plain target, so LLaMATests and loraTests can both use it).
// An extension rather than an XCTestCase subclass: Linux test discovery does not look for test
// classes whose superclass lives in another module.

extension XCTestCase {
    /// A new empty folder under the system's temporary directory, named after the test class,
    /// removed (with everything in it) when the current test ends, passed or failed.
    public func tempDir() throws -> URL {
        let u = FileManager.default.temporaryDirectory
            .appendingPathComponent("lora-\(type(of: self))-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: u, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: u) }
        return u
    }
}

/// A huggingface_hub cache entry as the hub writes it: `root/models--ORG--NAME/` with
/// refs/main naming a snapshot, the snapshot's files symlinked into blobs/, and a stale
/// snapshot that refs/main does not name (a resolver must follow refs/main, not pick one).
public enum HubCacheFixture {
    public static let hash = "0123456789abcdef0123456789abcdef01234567"

    /// Copies every file of the model folder `model` into the entry for ORG/NAME under `root`.
    public static func make(_ root: URL, org: String, name: String, from model: URL) throws {
        let fm = FileManager.default
        let repo = root.appendingPathComponent("models--\(org)--\(name)")
        let snap = repo.appendingPathComponent("snapshots/\(hash)")
        try fm.createDirectory(at: repo.appendingPathComponent("blobs"), withIntermediateDirectories: true)
        try fm.createDirectory(at: repo.appendingPathComponent("refs"), withIntermediateDirectories: true)
        try fm.createDirectory(at: snap, withIntermediateDirectories: true)
        try (hash + "\n").write(to: repo.appendingPathComponent("refs/main"), atomically: true, encoding: .utf8)
        try fm.createDirectory(at: repo.appendingPathComponent("snapshots/ffffffffffffffffffffffffffffffffffffffff"),
                               withIntermediateDirectories: true)
        for (i, f) in try fm.contentsOfDirectory(atPath: model.path).sorted().enumerated() {
            try fm.copyItem(at: model.appendingPathComponent(f), to: repo.appendingPathComponent("blobs/blob\(i)"))
            try fm.createSymbolicLink(atPath: snap.appendingPathComponent(f).path, withDestinationPath: "../../blobs/blob\(i)")
        }
    }
}
