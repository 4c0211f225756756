// SampleWeights: the sampler's own exp and max (inlined, so that no tiered library helper sits on
// the per-token path) against Math.Exp and TensorPrimitives.Max.
using System.Numerics.Tensors;
using Palm.Gpu.Kernels;
using Palm.Inference.Model;

namespace Palm.Tests.Gpu;

public class SampleWeightsTests
{
    // Distance in units in the last place between two positive doubles.
    private static long Ulps(double a, double b) => Math.Abs(BitConverter.DoubleToInt64Bits(a) - BitConverter.DoubleToInt64Bits(b));

    [Fact]
    public void ExpIsWithinTwoUlpOfMathExpOverTheWeightsRange()
    {
        ulong seed = TestSeed.Next();
        var rng = new Rng(seed);
        long worst = 0;
        double worstX = 0;
        for (int i = 0; i < 200_000; i++)
        {
            // Mostly near 0 (the weights that matter), some all the way down to underflow.
            double x = i % 4 == 0 ? -rng.NextDouble() * 708 : -rng.NextDouble() * (i % 3 == 0 ? 1 : 40);
            long u = Ulps(SampleWeights.Exp(x), Math.Exp(x));
            if (u > worst) (worst, worstX) = (u, x);
        }
        Assert.True(worst <= 2, $"seed {seed}: exp({worstX:R}) is {worst} ulp from Math.Exp ({SampleWeights.Exp(worstX):R} vs {Math.Exp(worstX):R})");
    }

    [Fact]
    public void ExpHandlesTheEdges()
    {
        Assert.Equal(1.0, SampleWeights.Exp(0.0));
        Assert.Equal(1.0, SampleWeights.Exp(-0.0));
        Assert.Equal(0.0, SampleWeights.Exp(double.NegativeInfinity));
        Assert.Equal(0.0, SampleWeights.Exp(-800));
        Assert.True(double.IsNaN(SampleWeights.Exp(double.NaN)));
        // Subnormal results: close to the true value in absolute terms (a few subnormal steps).
        foreach (double x in new[] { -708.5, -720.0, -740.0, -745.0 })
            Assert.True(Math.Abs(SampleWeights.Exp(x) - Math.Exp(x)) <= 4 * double.Epsilon + 1e-15 * Math.Exp(x),
                $"exp({x}) = {SampleWeights.Exp(x):R}, Math.Exp {Math.Exp(x):R}");
        Assert.Equal(Math.Exp(1.0), SampleWeights.Exp(1.0), 15);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(7)]
    [InlineData(8)]
    [InlineData(2049)]
    public void ComputeIsTheScalarFormulaLaneForLane(int n)
    {
        ulong seed = TestSeed.Next();
        var rng = new Rng(seed);
        var l = Enumerable.Range(0, n).Select(i => i % 97 == 5 ? float.NegativeInfinity : (float)(rng.NextDouble() * 20 - 10)).ToArray();
        float max = l.Max();
        var w = new double[n];
        SampleWeights.Compute(l, max, 0.8, w);
        for (int i = 0; i < n; i++)
        {
            double want = SampleWeights.Exp(((double)l[i] - max) / 0.8);
            Assert.True(BitConverter.DoubleToInt64Bits(want) == BitConverter.DoubleToInt64Bits(w[i]), $"seed {seed}: weight {i} is {w[i]:R}, the scalar form {want:R}");
            Assert.True(Ulps(w[i], Math.Exp(((double)l[i] - max) / 0.8)) <= 2, $"seed {seed}: weight {i} is {w[i]:R}");
        }
    }

    [Fact]
    public void MaxAgreesWithTensorPrimitivesIncludingNaNAndSignedZeros()
    {
        ulong seed = TestSeed.Next();
        var rng = new Rng(seed);
        foreach (int n in new[] { 1, 5, 16, 17, 100, 4096 })
        {
            var l = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 8 - 4)).ToArray();
            Assert.Equal(TensorPrimitives.Max(l), SampleWeights.Max(l));
            l[rng.NextInt(n)] = float.NaN;
            Assert.True(float.IsNaN(SampleWeights.Max(l)), $"seed {seed} n={n}: a NaN logit must give NaN");
        }
        float[] zeros = [-0f, -0f, 0f, -1f, -0f, -2f, -3f, -4f, -5f, -6f, -7f, -8f, -9f, -10f, -11f, -12f, -13f];
        Assert.Equal(BitConverter.SingleToInt32Bits(TensorPrimitives.Max(zeros)), BitConverter.SingleToInt32Bits(SampleWeights.Max(zeros)));
        Assert.Equal(0, BitConverter.SingleToInt32Bits(SampleWeights.Max(zeros)));   // +0 above -0
    }
}
