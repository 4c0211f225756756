// adamw: one AdamW step (torch semantics) per element, with the global clip factor read from
// the device (grad_norm.comp FINISH), so no value returns to the host between backward and
// update:
//   g = G * clip;  P *= decay (= 1 - lr wd);  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   P -= step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps)   (step_size = lr / (1 - b1^s))
// Dense: every row moves, tokens absent from the batch included.
#version 450
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(local_size_x_id = 0) in;

layout(push_constant) uniform AdamWPush {
    uint n;
    float decay;
    float b1;
    float b2;
    float step_size;
    float inv_sqrt_bc2;
    float eps;
} p;

layout(std430, binding = 0) buffer P { float param[]; };
layout(std430, binding = 1) readonly buffer G { float grad[]; };
layout(std430, binding = 2) buffer M { float m1[]; };
layout(std430, binding = 3) buffer V { float m2[]; };
layout(std430, binding = 4) readonly buffer Clip { float clip[]; };   // [norm, factor]

void main() {
    const uint i = flat_workgroup_id() * WG + gl_LocalInvocationID.x;
    if (i >= p.n) return;
    const float g = grad[i] * clip[1];
    const float m = p.b1 * m1[i] + (1.0 - p.b1) * g;
    const float v = p.b2 * m2[i] + (1.0 - p.b2) * g * g;
    m1[i] = m;
    m2[i] = v;
    param[i] = param[i] * p.decay - p.step_size * m / (sqrt(v) * p.inv_sqrt_bc2 + p.eps);
}
