import Foundation
import XCTest
@testable import Tensor

final class ZZScratchBench: XCTestCase {
    func testPhases() throws {
        try XCTSkipUnless(ProcessInfo.processInfo.environment["LORA_BENCH"] == "1")
        var rng = RNG(seed: 77)
        let B = 4, T = 256, nH = 9, nKV = 3, hd = 64
        let q = randn([B, T, nH, hd], &rng), k = randn([B, T, nKV, hd], &rng)
        let v = randn([B, T, nKV, hd], &rng)
        let out = Tensor(q.shape), probs = Tensor([B, nH, T, T])
        let ldq = nH*hd, ldk = nKV*hd, rep = 3
        func time(_ name: String, _ body: () -> Void) {
            body()
            var best = Double.infinity
            for _ in 0..<10 {
                let t0 = DispatchTime.now().uptimeNanoseconds
                body()
                best = min(best, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
            }
            print(name, String(format: "%.2f ms", best))
        }
        time("QK gemms") {
            for b in 0..<B { for h in 0..<nH { let g = h / rep
                sgemm(transB: true, M: T, N: T, K: hd, alpha: 0.125, A: q.data + b*T*ldq + h*hd, lda: ldq,
                      B: k.data + b*T*ldk + g*hd, ldb: ldk, C: probs.data + (b*nH+h)*T*T, ldc: T) } }
        }
        let saved = probs.clone()
        time("softmax parallel") {
            probs.copy(from: saved)
            Parallel.chunks(B*nH*T, grain: 16) { rows in for r in rows { Attention.maskedSoftmaxRow(probs.data + r*T, allowed: r % T + 1, width: T, keyMask: nil) } }
        }
        time("copy only") { probs.copy(from: saved) }
        time("softmax serial") {
            probs.copy(from: saved)
            for r in 0..<B*nH*T { Attention.maskedSoftmaxRow(probs.data + r*T, allowed: r % T + 1, width: T, keyMask: nil) }
        }
        time("QK gemms parallel bh") {
            Parallel.forEach(B*nH) { bh in let b = bh / nH, h = bh % nH; let g = h / rep
                sgemm(transB: true, M: T, N: T, K: hd, alpha: 0.125, A: q.data + b*T*ldq + h*hd, lda: ldq,
                      B: k.data + b*T*ldk + g*hd, ldb: ldk, C: probs.data + (b*nH+h)*T*T, ldc: T) }
        }
        time("QK gemms causal blocks 64") {
            for b in 0..<B { for h in 0..<nH { let g = h / rep
              var i0 = 0
              while i0 < T { let i1 = min(T, i0 + 64)
                sgemm(transB: true, M: i1 - i0, N: i1, K: hd, alpha: 0.125, A: q.data + (b*T+i0)*ldq + h*hd, lda: ldq,
                      B: k.data + b*T*ldk + g*hd, ldb: ldk, C: probs.data + (b*nH+h)*T*T + i0*T, ldc: T)
                i0 = i1 } } }
        }
        time("QK gemms causal blocks 128") {
            for b in 0..<B { for h in 0..<nH { let g = h / rep
              var i0 = 0
              while i0 < T { let i1 = min(T, i0 + 128)
                sgemm(transB: true, M: i1 - i0, N: i1, K: hd, alpha: 0.125, A: q.data + (b*T+i0)*ldq + h*hd, lda: ldq,
                      B: k.data + b*T*ldk + g*hd, ldb: ldk, C: probs.data + (b*nH+h)*T*T + i0*T, ldc: T)
                i0 = i1 } } }
        }
        time("PV gemms causal blocks 64") {
            for b in 0..<B { for h in 0..<nH { let g = h / rep
              var i0 = 0
              while i0 < T { let i1 = min(T, i0 + 64)
                sgemm(M: i1 - i0, N: hd, K: i1, A: probs.data + (b*nH+h)*T*T + i0*T, lda: T, B: v.data + b*T*ldk + g*hd, ldb: ldk,
                      C: out.data + (b*T+i0)*ldq + h*hd, ldc: ldq)
                i0 = i1 } } }
        }
        time("PV gemms") {
            for b in 0..<B { for h in 0..<nH { let g = h / rep
                sgemm(M: T, N: hd, K: T, A: probs.data + (b*nH+h)*T*T, lda: T, B: v.data + b*T*ldk + g*hd, ldb: ldk,
                      C: out.data + b*T*ldq + h*hd, ldc: ldq) } }
        }
    }
}
