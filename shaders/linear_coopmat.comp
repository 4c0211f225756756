// linear_coopmat: y(M, N) = x(M, K) . W(N, K)^T on the device's matrix units (tensor cores)
// through VK_NV_cooperative_matrix: f16 operands, f32 accumulators, f32 output, relu2 fused with
// -D RELU2. W is f16 (16-bit storage); X is f32 rounded to half as it is staged, or f16 with
// -D X_HALF. CPU twin: Linear.ReferenceHalfInputs (inputs rounded to half, exact products, f32 sums).
//
// A separate file from linear.comp because the algorithm is another one (subgroup-wide matrix
// fragments instead of per-invocation micro-tiles); the push constants and bindings are linear's.
//
// Why NV and not VK_KHR_cooperative_matrix: the build's glslc (Debian 12: shaderc 2023.2, glslang
// 11.13) does not know GL_KHR_cooperative_matrix, and no newer one is installable here; NVIDIA
// drivers expose both extensions. The KHR port changes only the block under "#else // EMULATE".
//
// Layout: a workgroup of SM x SN subgroups owns a BM x BN block of y (BM = SM*FM*TM, BN = SN*FN*TN);
// each subgroup owns FM x FN fragments of TM x TN. K is walked in BK steps: both operand tiles are
// staged in shared memory as halves (row-major, K-contiguous, as both operands arrive), then each
// subgroup loads its A and B fragments from there and issues FM*FN multiply-adds per TK.
// The end result goes through a per-subgroup shared scratch so that awkward M, N need no special
// case and relu2 is applied once, element by element, on the way out.
//
// -D EMULATE replaces the fragments by plain per-lane arithmetic with the same semantics (A
// row-major, B column-major, D = A*B + C), so that a device without cooperative matrices
// (lavapipe, in the tests) runs and checks everything else here: staging, indices, bounds, epilogue.
#version 450
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_EXT_shader_16bit_storage : require
#extension GL_KHR_shader_subgroup_basic : require
#ifdef EMULATE
#extension GL_EXT_control_flow_attributes : require
#endif
#ifndef EMULATE
#extension GL_NV_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#endif

// One multiply-add is TM x TK times TK x TN (a size the device reports); the rest are tile counts.
layout(constant_id = 0) const uint TM = 16;
layout(constant_id = 1) const uint TN = 16;
layout(constant_id = 2) const uint TK = 16;
layout(constant_id = 3) const uint SM = 2;    // subgroups along M
layout(constant_id = 4) const uint SN = 2;    // subgroups along N
layout(constant_id = 5) const uint FM = 2;    // fragments per subgroup along M
layout(constant_id = 6) const uint FN = 2;    // fragments per subgroup along N
layout(constant_id = 7) const uint BK = 32;   // K per staging step, a multiple of TK and of 8
layout(constant_id = 8) const uint SG = 32;   // the subgroup size the host assumed
layout(local_size_x_id = 9) in;               // SM * SN * SG

layout(push_constant) uniform LinearPush {
    uint M;
    uint N;
    uint K;
} p;

// Each buffer is also viewed as 16-byte vectors for the staging fast path (aliased bindings).
#ifdef X_HALF
layout(std430, binding = 0) readonly buffer X { float16_t x[]; };   // (M, K)
layout(std430, binding = 0) readonly buffer X4 { uvec4 x8[]; };     // 8 halves each
const uint XV = 8;
#else
layout(std430, binding = 0) readonly buffer X { float x[]; };       // (M, K)
layout(std430, binding = 0) readonly buffer X4 { vec4 x4[]; };
const uint XV = 4;
#endif
layout(std430, binding = 1) readonly buffer W { float16_t w[]; };   // (N, K)
layout(std430, binding = 1) readonly buffer W4 { uvec4 w8[]; };     // 8 halves each
layout(std430, binding = 2) writeonly buffer Y { float y[]; };      // (M, N)

