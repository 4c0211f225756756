// One conversation: its recurrent state (fixed size), sampler RNG, recent-token window and the
// token carried over between calls. Generation streams text pieces while the compute runs in
// the model's scheduler; the session itself only samples and decodes. On the Vulkan backend the
// state lives in GPU memory (SequenceState pulls it when read): restoring or rolling back
// overwrites it in place, and disposing the session gives its device slot back.
using System.Diagnostics;
using System.Runtime.CompilerServices;
using Palm.Inference.Backends;
using Palm.Inference.Model;
using Palm.Inference.Sampling;

namespace Palm.Inference;

/// <summary>
/// A conversation with a <see cref="PalmModel"/>: each <see cref="GenerateAsync"/> call continues
/// where the previous one stopped. The state is a fixed-size recurrent state (no KV cache), so it can
/// be saved, restored and forked cheaply.
/// </summary>
/// <remarks>
/// <para><b>Threads.</b> A session runs one call at a time: calling <see cref="GenerateAsync"/>,
/// <see cref="SaveState"/>, <see cref="RestoreState(ReadOnlySpan{byte})"/>, <see cref="Fork"/> or
/// <see cref="Reset"/> while a generation is being enumerated throws <see cref="InvalidOperationException"/>.
/// Different sessions may be used from different threads at the same time.</para>
/// <para><b>What the state holds.</b> Every token fed or generated so far, including those of a stop
/// string that was not returned. The last generated token is fed at the start of the next call (so a
/// session never pays for logits it does not use).</para>
/// </remarks>
public sealed class PalmSession : IDisposable
{
    /// <summary>Prompt tokens fed per backend call: between chunks, cancellation is checked and other sessions step.</summary>
    internal const int PrefillChunk = 64;

    private readonly PalmModel _model;
    private readonly SessionOptions _options;
    private readonly TokenSampler _sampler;
    private readonly SampleRequest _request = new();
    private readonly float[] _logits;
    private SequenceState _state;
    private Rng _rng;
    private RecentTokens _recent;
    private readonly HeldText _text;
    private int _pending = -1;
    private int _busy;
    private int _disposed;

    internal PalmSession(PalmModel model, SessionOptions options)
    {
        _model = model;
        _options = options;
        _sampler = new TokenSampler(model.Config.VocabSize);
        _logits = new float[model.Config.VocabSize];
        _state = model.BackendImpl.CreateState();
        _rng = new Rng(options.Seed ?? (ulong)Random.Shared.NextInt64());
        _recent = new RecentTokens(options.PenaltyWindow);
        _text = new HeldText(model.Tokenizer);
    }

    /// <summary>The model this session runs on.</summary>
    public PalmModel Model => _model;

    /// <summary>Tokens in the conversation so far (fed, plus the last generated one that the next call feeds).</summary>
    public long TokenCount => _state.Position + (_pending >= 0 ? 1 : 0);

    /// <summary>The outcome of the last <see cref="GenerateAsync"/> call that ended; null before the first.</summary>
    public GenerationResult? LastResult { get; private set; }

    /// <summary>
    /// Feeds <paramref name="prompt"/> and streams the generated text. Each piece holds only complete
    /// characters (a UTF-8 character split over tokens comes out whole). Compute runs on the thread pool;
    /// the caller's thread is never blocked.
    /// </summary>
    /// <param name="prompt">Text to feed first; may be empty to continue the conversation.</param>
    /// <param name="options">Sampling and stopping; null for the defaults.</param>
    /// <param name="cancellationToken">Checked before every token and between prompt chunks. Cancelling ends
    /// the stream normally (no exception) with <see cref="StopReason.Cancelled"/>; cancelled during the prompt,
    /// the session is left as it was before the call.</param>
    /// <returns>The text pieces. When the enumeration ends, <see cref="LastResult"/> says why.</returns>
    /// <exception cref="ArgumentOutOfRangeException">An option out of range (thrown here, before enumerating).</exception>
    /// <exception cref="InvalidOperationException">On enumeration: another call is running on this session.</exception>
    /// <exception cref="ObjectDisposedException">On enumeration: the session or its model was disposed.</exception>
    public IAsyncEnumerable<string> GenerateAsync(string prompt, GenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        options ??= new GenerationOptions();
        options.Validate(_model.Config);
        return Run(prompt, options, cancellationToken);
    }

