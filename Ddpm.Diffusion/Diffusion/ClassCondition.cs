namespace Ddpm.Diffusion.Diffusion;

/// <summary>
/// Class conditioning for sampling with classifier-free guidance (Ho and Salimans 2022): one class label per
/// sample and the guidance weight w. The model's eps is eps_u + w (eps_c - eps_u), with eps_u the prediction for
/// the null class and eps_c for the label: w = 0 is the unconditional model, w = 1 the conditional one, w &gt; 1
/// pushes samples further toward their class.
/// </summary>
public sealed record ClassCondition
{
    /// <summary>Conditions samples on <paramref name="labels"/> (one class per sample, 0..K-1) with guidance weight <paramref name="guidance"/>.</summary>
    public ClassCondition(int[] labels, float guidance)
    {
        ArgumentNullException.ThrowIfNull(labels);
        if (!float.IsFinite(guidance) || guidance < 0)
            throw new ArgumentOutOfRangeException(nameof(guidance), $"The guidance weight must be a finite number >= 0, not {guidance}.");
        Labels = labels;
        Guidance = guidance;
    }

    /// <summary>The guidance weight of the command line's --class: w = 3.</summary>
    public const float DefaultGuidance = 3f;

    public int[] Labels { get; }
    public float Guidance { get; }

    /// <summary>The same class for each of <paramref name="n"/> samples.</summary>
    public static ClassCondition All(int n, int label, float guidance) => new(Enumerable.Repeat(label, n).ToArray(), guidance);

    /// <summary>
    /// <paramref name="perClass"/> samples of each of <paramref name="classes"/> classes in class order (a grid
    /// with one row per class when the row is <paramref name="perClass"/> wide).
    /// </summary>
    public static ClassCondition Rows(int classes, int perClass, float guidance) =>
        new(Enumerable.Range(0, classes).SelectMany(c => Enumerable.Repeat(c, perClass)).ToArray(), guidance);
}
