// Config layering (defaults < file < --set), unknown keys and invalid values, each error naming the key.
using Palm.Trainer.Commands;
using Palm.Trainer.Training;

namespace Palm.Tests.Trainer;

public class TrainConfigTests
{
    private static string WriteConfig(TempDir dir, string json)
    {
        File.WriteAllText(dir["cfg.json"], json);
        return dir["cfg.json"];
    }

    [Fact]
    public void Defaults_WithoutFileOrOverrides()
    {
        var c = ConfigLoader.Load(null, []);
        Assert.Equal(new TrainConfig(), c);
        Assert.Equal(300, c.Steps);
        Assert.Equal("cpu", c.Backend);
    }

    [Fact]
    public void Overrides_BeatFile_FileBeatsDefaults_LastSetWins()
    {
        using var dir = new TempDir();
        var file = WriteConfig(dir, """
            { // comments are allowed
              "steps": 10, "batch": 3, "model": { "preset": "small", "n_embd": 128 } }
            """);
        var c = ConfigLoader.Load(file, ["steps=20", "model.n_layer=3", "seed=5", "seed=6", "sample_prompt=In the beginning", "muon_lr=1e-3"]);
        Assert.Equal(20, c.Steps);                 // --set over file
        Assert.Equal(3, c.Batch);                  // file over default
        Assert.Equal(1, c.GradAccum);              // default kept
        Assert.Equal(6UL, c.Seed);                 // last --set wins
        Assert.Equal("In the beginning", c.SamplePrompt);
        Assert.Equal(1e-3, c.MuonLr);
        var model = c.Model.Resolve(dataVocab: 1000);
        Assert.Equal(128, model.NEmbd);            // file over preset
        Assert.Equal(3, model.NLayer);             // --set over preset
        Assert.Equal(8, model.NHead);              // preset small
        Assert.Equal(1000, model.VocabSize);       // from the data when not set
    }

    [Theory]
    [InlineData("""{ "stepz": 3 }""", "'stepz'")]
    [InlineData("""{ "model": { "n_embed": 3 } }""", "'model.n_embed'")]
    [InlineData("""{ "steps": 3, "Steps": 4 }""", "'Steps'")]
    public void UnknownKeyInFile_IsAnErrorNamingKeyAndFile(string json, string key)
    {
        using var dir = new TempDir();
        var file = WriteConfig(dir, json);
        var e = Assert.Throws<UserError>(() => ConfigLoader.Load(file, []));
        Assert.Contains(key, e.Message);
        Assert.Contains("cfg.json", e.Message);
    }

    [Theory]
    [InlineData("stepz=3", "'stepz'")]
    [InlineData("model.foo=1", "'model.foo'")]
    [InlineData("steps.x=1", "'steps' is a value")]
    [InlineData("noequals", "key=value")]
    public void UnknownKeyInSet_IsAnError(string set, string expected)
    {
        var e = Assert.Throws<UserError>(() => ConfigLoader.Load(null, [set]));
        Assert.Contains(expected, e.Message);
    }

    [Theory]
    [InlineData("steps=0", "config.steps")]
    [InlineData("steps=abc", "'steps'")]
    [InlineData("steps=1.5", "'steps'")]
    [InlineData("batch=-1", "config.batch")]
    [InlineData("grad_accum=0", "config.grad_accum")]
    [InlineData("cooldown_frac=2", "config.cooldown_frac")]
    [InlineData("adam_beta2=1", "config.adam_beta2")]
    [InlineData("backend=gpu", "config.backend")]
    [InlineData("seed=-1", "'seed'")]
    [InlineData("model=3", "'model'")]
    public void InvalidValues_AreErrorsNamingTheKey(string set, string expected)
    {
        var e = Assert.Throws<UserError>(() => ConfigLoader.Load(null, [set]));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void MuonFp16_IsOffByDefault_SetFromFileOrSet_AndVulkanOnly()
    {
        Assert.False(new TrainConfig().MuonFp16);
        using var dir = new TempDir();
        Assert.True(ConfigLoader.Load(WriteConfig(dir, """{ "backend": "vulkan", "muon_fp16": true }"""), []).MuonFp16);
        var set = ConfigLoader.Load(null, ["backend=vulkan", "muon_fp16=true"]);
        Assert.True(set.MuonFp16);
        Assert.Contains("\"muon_fp16\": true", ConfigLoader.ToJson(set));   // printed and saved with the run
        // The cpu backend is the float32 reference: asking it for fp16 is an error, not ignored.
        var e = Assert.Throws<UserError>(() => ConfigLoader.Load(null, ["muon_fp16=true"]));
        Assert.Contains("config.muon_fp16", e.Message);
        Assert.Contains("backend=vulkan", e.Message);
        Assert.Contains("'muon_fp16'", Assert.Throws<UserError>(() => ConfigLoader.Load(null, ["backend=vulkan", "muon_fp16=1"])).Message);
    }

    [Theory]
    [InlineData("huge", null, "config.model.preset")]
    [InlineData("tiny", "model.n_head=3", "config.model.d_qkv")]
    [InlineData("tiny", "model.share=sideways", "config.model.share")]
    [InlineData("tiny", "model.vocab_size=100", "config.model.vocab_size")]
    public void InvalidModel_IsAnErrorNamingTheField(string preset, string? set, string expected)
    {
        var c = ConfigLoader.Load(null, set is null ? [$"model.preset={preset}"] : [$"model.preset={preset}", set]);
        var e = Assert.Throws<UserError>(() => c.Model.Resolve(dataVocab: 300));
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain("(Parameter", e.Message);
    }

    [Fact]
    public void ResolvedConfig_RoundTripsThroughJson()
    {
        var c = ConfigLoader.Load(null, ["steps=42", "model.d_ffn=32"]);
        var full = c with { Model = ModelSection.From("tiny", c.Model.Resolve(512)) };
        using var dir = new TempDir();
        var again = ConfigLoader.Load(WriteConfig(dir, ConfigLoader.ToJson(full)), []);
        Assert.Equal(ConfigLoader.ToJson(full), ConfigLoader.ToJson(again));
        Assert.Equal(32, again.Model.DFfn);
    }

    [Fact]
    public void Cli_UserErrors_ExitTwoWithoutStackTrace()
    {
        using var dir = new TempDir();
        var err = new StringWriter();
        int rc = Cli.Guard("train", () => TrainCommand.Run(dir["missing.json"], [], null, dir["run"], false, null), err);
        Assert.Equal(Cli.UserErrorExit, rc);
        Assert.Contains("missing.json", err.ToString());
        Assert.DoesNotContain(" at ", err.ToString());
    }
}
