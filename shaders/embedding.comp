// embedding: out(T, C) = E[idx[t], :] for t in 0..T-1 (a row gather).
// One workgroup per token; invocations copy the row with consecutive addresses.
#version 450
#include "common.glsl"

layout(constant_id = 0) const uint WG = 128;
layout(local_size_x_id = 0) in;

layout(push_constant) uniform EmbeddingPush {
    uint T;
    uint V;
    uint C;
} p;

layout(std430, binding = 0) readonly buffer Idx { int idx[]; };   // (T)
layout(std430, binding = 1) readonly buffer E { float e[]; };     // (V, C)
layout(std430, binding = 2) writeonly buffer Out { float o[]; };  // (T, C)

void main() {
    const uint t = flat_workgroup_id();
    if (t >= p.T) return;
    const int id = idx[t];
    // A shader cannot throw: an out-of-range token writes NaN so that it cannot pass as data.
    const bool valid = id >= 0 && uint(id) < p.V;
    for (uint c = gl_LocalInvocationID.x; c < p.C; c += WG) {
        o[t * p.C + c] = valid ? e[uint(id) * p.C + c] : uintBitsToFloat(0x7fc00000u);
    }
}
