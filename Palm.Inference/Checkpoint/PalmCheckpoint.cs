// The .palm checkpoint: one MessagePack document holding config, tokenizer, weights and training
// state. This file owns the public API, the consistency rules shared by saving and loading, the
// atomic file save, and the conversion to and from PalmParameters.
using System.Buffers;
using System.Text;
using Palm.Inference.Model;

namespace Palm.Inference.Checkpoint;

/// <summary>
/// A Palm checkpoint (<c>.palm</c>): model config, optional tokenizer, named tensors (float or
/// quantized) and optional training state.
/// </summary>
/// <remarks>
/// <para><b>On-disk layout, format_version 1.</b> The file is exactly one MessagePack map with string
/// keys and nothing after it. <c>magic</c> and <c>format_version</c> must be its first two entries (in
/// that order) so a reader can identify and version-check a file before parsing anything else;
/// the other entries may come in any order. Unknown keys are ignored at the top level and in
/// <c>training</c>, and rejected in <c>config</c>, <c>tokenizer</c> and tensor maps (where guessing
/// would change the model). Duplicate keys are errors everywhere. Integers may use any MessagePack
/// integer encoding; all binary data is little-endian.</para>
/// <code>
/// magic          str   "PALM"
/// format_version int   1
/// config         map   vocab_size, block_size, n_embd, n_head, d_qkv, d_rank, n_layer, n_recur,
///                      d_ffn: int;  share: "cycle" | "sequence";  aod_mix: "sum" | "mean"
///                      (all 11 required; validated as PalmConfig.Validate)
/// tokenizer      map   (optional)
///   pattern        str        pre-tokenization regex
///   merges         [int]      flat pairs [l0, r0, l1, r1, ...] in merge order; ids in [0, vocab_size)
///   special_tokens [str]      in id order
/// tensors        [map] in canonical parameter order when written from PalmParameters
///   name         str        unique, e.g. "blocks.0.qkv.w1"
///   shape        [int]      rank 1..8, each dim >= 1; (rows, cols) for parameters
///   dtype        str        "f32" | "f16" | "bf16" | "q8" | "q4"
///   data         bin        f32: 4n bytes; f16, bf16: 2n; q8: n (int8 q); q4: ceil(n/2) (4-bit q + 8,
///                           two per byte, element 2k in the low nibble; a last odd nibble pads with 0)
///   scales       bin        q8/q4 only, required: one scale per group of group_size consecutive
///                           elements, f32 (4 bytes) for q8, f16 (2 bytes) for q4; finite, >= 0;
///                           element i is q[i] * scales[i / group_size]
///   group_size   int        q8/q4 only, optional (q8 default: the last dim, one scale per row;
///                           q4 default 32); must divide the last dim. Written always.
/// training       map   (optional)
///   step          int       >= 0, optimizer steps taken
///   rng           [uint64]  4 words of xoshiro256** state, not all zero
///   data_position int       >= 0
///   loss_history  bin | [number]   written as bin of f32; an array of numbers is also read
///   optimizer     map   tensor name -> map moment name ("m"; "v" for AdamW) ->
///                       map {shape, dtype, data} as above, dtype "f32", shape equal to the tensor's
///   extra         map   str -> number (float64), e.g. "lr"
/// </code>
/// <para>Parameter tensors (names from <see cref="PalmParameters"/>) must have the shape the config
/// implies; other tensor names are allowed in a file but rejected by <see cref="ToParameters"/>.
/// This version reads and writes every dtype: f32, f16 and bf16 become float32 in memory, q8 and q4
/// stay quantized (<see cref="CheckpointTensor.Quantized"/>) until <see cref="ToParameters"/>. Files are limited to
/// <see cref="MaxFileBytes"/> and each tensor's data to 2 GiB.</para>
/// <para><b>Untrusted input.</b> <see cref="Load(Stream)"/> and its overloads throw only
/// <see cref="PalmFormatException"/> for bad content (I/O errors stay I/O errors). Every declared
/// length is checked against the bytes that remain before anything is allocated, so memory use is
/// bounded by a small multiple of the file size, and nesting depth is bounded as in
/// <c>MessagePackSecurity.UntrustedData</c>.</para>
/// </remarks>
public sealed class PalmCheckpoint
{
    /// <summary>The value of the <c>magic</c> entry.</summary>
    public const string Magic = "PALM";
    /// <summary>The format version this library writes and reads.</summary>
    public const int FormatVersion = 1;
    /// <summary>Largest file <see cref="Load(Stream)"/> accepts (4 GiB).</summary>
    public const long MaxFileBytes = 4L << 30;

