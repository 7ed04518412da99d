import Foundation
import XCTest
@testable import Tensor

final class SwiGLUTests: XCTestCase {
    /// silu(0) = 0, silu(x) -> x for large x, silu(x) -> 0 for very negative x; h = silu * up.
    func testHandValues() {
        let gate = Tensor([5], [0, 1, 20, -100, -1])
        let up = Tensor([5], [7, 2, 0.5, 3, 1])
        let h = Tensor([5])
        SwiGLU.forward(pool: testPool, h: h.data, gate: gate.data, up: up.data, count: 5)
        XCTAssertEqual(h[0], 0)
        XCTAssertEqual(h[1], Float(2 / (1 + Foundation.exp(-1.0))), accuracy: 1e-7)
        XCTAssertEqual(h[2], 10, accuracy: 1e-5)
        XCTAssertEqual(h[3], 0, accuracy: 1e-30)
        XCTAssertEqual(h[4], Float(-1 / (1 + Foundation.exp(1.0))), accuracy: 1e-7)
    }

    /// Against the libm reference on a length with a SIMD tail, forward and backward.
    func testMatchesReference() {
        var rng = RNG(seed: 40)
        let n = 4099
        let gate = randn([n], &rng, scale: 4), up = randn([n], &rng), dh = randn([n], &rng)
        let h = Tensor([n]), hRef = Tensor([n])
        SwiGLU.forward(pool: testPool, h: h.data, gate: gate.data, up: up.data, count: n)
        Reference.SwiGLU.forward(h: hRef.data, gate: gate.data, up: up.data, count: n)
        assertClose(h, hRef, atol: 1e-6, rtol: 1e-5, "h")
        let dg = Tensor([n]), du = Tensor([n]), dgRef = Tensor([n]), duRef = Tensor([n])
        SwiGLU.backward(pool: testPool, dgate: dg.data, dup: du.data, dh: dh.data, gate: gate.data, up: up.data, count: n)
        Reference.SwiGLU.backward(dgate: dgRef.data, dup: duRef.data, dh: dh.data, gate: gate.data,
                                  up: up.data, count: n)
        assertClose(dg, dgRef, atol: 1e-6, rtol: 1e-5, "dgate")
        assertClose(du, duRef, atol: 1e-6, rtol: 1e-5, "dup")
        // Outputs may alias inputs.
        let g2 = gate.clone(), u2 = up.clone()
        SwiGLU.backward(pool: testPool, dgate: g2.data, dup: u2.data, dh: dh.data, gate: g2.data, up: u2.data, count: n)
        assertClose(g2, dg, atol: 0, "dgate in place")
        assertClose(u2, du, atol: 0, "dup in place")
    }

    /// Finite differences of sum(dy * h) with respect to gate and up.
    func testBackwardFiniteDifference() {
        var rng = RNG(seed: 41)
        let n = 19
        let gate = randn([n], &rng, scale: 2), up = randn([n], &rng), dh = randn([n], &rng)
        let dg = Tensor([n]), du = Tensor([n]), h = Tensor([n])
        SwiGLU.backward(pool: testPool, dgate: dg.data, dup: du.data, dh: dh.data, gate: gate.data, up: up.data, count: n)
        let loss = { () -> Double in
            SwiGLU.forward(pool: testPool, h: h.data, gate: gate.data, up: up.data, count: n)
            return project(dh, h)
        }
        checkGradient("swiglu dgate", x: gate, analytic: dg, atol: 1e-3, loss: loss)
        checkGradient("swiglu dup", x: up, analytic: du, atol: 1e-3, loss: loss)
    }

    /// The C kernels (what the CPU backend runs) give the Swift SIMD code's bits on every
    /// family: lengths with tails, gates from -200 to 200 (exp's clamps), zeros of both signs,
    /// infinities, and outputs aliasing inputs.
    func testKernelsGiveTheSwiftBits() {
        var rng = RNG(seed: 42)
        let n = 4099
        let gate = randn([n], &rng, scale: 6), up = randn([n], &rng), dh = randn([n], &rng)
        for (i, v) in [Float(0), -0, 200, -200, 88.5, -88.5, 87.4, -87.4, .infinity, -.infinity].enumerated() { gate[i * 3] = v }
        let h = Tensor([n]), dg = Tensor([n]), du = Tensor([n])
        SwiGLU.forward(pool: testPool, h: h.data, gate: gate.data, up: up.data, count: n)
        SwiGLU.backward(pool: testPool, dgate: dg.data, dup: du.data, dh: dh.data, gate: gate.data, up: up.data, count: n)
        for family in KernelFamily.available {
            let fam = family.vectorID
            for count in [n, 7, 8, 17] {
                let h2 = Tensor([n]), dg2 = Tensor([n]), du2 = Tensor([n])
                SwiGLU.forward(pool: testPool, vectorKernels: fam, h: h2.data, gate: gate.data, up: up.data, count: count)
                SwiGLU.backward(pool: testPool, vectorKernels: fam, dgate: dg2.data, dup: du2.data, dh: dh.data, gate: gate.data,
                                up: up.data, count: count)
                for (name, a, b) in [("h", h, h2), ("dgate", dg, dg2), ("dup", du, du2)] {
                    let diff = (0..<count).filter { a[$0].bitPattern != b[$0].bitPattern }
                    XCTAssertTrue(diff.isEmpty, "\(family) \(name) count \(count): \(diff.count) differ, e.g. [\(diff.first ?? -1)] "
                                  + "\(diff.first.map { "\(a[$0]) vs \(b[$0]) (gate \(gate[$0]))" } ?? "")")
                }
            }
            // In place, as the backend may call it.
            let g2 = gate.clone(), u2 = up.clone()
            SwiGLU.backward(pool: testPool, vectorKernels: fam, dgate: g2.data, dup: u2.data, dh: dh.data, gate: g2.data, up: u2.data, count: n)
            XCTAssertEqual(g2.array.map(\.bitPattern), dg.array.map(\.bitPattern), "\(family) dgate in place")
            XCTAssertEqual(u2.array.map(\.bitPattern), du.array.map(\.bitPattern), "\(family) dup in place")
        }
    }
}
