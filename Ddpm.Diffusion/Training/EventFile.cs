using System.Buffers.Binary;
using System.Numerics;
using Ddpm.Tensors.IO;
using Google.Protobuf;

namespace Ddpm.Diffusion.Training;

/// <summary>
/// A TensorBoard event file (<c>events.out.tfevents.TIME.HOST.PID</c>): TFRecord framing (a little-endian u64
/// length, its masked CRC32C, the record, the record's masked CRC32C) around protocol-buffer <c>Event</c>
/// messages, encoded with Google.Protobuf by the field numbers of TensorBoard's <c>event.proto</c> and
/// <c>summary.proto</c>: scalars (<c>Summary.Value.simple_value</c>), PNG images (<c>Summary.Image</c>) and text
/// (a string <c>TensorProto</c> with the text plugin's metadata). The first event names the file version; a run
/// that resumes at step N writes a <c>SessionLog</c> START at N, which tells TensorBoard to drop what a stopped run
/// logged after its checkpoint. Records wait in memory; <see cref="Flush"/> appends them whole (<see cref="AppendFile"/>),
/// so a failed write never leaves a torn record with others after it.
/// </summary>
public sealed class EventFile : IDisposable
{
    // event.proto: Event { double wall_time = 1; int64 step = 2; oneof what { string file_version = 3; Summary summary = 5; SessionLog session_log = 6; } }
    private const int EventWallTime = 1, EventStep = 2, EventFileVersion = 3, EventSummary = 5, EventSessionLog = 6;
    // SessionLog { enum SessionStatus { START = 1; ... } SessionStatus status = 1; }
    private const int SessionLogStatus = 1, StatusStart = 1;
    // summary.proto: Summary { repeated Value value = 1; }
    // Value { string tag = 1; float simple_value = 2; Image image = 4; TensorProto tensor = 8; SummaryMetadata metadata = 9; }
    private const int SummaryValue = 1, ValueTag = 1, ValueSimple = 2, ValueImage = 4, ValueTensor = 8, ValueMetadata = 9;
    // Image { int32 height = 1; int32 width = 2; int32 colorspace = 3; bytes encoded_image_string = 4; }
    private const int ImageHeight = 1, ImageWidth = 2, ImageColorspace = 3, ImageEncoded = 4;
    // SummaryMetadata { PluginData plugin_data = 1; } PluginData { string plugin_name = 1; bytes content = 2; }
    private const int MetadataPluginData = 1, PluginName = 1;
    // tensor.proto: TensorProto { DataType dtype = 1; TensorShapeProto tensor_shape = 2; repeated bytes string_val = 8; }
    private const int TensorDtype = 1, TensorShape = 2, TensorStringVal = 8, DtString = 7;

    /// <summary>The file version TensorBoard expects in the first event.</summary>
    public const string FileVersion = "brain.Event:2";

    private readonly AppendFile _file;

    /// <summary>The start of every event file's name.</summary>
    public const string NamePrefix = "events.out.tfevents.";

    /// <summary>
    /// A new event file in <paramref name="folder"/> (created if needed), written through <paramref name="files"/>
    /// (null: the disk). TensorBoard reads a folder's event files in name order, so the time in the name is at least
    /// a second after that of the folder's other event files (a run resumed within a second of its stop).
    /// </summary>
    public EventFile(string folder, IOutputFiles? files = null)
    {
        Directory.CreateDirectory(folder);
        long seconds = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        foreach (var other in Directory.EnumerateFiles(folder, NamePrefix + "*"))
        {
            string[] parts = System.IO.Path.GetFileName(other)[NamePrefix.Length..].Split('.');
            if (long.TryParse(parts[0], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out long t))
                seconds = Math.Max(seconds, t + 1);
        }
        string name = $"{NamePrefix}{seconds}.{Environment.MachineName}.{Environment.ProcessId}";
        string path = System.IO.Path.Combine(folder, name);
        for (int i = 1; File.Exists(path); i++) path = System.IO.Path.Combine(folder, $"{name}.{i}");
        _file = new AppendFile(path, files, createNew: true);
        WriteEvent(0, EventFileVersion, o => o.WriteString(FileVersion));
        Flush();
    }

    public string Path => _file.Path;

    /// <summary>A scalar at <paramref name="step"/> under <paramref name="tag"/>.</summary>
    public void Scalar(string tag, long step, double value) =>
        Summary(step, v =>
        {
            v.WriteTag(ValueTag, WireFormat.WireType.LengthDelimited);
            v.WriteString(tag);
            v.WriteTag(ValueSimple, WireFormat.WireType.Fixed32);
            v.WriteFloat((float)value);
        });

    /// <summary>A PNG image (<paramref name="channels"/> 1 grey, 3 RGB) at <paramref name="step"/> under <paramref name="tag"/>.</summary>
    public void Image(string tag, long step, byte[] png, int width, int height, int channels) =>
        Summary(step, v =>
        {
            v.WriteTag(ValueTag, WireFormat.WireType.LengthDelimited);
            v.WriteString(tag);
            var image = Message(m =>
            {
                m.WriteTag(ImageHeight, WireFormat.WireType.Varint);
                m.WriteInt32(height);
                m.WriteTag(ImageWidth, WireFormat.WireType.Varint);
                m.WriteInt32(width);
                m.WriteTag(ImageColorspace, WireFormat.WireType.Varint);
                m.WriteInt32(channels);
                m.WriteTag(ImageEncoded, WireFormat.WireType.LengthDelimited);
                m.WriteBytes(ByteString.CopyFrom(png));
            });
            v.WriteTag(ValueImage, WireFormat.WireType.LengthDelimited);
            v.WriteBytes(image);
        });

