// aod_backward: d qkv (B*T, 3D) of the fused AoD mix (aod.comp) from dy (B*T, D), for a scan
// that starts from a zero state (training). Same layout as the forward: one workgroup per
// (sequence b, group of whole heads), one invocation per channel j.
//   pass 1 (forward):  recompute q, k (QK-norm, RoPE), g = sigmoid(k) and the running sums;
//                      store S_t (and Z_t with -D MEAN) per token in scratch. Each invocation
//                      reads back only what it wrote, so no barrier guards the scratch.
//   pass 2 (reverse over t): the gradients carried backwards through the scan,
//       sum:  dq = [q > 0] dy S_t,        cS += dy relu(q)
//       mean: dq = [q > 0] dy S_t / Z_t,  cS += dy relu(q) / Z_t,  cZ -= dy relu(q) S_t / Z_t^2
//       dv = cS g,  dk = (cS v + cZ) g (1 - g)
//     then RoPE transposed (rotation by -theta) and the per-head rmsnorm backward
//       dx = r (dn - n mean(dn n)),  n = the normalised (pre-RoPE) q or k, r = 1/rms.
// Head sums and RoPE partners go through shared memory as in the forward (3 barriers/token).
//
// Chunked form, for long T: the sequential form keeps only D invocations busy per sequence for
// 2T steps. Split T into chunks of L tokens (the forward's L) and run five passes, each chunk
// pass with a workgroup per (head group, chunk, sequence):
//   aod.comp -D CHUNK_SUMS, aod_prefix.comp   the forward's passes 1-2: S (Z) before each chunk
//   -D CHUNK_GRADS   per chunk, the forward walk from its start value: saves S_t (Z_t) as pass 1
//                    does, and sums the chunk's contributions to cS (cZ) in token order (the
//                    carried gradients are plain sums over later tokens, so a chunk's share
//                    needs no value from outside the chunk but S_t and Z_t)
//   aod_prefix.comp -D SUFFIX   per channel, the exclusive suffix over chunks, from the last:
//                    cS (cZ) carried into each chunk from the tokens after it
//   -D CHUNKED       per chunk, pass 2 above from the carried value, writing dq, dk, dv
// The chunk buffers are reused in place: sums -> starts -> chunk totals -> carried values. The
// float32 sums are the sequential ones regrouped: cS_t = (sum of later chunks' totals, each
// summed forwards) + in-chunk sum from the chunk's end back to t.
#version 450

layout(constant_id = 0) const uint WG = 64;   // heads per group * hd; the host makes it divide D
layout(local_size_x_id = 0) in;
#if defined(CHUNK_GRADS) || defined(CHUNKED)
layout(constant_id = 1) const uint L = 16;    // tokens per chunk
#endif

layout(push_constant) uniform AodBackwardPush {
    uint B;
    uint T;
    uint D;
    uint hd;
    float eps;
} p;

layout(std430, binding = 0) readonly buffer Qkv { float qkv[]; };     // (B*T, 3D)
layout(std430, binding = 1) readonly buffer Cos { float cos_t[]; };   // (T, hd/2)
layout(std430, binding = 2) readonly buffer Sin { float sin_t[]; };   // (T, hd/2)
layout(std430, binding = 3) readonly buffer DY { float dy[]; };       // (B*T, D)
layout(std430, binding = 4) buffer SSave { float s_save[]; };         // (B*T, D) scratch
#ifdef MEAN
layout(std430, binding = 5) buffer ZSave { float z_save[]; };         // (B*T, D) scratch
#define NEXT_BINDING 6
#else
#define NEXT_BINDING 5
#endif
#if defined(CHUNK_GRADS) || defined(CHUNKED)
// (B*chunks, D), row b*chunks + c. CHUNK_GRADS: S (Z) before the chunk in, the chunk's totals
// of the cS (cZ) terms out; CHUNKED: cS (cZ) carried in from the later chunks.
layout(std430, binding = NEXT_BINDING) buffer ChunkS { float chunk_s[]; };
#ifdef MEAN
layout(std430, binding = NEXT_BINDING + 1) buffer ChunkZ { float chunk_z[]; };
#define OUT_BINDING (NEXT_BINDING + 2)
#else
#define OUT_BINDING (NEXT_BINDING + 1)
#endif
#else
#define OUT_BINDING NEXT_BINDING
#endif
#ifndef CHUNK_GRADS
layout(std430, binding = OUT_BINDING) writeonly buffer DQkv { float dqkv[]; };  // (B*T, 3D)
#endif

shared float qs[WG];
shared float ks[WG];
shared float dqs[WG];
shared float dks[WG];

