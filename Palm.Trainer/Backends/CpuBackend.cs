// The CPU training backend: the fast CPU path (FastCpuBackward + FastOptimizer, preallocated and
// fused; checked against ReferenceBackward / ReferenceOptimizer by tests/Palm.Tests/FastCpu), all
// in float32 on the host. Gradients are accumulated over micro-batches.
using Palm.Inference.Cpu;
using Palm.Inference.Model;
using Palm.Trainer.FastCpu;
using Palm.Trainer.Optim;

namespace Palm.Trainer.Backends;

internal sealed class CpuBackend(PalmParameters parameters) : ITrainingBackend
{
    private readonly FastCpuBackward _backward = new(parameters);
    private readonly FastOptimizer _optimizer = new(parameters);
    private readonly OptimizerState _state = OptimizerState.For(parameters);
    private PalmParameters? _sum;

    public string Description => "cpu (fast path, float32)";

    public (double Loss, double GradNorm) Step(IReadOnlyList<MicroBatch> micro, int batch, int t, StepHyper hp, long adamStep)
    {
        double loss = 0;
        PalmParameters grads;
        if (micro.Count == 1)
        {
            loss = _backward.LossAndGradients(micro[0].X, micro[0].Y, batch, t);
            grads = _backward.Grads;
        }
        else
        {
            // Scaling each micro-batch by 1/accum makes the sum the gradient of the mean loss.
            grads = _sum ??= new PalmParameters(parameters.Config);
            foreach (var g in grads.All) Array.Clear(g.Data);
            float scale = 1f / micro.Count;
            foreach (var mb in micro)
            {
                loss += _backward.LossAndGradients(mb.X, mb.Y, batch, t);
                var src = _backward.Grads.All;
                for (int i = 0; i < src.Count; i++)
                    System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(src[i].Data, scale, grads.All[i].Data, grads.All[i].Data);
            }
            loss /= micro.Count;
        }
        double norm = _optimizer.Step(parameters, grads, _state, hp, adamStep);
        return (loss, norm);
    }

    public double Loss(int[] x, int[] y, int batch, int t) =>
        CpuOps.CrossEntropy(_backward.Model.Forward(x, batch, t), y, parameters.Config.VocabSize);

    public PalmParameters ReadParameters() => parameters;

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
