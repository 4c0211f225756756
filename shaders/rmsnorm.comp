// rmsnorm: y(R, C) = x / sqrt(mean(x^2) + eps) per row, no learned gain (spec: rmsnorm).
// One workgroup per row; invocations stride over C (coalesced) and reduce the sum of
// squares. -D SUBGROUP (variant rmsnorm_subgroup, used where the device has subgroup
// arithmetic) reduces inside subgroups first and needs one barrier instead of log2(WG).
#version 450
#ifdef SUBGROUP
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;   // must be a power of two (tree reduction)
layout(local_size_x_id = 0) in;

layout(push_constant) uniform RmsNormPush {
    uint rows;
    uint cols;
    float eps;
} p;

layout(std430, binding = 0) readonly buffer X { float x[]; };   // (rows, cols)
layout(std430, binding = 1) writeonly buffer Y { float y[]; };  // (rows, cols)

shared float partial[WG];

void main() {
    const uint row = flat_workgroup_id();
    // Uniform per workgroup, so returning here cannot split a barrier.
    if (row >= p.rows) return;
    const uint tid = gl_LocalInvocationID.x;
    const uint base = row * p.cols;

    float ss = 0.0;
    for (uint c = tid; c < p.cols; c += WG) {
        const float v = x[base + c];
        ss = fma(v, v, ss);
    }
#ifdef SUBGROUP
    ss = subgroupAdd(ss);
    if (subgroupElect()) partial[gl_SubgroupID] = ss;
    barrier();
    // Every invocation adds the few per-subgroup sums itself: no second barrier needed.
    float total = 0.0;
    for (uint i = 0; i < gl_NumSubgroups; ++i) total += partial[i];
    const float scale = inversesqrt(total / float(p.cols) + p.eps);
#else
    partial[tid] = ss;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (tid < s) partial[tid] += partial[tid + s];
        barrier();
    }
    const float scale = inversesqrt(partial[0] / float(p.cols) + p.eps);
#endif

    for (uint c = tid; c < p.cols; c += WG) {
        y[base + c] = x[base + c] * scale;
    }
}
