// sample: the sessions' sampling chain (Palm.Inference's TokenSampler) for rows
// [firstRow, firstRow + rows) of logits (R, V), one workgroup per row, one token id back per
// row: logit bias, penalties over the recent-token window, then the argmax (temperature <= 0)
// or temperature -> top-k -> top-p -> min-p -> a draw that places the host's uniform in the
// cumulative mass.
//
// TokenSampler's order is logit descending, ties by ascending id, and every filter keeps a
// prefix of it. Without sorting, a prefix is a cut (t, i) = {key > t} + {key == t, id <= i},
// where key is the logit's order-preserving bit pattern. A cut is found by a search for the
// largest t whose weight W(t) (a count, or the softmax mass, over the members with key >= t)
// reaches a target, ARITY - 1 thresholds per sweep over the row; the tie group at t is then
// resolved in id order (its members share one probability). The draw is the same search with
// target u * total: the token whose cumulative interval holds that point.
//
// Sums are float32 in a fixed order (so the kernel is deterministic and W is monotone in t);
// the host's are doubles. Palm.Gpu/Kernels/Sample.cs says where the two may pick differently.
// The logits of sampled rows are overwritten with the adjusted (biased, penalized) logits.
// -D SUBGROUP (variant sample_subgroup, used where the device has subgroup arithmetic) sums a
// sweep's lanes inside subgroups first: two barriers per sweep instead of log2(WG) + 1.
#version 450
#ifdef SUBGROUP
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;   // a power of two (tree reductions)
layout(local_size_x_id = 0) in;

layout(push_constant) uniform SamplePush {
    uint firstRow;
    uint rows;
    uint V;
} p;

// One row's settings; pairs[penaltyStart ..) hold (id, count in the window), pairs[biasStart ..)
// hold (id, bias). Ids are distinct within each list.
struct SampleRow {
    float temperature;
    int topK;               // <= 0: all
    float topP;             // >= 1: off
    float minP;             // 0: off
    float repetitionPenalty;
    float repetitionInverse; // 1 / repetitionPenalty, rounded on the host: division here is not exact
    float presencePenalty;
    float frequencyPenalty;
    float draw;             // the host's uniform in [0, 1)
    uint penaltyStart;
    uint penaltyCount;
    uint biasStart;
    uint biasCount;
};

struct Pair {
    int id;
    float value;
};

layout(std430, binding = 0) coherent buffer Logits { float z[]; };           // (R, V)
layout(std430, binding = 1) readonly buffer Rows { SampleRow settings[]; };  // (rows)
layout(std430, binding = 2) readonly buffer Pairs { Pair pairs[]; };
layout(std430, binding = 3) writeonly buffer Idx { int idx[]; };             // (R)

// Thresholds per sweep + 1: a search narrows the key range 8-fold per pass over the row
// (about 11 passes for 32-bit keys instead of 32 for a bisection).
const uint ARITY = 8;
const uint LANES = ARITY - 1;
const uint NONE = 0xffffffffu;

const uint SET_ALL = 0u;    // every token
const uint SET_K = 1u;      // the top-k cut
const uint SET_ALIVE = 2u;  // the top-p cut, minus tokens below min-p

shared float lanes[LANES][WG];
shared uint su[WG];
shared uint foundId;

// Per row, equal in every invocation.
uint tid, V, base;
float maxLogit, temperature, minP;
uint kT, kId, pT, pId;      // the top-k and top-p cuts

// -0 and +0 share a key, as they compare equal on the host.
uint okey(float x) {
    uint u = floatBitsToUint(x);
    if ((u & 0x7fffffffu) == 0u) u = 0u;
    return (u & 0x80000000u) != 0u ? ~u : (u | 0x80000000u);
}

float fromKey(uint k) {
    return uintBitsToFloat((k & 0x80000000u) != 0u ? (k & 0x7fffffffu) : ~k);
}

float prob(float x) {
    return exp((x - maxLogit) / temperature);
}

bool inCut(uint key, uint id, uint t, uint ti) {
    return key > t || (key == t && id <= ti);
}

bool member(uint set, uint key, uint id, float pr) {
    if (set == SET_ALL) return true;
    if (set == SET_K) return inCut(key, id, kT, kId);
    return inCut(key, id, pT, pId) && pr >= minP;
}

uint reduceU(uint v, bool takeMax) {
    su[tid] = v;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (tid < s) su[tid] = takeMax ? max(su[tid], su[tid + s]) : min(su[tid], su[tid + s]);
        barrier();
    }
    const uint r = su[0];
    barrier();
    return r;
}

