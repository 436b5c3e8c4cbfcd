using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Ddpm.Tests.Data;
using Xunit;

namespace Ddpm.Tests.Serve;

/// <summary>
/// A fact that needs headless Chromium: reported skipped, with the reason, on a machine without it. Where
/// DDPM_CHROMIUM names the binary (CI does) it is never skipped: a missing binary fails it.
/// </summary>
public sealed class ChromiumFactAttribute : FactAttribute
{
    public ChromiumFactAttribute()
    {
        if (Chromium.Executable() is null && !Chromium.Required)
            Skip = "Chromium is not installed (apt-get install chromium, or set DDPM_CHROMIUM to its binary); the browser test needs it";
    }
}

/// <summary>
/// Headless Chromium driven over the DevTools protocol (a WebSocket, JSON messages): launched with a fresh profile
/// and the flags a closed network needs, one page at a time, JavaScript evaluated in it, screenshots.
/// </summary>
public sealed class Chromium : IAsyncDisposable
{
    private readonly Process _process;
    private readonly TempDir _profile;
    private readonly ClientWebSocket _socket = new();
    private readonly ConcurrentDictionary<int, TaskCompletionSource<JsonElement>> _pending = new();
    private readonly CancellationTokenSource _stop = new();
    private readonly SemaphoreSlim _sending = new(1, 1);
    private readonly StringBuilder _stderr = new();
    private Task _reader = Task.CompletedTask;
    private int _nextId;

    private Chromium(Process process, TempDir profile)
    {
        _process = process;
        _profile = profile;
    }

    /// <summary>DDPM_CHROMIUM: the Chromium binary the browser test must use (CI sets it), or null.</summary>
    private static string? Given => Environment.GetEnvironmentVariable("DDPM_CHROMIUM") is { Length: > 0 } given ? given : null;

    /// <summary>Whether the browser test must run here (DDPM_CHROMIUM is set), rather than skip without Chromium.</summary>
    public static bool Required => Given is not null;

    /// <summary>The Chromium binary: DDPM_CHROMIUM, else chromium (Debian's package) or chromium-browser on the PATH; null when none.</summary>
    public static string? Executable()
    {
        if (Given is { } given) return File.Exists(given) ? given : null;
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
            foreach (var name in new[] { "chromium", "chromium-browser" })
                if (File.Exists(Path.Combine(dir, name))) return Path.Combine(dir, name);
        return null;
    }

    public static async Task<Chromium> LaunchAsync(int width = 1200, int height = 900)
    {
        string exe = Executable() ?? throw new InvalidOperationException(Required
            ? $"DDPM_CHROMIUM={Given} is not a file: the browser test must run here (apt-get install chromium)"
            : "Chromium is not installed");
        var profile = new TempDir();
        // Chromium runs under a shell that stops it when its standard input closes: the test process ending in any
        // way (a crash and a kill included) closes that pipe, so no browser outlives the test.
        var start = new ProcessStartInfo("/bin/sh")
        {
            RedirectStandardInput = true,
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            UseShellExecute = false,
        };
        foreach (var arg in new[]
        {
            "-c", "\"$0\" \"$@\" & read -r _; kill $! 2> /dev/null", exe,
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars",
            "--force-color-profile=srgb", "--remote-debugging-port=0", $"--user-data-dir={profile.Path}", $"--window-size={width},{height}",
            "about:blank",
        }) start.ArgumentList.Add(arg);
        var process = Process.Start(start)!;
        var chromium = new Chromium(process, profile);
        var endpoint = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (chromium._stderr) chromium._stderr.AppendLine(e.Data);
            const string marker = "DevTools listening on ";
            int at = e.Data.IndexOf(marker, StringComparison.Ordinal);
            if (at >= 0) endpoint.TrySetResult(e.Data[(at + marker.Length)..].Trim());
        };
        process.OutputDataReceived += (_, _) => { };
        process.BeginErrorReadLine();
        process.BeginOutputReadLine();
        try
        {
            var ws = await endpoint.Task.WaitAsync(TimeSpan.FromSeconds(30));
            await chromium._socket.ConnectAsync(new Uri(ws), CancellationToken.None);
            chromium._reader = Task.Run(chromium.ReadLoop);
            return chromium;
        }
        catch (Exception e)
        {
            string log;
            lock (chromium._stderr) log = chromium._stderr.ToString();
            await chromium.DisposeAsync();
            throw new InvalidOperationException($"Chromium did not start its DevTools endpoint: {e.Message}\n{log}", e);
        }
    }

    /// <summary>Opens <paramref name="url"/> in a new tab and attaches to it.</summary>
    public async Task<BrowserPage> OpenAsync(string url)
    {
        var created = await SendAsync("Target.createTarget", new JsonObject { ["url"] = "about:blank" });
        string target = created.GetProperty("targetId").GetString()!;
        var attached = await SendAsync("Target.attachToTarget", new JsonObject { ["targetId"] = target, ["flatten"] = true });
        var page = new BrowserPage(this, attached.GetProperty("sessionId").GetString()!);
        await page.SendAsync("Page.enable");
        await page.SendAsync("Runtime.enable");
        await page.NavigateAsync(url);
        return page;
    }

    internal async Task<JsonElement> SendAsync(string method, JsonObject? parameters = null, string? attachment = null)
    {
        int id = Interlocked.Increment(ref _nextId);
        var message = new JsonObject { ["id"] = id, ["method"] = method, ["params"] = parameters ?? new JsonObject() };
        if (attachment is not null) message["sessionId"] = attachment;
        var done = new TaskCompletionSource<JsonElement>(TaskCreationOptions.RunContinuationsAsynchronously);
        _pending[id] = done;
        await _sending.WaitAsync();
        try
        {
            await _socket.SendAsync(Encoding.UTF8.GetBytes(message.ToJsonString()), WebSocketMessageType.Text, true, _stop.Token);
        }
        finally
        {
            _sending.Release();
        }
        return await done.Task.WaitAsync(TimeSpan.FromSeconds(60));
    }

    private async Task ReadLoop()
    {
        var buffer = new byte[1 << 16];
        var message = new MemoryStream();
        try
        {
            while (_socket.State == WebSocketState.Open)
            {
                var r = await _socket.ReceiveAsync(buffer, _stop.Token);
                if (r.MessageType == WebSocketMessageType.Close) break;
                message.Write(buffer, 0, r.Count);
                if (!r.EndOfMessage) continue;
                using (var doc = JsonDocument.Parse(message.ToArray()))
                {
                    var root = doc.RootElement;
                    if (root.TryGetProperty("id", out var idProperty) && _pending.TryRemove(idProperty.GetInt32(), out var waiting))
                    {
                        if (root.TryGetProperty("error", out var error))
                            waiting.TrySetException(new InvalidOperationException($"DevTools: {error.GetRawText()}"));
                        else
                            waiting.TrySetResult(root.GetProperty("result").Clone());
                    }
                }
                message.SetLength(0);
            }
        }
        catch (Exception e) when (e is OperationCanceledException or WebSocketException)
        {
        }
        foreach (var waiting in _pending.Values) waiting.TrySetException(new InvalidOperationException("Chromium closed its DevTools connection"));
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        try
        {
            if (!_process.HasExited) _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
        }
        catch (Exception e) when (e is InvalidOperationException or TimeoutException)
        {
        }
        try { await _reader; } catch (Exception) { }
        _socket.Dispose();
        _process.Dispose();
        try { _profile.Dispose(); } catch (IOException) { }
    }
}

