using Palm.Inference.Model;

namespace Palm.Tests;

public class ConfigTests
{
    [Theory]
    [InlineData("vocab_size")]
    [InlineData("d_qkv")]
    public void InvalidConfigNamesField(string field)
    {
        var c = field switch
        {
            "vocab_size" => PalmConfig.Tiny with { VocabSize = 0 },
            _ => PalmConfig.Tiny with { DQkv = 130 },
        };
        var e = Assert.Throws<PalmConfigException>(c.Validate);
        Assert.Equal(field, e.Field);
    }
}