// res[i] = W(thr[i]) for the first n (ascending) thresholds: the count (or mass) of the set's
// members with key >= thr[i]. Counts are exact in float up to 2^24 tokens.
void sweep(uint set, bool mass, uint n, uint thr[LANES], out float res[LANES]) {
    float acc[LANES];
    for (uint i = 0; i < LANES; i++) acc[i] = 0.0;
    for (uint c = tid; c < V; c += WG) {
        const float x = z[base + c];
        const uint key = okey(x);
        if (key < thr[0]) continue;
        const float pr = (mass || set == SET_ALIVE) ? prob(x) : 1.0;
        if (!member(set, key, c, pr)) continue;
        const float w = mass ? pr : 1.0;
        for (uint i = 0; i < n; i++)
            if (key >= thr[i]) acc[i] += w;
    }
#ifdef SUBGROUP
    for (uint i = 0; i < n; i++) {
        const float v = subgroupAdd(acc[i]);
        if (subgroupElect()) lanes[i][gl_SubgroupID] = v;
    }
    barrier();
    // Every invocation adds the subgroups' sums in the same order: equal results everywhere.
    for (uint i = 0; i < LANES; i++) {
        float r = 0.0;
        if (i < n)
            for (uint g = 0; g < gl_NumSubgroups; g++) r += lanes[i][g];
        res[i] = r;
    }
    barrier();   // lanes is reused by the next sweep
#else
    for (uint i = 0; i < LANES; i++) lanes[i][tid] = acc[i];
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (tid < s)
            for (uint i = 0; i < n; i++) lanes[i][tid] += lanes[i][tid + s];
        barrier();
    }
    for (uint i = 0; i < LANES; i++) res[i] = lanes[i][0];
    barrier();
#endif
}

float weightFrom(uint set, bool mass, uint t) {
    uint thr[LANES];
    float res[LANES];
    thr[0] = t;
    sweep(set, mass, 1u, thr, res);
    return res[0];
}

// The largest t in [lo, hi] with W(t) >= target (> target when strict); W(lo) is taken to qualify.
uint search(uint set, bool mass, uint lo, uint hi, float target, bool strict) {
    while (lo < hi) {
        const uint n = hi - lo;
        const uint step = n / ARITY + ((n % ARITY) != 0u ? 1u : 0u);   // ceil(n / ARITY) without overflow
        uint thr[LANES];
        uint used = 0u;
        for (uint i = 0; i < LANES; i++) {
            thr[i] = hi;
            if (step * (i + 1u) <= n) {
                thr[i] = lo + step * (i + 1u);
                used = i + 1u;
            }
        }
        float res[LANES];
        sweep(set, mass, used, thr, res);
        uint newLo = lo, newHi = hi;
        // W is monotone, so past the first threshold that fails, all fail.
        for (uint i = 0; i < used; i++) {
            if (strict ? res[i] > target : res[i] >= target) {
                newLo = thr[i];
            } else {
                newHi = thr[i] - 1u;
                break;
            }
        }
        lo = newLo;
        hi = newHi;
    }
    return lo;
}

// The set's weight above key t (members with key > t) and how many members have key t.
void ties(uint set, bool mass, uint t, out float above, out uint count) {
    uint thr[LANES];
    float res[LANES];
    thr[0] = t;
    thr[1] = t + 1u;   // keys stop at +inf's, far below 2^32 - 1
    sweep(set, false, 2u, thr, res);
    count = uint(res[0] - res[1]);
    above = mass ? weightFrom(set, true, t + 1u) : res[1];
}

// The j-th member (1-based, in id order) of the set's tie group at key t: each invocation scans
// a contiguous chunk of ids, and a prefix over the chunks' counts says which one holds it.
uint jth(uint set, uint t, uint j) {
    const uint chunk = (V + WG - 1u) / WG;
    const uint start = min(tid * chunk, V), end = min(start + chunk, V);
    uint cnt = 0u;
    for (uint c = start; c < end; c++) {
        const float x = z[base + c];
        const uint key = okey(x);
        if (key == t && member(set, key, c, set == SET_ALIVE ? prob(x) : 1.0)) cnt++;
    }
    su[tid] = cnt;
    if (tid == 0u) foundId = NONE;
    barrier();
    if (tid == 0u) {
        uint run = 0u;
        for (uint i = 0; i < WG; i++) {
            const uint v = su[i];
            su[i] = run;
            run += v;
        }
    }
    barrier();
    const uint before = su[tid];
    if (j > before && j <= before + cnt) {
        uint seen = before;
        for (uint c = start; c < end; c++) {
            const float x = z[base + c];
            const uint key = okey(x);
            if (key == t && member(set, key, c, set == SET_ALIVE ? prob(x) : 1.0) && ++seen == j) {
                foundId = c;
                break;
            }
        }
    }
    barrier();
    const uint r = foundId;
    barrier();
    return r;
}

