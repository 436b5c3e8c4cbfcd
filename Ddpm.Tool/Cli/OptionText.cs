using System.Globalization;
using Ddpm.Diffusion;
using Ddpm.Diffusion.Data;

namespace Ddpm.Tool;

/// <summary>Option values that are not a single number or name: lists and ranges.</summary>
public static class OptionText
{
    /// <summary>"1,2,2,4" as integers.</summary>
    public static int[] Ints(string text, string option)
    {
        try
        {
            return text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
                .Select(s => int.Parse(s, NumberStyles.Integer, CultureInfo.InvariantCulture)).ToArray();
        }
        catch (Exception e) when (e is FormatException or OverflowException)
        {
            throw new UsageError($"{option} takes comma-separated integers, e.g. 1,2,2,4; got '{text}'.");
        }
    }

    /// <summary>The option that sets each config key (the keys <see cref="ConfigValueException"/> names).</summary>
    private static readonly Dictionary<string, string> OptionOfKey = new()
    {
        ["image_channels"] = "--image-channels", ["image_size"] = "--image-size", ["n_channels"] = "--n-channels",
        ["ch_mults"] = "--ch-mults", ["is_attn"] = "--attn", ["n_blocks"] = "--n-blocks", ["n_groups"] = "--n-groups",
        ["dropout"] = "--dropout", ["n_heads"] = "--n-heads", ["n_steps"] = "--diffusion-steps", ["batch_size"] = "--batch",
        ["lr"] = "--lr", ["warmup_steps"] = "--warmup", ["grad_clip"] = "--grad-clip", ["ema_decay"] = "--ema",
        ["lr_final"] = "--lr-final", ["decay_steps"] = "--steps", ["min_snr_gamma"] = "--min-snr-gamma", ["preset"] = "--preset",
        ["class_dropout"] = "--class-dropout", ["seed"] = "--seed", ["attn_norm"] = "--attn-norm", ["prediction"] = "--prediction",
        ["loss_weighting"] = "--loss-weighting", ["data"] = "--data", ["max_images"] = "--max-images", ["classes"] = "--classes",
        ["steps"] = "--steps", ["epochs"] = "--epochs", ["grad_accum"] = "--grad-accum", ["checkpoint_every"] = "--checkpoint-every",
        ["keep"] = "--keep", ["sample_every"] = "--sample-every", ["samples"] = "--samples", ["sample_sampler"] = "--sample-sampler", ["sample_steps"] = "--sample-steps",
        ["eval_every"] = "--eval-every", ["eval_samples"] = "--eval-samples",
    };

    /// <summary>A config value the options produced, refused as a usage error naming the option ("--image-size 30 must be ...").</summary>
    public static UsageError ConfigError(ConfigValueException e) =>
        new($"{(OptionOfKey.TryGetValue(e.Key, out var option) ? option : e.Key)} {e.Problem}");

    /// <summary>"-1,1" or "0,1".</summary>
    public static DataRange Range(string text, string option) => text.Replace(" ", "") switch
    {
        "-1,1" => DataRange.MinusOneToOne,
        "0,1" => DataRange.ZeroToOne,
        _ => throw new UsageError($"{option} is -1,1 or 0,1, not '{text}'."),
    };
}
