// Activations the forward pass records for the hand-written backward (Palm.Trainer). All are
// (B*T, width) row-major with row = b*T + t. Recording is optional so inference pays nothing.
namespace Palm.Inference.Cpu;

/// <summary>What a factorized or full linear kept: the first factor's pre-activation and its activation.</summary>
internal sealed class LinearTape
{
    /// <summary>x·W1ᵀ before the activation (null when full rank).</summary>
    public float[]? U;
    /// <summary>act(U), the input of W2 (same array as U when there is no activation).</summary>
    public float[]? A;
}

/// <summary>One block application's activations.</summary>
internal sealed class ApplicationTape
{
    public int Block;
    public float[] XIn = [];      // (BT, C) residual entering the application
    public float[] H = [];        // (BT, C) rmsnorm(XIn)
    public float[] HInv = [];     // (BT) 1/rms
    public LinearTape Qkv = new();
    public float[] QkvOut = [];   // (BT, 3D) before QK-norm
    public float[] QInv = [];     // (BT, H) per-head 1/rms of q
    public float[] KInv = [];     // (BT, H)
    public float[] QNorm = [];    // (BT, D) rmsnorm(q) per head, before RoPE
    public float[] KNorm = [];    // (BT, D)
    public float[] Q = [];        // (BT, D) after RoPE
    public float[] G = [];        // (BT, D) sigmoid(k after RoPE)
    public float[] S = [];        // (BT, D) running sum after token t
    public float[]? Z;            // (BT, D) running gate sum (mean mix)
    public float[] Y = [];        // (BT, D) AoD mix output
    public LinearTape Proj = new();
    public float[] O = [];        // (BT, 2C) PROJ output
    public LinearTape? Up;
    public float[]? M;            // (BT, 2F) UP output
    public float[]? Gated;        // (BT, F) m[:F]·silu(m[F:])
    public LinearTape? Down;
}

/// <summary>Everything a backward pass needs from one forward.</summary>
internal sealed class ForwardTape
{
    public int B, T;
    public long Pos0;
    public int[] Tokens = [];
    public float[] E = [];         // (BT, r or C) gathered embeddings
    public float[]? P;             // (BT, C) embed.proj output (r > 0)
    public float[] X0 = [];        // (BT, C) rmsnorm of the above
    public float[] X0Inv = [];
    public List<ApplicationTape> Apps = [];
    public float[] XFinal = [];    // (BT, C) residual after all applications
    public float[] XF = [];        // (BT, C) rmsnorm(XFinal)
    public float[] XFInv = [];
    public LinearTape Unembed = new();
    public float[] RopeCos = [], RopeSin = [];  // (T, hd/2)
}
