// linear: y(M, N) = x(M, K) . W(N, K)^T, optionally with relu2 fused on the output (-D RELU2).
// -D Q8 / -D Q4: W arrives quantized (the .palm layout, see Palm.Inference QuantizedTensor) and is
// dequantized element by element while the tile is loaded; no float copy of W exists anywhere.
// -D F16: W arrives as IEEE half floats (half the bytes of f32; accumulation stays f32). Halves are
// read in pairs from 32-bit words, so no 16-bit storage feature is needed: any Vulkan 1.2 device.
// -D HALF: f16 arithmetic. W is read as float16_t (storageBuffer16BitAccess), X too with -D X_HALF,
// else X is f32 and rounded to half as it is staged; tiles sit in shared memory as halves, each
// product is an f16 multiply and the sums stay f32 (shaderFloat16). CPU twin: Linear.ReferenceHalf.
// Both operands are K-contiguous (torch's linear layout), so every tile load below reads
// consecutive k from consecutive invocations: coalesced on real GPUs.
// Each workgroup owns a BM x BN block of y and walks K in BK steps through shared memory;
// each invocation accumulates an RM x RN micro-tile in registers.
#version 450
#ifdef HALF
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_EXT_shader_16bit_storage : require
// The element type of the staged tiles and of the products.
#define ELEM float16_t
#else
#define ELEM float
#endif

// Tile sizes are specialization constants (CONVENTIONS); the host sets WG = (BM/RM)*(BN/RN).
layout(constant_id = 0) const uint BM = 64;
layout(constant_id = 1) const uint BN = 64;
layout(constant_id = 2) const uint BK = 16;
layout(constant_id = 3) const uint RM = 4;
layout(constant_id = 4) const uint RN = 4;
layout(local_size_x_id = 5) in;

#if defined(Q8) || defined(Q4)
layout(push_constant) uniform LinearQuantPush {
    uint M;
    uint N;
    uint K;
    uint G;     // elements per scale; divides K, so a group never straddles two rows
} p;

layout(std430, binding = 0) readonly buffer X { float x[]; };       // (M, K)
// Bytes of the stored data, read as little-endian words (no 8-bit storage feature needed).
layout(std430, binding = 1) readonly buffer W { uint wq[]; };       // (N, K) q8: 1 byte, q4: 1 nibble each
layout(std430, binding = 2) readonly buffer S { uint scale_bits[]; };  // (N*K/G) q8: f32, q4: f16 pairs
layout(std430, binding = 3) writeonly buffer Y { float y[]; };      // (M, N)

#include "quant.glsl"
float load_w(uint i) { return load_quant(i, p.G); }
#else
layout(push_constant) uniform LinearPush {
    uint M;
    uint N;
    uint K;
} p;

#ifdef X_HALF
layout(std430, binding = 0) readonly buffer X { float16_t x[]; };  // (M, K)
#else
layout(std430, binding = 0) readonly buffer X { float x[]; };   // (M, K)
#endif
#ifdef HALF
layout(std430, binding = 1) readonly buffer W { float16_t w[]; };  // (N, K)
float16_t load_w(uint i) { return w[i]; }
#elif defined(F16)
layout(std430, binding = 1) readonly buffer W { uint w2[]; };   // (N, K) halves, element 2j low
float load_w(uint i) { return unpackHalf2x16(w2[i >> 1])[i & 1u]; }
#else
layout(std430, binding = 1) readonly buffer W { float w[]; };   // (N, K)
float load_w(uint i) { return w[i]; }
#endif
layout(std430, binding = 2) writeonly buffer Y { float y[]; };  // (M, N)
#endif

// Stored k-major ([k][m]) so the inner product loop reads RM (RN) neighbours per k.
// The +1 pad staggers the transposing store across banks.
shared ELEM xs[BK * (BM + 1)];
shared ELEM ws[BK * (BN + 1)];

void main() {
    const uint tid = gl_LocalInvocationID.x;
    const uint threads_n = BN / RN;
    const uint threads_m = BM / RM;
    // An invocation's RM x RN outputs are strided (rows tm + i*threads_m, columns tn + j*threads_n),
    // not a contiguous micro-tile: neighbouring invocations then read neighbouring shared-memory
    // words (no bank conflicts; a contiguous 8x8 tile made every 4th lane share a bank) and write
    // neighbouring outputs (coalesced). Measured on an H200 before the change: 4096^3 at 49.9 % of
    // cuBLAS fp32 with the 128x128 tile.
    const uint tm = tid / threads_n;
    const uint tn = tid % threads_n;
    const uint m0 = gl_WorkGroupID.y * BM;
    const uint n0 = gl_WorkGroupID.x * BN;
    const uint wg = gl_WorkGroupSize.x;

    float acc[RM * RN];
    for (uint i = 0; i < RM * RN; i++) acc[i] = 0.0;

    for (uint k0 = 0; k0 < p.K; k0 += BK) {
        // Out-of-range elements load as zero, so awkward M, N, K need no special case below.
        for (uint i = tid; i < BM * BK; i += wg) {
            const uint r = i / BK, c = i % BK;
            const uint gm = m0 + r, gk = k0 + c;
            // With -D HALF and f32 X this conversion is the rounding to half (RTE on the devices
            // seen; Vulkan leaves f32 -> f16 rounding to the implementation).
            xs[c * (BM + 1) + r] = (gm < p.M && gk < p.K) ? ELEM(x[gm * p.K + gk]) : ELEM(0.0);
        }
        for (uint i = tid; i < BN * BK; i += wg) {
            const uint r = i / BK, c = i % BK;
            const uint gn = n0 + r, gk = k0 + c;
            ws[c * (BN + 1) + r] = (gn < p.N && gk < p.K) ? ELEM(load_w(gn * p.K + gk)) : ELEM(0.0);
        }
        barrier();

        for (uint k = 0; k < BK; k++) {
            ELEM a[RM];
            ELEM b[RN];
            for (uint i = 0; i < RM; i++) a[i] = xs[k * (BM + 1) + tm + i * threads_m];
            for (uint j = 0; j < RN; j++) b[j] = ws[k * (BN + 1) + tn + j * threads_n];
            for (uint i = 0; i < RM; i++)
                for (uint j = 0; j < RN; j++) {
#ifdef HALF
                    // precise: the product must be rounded to half before the f32 add; a
                    // compiler may otherwise fuse the widening into an f32 fma (exact product).
                    precise float16_t prod = a[i] * b[j];
                    acc[i * RN + j] += float(prod);
#else
                    acc[i * RN + j] = fma(a[i], b[j], acc[i * RN + j]);
#endif
                }
        }
        barrier();
    }

    for (uint i = 0; i < RM; i++) {
        const uint gm = m0 + tm + i * threads_m;
        if (gm >= p.M) break;
        for (uint j = 0; j < RN; j++) {
            const uint gn = n0 + tn + j * threads_n;
            if (gn >= p.N) break;
            float v = acc[i * RN + j];
#ifdef RELU2
            v = max(v, 0.0);
            v = v * v;
#endif
            y[gm * p.N + gn] = v;
        }
    }
}
