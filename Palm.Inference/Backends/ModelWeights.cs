// The weights a model is built from, as loaded: float32 PalmParameters, or a checkpoint whose
// q8/q4 tensors stay quantized. Each backend takes them in the form it computes with, so a
// quantized file reaches either backend without a float copy: the Vulkan backend uploads the
// stored bytes (ToGpu), the CPU backend reads them in place (ToCpu, Cpu/QuantizedMatVec).
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Palm.Gpu.Model;
using Palm.Gpu.Vulkan;
using Palm.Inference.Checkpoint;
using Palm.Inference.Cpu;
using Palm.Inference.Model;

namespace Palm.Inference.Backends;

internal sealed class ModelWeights
{
    private readonly PalmParameters? _parameters;
    private readonly PalmCheckpoint? _checkpoint;
    private readonly Dictionary<string, CheckpointTensor>? _byName;

    private ModelWeights(PalmConfig config, PalmParameters? parameters, PalmCheckpoint? checkpoint)
    {
        Config = config;
        _parameters = parameters;
        _checkpoint = checkpoint;
        _byName = checkpoint?.Tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
    }

    /// <summary>Weights already in float32 (not copied).</summary>
    public static ModelWeights From(PalmParameters parameters) => new(parameters.Config, parameters, null);

    /// <summary>The checkpoint's tensors as they are (q8/q4 stay quantized), after checking that they are exactly the config's parameters.</summary>
    /// <exception cref="PalmFormatException">A missing, unknown or misshapen tensor.</exception>
    public static ModelWeights From(PalmCheckpoint checkpoint)
    {
        checkpoint.ValidateParameters();
        return new(checkpoint.Config, null, checkpoint);
    }

    public PalmConfig Config { get; }

    /// <summary>Float32 parameters: the ones given, or new ones with the quantized tensors dequantized.</summary>
    public PalmParameters ToParameters() => _parameters ?? _checkpoint!.ToParameters();

    /// <summary>
    /// The weights for <see cref="VulkanForward"/>: f32 tensors (arrays shared, not copied) and q8/q4
    /// tensors as their stored bytes (shared, not copied, never dequantized).
    /// </summary>
    public (Dictionary<string, GpuWeight> F32, Dictionary<string, GpuQuantizedWeight> Quantized) ToGpu()
    {
        if (_parameters is not null) return (GpuMapping.ToGpuWeights(_parameters), new());
        var f32 = new Dictionary<string, GpuWeight>(StringComparer.Ordinal);
        var quantized = new Dictionary<string, GpuQuantizedWeight>(StringComparer.Ordinal);
        foreach (var e in ParameterLayout.Expected(Config))
        {
            var t = _byName![e.Name];
            if (t.Quantized is { } q)
                quantized.Add(e.Name, new GpuQuantizedWeight(e.Rows, e.Cols,
                    q.DType == TensorDType.Q8 ? GpuQuantFormat.Q8 : GpuQuantFormat.Q4, q.GroupSize, q.Data, q.Scales));
            // f16-stored tensors stay half on the device: the widened floats convert back exactly.
            else f32.Add(e.Name, new GpuWeight(e.Rows, e.Cols, t.Data, Half: t.Storage == TensorDType.F16));
        }
        return (f32, quantized);
    }

    /// <summary>
    /// The weights for the CPU backend: f32 tensors as their arrays and q8/q4 tensors as their
    /// <see cref="Quantization.QuantizedTensor"/>s, all shared (not copied, never dequantized).
    /// </summary>
    public CpuWeights ToCpu()
    {
        if (_parameters is not null) return CpuWeights.From(_parameters);
        return new CpuWeights(Config, e =>
        {
            var t = _byName![e.Name];
            return t.Quantized is { } q ? new CpuMatrix(e.Name, e.Rows, e.Cols, q) : new CpuMatrix(e.Name, e.Rows, e.Cols, t.Data);
        });
    }

    /// <summary>
    /// SHA-256 of the config (as JSON) and every parameter in canonical order (name, rows, cols,
    /// float32 bytes; q8/q4 tensors as their dequantized values): what a saved session state is bound
    /// to. A quantized file therefore has the same id on every backend, and the same as its float32
    /// expansion. Dequantizes one tensor at a time into a scratch array that is dropped afterwards.
    /// </summary>
    public byte[] Hash()
    {
        using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        h.AppendData(Encoding.UTF8.GetBytes("palm-model-v1\n" + JsonSerializer.Serialize(Config)));
        Span<byte> dims = stackalloc byte[8];
        float[] scratch = [];
        foreach (var e in ParameterLayout.Expected(Config))
        {
            ReadOnlySpan<float> data;
            if (_parameters is not null) data = _parameters[e.Name].Data;
            else if (_byName![e.Name].Quantized is { } q)
            {
                if (scratch.Length < q.Length) scratch = new float[q.Length];
                q.Dequantize(scratch.AsSpan(0, q.Length));
                data = scratch.AsSpan(0, q.Length);
            }
            else data = _byName[e.Name].Data;
            h.AppendData(Encoding.UTF8.GetBytes(e.Name));
            BitConverter.TryWriteBytes(dims[..4], e.Rows);
            BitConverter.TryWriteBytes(dims[4..], e.Cols);
            h.AppendData(dims);
            h.AppendData(MemoryMarshal.AsBytes(data));
        }
        return h.GetHashAndReset();
    }
}
