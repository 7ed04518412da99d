import Foundation
import XCTest
@testable import LLaMA
import Tensor

/// Committed fixtures written by scripts/make_reference.py (transformers + PEFT).
enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures")
    static func model(_ name: String) -> URL { root.appendingPathComponent(name) }
    static func reference(_ name: String) -> URL { root.appendingPathComponent("reference").appendingPathComponent(name) }
    static func json(_ name: String) throws -> JSON { try JSON.parse(contentsOf: reference(name)) }
    static func tensors(_ name: String) throws -> SafeTensorsFile { try SafeTensorsFile(path: reference(name).path) }
}

extension JSON {
    var ints32: [Int32] { (array ?? []).compactMap { $0.int.map(Int32.init) } }
}

/// Element-wise comparison with a named tolerance: |a - b| <= abs + rel * |b|.
func assertClose(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int, abs absTol: Float,
                 rel: Float = 0, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
    var worst: Float = 0, worstAt = -1
    for i in 0..<count {
        let d = Swift.abs(a[i] - b[i]) - rel * Swift.abs(b[i])
        if !(d <= absTol) && (d > worst || worstAt < 0 || d.isNaN) { worst = d; worstAt = i }
    }
    if worstAt >= 0 {
        XCTFail("\(what): element \(worstAt) is \(a[worstAt]), expected \(b[worstAt]) (tolerance \(absTol) abs + \(rel) rel)", file: file, line: line)
    }
}

/// The worker pool and CPU context the model tests run on: two workers, so threaded splits are
/// exercised; the kernel family is the CPU's best unless LORA_KERNELS names another.
let testPool = WorkerPool(threads: 2)
let testCtx: ExecutionContext = try! ExecutionContext.cpu(threads: min(2, ProcessInfoCores.count), environment: ProcessInfo.processInfo.environment)
