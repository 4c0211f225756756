// Workgroup-count helpers shared by the kernel wrappers.
namespace Palm.Gpu.Kernels;

internal static class Grid
{
    public static uint CeilDiv(long n, uint d) => (uint)((n + d - 1) / d);

    /// <summary>
    /// A 2D grid of at least <paramref name="rows"/> workgroups whose x extent respects
    /// maxComputeWorkGroupCount[0] (guaranteed only 65535); shaders flatten it back with
    /// flat_workgroup_id() (shaders/common.glsl) and skip ids past the end.
    /// </summary>
    public static (uint X, uint Y) Rows(long rows, uint maxX)
    {
        var x = (uint)Math.Min(rows, maxX);
        return (x, CeilDiv(rows, x));
    }

    public static uint NextPow2(uint v)
    {
        var p = 1u;
        while (p < v) p <<= 1;
        return p;
    }
}