    private async IAsyncEnumerable<string> Run(string prompt, GenerationOptions o, [EnumeratorCancellation] CancellationToken ct)
    {
        Enter();
        var reason = StopReason.Abandoned;
        int promptTokens = 0, generated = 0;
        var clock = Stopwatch.StartNew();
        TimeSpan prefillTime = default;
        (SequenceState State, ulong[] Rng, int[] Recent, int Pending, int[] Held) before;
        try
        {
            // Reads a device-resident state back: throws if the model is gone.
            before = Snapshot();
        }
        catch
        {
            Exit();
            throw;
        }
        bool faulted = true, active = false, withCaller = false;
        var scheduler = _model.Scheduler;
        try
        {
            scheduler.EnterActive();
            active = true;
            await ThreadPoolSwitch.Instance;
            var tok = _model.Tokenizer;
            var promptIds = tok.Encode(prompt);
            int carried = _pending >= 0 ? 1 : 0;
            var ids = new int[carried + promptIds.Length];
            if (carried == 1) ids[0] = _pending;
            promptIds.CopyTo(ids, carried);
            // A fresh session with no prompt starts from end-of-text, the document separator in training.
            if (ids.Length == 0) ids = [tok.EotId];
            promptTokens = ids.Length;
            // Bytes of a character cut by the last call complete only if generation continues directly.
            if (promptIds.Length > 0) _text.Reset();
            if (o.Seed is ulong seed) _rng = new Rng(seed);

            // With nothing to generate, the last prompt token waits (like a generated one) for the next call.
            int feed = o.MaxTokens == 0 ? ids.Length - 1 : ids.Length;
            for (int off = 0; off < feed; off += PrefillChunk)
            {
                if (ct.IsCancellationRequested)
                {
                    Restore(before);
                    reason = StopReason.Cancelled;
                    faulted = false;
                    yield break;
                }
                int n = Math.Min(PrefillChunk, feed - off);
                await scheduler.PrefillAsync(_state, ids.AsMemory(off, n), _logits).ConfigureAwait(false);
            }
            _pending = feed < ids.Length ? ids[^1] : -1;
            _recent.AddRange(ids.AsSpan(carried)); // the carried token is in the window since it was sampled
            prefillTime = clock.Elapsed;

            var settings = new SamplingSettings(o.Temperature, o.TopK, o.TopP, o.MinP,
                o.RepetitionPenalty, o.PresencePenalty, o.FrequencyPenalty, o.LogitBias);
            var stops = new StopStringMatcher(o.StopStrings);
            bool onDevice = _model.BackendImpl.SamplesOnDevice;
            bool hit = false;
            while (true)
            {
                if (generated == o.MaxTokens) { reason = StopReason.MaxTokens; break; }
                if (ct.IsCancellationRequested) { reason = StopReason.Cancelled; break; }
                // This token's uniform is drawn now, before the logits exist: the backend may sample
                // on the GPU with it (only the id comes back), else the host samples with it below.
                _request.Prepare(settings, _recent, _rng, pairs: onDevice);
                int next = -1;
                if (_pending >= 0)
                {
                    next = await scheduler.StepAsync(_state, _pending, _logits, _request).ConfigureAwait(false);
                    _pending = -1;
                }
                if (next < 0) next = _sampler.Sample(_logits, settings, _recent, _request.Uniform);
                generated++;
                _recent.Add(next);
                _pending = next;
                if (next == tok.EotId) { reason = StopReason.EndOfText; break; }
                (string emit, hit) = stops.Push(_text.Append(next));
                if (emit.Length > 0)
                {
                    faulted = false;
                    scheduler.Yielding();
                    withCaller = true;
                    yield return emit;
                    withCaller = false;
                    scheduler.Resumed();
                    faulted = true;
                }
                if (hit) { reason = StopReason.StopString; break; }
            }
            scheduler.ExitActive();
            active = false;
            if (hit) _text.Reset(); // bytes after the stop string are cut with it
            else
            {
                // Text held back for a stop string that never came; at end of text, also the bytes of a
                // character that can no longer complete (otherwise they wait for the next call).
                (string tail, hit) = stops.Push(reason == StopReason.EndOfText ? _text.Flush() : "");
                if (hit) { reason = StopReason.StopString; _text.Reset(); }
                else tail += stops.Flush();
                if (tail.Length > 0)
                {
                    faulted = false;
                    yield return tail;
                }
            }
            faulted = false;
        }
        finally
        {
            if (withCaller) scheduler.Resumed();
            if (active) scheduler.ExitActive();
            if (faulted) Restore(before);
            else LastResult = new GenerationResult(reason, promptTokens, generated, prefillTime, clock.Elapsed - prefillTime);
            Exit();
        }
    }

    /// <summary>
    /// Serializes the session: recurrent state, position, sampler RNG, recent-token window, the carried
    /// token and the bytes of a character cut by the end of the last call. The bytes are versioned, checksummed and bound to this model (<see cref="PalmModel.Id"/>); their
    /// length depends only on the model and <see cref="SessionOptions.PenaltyWindow"/>, never on the conversation.
    /// </summary>
    /// <exception cref="InvalidOperationException">A generation is running on this session.</exception>
    public byte[] SaveState()
    {
        Enter();
        try
        {
            return SessionStateFormat.Write(_model, _state, _rng, _pending, _recent, _text.Ids);
        }
        finally { Exit(); }
    }

