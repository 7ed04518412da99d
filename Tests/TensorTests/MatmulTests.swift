import Foundation
import XCTest
@testable import Tensor

/// `CPUBackend.matmul` / `matmulBackwardInput` with every available `KernelFamily` against the
/// scalar Double reference, and the C kernel families against the OpenBLAS path, for every
/// weight format (f32, bf16, int8 rows), accumulate on and off, on shapes that are not multiples of any blocking.
///
/// Tolerance: |C - C_ref| <= 1e-5 * sum |a| |b| over the output's terms (+ |C| before an
/// accumulate), element by element; the reference is exact to well below that, so this bounds
/// each kernel's own Float rounding (every kernel here stays within 1e-6 of it on these shapes).
final class MatmulTests: XCTestCase {
    static let rtol: Float = 1e-5

    /// (M, N, K), chosen against the AVX-512 blocking: GEMM micro-kernel 8 rows x 48 columns
    /// (M % 8 and column counts % 48 and % 16 left over), depth in blocks of at most 768 (the
    /// forward's K = 1000, the backward's N = 800 and 1000 take two), column blocks of at most
    /// 576 KiB / depth (N = 800 at K = 300 takes two); forward M <= 16 goes to the small-M kernel
    /// (4 weight rows x 4 rows of x, K in 16s for f32 and 64s for int8, in segments of 4096).
    /// Empty dimensions and the two-worker splits (2 M N K >= 2^22 flops: 37 x 800 x 300 for the
    /// GEMM, 11 x 403 x 520 for the small-M kernel) are covered too.
    static let shapes: [(Int, Int, Int)] = [
        (1, 1, 1), (1, 5, 7), (1, 37, 600), (2, 19, 33), (3, 17, 33), (3, 300, 600),
        (4, 64, 16), (5, 1000, 300), (7, 48, 16), (8, 50, 100), (9, 50, 100), (13, 97, 257),
        (16, 33, 70), (2, 9, 4200), (5, 30, 1000), (11, 403, 520),
        (3, 5, 0), (20, 5, 0), (16, 0, 8), (0, 4, 4),
        (17, 770, 40), (20, 60, 1000), (20, 1000, 500), (23, 49, 65),
        (37, 800, 300), (64, 193, 300), (100, 49, 513),
        // Depths of whole 32-value blocks, for the GGUF block formats.
        (1, 40, 32), (3, 70, 96), (9, 33, 64), (17, 100, 320), (40, 300, 544), (2, 20, 4096),
    ]

    func randomWeights(N: Int, K: Int, _ rng: inout RNG) -> [(String, Weight)] {
        let w = randn([N, K], &rng, scale: 0.5)
        // Block formats (GGUF Q8_0, Q4_x) hold rows of whole 32-value blocks.
        return WeightFormats.all.filter { !($0 is GGUFBlockFormat) || K % GGUFBlockFormat.blockSize == 0 }
            .map { ($0.name, Weight.make($0, from: w, pool: testPool)) }
    }

    /// Families that can run here (an AVX-512 one is simply absent on other CPUs).
    var kernels: [KernelFamily] { KernelFamily.available }

    static var backends: [KernelFamily: CPUBackend] = [:]
    /// A two-worker backend of family `k`.
    func backend(_ k: KernelFamily) -> CPUBackend {
        if let b = Self.backends[k] { return b }
        // The f32 decoding arithmetic: these tests hold every path to the f32 reference;
        // Q8DecodeTests covers the integer one.
        let b = CPUBackend(family: k, pool: testPool, decoding: .f32)
        Self.backends[k] = b
        return b
    }

    /// Checks `got` against `ref` within rtol * bound, and that the `extra` values after the
    /// first `count` (a canary) were left alone.
    func assertWithinBound(_ got: Tensor, _ ref: Tensor, _ bound: Tensor, count: Int,
                           rtol: Float = MatmulTests.rtol, _ what: String,
                           file: StaticString = #filePath, line: UInt = #line) {
        var failures = 0
        for i in 0..<count {
            let err = abs(got[i] - ref[i])
            if !(err <= rtol * bound[i]) {
                failures += 1
                if failures <= 3 {
                    XCTFail("\(what): element \(i): \(got[i]) vs \(ref[i]) (bound \(bound[i]))", file: file, line: line)
                }
            }
        }
        for i in count..<got.count where got[i] != 1234.5 {
            XCTFail("\(what): wrote past the end at \(i)", file: file, line: line)
            break
        }
    }

