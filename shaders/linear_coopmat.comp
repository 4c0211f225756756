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
// each subgroup owns FM x FN fragments of TM x TN. K is walked in BK steps through STAGES (1 or 2)
// shared-memory copies of both operand tiles (halves, row-major, K-contiguous, as both operands
// arrive). Software pipelining: each invocation loads its share of the K step AHEAD (1 or 2) steps
// on from global memory into registers (16-byte loads, 8 halves each) before the subgroups
// multiply the current step from shared memory, and writes the next step to shared memory
// afterwards, so the loads' latency hides behind the matrix work. With two stages one barrier per
// K step suffices (the step being written is not the one being read); with one, two.
// Shared tiles are uvec4 arrays, 8 halves to an element (glslang's NV loads take 32-bit vectors, not
// f16 ones; fragment offsets and strides count these 16-byte elements): a chunk fetched from global
// memory is stored in one piece, and a row is BK + 8 halves long, which keeps every row start 16-byte
// aligned (fragment loads need that) and puts the eight rows one fragment load touches on
// different banks.
// Fragments lying wholly inside y (and N a multiple of 4, for 16-byte row alignment) are stored
// straight to y; the others go through a per-subgroup shared scratch so that awkward M, N need no
// special case. relu2 is applied element by element either way.
//
// -D EMULATE replaces the fragments by plain per-lane arithmetic with the same semantics (A
// row-major, B column-major, D = A*B + C), so that a device without cooperative matrices
// (lavapipe, in the tests) runs and checks everything else here: staging, pipelining, indices,
// bounds, both epilogues.
#version 450
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_EXT_shader_16bit_storage : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_EXT_control_flow_attributes : require
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
layout(constant_id = 7) const uint BK = 32;   // K per step, a multiple of TK and of 8
layout(constant_id = 8) const uint SG = 32;   // the subgroup size the host assumed
layout(local_size_x_id = 9) in;               // SM * SN * SG
layout(constant_id = 10) const uint STAGES = 2; // shared copies of the operand tiles: 1 or 2
layout(constant_id = 11) const uint AHEAD = 1;  // K steps fetched ahead into registers: 1 or 2

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
const uint WG = SM * SN * SG;
// Row stride of the staged tiles in uvec4 elements (BK + 8 halves).
const uint LDS8 = (BK + 8) / 8;
shared uvec4 xs[STAGES * BM * LDS8];
shared uvec4 ws[STAGES * BN * LDS8];
shared float cs[SM * SN * TM * TN];

// The 16-byte chunks (8 halves) of one K step each invocation carries from global to shared memory.
const uint CHUNKS_X = BM * BK / 8, CHUNKS_W = BN * BK / 8;
const uint RX = (CHUNKS_X + WG - 1) / WG, RW = (CHUNKS_W + WG - 1) / WG;
// Two register sets where AHEAD is 2 (the second is dead code otherwise). Which set a step uses
// varies at run time, so each access is a branch on the set, never an index into registers.
uvec4 xr0[RX], xr1[RX];
uvec4 wr0[RW], wr1[RW];

#ifdef EMULATE
// Lane l holds elements l, l + SG, ... (row-major in the TM x TN tile) of each accumulator.
const uint ELEMS = TM * TN / SG;
float acc[FM * FN * ELEMS];
uint a_at[FM];
uint b_at[FN];

