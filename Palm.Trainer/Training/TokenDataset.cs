// Training and validation token streams and the seeded batch sampler: each batch is B random
// (T+1)-token windows drawn with the run's RNG, whose state is saved in checkpoints, so the
// data order resumes exactly where it stopped.
using Palm.Inference.Model;
using Palm.Trainer.Data;

namespace Palm.Trainer.Training;

/// <summary>Train and val splits with a window length T (the model's block size).</summary>
public sealed class TokenDataset : IDisposable
{
    /// <summary>Splits <paramref name="tokens"/> into train (head) and val (the last <paramref name="valFraction"/>).</summary>
    /// <exception cref="ArgumentException">Too few tokens for one window of <paramref name="blockSize"/> + 1 in either split.</exception>
    public TokenDataset(int[] tokens, int blockSize, double valFraction = 0.1)
    {
        if (valFraction <= 0 || valFraction >= 1) throw new ArgumentOutOfRangeException(nameof(valFraction), "must be in (0, 1)");
        int val = (int)(tokens.Length * valFraction);
        Train = new TokenSplit([new ArraySegmentTokens(tokens[..^val])]);
        Val = new TokenSplit([new ArraySegmentTokens(tokens[^val..])]);
        BlockSize = blockSize;
        if (Train.WindowStarts(blockSize) == 0 || Val.WindowStarts(blockSize) == 0)
            throw new ArgumentException($"corpus of {tokens.Length} tokens is too small for block_size {blockSize} (need {blockSize + 1} tokens in each of train and val)");
    }

    /// <summary>Wraps opened splits.</summary>
    /// <exception cref="Commands.UserError">A split has no segment of at least T+1 tokens.</exception>
    public TokenDataset(TokenSplit train, TokenSplit val, int blockSize, string where)
    {
        Train = train; Val = val; BlockSize = blockSize;
        if (train.WindowStarts(blockSize) == 0)
            throw new Commands.UserError($"data '{where}': the train split ({train.Tokens} tokens) has no shard of at least block_size + 1 = {blockSize + 1} tokens");
        if (val.WindowStarts(blockSize) == 0)
            throw new Commands.UserError($"data '{where}': the val split ({val.Tokens} tokens) has no shard of at least block_size + 1 = {blockSize + 1} tokens (raise val fraction in prepare)");
    }

    public TokenSplit Train { get; }
    public TokenSplit Val { get; }
    public int BlockSize { get; }

    /// <summary>B random windows: inputs (B, T) and next-token targets (B, T).</summary>
    public (int[] X, int[] Y) Batch(bool train, int batch, Rng rng)
    {
        var split = train ? Train : Val;
        int t = BlockSize;
        long starts = split.WindowStarts(t);
        var x = new int[batch * t];
        var y = new int[batch * t];
        for (int b = 0; b < batch; b++)
        {
            long index = starts <= int.MaxValue ? rng.NextInt((int)starts) : (long)(rng.NextU64() % (ulong)starts);
            split.Window(index, t, x.AsSpan(b * t, t), y.AsSpan(b * t, t));
        }
        return (x, y);
    }

    public void Dispose() { Train.Dispose(); Val.Dispose(); }
}