void main() {
#if defined(CHUNK_GRADS) || defined(CHUNKED)
    const uint b = gl_WorkGroupID.z;
    const uint chunks = (p.T + L - 1) / L;
    const uint t0 = gl_WorkGroupID.y * L;
    const uint t1 = min(t0 + L, p.T);
    const uint at = (b * chunks + gl_WorkGroupID.y) * p.D;   // + j: this chunk's row
#else
    const uint b = gl_WorkGroupID.y;
    const uint t0 = 0;
    const uint t1 = p.T;
#endif
    if (b >= p.B) return;
    const uint lid = gl_LocalInvocationID.x;
    const uint j = gl_WorkGroupID.x * WG + lid;
    const uint c = lid % p.hd;
    const uint head0 = lid - c;
    const uint half_hd = p.hd / 2;
    const uint i = c % half_hd;
    const bool first = c < half_hd;
    const uint partner = first ? lid + half_hd : lid - half_hd;
    const float fhd = float(p.hd);

#ifndef CHUNKED
    // Pass 1: the forward scan, keeping S_t (and Z_t); CHUNK_GRADS from the chunk's start value,
    // also summing the chunk's terms of cS (cZ) (pass 2's increments, in token order).
#ifdef CHUNK_GRADS
    float s = chunk_s[at + j];
    float gS = 0.0;
#ifdef MEAN
    float z = chunk_z[at + j];
    float gZ = 0.0;
#endif
#else
    float s = 0.0;
#ifdef MEAN
    float z = 0.0;
#endif
#endif
    for (uint t = t0; t < t1; t++) {
        const uint row = b * p.T + t;
        const uint base = row * 3 * p.D;
        const float k = qkv[base + p.D + j];
        ks[lid] = k;
#ifdef CHUNK_GRADS
        const float q = qkv[base + j];
        qs[lid] = q;
#endif
        barrier();
        float ssk = 0.0;
        for (uint m = 0; m < p.hd; m++) ssk = fma(ks[head0 + m], ks[head0 + m], ssk);
        const float kp = ks[partner];
#ifdef CHUNK_GRADS
        float ssq = 0.0;
        for (uint m = 0; m < p.hd; m++) ssq = fma(qs[head0 + m], qs[head0 + m], ssq);
        const float qp = qs[partner];
#endif
        barrier();
        const float rk = inversesqrt(ssk / fhd + p.eps);
        const float cs = cos_t[t * half_hd + i];
        const float sn = sin_t[t * half_hd + i];
        const float kr = (first ? k * cs + kp * sn : k * cs - kp * sn) * rk;
        const float g = 1.0 / (1.0 + exp(-kr));
        s = fma(g, qkv[base + 2 * p.D + j], s);
        s_save[row * p.D + j] = s;
#ifdef MEAN
        z += g;
        z_save[row * p.D + j] = z;
#endif
#ifdef CHUNK_GRADS
        const float rq = inversesqrt(ssq / fhd + p.eps);
        const float qr = (first ? q * cs + qp * sn : q * cs - qp * sn) * rq;
        const float d = dy[row * p.D + j];
        const float relu_q = max(qr, 0.0);
#ifdef MEAN
        gS += d * relu_q / z;
        gZ -= d * relu_q * s / (z * z);
#else
        gS += d * relu_q;
#endif
#endif
    }
#ifdef CHUNK_GRADS
    chunk_s[at + j] = gS;
#ifdef MEAN
    chunk_z[at + j] = gZ;
#endif
#endif
#endif

#ifndef CHUNK_GRADS
    // Pass 2: reverse; CHUNKED from the values carried in from the later chunks.
#ifdef CHUNKED
    float cS = chunk_s[at + j];
#ifdef MEAN
    float cZ = chunk_z[at + j];
#else
    const float cZ = 0.0;
#endif
#else
    float cS = 0.0;
    float cZ = 0.0;
#endif
    for (uint tt = t1; tt > t0; tt--) {
        const uint t = tt - 1;
        const uint row = b * p.T + t;
        const uint base = row * 3 * p.D;
        const float q = qkv[base + j];
        const float k = qkv[base + p.D + j];
        const float v = qkv[base + 2 * p.D + j];
        qs[lid] = q;
        ks[lid] = k;
        barrier();
        float ssq = 0.0, ssk = 0.0;
        for (uint m = 0; m < p.hd; m++) {
            ssq = fma(qs[head0 + m], qs[head0 + m], ssq);
            ssk = fma(ks[head0 + m], ks[head0 + m], ssk);
        }
        const float qp = qs[partner];
        const float kp = ks[partner];
        const float rq = inversesqrt(ssq / fhd + p.eps);
        const float rk = inversesqrt(ssk / fhd + p.eps);
        const float cs = cos_t[t * half_hd + i];
        const float sn = sin_t[t * half_hd + i];
        const float qr = (first ? q * cs + qp * sn : q * cs - qp * sn) * rq;
        const float kr = (first ? k * cs + kp * sn : k * cs - kp * sn) * rk;
        const float g = 1.0 / (1.0 + exp(-kr));
        const float st = s_save[row * p.D + j];
        const float d = dy[row * p.D + j];
        const float relu_q = max(qr, 0.0);
#ifdef MEAN
        const float zt = z_save[row * p.D + j];
        const float dqr = qr > 0.0 ? d * st / zt : 0.0;
        cS += d * relu_q / zt;
        cZ -= d * relu_q * st / (zt * zt);
#else
        const float dqr = qr > 0.0 ? d * st : 0.0;
        cS += d * relu_q;
#endif
        const float dv = cS * g;
        const float dkr = (cS * v + cZ) * g * (1.0 - g);
        dqs[lid] = dqr;
        dks[lid] = dkr;
        barrier();
        // RoPE transposed: a' = a cos - b sin (first half), b' = a sin + b cos (second half).
        const float dqp = dqs[partner];
        const float dkp = dks[partner];
        const float dqn = first ? dqr * cs - dqp * sn : dqp * sn + dqr * cs;
        const float dkn = first ? dkr * cs - dkp * sn : dkp * sn + dkr * cs;
        const float qn = q * rq;
        const float kn = k * rk;
        barrier();   // partners read: dqs/dks now carry the products for the head sums
        dqs[lid] = dqn * qn;
        dks[lid] = dkn * kn;
        barrier();
        float mq = 0.0, mk = 0.0;
        for (uint m = 0; m < p.hd; m++) {
            mq += dqs[head0 + m];
            mk += dks[head0 + m];
        }
        mq /= fhd;
        mk /= fhd;
        dqkv[base + j] = rq * (dqn - qn * mq);
        dqkv[base + p.D + j] = rk * (dkn - kn * mk);
        dqkv[base + 2 * p.D + j] = dv;
        barrier();   // the next token overwrites qs/ks/dqs/dks
    }
#endif
}
