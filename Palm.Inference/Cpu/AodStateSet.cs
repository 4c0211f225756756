// The recurrent state of B sequences: one (S, Z) pair of D floats per sequence for every block
// application (l, i), plus the position of the next token. Its size never depends on how many
// tokens were fed: this is what replaces a KV cache.
using Palm.Inference.Model;

namespace Palm.Inference.Cpu;

/// <summary>AoD running sums for B sequences over all L*R block applications.</summary>
internal sealed class AodStateSet
{
    public AodStateSet(PalmConfig config, int batch)
    {
        config.Validate();
        if (batch <= 0) throw new ArgumentOutOfRangeException(nameof(batch), "batch must be > 0");
        Config = config;
        Batch = batch;
        int apps = config.Applications, d = config.DQkv;
        S = new float[apps][];
        Z = config.Mix == AodMix.Mean ? new float[apps][] : null;
        for (int a = 0; a < apps; a++)
        {
            S[a] = new float[batch * d];
            if (Z is not null) Z[a] = new float[batch * d];
        }
    }

    public PalmConfig Config { get; }
    public int Batch { get; }
    /// <summary>S per application, (B, D).</summary>
    public float[][] S { get; }
    /// <summary>Z per application, (B, D); null for aod_mix = sum.</summary>
    public float[][]? Z { get; }
    /// <summary>Absolute position of the next token fed (all sequences of the set share it).</summary>
    public long Position { get; set; }

    /// <summary>Floats held, independent of the number of tokens seen.</summary>
    public long FloatCount => (long)S.Length * S[0].Length * (Z is null ? 1 : 2);

    public AodStateSet Clone()
    {
        var c = new AodStateSet(Config, Batch) { Position = Position };
        for (int a = 0; a < S.Length; a++)
        {
            S[a].CopyTo(c.S[a], 0);
            Z?[a].CopyTo(c.Z![a], 0);
        }
        return c;
    }
}