// The member of a tie group of n that holds a point `f` members in (f from a float ratio: clamped).
uint clampTie(float f, uint n) {
    if (!(f >= 1.0)) return 1u;
    if (f >= float(n)) return n;
    return uint(f);
}

void main() {
    const uint r = flat_workgroup_id();
    if (r >= p.rows) return;
    tid = gl_LocalInvocationID.x;
    V = p.V;
    const uint row = p.firstRow + r;
    base = row * V;
    const SampleRow s = settings[r];

    // Bias, then the penalties, which see the biased logit (TokenSampler's order).
    for (uint i = tid; i < s.biasCount; i += WG) {
        const Pair q = pairs[s.biasStart + i];
        z[base + uint(q.id)] += q.value;
    }
    memoryBarrierBuffer();
    barrier();
    for (uint i = tid; i < s.penaltyCount; i += WG) {
        const Pair q = pairs[s.penaltyStart + i];
        // precise: no fused multiply-add, so the bits equal the host's float steps.
        precise float x = z[base + uint(q.id)];
        x = x > 0.0 ? x * s.repetitionInverse : x * s.repetitionPenalty;
        precise float sub = s.presencePenalty + s.frequencyPenalty * q.value;
        z[base + uint(q.id)] = x - sub;
    }
    memoryBarrierBuffer();
    barrier();

    uint mx = 0u, mn = NONE;
    for (uint c = tid; c < V; c += WG) {
        const uint k = okey(z[base + c]);
        mx = max(mx, k);
        mn = min(mn, k);
    }
    const uint maxKey = reduceU(mx, true);
    const uint minKey = reduceU(mn, false);

    // Three stages close three cuts: top-k (a count), top-p (mass within the top-k), the draw
    // (mass within the survivors of min-p: its cut's last token is the one drawn). One loop,
    // so that the search, tie and scan code is inlined once (lavapipe compiles the shader at
    // first use, in time that grows with its size). The argmax is the draw's stage alone.
    const bool greedy = !(s.temperature > 0.0);
    maxLogit = fromKey(maxKey);
    temperature = greedy ? 1.0 : s.temperature;
    minP = 0.0;
    const uint k = s.topK > 0 ? min(uint(s.topK), V) : V;
    kT = minKey;    // every token
    kId = V - 1u;
    pT = minKey;
    pId = V - 1u;
    uint id = 0u;
    for (uint stage = greedy ? 2u : 0u; stage < 3u; stage++) {
        if (stage == 0u && k == V) continue;
        if (stage == 1u) {
            pT = kT;
            pId = kId;
            if (!(s.topP < 1.0)) continue;
        }
        if (stage == 2u) minP = greedy ? 0.0 : s.minP;
        const uint set = greedy ? SET_ALL : stage == 0u ? SET_ALL : stage == 1u ? SET_K : SET_ALIVE;
        const bool mass = stage > 0u && !greedy;
        const uint lo = stage == 0u ? minKey : stage == 1u ? kT : pT;
        // The weight of the whole set (the top-k's mass, or the survivors' total).
        const float whole = mass ? weightFrom(set, true, lo) : float(V);
        const float target = stage == 0u ? float(k) : stage == 1u ? s.topP * whole : s.draw * whole;
        const bool strict = stage == 2u;
        uint t;
        if (greedy) {
            t = maxKey;
        } else if (stage < 2u || target < whole) {
            t = search(set, mass, lo, maxKey, target, strict);
        } else {
            // u * total rounded up to total: the last token kept, as the host's walk ends.
            uint lowest = NONE;
            for (uint c = tid; c < V; c += WG) {
                const float x = z[base + c];
                const uint key = okey(x);
                if (member(set, key, c, prob(x))) lowest = min(lowest, key);
            }
            t = reduceU(lowest, false);
        }
        float above;
        uint n;
        ties(set, mass, t, above, n);
        // Which member of the tie group at t closes the cut (they share one probability).
        uint j;
        if (greedy) j = 1u;                                     // the argmax: lowest id on ties
        else if (stage == 0u) j = k - uint(above);
        else if (stage == 1u) j = clampTie(ceil((target - above) / prob(fromKey(t))), n);
        else if (target < whole) j = clampTie(floor((target - above) / prob(fromKey(t))) + 1.0, n);
        else j = n;
        const uint at = jth(set, t, j);
        if (stage == 0u) {
            kT = t;
            kId = at;
        } else if (stage == 1u) {
            pT = t;
            pId = at;
        } else {
            id = at;
        }
    }
    if (tid == 0u) idx[row] = int(id);
}
