import XCTest
import CKernels
import CTestSupport

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

    /// The caller never waits for a worker that holds no task. Pinned to one CPU, the worker runs
    /// only when the caller is preempted: a pool whose caller waited for every worker to sign off
    /// took ~8 ms per job here (16 s for 2000), one that waits only for claimed tasks a few
    /// microseconds. The same happens, less starkly, whenever another process (`lora serve`'s
    /// HTTP threads and clients) takes one of two cores.
    func testCallerDoesNotWaitForAWorkerKeptOffItsCore() throws {
        guard lora_test_pin_one_cpu() >= 0 else { throw XCTSkip("no CPU affinity here") }
        defer { lora_test_unpin() }
        let pool = try XCTUnwrap(lora_pool_create(2))   // its worker shares the one CPU
        defer { lora_pool_destroy(pool) }
        let start = Date()
        for round in 0..<500 {
            XCTAssertEqual(run(pool, 16), [Int32](repeating: 1, count: 16), "round \(round)")
        }
        // Waiting on the worker: 500 x ~8 ms = 4 s. Not waiting: well under 0.1 s.
        XCTAssertLessThan(Date().timeIntervalSince(start), 1.0)
    }
}
