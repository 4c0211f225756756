// Concurrent sessions share batched backend steps and still produce exactly what each produces
// alone (CPU backend: every sequence runs through its own state, so the match is bitwise).
using Palm.Inference;

namespace Palm.Tests.Api;

public sealed class BatchingTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private static readonly TinyModel M = TinyModel.Shared;

    [Fact]
    public async Task Thirty_two_concurrent_sessions_match_their_solo_runs()
    {
        const int N = 32;
        var seed = TestSeed.Next();
        var rng = new Palm.Inference.Model.Rng(seed);
        var words = TinyModel.Corpus.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        // Prompts of different lengths: the sessions sit at different positions in every batch.
        var prompts = Enumerable.Range(0, N).Select(_ => string.Join(' ', Enumerable.Range(0, 1 + rng.NextInt(12)).Select(_ => words[rng.NextInt(words.Length)]))).ToArray();
        var options = Enumerable.Range(0, N).Select(i => new GenerationOptions
        {
            Temperature = i % 4 == 0 ? 0 : 0.9f, TopK = i % 3 == 0 ? 0 : 20, MinP = i % 5 == 0 ? 0.05f : 0,
            RepetitionPenalty = i % 2 == 0 ? 1.2f : 1, MaxTokens = 12 + rng.NextInt(16), Seed = seed + (ulong)i,
        }).ToArray();

        using var model = M.Load();
        var solo = new string[N];
        for (int i = 0; i < N; i++)
        {
            using var s = model.CreateSession();
            solo[i] = await SessionTests.Collect(s, prompts[i], options[i]);
        }

        var sessions = Enumerable.Range(0, N).Select(_ => model.CreateSession()).ToArray();
        var together = await Task.WhenAll(Enumerable.Range(0, N).Select(i => Task.Run(() => SessionTests.Collect(sessions[i], prompts[i], options[i]))));
        foreach (var s in sessions) s.Dispose();

        for (int i = 0; i < N; i++)
            Assert.True(solo[i] == together[i], $"session {i} differs when batched (seed {seed}, {M.Describe}):\n  solo:    {solo[i]}\n  batched: {together[i]}");
        output.WriteLine($"largest batch {model.Scheduler.MaxBatch} of {N}; {model.Scheduler.StepCalls} batched steps");
        Assert.True(model.Scheduler.MaxBatch > N / 2, $"largest batched step held {model.Scheduler.MaxBatch} sessions of {N}");
    }
}