    /// Output buffer of `count` values (random when accumulating, else a garbage fill) plus a canary.
    func output(count: Int, accumulate: Bool, _ rng: inout RNG) -> Tensor {
        let t = Tensor([count + 64])
        for i in 0..<t.count { t[i] = i < count ? (accumulate ? rng.normal() : .nan) : 1234.5 }
        return t
    }

    func testForwardMatchesReference() {
        var rng = RNG(seed: 70)
        for (M, N, K) in Self.shapes {
            let x = randn([M, K], &rng)
            for (wname, w) in randomWeights(N: N, K: K, &rng) {
                for accumulate in [false, true] {
                    let y0 = output(count: M * N, accumulate: accumulate, &rng)
                    let ref = y0.clone(), bound = Tensor([M * N + 64])
                    Reference.Matmul.forward(y: ref.data, x: x.data, w: w, M: M, accumulate: accumulate,
                                             bound: bound.data)
                    var outs: [KernelFamily: Tensor] = [:]
                    for k in kernels {
                        let y = y0.clone()
                        backend(k).matmul(y: y.data, x: x.data, w: w, M: M, accumulate: accumulate,
                                          scratch: MatmulScratch(capacity: max(1 << 12, 2 * K)))
                        let what = "forward \(k) \(wname) M=\(M) N=\(N) K=\(K) acc=\(accumulate)"
                        assertWithinBound(y, ref, bound, count: M * N, what)
                        outs[k] = y
                    }
                    for (k, fast) in outs where k != .blas {
                        assertWithinBound(fast, outs[.blas]!, bound, count: M * N, rtol: 2 * Self.rtol,
                                          "forward \(k) vs blas \(wname) M=\(M) N=\(N) K=\(K) acc=\(accumulate)")
                    }
                }
            }
        }
    }

    func testBackwardInputMatchesReference() {
        var rng = RNG(seed: 71)
        for (M, N, K) in Self.shapes {
            let dy = randn([M, N], &rng)
            for (wname, w) in randomWeights(N: N, K: K, &rng) {
                for accumulate in [false, true] {
                    let dx0 = output(count: M * K, accumulate: accumulate, &rng)
                    let ref = dx0.clone(), bound = Tensor([M * K + 64])
                    Reference.Matmul.backwardInput(dx: ref.data, dy: dy.data, w: w, M: M,
                                                   accumulate: accumulate, bound: bound.data)
                    var outs: [KernelFamily: Tensor] = [:]
                    for k in kernels {
                        let dx = dx0.clone()
                        backend(k).matmulBackwardInput(dx: dx.data, dy: dy.data, w: w, M: M, accumulate: accumulate,
                                                       scratch: MatmulScratch(capacity: max(1 << 12, 2 * K)))
                        let what = "backward \(k) \(wname) M=\(M) N=\(N) K=\(K) acc=\(accumulate)"
                        assertWithinBound(dx, ref, bound, count: M * K, what)
                        outs[k] = dx
                    }
                    for (k, fast) in outs where k != .blas {
                        assertWithinBound(fast, outs[.blas]!, bound, count: M * K, rtol: 2 * Self.rtol,
                                          "backward \(k) vs blas \(wname) M=\(M) N=\(N) K=\(K) acc=\(accumulate)")
                    }
                }
            }
        }
    }

    /// The model's own shapes (SmolLM2-135M projections) at small M, both directions, every
    /// family against OpenBLAS and the reference.
    func testRealShapesAgainstBLAS() throws {
        var rng = RNG(seed: 72)
        for (N, K) in [(576, 576), (192, 576), (1536, 576), (576, 1536)] {
            for M in [1, 7, 45] {
                let x = randn([M, K], &rng), dy = randn([M, N], &rng)
                for (wname, w) in randomWeights(N: N, K: K, &rng) {
                    let yr = Tensor([M * N + 64]), yBound = Tensor([M * N + 64])
                    Reference.Matmul.forward(y: yr.data, x: x.data, w: w, M: M, accumulate: false, bound: yBound.data)
                    let dxr = Tensor([M * K + 64]), dxBound = Tensor([M * K + 64])
                    Reference.Matmul.backwardInput(dx: dxr.data, dy: dy.data, w: w, M: M, accumulate: false, bound: dxBound.data)
                    let s = MatmulScratch()
                    for k in kernels {
                        let y = Tensor([M * N + 64]), dx = Tensor([M * K + 64])
                        for i in M * N..<y.count { y[i] = 1234.5 }
                        for i in M * K..<dx.count { dx[i] = 1234.5 }
                        backend(k).matmul(y: y.data, x: x.data, w: w, M: M, accumulate: false, scratch: s)
                        backend(k).matmulBackwardInput(dx: dx.data, dy: dy.data, w: w, M: M, accumulate: false, scratch: s)
                        assertWithinBound(y, yr, yBound, count: M * N, "forward \(k) \(wname) M=\(M) \(N)x\(K)")
                        assertWithinBound(dx, dxr, dxBound, count: M * K, "backward \(k) \(wname) M=\(M) \(N)x\(K)")
                    }
                }
            }
        }
    }

