// Where a decoding step runs: a lone session consumed on the thread pool steps inline on its own
// pool thread (no hand-off to the scheduler thread and back), a consumer thread outside the pool
// (a game's main loop) never runs a backend call, inline or not, unless it blocks on the
// generation anyway and says so (the C ABI's palm_session_generate).
using System.Collections.Concurrent;
using Palm.Inference;
using Palm.Inference.Backends;
using Palm.Inference.Model;
using Palm.Inference.Sampling;

namespace Palm.Tests.Api;

public sealed class SchedulerThreadTests
{
    private static readonly TinyModel M = TinyModel.Shared;

    /// <summary>Forwards to the CPU backend and records the thread of every call.</summary>
    private sealed class RecordingBackend(IInferenceBackend inner) : IInferenceBackend
    {
        public readonly ConcurrentQueue<(int Id, bool Pool, string? Name)> Calls = new();
        private void Note() => Calls.Enqueue((Environment.CurrentManagedThreadId, Thread.CurrentThread.IsThreadPoolThread, Thread.CurrentThread.Name));
        public BackendKind Kind => inner.Kind;
        public string Description => inner.Description;
        public PalmConfig Config => inner.Config;
        public long WeightBytes => inner.WeightBytes;
        public SequenceState CreateState() => inner.CreateState();
        public void Prefill(ReadOnlySpan<int> tokens, SequenceState state, Span<float> lastLogits) { Note(); inner.Prefill(tokens, state, lastLogits); }
        public void Step(ReadOnlySpan<int> tokens, IReadOnlyList<SequenceState> states, ReadOnlySpan<SampleRequest?> requests, Span<float> logits, Span<int> ids)
        {
            Note();
            inner.Step(tokens, states, requests, logits, ids);
        }
        public void Dispose() => inner.Dispose();
    }

    private static (PalmModel Model, RecordingBackend Backend) Load()
    {
        var backend = new RecordingBackend(new CpuBackend(M.Parameters));
        return (PalmModel.Create(M.Parameters, M.Tokenizer, backend), backend);
    }

    private static GenerationOptions Options => new() { Temperature = 0, MaxTokens = 24, LogitBias = M.AsciiOnly };

    [Fact]
    public async Task A_lone_session_on_the_pool_steps_inline()
    {
        var (model, backend) = Load();
        using var _ = model;
        using var s = model.CreateSession();
        await Task.Run(async () => { await foreach (var piece in s.GenerateAsync("In the beginning", Options)) { } });
        var steps = backend.Calls.Skip(1).ToArray();   // the first call is the prompt's prefill
        Assert.NotEmpty(steps);
        // Most steps run on pool threads (the session's own), not on the scheduler thread.
        int inline = steps.Count(c => c.Pool && c.Name != "Palm scheduler");
        Assert.True(inline >= steps.Length / 2, $"only {inline} of {steps.Length} steps ran inline");
    }

    [Fact]
    public void A_caller_that_blocks_on_its_generation_runs_the_steps_itself_with_the_same_text()
    {
        var (model, backend) = Load();
        using var _ = model;
        (string Text, int Steps, int OnCaller) Generate(bool callerBlocks)
        {
            using var s = model.CreateSession();
            int consumer = -1, before = backend.Calls.Count;
            var text = new System.Text.StringBuilder();
            var t = new Thread(() =>
            {
                consumer = Environment.CurrentManagedThreadId;
                BatchScheduler.CallerBlocks = callerBlocks;
                var e = s.GenerateAsync("In the beginning", Options).GetAsyncEnumerator();
                while (e.MoveNextAsync().AsTask().GetAwaiter().GetResult()) text.Append(e.Current);
                e.DisposeAsync().AsTask().GetAwaiter().GetResult();
            });
            t.Start();
            t.Join();
            var calls = backend.Calls.Skip(before + 1).ToArray();   // after the prompt's prefill
            return (text.ToString(), calls.Length, calls.Count(c => c.Id == consumer));
        }
        var plain = Generate(callerBlocks: false);
        var blocking = Generate(callerBlocks: true);
        Assert.Equal(plain.Text, blocking.Text);
        Assert.Equal(0, plain.OnCaller);
        // All steps but the first (it follows the prefill on the pool) run on the caller's thread.
        Assert.True(blocking.OnCaller >= blocking.Steps - 1, $"{blocking.OnCaller} of {blocking.Steps} steps ran on the blocked caller's thread");
        Assert.True(blocking.Steps >= 8, $"only {blocking.Steps} steps");
    }

    [Fact]
    public void A_consumer_outside_the_pool_never_runs_a_backend_call()
    {
        var (model, backend) = Load();
        using var _ = model;
        using var s = model.CreateSession();
        int consumer = -1;
        var pieces = new List<string>();
        var t = new Thread(() =>
        {
            consumer = Environment.CurrentManagedThreadId;
            var e = s.GenerateAsync("In the beginning", Options).GetAsyncEnumerator();
            while (e.MoveNextAsync().AsTask().GetAwaiter().GetResult()) pieces.Add(e.Current);
            e.DisposeAsync().AsTask().GetAwaiter().GetResult();
        });
        t.Start();
        t.Join();
        Assert.NotEmpty(pieces);
        Assert.NotEmpty(backend.Calls);
        Assert.DoesNotContain(backend.Calls, c => c.Id == consumer);
    }
}
