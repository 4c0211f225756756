// The Vulkan backend: Palm.Gpu's VulkanTraining holds the weights, gradients and optimizer
// moments on the device and runs a whole step (forward, loss, backward, clip, Muon, AdamW) in
// one queue submission. With grad_accum > 1 each micro-batch is one submission that folds its
// gradients into a running sum on the device (CPU backend's order), then one optimizer submission.
// Weights and moments come back to the host only for checkpoints, samples and the caller.
using Palm.Inference.Backends;
using Palm.Gpu;
using Palm.Gpu.Model;
using Palm.Gpu.Training;
using Palm.Gpu.Vulkan;
using Palm.Inference.Model;
using Palm.Trainer.Commands;
using Palm.Trainer.Optim;

namespace Palm.Trainer.Backends;

internal sealed class VulkanBackend : ITrainingBackend
{
    private readonly VulkanContext _ctx;
    private readonly VulkanTraining _gpu;
    private readonly PalmParameters _host;   // refreshed from the device by ReadParameters
    private readonly bool _muonHalf;

    private VulkanBackend(VulkanContext ctx, VulkanTraining gpu, PalmParameters host, bool muonHalf)
    {
        _ctx = ctx; _gpu = gpu; _host = host; _muonHalf = muonHalf;
    }

    /// <summary>
    /// Opens the device (<paramref name="device"/>: index or name substring; empty = PALM_VK_DEVICE
    /// or the best) and uploads <paramref name="parameters"/>. <paramref name="muonFp16"/>: Muon's
    /// Newton-Schulz in f16 arithmetic (config muon_fp16).
    /// </summary>
    /// <exception cref="UserError">No usable Vulkan device, the selector matches none, or muon_fp16 on a device without f16 arithmetic.</exception>
    public static VulkanBackend Open(PalmParameters parameters, string device, bool muonFp16 = false)
    {
        var options = VulkanOptions.FromEnvironment();
        if (!string.IsNullOrWhiteSpace(device)) options = options with { Device = device };
        VulkanContext ctx;
        try { ctx = VulkanContext.Create(options); }
        catch (GpuUnavailableException e)
        {
            throw new UserError($"config.backend: vulkan: no usable Vulkan device ({e.Message}); install a Vulkan driver (scripts/setup.sh installs lavapipe) or use backend=cpu");
        }
        try
        {
            if (muonFp16) CheckMuonFp16(ctx.Capabilities);
            var gpu = new VulkanTraining(ctx, GpuMapping.ToGpu(parameters.Config), GpuMapping.ToGpuWeights(parameters));
            return new VulkanBackend(ctx, gpu, parameters, muonFp16);
        }
        catch
        {
            ctx.Dispose();
            throw;
        }
    }


    /// <summary>Refuses muon_fp16 where the device cannot do f16 arithmetic: no silent fallback to fp32.</summary>
    /// <exception cref="UserError">The device lacks shaderFloat16.</exception>
    internal static void CheckMuonFp16(GpuCapabilities caps)
    {
        if (!caps.ShaderFloat16)
            throw new UserError($"config.muon_fp16: {caps.DeviceName} has no f16 arithmetic (shaderFloat16); set muon_fp16=false");
    }

    public string Description => $"vulkan ({_ctx.Capabilities.DeviceName}, {_ctx.Capabilities.DeviceType}){(_muonHalf ? ", muon fp16" : "")}";

    public (double Loss, double GradNorm) Step(IReadOnlyList<MicroBatch> micro, int batch, int t, StepHyper hp, long adamStep)
    {
        var h = new GpuStepHyper(hp.MuonLr, hp.AdamLr, hp.WeightDecay, hp.MuonBeta, hp.AdamBeta1, hp.AdamBeta2, hp.AdamEps, hp.Clip, adamStep, _muonHalf);
        if (micro.Count == 1)
        {
            var r = _gpu.Step(micro[0].X, micro[0].Y, batch, t, h);
            return (r.Loss, r.GradNorm);
        }
        // Same sums as CpuBackend (each micro-batch's gradient scaled by 1/accum, added in order),
        // formed on the device: no gradient leaves it.
        double loss = 0;
        for (int i = 0; i < micro.Count; i++) loss += _gpu.AccumulateMicroBatch(micro[i].X, micro[i].Y, batch, t, i, micro.Count);
        double norm = _gpu.ApplyOptimizer(h);
        return (loss / micro.Count, norm);
    }

    public double Loss(int[] x, int[] y, int batch, int t) => _gpu.ForwardLoss(x, y, batch, t);

    public PalmParameters ReadParameters()
    {
        foreach (var p in _host.All) _gpu.Read(p.Name, ParamSlot.Value).CopyTo(p.Data, 0);
        return _host;
    }

    public OptimizerState ReadMoments()
    {
        var s = new OptimizerState();
        foreach (var p in _host.All)
        {
            s.M[p.Name] = _gpu.Read(p.Name, ParamSlot.M);
            if (!_gpu.IsMuon(p.Name)) s.V[p.Name] = _gpu.Read(p.Name, ParamSlot.V);
        }
        return s;
    }

    public void WriteMoments(OptimizerState state)
    {
        foreach (var (name, m) in state.M) _gpu.Write(name, ParamSlot.M, m);
        foreach (var (name, v) in state.V) _gpu.Write(name, ParamSlot.V, v);
    }

    public void Dispose()
    {
        _gpu.Dispose();
        _ctx.Dispose();
    }
}
