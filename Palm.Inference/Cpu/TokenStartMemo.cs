// What the start of a decode step makes of the token id alone: the embedding row, its projection
// and norm (the residual stream x0), and each part's share of the first block's input (the
// partial product of its input factor over the part's channels and their sum of squares). With
// the weights fixed that is a pure function of the id, yet every step recomputed it on every
// thread: two 64 KB products of `small` a thread, ~3-4 us of a ~60 us two-core token. This table
// keeps it per id, direct-mapped (a slot per id modulo the slot count, so frequent ids stay and
// memory stays bounded), filled on a miss with exactly the values the step computed: a hit gives
// the same bits as computing.
//
// Any thread may read or fill it (team threads, the batch path's pool threads): each slot is a
// seqlock. A writer makes the slot's sequence odd (only one writer wins the CAS; a losing one just
// skips storing), writes, and makes it even again; a reader copies the slot and keeps the copy
// only if the sequence was the same even value before and after.
namespace Palm.Inference.Cpu;

internal sealed class TokenStartMemo
{
    private readonly int _slots, _c, _r, _parts, _stride;
    private readonly float[] _data;     // per slot: x0 (C), then each part's partial product (r)
    private readonly double[] _ss;      // per slot: each part's sum of squares
    private readonly int[] _seq;        // per slot: even = stable, odd = being written
    private readonly int[] _token;      // per slot: the id held, -1 for none

    /// <param name="slots">Slots (at least 1).</param>
    /// <param name="c">Channels of x0.</param>
    /// <param name="r">Floats of each part's partial product (0 when the first input is not factorized).</param>
    /// <param name="parts">Parts whose partial sums are kept.</param>
    public TokenStartMemo(int slots, int c, int r, int parts)
    {
        _slots = slots; _c = c; _r = r; _parts = parts;
        _stride = c + parts * r;
        _data = new float[(long)slots * _stride];
        _ss = new double[slots * parts];
        _seq = new int[slots];
        _token = new int[slots];
        Array.Fill(_token, -1);
    }

    /// <summary>Bytes held.</summary>
    public long Bytes => 4L * _data.Length + 8L * _ss.Length + 8L * _slots;

    /// <summary>
    /// Slots for a table of at most <paramref name="budgetBytes"/> (never more than one per id);
    /// 0 when fewer than 16 would fit, where a table would mostly miss.
    /// </summary>
    public static int SlotsFor(long budgetBytes, int vocab, int c, int r, int parts)
    {
        long perSlot = 4L * (c + parts * r) + 8L * parts + 8;
        long slots = Math.Min(vocab, budgetBytes / perSlot);
        return slots < 16 ? 0 : (int)slots;
    }

    /// <summary>Copies id <paramref name="token"/>'s values into x, pu[p] and ss[8p]; false on a miss.</summary>
    public bool TryRead(int token, Span<float> x, float[][] pu, double[] ss)
    {
        int slot = token % _slots;
        int s1 = Volatile.Read(ref _seq[slot]);
        if ((s1 & 1) != 0 || Volatile.Read(ref _token[slot]) != token) return false;
        long o = (long)slot * _stride;
        _data.AsSpan((int)o, _c).CopyTo(x);
        for (int p = 0; p < _parts; p++)
        {
            _data.AsSpan((int)(o + _c + p * _r), _r).CopyTo(pu[p]);
            ss[8 * p] = _ss[slot * _parts + p];
        }
        // The copies must be complete before the second read of the sequence.
        Interlocked.MemoryBarrier();
        return Volatile.Read(ref _seq[slot]) == s1;
    }

    /// <summary>Stores id <paramref name="token"/>'s values (skipped while another thread writes the slot).</summary>
    public void Write(int token, ReadOnlySpan<float> x, float[][] pu, double[] ss)
    {
        int slot = token % _slots;
        int s0 = Volatile.Read(ref _seq[slot]);
        if ((s0 & 1) != 0 || Interlocked.CompareExchange(ref _seq[slot], s0 + 1, s0) != s0) return;
        _token[slot] = token;
        long o = (long)slot * _stride;
        x[.._c].CopyTo(_data.AsSpan((int)o, _c));
        for (int p = 0; p < _parts; p++)
        {
            pu[p].AsSpan(0, _r).CopyTo(_data.AsSpan((int)(o + _c + p * _r), _r));
            _ss[slot * _parts + p] = ss[8 * p];
        }
        Volatile.Write(ref _seq[slot], s0 + 2);   // release: the values are visible first
    }
}
