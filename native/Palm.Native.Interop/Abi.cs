// The C ABI's plain data: status codes, parameter structs and the handle/error plumbing shared by
// the exports. Every layout here must match include/palm.h exactly.
using System.Runtime.InteropServices;
using System.Text;
using Palm.Gpu;
using Palm.Inference;
using Palm.Inference.Checkpoint;

namespace Palm.Native.Interop;

/// <summary>palm_status: 0 is success, every failure a positive code (palm.h).</summary>
public enum PalmStatus
{
    /// <summary>PALM_OK.</summary>
    Ok = 0,
    /// <summary>PALM_ERR_INVALID_ARGUMENT: a NULL or wrong-kind handle, a NULL pointer, an option out of range.</summary>
    InvalidArgument = 1,
    /// <summary>PALM_ERR_INVALID_UTF8: a string argument is not valid UTF-8.</summary>
    InvalidUtf8 = 2,
    /// <summary>PALM_ERR_IO: a file is missing or cannot be read.</summary>
    Io = 3,
    /// <summary>PALM_ERR_FORMAT: the file is not a valid Palm checkpoint.</summary>
    Format = 4,
    /// <summary>PALM_ERR_BACKEND_UNAVAILABLE: the asked-for backend (Vulkan) has no device.</summary>
    BackendUnavailable = 5,
    /// <summary>PALM_ERR_BUFFER_TOO_SMALL: the caller's buffer is too small; the needed size was written.</summary>
    BufferTooSmall = 6,
    /// <summary>PALM_ERR_STATE_CORRUPT: the state blob is truncated or damaged.</summary>
    StateCorrupt = 7,
    /// <summary>PALM_ERR_STATE_VERSION: the state blob has a format version this library does not read.</summary>
    StateVersion = 8,
    /// <summary>PALM_ERR_STATE_WRONG_MODEL: the state blob was saved from another model.</summary>
    StateWrongModel = 9,
    /// <summary>PALM_ERR_BUSY: another call is running on this session.</summary>
    Busy = 10,
    /// <summary>PALM_ERR_DISPOSED: the session's model was freed.</summary>
    Disposed = 11,
    /// <summary>PALM_ERR_OUT_OF_MEMORY.</summary>
    OutOfMemory = 12,
    /// <summary>PALM_ERR_INTERNAL: anything else (the message says what).</summary>
    Internal = 13,
}

/// <summary>palm_stop_reason.</summary>
public enum PalmStopReason
{
    /// <summary>PALM_STOP_MAX_TOKENS.</summary>
    MaxTokens = 0,
    /// <summary>PALM_STOP_STOP_STRING.</summary>
    StopString = 1,
    /// <summary>PALM_STOP_END_OF_TEXT.</summary>
    EndOfText = 2,
    /// <summary>PALM_STOP_CANCELLED: palm_session_cancel.</summary>
    Cancelled = 3,
    /// <summary>PALM_STOP_CALLBACK: the token callback returned non-zero.</summary>
    Callback = 4,
}

/// <summary>palm_model_params.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct PalmModelParams
{
    /// <summary>palm_backend: 0 auto, 1 cpu, 2 vulkan.</summary>
    public int Backend;
}

/// <summary>palm_session_params.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct PalmSessionParams
{
    /// <summary>Sampling seed, used when <see cref="HasSeed"/> is non-zero.</summary>
    public ulong Seed;
    /// <summary>Non-zero: use <see cref="Seed"/>; zero: a random seed.</summary>
    public int HasSeed;
    /// <summary>Recent-token window of the penalties.</summary>
    public int PenaltyWindow;
}

/// <summary>palm_generate_params.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct PalmGenerateParams
{
    /// <summary>max_tokens.</summary>
    public int MaxTokens;
    /// <summary>temperature.</summary>
    public float Temperature;
    /// <summary>top_k.</summary>
    public int TopK;
    /// <summary>top_p.</summary>
    public float TopP;
    /// <summary>min_p.</summary>
    public float MinP;
    /// <summary>repetition_penalty.</summary>
    public float RepetitionPenalty;
    /// <summary>presence_penalty.</summary>
    public float PresencePenalty;
    /// <summary>frequency_penalty.</summary>
    public float FrequencyPenalty;
    /// <summary>seed (when has_seed).</summary>
    public ulong Seed;
    /// <summary>has_seed.</summary>
    public int HasSeed;
    /// <summary>n_stop_strings.</summary>
    public int StopStringCount;
    /// <summary>stop_strings: n_stop_strings NUL-terminated UTF-8 strings.</summary>
    public byte** StopStrings;
}

