// embedding_backward: dE(V, C) [+]= sum over tokens t with idx[t] = v of dOut[t, :].
// Deterministic scatter-add without atomics: the host sorts the token positions by id into
// CSR form (offsets (V+1), rows (T), stable), so each vocabulary row is one workgroup that
// sums its tokens' rows in a fixed order. Rows of ids absent from the batch get zeros (or are
// left alone when accumulating).
#version 450
#include "common.glsl"

layout(constant_id = 0) const uint WG = 128;
layout(local_size_x_id = 0) in;

layout(push_constant) uniform EmbeddingBackwardPush {
    uint V;
    uint C;
    uint accumulate;
} p;

layout(std430, binding = 0) readonly buffer Offsets { int offsets[]; };   // (V+1)
layout(std430, binding = 1) readonly buffer Rows { int rows[]; };         // (T)
layout(std430, binding = 2) readonly buffer DOut { float dout[]; };       // (T, C)
layout(std430, binding = 3) buffer DE { float de[]; };                    // (V, C)

void main() {
    const uint v = flat_workgroup_id();
    if (v >= p.V) return;
    const int begin = offsets[v], end = offsets[v + 1];
    for (uint c = gl_LocalInvocationID.x; c < p.C; c += WG) {
        float acc = p.accumulate != 0 ? de[v * p.C + c] : 0.0;
        for (int i = begin; i < end; i++) acc += dout[uint(rows[i]) * p.C + c];
        de[v * p.C + c] = acc;
    }
}
