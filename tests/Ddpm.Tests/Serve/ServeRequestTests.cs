using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Ddpm.Diffusion.Imaging;
using Ddpm.Tests.Data;
using Ddpm.Tests.TestUtil;
using Ddpm.Tensors.IO;
using Xunit;
using static Ddpm.Tests.Tool.ToolTests;

namespace Ddpm.Tests.Serve;

/// <summary>
/// serve's HTTP API on the real server (Kestrel on a free port): the limits and every refusal as one JSON line
/// naming the field, paths that never reach a file outside the listing, the Host check, drawings equal to
/// <c>sample</c>'s, one drawing at a time with a bounded queue, and the run folder read while it is written.
/// </summary>
[Collection(ServeRun.Collection)]
public sealed class ServeRequestTests : IDisposable
{
    private readonly ServeRun _run;
    private readonly TempDir _folder;
    private readonly ServedTool _serve;

    public ServeRequestTests(ServeRun run)
    {
        _run = run;
        _folder = run.Copy();
        _serve = new ServedTool("--run", _folder.Path, "--max-images", "8", "--max-steps", "30", "--queue", "2");
    }

    public void Dispose()
    {
        _serve.Dispose();
        _folder.Dispose();
    }

    /// <summary>The refusal's status and its one line: a JSON object with "error" alone.</summary>
    private static async Task<(HttpStatusCode Status, string Error)> Refusal(HttpResponseMessage r)
    {
        Assert.Equal("application/json", r.Content.Headers.ContentType?.MediaType);
        string body = await r.Content.ReadAsStringAsync();
        var root = JsonDocument.Parse(body).RootElement;
        Assert.Equal(JsonValueKind.Object, root.ValueKind);
        Assert.Equal(["error"], root.EnumerateObject().Select(p => p.Name));
        string error = root.GetProperty("error").GetString()!;
        Assert.DoesNotContain('\n', error);
        Assert.InRange(error.Length, 10, 300);
        return (r.StatusCode, error);
    }

