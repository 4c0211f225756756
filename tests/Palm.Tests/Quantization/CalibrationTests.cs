// Calibration for GPTQ: every linear weight gets H = Σ x xᵀ of exactly the rows it multiplies
// (checked against one unbatched forward pass, for factorized and full-rank models with and without
// FFN), the embedding gets embed.proj.wᵀ embed.proj.w; the quantize command reads its windows from
// the train split only, and a calibrated checkpoint is deterministic and loads.
using Palm.Inference.Checkpoint;
using Palm.Inference.Cpu;
using Palm.Inference.Model;
using Palm.Inference.Quantization;
using Palm.Tests.Trainer;
using Palm.Trainer.Commands;
using Palm.Trainer.Data;

namespace Palm.Tests.Quantization;

public sealed class CalibrationTests
{
    private static PalmConfig Micro(int rank, int ffn) => new()
    {
        VocabSize = 50, BlockSize = 12, NEmbd = 16, NHead = 2, DQkv = 16, DRank = rank, NLayer = 2, NRecur = 2, DFfn = ffn,
    };

    private static PalmParameters Model(PalmConfig config, ulong seed)
    {
        var p = new PalmParameters(config);
        p.InitTraining(new Rng(seed));
        return p;
    }

    private static List<int[]> Windows(Random rnd, int count, int t, int vocab)
    {
        var w = new List<int[]>();
        for (int i = 0; i < count; i++) w.Add(Enumerable.Range(0, t).Select(_ => rnd.Next(vocab)).ToArray());
        return w;
    }

    private static void AddGram(Dictionary<string, double[]> acc, string name, float[] x, int k)
    {
        if (!acc.TryGetValue(name, out var h)) acc[name] = h = new double[k * k];
        for (int r = 0; r < x.Length / k; r++)
            for (int i = 0; i < k; i++)
                for (int j = 0; j < k; j++) h[i * k + j] += (double)x[r * k + i] * x[r * k + j];
    }

    [Theory]
    [InlineData(4, 0)]
    [InlineData(4, 8)]
    [InlineData(0, 8)]
    public void Hessians_sum_the_inputs_of_every_application_of_each_weight(int rank, int ffn)
    {
        ulong seed = TestSeed.Next();
        var p = Model(Micro(rank, ffn), seed);
        // More windows than one pass takes, and a ragged last pass.
        var windows = Windows(new Random((int)(seed & 0x7FFFFFFF)), LayerInputHessians.WindowsPerPass + 3, 12, 50);
        var got = LayerInputHessians.Collect(p, windows);
        Assert.Equal(windows.Count * 12L, got.Tokens);

        // Reference: one forward over all windows at once, inputs read off the tape by hand.
        var tape = new ForwardTape();
        new CpuReferenceModel(p).Forward(windows.SelectMany(w => w).ToArray(), windows.Count, 12, null, tape);
        var want = new Dictionary<string, double[]>();
        string Suffix(string factor) => rank > 0 ? factor : "w";
        if (rank > 0) AddGram(want, "embed.proj.w", tape.E, rank);
        foreach (var at in tape.Apps)
        {
            string b = $"blocks.{at.Block}.";
            AddGram(want, b + "qkv." + Suffix("w1"), at.H, 16);
            AddGram(want, b + "proj." + Suffix("w1"), at.Y, 16);
            if (rank > 0) { AddGram(want, b + "qkv.w2", at.Qkv.A!, rank); AddGram(want, b + "proj.w2", at.Proj.A!, rank); }
            if (ffn > 0)
            {
                AddGram(want, b + "ffn.up." + Suffix("w1"), at.H, 16);
                AddGram(want, b + "ffn.down." + Suffix("w1"), at.Gated!, ffn);
                if (rank > 0) { AddGram(want, b + "ffn.up.w2", at.Up!.A!, rank); AddGram(want, b + "ffn.down.w2", at.Down!.A!, rank); }
            }
        }
        AddGram(want, "unembed." + Suffix("w1"), tape.XF, 16);
        if (rank > 0) AddGram(want, "unembed.w2", tape.Unembed.A!, rank);
        if (rank > 0)
        {
            // The embedding's error reaches the model through embed.proj.w: H = Winᵀ Win (its rows summed).
            var proj = p.EmbedProj!;
            AddGram(want, CheckpointQuantizer.EmbeddingName, proj.Data, proj.Cols);
        }

        foreach (var t in p.All)
        {
            bool expected = want.TryGetValue(t.Name, out var h);
            Assert.True(expected == got.TryGet(t.Name, out var g), $"{t.Name}: H present {!expected} here, expected {expected}");
            if (!expected) continue;
            // Float32 Gram per pass of <= 8 windows, float64 across passes: rel 1e-5 of the diagonal scale.
            double scale = 0, worst = 0;
            int worstAt = -1;
            for (int i = 0; i < t.Cols; i++) scale = Math.Max(scale, Math.Abs(h![i * t.Cols + i]));
            for (int i = 0; i < h!.Length; i++)
            {
                double e = Math.Abs(g[i] - h[i]);
                if (e > worst) { worst = e; worstAt = i; }
            }
            Assert.True(worst <= 1e-5 * scale, $"{t.Name}: worst |H - ref| = {worst:G4} at ({worstAt / t.Cols}, {worstAt % t.Cols}), scale {scale:G4} (seed {seed})");
        }
    }

