// GPTQ (Frantar et al. 2022): rounds a linear weight W (N, K) so that the layer's outputs on
// calibration inputs move as little as possible, rather than the weights themselves. Columns (input
// features) are rounded in order; each column's rounding error is pushed onto the columns not yet
// rounded through the inverse of H = Σ x xᵀ (the Hessian of the squared output error over the
// calibration inputs x of this layer), so later columns compensate for earlier ones. The stored
// format is unchanged: symmetric levels and one scale per group, the scale chosen when the group's
// first column is reached, from the weights as compensated so far.
using Palm.Inference.Checkpoint;

namespace Palm.Inference.Quantization;

internal static class GptqQuantizer
{
    /// <summary>Dampening added to H's diagonal, as a fraction of its mean diagonal (GPTQ's 1 %).</summary>
    public const double DefaultDamping = 0.01;

    // Scale candidates max|w|/MaxLevel · f, f = 1, 0.97, ... : on rows of 32 one outlier sets the
    // max scale and leaves most weights on two or three levels; a slightly smaller scale clips that
    // outlier by a fraction of a step and resolves the rest better. f stops at 0.70: going on to
    // 0.52 moved the built-in model's q4 val perplexity by 0.01 (docs/quantization.md).
    private const int ScaleCandidates = 11;
    private const double ScaleStep = 0.03;

    /// <summary>
    /// Quantizes <paramref name="weights"/> (N, K) with error feedback through <paramref name="hessian"/>.
    /// </summary>
    /// <param name="weights">W (N, K) row-major, finite.</param>
    /// <param name="rows">N, output features.</param>
    /// <param name="cols">K, input features.</param>
    /// <param name="hessian">H (K, K) = Σ x xᵀ over calibration inputs x (K) of this layer; symmetric,
    /// positive semi-definite. Not modified.</param>
    /// <param name="dtype">q8 or q4.</param>
    /// <param name="groupSize">Elements per scale; divides K.</param>
    /// <param name="damping">Fraction of H's mean diagonal added to its diagonal, &gt; 0.</param>
    /// <param name="searchScales">Choose each group's scale by the weighted search; false keeps max|w|/MaxLevel.</param>
    /// <exception cref="ArgumentException">Sizes that disagree, a non-finite weight or Hessian entry,
    /// or a scale beyond float16's range (q4).</exception>
    public static QuantizedTensor Quantize(ReadOnlySpan<float> weights, int rows, int cols, ReadOnlySpan<double> hessian,
                                           TensorDType dtype, int groupSize, double damping = DefaultDamping, bool searchScales = true)
    {
        int max = QuantizedTensor.MaxLevel(dtype);
        if (rows <= 0 || cols <= 0 || weights.Length != (long)rows * cols)
            throw new ArgumentException($"W ({rows}, {cols}) does not hold {weights.Length} elements", nameof(weights));
        if (hessian.Length != (long)cols * cols) throw new ArgumentException($"H holds {hessian.Length} entries, expected K*K = {cols * cols}", nameof(hessian));
        if (groupSize <= 0 || cols % groupSize != 0) throw new ArgumentException($"group size {groupSize} does not divide K = {cols}", nameof(groupSize));
        if (!(damping > 0 && double.IsFinite(damping))) throw new ArgumentException($"damping must be > 0, got {damping}", nameof(damping));

        var w = new double[weights.Length];
        for (int i = 0; i < w.Length; i++)
        {
            if (!float.IsFinite(weights[i])) throw new ArgumentException($"element {i} is {weights[i]}; only finite values quantize", nameof(weights));
            w[i] = weights[i];
        }
        var u = InverseCholeskyFactor(hessian, cols, damping);
        var hDiag = new double[cols];
        for (int k = 0; k < cols; k++) hDiag[k] = hessian[k * cols + k];

        var levels = new sbyte[weights.Length];
        var scales = new float[rows * (cols / groupSize)];
        for (int c = 0; c < cols; c++)
        {
            if (c % groupSize == 0)
                for (int n = 0; n < rows; n++)
                    scales[n * (cols / groupSize) + c / groupSize] = ChooseScale(w.AsSpan(n * cols + c, groupSize), hDiag.AsSpan(c, groupSize), max, dtype, searchScales ? ScaleCandidates : 1);
            double d = u[c * cols + c];
            for (int n = 0; n < rows; n++)
            {
                var row = w.AsSpan(n * cols, cols);
                float s = scales[n * (cols / groupSize) + c / groupSize];
                int q = Level(row[c], s, max);
                levels[n * cols + c] = (sbyte)q;
                // The OBS update restricted to the columns still free: δw_j = -err · U[c, j] / U[c, c].
                double err = (row[c] - q * (double)s) / d;
                for (int j = c + 1; j < cols; j++) row[j] -= err * u[c * cols + j];
            }
        }
        return QuantizedTensor.FromLevels(dtype, groupSize, levels, scales);
    }

