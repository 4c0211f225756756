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
#version 450

layout(constant_id = 0) const uint WG = 64;   // heads per group * hd; the host makes it divide D
layout(local_size_x_id = 0) in;

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
layout(std430, binding = 6) writeonly buffer DQkv { float dqkv[]; };  // (B*T, 3D)
#else
layout(std430, binding = 5) writeonly buffer DQkv { float dqkv[]; };  // (B*T, 3D)
#endif

shared float qs[WG];
shared float ks[WG];
shared float dqs[WG];
shared float dks[WG];

void main() {
    const uint b = gl_WorkGroupID.y;
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

    // Pass 1: the forward scan, keeping S_t (and Z_t).
    float s = 0.0;
#ifdef MEAN
    float z = 0.0;
#endif
    for (uint t = 0; t < p.T; t++) {
        const uint row = b * p.T + t;
        const uint base = row * 3 * p.D;
        const float k = qkv[base + p.D + j];
        ks[lid] = k;
        barrier();
        float ssk = 0.0;
        for (uint m = 0; m < p.hd; m++) ssk = fma(ks[head0 + m], ks[head0 + m], ssk);
        const float kp = ks[partner];
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
    }

    // Pass 2: reverse.
    float cS = 0.0;
    float cZ = 0.0;
    for (uint tt = p.T; tt > 0; tt--) {
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
}
