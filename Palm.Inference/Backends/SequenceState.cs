// The recurrent state of ONE sequence: S and Z, D floats each per block application, plus the
// position of the next token. Its size depends only on the config, never on how many tokens
// were fed.
//
// Where the floats live: the CPU backend works on the host arrays (an AodStateSet of batch 1).
// The Vulkan backend gives a state a row (slot) of its device pool the first time it sees it;
// from then on the device copy is authoritative and the host arrays go stale, so decoding moves
// no state over the bus. Every host accessor below first pulls the device copy (CopyTo, Clone,
// Assign's source, Set), and every host overwrite (CopyFrom, Assign, Set) marks the device copy
// stale, to be uploaded by the backend before the state's next use: what the session API
// promises (save, restore, fork, rollback) is unchanged. The position always lives on the host
// (the backend forms RoPE tables from it). Releasing the slot is host bookkeeping only, so it is
// safe from any thread, including the finalizer that catches states nobody released.
using Palm.Inference.Cpu;
using Palm.Inference.Model;

namespace Palm.Inference.Backends;

/// <summary>A backend that keeps states in its own (device) memory, one slot per state.</summary>
internal interface IStateHome
{
    /// <summary>Copies the device copy of <paramref name="slot"/> into <paramref name="set"/> (S and Z; not the position).</summary>
    /// <exception cref="ObjectDisposedException">The backend was disposed: the device copy is gone.</exception>
    void Pull(int slot, AodStateSet set);

    /// <summary>Returns <paramref name="slot"/> for reuse. Host bookkeeping only: callable from any thread and from finalizers.</summary>
    void Release(int slot);
}

internal sealed class SequenceState
{
    private readonly AodStateSet _host;
    private IStateHome? _home;
    private int _slot = -1;
    private bool _hostStale;   // the device copy is newer
    private bool _deviceStale; // the host copy is newer: upload before the next device use
    private bool _lost;        // released while only the device held the current values

    internal SequenceState(PalmConfig config) : this(new AodStateSet(config, 1)) { }

    private SequenceState(AodStateSet set)
    {
        _host = set;
        // Only states with a device slot need finalizing (see Adopt).
        GC.SuppressFinalize(this);
    }

    ~SequenceState()
    {
        if (_home is { } home && _slot >= 0) home.Release(_slot);
    }

    /// <summary>The host form, for backends that compute on the host. Pulls the device copy first and
    /// marks it stale: the caller may write.</summary>
    internal AodStateSet Set
    {
        get
        {
            SyncHost();
            if (_home is not null) _deviceStale = true;
            return _host;
        }
    }

    /// <summary>Absolute position of the next token (kept on the host whatever backend holds the floats).</summary>
    public long Position
    {
        get => _host.Position;
        set => _host.Position = value;
    }

    /// <summary>Floats of AoD state: L*R applications times D (S), times 2 with mean mixing (Z).</summary>
    public static int FloatCount(PalmConfig c) => c.Applications * c.StateWidth;

    public int Length => FloatCount(_host.Config);

    /// <summary>Writes the state as floats: per application, S (D) then Z (D) when present.</summary>
    public void CopyTo(Span<float> dst)
    {
        if (dst.Length != Length) throw new ArgumentException($"expected {Length} floats, got {dst.Length}", nameof(dst));
        SyncHost();
        int D = _host.Config.DQkv, o = 0;
        for (int a = 0; a < _host.S.Length; a++)
        {
            _host.S[a].CopyTo(dst.Slice(o, D)); o += D;
            if (_host.Z is not null) { _host.Z[a].CopyTo(dst.Slice(o, D)); o += D; }
        }
    }

    /// <summary>Reads the form <see cref="CopyTo"/> writes.</summary>
    public void CopyFrom(ReadOnlySpan<float> src)
    {
        if (src.Length != Length) throw new ArgumentException($"expected {Length} floats, got {src.Length}", nameof(src));
        int D = _host.Config.DQkv, o = 0;
        for (int a = 0; a < _host.S.Length; a++)
        {
            src.Slice(o, D).CopyTo(_host.S[a]); o += D;
            if (_host.Z is not null) { src.Slice(o, D).CopyTo(_host.Z[a]); o += D; }
        }
        HostOverwritten();
    }

    /// <summary>An independent copy on the host (no device slot until a backend uses it).</summary>
    public SequenceState Clone()
    {
        SyncHost();
        return new(_host.Clone());
    }

    /// <summary>Copies <paramref name="other"/> (same config) into this state.</summary>
    public void Assign(SequenceState other)
    {
        other.SyncHost();
        for (int a = 0; a < _host.S.Length; a++)
        {
            other._host.S[a].CopyTo(_host.S[a], 0);
            other._host.Z?[a].CopyTo(_host.Z![a], 0);
        }
        Position = other.Position;
        HostOverwritten();
    }

    // ---- the device side, used by a backend that implements IStateHome ----

    /// <summary>The backend holding this state's device copy, or null.</summary>
    internal IStateHome? Home => _home;

    /// <summary>This state's row in its home's pool; -1 without a home.</summary>
    internal int Slot => _slot;

    /// <summary>The host arrays are newer than the device copy (or there is none yet): upload before use.</summary>
    internal bool NeedsUpload => _deviceStale;

    /// <summary>Gives this state a slot; the host arrays are authoritative until <see cref="Uploaded"/>.</summary>
    internal void Adopt(IStateHome home, int slot)
    {
        if (_home is not null) throw new InvalidOperationException("the state already has a device slot");
        ObjectDisposedException.ThrowIf(_lost, this);
        _home = home;
        _slot = slot;
        _deviceStale = true;
        _hostStale = false;
        GC.ReRegisterForFinalize(this);
    }

    /// <summary>The host arrays to upload (only while <see cref="NeedsUpload"/>).</summary>
    internal AodStateSet HostForUpload => _hostStale ? throw new InvalidOperationException("the host copy is stale") : _host;

    /// <summary>The backend copied the host arrays into the slot.</summary>
    internal void Uploaded() => _deviceStale = false;

    /// <summary>The backend advanced the device copy: the host arrays are stale until pulled.</summary>
    internal void DeviceAdvanced(int tokens)
    {
        _hostStale = true;
        _host.Position += tokens;
    }

    /// <summary>
    /// Gives the slot back (session disposed or state replaced). The state stays usable only if
    /// its host arrays are current; otherwise a later host read throws ObjectDisposedException.
    /// </summary>
    internal void Release()
    {
        if (_home is not { } home) return;
        home.Release(_slot);
        _lost = _hostStale;
        _home = null;
        _slot = -1;
        _deviceStale = false;
        _hostStale = false;
        GC.SuppressFinalize(this);
    }

    private void SyncHost()
    {
        ObjectDisposedException.ThrowIf(_lost, this);
        if (!_hostStale) return;
        _home!.Pull(_slot, _host);
        _hostStale = false;
    }

    private void HostOverwritten()
    {
        _hostStale = false;
        _lost = false;
        if (_home is not null) _deviceStale = true;
    }
}