    /// <summary>
    /// Σ over rows n of ΔW_n H ΔW_nᵀ with ΔW = W - dequantize(q): the summed squared change of the
    /// layer's outputs over the calibration inputs, the quantity GPTQ minimises.
    /// </summary>
    /// <exception cref="ArgumentException">Sizes that disagree.</exception>
    public static double OutputError(ReadOnlySpan<float> weights, QuantizedTensor q, ReadOnlySpan<double> hessian, int cols)
    {
        if (cols <= 0 || weights.Length != q.Length || weights.Length % cols != 0 || hessian.Length != (long)cols * cols)
            throw new ArgumentException($"W of {weights.Length} elements, q of {q.Length}, K = {cols}, H of {hessian.Length} disagree");
        var back = q.Dequantize();
        var d = new double[cols];
        double total = 0;
        for (int n = 0; n < weights.Length / cols; n++)
        {
            for (int k = 0; k < cols; k++) d[k] = (double)weights[n * cols + k] - back[n * cols + k];
            for (int i = 0; i < cols; i++)
            {
                double s = 0;
                for (int j = 0; j < cols; j++) s += hessian[i * cols + j] * d[j];
                total += d[i] * s;
            }
        }
        return total;
    }

    private static int Level(double w, float s, int max) =>
        s == 0 ? 0 : (int)Math.Clamp(Math.Round(w / s, MidpointRounding.ToEven), -max, max);

    /// <summary>
    /// The stored scale (a float16 value for q4) among max|w|/max · (1, 0.97, ...) that minimises the
    /// group's rounding error weighted by H's diagonal (how strongly each input feature is driven).
    /// </summary>
    private static float ChooseScale(ReadOnlySpan<double> group, ReadOnlySpan<double> weight, int max, TensorDType dtype, int candidates)
    {
        double amax = 0;
        foreach (var v in group) amax = Math.Max(amax, Math.Abs(v));
        if (amax == 0) return 0;
        float best = 0;
        double bestErr = double.PositiveInfinity;
        for (int i = 0; i < candidates; i++)
        {
            float s = (float)(amax / max * (1 - i * ScaleStep));
            if (dtype == TensorDType.Q4)
            {
                var h = (Half)s;
                if (Half.IsInfinity(h)) throw new ArgumentException($"max |w| = {amax} exceeds what a float16 scale can hold");
                s = (float)h;
            }
            if (s == 0) continue;
            double err = 0;
            for (int j = 0; j < group.Length; j++)
            {
                double e = group[j] - Level(group[j], s, max) * (double)s;
                err += weight[j] * e * e;
            }
            if (err < bestErr) { bestErr = err; best = s; }
        }
        return best;
    }

