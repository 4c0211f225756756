// Tolerance checks shared by every numerical test: |got - ref| <= atol + rtol*|ref|, reporting
// the worst element and the first mismatch so a failure says where and by how much.
namespace Palm.Tests;

public static class Numerics
{
    /// <summary>Fails unless every element is within atol + rtol*|ref|; the message names the worst one.</summary>
    public static void AssertClose(ReadOnlySpan<float> got, ReadOnlySpan<float> expected, double atol, double rtol, string what, Func<int, string>? where = null)
    {
        if (got.Length != expected.Length) Assert.Fail($"{what}: length {got.Length}, expected {expected.Length}");
        double worst = 0, worstExcess = double.NegativeInfinity; int worstAt = -1, firstBad = -1, bad = 0;
        for (int i = 0; i < got.Length; i++)
        {
            double e = Math.Abs((double)got[i] - expected[i]);
            double lim = atol + rtol * Math.Abs(expected[i]);
            if (double.IsNaN(e)) e = double.PositiveInfinity;
            if (e - lim > worstExcess) { worstExcess = e - lim; worstAt = i; worst = e; }
            if (e > lim) { bad++; if (firstBad < 0) firstBad = i; }
        }
        if (bad > 0)
        {
            string W(int i) => where is null ? $"[{i}]" : where(i);
            Assert.Fail($"{what}: {bad}/{got.Length} elements outside atol={atol:g3} rtol={rtol:g3}; worst abs err {worst:g4} at {W(worstAt)} " +
                        $"(got {got[worstAt]:g9}, ref {expected[worstAt]:g9}); first mismatch at {W(firstBad)} (got {got[firstBad]:g9}, ref {expected[firstBad]:g9})");
        }
    }

    /// <summary>max|got - ref| <= relTol * max|ref|, the golden README's per-tensor rule.</summary>
    public static void AssertCloseRelMax(ReadOnlySpan<float> got, ReadOnlySpan<float> expected, double relTol, string what)
    {
        double maxRef = 0;
        foreach (var v in expected) maxRef = Math.Max(maxRef, Math.Abs(v));
        AssertClose(got, expected, relTol * maxRef, 0, what + $" (tol {relTol:g3}*max|ref|={relTol * maxRef:g3})");
    }

    public static double MaxAbsDiff(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        double m = 0;
        for (int i = 0; i < a.Length; i++) m = Math.Max(m, Math.Abs((double)a[i] - b[i]));
        return m;
    }
}
