// Text generation on the CPU reference: one parallel prefill of the prompt, then one recurrent
// step per token through the O(1) AoD state, streaming complete UTF-8 pieces. The engine-facing
// session API (Palm.Inference issue) builds on the same two operations.
using Palm.Inference.Cpu;
using Palm.Inference.Model;
using Palm.Inference.Tokenizer;

namespace Palm.Inference.Sampling;

/// <summary>Generates text from a model and its tokenizer on the CPU.</summary>
public sealed class CpuTextGenerator(PalmParameters parameters, BpeTokenizer tokenizer)
{
    private readonly CpuReferenceModel _model = new(parameters);

    /// <summary>
    /// Streams up to <paramref name="maxTokens"/> generated pieces after <paramref name="prompt"/>;
    /// stops early at the end-of-text token.
    /// </summary>
    public IEnumerable<string> Generate(string prompt, int maxTokens, SamplerOptions options, ulong seed)
    {
        if (tokenizer.VocabSize > parameters.Config.VocabSize)
            throw new InvalidOperationException($"tokenizer has {tokenizer.VocabSize} tokens but the model only {parameters.Config.VocabSize}");
        var state = new AodStateSet(parameters.Config, 1);
        var rng = new Rng(seed);
        var ids = tokenizer.Encode(prompt);
        if (ids.Length == 0) ids = [tokenizer.EotId];
        int V = parameters.Config.VocabSize;
        var logits = _model.Forward(ids, 1, ids.Length, state).AsSpan((ids.Length - 1) * V, V).ToArray();
        var decoder = new StreamingDecoder(tokenizer);
        // One sampler for the whole generation: its buffers are reused for every token.
        var sampler = new TokenSampler(V);
        var settings = new SamplingSettings(options.Temperature, options.TopK, options.TopP, 0f, 1f, 0f, 0f, null);
        var noHistory = new RecentTokens(0);
        for (int i = 0; i < maxTokens; i++)
        {
            int next = sampler.Sample(logits, settings, noHistory, rng);
            if (next == tokenizer.EotId) break;
            var piece = decoder.Append(next);
            if (piece.Length > 0) yield return piece;
            _model.Step([next], state, logits);
        }
        var rest = decoder.Flush();
        if (rest.Length > 0) yield return rest;
    }
}