    /// Each output element is computed by one worker in a fixed order: one and two workers give
    /// the same bits (resuming on a machine with another core count continues the same run).
    func testThreadCountDoesNotChangeBits() {
        var rng = RNG(seed: 74)
        // A packed GEMM, and decoding-sized products (M <= 16) large enough for the spinning
        // workers (>= 64 KB of weights).
        for (M, N, K) in [(37, 800, 300), (1, 1000, 512), (4, 300, 640)] {
        let x = randn([M, K], &rng), dy = randn([M, N], &rng)
        for (wname, w) in randomWeights(N: N, K: K, &rng) {
            for k in kernels {
                var ys: [[Float]] = [], dxs: [[Float]] = []
                for t in [1, 2, 3] {
                    let b = CPUBackend(family: k, pool: WorkerPool(threads: t), decoding: .f32)
                    let y = Tensor([M, N]), dx = Tensor([M, K])
                    b.matmul(y: y.data, x: x.data, w: w, M: M, accumulate: false, scratch: MatmulScratch())
                    b.matmulBackwardInput(dx: dx.data, dy: dy.data, w: w, M: M, accumulate: false, scratch: MatmulScratch())
                    ys.append(y.array); dxs.append(dx.array)
                }
                XCTAssertTrue(ys.allSatisfy { $0 == ys[0] }, "forward \(k) \(wname) M=\(M) differs across thread counts")
                XCTAssertTrue(dxs.allSatisfy { $0 == dxs[0] }, "backward \(k) \(wname) M=\(M) differs across thread counts")
            }
        }
        }
    }

    /// LORA_KERNELS picks a family; unknown or unavailable names are errors, not a silent fallback.
    func testFamilySelection() throws {
        XCTAssertTrue(KernelFamily.best.isAvailable)
        XCTAssertEqual(try KernelFamily.select(environment: [:]), KernelFamily.best)
        for k in kernels { XCTAssertEqual(try KernelFamily.select(environment: ["LORA_KERNELS": k.rawValue]), k) }
        XCTAssertThrowsError(try KernelFamily.select(environment: ["LORA_KERNELS": "sse9"]))
        for k in KernelFamily.allCases where !k.isAvailable {
            XCTAssertThrowsError(try KernelFamily.select(environment: ["LORA_KERNELS": k.rawValue]))
        }
    }

    // MARK: - Benchmark (LORA_BENCH=1)

