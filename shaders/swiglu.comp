// swiglu: out(R, n) = a * silu(b) for rows [a (n) | b (n)] of ab (R, 2n); with -D RESIDUAL the
// result is added into out (the residual stream), which saves a pass over x.
// Element-wise: one invocation per output element, consecutive invocations on consecutive
// columns, so both halves of a row are read coalesced.
#version 450
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(local_size_x_id = 0) in;

layout(push_constant) uniform SwiGluPush {
    uint rows;
    uint n;
} p;

layout(std430, binding = 0) readonly buffer AB { float ab[]; };   // (rows, 2n)
#ifdef RESIDUAL
layout(std430, binding = 1) buffer Out { float o[]; };            // (rows, n), +=
#else
layout(std430, binding = 1) writeonly buffer Out { float o[]; };  // (rows, n)
#endif

void main() {
    const uint idx = flat_workgroup_id() * WG + gl_LocalInvocationID.x;
    if (idx >= p.rows * p.n) return;
    const uint r = idx / p.n, c = idx % p.n;
    const float a = ab[r * 2 * p.n + c];
    const float b = ab[r * 2 * p.n + p.n + c];
    const float v = a * (b / (1.0 + exp(-b)));
#ifdef RESIDUAL
    o[idx] += v;
#else
    o[idx] = v;
#endif
}
