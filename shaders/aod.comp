// aod: the AoD mix of one block application, fused, from the QKV linear's output.
//   per head (hd channels): q, k <- rope(rmsnorm(q)), rope(rmsnorm(k))   (QK-norm, then RoPE)
//   g = sigmoid(k);  S_t = S_{t-1} + g*v;  Z_t = Z_{t-1} + g   (-D MEAN only)
//   y = relu(q) * S  (sum)   or   relu(q) * S / Z   (mean)
// One workgroup per (sequence b, group of whole heads); each invocation owns one channel and
// walks the T tokens of its sequence in order, carrying S (and Z) in a register, so the causal
// scan needs no cross-invocation traffic. Per token, the head's q/k values go through shared
// memory once: for the rmsnorm sums and for the RoPE partner channel (c +- hd/2). Loads of row t
// are consecutive in the channel index: coalesced. T = 1 is the decoding step (B sequences,
// one token each); larger T is prefill/training. The state is read at the start and written at
// the end when has_state != 0, else the scan starts from zero and the state is left untouched.
//
// RoPE angles come from host tables (cos, sin of position * w_j formed in double): a float32
// angle at t = 5000 is off by ~2e-4 rad, and Vulkan's sin/cos only promise 2^-11 absolute.
// The tables are either shared by the B sequences ((T, hd/2), row t: training, and sequences
// that start together) or per row ((B*T, hd/2), row b*T + t, rope_per_row != 0): a decoding step
// batches sequences that sit at different positions into one dispatch.
#version 450

layout(constant_id = 0) const uint WG = 64;   // heads per group * hd; the host makes it divide D
layout(local_size_x_id = 0) in;

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
layout(std430, binding = 3) readonly buffer Slots { uint slot[]; };   // (B): pool row of sequence b
layout(std430, binding = 4) buffer StateS { float s_state[]; };       // (capacity, D), in and out
#ifdef MEAN
layout(std430, binding = 5) buffer StateZ { float z_state[]; };       // (capacity, D), in and out
layout(std430, binding = 6) writeonly buffer Y { float y[]; };        // (B*T, D)
#else
layout(std430, binding = 5) writeonly buffer Y { float y[]; };        // (B*T, D)
#endif

shared float qs[WG];
shared float ks[WG];

void main() {
    const uint b = gl_WorkGroupID.y;
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

    // Slots are read only with a state: a fresh scan binds a placeholder there.
    const uint at = p.has_state != 0 ? slot[b] * p.D + j : 0;
    float s = p.has_state != 0 ? s_state[at] : 0.0;
#ifdef MEAN
    float z = p.has_state != 0 ? z_state[at] : 0.0;
#endif

    for (uint t = 0; t < p.T; t++) {
        const uint row = b * p.T + t;
        const uint base = row * 3 * p.D;
        const float q = qkv[base + j];
        const float k = qkv[base + p.D + j];
        const float v = qkv[base + 2 * p.D + j];
        qs[lid] = q;
        ks[lid] = k;
        barrier();
        // Every invocation of a head reads the same addresses (a broadcast), so a serial sum
        // costs no bank conflicts and no extra barriers.
        float ssq = 0.0, ssk = 0.0;
        for (uint m = 0; m < p.hd; m++) {
            const float a = qs[head0 + m];
            const float e = ks[head0 + m];
            ssq = fma(a, a, ssq);
            ssk = fma(e, e, ssk);
        }
        const float qp = qs[partner];
        const float kp = ks[partner];
        barrier();   // the next token overwrites qs/ks

        const float rq = inversesqrt(ssq / float(p.hd) + p.eps);
        const float rk = inversesqrt(ssk / float(p.hd) + p.eps);
        const uint rope_row = p.rope_per_row != 0 ? row : t;
        const float cs = cos_t[rope_row * half_hd + i];
        const float sn = sin_t[rope_row * half_hd + i];
        // rope(x) = [a cos + b sin | -a sin + b cos] with a = x[0:hd/2], b = x[hd/2:hd];
        // rmsnorm is a per-head scale, so it can be applied after the rotation.
        const float qr = (first ? q * cs + qp * sn : q * cs - qp * sn) * rq;
        const float kr = (first ? k * cs + kp * sn : k * cs - kp * sn) * rk;

        const float g = 1.0 / (1.0 + exp(-kr));
        s = fma(g, v, s);
#ifdef MEAN
        z += g;
        y[row * p.D + j] = max(qr, 0.0) * s / z;
#else
        y[row * p.D + j] = max(qr, 0.0) * s;
#endif
    }

    if (p.has_state != 0) {
        s_state[at] = s;
#ifdef MEAN
        z_state[at] = z;
#endif
    }
}
