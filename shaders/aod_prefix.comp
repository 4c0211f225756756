// aod_prefix: pass 2 of the chunked AoD scan (see aod.comp). Per (sequence b, channel j), turns
// the chunks' sums into the scan's value before each chunk, in place:
//   start_0 = state (or 0),  start_c = start_{c-1} + sum_{c-1},  final = start_{last} + sum_{last}
// and writes the final value back to the state pool row slot[b] when has_state != 0. The walk
// over chunks is serial per channel: there are only T/L chunks, and the B*D channels already
// fill the device; reads and writes of one chunk row are consecutive in j (coalesced).
// -D SUFFIX: the same walk from the last chunk back to the first, for the backward's carried
// gradients (aod_backward.comp); the host runs it with has_state = 0 (no state to carry).
#version 450

layout(constant_id = 0) const uint WG = 64;
layout(local_size_x_id = 0) in;

layout(push_constant) uniform AodPrefixPush {
    uint B;
    uint D;
    uint chunks;
    uint has_state;
} p;

layout(std430, binding = 0) readonly buffer Slots { uint slot[]; };   // (B): pool row of sequence b
layout(std430, binding = 1) buffer StateS { float s_state[]; };       // (capacity, D), in and out
layout(std430, binding = 2) buffer ChunkS { float chunk_s[]; };       // (B*chunks, D): sums in, starts out
#ifdef MEAN
layout(std430, binding = 3) buffer StateZ { float z_state[]; };       // (capacity, D), in and out
layout(std430, binding = 4) buffer ChunkZ { float chunk_z[]; };       // (B*chunks, D): sums in, starts out
#endif

void main() {
    const uint j = gl_GlobalInvocationID.x;
    const uint b = gl_WorkGroupID.y;
    if (j >= p.D || b >= p.B) return;

    // Slots are read only with a state: a fresh scan binds a placeholder there.
    const uint at = p.has_state != 0 ? slot[b] * p.D + j : 0;
    float s = p.has_state != 0 ? s_state[at] : 0.0;
#ifdef MEAN
    float z = p.has_state != 0 ? z_state[at] : 0.0;
#endif
#ifdef SUFFIX
    for (uint cc = p.chunks; cc > 0; cc--) {
        const uint c = cc - 1;
#else
    for (uint c = 0; c < p.chunks; c++) {
#endif
        const uint r = (b * p.chunks + c) * p.D + j;
        const float sum = chunk_s[r];
        chunk_s[r] = s;
        s += sum;
#ifdef MEAN
        const float zsum = chunk_z[r];
        chunk_z[r] = z;
        z += zsum;
#endif
    }
    if (p.has_state != 0) {
        s_state[at] = s;
#ifdef MEAN
        z_state[at] = z;
#endif
    }
}
