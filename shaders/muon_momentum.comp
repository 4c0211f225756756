// muon_momentum: Muon's momentum and Nesterov look-ahead for a matrix P (rows, cols), with the
// global clip factor read from the device:
//   g = G * clip;  M = beta M + (1-beta) g;  U = (1-beta) g + beta M
// U is written as Newton-Schulz's X: transposed (cols, rows) when the matrix is tall, so the
// iterations always work on the wide orientation (X X^T is the small Gram matrix).
#version 450
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(local_size_x_id = 0) in;

layout(push_constant) uniform MuonMomentumPush {
    uint rows;
    uint cols;
    uint transpose;
    float beta;
} p;

layout(std430, binding = 0) readonly buffer G { float grad[]; };       // (rows, cols)
layout(std430, binding = 1) buffer M { float mom[]; };                 // (rows, cols)
layout(std430, binding = 2) readonly buffer Clip { float clip[]; };    // [norm, factor]
layout(std430, binding = 3) writeonly buffer X { float x[]; };         // (rows, cols) or (cols, rows)

void main() {
    const uint i = flat_workgroup_id() * WG + gl_LocalInvocationID.x;
    if (i >= p.rows * p.cols) return;
    const float g = grad[i] * clip[1];
    const float f1 = 1.0 - p.beta;
    const float m = p.beta * mom[i] + f1 * g;
    mom[i] = m;
    const float u = f1 * g + p.beta * m;
    const uint r = i / p.cols, c = i % p.cols;
    x[p.transpose != 0 ? c * p.rows + r : i] = u;
}
