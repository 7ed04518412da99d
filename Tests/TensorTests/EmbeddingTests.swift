import XCTest
@testable import Tensor

final class EmbeddingTests: XCTestCase {
    /// Forward copies the rows named by ids.
    func testForwardPicksRows() {
        var rng = RNG(seed: 60)
        let V = 10, C = 5
        let table = randn([V, C], &rng)
        var ids: [Int32] = [3, 0, 9, 3]
        let out = Tensor([4, C])
        Embedding.forward(pool: testPool, out: out.data, ids: &ids, table: table.data, N: 4, C: C)
        for n in 0..<4 {
            for c in 0..<C { XCTAssertEqual(out[n * C + c], table[Int(ids[n]) * C + c]) }
        }
    }

    /// Backward adds dout rows into the table gradient, repeated ids summed; matches finite
    /// differences of sum(dout * out) with respect to the table.
    func testBackward() {
        var rng = RNG(seed: 61)
        let V = 6, C = 3, N = 5
        let table = randn([V, C], &rng), dout = randn([N, C], &rng)
        var ids: [Int32] = [2, 4, 2, 0, 2]
        let prior = randn([V, C], &rng)
        let dtable = prior.clone()
        Embedding.backward(pool: testPool, dtable: dtable.data, dout: dout.data, ids: &ids, N: N, C: C)
        for c in 0..<C {
            XCTAssertEqual(dtable[2 * C + c], prior[2 * C + c] + dout[c] + dout[2 * C + c] + dout[4 * C + c],
                           accuracy: 1e-6)
            XCTAssertEqual(dtable[1 * C + c], prior[1 * C + c])
        }
        let grad = Tensor([V, C])
        for i in 0..<grad.count { grad[i] = dtable[i] - prior[i] }
        let out = Tensor([N, C])
        checkGradient("embedding dtable", x: table, analytic: grad, atol: 1e-3) {
            Embedding.forward(pool: testPool, out: out.data, ids: &ids, table: table.data, N: N, C: C)
            return project(dout, out)
        }
    }
}
