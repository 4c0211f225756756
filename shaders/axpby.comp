// axpby: y(n) = alpha * x(n) + beta * y(n); beta = 0 writes alpha * x without reading y (so an
// uninitialised y, NaN bits included, is fine). Gradient accumulation over micro-batches on the
// device: acc = s*g, acc = s*g + acc, ..., and the last g = 1*acc + s*g.
#version 450
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(local_size_x_id = 0) in;

layout(push_constant) uniform AxpbyPush {
    uint n;
    float alpha;
    float beta;
} p;

layout(std430, binding = 0) readonly buffer X { float x[]; };   // (n)
layout(std430, binding = 1) buffer Y { float y[]; };            // (n), in and out

void main() {
    const uint idx = flat_workgroup_id() * WG + gl_LocalInvocationID.x;
    if (idx >= p.n) return;
    // The same two roundings as the host's `acc + s * g` (no fused multiply-add for the sum).
    precise float ax = p.alpha * x[idx];
    y[idx] = p.beta == 0.0 ? ax : ax + p.beta * y[idx];
}
