// q8/q4 tensors in .palm files: stored bytes survive save and load exactly, stay quantized in
// memory, default group sizes apply when a file omits group_size, and the quantize command keeps
// the embedding unless asked and shrinks the file.
using Palm.Inference.Checkpoint;
using Palm.Inference.Model;
using Palm.Inference.Quantization;
using Palm.Trainer.Commands;
using static Palm.Tests.Checkpoint.CheckpointTestData;

namespace Palm.Tests.Checkpoint;

public sealed class QuantizedCheckpointTests
{
    private static PalmCheckpoint Trained(PalmConfig config)
    {
        var p = new PalmParameters(config);
        p.InitTraining(new Rng(TestSeed.Next()));
        return PalmCheckpoint.FromParameters(p, training: new TrainingState { Step = 3, RngState = new Rng(1).GetState() });
    }

    [Theory]
    [InlineData("q8", null, false)]
    [InlineData("q8", 8, true)]
    [InlineData("q4", null, false)]
    [InlineData("q4", 16, true)]
    public void Quantized_checkpoint_round_trips_and_stays_quantized(string dtypeName, int? group, bool embed)
    {
        Assert.True(TensorDTypes.TryParse(dtypeName, out var dtype));
        var ck = Trained(PalmConfig.Tiny with { VocabSize = 300 });
        var quantized = CheckpointQuantizer.Quantize(ck, dtype, group, embed);
        Assert.Null(quantized.Training);
        foreach (var t in quantized.Tensors)
        {
            bool expectQuantized = embed || t.Name != "embed.weight";
            Assert.Equal(expectQuantized, t.IsQuantized);
            if (!expectQuantized) continue;
            Assert.Equal(dtype, t.Storage);
            // Tiny has r = 16: rows shorter than the requested group use one scale per row.
            int cols = t.Shape[^1];
            int expectedGroup = group is { } g ? Math.Min(g, cols) : dtype == TensorDType.Q8 ? cols : Math.Min(32, cols);
            Assert.Equal(expectedGroup, t.Quantized!.GroupSize);
            Assert.Throws<InvalidOperationException>(() => t.Data);
        }

        var bytes = ToBytes(quantized);
        var back = PalmCheckpoint.Load(bytes);
        AssertSame(quantized, back);
        Assert.Equal(bytes, ToBytes(back));                       // deterministic bytes
        var p = back.ToParameters();
        foreach (var t in back.Tensors)
            AssertBitsEqual(t.ToFloats(), p[t.Name].Data, t.Name);
    }

    [Fact]
    public void Group_size_defaults_when_the_file_omits_it()
    {
        // embed.weight of Small() is (10, 2); blocks.0.qkv.w1 is (2, 4).
        var tree = Msg.Tree(Small());
        var tensors = (List<object?>)tree["tensors"]!;
        var q8 = (MsgMap)tensors[0]!;
        q8["dtype"] = "q8";
        q8["data"] = Enumerable.Range(0, 20).Select(i => (byte)(sbyte)(i - 10)).ToArray();
        q8.Add("scales", Enumerable.Range(0, 10).SelectMany(i => BitConverter.GetBytes(0.5f * i)).ToArray());   // one per row
        var c = PalmCheckpoint.Load(Msg.Encode(tree));
        var t = c.Tensors[0];
        Assert.Equal(2, t.Quantized!.GroupSize);
        Assert.Equal(-10 * 0f, t.ToFloats()[0]);
        Assert.Equal(9 * 4.5f, t.ToFloats()[19]);

        tree = Msg.Tree(new PalmCheckpoint
        {
            Config = Small().Config,
            Tensors = [new CheckpointTensor("extra", [3, 64], new float[192])],
        });
        var q4 = (MsgMap)((List<object?>)tree["tensors"]!)[0]!;
        q4["dtype"] = "q4";
        q4["data"] = Enumerable.Repeat((byte)0x9F, 96).ToArray();                  // levels 7, 1, 7, 1, ...
        q4.Add("scales", Enumerable.Range(0, 6).SelectMany(i => BitConverter.GetBytes(BitConverter.HalfToUInt16Bits((Half)(i + 1)))).ToArray());
        var f = PalmCheckpoint.Load(Msg.Encode(tree)).Tensors[0];
        Assert.Equal(32, f.Quantized!.GroupSize);
        var v = f.ToFloats();
        Assert.Equal(7f, v[0]);
        Assert.Equal(1f, v[1]);
        Assert.Equal(7f * 6, v[191 - 1]);
        Assert.Equal(1f * 6, v[191]);
    }

    [Fact]
    public void Quantize_command_writes_smaller_files_and_reports_sizes()
    {
        var ck = Trained(PalmConfig.Tiny with { VocabSize = 300 });
        string dir = Path.Combine(Path.GetTempPath(), $"palm-quant-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        try
        {
            string src = Path.Combine(dir, "f32.palm");
            PalmCheckpoint.FromParameters(ck.ToParameters()).Save(src);
            long f32 = new FileInfo(src).Length;
            var q8Line = QuantizeCommand.Run(src, Path.Combine(dir, "q8.palm"), "q8", null, embed: true);
            var q4Line = QuantizeCommand.Run(src, Path.Combine(dir, "q4.palm"), "q4", null, embed: true);
            Assert.Contains("q8, one scale per row", q8Line);
            Assert.Contains("q4, groups of 32", q4Line);
            long q8 = new FileInfo(Path.Combine(dir, "q8.palm")).Length, q4 = new FileInfo(Path.Combine(dir, "q4.palm")).Length;
            // int8 + a scale per row: a bit over 1/4; 4-bit + f16 per 32 (or per row of 16): about 1/8 to 1/6.
            Assert.InRange((double)q8 / f32, 0.24, 0.34);
            Assert.InRange((double)q4 / f32, 0.12, 0.20);

            Assert.Contains("--dtype must be q8 or q4", Assert.Throws<UserError>(() => QuantizeCommand.Run(src, Path.Combine(dir, "x.palm"), "f16", null, false)).Message);
            Assert.Contains("group size 24 does not divide its rows of 64", Assert.Throws<UserError>(() => QuantizeCommand.Run(src, Path.Combine(dir, "x.palm"), "q8", 24, false)).Message);
            Assert.False(File.Exists(Path.Combine(dir, "x.palm")));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void PalmModel_loads_a_quantized_file_on_the_cpu_without_expanding_it()
    {
        var tiny = Api.TinyModel.Shared;
        var quantized = CheckpointQuantizer.Quantize(PalmCheckpoint.Load(tiny.Path), TensorDType.Q4, null, embedding: true);
        string path = Path.Combine(Path.GetTempPath(), $"palm-q4-{Guid.NewGuid():N}.palm");
        try
        {
            quantized.Save(path);
            using var model = Palm.Inference.PalmModel.Load(path, new Palm.Inference.ModelOptions { Backend = Palm.Inference.Backend.Cpu });
            // Both backends keep q8/q4 quantized (QuantizedCpuModelTests, QuantizedVulkanModelTests);
            // the CPU decoder adds its transposed copies.
            Assert.Equal(Palm.Tests.Quantization.QuantizedCpuModelTests.QuantizedBytes(quantized)
                + Palm.Tests.Quantization.QuantizedCpuModelTests.CpuDecoderCopyBytes(quantized), model.WeightBytes);
            Assert.True(model.WeightBytes < tiny.Parameters.Count * sizeof(float));
            using var session = model.CreateSession();
        }
        finally { File.Delete(path); }
    }
}