    /// <summary>Replaces this session's state with one from <see cref="SaveState"/> (of this or another session of the same model).</summary>
    /// <exception cref="SessionStateException">The bytes are corrupt, of an unsupported version, or from another model.</exception>
    /// <exception cref="InvalidOperationException">A generation is running on this session.</exception>
    public void RestoreState(ReadOnlySpan<byte> saved)
    {
        Enter();
        try
        {
            var s = SessionStateFormat.Read(_model, saved);
            // In place: a device-resident state keeps its slot and is uploaded at its next use.
            _state.Assign(s.State);
            _rng = s.Rng;
            _pending = s.Pending;
            _recent = s.Recent;
            _text.Load(s.HeldIds);
        }
        finally { Exit(); }
    }

    /// <summary>Replaces this session's state with one from <see cref="SaveState"/>.</summary>
    /// <inheritdoc cref="RestoreState(ReadOnlySpan{byte})"/>
    public void RestoreState(byte[] saved)
    {
        ArgumentNullException.ThrowIfNull(saved);
        RestoreState(saved.AsSpan());
    }

    /// <summary>A new, independent session that continues from this one's current state (same RNG state too,
    /// so with the same options both branches generate the same text until they are given different input).</summary>
    /// <exception cref="InvalidOperationException">A generation is running on this session.</exception>
    public PalmSession Fork()
    {
        Enter();
        try
        {
            var f = new PalmSession(_model, _options);
            f._state.Assign(_state);
            f._rng = new Rng(_rng.GetState());
            f._recent.CopyFrom(_recent);
            f._pending = _pending;
            f._text.Load(_text.Ids);
            return f;
        }
        finally { Exit(); }
    }

    /// <summary>Forgets the conversation: zero state at position 0 (the RNG continues).</summary>
    /// <exception cref="InvalidOperationException">A generation is running on this session.</exception>
    public void Reset()
    {
        Enter();
        try
        {
            var old = _state;
            _state = _model.BackendImpl.CreateState();
            old.Release();
            _recent.Clear();
            _pending = -1;
            _text.Reset();
        }
        finally { Exit(); }
    }

    /// <summary>Ends the session and frees what its state holds on the backend (GPU memory on Vulkan); disposing
    /// marks it unusable. During a running call the state is freed when the call ends.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        // Whoever takes _busy last frees the state: this call, or the running call's Exit.
        if (Interlocked.CompareExchange(ref _busy, 1, 0) == 0) _state.Release();
    }

    private void Enter()
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        if (Interlocked.CompareExchange(ref _busy, 1, 0) != 0)
            throw new InvalidOperationException("this PalmSession is already running a call: a session runs one call at a time (Fork it for a parallel branch)");
    }

    private void Exit()
    {
        // A full fence (not a release-only write): Dispose may have run while the call was busy.
        Interlocked.Exchange(ref _busy, 0);
        if (Volatile.Read(ref _disposed) != 0 && Interlocked.CompareExchange(ref _busy, 1, 0) == 0) _state.Release();
    }

    private (SequenceState State, ulong[] Rng, int[] Recent, int Pending, int[] Held) Snapshot() =>
        (_state.Clone(), _rng.GetState(), _recent.ToArray(), _pending, [.. _text.Ids]);

    private void Restore((SequenceState State, ulong[] Rng, int[] Recent, int Pending, int[] Held) s)
    {
        _text.Load(s.Held);
        // In place: no device call (the snapshot is on the host), the slot is kept.
        _state.Assign(s.State);
        _rng = new Rng(s.Rng);
        _recent.Clear();
        _recent.AddRange(s.Recent);
        _pending = s.Pending;
    }

    internal SequenceState StateForTests => _state;

    internal ulong[] RngStateForTests => _rng.GetState();
}

/// <summary>An awaitable that continues on the thread pool (unless already there without a context).</summary>
internal readonly struct ThreadPoolSwitch : ICriticalNotifyCompletion
{
    public static ThreadPoolSwitch Instance => default;
    public ThreadPoolSwitch GetAwaiter() => this;
    public bool IsCompleted => Thread.CurrentThread.IsThreadPoolThread && SynchronizationContext.Current is null && TaskScheduler.Current == TaskScheduler.Default;
    public void GetResult() { }
    public void OnCompleted(Action continuation) => ThreadPool.QueueUserWorkItem(static c => c(), continuation, preferLocal: false);
    public void UnsafeOnCompleted(Action continuation) => ThreadPool.UnsafeQueueUserWorkItem(static c => c(), continuation, preferLocal: false);
}
