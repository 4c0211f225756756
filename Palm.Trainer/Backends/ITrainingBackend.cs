// Where a training step runs. The trainer (Training/TrainingLoop.cs) owns everything that is the
// same on every backend: the batch sampler, the LR schedule, the Muon momentum warm-up, the loss
// history and the checkpoint's training state. A backend owns the weights and optimizer moments
// and does forward + backward + clip + Muon/AdamW; it reads them back on request so that CPU and
// Vulkan checkpoints are the same .palm files and either backend resumes the other's run.
using Palm.Inference.Model;
using Palm.Trainer.Commands;
using Palm.Trainer.Optim;

namespace Palm.Trainer.Backends;

/// <summary>One micro-batch: inputs and next-token targets, each (B, T) row-major.</summary>
internal readonly record struct MicroBatch(int[] X, int[] Y);

internal interface ITrainingBackend : IDisposable
{
    /// <summary>For the start-up line, e.g. <c>cpu (reference)</c> or <c>vulkan (llvmpipe ...)</c>.</summary>
    string Description { get; }

    /// <summary>
    /// One optimizer step: forward + backward of every micro-batch (gradients averaged), global
    /// norm clip, Muon on block matrices and AdamW (bias-correction step <paramref name="adamStep"/>,
    /// from 1) on the rest. Returns the mean loss of the micro-batches and the norm before clipping.
    /// </summary>
    (double Loss, double GradNorm) Step(IReadOnlyList<MicroBatch> micro, int batch, int t, StepHyper hp, long adamStep);

    /// <summary>Mean cross-entropy of the current weights on one (B, T) batch; no state changes.</summary>
    double Loss(int[] x, int[] y, int batch, int t);

    /// <summary>The current weights (a device backend reads them back into its host copy first).</summary>
    PalmParameters ReadParameters();

    /// <summary>Copies of the optimizer moments: M for every tensor, V for AdamW's.</summary>
    OptimizerState ReadMoments();

    /// <summary>Overwrites the optimizer moments (resume); shapes must match.</summary>
    void WriteMoments(OptimizerState state);
}

internal static class TrainingBackends
{
    /// <summary>The backend a config names, holding <paramref name="parameters"/> (the vulkan one uploads and keeps them as its host copy).</summary>
    /// <remarks><paramref name="muonFp16"/> is for vulkan only (TrainConfig.Validate refuses it with cpu).</remarks>
    /// <exception cref="UserError">Unknown backend, no usable Vulkan device, or muon_fp16 on a device without f16 arithmetic.</exception>
    public static ITrainingBackend Create(string backend, string device, bool muonFp16, PalmParameters parameters) => backend switch
    {
        "cpu" => new CpuBackend(parameters),
        "vulkan" => VulkanBackend.Open(parameters, device, muonFp16),
        _ => throw new UserError($"config.backend: must be \"cpu\" or \"vulkan\", got \"{backend}\""),
    };
}
