// swiglu_backward: d[a | b] (R, 2n) from rows [a | b] of ab (R, 2n) and dout (R, n), for
// out = a * silu(b):  da = dout * silu(b),  db = dout * a * silu'(b),
// silu'(b) = sig(b) * (1 + b * (1 - sig(b))). Element-wise, coalesced like swiglu.comp.
#version 450
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(local_size_x_id = 0) in;

layout(push_constant) uniform SwiGluBackwardPush {
    uint rows;
    uint n;
} p;

layout(std430, binding = 0) readonly buffer AB { float ab[]; };      // (rows, 2n)
layout(std430, binding = 1) readonly buffer DOut { float dout[]; };  // (rows, n)
layout(std430, binding = 2) writeonly buffer DAB { float dab[]; };   // (rows, 2n)

void main() {
    const uint idx = flat_workgroup_id() * WG + gl_LocalInvocationID.x;
    if (idx >= p.rows * p.n) return;
    const uint r = idx / p.n, c = idx % p.n;
    const float a = ab[r * 2 * p.n + c];
    const float b = ab[r * 2 * p.n + p.n + c];
    const float d = dout[idx];
    const float sg = 1.0 / (1.0 + exp(-b));
    dab[r * 2 * p.n + c] = d * b * sg;
    dab[r * 2 * p.n + p.n + c] = d * a * sg * (1.0 + b * (1.0 - sg));
}