/// <summary>A tab of <see cref="Chromium"/>: navigation, JavaScript evaluated in the page, screenshots. <paramref name="attachment"/> is the id the DevTools protocol gave the attachment to the tab (its sessionId).</summary>
public sealed class BrowserPage(Chromium browser, string attachment)
{
    internal Task<JsonElement> SendAsync(string method, JsonObject? parameters = null) => browser.SendAsync(method, parameters, attachment);

    public async Task NavigateAsync(string url)
    {
        await SendAsync("Page.navigate", new JsonObject { ["url"] = url });
        await WaitForAsync("document.readyState === 'complete'", TimeSpan.FromSeconds(30));
    }

    /// <summary>
    /// The value of a JavaScript expression in the page (a promise is awaited), as JSON; an exception in the page
    /// is thrown here with its text.
    /// </summary>
    public async Task<JsonElement> EvaluateAsync(string expression)
    {
        var r = await SendAsync("Runtime.evaluate", new JsonObject
        {
            ["expression"] = expression,
            ["awaitPromise"] = true,
            ["returnByValue"] = true,
        });
        if (r.TryGetProperty("exceptionDetails", out var ex))
            throw new InvalidOperationException($"the page threw: {ex.GetRawText()}");
        var result = r.GetProperty("result");
        return result.TryGetProperty("value", out var v) ? v.Clone() : default;
    }

    public async Task<string> TextAsync(string id) => (await EvaluateAsync($"document.getElementById('{id}').textContent")).GetString()!;

    /// <summary>Waits until the expression is true in the page; a timeout names the expression and the page's status line.</summary>
    public async Task WaitForAsync(string expression, TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            var v = await EvaluateAsync($"(() => {{ try {{ return !!({expression}); }} catch (e) {{ return false; }} }})()");
            if (v.ValueKind == JsonValueKind.True) return;
            if (clock.Elapsed > timeout)
            {
                var status = await EvaluateAsync("(document.getElementById('sample-status') || {}).textContent + ' | ' + (document.getElementById('run-error') || {}).textContent");
                throw new TimeoutException($"the page did not reach `{expression}` in {timeout.TotalSeconds} s; it says: {status}");
            }
            await Task.Delay(50);
        }
    }

    /// <summary>The page as a PNG (the window's size).</summary>
    public async Task<byte[]> ScreenshotAsync()
    {
        var r = await SendAsync("Page.captureScreenshot", new JsonObject { ["format"] = "png" });
        return Convert.FromBase64String(r.GetProperty("data").GetString()!);
    }
}
