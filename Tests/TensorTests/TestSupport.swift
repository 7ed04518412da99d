import XCTest
@testable import Tensor

// Helpers shared by the op tests: random buffers, closeness checks, and the central
// finite-difference gradient check every backward is held to.

/// A tensor of standard normal values times `scale`.
func randn(_ shape: [Int], _ rng: inout RNG, scale: Float = 1) -> Tensor {
    let t = Tensor(shape)
    for i in 0..<t.count { t[i] = rng.normal() * scale }
    return t
}

/// sum(dy * y) in Double: a random projection that turns an op's output into a scalar loss
/// whose gradient with respect to the output is dy.
func project(_ dy: Tensor, _ y: Tensor) -> Double {
    precondition(dy.count == y.count)
    var s = 0.0
    for i in 0..<y.count { s += Double(dy[i]) * Double(y[i]) }
    return s
}

/// Elementwise |a - b| <= atol + rtol * |b|, reporting the worst element.
func assertClose(_ a: Tensor, _ b: Tensor, atol: Float, rtol: Float = 0, _ what: String,
                 file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, "\(what): sizes", file: file, line: line)
    var worst = -1, worstExcess: Float = 0
    for i in 0..<min(a.count, b.count) {
        let excess = abs(a[i] - b[i]) - (atol + rtol * abs(b[i]))
        if !(excess <= 0) && (worst < 0 || !(excess <= worstExcess)) { worst = i; worstExcess = excess }
    }
    if worst >= 0 {
        XCTFail("\(what): element \(worst): \(a[worst]) vs \(b[worst]) (atol \(atol), rtol \(rtol))",
                file: file, line: line)
    }
}

func maxAbs(_ t: Tensor) -> Float { t.array.reduce(0) { max($0, abs($1)) } }

/// Checks `analytic` (the gradient of `loss` with respect to `x`) against central differences
/// (L(x + eps) - L(x - eps)) / (2 eps), element by element for `indices` (all when nil):
/// |fd - analytic| <= atol + rtol * |fd|, and the whole vector within `rtol` in 2-norm.
/// Also fails when the gradient is (numerically) zero everywhere, so a backward that writes
/// nothing cannot pass.
func checkGradient(_ what: String, x: Tensor, analytic: Tensor, indices: [Int]? = nil,
                   eps: Float = 1e-2, atol: Double = 2e-3, rtol: Double = 1e-2,
                   loss: () -> Double, file: StaticString = #filePath, line: UInt = #line) {
    let idx = indices ?? Array(0..<x.count)
    var diff2 = 0.0, norm2 = 0.0, failures = 0
    for i in idx {
        let v = x[i]
        let hi = v + eps, lo = v - eps
        x[i] = hi; let lp = loss()
        x[i] = lo; let lm = loss()
        x[i] = v
        let fd = (lp - lm) / Double(hi - lo)
        let an = Double(analytic[i])
        diff2 += (fd - an) * (fd - an)
        norm2 += fd * fd
        if !(abs(fd - an) <= atol + rtol * abs(fd)) {
            failures += 1
            if failures <= 5 {
                XCTFail("\(what)[\(i)]: analytic \(an) vs finite difference \(fd)", file: file, line: line)
            }
        }
    }
    XCTAssertGreaterThan(norm2.squareRoot(), 1e-3, "\(what): gradient is zero, check is vacuous",
                         file: file, line: line)
    XCTAssertLessThanOrEqual(diff2.squareRoot(), rtol * norm2.squareRoot(),
                             "\(what): relative 2-norm error", file: file, line: line)
}

/// The worker pool the op tests run on: two workers, so the threaded splits are exercised.
let testPool = WorkerPool(threads: 2)
