// linear_backward: the strided GEMM behind every linear backward and the Muon Newton-Schulz
// iterations:
//   C(M, N) = alpha * A(M, K) . B(K, N) + beta * E(M, N)      [* 2 max(u, 0) with -D RELU2]
// A[m, k] = a[m*sAm + k*sAk] and B[k, n] = b[k*sBk + n*sBn], so the transposes the backward
// needs are strides, never copies:
//   dX (M, K)  = dY (M, N) . W (N, K)                     A = dY, B = W        (row-major both)
//   dW (N, K) += dY^T . X                                  A = dY^T (sAm = 1), B = X
//   du = (dY . W2) * 2 max(u, 0)                           the QKV factor's relu2 (-D RELU2)
// E is read only when beta != 0 and may be the same tensor as C (accumulation: each element is
// read and then written by the same invocation). Tiling is linear.comp's: a BM x BN block per
// workgroup through shared memory, RM x RN outputs per invocation. Tile loads walk the operand
// along whichever index has unit stride, so global reads stay coalesced for both layouts.
#version 450

layout(constant_id = 0) const uint BM = 64;
layout(constant_id = 1) const uint BN = 64;
layout(constant_id = 2) const uint BK = 16;
layout(constant_id = 3) const uint RM = 4;
layout(constant_id = 4) const uint RN = 4;
layout(local_size_x_id = 5) in;

layout(push_constant) uniform GemmPush {
    uint M;
    uint N;
    uint K;
    uint sAm;
    uint sAk;
    uint sBk;
    uint sBn;
    float alpha;
    float beta;
} p;

layout(std430, binding = 0) readonly buffer A { float a[]; };
layout(std430, binding = 1) readonly buffer B { float b[]; };
layout(std430, binding = 2) readonly buffer E { float e[]; };    // (M, N), read when beta != 0
#ifdef RELU2
layout(std430, binding = 3) readonly buffer U { float u[]; };    // (M, N) pre-activation
layout(std430, binding = 4) writeonly buffer C { float c[]; };   // (M, N)
#else
layout(std430, binding = 3) writeonly buffer C { float c[]; };   // (M, N)
#endif

shared float as_[BK * (BM + 1)];   // [k][m]
shared float bs_[BK * (BN + 1)];   // [k][n]

void main() {
    const uint tid = gl_LocalInvocationID.x;
    const uint threads_n = BN / RN;
    const uint tm = tid / threads_n;
    const uint tn = tid % threads_n;
    const uint m0 = gl_WorkGroupID.y * BM;
    const uint n0 = gl_WorkGroupID.x * BN;
    const uint wg = gl_WorkGroupSize.x;
    // Uniform per dispatch: which index of each operand is contiguous in memory.
    const bool a_k_fast = p.sAk == 1;
    const bool b_n_fast = p.sBn == 1;

    float acc[RM * RN];
    for (uint i = 0; i < RM * RN; i++) acc[i] = 0.0;

    for (uint k0 = 0; k0 < p.K; k0 += BK) {
        for (uint i = tid; i < BM * BK; i += wg) {
            const uint r = a_k_fast ? i / BK : i % BM;
            const uint q = a_k_fast ? i % BK : i / BM;
            const uint gm = m0 + r, gk = k0 + q;
            as_[q * (BM + 1) + r] = (gm < p.M && gk < p.K) ? a[gm * p.sAm + gk * p.sAk] : 0.0;
        }
        for (uint i = tid; i < BN * BK; i += wg) {
            const uint r = b_n_fast ? i % BN : i / BK;
            const uint q = b_n_fast ? i / BN : i % BK;
            const uint gn = n0 + r, gk = k0 + q;
            bs_[q * (BN + 1) + r] = (gn < p.N && gk < p.K) ? b[gk * p.sBk + gn * p.sBn] : 0.0;
        }
        barrier();

        for (uint k = 0; k < BK; k++) {
            float x[RM];
            float y[RN];
            for (uint i = 0; i < RM; i++) x[i] = as_[k * (BM + 1) + tm * RM + i];
            for (uint j = 0; j < RN; j++) y[j] = bs_[k * (BN + 1) + tn * RN + j];
            for (uint i = 0; i < RM; i++)
                for (uint j = 0; j < RN; j++)
                    acc[i * RN + j] = fma(x[i], y[j], acc[i * RN + j]);
        }
        barrier();
    }

    for (uint i = 0; i < RM; i++) {
        const uint gm = m0 + tm * RM + i;
        if (gm >= p.M) break;
        for (uint j = 0; j < RN; j++) {
            const uint gn = n0 + tn * RN + j;
            if (gn >= p.N) break;
            const uint o = gm * p.N + gn;
            float v = p.alpha * acc[i * RN + j];
            // beta = 0 must not read E: it may hold garbage (or NaN) and 0 * NaN = NaN.
            if (p.beta != 0.0) v = fma(p.beta, e[o], v);
#ifdef RELU2
            v *= 2.0 * max(u[o], 0.0);
#endif
            c[o] = v;
        }
    }
}
