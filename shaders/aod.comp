// aod: the AoD mix of one block application, fused, from the QKV linear's output.
//   per head (hd channels): q, k <- rope(rmsnorm(q)), rope(rmsnorm(k))   (QK-norm, then RoPE)
//   g = sigmoid(k);  S_t = S_{t-1} + g*v;  Z_t = Z_{t-1} + g   (-D MEAN only)
//   y = relu(q) * S  (sum)   or   relu(q) * S / Z   (mean)
// Sequential form (no define): one workgroup per (sequence b, group of whole heads); each
// invocation owns one channel and walks the T tokens of its sequence in order, carrying S (and
// Z) in a register, so the causal scan needs no cross-invocation traffic. Per token, the head's
// q/k values go through shared memory once: for the rmsnorm sums and for the RoPE partner
// channel (c +- hd/2). Loads of row t are consecutive in the channel index: coalesced. T = 1 is
// the decoding step (B sequences, one token each). The state is read at the start and written
// at the end when has_state != 0, else the scan starts from zero and the state is left untouched.
//
// Chunked form, for long T (prefill, training): the sequential form keeps only D invocations
// busy per sequence for T steps. Split T into chunks of L tokens and run three passes, each with
// a workgroup per (head group, chunk, sequence):
//   -D CHUNK_SUMS  pass 1: per chunk, the sums of g*v (and g) over its tokens, from zero
//   aod_prefix.comp pass 2: per channel, the exclusive prefix over the chunks, from the state
//   -D CHUNKED     pass 3: per chunk, the sequential walk from its start value, writing y
// Passes 1 and 3 both recompute the QK-norm and RoPE of k (pass 3 also q) instead of storing
// g: a (B*T, D) round trip through memory costs more than the few flops per token. The float32
// sums are the sequential ones regrouped: S_t = (state + sum of earlier chunks) + in-chunk sum.
//
// RoPE angles come from host tables (cos, sin of position * w_j formed in double): a float32
// angle at t = 5000 is off by ~2e-4 rad, and Vulkan's sin/cos only promise 2^-11 absolute.
// The tables are either shared by the B sequences ((T, hd/2), row t: training, and sequences
// that start together) or per row ((B*T, hd/2), row b*T + t, rope_per_row != 0): a decoding step
// batches sequences that sit at different positions into one dispatch.
#version 450

layout(constant_id = 0) const uint WG = 64;   // heads per group * hd; the host makes it divide D
layout(local_size_x_id = 0) in;
#if defined(CHUNK_SUMS) || defined(CHUNKED)
layout(constant_id = 1) const uint L = 16;    // tokens per chunk
#endif

layout(push_constant) uniform AodPush {
    uint B;
    uint T;
    uint D;
    uint hd;
    uint has_state;
    uint rope_per_row;
    float eps;
} p;

layout(std430, binding = 0) readonly buffer Qkv { float qkv[]; };     // (B*T, 3D): [q | k | v]
layout(std430, binding = 1) readonly buffer Cos { float cos_t[]; };   // (T, hd/2) or (B*T, hd/2)
layout(std430, binding = 2) readonly buffer Sin { float sin_t[]; };   // (T, hd/2) or (B*T, hd/2)
#if defined(CHUNK_SUMS)
// (B*chunks, D): row b*chunks + c, the chunk's sums from zero
layout(std430, binding = 3) writeonly buffer ChunkS { float chunk_s[]; };
#ifdef MEAN
layout(std430, binding = 4) writeonly buffer ChunkZ { float chunk_z[]; };
#endif
#elif defined(CHUNKED)
// (B*chunks, D): row b*chunks + c, the scan's value before the chunk's first token
layout(std430, binding = 3) readonly buffer ChunkS { float chunk_s[]; };
#ifdef MEAN
layout(std430, binding = 4) readonly buffer ChunkZ { float chunk_z[]; };
layout(std430, binding = 5) writeonly buffer Y { float y[]; };        // (B*T, D)
#else
layout(std430, binding = 4) writeonly buffer Y { float y[]; };        // (B*T, D)
#endif
#else
layout(std430, binding = 3) readonly buffer Slots { uint slot[]; };   // (B): pool row of sequence b
layout(std430, binding = 4) buffer StateS { float s_state[]; };       // (capacity, D), in and out
#ifdef MEAN
layout(std430, binding = 5) buffer StateZ { float z_state[]; };       // (capacity, D), in and out
layout(std430, binding = 6) writeonly buffer Y { float y[]; };        // (B*T, D)
#else
layout(std430, binding = 5) writeonly buffer Y { float y[]; };        // (B*T, D)
#endif
#endif

