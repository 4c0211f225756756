// muon_update: P = P * decay - step * X, with X the Newton-Schulz output stored transposed
// (cols, rows) when the matrix is tall; decay = 1 - lr wd, step = lr sqrt(max(1, rows/cols)).
#version 450
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(local_size_x_id = 0) in;

layout(push_constant) uniform MuonUpdatePush {
    uint rows;
    uint cols;
    uint transpose;
    float decay;
    float step;
} p;

layout(std430, binding = 0) buffer P { float param[]; };            // (rows, cols)
layout(std430, binding = 1) readonly buffer X { float x[]; };       // (rows, cols) or (cols, rows)

void main() {
    const uint i = flat_workgroup_id() * WG + gl_LocalInvocationID.x;
    if (i >= p.rows * p.cols) return;
    const uint r = i / p.cols, c = i % p.cols;
    param[i] = param[i] * p.decay - p.step * x[p.transpose != 0 ? c * p.rows + r : i];
}
