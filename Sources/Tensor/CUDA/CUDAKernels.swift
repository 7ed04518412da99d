// The CUDA kernels, as CUDA C source compiled by NVRTC at first use (CUDAKernelCache). Each
// kernel mirrors the CPU op of the same name in Sources/Tensor, whose doc comment states the
// math; that op is the oracle the GPU check compares against (scripts/gpu_check.sh). Argument
// order as everywhere: outputs first, then inputs, then dimensions.
//
// No header is included (NVRTC has no cuda_bf16.h of its own and the wheels' include folder
// would have to be found): bf16 is bit manipulation, infinities are bit patterns.
//
// Precision: these kernels compute in f32 (sums of a row in a block reduction, the loss in
// f64), like the CPU ops; bf16 appears only at GEMM operands (f32_to_bf16, int8/bf16
// dequantization) with f32 accumulation in cuBLAS, the mixed precision PEFT users run.

public enum CUDAKernels {
    /// The whole program, one NVRTC compilation unit (one CUBIN, one cache file).
    public static let source = common + elementwise + crossEntropy + attention + optimizer

    /// Every `extern "C" __global__` entry point in `source`: the compile check looks for each
    /// in the PTX, and the backend resolves each by name.
    public static let entryPoints = [
        "rmsnorm_forward", "rmsnorm_backward", "rope_forward", "rope_backward",
        "swiglu_forward", "swiglu_backward", "add_f32", "scale_f32",
        "embedding_forward", "embedding_backward",
        "f32_to_bf16", "bf16_to_f32", "dequant_int8_rows_f32", "dequant_int8_rows_bf16",
        "ce_chunk_forward", "ce_finish", "ce_chunk_backward",
        "attention_forward", "attention_backward_prep", "attention_backward_dq", "attention_backward_dkdv",
        "adamw_step", "sumsq_partial",
    ]

    static let common = #"""
    // ---- common ----
    typedef unsigned short bf16_t;
    typedef long long i64;
    #define NEG_INF __uint_as_float(0xff800000u)

    __device__ __forceinline__ float bf16_value(bf16_t b) { return __uint_as_float(((unsigned)b) << 16); }