/// <summary>palm_memory_info.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct PalmMemoryInfo
{
    /// <summary>weight_bytes: held once per model.</summary>
    public long WeightBytes;
    /// <summary>session_bytes: added by each session (default penalty window), constant over its conversation.</summary>
    public long SessionBytes;
}

/// <summary>Thrown inside the exports to fail with a given status; never leaves them.</summary>
internal sealed class AbiException(PalmStatus status, string message) : Exception(message)
{
    public PalmStatus Status { get; } = status;
}

/// <summary>The per-thread last error and the mapping of exceptions to status codes.</summary>
internal static unsafe class Errors
{
    [ThreadStatic] private static byte* t_message; // NUL-terminated UTF-8, owned by this thread
    private static readonly byte* s_empty = (byte*)NativeMemory.AllocZeroed(1);

    /// <summary>Records the message of a failed call for palm_last_error; success leaves it as it was (like errno).</summary>
    public static PalmStatus Set(PalmStatus status, string message)
    {
        var bytes = Encoding.UTF8.GetBytes(message);
        var p = (byte*)NativeMemory.Alloc((nuint)bytes.Length + 1);
        bytes.CopyTo(new Span<byte>(p, bytes.Length));
        p[bytes.Length] = 0;
        var old = t_message;
        t_message = p;
        if (old != null) NativeMemory.Free(old);
        return status;
    }

    public static byte* Message => t_message != null ? t_message : s_empty;

    public static PalmStatus From(Exception e)
    {
        // Order matters: the specific types before their bases.
        var (status, what) = e switch
        {
            AbiException a => (a.Status, ""),
            SessionStateException s => (s.Error switch
            {
                SessionStateError.UnsupportedVersion => PalmStatus.StateVersion,
                SessionStateError.WrongModel => PalmStatus.StateWrongModel,
                _ => PalmStatus.StateCorrupt,
            }, "session state rejected: "),
            DecoderFallbackException => (PalmStatus.InvalidUtf8, "invalid UTF-8: "),
            PalmFormatException => (PalmStatus.Format, "not a valid Palm model: "),
            GpuUnavailableException => (PalmStatus.BackendUnavailable, "backend unavailable: "),
            FileNotFoundException or DirectoryNotFoundException => (PalmStatus.Io, "file not found: "),
            IOException or UnauthorizedAccessException => (PalmStatus.Io, "cannot read: "),
            ObjectDisposedException => (PalmStatus.Disposed, "disposed: "),
            ArgumentException => (PalmStatus.InvalidArgument, "invalid argument: "),
            InvalidOperationException => (PalmStatus.Busy, ""),
            OutOfMemoryException or InsufficientExecutionStackException => (PalmStatus.OutOfMemory, "out of memory: "),
            _ => (PalmStatus.Internal, e.GetType().Name + ": "),
        };
        try { return Set(status, what + e.Message); }
        catch { return status; } // even the message could not be allocated
    }
}

/// <summary>Opaque handles: a GCHandle to the managed object, checked for its kind on every use.</summary>
internal static class Handles
{
    public static IntPtr New(object o) => GCHandle.ToIntPtr(GCHandle.Alloc(o));

    public static T Get<T>(IntPtr h, string name) where T : class
    {
        if (h == IntPtr.Zero) throw new AbiException(PalmStatus.InvalidArgument, $"{name} is NULL");
        return GCHandle.FromIntPtr(h).Target as T
            ?? throw new AbiException(PalmStatus.InvalidArgument, $"{name} is not a {typeof(T).Name} handle (or was freed)");
    }

    public static T? Free<T>(IntPtr h) where T : class
    {
        if (h == IntPtr.Zero) return null;
        var g = GCHandle.FromIntPtr(h);
        var t = g.Target as T;
        if (t is null) return null; // wrong kind: leave it alone
        g.Free();
        return t;
    }
}

/// <summary>A session as the C side sees it: the engine session plus what cancels its running call.</summary>
internal sealed class NativeSession(PalmSession session)
{
    public PalmSession Session { get; } = session;
    private readonly Lock _gate = new();
    private CancellationTokenSource? _running;

    public CancellationToken Begin()
    {
        lock (_gate)
        {
            if (_running is not null) throw new AbiException(PalmStatus.Busy, "another generation is running on this session");
            _running = new CancellationTokenSource();
            return _running.Token;
        }
    }

    public void End()
    {
        lock (_gate)
        {
            _running?.Dispose();
            _running = null;
        }
    }

    public bool Cancel()
    {
        lock (_gate)
        {
            if (_running is null) return false;
            _running.Cancel();
            return true;
        }
    }
}