    [Theory]
    [InlineData("{\"n\": 0}", "n must be between 1 and 8")]
    [InlineData("{\"n\": 9}", "n must be between 1 and 8 (this server's --max-images), got 9")]
    [InlineData("{\"n\": \"many\"}", "n must be a whole number, not the string \"many\"")]
    [InlineData("{\"n\": 1.5}", "n must be a whole number, not 1.5")]
    [InlineData("{\"n\": 1e30}", "n is far too large: 1e30")]
    [InlineData("{\"steps\": 0}", "steps must be between 1 and 30 (this server's --max-steps), got 0")]
    [InlineData("{\"steps\": 31}", "steps must be between 1 and 30 (this server's --max-steps), got 31")]
    [InlineData("{\"sampler\": \"ddpm\"}", "sampler ddpm takes all T = 1000 steps of this model; this server allows at most 30 (--max-steps)")]
    [InlineData("{\"sampler\": \"euler\"}", "sampler must be ddim, dpm++ or ddpm, got 'euler'")]
    [InlineData("{\"sampler\": 3}", "sampler must be a string (ddim, dpm++ or ddpm), not 3")]
    [InlineData("{\"sampler\": \"dpm++\", \"eta\": 0.5}", "eta 0.5 is DDIM's noise; sampler dpm++ is deterministic")]
    [InlineData("{\"eta\": -1}", "eta must be a number between 0 and 10, not -1")]
    [InlineData("{\"seed\": -1}", "seed must be a whole number between 0 and 9007199254740991, not -1")]
    [InlineData("{\"seed\": 9007199254740992}", "seed must be a whole number between 0 and 9007199254740991, not 9007199254740992")]
    [InlineData("{\"guidance\": 2}", "guidance needs a class")]
    [InlineData("{\"class\": \"Sneaker\", \"guidance\": 101}", "guidance must be a number between 0 and 100, not 101")]
    [InlineData("{\"class\": \"Spaceship\"}", "class 'Spaceship' is not a class of checkpoint-0000004.safetensors; give a name or an index: 0 T-shirt/top, 1 Trouser")]
    [InlineData("{\"class\": 10}", "class '10' is not a class of checkpoint-0000004.safetensors")]
    [InlineData("{\"class\": \"all\", \"n\": 1}", "class all draws n = 1 images for each of 10 classes, 10 in all; this server draws at most 8 at once (--max-images)")]
    [InlineData("{\"class\": [\"Bag\"]}", "class must be a class name, an index or \"all\", not an array")]
    [InlineData("{\"colour\": \"red\"}", "unknown field 'colour'; the fields are n, class, guidance, sampler, steps, eta, seed, checkpoint")]
    [InlineData("{\"n\": 1, \"n\": 2}", "field n is given twice")]
    [InlineData("[1, 2]", "the body must be a JSON object of n, class, guidance, sampler, steps, eta, seed, checkpoint, not an array")]
    [InlineData("{\"checkpoint\": 2}", "checkpoint must be the file name of one of the run's checkpoints, not 2")]
    [InlineData("{\"checkpoint\": \"checkpoint-0000003.safetensors\"}", "checkpoint 'checkpoint-0000003.safetensors' is not a checkpoint of the run folder; it has checkpoint-0000004.safetensors, checkpoint-0000002.safetensors, best.safetensors, model.safetensors")]
    [InlineData("{\"checkpoint\": \"../checkpoint-0000004.safetensors\"}", "checkpoint '../checkpoint-0000004.safetensors' is not a checkpoint of the run folder")]
    [InlineData("{\"checkpoint\": \"/etc/passwd\"}", "checkpoint '/etc/passwd' is not a checkpoint of the run folder")]
    [InlineData("{\"checkpoint\": \"config.json\"}", "checkpoint 'config.json' is not a checkpoint of the run folder")]
    [InlineData("{\"n\": ", "the body is not JSON")]
    [InlineData("{\"n\": 1} {\"n\": 2}", "the body holds more than one JSON value")]
    [InlineData("", "the body is empty")]
    public async Task ABadDrawingIsA400NamingTheField(string body, string message)
    {
        using var r = await _serve.PostJsonAsync("/api/sample", body);
        var (status, error) = await Refusal(r);
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Contains(message, error);
    }

    [Fact]
    public async Task AnOversizedOrNonJsonBodyIsRefusedBeforeItIsRead()
    {
        using (var r = await _serve.PostJsonAsync("/api/sample", "{\"seed\": 1, \"pad\": \"" + new string('x', 5000) + "\"}"))
        {
            var (status, error) = await Refusal(r);
            Assert.Equal(HttpStatusCode.RequestEntityTooLarge, status);
            Assert.Contains("the body is larger than 4096 bytes", error);
        }
        using (var r = await _serve.Http.PostAsync("/api/sample", new StringContent("{\"n\": 1}", Encoding.UTF8, "text/plain")))
        {
            var (status, error) = await Refusal(r);
            Assert.Equal(HttpStatusCode.UnsupportedMediaType, status);
            Assert.Contains("Content-Type: application/json", error);
        }
        // No drawing was queued by any refusal.
        using var none = await _serve.Http.GetAsync("/api/jobs/1");
        Assert.Equal(HttpStatusCode.NotFound, (await Refusal(none)).Status);
    }

    [Theory]
    [InlineData("GET", "/nope", HttpStatusCode.NotFound, "no such page: /nope")]
    [InlineData("GET", "/api/jobs/42", HttpStatusCode.NotFound, "no drawing '42'")]
    [InlineData("GET", "/api/jobs/42/image.png", HttpStatusCode.NotFound, "no drawing '42'")]
    [InlineData("PUT", "/api/sample", HttpStatusCode.MethodNotAllowed, "PUT is not allowed on /api/sample")]
    [InlineData("DELETE", "/api/run", HttpStatusCode.MethodNotAllowed, "DELETE is not allowed on /api/run")]
    public async Task UnknownPathsAndMethodsAreOneJsonLine(string method, string path, HttpStatusCode expected, string message)
    {
        using var r = await _serve.Http.SendAsync(new HttpRequestMessage(new HttpMethod(method), path));
        var (status, error) = await Refusal(r);
        Assert.Equal(expected, status);
        Assert.Contains(message, error);
    }