    // f32 -> bf16, round to nearest even (torch's .to(torch.bfloat16)); NaN stays a quiet NaN.
    __device__ __forceinline__ bf16_t bf16_round(float f) {
        unsigned u = __float_as_uint(f);
        if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40u);
        u += 0x7fffu + ((u >> 16) & 1u);
        return (bf16_t)(u >> 16);
    }

    // Warp and block reductions (blockDim.x a multiple of 32, at most 1024); every thread gets
    // the result. `sh` holds 32 values; the leading barrier lets a caller reduce twice in a row.
    struct SumOp { template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a + b; } };
    struct MaxOp { __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); } };

    template <typename T, typename Op> __device__ __forceinline__ T warp_reduce(T v, Op op) {
        for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
        return v;
    }
    template <typename T, typename Op> __device__ T block_reduce(T v, T *sh, T identity, Op op) {
        int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
        v = warp_reduce(v, op);
        __syncthreads();
        if (lane == 0) sh[w] = v;
        __syncthreads();
        v = threadIdx.x < nw ? sh[threadIdx.x] : identity;
        if (w == 0) v = warp_reduce(v, op);
        if (threadIdx.x == 0) sh[0] = v;
        __syncthreads();
        return sh[0];
    }
    __device__ __forceinline__ float warp_sum(float v) { return warp_reduce(v, SumOp()); }
    __device__ float block_sum(float v, float *sh) { return block_reduce(v, sh, 0.0f, SumOp()); }
    __device__ float block_max(float v, float *sh) { return block_reduce(v, sh, NEG_INF, MaxOp()); }
    __device__ double block_sum_d(double v, double *sh) { return block_reduce(v, sh, 0.0, SumOp()); }

    #define GRID_STRIDE(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

    """#

    static let elementwise = #"""
    // ---- RMSNorm (RMSNorm.swift): one block per row ----
    // rstd = 1 / sqrt(mean(x^2) + eps); y = weight * (x * rstd). y may alias x.
    extern "C" __global__ void rmsnorm_forward(float *y, float *rstd, const float *x, const float *weight,
                                               int N, int C, float eps) {
        __shared__ float sh[32];
        const float *xr = x + (i64)blockIdx.x * C;
        float *yr = y + (i64)blockIdx.x * C;
        float s = 0.0f;
        for (int i = threadIdx.x; i < C; i += blockDim.x) s += xr[i] * xr[i];
        s = block_sum(s, sh);
        float r = 1.0f / sqrtf(s / (float)C + eps);
        if (threadIdx.x == 0) rstd[blockIdx.x] = r;
        for (int i = threadIdx.x; i < C; i += blockDim.x) yr[i] = weight[i] * (xr[i] * r);
    }

    // dx += r * (w * dy) - x * r^3 * sum(w * dy * x) / C
    extern "C" __global__ void rmsnorm_backward(float *dx, const float *dy, const float *x, const float *weight,
                                                const float *rstd, int N, int C) {
        __shared__ float sh[32];
        i64 off = (i64)blockIdx.x * C;
        float s = 0.0f;
        for (int i = threadIdx.x; i < C; i += blockDim.x) s += weight[i] * dy[off + i] * x[off + i];
        s = block_sum(s, sh);
        float r = rstd[blockIdx.x];
        float c = s * r * r * r / (float)C;
        for (int i = threadIdx.x; i < C; i += blockDim.x) dx[off + i] += r * (weight[i] * dy[off + i]) - c * x[off + i];
    }

    // ---- RoPE (RoPE.swift), rotate_half layout, in place; one thread per (row, head, i < half) ----
    // out[i] = x[i] cos - x[i+half] sin; out[i+half] = x[i+half] cos + x[i] sin (sign = -1: backward)
    __device__ void rope_rotate(float *x, const int *positions, const float *cos_t, const float *sin_t,
                                int rows, int nHeads, int headDim, float sign) {
        int half = headDim / 2;
        GRID_STRIDE(t, (i64)rows * nHeads * half) {
            int i = (int)(t % half);
            i64 rh = t / half;
            int row = (int)(rh / nHeads);
            i64 p = positions[row];
            float c = cos_t[p * half + i], s = sign * sin_t[p * half + i];
            float *v = x + rh * headDim;
            float x1 = v[i], x2 = v[i + half];
            v[i] = x1 * c - x2 * s;
            v[i + half] = x2 * c + x1 * s;
        }
    }
    extern "C" __global__ void rope_forward(float *x, const int *positions, const float *cos_t, const float *sin_t,
                                            int rows, int nHeads, int headDim) {
        rope_rotate(x, positions, cos_t, sin_t, rows, nHeads, headDim, 1.0f);
    }
    extern "C" __global__ void rope_backward(float *dx, const int *positions, const float *cos_t, const float *sin_t,
                                             int rows, int nHeads, int headDim) {
        rope_rotate(dx, positions, cos_t, sin_t, rows, nHeads, headDim, -1.0f);
    }

    // ---- SwiGLU (SwiGLU.swift): h = silu(gate) * up ----
    extern "C" __global__ void swiglu_forward(float *h, const float *gate, const float *up, i64 count) {
        GRID_STRIDE(i, count) {
            float g = gate[i];
            h[i] = g / (1.0f + expf(-g)) * up[i];
        }
    }
    // dgate = dh * up * s * (1 + g (1 - s)), dup = dh * silu(g); overwrites both.
    extern "C" __global__ void swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate,
                                               const float *up, i64 count) {
        GRID_STRIDE(i, count) {
            float g = gate[i], u = up[i], d = dh[i];
            float den = 1.0f + expf(-g);
            float s = 1.0f / den;
            dgate[i] = d * u * s * (1.0f + g * (1.0f - s));
            dup[i] = d * (g / den);
        }
    }

    extern "C" __global__ void add_f32(float *out, const float *a, const float *b, i64 count) {
        GRID_STRIDE(i, count) out[i] = a[i] + b[i];
    }
    extern "C" __global__ void scale_f32(float *x, float s, i64 count) {
        GRID_STRIDE(i, count) x[i] *= s;
    }

    // ---- Embedding (Embedding.swift) ----
    // out[n] = table[ids[n]]; one block per row.
    extern "C" __global__ void embedding_forward(float *out, const int *ids, const float *table, int N, int C) {
        const float *src = table + (i64)ids[blockIdx.x] * C;
        float *dst = out + (i64)blockIdx.x * C;
        for (int c = threadIdx.x; c < C; c += blockDim.x) dst[c] = src[c];
    }
    // dtable[ids[n]] += dout[n]: one thread per column, rows in order of n, so rows sharing an
    // id never race and the sum order is the CPU's (deterministic, no atomics).
    extern "C" __global__ void embedding_backward(float *dtable, const float *dout, const int *ids, int N, int C) {
        int c = blockIdx.x * blockDim.x + threadIdx.x;
        if (c >= C) return;
        for (int n = 0; n < N; n++) dtable[(i64)ids[n] * C + c] += dout[(i64)n * C + c];
    }

    // ---- Conversions and dequantization (Formats/BF16Format.swift, Int8RowsFormat.swift) ----
    // Frozen weights have no gradient, so these have no backward; activations cast to bf16 for a
    // GEMM get their gradient in f32 from the GEMM (a straight-through cast).
    extern "C" __global__ void f32_to_bf16(bf16_t *out, const float *in, i64 count) {
        GRID_STRIDE(i, count) out[i] = bf16_round(in[i]);
    }
    extern "C" __global__ void bf16_to_f32(float *out, const bf16_t *in, i64 count) {
        GRID_STRIDE(i, count) out[i] = bf16_value(in[i]);
    }
    // w[r, c] = q[r, c] * scale[r] (bitsandbytes row-wise absmax)
    extern "C" __global__ void dequant_int8_rows_f32(float *out, const signed char *q, const float *scale,
                                                     int rows, int cols) {
        GRID_STRIDE(i, (i64)rows * cols) out[i] = (float)q[i] * scale[i / cols];
    }
    extern "C" __global__ void dequant_int8_rows_bf16(bf16_t *out, const signed char *q, const float *scale,
                                                      int rows, int cols) {
        GRID_STRIDE(i, (i64)rows * cols) out[i] = bf16_round((float)q[i] * scale[i / cols]);
    }

    """#

    static let crossEntropy = #"""
    // ---- Cross-entropy (CrossEntropy.swift) over vocabulary chunks ----
    // The logits of a row may arrive in chunks [v0, v0 + Vc) (so the [N, V] logits need never
    // exist at once): ce_chunk_forward folds each chunk into a running max m and sum
    // s = sum exp(x - m) (f64) and picks out the target's logit; ce_finish turns them into
    // loss_n = m + log(s) - x_target (0 for target -100); ce_chunk_backward, given the final
    // m and s, writes dlogits = softmax * gradScale - onehot * gradScale for its chunk.
    // One block per row. Start with rowMax = -inf, rowSum = 0.
    extern "C" __global__ void ce_chunk_forward(float *rowMax, double *rowSum, float *targetLogit,
                                                const float *logits, const int *targets,
                                                int N, int Vc, int v0, int ldl) {
        __shared__ float sh[32];
        __shared__ double shd[32];
        int n = blockIdx.x;
        int t = targets[n];
        if (t == -100) return;
        const float *row = logits + (i64)n * ldl;
        float mc = NEG_INF;
        for (int j = threadIdx.x; j < Vc; j += blockDim.x) mc = fmaxf(mc, row[j]);
        mc = block_max(mc, sh);
        double sc = 0.0;
        for (int j = threadIdx.x; j < Vc; j += blockDim.x) sc += (double)expf(row[j] - mc);
        sc = block_sum_d(sc, shd);
        if (threadIdx.x == 0) {
            float m = rowMax[n];
            double s = rowSum[n];
            float mn = fmaxf(m, mc);
            // exp(-inf) = 0 covers the first chunk.
            rowSum[n] = s * exp((double)m - (double)mn) + sc * exp((double)mc - (double)mn);
            rowMax[n] = mn;
            if (t >= v0 && t < v0 + Vc) targetLogit[n] = row[t - v0];
        }
    }
    extern "C" __global__ void ce_finish(double *rowLoss, const float *rowMax, const double *rowSum,
                                         const float *targetLogit, const int *targets, int N) {
        GRID_STRIDE(n, N) {
            rowLoss[n] = targets[n] == -100 ? 0.0 : (double)rowMax[n] + log(rowSum[n]) - (double)targetLogit[n];
        }
    }
    // dlogits may be the logits buffer itself (each element is read before it is written).
    extern "C" __global__ void ce_chunk_backward(float *dlogits, const float *logits, const float *rowMax,
                                                 const double *rowSum, const int *targets,
                                                 int N, int Vc, int v0, int ldl, float gradScale) {
        int n = blockIdx.x;
        int t = targets[n];
        float *d = dlogits + (i64)n * ldl;
        if (t == -100) {
            for (int j = threadIdx.x; j < Vc; j += blockDim.x) d[j] = 0.0f;
            return;
        }
        const float *row = logits + (i64)n * ldl;
        float m = rowMax[n];
        float s = (float)((double)gradScale / rowSum[n]);
        for (int j = threadIdx.x; j < Vc; j += blockDim.x) {
            float g = expf(row[j] - m) * s;
            if (j + v0 == t) g -= gradScale;
            d[j] = g;
        }
    }

    """#

    static let attention = #"""
    // ---- Causal GQA attention (Attention.swift), flash-style: no [T, T] tensor ----
    // q [B, Tq, nH, hd]; k, v [B, Tk, nKV, hd] (a KV cache: B = 1, Tk = rows in use); query i sits
    // at position start + i and sees keys j <= start + i whose keyMask[b, j] != 0 (keyMask
    // [B, Tk] or null). Training: Tq = Tk = T, start = 0. Decoding: start = cached rows.
    // One warp per query row; each lane keeps hd / 32 values of q and of the output; the
    // softmax is online (running max and sum), so scores are never stored. lse [B, nH, Tq]
    // keeps log-sum-exp for backward. A row with no allowed key (left padding) is HF's uniform
    // row: the mean of V over all Tk keys, marked lse = -inf.
    #define MAX_PER_LANE 8   // hd <= 256
    extern "C" __global__ void attention_forward(float *out, float *lse, const float *q, const float *k,
                                                 const float *v, const float *keyMask, int B, int Tq, int Tk,
                                                 int start, int nH, int nKV, int hd, float alpha) {
        i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
        if (row >= (i64)B * nH * Tq) return;
        int lane = threadIdx.x & 31;
        int i = (int)(row % Tq), h = (int)(row / Tq % nH), b = (int)(row / Tq / nH);
        int g = h / (nH / nKV), ldk = nKV * hd, per = (hd + 31) / 32;
        const float *qi = q + ((i64)(b * Tq + i) * nH + h) * hd;
        const float *kb = k + (i64)b * Tk * ldk + g * hd, *vb = v + (i64)b * Tk * ldk + g * hd;
        const float *mask = keyMask ? keyMask + (i64)b * Tk : 0;
        float qr[MAX_PER_LANE], acc[MAX_PER_LANE];
        for (int e = 0; e < per; e++) { int c = lane + 32 * e; qr[e] = c < hd ? qi[c] : 0.0f; acc[e] = 0.0f; }
        float m = NEG_INF, l = 0.0f;
        int last = min(start + i, Tk - 1);
        for (int j = 0; j <= last; j++) {
            if (mask && mask[j] == 0.0f) continue;
            const float *kj = kb + (i64)j * ldk, *vj = vb + (i64)j * ldk;
            float s = 0.0f;
            for (int e = 0; e < per; e++) { int c = lane + 32 * e; if (c < hd) s += qr[e] * kj[c]; }
            s = alpha * warp_sum(s);
            float mn = fmaxf(m, s), corr = expf(m - mn), p = expf(s - mn);
            l = l * corr + p;
            for (int e = 0; e < per; e++) { int c = lane + 32 * e; if (c < hd) acc[e] = acc[e] * corr + p * vj[c]; }
            m = mn;
        }
        float *oi = out + ((i64)(b * Tq + i) * nH + h) * hd;
        if (l == 0.0f) {
            for (int e = 0; e < per; e++) {
                int c = lane + 32 * e;
                if (c >= hd) continue;
                float sum = 0.0f;
                for (int j = 0; j < Tk; j++) sum += vb[(i64)j * ldk + c];
                oi[c] = sum / (float)Tk;
            }
            if (lane == 0) lse[row] = NEG_INF;
        } else {
            float inv = 1.0f / l;
            for (int e = 0; e < per; e++) { int c = lane + 32 * e; if (c < hd) oi[c] = acc[e] * inv; }
            if (lane == 0) lse[row] = m + logf(l);
        }
    }

    // Backward, as FlashAttention-2 recomputes it from lse:
    //   P_ij = exp(alpha q_i.k_j - lse_i) (1/T on a uniform row), dP_ij = dO_i.v_j,
    //   D_i = dO_i.O_i = sum_j P_ij dP_ij, dS_ij = P_ij (dP_ij - D_i),
    //   dq_i = alpha sum_j dS_ij k_j, dk_j = alpha sum_i dS_ij q_i, dv_j = sum_i P_ij dO_i.
    // The uniform rows follow from the same formulas with P = 1/T over all keys (the CPU's
    // paddingRowsBackward). dq, dk and dv are overwritten. Training only (Tq = Tk = T).
    extern "C" __global__ void attention_backward_prep(float *D, const float *dout, const float *out,
                                                       int B, int T, int nH, int hd) {
        i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
        if (row >= (i64)B * nH * T) return;
        int lane = threadIdx.x & 31;
        int i = (int)(row % T), h = (int)(row / T % nH), b = (int)(row / T / nH);
        i64 off = ((i64)(b * T + i) * nH + h) * hd;
        float s = 0.0f;
        for (int c = lane; c < hd; c += 32) s += dout[off + c] * out[off + c];
        s = warp_sum(s);
        if (lane == 0) D[row] = s;
    }

    __device__ __forceinline__ bool attn_allowed(bool uniform, int i, int j, const float *mask) {
        return uniform || (j <= i && !(mask && mask[j] == 0.0f));
    }

    // One warp per query row (b, h, i).
    extern "C" __global__ void attention_backward_dq(float *dq, const float *dout, const float *lse, const float *D,
                                                     const float *q, const float *k, const float *v,
                                                     const float *keyMask, int B, int T, int nH, int nKV, int hd,
                                                     float alpha) {
        i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
        if (row >= (i64)B * nH * T) return;
        int lane = threadIdx.x & 31;
        int i = (int)(row % T), h = (int)(row / T % nH), b = (int)(row / T / nH);
        int g = h / (nH / nKV), ldk = nKV * hd, per = (hd + 31) / 32;
        i64 off = ((i64)(b * T + i) * nH + h) * hd;
        const float *kb = k + (i64)b * T * ldk + g * hd, *vb = v + (i64)b * T * ldk + g * hd;
        const float *mask = keyMask ? keyMask + (i64)b * T : 0;
        float L = lse[row], Di = D[row];
        bool uniform = L == NEG_INF;
        float qr[MAX_PER_LANE], dor[MAX_PER_LANE], acc[MAX_PER_LANE];
        for (int e = 0; e < per; e++) {
            int c = lane + 32 * e;
            qr[e] = c < hd ? q[off + c] : 0.0f; dor[e] = c < hd ? dout[off + c] : 0.0f; acc[e] = 0.0f;
        }
        int last = uniform ? T - 1 : i;
        for (int j = 0; j <= last; j++) {
            if (!attn_allowed(uniform, i, j, mask)) continue;
            const float *kj = kb + (i64)j * ldk, *vj = vb + (i64)j * ldk;
            float s = 0.0f, dp = 0.0f;
            for (int e = 0; e < per; e++) { int c = lane + 32 * e; if (c < hd) { s += qr[e] * kj[c]; dp += dor[e] * vj[c]; } }
            s = warp_sum(s); dp = warp_sum(dp);
            float p = uniform ? 1.0f / (float)T : expf(alpha * s - L);
            float ds = p * (dp - Di);
            for (int e = 0; e < per; e++) { int c = lane + 32 * e; if (c < hd) acc[e] += alpha * ds * kj[c]; }
        }
        for (int e = 0; e < per; e++) { int c = lane + 32 * e; if (c < hd) dq[off + c] = acc[e]; }
    }

    // One warp per key row (b, g, j), summing over the heads of group g and every query that
    // sees key j (no atomics: each dk/dv row has one writer).
    extern "C" __global__ void attention_backward_dkdv(float *dk, float *dv, const float *dout, const float *lse,
                                                       const float *D, const float *q, const float *k, const float *v,
                                                       const float *keyMask, int B, int T, int nH, int nKV, int hd,
                                                       float alpha) {
        i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
        if (row >= (i64)B * nKV * T) return;
        int lane = threadIdx.x & 31;
        int j = (int)(row % T), g = (int)(row / T % nKV), b = (int)(row / T / nKV);
        int rep = nH / nKV, ldk = nKV * hd, ldq = nH * hd, per = (hd + 31) / 32;
        i64 koff = (i64)(b * T + j) * ldk + g * hd;
        const float *mask = keyMask ? keyMask + (i64)b * T : 0;
        float kr[MAX_PER_LANE], vr[MAX_PER_LANE], dkr[MAX_PER_LANE], dvr[MAX_PER_LANE];
        for (int e = 0; e < per; e++) {
            int c = lane + 32 * e;
            kr[e] = c < hd ? k[koff + c] : 0.0f; vr[e] = c < hd ? v[koff + c] : 0.0f; dkr[e] = 0.0f; dvr[e] = 0.0f;
        }
        for (int h = g * rep; h < (g + 1) * rep; h++) {
            for (int i = 0; i < T; i++) {
                i64 lrow = ((i64)b * nH + h) * T + i;
                float L = lse[lrow];
                bool uniform = L == NEG_INF;
                if (!attn_allowed(uniform, i, j, mask)) continue;
                const float *qi = q + (i64)(b * T + i) * ldq + h * hd, *doi = dout + (i64)(b * T + i) * ldq + h * hd;
                float s = 0.0f, dp = 0.0f;
                for (int e = 0; e < per; e++) { int c = lane + 32 * e; if (c < hd) { s += qi[c] * kr[e]; dp += doi[c] * vr[e]; } }
                s = warp_sum(s); dp = warp_sum(dp);
                float p = uniform ? 1.0f / (float)T : expf(alpha * s - L);
                float ds = p * (dp - D[lrow]);
                for (int e = 0; e < per; e++) {
                    int c = lane + 32 * e;
                    if (c < hd) { dkr[e] += alpha * ds * qi[c]; dvr[e] += p * doi[c]; }
                }
            }
        }
        for (int e = 0; e < per; e++) { int c = lane + 32 * e; if (c < hd) { dk[koff + c] = dkr[e]; dv[koff + c] = dvr[e]; } }
    }

    """#

    static let optimizer = #"""
    // ---- AdamW (LLaMA/Training/AdamW.swift, torch.optim.AdamW) on f32 master weights ----
    // p *= decay (when weight decay is on); m = m + (1 - b1)(g - m); v = b2 v + (1 - b2) g^2;
    // p -= stepSize * m / (sqrt(v) / bc2 + eps), stepSize = lr / (1 - b1^t), bc2 = sqrt(1 - b2^t).
    extern "C" __global__ void adamw_step(float *p, float *m, float *v, const float *g, i64 count, float stepSize,
                                          float b2, float omb1, float omb2, float eps, float bc2, float decay,
                                          int applyDecay) {
        GRID_STRIDE(i, count) {
            float pi = p[i];
            if (applyDecay) pi *= decay;
            float gi = g[i];
            float mi = m[i] + omb1 * (gi - m[i]);
            float vi = v[i] * b2 + omb2 * gi * gi;
            float denom = sqrtf(vi) / bc2 + eps;
            p[i] = pi - stepSize * (mi / denom);
            m[i] = mi;
            v[i] = vi;
        }
    }
    // partial[block] = sum of g^2 over the block's grid-stride elements, in f64 (the host adds
    // the partials in block order: the gradient norm for clipping).
    extern "C" __global__ void sumsq_partial(double *partial, const float *g, i64 count) {
        __shared__ double shd[32];
        double s = 0.0;
        GRID_STRIDE(i, count) s += (double)g[i] * (double)g[i];
        s = block_sum_d(s, shd);
        if (threadIdx.x == 0) partial[blockIdx.x] = s;
    }

    """#
}
