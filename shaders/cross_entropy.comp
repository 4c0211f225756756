// cross_entropy: loss(R) per row of logits (R, V) against targets (R):
//   loss_r = logsumexp(z_r) - z_r[target_r], 0 where target_r = -1 (ignored), NaN for a target
//   outside [-1, V) (a shader cannot throw).
// The mean over counted rows is taken by the host in double (VulkanForward.Loss): R floats
// come back instead of one, and the host already knows the count from the targets.
// One workgroup per row; invocations stride over V (coalesced) and reduce the max, then the
// sum of exp(z - max), through shared memory.
#version 450
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;   // must be a power of two (tree reduction)
layout(local_size_x_id = 0) in;

layout(push_constant) uniform CrossEntropyPush {
    uint rows;
    uint V;
} p;

layout(std430, binding = 0) readonly buffer Logits { float z[]; };   // (rows, V)
layout(std430, binding = 1) readonly buffer Targets { int tgt[]; };  // (rows)
layout(std430, binding = 2) writeonly buffer Loss { float loss[]; }; // (rows)

shared float red[WG];

void main() {
    const uint row = flat_workgroup_id();
    if (row >= p.rows) return;
    const uint tid = gl_LocalInvocationID.x;
    const uint base = row * p.V;

    float m = uintBitsToFloat(0xff800000u);   // -inf
    for (uint c = tid; c < p.V; c += WG) m = max(m, z[base + c]);
    red[tid] = m;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (tid < s) red[tid] = max(red[tid], red[tid + s]);
        barrier();
    }
    const float mx = red[0];
    barrier();   // red is reused for the sum

    float acc = 0.0;
    for (uint c = tid; c < p.V; c += WG) acc += exp(z[base + c] - mx);
    red[tid] = acc;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (tid < s) red[tid] += red[tid + s];
        barrier();
    }

    if (tid == 0) {
        const int t = tgt[row];
        if (t == -1) loss[row] = 0.0;
        else if (t < -1 || uint(t) >= p.V) loss[row] = uintBitsToFloat(0x7fc00000u);
        else loss[row] = mx + log(red[0]) - z[base + uint(t)];
    }
}