    /// <summary>Text (markdown) at <paramref name="step"/> under <paramref name="tag"/>, for TensorBoard's text plugin.</summary>
    public void Text(string tag, long step, string text) =>
        Summary(step, v =>
        {
            v.WriteTag(ValueTag, WireFormat.WireType.LengthDelimited);
            v.WriteString(tag);
            var tensor = Message(m =>
            {
                m.WriteTag(TensorDtype, WireFormat.WireType.Varint);
                m.WriteEnum(DtString);
                // A scalar: the shape has no dimensions (an empty TensorShapeProto).
                m.WriteTag(TensorShape, WireFormat.WireType.LengthDelimited);
                m.WriteBytes(ByteString.Empty);
                m.WriteTag(TensorStringVal, WireFormat.WireType.LengthDelimited);
                m.WriteBytes(ByteString.CopyFromUtf8(text));
            });
            v.WriteTag(ValueTensor, WireFormat.WireType.LengthDelimited);
            v.WriteBytes(tensor);
            var plugin = Message(m =>
            {
                m.WriteTag(PluginName, WireFormat.WireType.LengthDelimited);
                m.WriteString("text");
            });
            v.WriteTag(ValueMetadata, WireFormat.WireType.LengthDelimited);
            v.WriteBytes(Message(m =>
            {
                m.WriteTag(MetadataPluginData, WireFormat.WireType.LengthDelimited);
                m.WriteBytes(plugin);
            }));
        });

    /// <summary>A restart marker (TensorBoard's SessionLog START) at <paramref name="step"/>: TensorBoard discards events of later steps written before it (a resumed run).</summary>
    public void SessionStart(long step) =>
        WriteEvent(step, EventSessionLog, o => o.WriteBytes(Message(m =>
        {
            m.WriteTag(SessionLogStatus, WireFormat.WireType.Varint);
            m.WriteEnum(StatusStart);
        })));

    /// <summary>Appends the waiting records to the file; <paramref name="durable"/> also forces them to disk.</summary>
    public void Flush(bool durable = false) => _file.Flush(durable);

    /// <summary>Writes what is waiting, if it can: a run that ends on an error keeps its error, not this one's.</summary>
    public void Dispose()
    {
        try
        {
            _file.Flush(durable: false);
        }
        catch (OutputFileException)
        {
        }
    }

    private void Summary(long step, Action<CodedOutputStream> value) =>
        WriteEvent(step, EventSummary, o => o.WriteBytes(Message(s =>
        {
            s.WriteTag(SummaryValue, WireFormat.WireType.LengthDelimited);
            s.WriteBytes(Message(value));
        })));

    private void WriteEvent(long step, int field, Action<CodedOutputStream> what)
    {
        var record = Message(e =>
        {
            e.WriteTag(EventWallTime, WireFormat.WireType.Fixed64);
            e.WriteDouble(DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0);
            e.WriteTag(EventStep, WireFormat.WireType.Varint);
            e.WriteInt64(step);
            e.WriteTag(field, WireFormat.WireType.LengthDelimited);
            what(e);
        });
        WriteRecord(record.Span);
    }

    /// <summary>One TFRecord: length, masked CRC32C of the length, data, masked CRC32C of the data.</summary>
    private void WriteRecord(ReadOnlySpan<byte> data)
    {
        var record = new byte[16 + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(record, (ulong)data.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(record.AsSpan(8), MaskedCrc(record.AsSpan(0, 8)));
        data.CopyTo(record.AsSpan(12));
        BinaryPrimitives.WriteUInt32LittleEndian(record.AsSpan(12 + data.Length), MaskedCrc(data));
        _file.Append(record);
    }

    /// <summary>TFRecord's masked CRC32C (Castagnoli): rotate right by 15 and add 0xa282ead8.</summary>
    public static uint MaskedCrc(ReadOnlySpan<byte> data)
    {
        uint crc = Crc32C(data);
        return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
    }

    /// <summary>CRC-32C of <paramref name="data"/> (the processor's CRC32 instruction where it has one).</summary>
    public static uint Crc32C(ReadOnlySpan<byte> data)
    {
        uint crc = ~0u;
        int i = 0;
        for (; i + 4 <= data.Length; i += 4) crc = BitOperations.Crc32C(crc, BinaryPrimitives.ReadUInt32LittleEndian(data[i..]));
        for (; i < data.Length; i++) crc = BitOperations.Crc32C(crc, data[i]);
        return ~crc;
    }

    /// <summary>The bytes of one message written by <paramref name="write"/>.</summary>
    private static ByteString Message(Action<CodedOutputStream> write)
    {
        using var ms = new MemoryStream();
        var o = new CodedOutputStream(ms, leaveOpen: true);
        write(o);
        o.Flush();
        return ByteString.CopyFrom(ms.ToArray());
    }
}
