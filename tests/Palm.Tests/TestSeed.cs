// Fresh seeds per run, or a fixed one from PALM_TEST_SEED to replay a failure.
namespace Palm.Tests;

public static class TestSeed
{
    public static ulong Next() =>
        ulong.TryParse(Environment.GetEnvironmentVariable("PALM_TEST_SEED"), out var s) ? s : (ulong)Random.Shared.NextInt64();
}
