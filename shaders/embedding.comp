// embedding: out(T, C) = E[idx[t], :] for t in 0..T-1 (a row gather).
// -D Q8 / -D Q4: E arrives quantized (the .palm layout, shaders/quant.glsl) and only the gathered
// rows are decoded; the table never exists as floats.
// One workgroup per token; invocations copy the row with consecutive addresses.
#version 450
#include "common.glsl"

layout(constant_id = 0) const uint WG = 128;
layout(local_size_x_id = 0) in;

#if defined(Q8) || defined(Q4)
layout(push_constant) uniform EmbeddingQuantPush {
    uint T;
    uint V;
    uint C;
    uint G;     // elements per scale; divides C, so a group never straddles two rows
} p;

layout(std430, binding = 0) readonly buffer Idx { int idx[]; };        // (T)
layout(std430, binding = 1) readonly buffer E { uint wq[]; };          // (V, C) q8: 1 byte, q4: 1 nibble each
layout(std430, binding = 2) readonly buffer S { uint scale_bits[]; };  // (V*C/G) q8: f32, q4: f16 pairs
layout(std430, binding = 3) writeonly buffer Out { float o[]; };       // (T, C)

#include "quant.glsl"
float load_e(uint i) { return load_quant(i, p.G); }
#else
layout(push_constant) uniform EmbeddingPush {
    uint T;
    uint V;
    uint C;
} p;

layout(std430, binding = 0) readonly buffer Idx { int idx[]; };   // (T)
layout(std430, binding = 1) readonly buffer E { float e[]; };     // (V, C)
layout(std430, binding = 2) writeonly buffer Out { float o[]; };  // (T, C)

float load_e(uint i) { return e[i]; }
#endif

void main() {
    const uint t = flat_workgroup_id();
    if (t >= p.T) return;
    const int id = idx[t];
    // A shader cannot throw: an out-of-range token writes NaN so that it cannot pass as data.
    const bool valid = id >= 0 && uint(id) < p.V;
    for (uint c = gl_LocalInvocationID.x; c < p.C; c += WG) {
        o[t * p.C + c] = valid ? load_e(uint(id) * p.C + c) : uintBitsToFloat(0x7fc00000u);
    }
}
