// Owns every call into a model's backend. Sessions submit work (a prefill chunk, or one token
// to feed); one loop on the thread pool runs it, putting every pending step into ONE batched
// backend step (B = sessions waiting), so concurrent sessions share the weight reads. The loop
// exists only while work is queued; the backend is called from one thread at a time.
using System.Diagnostics;
using Palm.Inference.Backends;

namespace Palm.Inference;

internal sealed class BatchScheduler : IDisposable
{
    private readonly IInferenceBackend _backend;
    private readonly object _gate = new();
    private readonly List<Work> _steps = [];
    private readonly Queue<Work> _prefills = new();
    private Task? _loop;
    private bool _disposed;
    private int _decoding;
    private float[] _logits = [];
    private int[] _tokens = [];

    // When some decoding sessions have not yet submitted their next token (their caller is still
    // handling the last piece), wait this long for them before stepping the ones that have.
    internal static readonly TimeSpan BatchWindow = TimeSpan.FromMilliseconds(2);

    public BatchScheduler(IInferenceBackend backend) => _backend = backend;

    /// <summary>Largest batch stepped so far (for tests and diagnostics).</summary>
    public int MaxBatch { get; private set; }

    /// <summary>Batched steps run so far.</summary>
    public long StepCalls { get; private set; }

    private sealed class Work(SequenceState state, ReadOnlyMemory<int> tokens, float[] logits)
    {
        public readonly SequenceState State = state;
        public readonly ReadOnlyMemory<int> Tokens = tokens;
        public readonly float[] Logits = logits;
        public readonly TaskCompletionSource Done = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    /// <summary>A session enters or leaves its decoding loop: the batch window waits only for decoding sessions.</summary>
    public void EnterDecode() { lock (_gate) _decoding++; }

    public void ExitDecode()
    {
        lock (_gate)
        {
            _decoding--;
            Monitor.PulseAll(_gate);
        }
    }

    /// <summary>Feeds <paramref name="tokens"/> (T) to one sequence; its last logits (V) land in <paramref name="logits"/>.</summary>
    public Task PrefillAsync(SequenceState state, ReadOnlyMemory<int> tokens, float[] logits) => Submit(new Work(state, tokens, logits), prefill: true);

    /// <summary>Feeds one token to one sequence as part of the next batched step; its logits (V) land in <paramref name="logits"/>.</summary>
    public Task StepAsync(SequenceState state, int token, float[] logits) => Submit(new Work(state, new[] { token }, logits), prefill: false);

    private Task Submit(Work w, bool prefill)
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, typeof(PalmModel));
            if (prefill) _prefills.Enqueue(w);
            else _steps.Add(w);
            Monitor.PulseAll(_gate);
            if (_loop is null || _loop.IsCompleted) _loop = Task.Run(Loop);
        }
        return w.Done.Task;
    }

    private void Loop()
    {
        while (true)
        {
            Work[] steps;
            Work? prefill;
            lock (_gate)
            {
                var until = Stopwatch.GetTimestamp() + (long)(BatchWindow.TotalSeconds * Stopwatch.Frequency);
                while (_steps.Count > 0 && _steps.Count < _decoding && _prefills.Count == 0 && !_disposed)
                {
                    long left = until - Stopwatch.GetTimestamp();
                    if (left <= 0) break;
                    Monitor.Wait(_gate, TimeSpan.FromSeconds((double)left / Stopwatch.Frequency));
                }
                if (_steps.Count == 0 && _prefills.Count == 0)
                {
                    _loop = null;
                    return;
                }
                steps = [.. _steps];
                _steps.Clear();
                prefill = _prefills.Count > 0 ? _prefills.Dequeue() : null;
            }
            if (steps.Length > 0) RunSteps(steps);
            if (prefill is not null) RunPrefill(prefill);
        }
    }

    private void RunSteps(Work[] steps)
    {
        int B = steps.Length, V = _backend.Config.VocabSize;
        try
        {
            if (_logits.Length < B * V) _logits = new float[B * V];
            if (_tokens.Length < B) _tokens = new int[B];
            var states = new SequenceState[B];
            for (int i = 0; i < B; i++) { states[i] = steps[i].State; _tokens[i] = steps[i].Tokens.Span[0]; }
            _backend.Step(_tokens.AsSpan(0, B), states, _logits.AsSpan(0, B * V));
            MaxBatch = Math.Max(MaxBatch, B);
            StepCalls++;
            for (int i = 0; i < B; i++) _logits.AsSpan(i * V, V).CopyTo(steps[i].Logits);
        }
        catch (Exception e)
        {
            foreach (var s in steps) s.Done.TrySetException(e);
            return;
        }
        foreach (var s in steps) s.Done.TrySetResult();
    }

    private void RunPrefill(Work w)
    {
        try
        {
            _backend.Prefill(w.Tokens.Span, w.State, w.Logits);
        }
        catch (Exception e)
        {
            w.Done.TrySetException(e);
            return;
        }
        w.Done.TrySetResult();
    }

    /// <summary>Fails queued work, waits for the running call to end, then frees the backend.</summary>
    public void Dispose()
    {
        Task? loop;
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
            loop = _loop;
        }
        loop?.Wait();
        _backend.Dispose();
    }
}
