// cross_entropy_backward, softmax fused: for logits (R, V) and targets (R),
//   loss[r]      = logsumexp(z_r) - z_r[t_r]                     (0 where t_r = -1)
//   dlogits[r,c] = (softmax(z_r)[c] - [c == t_r]) * inv_count    (0 where t_r = -1)
// inv_count = 1 / (rows whose target is not -1), from the host, which knows the targets; the
// loss rows come back for the host's mean. A target outside [-1, V) gives NaN loss and
// gradient row (a shader cannot throw). One workgroup per row, max and sum reduced in
// shared memory as in cross_entropy.comp.
#version 450
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;   // power of two
layout(local_size_x_id = 0) in;

layout(push_constant) uniform CrossEntropyBackwardPush {
    uint rows;
    uint V;
    float inv_count;
} p;

layout(std430, binding = 0) readonly buffer Logits { float z[]; };     // (rows, V)
layout(std430, binding = 1) readonly buffer Targets { int tgt[]; };    // (rows)
layout(std430, binding = 2) writeonly buffer Loss { float loss[]; };   // (rows)
layout(std430, binding = 3) writeonly buffer DZ { float dz[]; };       // (rows, V)

shared float red[WG];

void main() {
    const uint row = flat_workgroup_id();
    if (row >= p.rows) return;
    const uint tid = gl_LocalInvocationID.x;
    const uint base = row * p.V;
    const int t = tgt[row];
    const float nan = uintBitsToFloat(0x7fc00000u);

    if (t == -1) {
        for (uint c = tid; c < p.V; c += WG) dz[base + c] = 0.0;
        if (tid == 0) loss[row] = 0.0;
        return;
    }
    const bool bad = t < -1 || uint(t) >= p.V;

    float m = uintBitsToFloat(0xff800000u);
    for (uint c = tid; c < p.V; c += WG) m = max(m, z[base + c]);
    red[tid] = m;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (tid < s) red[tid] = max(red[tid], red[tid + s]);
        barrier();
    }
    const float mx = red[0];
    barrier();

    float acc = 0.0;
    for (uint c = tid; c < p.V; c += WG) acc += exp(z[base + c] - mx);
    red[tid] = acc;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (tid < s) red[tid] += red[tid + s];
        barrier();
    }
    const float lse = mx + log(red[0]);

    for (uint c = tid; c < p.V; c += WG) {
        const float sm = exp(z[base + c] - lse);
        dz[base + c] = bad ? nan : (sm - (int(c) == t ? 1.0 : 0.0)) * p.inv_count;
    }
    if (tid == 0) loss[row] = bad ? nan : lse - z[base + uint(t)];
}
