// add: x(n) += y(n), the residual add of the FFN branch (its DOWN linear writes y).
#version 450
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(local_size_x_id = 0) in;

layout(push_constant) uniform AddPush {
    uint n;
} p;

layout(std430, binding = 0) readonly buffer Y { float y[]; };   // (n)
layout(std430, binding = 1) buffer X { float x[]; };            // (n), +=

void main() {
    const uint idx = flat_workgroup_id() * WG + gl_LocalInvocationID.x;
    if (idx >= p.n) return;
    x[idx] += y[idx];
}
