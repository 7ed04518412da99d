import Dispatch

/// Splits `0..<n` into `parts` contiguous chunks and runs them on all cores.
/// Element-wise ops use it so both cores are busy; BLAS calls thread themselves.
public enum Parallel {
    /// Number of worker threads our own kernels use; set once at start-up from config.
    nonisolated(unsafe) public static var threads: Int = ProcessInfoCores.count

    /// Runs `body(range)` over disjoint chunks of `0..<n`. Small `n` (below `grain`) stays serial.
    @inline(__always)
    public static func chunks(_ n: Int, grain: Int = 1, _ body: (Range<Int>) -> Void) {
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

    /// Runs `body(i)` for each i in 0..<n, distributed over the worker threads.
    @inline(__always)
    public static func forEach(_ n: Int, _ body: (Int) -> Void) {
        chunks(n) { r in for i in r { body(i) } }
    }
}

public enum ProcessInfoCores {
    public static var count: Int {
        #if os(Linux)
        let n = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        #else
        let n = Int(sysconf(_SC_NPROCESSORS_ONLN))
        #endif
        return max(1, n)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