    /// Best time per call over `reps` samples, in seconds; a sample runs `body` back to back for
    /// at least 20 ms (as in training, where the workers never go idle between matmuls; an idle
    /// virtual CPU takes a while to wake). It first waits 0.1 s: after a call, OpenBLAS's idle
    /// worker spins for ~2^28 cycles (OPENBLAS_THREAD_TIMEOUT) and would take CPU from whatever
    /// is timed next.
    func bestTime(reps: Int, _ body: () -> Void) -> Double {
        Thread.sleep(forTimeInterval: 0.1)
        func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) * 1e-9 }
        let t0 = now()
        body()
        let calls = max(1, Int((0.02 / max(now() - t0, 1e-6)).rounded(.up)))
        var best = Double.infinity
        for _ in 0..<reps {
            let t = now()
            for _ in 0..<calls { body() }
            best = min(best, (now() - t) / Double(calls))
        }
        return best
    }

    /// GFLOP/s of each real training shape (M = 4 x 256), AVX-512 vs OpenBLAS, f32 and int8,
    /// forward and backward; then decoding (M = 1): GB/s of weights read per shape with hot
    /// caches, and one token's worth of SmolLM2-135M projections (30 layers + lm_head, each
    /// weight read once from memory) per second.
    func testBenchmark() throws {
        guard ProcessInfo.processInfo.environment["LORA_BENCH"] == "1" else { throw XCTSkip("set LORA_BENCH=1") }
        let fast0 = KernelFamily.best, bench = CPUBackend(family: fast0, pool: .allCores)
        let blasB = CPUBackend(family: .blas, pool: .allCores)
        let reps = Int(ProcessInfo.processInfo.environment["LORA_BENCH_REPS"] ?? "") ?? 5
        print("\(KernelFamily.cpuDescription), family \(fast0), threads \(bench.pool.threads), repeats \(reps) (best of)")
        var rng = RNG(seed: 73)
        let M = 1024
        let s = MatmulScratch()
        for (N, K) in [(576, 576), (192, 576), (1536, 576), (576, 1536), (49152, 576)] {
            let x = randn([M, K], &rng), dy = randn([M, N], &rng)
            let y = Tensor([M, N]), dx = Tensor([M, K])
            let r = N > 10_000 ? max(1, reps / 2) : reps
            for (wname, w) in randomWeights(N: N, K: K, &rng) {
                let flops = 2 * Double(M * N * K)
                var line = String(format: "M=%d N=%5d K=%4d %-4@", M, N, K, wname)
                for (dir, run) in [("fwd", { (b: CPUBackend) in
                                       b.matmul(y: y.data, x: x.data, w: w, M: M, accumulate: false, scratch: s) }),
                                   ("bwd", { (b: CPUBackend) in
                                       b.matmulBackwardInput(dx: dx.data, dy: dy.data, w: w, M: M, accumulate: false,
                                                             scratch: s) })] {
                    let fast = flops / bestTime(reps: r) { run(bench) } * 1e-9
                    let blas = flops / bestTime(reps: r) { run(blasB) } * 1e-9
                    line += String(format: "  %@ %6.1f vs blas %6.1f GF/s (x%.2f)", dir, fast, blas, fast / blas)
                }
                print(line)
            }
        }
        // Decoding, one shape at a time (weights stay in cache between repeats when they fit).
        for (N, K) in [(576, 576), (192, 576), (1536, 576), (576, 1536), (49152, 576)] {
            let x = randn([1, K], &rng), y = Tensor([N])
            var line = String(format: "M=1    N=%5d K=%4d", N, K)
            for (wname, w) in randomWeights(N: N, K: K, &rng) {
                let bytes = Double(w.byteCount)
                let fast = bestTime(reps: reps) { bench.matmul(y: y.data, x: x.data, w: w, M: 1, accumulate: false, scratch: s) }
                let blas = bestTime(reps: reps) { blasB.matmul(y: y.data, x: x.data, w: w, M: 1, accumulate: false, scratch: s) }
                line += String(format: "  %@ %6.1f us %5.1f GB/s vs blas %6.1f us (x%.2f)", wname, fast * 1e6,
                               bytes / fast * 1e-9, blas * 1e6, blas / fast)
            }
            print(line)
        }
        // One decoding step's matmuls, every weight distinct so each is read from memory: 30
        // layers of projections plus a 49152 x 576 head of the same dtype (the model's own head
        // is f32). The time per step bounds decoding speed from the matmuls alone.
        let layerShapes = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
        for int8 in [true, false] {
            var ws: [Weight] = []
            for _ in 0..<30 {
                for (N, K) in layerShapes {
                    let w = randn([N, K], &rng, scale: 0.5)
                    ws.append(int8 ? Weight.make(WeightFormats.int8, from: w, pool: testPool) : .f32(w))
                }
            }
            let head = randn([49152, 576], &rng, scale: 0.5)
            ws.append(int8 ? Weight.make(WeightFormats.int8, from: head, pool: testPool) : .f32(head))
            let x = randn([1, 1536], &rng), y = Tensor([49152])
            let bytes = Double(ws.reduce(0) { $0 + $1.byteCount })
            var line = String(format: "decode step, %@ weights (%.0f MB):", int8 ? "int8" : "f32", bytes * 1e-6)
            for b in [bench, blasB] {
                let t = bestTime(reps: reps) {
                    for w in ws { b.matmul(y: y.data, x: x.data, w: w, M: 1, accumulate: false, scratch: s) }
                }
                line += String(format: "  %@ %.2f ms (%.0f tokens/s, %.1f GB/s)", b.family.rawValue, t * 1e3, 1 / t, bytes / t * 1e-9)
            }
            print(line)
        }
    }
}