    [Fact]
    public async Task GridsAreServedByTheirListedNameAndNothingElseIs()
    {
        // A file beside the run folder, a link to it and a named pipe named like grids: none is read.
        using var outside = new TempDir();
        File.WriteAllText(outside.File("secret.png"), "SECRET");
        File.CreateSymbolicLink(_folder.File("samples-0000099.png"), outside.File("secret.png"));
        Posix.MakeFifo(_folder.File("samples-0000098.png"));

        var run = await _serve.GetJsonAsync("/api/run");
        var names = run.GetProperty("grids").EnumerateArray().Select(g => g.GetProperty("name").GetString()!).ToArray();
        Assert.Equal(["samples-0000002.png", "samples.png"], names);
        var notes = string.Join("\n", run.GetProperty("notes").EnumerateArray().Select(n => n.GetString()));
        Assert.Contains("samples-0000099.png is a symbolic link", notes);
        Assert.Contains("samples-0000098.png is a named pipe (FIFO), not a regular file", notes);

        using (var r = await _serve.Http.GetAsync("/api/run/grids/samples.png"))
        {
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
            Assert.Equal("image/png", r.Content.Headers.ContentType?.MediaType);
            Assert.Equal(File.ReadAllBytes(_folder.File("samples.png")), await r.Content.ReadAsByteArrayAsync());
        }
        foreach (var path in new[]
        {
            "/api/run/grids/samples-0000099.png", "/api/run/grids/samples-0000098.png", "/api/run/grids/config.json",
            "/api/run/grids/loss.csv", "/api/run/grids/checkpoint-0000004.safetensors", "/api/run/grids/..%2Fconfig.json",
            "/api/run/grids/..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd", "/api/run/grids/%2Fetc%2Fpasswd",
            "/api/run/grids/.%2Fsamples.png", "/api/run/grids/SAMPLES.PNG", "/config.json", "/loss.csv", "/samples.png",
            "/api/jobs/..%2F..%2Fconfig.json", "/api/run/grids/" + Uri.EscapeDataString(outside.File("secret.png")),
        })
        {
            using var r = await _serve.Http.GetAsync(path);
            string body = await r.Content.ReadAsStringAsync();
            Assert.True(r.StatusCode == HttpStatusCode.NotFound, $"{path}: {(int)r.StatusCode} {body}");
            Assert.DoesNotContain("SECRET", body);
            Assert.DoesNotContain("root:", body);
            Assert.DoesNotContain("step,loss", body);
            await Refusal(r);
        }
        // Dot segments sent as they are (an HTTP client would remove them) and a NUL (Kestrel refuses the request
        // itself): the server never walks up from its page.
        foreach (var path in new[] { "/../../../../etc/passwd", "/api/run/grids/../../config.json", "/app.js/../../loss.csv", "/%2e%2e/%2e%2e/etc/passwd",
            "/api/run/grids/samples.png%00", "/api/run/grids/..%5C..%5Cconfig.json" })
        {
            var (status, body) = await RawGet(_serve.Url, path);
            Assert.True(status is 400 or 404, $"{path}: {status} {body}");
            Assert.DoesNotContain("root:", body);
            Assert.DoesNotContain("step,loss", body);
            Assert.DoesNotContain("\"model\"", body);
        }
    }

