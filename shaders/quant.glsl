// Decoding of the q8/q4 weight layout (the .palm bytes, see Palm.Inference QuantizedTensor),
// shared by every shader that reads quantized weights (linear, embedding), so there is one
// decoder to get right. The including shader declares, before the #include:
//   readonly buffer { uint wq[]; }          the stored level bytes read as little-endian words
//   readonly buffer { uint scale_bits[]; }  the stored scale bytes read as little-endian words
// Words rather than bytes: no 8/16-bit storage feature is needed.
#ifndef PALM_QUANT_GLSL
#define PALM_QUANT_GLSL

#if defined(Q8) || defined(Q4)
// Element i (flat, row-major) as a float: level * scale of its group of G elements.
float load_quant(uint i, uint G) {
#ifdef Q8
    // Byte i sits at bits 8*(i%4) of word i/4; shift it to the top, then an arithmetic shift sign-extends.
    int level = int(wq[i >> 2] << (24u - 8u * (i & 3u))) >> 24;
    float s = uintBitsToFloat(scale_bits[i / G]);
#else
    // Element 2k is the low nibble of byte k: nibble i sits at bits 4*(i%8) of word i/8.
    int level = int((wq[i >> 3] >> (4u * (i & 7u))) & 0xFu) - 8;
    const uint g = i / G;
    float s = unpackHalf2x16(scale_bits[g >> 1])[g & 1u];
#endif
    return float(level) * s;
}
#endif

#endif