#ifndef CHUNK_SUMS
shared float qs[WG];
#endif
shared float ks[WG];

void main() {
#if defined(CHUNK_SUMS) || defined(CHUNKED)
    const uint b = gl_WorkGroupID.z;
    const uint chunks = (p.T + L - 1) / L;
    const uint t0 = gl_WorkGroupID.y * L;
    const uint t1 = min(t0 + L, p.T);
#else
    const uint b = gl_WorkGroupID.y;
    const uint t0 = 0;
    const uint t1 = p.T;
#endif
    // Uniform per workgroup: cannot split the barriers below.
    if (b >= p.B) return;
    const uint lid = gl_LocalInvocationID.x;
    const uint j = gl_WorkGroupID.x * WG + lid;    // channel in [0, D)
    const uint c = lid % p.hd;                     // channel inside its head
    const uint head0 = lid - c;                    // the head's first slot in shared memory
    const uint half_hd = p.hd / 2;
    const uint i = c % half_hd;                    // frequency index
    const bool first = c < half_hd;
    const uint partner = first ? lid + half_hd : lid - half_hd;

#if defined(CHUNK_SUMS)
    const uint at = (b * chunks + gl_WorkGroupID.y) * p.D + j;
    float s = 0.0;
    float z = 0.0;
#elif defined(CHUNKED)
    const uint at = (b * chunks + gl_WorkGroupID.y) * p.D + j;
    float s = chunk_s[at];
#ifdef MEAN
    float z = chunk_z[at];
#endif
#else
    // Slots are read only with a state: a fresh scan binds a placeholder there.
    const uint at = p.has_state != 0 ? slot[b] * p.D + j : 0;
    float s = p.has_state != 0 ? s_state[at] : 0.0;
#ifdef MEAN
    float z = p.has_state != 0 ? z_state[at] : 0.0;
#endif
#endif

    for (uint t = t0; t < t1; t++) {
        const uint row = b * p.T + t;
        const uint base = row * 3 * p.D;
#ifndef CHUNK_SUMS
        const float q = qkv[base + j];
        qs[lid] = q;
#endif
        const float k = qkv[base + p.D + j];
        const float v = qkv[base + 2 * p.D + j];
        ks[lid] = k;
        barrier();
        // Every invocation of a head reads the same addresses (a broadcast), so a serial sum
        // costs no bank conflicts and no extra barriers.
        float ssk = 0.0;
#ifndef CHUNK_SUMS
        float ssq = 0.0;
#endif
        for (uint m = 0; m < p.hd; m++) {
            const float e = ks[head0 + m];
            ssk = fma(e, e, ssk);
#ifndef CHUNK_SUMS
            const float a = qs[head0 + m];
            ssq = fma(a, a, ssq);
#endif
        }
        const float kp = ks[partner];
#ifndef CHUNK_SUMS
        const float qp = qs[partner];
#endif
        barrier();   // the next token overwrites qs/ks

        const float rk = inversesqrt(ssk / float(p.hd) + p.eps);
        const uint rope_row = p.rope_per_row != 0 ? row : t;
        const float cs = cos_t[rope_row * half_hd + i];
        const float sn = sin_t[rope_row * half_hd + i];
        // rope(x) = [a cos + b sin | -a sin + b cos] with a = x[0:hd/2], b = x[hd/2:hd];
        // rmsnorm is a per-head scale, so it can be applied after the rotation.
        const float kr = (first ? k * cs + kp * sn : k * cs - kp * sn) * rk;

        const float g = 1.0 / (1.0 + exp(-kr));
        s = fma(g, v, s);
#if defined(MEAN) || defined(CHUNK_SUMS)
        z += g;
#endif
#ifndef CHUNK_SUMS
        const float rq = inversesqrt(ssq / float(p.hd) + p.eps);
        const float qr = (first ? q * cs + qp * sn : q * cs - qp * sn) * rq;
#ifdef MEAN
        y[row * p.D + j] = max(qr, 0.0) * s / z;
#else
        y[row * p.D + j] = max(qr, 0.0) * s;
#endif
#endif
    }

#if defined(CHUNK_SUMS)
    chunk_s[at] = s;
#ifdef MEAN
    chunk_z[at] = z;
#endif
#elif !defined(CHUNKED)
    if (p.has_state != 0) {
        s_state[at] = s;
#ifdef MEAN
        z_state[at] = z;
#endif
    }
#endif
}
