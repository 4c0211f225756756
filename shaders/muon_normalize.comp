// muon_normalize: X /= (frobenius(X) + 1e-7), the norm read from the device (out[0] of
// grad_norm.comp FINISH over X's partial sums).
#version 450
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(local_size_x_id = 0) in;

layout(push_constant) uniform MuonNormalizePush {
    uint n;
} p;

layout(std430, binding = 0) readonly buffer Norm { float norm[]; };   // [frobenius, unused]
layout(std430, binding = 1) buffer X { float x[]; };

void main() {
    const uint i = flat_workgroup_id() * WG + gl_LocalInvocationID.x;
    if (i >= p.n) return;
    x[i] *= 1.0 / (norm[0] + 1e-7);
}
