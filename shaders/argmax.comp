// argmax: idx(R) = the column of each row's largest logit (greedy decoding); ties go to the
// lowest index, as torch.argmax. NaN never wins a comparison.
// One workgroup per row; invocations stride over V (coalesced), then a shared-memory tree
// reduces (value, index) pairs.
#version 450
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;   // must be a power of two (tree reduction)
layout(local_size_x_id = 0) in;

layout(push_constant) uniform ArgmaxPush {
    uint rows;
    uint V;
} p;

layout(std430, binding = 0) readonly buffer Logits { float z[]; };  // (rows, V)
layout(std430, binding = 1) writeonly buffer Idx { int idx[]; };    // (rows)

const uint NONE = 0xffffffffu;

shared float vals[WG];
shared uint ids[WG];

void main() {
    const uint row = flat_workgroup_id();
    if (row >= p.rows) return;
    const uint tid = gl_LocalInvocationID.x;
    const uint base = row * p.V;

    // Ascending c, strict '>': each invocation keeps its lowest index among equal values.
    float best = 0.0;
    uint at = NONE;
    for (uint c = tid; c < p.V; c += WG) {
        const float v = z[base + c];
        if (at == NONE || v > best) { best = v; at = c; }
    }
    vals[tid] = best;
    ids[tid] = at;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (tid < s) {
            const float ov = vals[tid + s];
            const uint oi = ids[tid + s];
            const uint mi = ids[tid];
            if (oi != NONE && (mi == NONE || ov > vals[tid] || (ov == vals[tid] && oi < mi))) {
                vals[tid] = ov;
                ids[tid] = oi;
            }
        }
        barrier();
    }
    if (tid == 0) idx[row] = int(ids[0]);
}