const uint BM = SM * FM * TM;
const uint BN = SN * FN * TN;
// Row stride of the staged tiles in halves: +8 keeps every row start 16-byte aligned (fragment
// loads want that) and moves consecutive rows to different banks.
const uint LDS = BK + 8;
shared float16_t xs[BM * LDS];
shared float16_t ws[BN * LDS];
shared float cs[SM * SN * TM * TN];

#ifdef EMULATE
// Lane l holds elements l, l + SG, ... (row-major in the TM x TN tile) of each accumulator.
const uint ELEMS = TM * TN / SG;
float acc[FM * FN * ELEMS];
uint a_at[FM];
uint b_at[FN];

void acc_zero() {
    for (uint i = 0; i < FM * FN * ELEMS; i++) acc[i] = 0.0;
}
void load_a(uint f, uint at) { a_at[f] = at; }
void load_b(uint f, uint at) { b_at[f] = at; }
void mma(uint fm, uint fn) {
    // The element loop stays rolled: unrolled with the k loop, lavapipe's compiler spends tens of
    // seconds on it. Only this one: lavapipe (Mesa 22.3) ends a shader's rolled loops after
    // 65535 iterations in total per invocation (gallivm's LP_MAX_TGSI_LOOP_ITERATIONS), which
    // with this loop alone bounds K to about 2048 at 4 x 4 fragments; a rolled k loop as well
    // made that 128 and silently wrong.
    [[dont_unroll]] for (uint e = 0; e < ELEMS; e++) {
        const uint i = gl_SubgroupInvocationID + e * SG;
        const uint r = i / TN, c = i % TN;
        float s = acc[(fm * FN + fn) * ELEMS + e];
        // A (TM x TK) row-major at a_at, B (TK x TN) column-major at b_at, both with stride LDS.
        for (uint k = 0; k < TK; k++) s += float(xs[a_at[fm] + r * LDS + k]) * float(ws[b_at[fn] + c * LDS + k]);
        acc[(fm * FN + fn) * ELEMS + e] = s;
    }
}
void acc_store(uint f, uint at) {
    for (uint e = 0; e < ELEMS; e++) {
        const uint i = gl_SubgroupInvocationID + e * SG;
        cs[at + i] = acc[f * ELEMS + e];
    }
}
#else // EMULATE
fcoopmatNV<16, gl_ScopeSubgroup, TM, TK> fa[FM];
fcoopmatNV<16, gl_ScopeSubgroup, TK, TN> fb[FN];
fcoopmatNV<32, gl_ScopeSubgroup, TM, TN> acc[FM * FN];

void acc_zero() {
    for (uint i = 0; i < FM * FN; i++) acc[i] = fcoopmatNV<32, gl_ScopeSubgroup, TM, TN>(0.0);
}
// x rows are K-contiguous: A = x tile is row-major. W rows are K-contiguous too, and B = W^T, so
// column n of B is row n of W: column-major.
void load_a(uint f, uint at) { coopMatLoadNV(fa[f], xs, at, LDS, false); }
void load_b(uint f, uint at) { coopMatLoadNV(fb[f], ws, at, LDS, true); }
void mma(uint fm, uint fn) { acc[fm * FN + fn] = coopMatMulAddNV(fa[fm], fb[fn], acc[fm * FN + fn]); }
void acc_store(uint f, uint at) { coopMatStoreNV(acc[f], cs, at, TN, false); }
#endif // EMULATE

