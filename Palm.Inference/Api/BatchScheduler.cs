// Owns every call into a model's backend. Sessions submit work (a prefill chunk, or one token
// to feed); one loop runs it (or, for a lone decoding session already on a pool thread, that
// thread runs its step inline while the loop waits), putting every pending step into ONE batched backend step
// (B = sessions waiting), so concurrent sessions share the weight reads. The loop has its own
// thread because it waits briefly for sessions to submit: a pool thread blocked on that wait
// could starve the very continuations it waits for. Sessions sample on the thread pool; a
// session hands each step what it would sample with (a SampleRequest), and the backend may
// pick the token on the device (Vulkan: the argmax, or the whole chain) so that its logits
// never come back.
using System.Diagnostics;
using Palm.Inference.Backends;
using Palm.Inference.Sampling;

namespace Palm.Inference;

internal sealed class BatchScheduler : IDisposable
{
    private readonly IInferenceBackend _backend;
    private readonly object _gate = new();
    private readonly List<Work> _steps = [];
    private readonly Queue<Work> _prefills = new();
    private Thread? _thread;
    private bool _disposed;
    private bool _busy;          // a backend call is running (the loop's or an inline step)
    private int _active;
    private int _withCaller;
    private float[] _logits = [];
    private int[] _tokens = [];
    private int[] _ids = [];
    private SampleRequest?[] _requests = [];

    // A step waits for every decoding session that is in our hands (sampling, about to submit),
    // but not for those whose caller holds a piece: a slow consumer must not stall the others.
    // The window only bounds the wait when the thread pool is slow to run the samplers.
    internal static readonly TimeSpan BatchWindow = TimeSpan.FromMilliseconds(20);

    public BatchScheduler(IInferenceBackend backend) => _backend = backend;

    // Set (for the current thread) by a caller that blocks its own thread until the generation
    // ends and consumes its pieces there: the C ABI's palm_session_generate. A lone session's steps
    // may then run inline on that thread, as on a pool thread. Otherwise each token crossed from
    // that thread to the scheduler's, then to the pool to sample, then back (measured: 104-132 us a
    // token for `small`, against 71-76 when the consumer runs on the pool).
    [ThreadStatic] private static bool t_callerBlocks;

    /// <summary>Whether the current thread blocks on its generation and may run its steps (see t_callerBlocks).</summary>
    internal static bool CallerBlocks { get => t_callerBlocks; set => t_callerBlocks = value; }

    /// <summary>Largest batch stepped so far (for tests and diagnostics).</summary>
    public int MaxBatch { get; private set; }

    /// <summary>Batched steps run so far.</summary>
    public long StepCalls { get; private set; }

    /// <summary>Prefill calls (one chunk of one session each) run so far.</summary>
    public long PrefillCalls { get; private set; }

    private sealed class Work(SequenceState state, ReadOnlyMemory<int> tokens, float[] logits, SampleRequest? request = null)
    {
        public readonly SequenceState State = state;
        public readonly ReadOnlyMemory<int> Tokens = tokens;
        public readonly float[] Logits = logits;
        public readonly SampleRequest? Request = request;
        // The token when the backend picked it, else -1 (the logits were written).
        public readonly TaskCompletionSource<int> Done = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    /// <summary>A generation starts or ends: a step waits only for active sessions (minus those with their caller).</summary>
    public void EnterActive() { lock (_gate) _active++; }

    public void ExitActive()
    {
        lock (_gate)
        {
            _active--;
            WakeBatchWindow();
        }
    }

    /// <summary>A decoding session hands a piece to its caller (<see cref="Resumed"/> when the caller asks for more).</summary>
    public void Yielding()
    {
        lock (_gate)
        {
            _withCaller++;
            WakeBatchWindow();
        }
    }

    public void Resumed() { lock (_gate) _withCaller--; }

    // Fewer sessions to wait for can end the loop's batching window, which only runs while steps
    // are queued; with none queued the loop sleeps until work arrives, and waking it (a futex
    // call and two context switches) for nothing, once or twice a token, measured ~0.1 ms a token
    // for a lone session on the development VM. Called holding _gate.
    private void WakeBatchWindow()
    {
        if (_steps.Count > 0) Monitor.PulseAll(_gate);
    }

    /// <summary>Feeds <paramref name="tokens"/> (T) to one sequence; its last logits (V) land in <paramref name="logits"/>.</summary>
    public Task PrefillAsync(SequenceState state, ReadOnlyMemory<int> tokens, float[] logits) => Submit(new Work(state, tokens, logits), prefill: true);

