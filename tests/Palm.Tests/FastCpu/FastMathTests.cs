// FastMath: the fast path's own float exp, sigmoid and SwiGLU (inlined, no tiered library helper
// on the decode path) against double-precision values and the reference's CpuOps.SwiGlu.
using System.Runtime.Intrinsics;
using Palm.Inference.Cpu;
using Palm.Inference.Cpu.Fast;
using Palm.Inference.Model;

namespace Palm.Tests.FastCpu;

public class FastMathTests
{
    // Distance in units in the last place between two positive floats.
    private static int Ulps(float a, float b) => Math.Abs(BitConverter.SingleToInt32Bits(a) - BitConverter.SingleToInt32Bits(b));

    private static float[] Inputs(Rng rng, int n, double lo, double hi) =>
        Enumerable.Range(0, n).Select(_ => (float)(lo + rng.NextDouble() * (hi - lo))).ToArray();

    [Fact]
    public void ExpIsWithinTwoUlpOfTheCorrectlyRoundedValue()
    {
        ulong seed = TestSeed.Next();
        var rng = new Rng(seed);
        int worst = 0;
        float worstX = 0;
        // Mostly where the gates live (|x| < 20), some across the whole clamped range.
        foreach (var x in Inputs(rng, 100_000, -20, 20).Concat(Inputs(rng, 100_000, -87, 88)).Concat([0f, -0f, 1f, -1f, 88f, -87f]))
        {
            int u = Ulps(FastMath.Exp(x), (float)Math.Exp(x));
            if (u > worst) (worst, worstX) = (u, x);
        }
        Assert.True(worst <= 2, $"seed {seed}: exp({worstX:R}) is {worst} ulp from the correctly rounded {(float)Math.Exp(worstX):R} (got {FastMath.Exp(worstX):R})");
    }

    [Fact]
    public void ExpClampsOutOfRangeInputsAndKeepsNaN()
    {
        Assert.Equal(FastMath.Exp(88f), FastMath.Exp(1000f));
        Assert.Equal(FastMath.Exp(88f), FastMath.Exp(float.PositiveInfinity));
        Assert.Equal(FastMath.Exp(-87f), FastMath.Exp(float.NegativeInfinity));
        Assert.True(float.IsNormal(FastMath.Exp(-1000f)) && FastMath.Exp(-1000f) < 2e-38f);
        Assert.True(float.IsNaN(FastMath.Exp(float.NaN)));
        Assert.True(float.IsNaN(FastMath.Sigmoid(float.NaN)));
        Assert.Equal(1f, FastMath.Sigmoid(float.PositiveInfinity));
        Assert.True(FastMath.Sigmoid(float.NegativeInfinity) < 2e-38f);
        if (Vector256.IsHardwareAccelerated)
            Assert.True(float.IsNaN(FastMath.Exp(Vector256.Create(float.NaN)).GetElement(3)), "a NaN lane must stay NaN");
        if (Vector512.IsHardwareAccelerated)
            Assert.True(float.IsNaN(FastMath.Exp(Vector512.Create(float.NaN)).GetElement(9)), "a NaN lane must stay NaN");
    }

    [Fact]
    public void VectorLanesAreTheScalarFormulaBitForBit()
    {
        // The decoder's batched and single steps, and machines with and without AVX-512, must
        // agree on every gate: each lane is the scalar arithmetic exactly.
        ulong seed = TestSeed.Next();
        var rng = new Rng(seed);
        var x = Inputs(rng, 4096, -95, 95);
        for (int i = 0; i + 16 <= x.Length; i += 16)
        {
            if (Vector512.IsHardwareAccelerated)
            {
                var e = FastMath.Exp(Vector512.Create(x.AsSpan(i, 16)));
                var s = FastMath.Sigmoid(Vector512.Create(x.AsSpan(i, 16)));
                for (int j = 0; j < 16; j++)
                {
                    Assert.True(BitConverter.SingleToInt32Bits(FastMath.Exp(x[i + j])) == BitConverter.SingleToInt32Bits(e.GetElement(j)), $"seed {seed}: exp lane of {x[i + j]:R}");
                    Assert.True(BitConverter.SingleToInt32Bits(FastMath.Sigmoid(x[i + j])) == BitConverter.SingleToInt32Bits(s.GetElement(j)), $"seed {seed}: sigmoid lane of {x[i + j]:R}");
                }
            }
            if (Vector256.IsHardwareAccelerated)
            {
                var e = FastMath.Exp(Vector256.Create(x.AsSpan(i, 8)));
                for (int j = 0; j < 8; j++)
                    Assert.True(BitConverter.SingleToInt32Bits(FastMath.Exp(x[i + j])) == BitConverter.SingleToInt32Bits(e.GetElement(j)), $"seed {seed}: exp lane of {x[i + j]:R}");
            }
        }
    }

    [Fact]
    public void SigmoidIsWithinFourUlpOfTheDoubleValue()
    {
        ulong seed = TestSeed.Next();
        var rng = new Rng(seed);
        int worst = 0;
        float worstX = 0;
        foreach (var x in Inputs(rng, 100_000, -30, 30))
        {
            int u = Ulps(FastMath.Sigmoid(x), (float)(1 / (1 + Math.Exp(-(double)x))));
            if (u > worst) (worst, worstX) = (u, x);
        }
        Assert.True(worst <= 4, $"seed {seed}: sigmoid({worstX:R}) is {worst} ulp from the double value");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(7)]
    [InlineData(16)]
    [InlineData(23)]
    [InlineData(256)]
    [InlineData(300)]
    public unsafe void SwiGluMatchesTheReferenceWithAndWithoutAnAccumulator(int n)
    {
        ulong seed = TestSeed.Next();
        var rng = new Rng(seed);
        var ab = Inputs(rng, 2 * n, -6, 6);
        var acc = Inputs(rng, n, -2, 2);
        var want = new float[n];
        CpuOps.SwiGlu(ab, 1, n, want, accumulate: false);
        var wantAcc = (float[])acc.Clone();
        CpuOps.SwiGlu(ab, 1, n, wantAcc, accumulate: true);
        var got = new float[n];
        var gotAcc = (float[])acc.Clone();
        fixed (float* pab = ab, pg = got, pa = gotAcc)
        {
            FastMath.SwiGlu(pab, pab + n, null, pg, n);
            FastMath.SwiGlu(pab, pab + n, pa, pa, n);    // in place, as the decoder's residual
        }
        // Float arithmetic in another order: a few ulp of the larger terms.
        const double Tol = 2e-6;
        double worst = 0;
        for (int i = 0; i < n; i++)
        {
            worst = Math.Max(worst, Math.Abs(got[i] - want[i]) / (1 + Math.Abs(want[i])));
            worst = Math.Max(worst, Math.Abs(gotAcc[i] - wantAcc[i]) / (1 + Math.Abs(wantAcc[i])));
        }
        Assert.True(worst <= Tol, $"seed {seed} n={n}: worst relative error {worst:E2} > {Tol:E0}");
    }
}
