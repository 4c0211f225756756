// Loads one palm-golden-1 case (see ../shared/golden/README.md) into typed fields, reading the
// config from the file itself so that any valid case, of any shape, can be checked. No xunit
// types here: the GPU check runner (bench) compiles this file too.
using MessagePack;
using Palm.Inference.Model;

namespace Palm.Tests.Golden;

public sealed record GoldenTensor(int[] Shape, float[] Data);

public sealed partial class GoldenCase
{
    public required string Name { get; init; }
    public required PalmConfig Config { get; init; }
    public required Dictionary<string, GoldenTensor> Params { get; init; }
    public required int[][] Tokens { get; init; }
    public required int[][] Targets { get; init; }
    public required GoldenTensor Logits { get; init; }
    public required double Loss { get; init; }
    public required Dictionary<string, GoldenTensor> Grads { get; init; }
    public required GoldenStep Step { get; init; }
    public required List<(GoldenTensor Input, GoldenTensor Output)> NewtonSchulz { get; init; }
    public required GoldenRope Rope { get; init; }

    public int B => Tokens.Length;
    public int T => Tokens[0].Length;
    public int[] FlatTokens => Tokens.SelectMany(r => r).ToArray();
    public int[] FlatTargets => Targets.SelectMany(r => r).ToArray();

    /// <summary>The case's parameters as a PalmParameters (checks names and shapes both ways).</summary>
    public PalmParameters ToParameters() => ToParameters(Params);

    public PalmParameters ToParameters(Dictionary<string, GoldenTensor> tensors)
    {
        var p = new PalmParameters(Config);
        foreach (var t in p.All)
        {
            if (!tensors.TryGetValue(t.Name, out var g)) throw new InvalidDataException($"{Name}: missing tensor {t.Name}");
            if (g.Shape.Length != 2 || g.Shape[0] != t.Rows || g.Shape[1] != t.Cols)
                throw new InvalidDataException($"{Name}: {t.Name} has shape [{string.Join(",", g.Shape)}], expected [{t.Rows},{t.Cols}]");
            g.Data.CopyTo(t.Data, 0);
        }
        var extra = tensors.Keys.Where(k => !p.TryGet(k, out _)).ToList();
        if (extra.Count > 0) throw new InvalidDataException($"{Name}: unexpected tensors {string.Join(", ", extra)}");
        return p;
    }

    public static GoldenCase Load(string path)
    {
        var bytes = File.ReadAllBytes(path);
        var options = MessagePackSerializerOptions.Standard.WithSecurity(MessagePackSecurity.UntrustedData);
        var root = (IDictionary<object, object>)MessagePackSerializer.Deserialize<object>(bytes, options)!;
        string format = (string)root["format"];
        if (format != "palm-golden-1") throw new InvalidDataException($"{path}: format '{format}', expected palm-golden-1");
        var cfg = Map(root["config"]);
        var config = new PalmConfig
        {
            VocabSize = Int(cfg["vocab_size"]), BlockSize = Int(cfg["block_size"]), NEmbd = Int(cfg["n_embd"]),
            NHead = Int(cfg["n_head"]), DQkv = Int(cfg["d_qkv"]), DRank = Int(cfg["d_rank"]),
            NLayer = Int(cfg["n_layer"]), NRecur = Int(cfg["n_recur"]), DFfn = Int(cfg["d_ffn"]),
            Share = PalmConfig.ParseShare((string)cfg["share"]), Mix = PalmConfig.ParseMix((string)cfg["aod_mix"]),
        }.Validated();
        var step = Map(root["step"]);
        var betas = (object[])step["adam_betas"];
        var rope = Map(root["rope"]);
        return new GoldenCase
        {
            Name = Path.GetFileNameWithoutExtension(path),
            Config = config,
            Params = TensorMap(root["params"]),
            Tokens = IntRows(root["tokens"]),
            Targets = IntRows(root["targets"]),
            Logits = Tensor(root["logits"]),
            Loss = Dbl(root["loss"]),
            Grads = TensorMap(root["grads"]),
            Step = new GoldenStep
            {
                MuonLr = Dbl(step["muon_lr"]), AdamLr = Dbl(step["adam_lr"]), WeightDecay = Dbl(step["weight_decay"]),
                MuonBeta = Dbl(step["muon_beta"]), AdamBeta1 = Dbl(betas[0]), AdamBeta2 = Dbl(betas[1]),
                AdamEps = Dbl(step["adam_eps"]), AdamStep = Int(step["adam_step"]), Clip = Dbl(step["clip"]),
                GradNorm = Dbl(step["grad_norm"]),
                StateIn = StateMap(step["state_in"]), ParamsOut = TensorMap(step["params_out"]), StateOut = StateMap(step["state_out"]),
            },
            NewtonSchulz = ((object[])root["newton_schulz"]).Select(o => { var m = Map(o); return (Tensor(m["input"]), Tensor(m["output"])); }).ToList(),
            Rope = new GoldenRope(Int(rope["hd"]), ((object[])rope["positions"]).Select(p => Convert.ToInt64(p)).ToArray(), Tensor(rope["input"]), Tensor(rope["output"])),
        };
    }

