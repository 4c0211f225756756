// cross_entropy: loss(R) per row of logits (R, V) against targets (R):
//   loss_r = logsumexp(z_r) - z_r[target_r], 0 where target_r = -1 (ignored), NaN for a target
//   outside [-1, V) (a shader cannot throw).
// The mean over counted rows is taken by the host in double (VulkanForward.Loss): R floats
// come back instead of one, and the host already knows the count from the targets.
// One workgroup per row; invocations stride over V (coalesced) and reduce the max, then the
// sum of exp(z - max). -D SUBGROUP (variant cross_entropy_subgroup, used where the device has
// subgroup arithmetic) reduces inside subgroups first: one barrier per reduction instead of
// log2(WG); the plain variant reduces through shared memory alone.
#version 450
#ifdef SUBGROUP
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif
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

#ifdef SUBGROUP
float wg_max(float v) {
    v = subgroupMax(v);
    if (subgroupElect()) red[gl_SubgroupID] = v;
    barrier();
    float r = red[0];
    for (uint i = 1; i < gl_NumSubgroups; ++i) r = max(r, red[i]);
    barrier();   // red is reused by the next reduction
    return r;
}
float wg_sum(float v) {
    v = subgroupAdd(v);
    if (subgroupElect()) red[gl_SubgroupID] = v;
    barrier();
    float r = 0.0;
    for (uint i = 0; i < gl_NumSubgroups; ++i) r += red[i];
    barrier();
    return r;
}
#else
float wg_max(float v) {
    const uint tid = gl_LocalInvocationID.x;
    red[tid] = v;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (tid < s) red[tid] = max(red[tid], red[tid + s]);
        barrier();
    }
    const float r = red[0];
    barrier();
    return r;
}
float wg_sum(float v) {
    const uint tid = gl_LocalInvocationID.x;
    red[tid] = v;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (tid < s) red[tid] += red[tid + s];
        barrier();
    }
    const float r = red[0];
    barrier();
    return r;
}
#endif

void main() {
    const uint row = flat_workgroup_id();
    if (row >= p.rows) return;
    const uint tid = gl_LocalInvocationID.x;
    const uint base = row * p.V;

    float m = uintBitsToFloat(0xff800000u);   // -inf
    for (uint c = tid; c < p.V; c += WG) m = max(m, z[base + c]);
    const float mx = wg_max(m);

    float acc = 0.0;
    for (uint c = tid; c < p.V; c += WG) acc += exp(z[base + c] - mx);
    const float sum = wg_sum(acc);

    if (tid == 0) {
        const int t = tgt[row];
        if (t == -1) loss[row] = 0.0;
        else if (t < -1 || uint(t) >= p.V) loss[row] = uintBitsToFloat(0x7fc00000u);
        else loss[row] = mx + log(sum) - z[base + uint(t)];
    }
}