    /// <summary>The model config.</summary>
    public required PalmConfig Config { get; init; }
    /// <summary>The tokenizer, if the checkpoint carries one.</summary>
    public TokenizerBlob? Tokenizer { get; init; }
    /// <summary>Named tensors in file order.</summary>
    public IReadOnlyList<CheckpointTensor> Tensors { get; init; } = [];
    /// <summary>Training state, present in checkpoints written during training.</summary>
    public TrainingState? Training { get; init; }

    /// <summary>Finds a tensor by name, or null.</summary>
    public CheckpointTensor? FindTensor(string name)
    {
        foreach (var t in Tensors) if (t.Name == name) return t;
        return null;
    }

    /// <summary>
    /// Builds a checkpoint from model weights. Tensor data is copied, so later training steps do not
    /// change the checkpoint (and it may be saved on another thread).
    /// </summary>
    public static PalmCheckpoint FromParameters(PalmParameters parameters, TokenizerBlob? tokenizer = null, TrainingState? training = null)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        var tensors = parameters.All
            .Select(t => new CheckpointTensor(t.Name, [t.Rows, t.Cols], (float[])t.Data.Clone()))
            .ToList();
        return new PalmCheckpoint { Config = parameters.Config, Tokenizer = tokenizer, Tensors = tensors, Training = training };
    }

    /// <summary>
    /// Copies the tensors into new <see cref="PalmParameters"/> for <see cref="Config"/>; q8/q4 tensors
    /// are dequantized (the float32 parameters are what training and the CPU reference use).
    /// </summary>
    /// <exception cref="PalmFormatException">A parameter is missing or has the wrong shape, or a tensor
    /// name is not a parameter of this config; the message names the tensor.</exception>
    public PalmParameters ToParameters()
    {
        // Check before allocating: PalmParameters allocates every weight of the config.
        ValidateParameters();
        var p = new PalmParameters(Config);
        foreach (var t in Tensors)
        {
            // Training and the CPU reference compute in float32: quantized weights are expanded here, once.
            if (t.Quantized is { } q) q.Dequantize(p[t.Name].Data);
            else t.Data.CopyTo(p[t.Name].Data, 0);
        }
        return p;
    }

    /// <summary>
    /// <see cref="Validate"/>, and the tensors are exactly the parameters of <see cref="Config"/>
    /// (what <see cref="ToParameters"/> needs; the Vulkan backend checks a file this way before it
    /// uploads quantized tensors as they are).
    /// </summary>
    /// <exception cref="PalmFormatException">As <see cref="ToParameters"/>.</exception>
    internal void ValidateParameters()
    {
        Validate();
        foreach (var t in Tensors)
            if (!ParameterLayout.TryGetShape(Config, t.Name, out _, out _))
                throw new PalmFormatException($"tensor '{CheckpointReader.Trim(t.Name)}' is not a parameter of this config");
        // Names are unique and all known (above), so a count short of the expected one means some are missing.
        if (Tensors.Count < ParameterLayout.ExpectedCount(Config))
        {
            var present = Tensors.Select(t => t.Name).ToHashSet(StringComparer.Ordinal);
            var missing = ParameterLayout.Expected(Config).Where(e => !present.Contains(e.Name)).Take(4).ToList();
            throw new PalmFormatException(
                $"missing tensor{(missing.Count > 1 ? "s" : "")} {string.Join(", ", missing.Select(m => $"'{m.Name}' (shape {m.ShapeText})"))}" +
                (Tensors.Count + missing.Count < ParameterLayout.ExpectedCount(Config) ? " and more" : ""));
        }
    }

    /// <summary>
    /// Checks the rules that every saved or loaded checkpoint satisfies: valid config, unique tensor
    /// names, parameter shapes matching the config, tokenizer ids in range, training state consistent
    /// with the tensors, and the format's size limits.
    /// </summary>
    /// <exception cref="PalmFormatException">The first violated rule.</exception>
    public void Validate()
    {
        if (Config is null) throw new PalmFormatException("config is missing");
        try { Config.Validate(); }
        catch (PalmConfigException e) { throw new PalmFormatException($"invalid {e.Message}", e); }
        if (Tensors is null) throw new PalmFormatException("tensors is null");

        var byName = new Dictionary<string, CheckpointTensor>(StringComparer.Ordinal);
        for (int i = 0; i < Tensors.Count; i++)
        {
            var t = Tensors[i] ?? throw new PalmFormatException($"tensors[{i}] is null");
            string name = CheckpointReader.Trim(t.Name);
            CheckBytes(t.Name, FormatLimits.MaxNameBytes, $"tensors[{i}] name");
            if (!byName.TryAdd(t.Name, t)) throw new PalmFormatException($"tensors[{i}]: duplicate tensor name '{name}'");
            if (t.Shape.Count > FormatLimits.MaxRank) throw new PalmFormatException($"tensor '{name}': rank {t.Shape.Count} exceeds {FormatLimits.MaxRank}");
            if (t.Storage.DataByteLength(t.Length) > int.MaxValue) throw new PalmFormatException($"tensor '{name}': data exceeds 2 GiB");
            if (ParameterLayout.TryGetShape(Config, t.Name, out int rows, out int cols) && !t.ShapeEquals([rows, cols]))
                throw new PalmFormatException($"tensor '{name}': shape {t.ShapeText} does not match the config, which implies [{rows}, {cols}]");
        }

        if (Tokenizer is { } tok)
        {
            if (tok.Pattern is null || tok.Merges is null || tok.SpecialTokens is null)
                throw new PalmFormatException("tokenizer: pattern, merges and special_tokens are required");
            CheckBytes(tok.Pattern, FormatLimits.MaxPatternBytes, "tokenizer.pattern");
            for (int i = 0; i < tok.Merges.Count; i++)
            {
                var (l, r) = tok.Merges[i];
                if ((uint)l >= (uint)Config.VocabSize || (uint)r >= (uint)Config.VocabSize)
                    throw new PalmFormatException($"tokenizer.merges: pair {i} ({l}, {r}) has an id outside 0..{Config.VocabSize - 1}");
            }
            for (int i = 0; i < tok.SpecialTokens.Count; i++)
                CheckBytes(tok.SpecialTokens[i] ?? throw new PalmFormatException($"tokenizer.special_tokens[{i}] is null"),
                    FormatLimits.MaxSpecialTokenBytes, $"tokenizer.special_tokens[{i}]");
        }

        if (Training is { } tr)
        {
            if (tr.RngState is not { Length: 4 }) throw new PalmFormatException("training.rng: must hold 4 state words");
            if ((tr.RngState[0] | tr.RngState[1] | tr.RngState[2] | tr.RngState[3]) == 0)
                throw new PalmFormatException("training.rng: state must not be all zero");
            if (tr.Step < 0) throw new PalmFormatException($"training.step: {tr.Step} is negative");
            if (tr.DataPosition < 0) throw new PalmFormatException($"training.data_position: {tr.DataPosition} is negative");
            if (tr.LossHistory is null) throw new PalmFormatException("training.loss_history is null");
            if (tr.LossHistory.Length > int.MaxValue / 4) throw new PalmFormatException("training.loss_history exceeds 2 GiB");
            if (tr.Optimizer is null || tr.Extra is null) throw new PalmFormatException("training.optimizer and training.extra must not be null");
            foreach (var (param, moments) in tr.Optimizer)
            {
                string name = CheckpointReader.Trim(param);
                if (!byName.TryGetValue(param, out var t))
                    throw new PalmFormatException($"training.optimizer: moments for '{name}', which is not a tensor of this checkpoint");
                if (moments is null) throw new PalmFormatException($"training.optimizer '{name}' is null");
                foreach (var (moment, data) in moments)
                {
                    CheckBytes(moment, FormatLimits.MaxKeyBytes, $"training.optimizer '{name}' moment name");
                    if (moment.Length == 0) throw new PalmFormatException($"training.optimizer '{name}': empty moment name");
                    if (data is null || data.Length != t.Length)
                        throw new PalmFormatException($"training.optimizer '{name}'.{CheckpointReader.Trim(moment)}: holds {data?.Length ?? 0} values, the tensor has {t.Length}");
                }
            }
            foreach (var key in tr.Extra.Keys) CheckBytes(key, FormatLimits.MaxKeyBytes, "training.extra key");
        }
    }

    private static void CheckBytes(string s, int max, string what)
    {
        if (s is null) throw new PalmFormatException($"{what} is null");
        int n = Encoding.UTF8.GetByteCount(s);
        if (n > max) throw new PalmFormatException($"{what}: {n} bytes exceeds the limit of {max}");
    }

    /// <summary>
    /// Writes the checkpoint to <paramref name="stream"/> (which stays open) after <see cref="Validate"/>.
    /// Not atomic: if writing fails the stream holds a partial document; use <see cref="Save(string)"/> for files.
    /// </summary>
    /// <exception cref="PalmFormatException">The checkpoint breaks a format rule; nothing is written.</exception>
    public void Save(Stream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        Validate();
        CheckpointWriter.Write(this, stream);
    }

    /// <summary>
    /// Saves atomically: writes a temporary file in the same folder, flushes it to disk, then renames
    /// it over <paramref name="path"/>. A crash or error mid-save leaves any previous file untouched
    /// and removes the temporary file (a hard crash may leave a hidden <c>.tmp</c> file behind).
    /// </summary>
    public void Save(string path) => Save(path, wrapForTests: null);

    /// <summary><see cref="Save(string)"/> with a hook that wraps the file stream, used to inject write failures in tests.</summary>
    internal void Save(string path, Func<Stream, Stream>? wrapForTests)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        Validate();
        string full = Path.GetFullPath(path);
        string dir = Path.GetDirectoryName(full) ?? throw new ArgumentException($"'{path}' has no folder", nameof(path));
        // Same folder, so the final rename never crosses file systems and stays atomic.
        string tmp = Path.Combine(dir, $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16))
            {
                var target = wrapForTests?.Invoke(fs) ?? fs;
                CheckpointWriter.Write(this, target);
                target.Flush();
                fs.Flush(flushToDisk: true);
            }
            File.Move(tmp, full, overwrite: true);
        }
        catch
        {
            try { File.Delete(tmp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw;
        }
    }

    /// <summary>Loads a checkpoint file.</summary>
    /// <exception cref="PalmFormatException">The content is not a valid checkpoint.</exception>
    /// <exception cref="IOException">The file cannot be read.</exception>
    public static PalmCheckpoint Load(string path)
    {
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.SequentialScan);
        return Load(fs);
    }

    /// <summary>Loads a checkpoint from the rest of <paramref name="stream"/> (read to its end).</summary>
    /// <exception cref="PalmFormatException">The content is not a valid checkpoint.</exception>
    public static PalmCheckpoint Load(Stream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        return CheckpointReader.Read(ReadAll(stream));
    }

    /// <summary>Loads a checkpoint from bytes in memory.</summary>
    /// <exception cref="PalmFormatException">The content is not a valid checkpoint.</exception>
    public static PalmCheckpoint Load(ReadOnlyMemory<byte> bytes) => CheckpointReader.Read(new ReadOnlySequence<byte>(bytes));

    private static PalmFormatException TooLarge(long n) => new($"checkpoint is {n} bytes, more than the limit of {MaxFileBytes}");

    // Reads a stream into a chain of chunks: no single array needs to hold the file (arrays stop at
    // 2 GiB), and a non-seekable stream's buffer only grows as data actually arrives.
    private static ReadOnlySequence<byte> ReadAll(Stream stream)
    {
        const int MaxChunk = 64 << 20;
        if (stream.CanSeek && stream.Length - stream.Position > MaxFileBytes) throw TooLarge(stream.Length - stream.Position);
        Chunk? first = null, last = null;
        long total = 0;
        int growing = 64 << 10;
        while (true)
        {
            int size = stream.CanSeek
                ? (int)Math.Clamp(stream.Length - stream.Position, 1, MaxChunk)
                : growing;
            growing = Math.Min(2 * growing, MaxChunk);
            var buf = new byte[size];
            int filled = 0;
            while (filled < size)
            {
                int got = stream.Read(buf, filled, size - filled);
                if (got == 0) break;
                filled += got;
            }
            if (filled == 0) break;
            total += filled;
            if (total > MaxFileBytes) throw TooLarge(total);
            var chunk = new Chunk(buf.AsMemory(0, filled), total - filled);
            if (last is null) first = chunk; else last.SetNext(chunk);
            last = chunk;
            if (filled < size) break;
        }
        return first is null ? ReadOnlySequence<byte>.Empty : new ReadOnlySequence<byte>(first, 0, last!, last!.Memory.Length);
    }

    private sealed class Chunk : ReadOnlySequenceSegment<byte>
    {
        public Chunk(ReadOnlyMemory<byte> memory, long runningIndex) { Memory = memory; RunningIndex = runningIndex; }
        public void SetNext(Chunk next) => Next = next;
    }
}

/// <summary>Size limits shared by the reader and <see cref="PalmCheckpoint.Validate"/>, so whatever saves also loads.</summary>
internal static class FormatLimits
{
    public const int MaxKeyBytes = 256;
    public const int MaxNameBytes = 1024;
    public const int MaxPatternBytes = 1 << 20;
    public const int MaxSpecialTokenBytes = 1024;
    public const int MaxRank = 8;
}
