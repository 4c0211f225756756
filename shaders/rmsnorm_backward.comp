// rmsnorm_backward: dx(R, C) from the forward's input x and dy, for y = x * s per row,
// s = 1/sqrt(mean(x^2) + eps):
//   dx = s * (dy - y * mean(dy * y)) = s * dy - x * s^3 * sum(dy * x) / C
// s is recomputed from x (one more reduction) instead of being saved by the forward.
// With accumulate != 0, dx += (the residual stream's gradient gathers every branch).
// One workgroup per row, invocations stride over C (coalesced), two sums reduced together.
#version 450
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;   // power of two
layout(local_size_x_id = 0) in;

layout(push_constant) uniform RmsNormBackwardPush {
    uint rows;
    uint cols;
    float eps;
    uint accumulate;
} p;

layout(std430, binding = 0) readonly buffer X { float x[]; };    // (rows, cols)
layout(std430, binding = 1) readonly buffer DY { float dy[]; };  // (rows, cols)
layout(std430, binding = 2) buffer DX { float dx[]; };           // (rows, cols), = or +=

shared float ss_[WG];
shared float sd_[WG];

void main() {
    const uint row = flat_workgroup_id();
    if (row >= p.rows) return;
    const uint tid = gl_LocalInvocationID.x;
    const uint base = row * p.cols;

    float ss = 0.0, sd = 0.0;
    for (uint c = tid; c < p.cols; c += WG) {
        const float v = x[base + c];
        ss = fma(v, v, ss);
        sd = fma(dy[base + c], v, sd);
    }
    ss_[tid] = ss;
    sd_[tid] = sd;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (tid < s) {
            ss_[tid] += ss_[tid + s];
            sd_[tid] += sd_[tid + s];
        }
        barrier();
    }
    const float n = float(p.cols);
    const float sc = inversesqrt(ss_[0] / n + p.eps);
    const float k = sc * sc * sc * sd_[0] / n;

    for (uint c = tid; c < p.cols; c += WG) {
        const float g = sc * dy[base + c] - x[base + c] * k;
        dx[base + c] = p.accumulate != 0 ? dx[base + c] + g : g;
    }
}