    /// <summary>A GET with the request target exactly as given; the status and the body.</summary>
    private static async Task<(int Status, string Body)> RawGet(Uri server, string target, string? host = null)
    {
        using var client = new TcpClient();
        await client.ConnectAsync(server.Host, server.Port);
        using var stream = client.GetStream();
        var request = $"GET {target} HTTP/1.1\r\nHost: {host ?? $"127.0.0.1:{server.Port}"}\r\nConnection: close\r\n\r\n";
        await stream.WriteAsync(Encoding.ASCII.GetBytes(request));
        using var reader = new StreamReader(stream);
        string response = await reader.ReadToEndAsync();
        int status = int.Parse(response.Split(' ')[1], System.Globalization.CultureInfo.InvariantCulture);
        return (status, response[(response.IndexOf("\r\n\r\n", StringComparison.Ordinal) + 4)..]);
    }

    [Fact]
    public async Task OnlyRequestsAddressedToThisMachineAreAnswered()
    {
        var (status, body) = await RawGet(_serve.Url, "/api/info", host: $"attacker.example:{_serve.Url.Port}");
        Assert.Equal(400, status);
        Assert.Contains("Host attacker.example", body);
        Assert.Contains("serves this machine only", body);
        foreach (var host in new[] { $"localhost:{_serve.Url.Port}", $"127.0.0.1:{_serve.Url.Port}" })
            Assert.Equal(200, (await RawGet(_serve.Url, "/api/info", host)).Status);
    }

    [Fact]
    public async Task ThePageAndItsFilesComeFromTheToolWithAStrictPolicy()
    {
        using var page = await _serve.Http.GetAsync("/");
        Assert.Equal("text/html", page.Content.Headers.ContentType?.MediaType);
        Assert.Contains("default-src 'none'", page.Headers.GetValues("Content-Security-Policy").Single());
        string html = await page.Content.ReadAsStringAsync();
        Assert.Contains("<script src=\"app.js\"></script>", html);
        // Nothing is fetched from elsewhere: no address with a host in the page, its script or its style.
        foreach (var file in new[] { "/", "/app.js", "/app.css" })
        {
            string text = await _serve.Http.GetStringAsync(file);
            Assert.DoesNotMatch(@"(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text.Replace("http://www.w3.org/2000/svg", ""));
        }
    }

    [Theory]
    [InlineData("{\"n\": 4, \"class\": \"Sneaker\", \"guidance\": 2, \"steps\": 5, \"seed\": 7}", "--n 4 --class Sneaker --guidance 2 --steps 5 --seed 7")]
    [InlineData("{\"n\": 3, \"sampler\": \"dpm++\", \"steps\": 4, \"seed\": 12}", "--n 3 --sampler dpm++ --steps 4 --seed 12")]
    [InlineData("{\"n\": 5, \"class\": 3, \"guidance\": 0, \"eta\": 1, \"steps\": 3}", "--n 5 --class 3 --guidance 0 --eta 1 --steps 3")]
    public async Task ADrawingIsTheImageSampleDrawsWithTheSameOptions(string json, string options)
    {
        var status = await _serve.DrawAsync(json);
        Assert.True(status.GetProperty("state").GetString() == "done", status.ToString());
        using var r = await _serve.Http.GetAsync($"/api/jobs/{status.GetProperty("id").GetString()}/image.png");
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("served.png"), await r.Content.ReadAsByteArrayAsync());
        var (code, _, err) = Run(["sample", "--checkpoint", _folder.Path, "--scale", "1", "--threads", "2", "--out", dir.File("sample.png"), .. options.Split(' ')]);
        Assert.True(code == 0, err);
        var served = ImageFile.Load(dir.File("served.png"), 1);
        var sampled = ImageFile.Load(dir.File("sample.png"), 1);
        Assert.Equal((sampled.Width, sampled.Height), (served.Width, served.Height));
        Assert.Equal((status.GetProperty("width").GetInt32(), status.GetProperty("height").GetInt32()), (served.Width, served.Height));
        Assert.Equal(sampled.Pixels, served.Pixels);
    }

