// The recurrent state of ONE sequence, kept on the host in the CPU reference's layout (an
// AodStateSet of batch 1: S and Z, D floats each per block application, plus the position).
// Both backends read and write this form; Vulkan gathers it into a device batch per step.
// Its size depends only on the config, never on how many tokens were fed.
using Palm.Inference.Cpu;
using Palm.Inference.Model;

namespace Palm.Inference.Backends;

internal sealed class SequenceState
{
    internal SequenceState(PalmConfig config) => Set = new AodStateSet(config, 1);

    private SequenceState(AodStateSet set) => Set = set;

    internal AodStateSet Set { get; }

    /// <summary>Absolute position of the next token.</summary>
    public long Position
    {
        get => Set.Position;
        set => Set.Position = value;
    }

    /// <summary>Floats of AoD state: L*R applications times D (S), times 2 with mean mixing (Z).</summary>
    public static int FloatCount(PalmConfig c) => c.Applications * c.StateWidth;

    public int Length => FloatCount(Set.Config);

    /// <summary>Writes the state as floats: per application, S (D) then Z (D) when present.</summary>
    public void CopyTo(Span<float> dst)
    {
        if (dst.Length != Length) throw new ArgumentException($"expected {Length} floats, got {dst.Length}", nameof(dst));
        int D = Set.Config.DQkv, o = 0;
        for (int a = 0; a < Set.S.Length; a++)
        {
            Set.S[a].CopyTo(dst.Slice(o, D)); o += D;
            if (Set.Z is not null) { Set.Z[a].CopyTo(dst.Slice(o, D)); o += D; }
        }
    }

    /// <summary>Reads the form <see cref="CopyTo"/> writes.</summary>
    public void CopyFrom(ReadOnlySpan<float> src)
    {
        if (src.Length != Length) throw new ArgumentException($"expected {Length} floats, got {src.Length}", nameof(src));
        int D = Set.Config.DQkv, o = 0;
        for (int a = 0; a < Set.S.Length; a++)
        {
            src.Slice(o, D).CopyTo(Set.S[a]); o += D;
            if (Set.Z is not null) { src.Slice(o, D).CopyTo(Set.Z[a]); o += D; }
        }
    }

    public SequenceState Clone() => new(Set.Clone());

    /// <summary>Copies <paramref name="other"/> (same config) into this state.</summary>
    public void Assign(SequenceState other)
    {
        for (int a = 0; a < Set.S.Length; a++)
        {
            other.Set.S[a].CopyTo(Set.S[a], 0);
            other.Set.Z?[a].CopyTo(Set.Z![a], 0);
        }
        Position = other.Position;
    }
}
