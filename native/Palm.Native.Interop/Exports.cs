// The exports of libpalm (include/palm.h documents each). Every export catches everything: an
// exception never crosses into C, it becomes a palm_status and the thread's last-error message.
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using Palm.Inference;

namespace Palm.Native.Interop;

/// <summary>The [UnmanagedCallersOnly] entry points of libpalm.</summary>
public static unsafe class Exports
{
    /// <summary>PALM_ABI_VERSION in palm.h: bumped on any incompatible change of the ABI.</summary>
    public const uint AbiVersion = 1;

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);
    private static readonly Lazy<IntPtr> s_version = new(() =>
    {
        var v = typeof(Exports).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "0.0.0";
        int plus = v.IndexOf('+');
        return (IntPtr)StaticUtf8(plus >= 0 ? v[..plus] : v);
    });

    private static string Utf8Arg(byte* p, string name)
    {
        if (p == null) throw new AbiException(PalmStatus.InvalidArgument, $"{name} is NULL");
        var bytes = MemoryMarshal.CreateReadOnlySpanFromNullTerminated(p);
        try { return StrictUtf8.GetString(bytes); }
        catch (DecoderFallbackException) { throw new AbiException(PalmStatus.InvalidUtf8, $"{name} is not valid UTF-8"); }
    }

    private static void Need(void* p, string name)
    {
        if (p == null) throw new AbiException(PalmStatus.InvalidArgument, $"{name} is NULL");
    }

    private static byte* StaticUtf8(string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        var p = (byte*)NativeMemory.Alloc((nuint)bytes.Length + 1);
        bytes.CopyTo(new Span<byte>(p, bytes.Length));
        p[bytes.Length] = 0;
        return p;
    }

    // ---- library ----

    [UnmanagedCallersOnly(EntryPoint = "palm_abi_version")]
    public static uint PalmAbiVersion() => AbiVersion;

    [UnmanagedCallersOnly(EntryPoint = "palm_version")]
    public static byte* PalmVersion()
    {
        try
        {
            return (byte*)s_version.Value;
        }
        catch { return Errors.Message; }
    }

    [UnmanagedCallersOnly(EntryPoint = "palm_last_error")]
    public static byte* PalmLastError() => Errors.Message;

    [UnmanagedCallersOnly(EntryPoint = "palm_status_string")]
    public static byte* PalmStatusString(int status) => status switch
    {
        0 => Lit("ok"u8),
        1 => Lit("invalid argument"u8),
        2 => Lit("invalid UTF-8"u8),
        3 => Lit("I/O error"u8),
        4 => Lit("invalid model format"u8),
        5 => Lit("backend unavailable"u8),
        6 => Lit("buffer too small"u8),
        7 => Lit("corrupt session state"u8),
        8 => Lit("unsupported session state version"u8),
        9 => Lit("session state from another model"u8),
        10 => Lit("session busy"u8),
        11 => Lit("disposed"u8),
        12 => Lit("out of memory"u8),
        13 => Lit("internal error"u8),
        _ => Lit("unknown status"u8),
    };

    // u8 literals are NUL-terminated constant data in the image: they never move.
    private static byte* Lit(ReadOnlySpan<byte> s) => (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(s));

    // ---- defaults ----

    [UnmanagedCallersOnly(EntryPoint = "palm_model_default_params")]
    public static PalmModelParams PalmModelDefaultParams() => new() { Backend = (int)Backend.Auto };

    [UnmanagedCallersOnly(EntryPoint = "palm_session_default_params")]
    public static PalmSessionParams PalmSessionDefaultParams()
    {
        var d = new SessionOptions();
        return new() { Seed = 0, HasSeed = 0, PenaltyWindow = d.PenaltyWindow };
    }

    [UnmanagedCallersOnly(EntryPoint = "palm_generate_default_params")]
    public static PalmGenerateParams PalmGenerateDefaultParams()
    {
        var d = new GenerationOptions();
        return new()
        {
            MaxTokens = d.MaxTokens, Temperature = d.Temperature, TopK = d.TopK, TopP = d.TopP, MinP = d.MinP,
            RepetitionPenalty = d.RepetitionPenalty, PresencePenalty = d.PresencePenalty, FrequencyPenalty = d.FrequencyPenalty,
            Seed = 0, HasSeed = 0, StopStringCount = 0, StopStrings = null,
        };
    }

    // ---- model ----

    [UnmanagedCallersOnly(EntryPoint = "palm_model_load")]
    public static PalmStatus PalmModelLoad(byte* path, PalmModelParams* parameters, IntPtr* outModel)
    {
        try
        {
            Need(outModel, "out_model");
            *outModel = IntPtr.Zero;
            var file = Utf8Arg(path, "path");
            var p = parameters != null ? *parameters : new PalmModelParams { Backend = (int)Backend.Auto };
            if (p.Backend is < 0 or > 2) throw new AbiException(PalmStatus.InvalidArgument, $"backend {p.Backend} is not a palm_backend");
            if (!File.Exists(file)) throw new AbiException(PalmStatus.Io, $"model file not found: {file}");
            var model = PalmModel.Load(file, new ModelOptions { Backend = (Backend)p.Backend });
            *outModel = Handles.New(model);
            return PalmStatus.Ok;
        }
        catch (Exception e) { return Errors.From(e); }
    }

    [UnmanagedCallersOnly(EntryPoint = "palm_model_free")]
    public static void PalmModelFree(IntPtr model)
    {
        try { Handles.Free<PalmModel>(model)?.Dispose(); }
        catch (Exception e) { Errors.From(e); }
    }

    [UnmanagedCallersOnly(EntryPoint = "palm_model_memory")]
    public static PalmStatus PalmModelMemory(IntPtr model, PalmMemoryInfo* outInfo)
    {
        try
        {
            var m = Handles.Get<PalmModel>(model, "model");
            Need(outInfo, "out_info");
            *outInfo = new PalmMemoryInfo { WeightBytes = m.WeightBytes, SessionBytes = m.SessionBytes };
            return PalmStatus.Ok;
        }
        catch (Exception e) { return Errors.From(e); }
    }

    [UnmanagedCallersOnly(EntryPoint = "palm_model_backend")]
    public static PalmStatus PalmModelBackend(IntPtr model, int* outBackend, byte* description, nuint capacity, nuint* outLength)
    {
        try
        {
            var m = Handles.Get<PalmModel>(model, "model");
            if (outBackend != null) *outBackend = (int)m.Backend;
            if (description == null && outLength == null) return PalmStatus.Ok;
            var bytes = Encoding.UTF8.GetBytes(m.BackendDescription);
            if (outLength != null) *outLength = (nuint)bytes.Length;
            if (description == null) return PalmStatus.Ok;
            if (capacity < (nuint)bytes.Length + 1)
                throw new AbiException(PalmStatus.BufferTooSmall, $"the description needs {bytes.Length + 1} bytes, the buffer holds {capacity}");
            bytes.CopyTo(new Span<byte>(description, bytes.Length));
            description[bytes.Length] = 0;
            return PalmStatus.Ok;
        }
        catch (Exception e) { return Errors.From(e); }
    }

    [UnmanagedCallersOnly(EntryPoint = "palm_model_id")]
    public static PalmStatus PalmModelId(IntPtr model, byte* buffer, nuint capacity)
    {
        try
        {
            var m = Handles.Get<PalmModel>(model, "model");
            Need(buffer, "buffer");
            var id = Encoding.ASCII.GetBytes(m.Id);
            if (capacity < (nuint)id.Length + 1)
                throw new AbiException(PalmStatus.BufferTooSmall, $"the model id needs {id.Length + 1} bytes, the buffer holds {capacity}");
            id.CopyTo(new Span<byte>(buffer, id.Length));
            buffer[id.Length] = 0;
            return PalmStatus.Ok;
        }
        catch (Exception e) { return Errors.From(e); }
    }

    // ---- session ----

    [UnmanagedCallersOnly(EntryPoint = "palm_session_create")]
    public static PalmStatus PalmSessionCreate(IntPtr model, PalmSessionParams* parameters, IntPtr* outSession)
    {
        try
        {
            Need(outSession, "out_session");
            *outSession = IntPtr.Zero;
            var m = Handles.Get<PalmModel>(model, "model");
            var d = new SessionOptions();
            var o = parameters == null ? d : new SessionOptions
            {
                Seed = parameters->HasSeed != 0 ? parameters->Seed : null,
                PenaltyWindow = parameters->PenaltyWindow,
            };
            *outSession = Handles.New(new NativeSession(m.CreateSession(o)));
            return PalmStatus.Ok;
        }
        catch (Exception e) { return Errors.From(e); }
    }

    [UnmanagedCallersOnly(EntryPoint = "palm_session_free")]
    public static void PalmSessionFree(IntPtr session)
    {
        try
        {
            var s = Handles.Free<NativeSession>(session);
            if (s is null) return;
            s.Cancel();
            s.Session.Dispose();
        }
        catch (Exception e) { Errors.From(e); }
    }

    [UnmanagedCallersOnly(EntryPoint = "palm_session_generate")]
    public static PalmStatus PalmSessionGenerate(IntPtr session, byte* prompt, PalmGenerateParams* parameters,
        delegate* unmanaged<byte*, nuint, void*, int> callback, void* user, PalmStopReason* outReason)
    {
        try
        {
            var s = Handles.Get<NativeSession>(session, "session");
            var text = Utf8Arg(prompt, "prompt");
            var options = Options(parameters);
            var ct = s.Begin();
            try
            {
                var reason = Generate(s.Session, text, options, ct, callback, user);
                if (outReason != null) *outReason = reason;
                return PalmStatus.Ok;
            }
            finally { s.End(); }
        }
        catch (Exception e) { return Errors.From(e); }
    }

    private static GenerationOptions Options(PalmGenerateParams* p)
    {
        if (p == null) return new GenerationOptions();
        if (p->StopStringCount < 0) throw new AbiException(PalmStatus.InvalidArgument, "n_stop_strings is negative");
        if (p->StopStringCount > 0 && p->StopStrings == null) throw new AbiException(PalmStatus.InvalidArgument, "stop_strings is NULL");
        var stops = new string[p->StopStringCount];
        for (int i = 0; i < stops.Length; i++) stops[i] = Utf8Arg(p->StopStrings[i], $"stop_strings[{i}]");
        return new GenerationOptions
        {
            MaxTokens = p->MaxTokens, Temperature = p->Temperature, TopK = p->TopK, TopP = p->TopP, MinP = p->MinP,
            RepetitionPenalty = p->RepetitionPenalty, PresencePenalty = p->PresencePenalty, FrequencyPenalty = p->FrequencyPenalty,
            Seed = p->HasSeed != 0 ? p->Seed : null, StopStrings = stops,
        };
    }

    // Drives the async stream from the caller's thread and hands each piece to the callback on that
    // same thread. The caller is blocked until the generation ends anyway, so a lone session's
    // decoding steps run on it too (BatchScheduler.CallerBlocks): no thread hand-off a token.
    private static PalmStopReason Generate(PalmSession session, string prompt, GenerationOptions options, CancellationToken ct,
        delegate* unmanaged<byte*, nuint, void*, int> callback, void* user)
    {
        var stream = session.GenerateAsync(prompt, options, ct); // validates the options
        var e = stream.GetAsyncEnumerator(ct);
        bool stoppedByCallback = false;
        byte[] buffer = new byte[256];
        bool blocked = BatchScheduler.CallerBlocks;
        BatchScheduler.CallerBlocks = true;
        try
        {
            while (Wait(e.MoveNextAsync()))
            {
                if (callback == null) continue;
                var piece = e.Current;
                int n = Encoding.UTF8.GetMaxByteCount(piece.Length) + 1;
                if (buffer.Length < n) buffer = new byte[Math.Max(n, buffer.Length * 2)];
                int len = Encoding.UTF8.GetBytes(piece, buffer);
                buffer[len] = 0;
                int stop;
                fixed (byte* b = buffer) stop = callback(b, (nuint)len, user);
                if (stop != 0) { stoppedByCallback = true; break; }
            }
        }
        finally
        {
            BatchScheduler.CallerBlocks = blocked;
            var d = e.DisposeAsync();
            if (!d.IsCompleted) d.AsTask().GetAwaiter().GetResult();
            else d.GetAwaiter().GetResult();
        }
        if (stoppedByCallback) return PalmStopReason.Callback;
        return session.LastResult?.StopReason switch
        {
            StopReason.StopString => PalmStopReason.StopString,
            StopReason.EndOfText => PalmStopReason.EndOfText,
            StopReason.Cancelled => PalmStopReason.Cancelled,
            StopReason.Abandoned => PalmStopReason.Callback,
            _ => PalmStopReason.MaxTokens,
        };
    }

    private static bool Wait(ValueTask<bool> t) => t.IsCompleted ? t.GetAwaiter().GetResult() : t.AsTask().GetAwaiter().GetResult();

    [UnmanagedCallersOnly(EntryPoint = "palm_session_cancel")]
    public static PalmStatus PalmSessionCancel(IntPtr session)
    {
        try
        {
            Handles.Get<NativeSession>(session, "session").Cancel();
            return PalmStatus.Ok;
        }
        catch (Exception e) { return Errors.From(e); }
    }

    [UnmanagedCallersOnly(EntryPoint = "palm_session_reset")]
    public static PalmStatus PalmSessionReset(IntPtr session)
    {
        try
        {
            Handles.Get<NativeSession>(session, "session").Session.Reset();
            return PalmStatus.Ok;
        }
        catch (Exception e) { return Errors.From(e); }
    }

    [UnmanagedCallersOnly(EntryPoint = "palm_session_state_size")]
    public static PalmStatus PalmSessionStateSize(IntPtr session, nuint* outSize)
    {
        try
        {
            var s = Handles.Get<NativeSession>(session, "session");
            Need(outSize, "out_size");
            *outSize = (nuint)s.Session.SaveState().Length;
            return PalmStatus.Ok;
        }
        catch (Exception e) { return Errors.From(e); }
    }

    [UnmanagedCallersOnly(EntryPoint = "palm_session_save_state")]
    public static PalmStatus PalmSessionSaveState(IntPtr session, byte* buffer, nuint capacity, nuint* outWritten)
    {
        try
        {
            var s = Handles.Get<NativeSession>(session, "session");
            var state = s.Session.SaveState();
            if (outWritten != null) *outWritten = (nuint)state.Length;
            if (buffer == null || capacity < (nuint)state.Length)
                throw new AbiException(PalmStatus.BufferTooSmall,
                    $"the session state needs {state.Length} bytes, the buffer holds {(buffer == null ? 0 : capacity)}");
            state.CopyTo(new Span<byte>(buffer, state.Length));
            return PalmStatus.Ok;
        }
        catch (Exception e) { return Errors.From(e); }
    }

    [UnmanagedCallersOnly(EntryPoint = "palm_session_restore_state")]
    public static PalmStatus PalmSessionRestoreState(IntPtr session, byte* buffer, nuint length)
    {
        try
        {
            var s = Handles.Get<NativeSession>(session, "session");
            if (buffer == null && length != 0) throw new AbiException(PalmStatus.InvalidArgument, "buffer is NULL");
            if (length > int.MaxValue) throw new AbiException(PalmStatus.StateCorrupt, "the state blob is larger than any session state");
            s.Session.RestoreState(new ReadOnlySpan<byte>(buffer, (int)length));
            return PalmStatus.Ok;
        }
        catch (Exception e) { return Errors.From(e); }
    }
}
