// The CPU reference backend: ReferenceBackward for the gradients (accumulated over micro-batches)
// and ReferenceOptimizer for clip + Muon + AdamW, all in float32 on the host.
using Palm.Inference.Cpu;
using Palm.Inference.Model;
using Palm.Trainer.Cpu;
using Palm.Trainer.Optim;

namespace Palm.Trainer.Backends;

internal sealed class CpuBackend(PalmParameters parameters) : ITrainingBackend
{
    private readonly CpuReferenceModel _model = new(parameters);
    private readonly OptimizerState _state = OptimizerState.For(parameters);

    public string Description => "cpu (reference)";

    public (double Loss, double GradNorm) Step(IReadOnlyList<MicroBatch> micro, int batch, int t, StepHyper hp, long adamStep)
    {
        var grads = new PalmParameters(_model.Config);
        double loss = 0;
        // Scaling each micro-batch by 1/accum makes the sum the gradient of the mean loss.
        foreach (var mb in micro) loss += ReferenceBackward.Accumulate(_model, mb.X, mb.Y, batch, t, grads, 1f / micro.Count);
        double norm = ReferenceOptimizer.Step(_model.Parameters, grads, _state, hp, adamStep);
        return (loss / micro.Count, norm);
    }

    public double Loss(int[] x, int[] y, int batch, int t) => CpuOps.CrossEntropy(_model.Forward(x, batch, t), y, _model.Config.VocabSize);

    public PalmParameters ReadParameters() => _model.Parameters;

    public OptimizerState ReadMoments()
    {
        var s = new OptimizerState();
        foreach (var (k, m) in _state.M) s.M[k] = (float[])m.Clone();
        foreach (var (k, v) in _state.V) s.V[k] = (float[])v.Clone();
        return s;
    }

    public void WriteMoments(OptimizerState state)
    {
        foreach (var (k, m) in _state.M) state.M[k].CopyTo(m, 0);
        foreach (var (k, v) in _state.V) state.V[k].CopyTo(v, 0);
    }

    public void Dispose() { }
}
