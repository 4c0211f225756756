// Token streams for training: a train/val split of one token array and random (B, T+1) windows
// drawn from it with the run's seeded RNG, so a run is reproducible from its seed.
using Palm.Inference.Model;

namespace Palm.Trainer.Training;

/// <summary>A contiguous token stream with a held-out tail for validation.</summary>
public sealed class TokenDataset
{
    /// <summary>Splits <paramref name="tokens"/> into train (head) and val (the last <paramref name="valFraction"/>).</summary>
    /// <exception cref="ArgumentException">Too few tokens for one window of <paramref name="blockSize"/> + 1 in either split.</exception>
    public TokenDataset(int[] tokens, int blockSize, double valFraction = 0.1)
    {
        if (valFraction <= 0 || valFraction >= 1) throw new ArgumentOutOfRangeException(nameof(valFraction), "must be in (0, 1)");
        int val = (int)(tokens.Length * valFraction);
        Train = tokens[..^val];
        Val = tokens[^val..];
        BlockSize = blockSize;
        if (Train.Length < blockSize + 1 || Val.Length < blockSize + 1)
            throw new ArgumentException($"corpus of {tokens.Length} tokens is too small for block_size {blockSize} (need {blockSize + 1} tokens in each of train and val)");
    }

    public int[] Train { get; }
    public int[] Val { get; }
    public int BlockSize { get; }

    /// <summary>B random windows: inputs (B, T) and next-token targets (B, T).</summary>
    public (int[] X, int[] Y) Batch(bool train, int batch, Rng rng)
    {
        var src = train ? Train : Val;
        int t = BlockSize;
        var x = new int[batch * t];
        var y = new int[batch * t];
        for (int b = 0; b < batch; b++)
        {
            int off = rng.NextInt(src.Length - t);
            Array.Copy(src, off, x, b * t, t);
            Array.Copy(src, off + 1, y, b * t, t);
        }
        return (x, y);
    }
}
