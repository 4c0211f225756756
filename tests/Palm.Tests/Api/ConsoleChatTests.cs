// ConsoleChat's core on the tiny temp model: one-shot output equals the API's own greedy text,
// interactive mode continues and resets the conversation, bad input gives its exit codes.
using ConsoleChat;
using Palm.Inference;

namespace Palm.Tests.Api;

public sealed class ConsoleChatTests
{
    private static readonly TinyModel M = TinyModel.Shared;

    private static async Task<(int Code, string Out, string Err)> Run(string input, params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = await ChatApp.RunAsync(args, new StringReader(input), o, e, new GenerationCancel());
        return (code, o.ToString(), e.ToString());
    }

    [Fact]
    public async Task One_shot_prints_the_prompt_and_its_greedy_completion_with_tokens_per_second()
    {
        var (code, stdout, stderr) = await Run("", "--model", M.Path, "--backend", "cpu", "--prompt", "In the beginning",
            "--max-tokens", "12", "--temperature", "0", "--seed", "4");
        Assert.True(code == 0, stderr);
        using var model = M.Load();
        using var s = model.CreateSession();
        var expected = await SessionTests.Collect(s, "In the beginning", new GenerationOptions { MaxTokens = 12, Temperature = 0 });
        Assert.Equal("In the beginning" + expected + Environment.NewLine, stdout);
        Assert.Matches(@"tokens/s", stderr);
        Assert.Contains("cpu", stderr);
    }

    [Fact]
    public async Task Interactive_mode_continues_resets_and_quits()
    {
        var (code, stdout, stderr) = await Run("The model\n\n/reset\nThe model\n/quit\nnever read\n",
            "--model", M.Path, "--backend", "cpu", "--max-tokens", "5", "--temperature", "0");
        Assert.True(code == 0, stderr);
        // Three generations (line, empty line, the line again after /reset; /reset and /quit print
        // only their prompt): the first and the third start from a fresh state, so both print the
        // API's greedy text. (Compared whole, not split on "> ": the random model's text may hold it.)
        using var model = M.Load();
        using var s = model.CreateSession();
        var fresh = "> The model" + await SessionTests.Collect(s, "The model", new GenerationOptions { MaxTokens = 5, Temperature = 0 }) + Environment.NewLine;
        Assert.StartsWith(fresh, stdout);
        Assert.EndsWith("> " + fresh + "> ", stdout);
        var continued = stdout[fresh.Length..^(fresh.Length + 4)];
        Assert.True(continued.StartsWith("> ", StringComparison.Ordinal) && continued.EndsWith(Environment.NewLine, StringComparison.Ordinal), $"continuation turn: '{continued}'");
        Assert.Contains("[conversation reset]", stderr);
        Assert.Equal(3, stderr.Split("tokens/s").Length - 1);
    }

    [Fact]
    public async Task Bad_arguments_and_missing_models_fail_clearly()
    {
        Assert.Equal(2, (await Run("", "--temperature")).Code);
        Assert.Equal(2, (await Run("", "--bogus")).Code);
        Assert.Equal(2, (await Run("", "--model", M.Path, "--backend", "cpu", "--top-p", "0", "--prompt", "x")).Code);
        var missing = await Run("", "--model", "/nonexistent/model.palm", "--prompt", "x");
        Assert.Equal(1, missing.Code);
        Assert.Contains("not found", missing.Err);
    }
}
