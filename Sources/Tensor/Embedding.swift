// Token embedding lookup: out[n] = table[ids[n]]. The table is frozen in LoRA training, so the
// model never calls backward; it is here so the op is complete and tested like the others.
public enum Embedding {
    public static func forward(pool: WorkerPool, out: UnsafeMutablePointer<Float>, // [N, C]
                               ids: UnsafePointer<Int32>,        // [N]
                               table: UnsafePointer<Float>,      // [V, C]
                               N: Int, C: Int) {
        pool.chunks(N, grain: max(1, 16384 / max(C, 1))) { rows in
            for n in rows {
                (out + n * C).update(from: table + Int(ids[n]) * C, count: C)
            }
        }
    }

    /// dtable[ids[n]] += dout[n]. Threads split the C columns, so rows that share an id never
    /// race, and each element is summed in the order of n.
    public static func backward(pool: WorkerPool, dtable: UnsafeMutablePointer<Float>, // [V, C], accumulated (+=)
                                dout: UnsafePointer<Float>,          // [N, C]
                                ids: UnsafePointer<Int32>,           // [N]
                                N: Int, C: Int) {
        pool.chunks(C, grain: 64) { cols in
            for n in 0..<N {
                let dst = dtable + Int(ids[n]) * C, src = dout + n * C
                for c in cols { dst[c] += src[c] }
            }
        }
    }
}
