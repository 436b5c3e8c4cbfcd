using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Ddpm.Diffusion.Training;
using Ddpm.Tests.Data;
using Ddpm.Tool;
using Xunit;

namespace Ddpm.Tests.Serve;

/// <summary>
/// <c>ddpm-tool serve</c> run in-process (Program.Run on a thread of its own, on a free port), stopped as Ctrl-C
/// stops it; with an HTTP client for its page.
/// </summary>
public sealed partial class ServedTool : IDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private readonly Thread _thread;
    private int _code = -1;

    public ServedTool(params string[] args)
    {
        var con = new ToolConsole(Out, Err, interactive: false) { Cancel = _stop.Token };
        _thread = new Thread(() => _code = Program.Run(["serve", "--port", "0", "--threads", "2", .. args], con)) { IsBackground = true };
        _thread.Start();
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        Match m;
        while (!(m = UrlLine().Match(Out.ToString())).Success)
        {
            if (!_thread.IsAlive) throw new InvalidOperationException($"serve ended with exit code {_code}: {Err}{Out}");
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"serve did not start in 60 s: {Err}{Out}");
            Thread.Sleep(20);
        }
        Url = new Uri(m.Groups[1].Value);
        Http = new HttpClient { BaseAddress = Url, Timeout = TimeSpan.FromSeconds(120) };
    }

    [GeneratedRegex(@"serving (http://\S+)")]
    private static partial Regex UrlLine();

    public SyncWriter Out { get; } = new();
    public SyncWriter Err { get; } = new();
    public Uri Url { get; }
    public HttpClient Http { get; }

    public Task<HttpResponseMessage> PostJsonAsync(string path, string json) =>
        Http.PostAsync(path, new StringContent(json, Encoding.UTF8, new MediaTypeHeaderValue("application/json")));

    /// <summary>Posts a drawing and waits until it has ended; returns its final status.</summary>
    public async Task<JsonElement> DrawAsync(string json)
    {
        using var r = await PostJsonAsync("/api/sample", json);
        var body = await r.Content.ReadAsStringAsync();
        Assert.True(r.StatusCode == System.Net.HttpStatusCode.Accepted, body);
        string id = JsonDocument.Parse(body).RootElement.GetProperty("id").GetString()!;
        return await WaitForJobAsync(id);
    }

    public async Task<JsonElement> WaitForJobAsync(string id, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(120));
        while (true)
        {
            var status = await GetJsonAsync($"/api/jobs/{id}");
            if (status.GetProperty("state").GetString() is "done" or "failed" or "cancelled") return status;
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"drawing {id} did not end: {status}");
            await Task.Delay(20);
        }
    }

    public async Task<JsonElement> GetJsonAsync(string path)
    {
        using var r = await Http.GetAsync(path);
        var body = await r.Content.ReadAsStringAsync();
        Assert.True(r.IsSuccessStatusCode, $"GET {path}: {(int)r.StatusCode} {body}");
        return JsonDocument.Parse(body).RootElement.Clone();
    }

    /// <summary>Stops the server as Ctrl-C does; the verb must end with exit code 130 (stopped) and nothing on stderr but the warnings it was expected to write.</summary>
    public int Stop()
    {
        _stop.Cancel();
        if (!_thread.Join(TimeSpan.FromSeconds(30))) throw new TimeoutException("serve did not stop within 30 s of Ctrl-C");
        return _code;
    }

    public void Dispose()
    {
        Http.Dispose();
        if (_thread.IsAlive) Stop();
    }
}

/// <summary>A text writer that one thread writes while another reads it.</summary>
public sealed class SyncWriter : StringWriter
{
    private readonly object _lock = new();

    public override void Write(char value) { lock (_lock) base.Write(value); }
    public override void Write(string? value) { lock (_lock) base.Write(value); }
    public override void Write(char[] buffer, int index, int count) { lock (_lock) base.Write(buffer, index, count); }
    public override void Write(ReadOnlySpan<char> buffer) { lock (_lock) base.Write(buffer); }
    public override void WriteLine(string? value) { lock (_lock) base.WriteLine(value); }
    public override void WriteLine(ReadOnlySpan<char> buffer) { lock (_lock) base.WriteLine(buffer); }
    public override string ToString() { lock (_lock) return base.ToString(); }
}

/// <summary>
/// A two-step class-conditional run of the tiny preset on the bundled data (T = 1000, so a drawing can take many
/// steps), with checkpoints, grids, loss.csv and metrics.csv; the serve tests copy it where they change it.
/// </summary>
public sealed class ServeRun : IDisposable
{
    /// <summary>The serve tests share one run (their classes run one after another).</summary>
    public const string Collection = "serve";

    public ServeRun()
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Program.Run(["train", "--preset", "tiny", "--steps", "4", "--batch", "4", "--max-images", "32", "--samples", "2",
            "--sample-steps", "2", "--sample-every", "2", "--checkpoint-every", "2", "--eval-every", "2", "--eval-samples", "10",
            "--warmup", "1", "--threads", "2", "--out", Dir.Path], new ToolConsole(o, e, interactive: false));
        Assert.True(code == 0, e.ToString() + o);
    }

    public TempDir Dir { get; } = new();
    public string Checkpoint => RunFolder.Latest(Dir.Path)!;

    /// <summary>A copy of the run's files (not its logs folder) in a new folder.</summary>
    public TempDir Copy()
    {
        var copy = new TempDir();
        foreach (var f in Directory.GetFiles(Dir.Path)) File.Copy(f, copy.File(Path.GetFileName(f)));
        return copy;
    }

    public void Dispose() => Dir.Dispose();
}

[CollectionDefinition(ServeRun.Collection)]
public sealed class ServeCollection : ICollectionFixture<ServeRun>;
