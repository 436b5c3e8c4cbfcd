using Ddpm.Tensors;

namespace Ddpm.Tests.TestUtil;

/// <summary>Each unary op and its derivative in double: the reference for backend kernels.</summary>
internal static class UnaryReference
{
    public static double Value(UnaryOp op, double x) => op switch
    {
        UnaryOp.Neg => -x,
        UnaryOp.Exp => Math.Exp(x),
        UnaryOp.Log => Math.Log(x),
        UnaryOp.Sin => Math.Sin(x),
        UnaryOp.Cos => Math.Cos(x),
        UnaryOp.Sqrt => Math.Sqrt(x),
        UnaryOp.Square => x * x,
        UnaryOp.Sigmoid => 1 / (1 + Math.Exp(-x)),
        UnaryOp.Silu => x / (1 + Math.Exp(-x)),
        UnaryOp.Tanh => Math.Tanh(x),
        UnaryOp.Relu => Math.Max(x, 0),
        UnaryOp.Abs => Math.Abs(x),
        _ => throw new ArgumentOutOfRangeException(nameof(op)),
    };

    public static double Derivative(UnaryOp op, double x)
    {
        double s = 1 / (1 + Math.Exp(-x));
        return op switch
        {
            UnaryOp.Neg => -1,
            UnaryOp.Exp => Math.Exp(x),
            UnaryOp.Log => 1 / x,
            UnaryOp.Sin => Math.Cos(x),
            UnaryOp.Cos => -Math.Sin(x),
            UnaryOp.Sqrt => 0.5 / Math.Sqrt(x),
            UnaryOp.Square => 2 * x,
            UnaryOp.Sigmoid => s * (1 - s),
            UnaryOp.Silu => s * (1 + x * (1 - s)),
            UnaryOp.Tanh => 1 - Math.Tanh(x) * Math.Tanh(x),
            UnaryOp.Relu => x > 0 ? 1 : x <= 0 ? 0 : double.NaN,
            UnaryOp.Abs => double.IsNaN(x) ? double.NaN : Math.Sign(x),
            _ => throw new ArgumentOutOfRangeException(nameof(op)),
        };
    }
}
