import Dispatch
import CKernels

/// The worker threads of one execution context. Ops take the pool they run on as an argument:
/// there is no process-wide thread setting, so two contexts (a test at 1 thread beside one at
/// 2, a server's requests) never see each other's choice.
///
/// Every op splits work so that each output element is computed by one worker, in an order
/// that does not depend on how many workers there are: results are bit-identical at any
/// thread count (a resumed run on another machine continues the same numbers).
public struct WorkerPool: Sendable, Equatable {
    public let threads: Int

    public init(threads: Int) { self.threads = max(1, threads) }

    /// One thread: tests and small jobs.
    public static let serial = WorkerPool(threads: 1)

    /// As many workers as the machine has cores.
    public static var allCores: WorkerPool { WorkerPool(threads: ProcessInfoCores.count) }

    /// Runs `body(range)` over disjoint chunks of `0..<n`. Small `n` (below `grain`) stays serial.
    @inline(__always)
    public func chunks(_ n: Int, grain: Int = 1, _ body: (Range<Int>) -> Void) {
        let t = min(threads, max(1, n / max(grain, 1)))
        if t <= 1 || n <= 1 { body(0..<n); return }
        let per = (n + t - 1) / t
        withoutActuallyEscaping(body) { body in
            DispatchQueue.concurrentPerform(iterations: t) { i in
                let lo = i * per, hi = min(n, lo + per)
                if lo < hi { body(lo..<hi) }
            }
        }
    }

    /// Runs `body(range)` over `0..<n` cut into blocks of exactly `block` (the last may be
    /// shorter), the blocks spread over the workers. Unlike `chunks`, the pieces do not depend on
    /// the thread count: a library call made per piece (OpenBLAS, whose summation order depends
    /// on the shape it is given) returns the same bits at any thread count.
    @inline(__always)
    public func blocks(_ n: Int, block: Int, _ body: (Range<Int>) -> Void) {
        let b = max(1, block), count = (n + b - 1) / b
        chunks(count) { r in
            for i in r { body(i * b ..< min(n, (i + 1) * b)) }
        }
    }

    /// Runs `body(slot, range)` over disjoint chunks of `0..<n`, as `chunks` does; `slot` is
    /// in 0..<threads and no two concurrent calls share one, so a caller can give each its own
    /// part of a scratch buffer of `threads` parts.
    @inline(__always)
    public func slots(_ n: Int, _ body: (Int, Range<Int>) -> Void) {
        let t = min(threads, max(1, n))
        if t <= 1 || n <= 1 { body(0, 0..<n); return }
        let per = (n + t - 1) / t
        withoutActuallyEscaping(body) { body in
            DispatchQueue.concurrentPerform(iterations: t) { i in
                let lo = i * per, hi = min(n, lo + per)
                if lo < hi { body(i, lo..<hi) }
            }
        }
    }

    /// Runs `body(i)` for each i in 0..<n, distributed over the workers.
    @inline(__always)
    public func forEach(_ n: Int, _ body: (Int) -> Void) {
        chunks(n) { r in for i in r { body(i) } }
    }
}

public enum ProcessInfoCores {
    /// The CPUs this process may run on (its affinity mask on Linux, as `nproc` counts), not
    /// every CPU of the host: in a container or under `taskset` the host may have many more.
    public static var count: Int { max(1, Int(lora_cpu_count())) }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
