using Xunit;

namespace Ddpm.Tests.Tool;

/// <summary>--bucket-mb of train and bench: a size outside 0 .. 1024 MB is one line naming the option, exit code 2.</summary>
public sealed class BucketOptionTests
{
    [Theory]
    [InlineData(new[] { "train", "--preset", "tiny", "--steps", "2", "--bucket-mb", "-1" }, "--bucket-mb must be between 0 and 1024, got -1.")]
    [InlineData(new[] { "train", "--preset", "tiny", "--steps", "2", "--bucket-mb", "NaN" }, "--bucket-mb must be between 0 and 1024, got NaN.")]
    [InlineData(new[] { "bench", "--preset", "tiny", "--bucket-mb", "4096" }, "--bucket-mb must be between 0 and 1024, got 4096.")]
    public void ABucketSizeOutOfRangeIsRefused(string[] args, string message) => ToolTests.AssertBadUsage(args, message);
}