    [Fact]
    public async Task ADrawingFromAnOlderCheckpointIsThatCheckpointsSample()
    {
        var info = await _serve.GetJsonAsync("/api/info");
        Assert.Equal(["checkpoint-0000004.safetensors", "checkpoint-0000002.safetensors", "best.safetensors", "model.safetensors"],
            info.GetProperty("checkpoints").EnumerateArray().Select(c => c.GetString()));
        using var dir = new TempDir();
        foreach (var (name, fromLatest) in new[] { ("checkpoint-0000002.safetensors", false), ("model.safetensors", false), ("checkpoint-0000004.safetensors", true) })
        {
            var status = await _serve.DrawAsync($"{{\"n\": 2, \"steps\": 3, \"seed\": 5, \"checkpoint\": \"{name}\"}}");
            Assert.True(status.GetProperty("state").GetString() == "done", status.ToString());
            Assert.Contains(name, status.GetProperty("model").GetString());
            File.WriteAllBytes(dir.File("served.png"), await _serve.Http.GetByteArrayAsync($"/api/jobs/{status.GetProperty("id").GetString()}/image.png"));
            var (code, _, err) = Run(["sample", "--checkpoint", _folder.File(name), "--n", "2", "--steps", "3", "--seed", "5", "--scale", "1",
                "--threads", "2", "--out", dir.File("sample.png")]);
            Assert.True(code == 0, err);
            Assert.Equal(ImageFile.Load(dir.File("sample.png"), 1).Pixels, ImageFile.Load(dir.File("served.png"), 1).Pixels);
            // The latest checkpoint draws the same with or without its name.
            if (fromLatest)
            {
                var latest = await _serve.DrawAsync("{\"n\": 2, \"steps\": 3, \"seed\": 5}");
                Assert.Equal(await _serve.Http.GetByteArrayAsync($"/api/jobs/{status.GetProperty("id").GetString()}/image.png"),
                    await _serve.Http.GetByteArrayAsync($"/api/jobs/{latest.GetProperty("id").GetString()}/image.png"));
            }
        }
        // The step-2 checkpoint and the final weights draw other images than the latest: the choice is not ignored.
        var older = await _serve.DrawAsync("{\"n\": 2, \"steps\": 3, \"seed\": 5, \"checkpoint\": \"checkpoint-0000002.safetensors\"}");
        var newest = await _serve.DrawAsync("{\"n\": 2, \"steps\": 3, \"seed\": 5}");
        Assert.NotEqual(await _serve.Http.GetByteArrayAsync($"/api/jobs/{older.GetProperty("id").GetString()}/image.png"),
            await _serve.Http.GetByteArrayAsync($"/api/jobs/{newest.GetProperty("id").GetString()}/image.png"));
    }

    [Fact]
    public async Task TheEventStreamShowsPredictedX0FramesAndEndsWithTheGrid()
    {
        using var posted = await _serve.PostJsonAsync("/api/sample", "{\"n\": 2, \"steps\": 30, \"seed\": 3}");
        string id = JsonDocument.Parse(await posted.Content.ReadAsStringAsync()).RootElement.GetProperty("id").GetString()!;
        using var response = await _serve.Http.GetAsync($"/api/jobs/{id}/events", HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        var events = new List<JsonElement>();
        while (await reader.ReadLineAsync() is { } line)
            if (line.StartsWith("data: ", StringComparison.Ordinal)) events.Add(JsonDocument.Parse(line[6..]).RootElement.Clone());
        var last = events[^1];
        Assert.Equal("done", last.GetProperty("state").GetString());
        var steps = events.Select(e => e.GetProperty("step").GetInt32()).ToArray();
        Assert.Equal(steps.OrderBy(s => s), steps);
        Assert.Equal(30, steps[^1]);
        // Frames of the predicted x0 came before the end (the first step's at least), each a PNG of the grid's size.
        var frames = events.Where(e => e.GetProperty("state").GetString() == "running" && e.TryGetProperty("png", out _)).ToList();
        Assert.NotEmpty(frames);
        var image = await _serve.Http.GetByteArrayAsync($"/api/jobs/{id}/image.png");
        Assert.Equal(image, Convert.FromBase64String(last.GetProperty("png").GetString()!));
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("frame.png"), Convert.FromBase64String(frames[0].GetProperty("png").GetString()!));
        File.WriteAllBytes(dir.File("final.png"), image);
        var frame = ImageFile.Load(dir.File("frame.png"), 1);
        var final = ImageFile.Load(dir.File("final.png"), 1);
        Assert.Equal((final.Width, final.Height), (frame.Width, frame.Height));
        Assert.NotEqual(final.Pixels, frame.Pixels);
    }