    private static IDictionary<object, object> Map(object o) => (IDictionary<object, object>)o;
    private static int Int(object o) => Convert.ToInt32(o);
    private static double Dbl(object o) => Convert.ToDouble(o);
    private static int[][] IntRows(object o) => ((object[])o).Select(r => ((object[])r).Select(Int).ToArray()).ToArray();

    private static GoldenTensor Tensor(object o)
    {
        var m = Map(o);
        if ((string)m["dtype"] != "f32") throw new InvalidDataException($"dtype {m["dtype"]}");
        var shape = ((object[])m["shape"]).Select(Int).ToArray();
        var data = (byte[])m["data"];
        long n = shape.Aggregate(1L, (a, b) => a * b);
        if (data.Length != 4 * n) throw new InvalidDataException($"tensor data {data.Length} bytes, expected {4 * n}");
        var f = new float[n];
        Buffer.BlockCopy(data, 0, f, 0, data.Length);
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("big-endian host");
        return new GoldenTensor(shape, f);
    }

    private static Dictionary<string, GoldenTensor> TensorMap(object o) =>
        Map(o).ToDictionary(kv => (string)kv.Key, kv => Tensor(kv.Value));

    private static Dictionary<string, Dictionary<string, GoldenTensor>> StateMap(object o) =>
        Map(o).ToDictionary(kv => (string)kv.Key, kv => TensorMap(kv.Value));

    /// <summary>
    /// The golden folders: ../shared/golden, the repository's tests/golden-edge (edge-case files made
    /// by the same generator from tests/golden-edge/cases.py) and $PALM_GOLDEN_DIR.
    /// </summary>
    public static IEnumerable<string> Directories()
    {
        var seen = new HashSet<string>();
        var shared = FindShared();
        var env = Environment.GetEnvironmentVariable("PALM_GOLDEN_DIR");
        if (shared is not null && Directory.Exists(Path.Combine(shared, "golden"))) { var d = Path.GetFullPath(Path.Combine(shared, "golden")); if (seen.Add(d)) yield return d; }
        if (FindRepoRoot() is { } root && Directory.Exists(Path.Combine(root, "tests", "golden-edge"))) { var d = Path.GetFullPath(Path.Combine(root, "tests", "golden-edge")); if (seen.Add(d)) yield return d; }
        if (!string.IsNullOrEmpty(env))
        {
            if (!Directory.Exists(env)) throw new DirectoryNotFoundException($"PALM_GOLDEN_DIR={env} does not exist");
            var d = Path.GetFullPath(env);
            if (seen.Add(d)) yield return d;
        }
    }

    /// <summary>The shared/ folder beside the repository root (../shared from the repo).</summary>
    public static string? FindShared()
    {
        if (FindRepoRoot() is not { } root) return null;
        var s = Path.Combine(root, "..", "shared");
        return Directory.Exists(s) ? Path.GetFullPath(s) : null;
    }

    /// <summary>The repository root (the folder holding Palm.Native.sln) above the test binaries.</summary>
    public static string? FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Palm.Native.sln"))) return dir.FullName;
        return null;
    }
}

public sealed class GoldenStep
{
    public double MuonLr, AdamLr, WeightDecay, MuonBeta, AdamBeta1, AdamBeta2, AdamEps, Clip, GradNorm;
    public int AdamStep;
    public Dictionary<string, Dictionary<string, GoldenTensor>> StateIn = [], StateOut = [];
    public Dictionary<string, GoldenTensor> ParamsOut = [];
}

public sealed record GoldenRope(int Hd, long[] Positions, GoldenTensor Input, GoldenTensor Output);
