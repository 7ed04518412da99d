import XCTest
import CKernels

/// The decoding step's spinning pool (spinpool.c): every task of a job runs exactly once, and a
/// job after a long pause (workers asleep after spinning) still wakes them and completes. A
/// lost wake-up hangs the job.
final class SpinPoolTests: XCTestCase {
    final class Counts { var hits: [Int32]; init(_ n: Int) { hits = [Int32](repeating: 0, count: n) } }

    func run(_ pool: OpaquePointer, _ n: Int) -> [Int32] {
        let c = Counts(n)
        c.hits.withUnsafeMutableBufferPointer { b in
            lora_pool_run(pool, n, { ctx, i in
                ctx!.assumingMemoryBound(to: Int32.self)[i] += 1   // each index its own slot
            }, UnsafeMutableRawPointer(b.baseAddress!))
        }
        return c.hits
    }

    func testEveryTaskOnceAcrossSleeps() throws {
        let pool = try XCTUnwrap(lora_pool_create(2))
        defer { lora_pool_destroy(pool) }
        for round in 0..<200 {
            let n = 1 + round % 37
            XCTAssertEqual(run(pool, n), [Int32](repeating: 1, count: n), "round \(round)")
            if round % 50 == 49 { usleep(20_000) }   // past the spinning: the workers sleep
        }
    }
}