    [Fact]
    public async Task TheRunIsReadWhileItIsWrittenWithPartLinesAndRenamedFiles()
    {
        var before = await _serve.GetJsonAsync("/api/run");
        var lossLines = File.ReadAllLines(_folder.File("loss.csv"));
        Assert.Equal(lossLines.Length - 1, before.GetProperty("loss").GetProperty("rows").GetInt32());
        Assert.Equal(lossLines[^1].Split(','), before.GetProperty("loss").GetProperty("last").EnumerateArray().Select(v => v.GetString()));
        var metricsLines = File.ReadAllLines(_folder.File("metrics.csv"));
        Assert.Equal(metricsLines.Skip(1).Select(l => l.Split(',')),
            before.GetProperty("metrics").GetProperty("rows").EnumerateArray().Select(r => r.EnumerateArray().Select(v => v.GetString()!).ToArray()));
        Assert.Equal("tiny", before.GetProperty("config").GetProperty("run").GetProperty("preset").GetString());
        Assert.Equal([2L, 4L], before.GetProperty("checkpoints").EnumerateArray().Select(c => c.GetInt64()));

        // A row being appended: its first half is not read.
        File.AppendAllText(_folder.File("loss.csv"), "5,0.4321");
        var half = await _serve.GetJsonAsync("/api/run");
        Assert.Equal(lossLines[^1].Split(','), half.GetProperty("loss").GetProperty("last").EnumerateArray().Select(v => v.GetString()));
        Assert.Empty(half.GetProperty("notes").EnumerateArray());
        File.AppendAllText(_folder.File("loss.csv"), ",0.75,1e-05,0.2500\nnot a row\n");
        var whole = await _serve.GetJsonAsync("/api/run");
        Assert.Equal(["5", "0.4321", "0.75", "1e-05", "0.2500"], whole.GetProperty("loss").GetProperty("last").EnumerateArray().Select(v => v.GetString()));
        Assert.Equal(lossLines.Length, whole.GetProperty("loss").GetProperty("rows").GetInt32());
        Assert.Contains("1 line of loss.csv skipped", whole.GetProperty("notes")[0].GetString());

        // A grid replaced by a rename: the new bytes are served, under a new version; an unchanged folder is a 304.
        string oldVersion = whole.GetProperty("version").GetString()!;
        var replacement = File.ReadAllBytes(_folder.File("samples-0000002.png"));
        AtomicFile.Write(_folder.File("samples.png"), s => s.Write(replacement));
        using (var request = new HttpRequestMessage(HttpMethod.Get, "/api/run"))
        {
            request.Headers.TryAddWithoutValidation("If-None-Match", $"\"{oldVersion}\"");
            using var r = await _serve.Http.SendAsync(request);
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
            string newVersion = JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.GetProperty("version").GetString()!;
            Assert.NotEqual(oldVersion, newVersion);
            using var again = new HttpRequestMessage(HttpMethod.Get, "/api/run");
            again.Headers.TryAddWithoutValidation("If-None-Match", $"\"{newVersion}\"");
            using var r2 = await _serve.Http.SendAsync(again);
            Assert.Equal(HttpStatusCode.NotModified, r2.StatusCode);
        }
        Assert.Equal(replacement, await _serve.Http.GetByteArrayAsync("/api/run/grids/samples.png"));
        // A log removed (a run replaced with --overwrite) is shown as gone.
        File.Delete(_folder.File("metrics.csv"));
        Assert.Empty((await _serve.GetJsonAsync("/api/run")).GetProperty("metrics").GetProperty("rows").EnumerateArray());
    }
}