float half_at(bool a, uint at) {
    const uint u = a ? xs[at / 8][(at % 8) / 2] : ws[at / 8][(at % 8) / 2];
    return float(unpackFloat2x16(u)[at % 2]);
}
void acc_zero() {
    for (uint i = 0; i < FM * FN * ELEMS; i++) acc[i] = 0.0;
}
// Offsets in uvec4 elements, as the real loads take them; kept in halves here.
void load_a(uint f, uint at) { a_at[f] = at * 8; }
void load_b(uint f, uint at) { b_at[f] = at * 8; }
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
        // A (TM x TK) row-major at a_at, B (TK x TN) column-major at b_at, both with stride LDS8 * 8.
        [[unroll]] for (uint k = 0; k < TK; k++)
            s += half_at(true, a_at[fm] + r * LDS8 * 8 + k) * half_at(false, b_at[fn] + c * LDS8 * 8 + k);
        acc[(fm * FN + fn) * ELEMS + e] = s;
    }
}
void acc_relu2(uint f) {
#ifdef RELU2
    for (uint e = 0; e < ELEMS; e++) {
        const float v = max(acc[f * ELEMS + e], 0.0);
        acc[f * ELEMS + e] = v * v;
    }
#endif
}
void acc_to_scratch(uint f, uint at) {
    for (uint e = 0; e < ELEMS; e++) cs[at + gl_SubgroupInvocationID + e * SG] = acc[f * ELEMS + e];
}
void acc_to_y(uint f, uint at) {
    for (uint e = 0; e < ELEMS; e++) {
        const uint i = gl_SubgroupInvocationID + e * SG;
        y[at + (i / TN) * p.N + i % TN] = acc[f * ELEMS + e];
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
void load_a(uint f, uint at) { coopMatLoadNV(fa[f], xs, at, LDS8, false); }
void load_b(uint f, uint at) { coopMatLoadNV(fb[f], ws, at, LDS8, true); }
void mma(uint fm, uint fn) { acc[fm * FN + fn] = coopMatMulAddNV(fa[fm], fb[fn], acc[fm * FN + fn]); }
void acc_relu2(uint f) {
#ifdef RELU2
    for (int e = 0; e < acc[f].length(); e++) {
        const float v = max(acc[f][e], 0.0);
        acc[f][e] = v * v;
    }
#endif
}
void acc_to_scratch(uint f, uint at) { coopMatStoreNV(acc[f], cs, at, TN, false); }
void acc_to_y(uint f, uint at) { coopMatStoreNV(acc[f], y, at, p.N, false); }
#endif // EMULATE

// Eight values rounded to half, packed as one 16-byte chunk (the unit staged to shared memory).
uvec4 pack8(float v[8]) {
    return uvec4(packFloat2x16(f16vec2(v[0], v[1])), packFloat2x16(f16vec2(v[2], v[3])),
                 packFloat2x16(f16vec2(v[4], v[5])), packFloat2x16(f16vec2(v[6], v[7])));
}

// x[gm, gk .. gk + 8) as 8 halves (zeros outside x): one 16-byte load (two for f32 x) where
// the chunk is inside x and rows start aligned (K a multiple of the vector), elements otherwise.
uvec4 fetch_x(uint gm, uint gk) {
    if (gm >= p.M) return uvec4(0);
    if (gk + 8 <= p.K && p.K % XV == 0) {
#ifdef X_HALF
        return x8[(gm * p.K + gk) / 8];
#else
        const uint at = (gm * p.K + gk) / 4;
        const vec4 a = x4[at], b = x4[at + 1];
        return uvec4(packFloat2x16(f16vec2(a.xy)), packFloat2x16(f16vec2(a.zw)),
                     packFloat2x16(f16vec2(b.xy)), packFloat2x16(f16vec2(b.zw)));
#endif
    }
    float v[8];
    for (uint j = 0; j < 8; j++) v[j] = gk + j < p.K ? float(x[gm * p.K + gk + j]) : 0.0;
    return pack8(v);
}

uvec4 fetch_w(uint gn, uint gk) {
    if (gn >= p.N) return uvec4(0);
    if (gk + 8 <= p.K && p.K % 8 == 0) return w8[(gn * p.K + gk) / 8];
    float v[8];
    for (uint j = 0; j < 8; j++) v[j] = gk + j < p.K ? float(w[gn * p.K + gk + j]) : 0.0;
    return pack8(v);
}

// This invocation's chunks of the K step at k0, into register set r: chunk c of a tile (BK / 8
// chunks per row) is row c / (BK / 8), halves (c % (BK / 8)) * 8 onwards.
void load_step(uint m0, uint n0, uint k0, uint tid, uint r) {
    for (uint j = 0; j < RX; j++) {
        const uint c = tid + j * WG;
        if (c >= CHUNKS_X) continue;
        const uvec4 v = fetch_x(m0 + c / (BK / 8), k0 + (c % (BK / 8)) * 8);
        if (r == 0) xr0[j] = v; else xr1[j] = v;
    }
    for (uint j = 0; j < RW; j++) {
        const uint c = tid + j * WG;
        if (c >= CHUNKS_W) continue;
        const uvec4 v = fetch_w(n0 + c / (BK / 8), k0 + (c % (BK / 8)) * 8);
        if (r == 0) wr0[j] = v; else wr1[j] = v;
    }
}

// Register set r into shared stage s: chunk c goes to row c / (BK / 8), element c % (BK / 8).
void store_step(uint s, uint tid, uint r) {
    for (uint j = 0; j < RX; j++) {
        const uint c = tid + j * WG;
        if (c >= CHUNKS_X) continue;
        xs[s * BM * LDS8 + (c / (BK / 8)) * LDS8 + c % (BK / 8)] = r == 0 ? xr0[j] : xr1[j];
    }
    for (uint j = 0; j < RW; j++) {
        const uint c = tid + j * WG;
        if (c >= CHUNKS_W) continue;
        ws[s * BN * LDS8 + (c / (BK / 8)) * LDS8 + c % (BK / 8)] = r == 0 ? wr0[j] : wr1[j];
    }
}

// The subgroup's FM x FN fragments += its rows of stage s's x tile times its columns of the W tile.
void multiply_step(uint s, uint sm, uint sn) {
    for (uint kk = 0; kk < BK; kk += TK) {
        for (uint f = 0; f < FM; f++) load_a(f, s * BM * LDS8 + ((sm * FM + f) * TM) * LDS8 + kk / 8);
        for (uint f = 0; f < FN; f++) load_b(f, s * BN * LDS8 + ((sn * FN + f) * TN) * LDS8 + kk / 8);
        for (uint i = 0; i < FM; i++)
            for (uint j = 0; j < FN; j++) mma(i, j);
    }
}

void main() {
    // Every index below assumes SM * SN full subgroups of SG lanes. Should a device split the
    // workgroup otherwise, y is left unwritten (the tests poison it) rather than silently wrong.
    if (gl_NumSubgroups != SM * SN || gl_SubgroupSize != SG) return;
    const uint tid = gl_LocalInvocationID.x;
    const uint sm = gl_SubgroupID / SN, sn = gl_SubgroupID % SN;
    const uint m0 = gl_WorkGroupID.y * BM, n0 = gl_WorkGroupID.x * BN;
    const uint steps = (p.K + BK - 1) / BK;

    // Step t sits in shared stage t % STAGES while it is multiplied; it was fetched AHEAD steps
    // earlier into register set t % AHEAD, which is free again once the step is in shared memory.
    acc_zero();
    load_step(m0, n0, 0, tid, 0);
    store_step(0, tid, 0);
    if (AHEAD == 2 && steps > 1) load_step(m0, n0, BK, tid, 1);
    barrier();
    for (uint t = 0; t < steps; t++) {
        if (t + AHEAD < steps) load_step(m0, n0, (t + AHEAD) * BK, tid, t % AHEAD);
        multiply_step(t % STAGES, sm, sn);
        // One stage: everyone must be done reading it before it is overwritten.
        if (STAGES == 1) barrier();
        if (t + 1 < steps) store_step((t + 1) % STAGES, tid, (t + 1) % AHEAD);
        barrier();
    }

    const uint scratch = gl_SubgroupID * TM * TN;
    for (uint i = 0; i < FM; i++) {
        for (uint j = 0; j < FN; j++) {
            const uint f = i * FN + j;
            const uint gm0 = m0 + (sm * FM + i) * TM, gn0 = n0 + (sn * FN + j) * TN;
            if (gm0 >= p.M || gn0 >= p.N) continue;
            acc_relu2(f);
            if (gm0 + TM <= p.M && gn0 + TN <= p.N && p.N % 4 == 0) {
                acc_to_y(f, gm0 * p.N + gn0);
                continue;
            }
            acc_to_scratch(f, scratch);
            subgroupMemoryBarrierShared();
            subgroupBarrier();
            for (uint e = gl_SubgroupInvocationID; e < TM * TN; e += SG) {
                const uint gm = gm0 + e / TN, gn = gn0 + e % TN;
                if (gm < p.M && gn < p.N) y[gm * p.N + gn] = cs[scratch + e];
            }
            // The next fragment overwrites the scratch: every lane must have read this one.
            subgroupBarrier();
        }
    }
}