    [Fact]
    public void Collect_rejects_bad_windows()
    {
        var p = Model(Micro(4, 0), 1);
        Assert.Contains("no calibration windows", Assert.Throws<ArgumentException>(() => LayerInputHessians.Collect(p, [])).Message);
        Assert.Contains("share one length", Assert.Throws<ArgumentException>(() => LayerInputHessians.Collect(p, [[1, 2], [1]])).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => LayerInputHessians.Collect(p, [[1, 99]]));
    }

    /// <summary>A prepared folder whose train split is all <paramref name="trainId"/> and val split all <paramref name="valId"/>.</summary>
    private static string PreparedFolder(TempDir dir, int vocab, int trainId, int trainTokens, int valId, int valTokens)
    {
        string folder = dir["data"];
        Directory.CreateDirectory(folder);
        static void Write(string path, int id, int n)
        {
            var bytes = new byte[2 * n];
            for (int i = 0; i < n; i++) { bytes[2 * i] = (byte)id; bytes[2 * i + 1] = (byte)(id >> 8); }
            File.WriteAllBytes(path, bytes);
        }
        Write(Path.Combine(folder, "train_0000.bin"), trainId, trainTokens);
        Write(Path.Combine(folder, "val_0000.bin"), valId, valTokens);
        new ShardManifest
        {
            VocabSize = vocab, TrainTokens = trainTokens, ValTokens = valTokens,
            Shards = [new ShardInfo("train_0000.bin", "train", trainTokens), new ShardInfo("val_0000.bin", "val", valTokens)],
        }.Save(folder);
        return folder;
    }

    [Fact]
    public void Calibration_windows_come_from_the_train_split_only()
    {
        using var dir = new TempDir();
        string folder = PreparedFolder(dir, 50, trainId: 5, trainTokens: 400, valId: 7, valTokens: 400);
        var windows = QuantizeCommand.ReadCalibration(folder, 50, 12, 100, out var what);
        Assert.Contains("train split", what);
        Assert.Equal(9, windows.Count);                  // ceil(100 / 12)
        Assert.All(windows, w => { Assert.Equal(12, w.Length); Assert.All(w, id => Assert.Equal(5, id)); });
        // Asking for more than the data holds gives every window start at most once.
        Assert.Equal(400 - 12, QuantizeCommand.ReadCalibration(folder, 50, 12, 1_000_000, out _).Count);

        Assert.Contains("not found", Assert.Throws<UserError>(() => QuantizeCommand.ReadCalibration(dir["missing"], 50, 12, 100, out _)).Message);
        Assert.Contains("exceeds the model's 40", Assert.Throws<UserError>(() => QuantizeCommand.ReadCalibration(folder, 40, 12, 100, out _)).Message);
        Assert.Contains("no segment of block_size + 1 = 501", Assert.Throws<UserError>(() => QuantizeCommand.ReadCalibration(folder, 50, 500, 100, out _)).Message);
    }

    [Fact]
    public void Calibrated_quantize_command_is_deterministic_and_writes_a_loadable_file()
    {
        ulong seed = TestSeed.Next();
        using var dir = new TempDir();
        var config = Micro(4, 8) with { VocabSize = 50 };
        string src = dir["f32.palm"];
        PalmCheckpoint.FromParameters(Model(config, seed)).Save(src);
        // A random token stream as the one .bin shard form of --calibrate.
        var rnd = new Random((int)(seed & 0x7FFFFFFF));
        string shard = dir["calib.bin"];
        File.WriteAllBytes(shard, Enumerable.Range(0, 600).SelectMany(_ => BitConverter.GetBytes((ushort)rnd.Next(50))).ToArray());

        var lines = new List<string>();
        string report = QuantizeCommand.Run(src, dir["a.palm"], "q4", null, embed: true, calibrate: shard, calibTokens: 240, progress: lines.Add);
        QuantizeCommand.Run(src, dir["b.palm"], "q4", null, embed: true, calibrate: shard, calibTokens: 240);
        Assert.Contains("GPTQ", report);
        Assert.Contains(lines, l => l.Contains("GPTQ, calibrated on 20 windows of 12 tokens"));
        Assert.Contains(lines, l => l.Contains("embed.weight") && l.Contains("x round-to-nearest"));
        Assert.Equal(File.ReadAllBytes(dir["a.palm"]), File.ReadAllBytes(dir["b.palm"]));
        var back = PalmCheckpoint.Load(dir["a.palm"]);
        Assert.All(back.Tensors, t => Assert.Equal(TensorDType.Q4, t.Storage));
        Assert.All(back.ToParameters().All, t => Assert.All(t.Data, v => Assert.True(float.IsFinite(v))));

        Assert.Contains("--calib-tokens must be > 0", Assert.Throws<UserError>(() => QuantizeCommand.Run(src, dir["x.palm"], "q4", null, false, shard, 0)).Message);
        Assert.Contains("not found", Assert.Throws<UserError>(() => QuantizeCommand.Run(src, dir["x.palm"], "q4", null, false, dir["nope"])).Message);
        Assert.False(File.Exists(dir["x.palm"]));
    }
}
