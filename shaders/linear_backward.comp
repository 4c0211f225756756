// linear_backward: the strided GEMM behind every linear backward and the Muon Newton-Schulz
// iterations (also in f16 arithmetic, -D HALF below):
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
// -D HALF (Muon's optional fp16 Newton-Schulz): f16 arithmetic as in linear.comp's -D HALF.
// A and B stay f32 in memory (so shaderFloat16 suffices, no 16-bit storage); each element is
// multiplied by a power-of-two scale (scale_a, scale_b: exact) and rounded to half as it is
// staged, each product is an f16 multiply, sums and the epilogue stay f32 (the host folds
// 1 / (scale_a scale_b) into alpha). The scales exist because f16 has 5 exponent bits:
// Newton-Schulz operands are ~1/sqrt(size), so unscaled products of large matrices would fall
// into f16's subnormals, or to zero on a device that flushes them. No RELU2 variant is built.
// CPU twin: LinearBackward.GemmHalfReference (fma() below may round once or twice: Vulkan
// allows either, and the twin does either).
#version 450
#ifdef HALF
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
// The element type of the staged tiles and of the products.
#define ELEM float16_t
#else
#define ELEM float
#endif

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
#ifdef HALF
    float scale_a;   // powers of two, applied before the rounding to half
    float scale_b;
#endif
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

shared ELEM as_[BK * (BM + 1)];   // [k][m]
shared ELEM bs_[BK * (BN + 1)];   // [k][n]

#ifdef HALF
// f32 -> f16 rounds to nearest even on the devices seen (Vulkan leaves it to the implementation).
ELEM stage_a(float v) { return ELEM(v * p.scale_a); }
ELEM stage_b(float v) { return ELEM(v * p.scale_b); }
#else
ELEM stage_a(float v) { return v; }
ELEM stage_b(float v) { return v; }
#endif

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
            as_[q * (BM + 1) + r] = (gm < p.M && gk < p.K) ? stage_a(a[gm * p.sAm + gk * p.sAk]) : ELEM(0.0);
        }
        for (uint i = tid; i < BN * BK; i += wg) {
            const uint r = b_n_fast ? i % BN : i / BK;
            const uint q = b_n_fast ? i / BN : i % BK;
            const uint gn = n0 + r, gk = k0 + q;
            bs_[q * (BN + 1) + r] = (gn < p.N && gk < p.K) ? stage_b(b[gk * p.sBk + gn * p.sBn]) : ELEM(0.0);
        }
        barrier();

        for (uint k = 0; k < BK; k++) {
            ELEM x[RM];
            ELEM y[RN];
            for (uint i = 0; i < RM; i++) x[i] = as_[k * (BM + 1) + tm * RM + i];
            for (uint j = 0; j < RN; j++) y[j] = bs_[k * (BN + 1) + tn * RN + j];
            for (uint i = 0; i < RM; i++)
                for (uint j = 0; j < RN; j++) {
#ifdef HALF
                    // precise: the product must be rounded to half before the f32 add; a
                    // compiler may otherwise fuse the widening into an f32 fma (exact product).
                    precise float16_t prod = x[i] * y[j];
                    acc[i * RN + j] += float(prod);
#else
                    acc[i * RN + j] = fma(x[i], y[j], acc[i * RN + j]);
#endif
                }
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