    /// <summary>
    /// U (K, K) upper triangular with (H + λI)⁻¹ = Uᵀ U, λ = damping · mean(diag H). Row c of U,
    /// divided by U[c, c], is how a rounding error in column c spreads over columns c+1.. once columns
    /// 0..c-1 are fixed (the Cholesky form of GPTQ's sequence of inverse Hessians).
    /// </summary>
    private static double[] InverseCholeskyFactor(ReadOnlySpan<double> hessian, int k, double damping)
    {
        var h = hessian.ToArray();
        double mean = 0;
        for (int i = 0; i < k; i++)
        {
            for (int j = 0; j < k; j++)
                if (!double.IsFinite(h[i * k + j])) throw new ArgumentException($"H[{i}, {j}] is {h[i * k + j]}", nameof(hessian));
            mean += h[i * k + i];
        }
        mean /= k;
        if (!(mean > 0)) mean = 1;
        for (int i = 0; i < k; i++)
        {
            // An input feature that was never active carries no information about its weights:
            // round those like round-to-nearest (no coupling) and keep H invertible.
            if (h[i * k + i] <= 0)
            {
                for (int j = 0; j < k; j++) h[i * k + j] = h[j * k + i] = 0;
                h[i * k + i] = mean;
            }
        }
        // Float64 Cholesky fails only when H is indefinite beyond what the damping covers
        // (rounding in the accumulated Gram matrix); more damping is the standard remedy.
        for (double lambda = damping * mean; ; lambda *= 10)
        {
            var a = (double[])h.Clone();
            for (int i = 0; i < k; i++) a[i * k + i] += lambda;
            if (TryCholesky(a, k) && TryInvertFromCholesky(a, k, out var inv) && TryCholesky(inv, k))
            {
                // inv now holds G lower with (H + λI)⁻¹ = G Gᵀ; U = Gᵀ.
                var u = new double[k * k];
                for (int i = 0; i < k; i++)
                    for (int j = i; j < k; j++) u[i * k + j] = inv[j * k + i];
                return u;
            }
            if (lambda > 1e6 * mean) throw new ArgumentException("H is not positive semi-definite (Cholesky failed at any damping)", nameof(hessian));
        }
    }

    /// <summary>In place: the lower triangle of <paramref name="a"/> becomes L with A = L Lᵀ; the upper is zeroed.</summary>
    private static bool TryCholesky(double[] a, int k)
    {
        for (int j = 0; j < k; j++)
        {
            double d = a[j * k + j];
            for (int p = 0; p < j; p++) d -= a[j * k + p] * a[j * k + p];
            if (!(d > 0)) return false;
            double l = Math.Sqrt(d);
            a[j * k + j] = l;
            for (int i = j + 1; i < k; i++)
            {
                double s = a[i * k + j];
                for (int p = 0; p < j; p++) s -= a[i * k + p] * a[j * k + p];
                a[i * k + j] = s / l;
            }
            for (int i = 0; i < j; i++) a[i * k + j] = 0;
        }
        return true;
    }

    /// <summary>A⁻¹ = L⁻ᵀ L⁻¹ from the Cholesky factor L held in the lower triangle of <paramref name="l"/>.</summary>
    private static bool TryInvertFromCholesky(double[] l, int k, out double[] inverse)
    {
        // M = L⁻¹, lower triangular, by forward substitution column by column.
        var m = new double[k * k];
        for (int c = 0; c < k; c++)
        {
            m[c * k + c] = 1 / l[c * k + c];
            for (int i = c + 1; i < k; i++)
            {
                double s = 0;
                for (int p = c; p < i; p++) s += l[i * k + p] * m[p * k + c];
                m[i * k + c] = -s / l[i * k + i];
            }
        }
        inverse = new double[k * k];
        for (int i = 0; i < k; i++)
            for (int j = 0; j <= i; j++)
            {
                double s = 0;
                for (int p = i; p < k; p++) s += m[p * k + i] * m[p * k + j];
                inverse[i * k + j] = inverse[j * k + i] = s;
            }
        foreach (var v in inverse) if (!double.IsFinite(v)) return false;
        return true;
    }
}