    /// <summary>
    /// Feeds one token to one sequence as part of the next batched step. Returns -1 with its logits (V)
    /// in <paramref name="logits"/>, or, when a <paramref name="request"/> is given and the backend picked
    /// the token itself, the token that sampling with it gives (then <paramref name="logits"/> is left as it was).
    /// </summary>
    public Task<int> StepAsync(SequenceState state, int token, float[] logits, SampleRequest? request = null)
    {
        var w = new Work(state, new[] { token }, logits, request);
        // A lone decoding session (no other active session could join this step, nothing queued,
        // the backend idle) steps on its own pool thread: two thread hand-offs a token fewer (the
        // scheduler's wake-up and the continuation's), which measured ~0.2 ms a token. Never on a
        // thread with a synchronization context or outside the pool (a game's thread never
        // computes), unless that thread blocks on the generation anyway (CallerBlocks).
        bool inline = false;
        if ((Thread.CurrentThread.IsThreadPoolThread && SynchronizationContext.Current is null) || t_callerBlocks)
        {
            lock (_gate)
            {
                ObjectDisposedException.ThrowIf(_disposed, typeof(PalmModel));
                if (!_busy && _steps.Count == 0 && _prefills.Count == 0 && _active - _withCaller <= 1)
                    inline = _busy = true;
            }
        }
        if (!inline) return Submit(w, prefill: false);
        try
        {
            RunSteps([w]);
        }
        finally
        {
            lock (_gate)
            {
                _busy = false;
                // Work that arrived meanwhile waits for the loop; Dispose waits for the step to end.
                if (_steps.Count > 0 || _prefills.Count > 0 || _disposed) Monitor.PulseAll(_gate);
            }
        }
        // Completed already: the caller's await continues here, on this thread.
        return w.Done.Task;
    }

    private Task<int> Submit(Work w, bool prefill)
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, typeof(PalmModel));
            if (prefill) _prefills.Enqueue(w);
            else _steps.Add(w);
            Monitor.PulseAll(_gate);
            if (_thread is null)
            {
                _thread = new Thread(Loop) { IsBackground = true, Name = "Palm scheduler" };
                _thread.Start();
            }
        }
        return w.Done.Task;
    }

    private void Loop()
    {
        while (true)
        {
            Work[] steps, prefills;
            lock (_gate)
            {
                while ((_busy || (_steps.Count == 0 && _prefills.Count == 0)) && !_disposed) Monitor.Wait(_gate);
                if (_disposed) return;
                var until = Stopwatch.GetTimestamp() + (long)(BatchWindow.TotalSeconds * Stopwatch.Frequency);
                while (_steps.Count > 0 && _steps.Count < _active - _withCaller && _prefills.Count == 0 && !_disposed)
                {
                    long left = until - Stopwatch.GetTimestamp();
                    if (left <= 0) break;
                    Monitor.Wait(_gate, TimeSpan.FromSeconds((double)left / Stopwatch.Frequency));
                }
                steps = [.. _steps];
                _steps.Clear();
                prefills = [.. _prefills];
                _prefills.Clear();
                _busy = true;
            }
            // Prompts first (one chunk each), so that sessions reach decoding together and batch.
            foreach (var p in prefills) RunPrefill(p);
            if (steps.Length > 0) RunSteps(steps);
            lock (_gate) _busy = false;
        }
    }

    private void RunSteps(Work[] steps)
    {
        int B = steps.Length, V = _backend.Config.VocabSize;
        try
        {
            if (_logits.Length < B * V) _logits = new float[B * V];
            if (_tokens.Length < B)
            {
                _tokens = new int[B];
                _ids = new int[B];
                _requests = new SampleRequest?[B];
            }
            var states = new SequenceState[B];
            for (int i = 0; i < B; i++)
            {
                states[i] = steps[i].State;
                _tokens[i] = steps[i].Tokens.Span[0];
                _requests[i] = steps[i].Request;
            }
            _backend.Step(_tokens.AsSpan(0, B), states, _requests.AsSpan(0, B), _logits.AsSpan(0, B * V), _ids.AsSpan(0, B));
            _requests.AsSpan(0, B).Clear();   // no reference kept to a finished session's request
            MaxBatch = Math.Max(MaxBatch, B);
            StepCalls++;
            for (int i = 0; i < B; i++)
                if (_ids[i] < 0) _logits.AsSpan(i * V, V).CopyTo(steps[i].Logits);
        }
        catch (Exception e)
        {
            foreach (var s in steps) s.Done.TrySetException(e);
            return;
        }
        for (int i = 0; i < B; i++) steps[i].Done.TrySetResult(_ids[i]);
    }

    private void RunPrefill(Work w)
    {
        try
        {
            _backend.Prefill(w.Tokens.Span, w.State, w.Logits);
            PrefillCalls++;
        }
        catch (Exception e)
        {
            w.Done.TrySetException(e);
            return;
        }
        w.Done.TrySetResult(-1);
    }

    /// <summary>Fails queued work, waits for the running call to end, then frees the backend.</summary>
    public void Dispose()
    {
        Thread? loop;
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
            var err = new ObjectDisposedException(nameof(PalmModel));
            foreach (var s in _steps) s.Done.TrySetException(err);
            foreach (var p in _prefills) p.Done.TrySetException(err);
            _steps.Clear();
            _prefills.Clear();
            Monitor.PulseAll(_gate);
            loop = _thread;
        }
        if (loop is not null && loop != Thread.CurrentThread) loop.Join();
        // An inline step may still be running on a session's thread: let it finish first.
        lock (_gate)
            while (_busy) Monitor.Wait(_gate);
        _backend.Dispose();
    }
}
