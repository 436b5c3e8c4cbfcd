using System.Buffers.Binary;
using Ddpm.Diffusion.Training;
using Ddpm.Tests.Data;
using Xunit;

namespace Ddpm.Tests.IO;

/// <summary>The TFRecord framing of TensorBoard event files (the records themselves are checked by .ci/tensorboard-check.sh with Python's protobuf).</summary>
public sealed class EventFileTests
{
    [Fact]
    public void Crc32CMatchesItsKnownAnswers()
    {
        // RFC 3720 (iSCSI) B.4: 32 bytes of zeros, of 0xff, and ascending; and the common check value of "123456789".
        Assert.Equal(0x8a9136aau, EventFile.Crc32C(new byte[32]));
        Assert.Equal(0x62a8ab43u, EventFile.Crc32C(Enumerable.Repeat((byte)0xff, 32).ToArray()));
        Assert.Equal(0x46dd794eu, EventFile.Crc32C(Enumerable.Range(0, 32).Select(i => (byte)i).ToArray()));
        Assert.Equal(0xe3069283u, EventFile.Crc32C("123456789"u8));
    }

    [Fact]
    public void RecordsAreFramedWithTheirLengthsAndMaskedCrcs()
    {
        using var dir = new TempDir();
        string path;
        using (var events = new EventFile(dir.Path))
        {
            events.Scalar("train/loss", 3, 0.25);
            path = events.Path;
        }
        Assert.StartsWith("events.out.tfevents.", Path.GetFileName(path));
        var bytes = File.ReadAllBytes(path);
        int at = 0, records = 0;
        while (at < bytes.Length)
        {
            ulong length = BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(at));
            uint crc = EventFile.Crc32C(bytes.AsSpan(at, 8));
            Assert.Equal(((crc >> 15) | (crc << 17)) + 0xa282ead8u, BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(at + 8)));
            var data = bytes.AsSpan(at + 12, (int)length);
            Assert.Equal(EventFile.MaskedCrc(data), BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(at + 12 + (int)length)));
            at += 16 + (int)length;
            records++;
        }
        Assert.Equal(bytes.Length, at);
        // The file version, then the scalar: its tag and its float (fixed32 little-endian) are in the second record.
        Assert.Equal(2, records);
        Assert.True(bytes.AsSpan().IndexOf("brain.Event:2"u8) is > 12 and < 64);
        var floatBytes = new byte[4];
        BinaryPrimitives.WriteSingleLittleEndian(floatBytes, 0.25f);
        Assert.True(bytes.AsSpan().IndexOf("train/loss"u8) > 0);
        Assert.True(bytes.AsSpan().IndexOf(floatBytes) > bytes.AsSpan().IndexOf("train/loss"u8));
    }
}
