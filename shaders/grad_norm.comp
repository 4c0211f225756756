// grad_norm: the L2 norm of many tensors without a host round trip, in two deterministic
// passes (fixed summation order, no atomics):
//   (default) partials[offset + w] = sum of x^2 over the elements workgroup w strides over;
//             one dispatch per tensor, each writing its own range of partials.
//   -D FINISH one workgroup: ss = sum(partials[0:count]); out[0] = sqrt(ss) and
//             out[1] = clip / (norm + 1e-6) when clip > 0 and norm > clip, else 1 (the
//             spec's clipping factor, read by the optimizer kernels).
// Muon's Frobenius normalisation uses the same two passes on its (m, n) update.
#version 450

layout(constant_id = 0) const uint WG = 256;   // power of two
layout(local_size_x_id = 0) in;

#ifdef FINISH
layout(push_constant) uniform GradNormFinishPush {
    uint count;
    float clip;
} p;
layout(std430, binding = 0) readonly buffer Partials { float partials[]; };
layout(std430, binding = 1) writeonly buffer Out { float outv[]; };   // [norm, clip factor]
#else
layout(push_constant) uniform GradNormPartialPush {
    uint n;
    uint offset;
} p;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) buffer Partials { float partials[]; };
#endif

shared float red[WG];

void main() {
    const uint tid = gl_LocalInvocationID.x;
    float acc = 0.0;
#ifdef FINISH
    for (uint i = tid; i < p.count; i += WG) acc += partials[i];
#else
    const uint stride = gl_NumWorkGroups.x * WG;
    for (uint i = gl_WorkGroupID.x * WG + tid; i < p.n; i += stride) acc = fma(x[i], x[i], acc);
#endif
    red[tid] = acc;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (tid < s) red[tid] += red[tid + s];
        barrier();
    }
    if (tid != 0) return;
#ifdef FINISH
    const float norm = sqrt(red[0]);
    outv[0] = norm;
    outv[1] = (p.clip > 0.0 && norm > p.clip) ? p.clip / (norm + 1e-6) : 1.0;
#else
    partials[p.offset + gl_WorkGroupID.x] = red[0];
#endif
}