// Stages x[m0 .. m0+BM, k0 .. k0+BK] into xs (zeros outside x). Whole 16-byte vectors where the
// block is inside x and rows start aligned (K a multiple of the vector), single elements elsewhere.
void stage_x(uint m0, uint k0, uint tid, uint wg) {
    if (m0 + BM <= p.M && k0 + BK <= p.K && p.K % XV == 0) {
        for (uint i = tid; i < BM * BK / XV; i += wg) {
            const uint r = i / (BK / XV), c = (i % (BK / XV)) * XV;
            const uint at = ((m0 + r) * p.K + k0 + c) / XV;
#ifdef X_HALF
            const uvec4 v = x8[at];
            for (uint j = 0; j < 4; j++) {
                const f16vec2 h = unpackFloat2x16(v[j]);
                xs[r * LDS + c + 2 * j] = h.x;
                xs[r * LDS + c + 2 * j + 1] = h.y;
            }
#else
            const vec4 v = x4[at];
            for (uint j = 0; j < 4; j++) xs[r * LDS + c + j] = float16_t(v[j]);
#endif
        }
        return;
    }
    for (uint i = tid; i < BM * BK; i += wg) {
        const uint r = i / BK, c = i % BK;
        const uint gm = m0 + r, gk = k0 + c;
        xs[r * LDS + c] = (gm < p.M && gk < p.K) ? float16_t(x[gm * p.K + gk]) : float16_t(0.0);
    }
}

void stage_w(uint n0, uint k0, uint tid, uint wg) {
    if (n0 + BN <= p.N && k0 + BK <= p.K && p.K % 8 == 0) {
        for (uint i = tid; i < BN * BK / 8; i += wg) {
            const uint r = i / (BK / 8), c = (i % (BK / 8)) * 8;
            const uvec4 v = w8[((n0 + r) * p.K + k0 + c) / 8];
            for (uint j = 0; j < 4; j++) {
                const f16vec2 h = unpackFloat2x16(v[j]);
                ws[r * LDS + c + 2 * j] = h.x;
                ws[r * LDS + c + 2 * j + 1] = h.y;
            }
        }
        return;
    }
    for (uint i = tid; i < BN * BK; i += wg) {
        const uint r = i / BK, c = i % BK;
        const uint gn = n0 + r, gk = k0 + c;
        ws[r * LDS + c] = (gn < p.N && gk < p.K) ? w[gn * p.K + gk] : float16_t(0.0);
    }
}

void main() {
    // Every index below assumes SM * SN full subgroups of SG lanes. Should a device split the
    // workgroup otherwise, y is left unwritten (the tests poison it) rather than silently wrong.
    if (gl_NumSubgroups != SM * SN || gl_SubgroupSize != SG) return;
    const uint tid = gl_LocalInvocationID.x;
    const uint wg = gl_WorkGroupSize.x;
    const uint sm = gl_SubgroupID / SN, sn = gl_SubgroupID % SN;
    const uint m0 = gl_WorkGroupID.y * BM, n0 = gl_WorkGroupID.x * BN;

    acc_zero();
    for (uint k0 = 0; k0 < p.K; k0 += BK) {
        stage_x(m0, k0, tid, wg);
        stage_w(n0, k0, tid, wg);
        barrier();
        for (uint kk = 0; kk < BK; kk += TK) {
            for (uint f = 0; f < FM; f++) load_a(f, ((sm * FM + f) * TM) * LDS + kk);
            for (uint f = 0; f < FN; f++) load_b(f, ((sn * FN + f) * TN) * LDS + kk);
            for (uint i = 0; i < FM; i++)
                for (uint j = 0; j < FN; j++) mma(i, j);
        }
        barrier();
    }

    const uint scratch = gl_SubgroupID * TM * TN;
    for (uint i = 0; i < FM; i++) {
        for (uint j = 0; j < FN; j++) {
            acc_store(i * FN + j, scratch);
            subgroupMemoryBarrierShared();
            subgroupBarrier();
            const uint gm0 = m0 + (sm * FM + i) * TM, gn0 = n0 + (sn * FN + j) * TN;
            for (uint e = gl_SubgroupInvocationID; e < TM * TN; e += SG) {
                const uint gm = gm0 + e / TN, gn = gn0 + e % TN;
                if (gm >= p.M || gn >= p.N) continue;
                float v = cs[scratch + e];
#ifdef RELU2
                v = max(v, 0.0);
                v = v * v;
#endif
                y[gm * p.N + gn] = v;
            }
            // The next fragment overwrites the scratch: every lane must have read this one.
            subgroupBarrier();
        }
    }
}
