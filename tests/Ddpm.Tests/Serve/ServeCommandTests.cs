using System.Net;
using System.Text.Json;
using Ddpm.Diffusion.Training;
using Ddpm.Tests.Data;
using Xunit;
using static Ddpm.Tests.Tool.ToolTests;

namespace Ddpm.Tests.Serve;

/// <summary>serve's options, one drawing at a time with a bounded queue, a run folder that gets its checkpoint later, the port and the address.</summary>
[Collection(ServeRun.Collection)]
public sealed class ServeCommandTests(ServeRun run)
{
    [Theory]
    [InlineData("--port 70000", 2, "--port must be between 0 (a free port) and 65535, got 70000")]
    [InlineData("--max-images 0", 2, "--max-images must be between 1 and 128, got 0")]
    [InlineData("--max-images 129", 2, "--max-images must be between 1 and 128, got 129")]
    [InlineData("--max-steps 0", 2, "--max-steps must be between 1 and 100,000, got 0")]
    [InlineData("--queue -1", 2, "--queue must be between 0 and 64, got -1")]
    [InlineData("--host example.com", 2, "--host must be an IP address of this machine")]
    [InlineData("--sampler euler", 2, "--sampler is ddim, dpm++ or ddpm, not 'euler'")]
    [InlineData("--run /no/such/folder", 1, "--run /no/such/folder: no such folder")]
    [InlineData("--checkpoint /no/such/file.safetensors", 1, "/no/such/file.safetensors: no such checkpoint or weights file")]
    public void BadOptionsAreOneLineAndTheRightExitCode(string args, int code, string message)
    {
        var (exit, _, err) = Run(["serve", .. args.Split(' ')]);
        Assert.Equal(code, exit);
        Assert.Contains(message, err);
        Assert.Single(err.Trim().Split('\n'));
    }

    [Fact]
    public async Task OneDrawingRunsAtATimeAndTheQueueIsBounded()
    {
        using var serve = new ServedTool("--checkpoint", run.Checkpoint, "--queue", "2", "--max-steps", "1000");
        // Eight drawings of 1000 steps at once: one runs, two wait, five are refused.
        var posts = await Task.WhenAll(Enumerable.Range(0, 8).Select(i =>
            serve.PostJsonAsync("/api/sample", $"{{\"n\": 2, \"steps\": 1000, \"seed\": {i}}}")));
        var accepted = posts.Where(p => p.StatusCode == HttpStatusCode.Accepted).ToList();
        var refused = posts.Where(p => p.StatusCode == HttpStatusCode.TooManyRequests).ToList();
        Assert.Equal((3, 5), (accepted.Count, refused.Count));
        foreach (var r in refused)
            Assert.Contains("the server is busy: 3 drawings are running or waiting, the most it takes (one running, --queue 2 waiting)",
                JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.GetProperty("error").GetString());
        var ids = new List<string>();
        foreach (var r in accepted) ids.Add(JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.GetProperty("id").GetString()!);
        ids.Sort(StringComparer.Ordinal);
        // The first runs; the others wait behind it, in order.
        await WaitFor(async () => (await serve.GetJsonAsync($"/api/jobs/{ids[0]}")).GetProperty("state").GetString() == "running");
        var second = await serve.GetJsonAsync($"/api/jobs/{ids[1]}");
        var third = await serve.GetJsonAsync($"/api/jobs/{ids[2]}");
        Assert.Equal(("queued", 1), (second.GetProperty("state").GetString(), second.GetProperty("ahead").GetInt32()));
        Assert.Equal(("queued", 2), (third.GetProperty("state").GetString(), third.GetProperty("ahead").GetInt32()));

        // Stopping a waiting drawing frees its place at once; the running one stops after its step.
        using (var r = await serve.Http.DeleteAsync($"/api/jobs/{ids[2]}"))
            Assert.Equal("cancelled", JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.GetProperty("state").GetString());
        using (var r = await serve.Http.DeleteAsync($"/api/jobs/{ids[0]}")) Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        var stopped = await serve.WaitForJobAsync(ids[0]);
        Assert.Equal("cancelled", stopped.GetProperty("state").GetString());
        Assert.Matches(@"^stopped at step \d+ of 1000$", stopped.GetProperty("error").GetString());
        using (var r = await serve.Http.GetAsync($"/api/jobs/{ids[0]}/image.png"))
        {
            Assert.Equal(HttpStatusCode.Conflict, r.StatusCode);
            Assert.Contains("has no image: cancelled", await r.Content.ReadAsStringAsync());
        }
        // The second now runs; stop it too, then three short drawings run one after another, never together.
        Assert.Equal("running", (await WaitForState(serve, ids[1], "running")).GetProperty("state").GetString());
        await serve.Http.DeleteAsync($"/api/jobs/{ids[1]}");
        await serve.WaitForJobAsync(ids[1]);
        var shortPosts = await Task.WhenAll(Enumerable.Range(0, 3).Select(i => serve.PostJsonAsync("/api/sample", $"{{\"n\": 2, \"steps\": 20, \"seed\": {i}}}")));
        Assert.All(shortPosts, p => Assert.Equal(HttpStatusCode.Accepted, p.StatusCode));
        var done = new List<JsonElement>();
        foreach (var p in shortPosts)
            done.Add(await serve.WaitForJobAsync(JsonDocument.Parse(await p.Content.ReadAsStringAsync()).RootElement.GetProperty("id").GetString()!));
        Assert.All(done, d => Assert.Equal("done", d.GetProperty("state").GetString()));
        var spans = done.Select(d => (Start: d.GetProperty("started_ms").GetInt64(), End: d.GetProperty("ended_ms").GetInt64())).OrderBy(s => s.Start).ToList();
        for (int i = 1; i < spans.Count; i++) Assert.True(spans[i].Start >= spans[i - 1].End, $"drawings overlapped: {string.Join(", ", spans)}");
        Assert.Equal(130, serve.Stop());
    }

    [Fact]
    public async Task ARunFolderWithoutACheckpointDrawsOnceTrainWritesOne()
    {
        using var folder = new TempDir();
        File.Copy(run.Dir.File(RunFolder.ConfigName), folder.File(RunFolder.ConfigName));
        using var serve = new ServedTool("--run", folder.Path);
        Assert.Contains($"Sample: {folder.Path} (no checkpoint yet)", serve.Out.ToString());
        var info = await serve.GetJsonAsync("/api/info");
        Assert.Equal(JsonValueKind.Null, info.GetProperty("model").ValueKind);
        Assert.Contains("has no checkpoint yet", info.GetProperty("problem").GetString());
        using (var r = await serve.PostJsonAsync("/api/sample", "{\"n\": 1}"))
        {
            Assert.Equal(HttpStatusCode.ServiceUnavailable, r.StatusCode);
            Assert.Contains("there is no model to draw from yet", await r.Content.ReadAsStringAsync());
        }
        // The checkpoint appears as train writes it (by rename); the server loads it while idle.
        string name = RunFolder.CheckpointName(4);
        File.Copy(run.Checkpoint, folder.File("." + name + ".tmp-copy"));
        File.Move(folder.File("." + name + ".tmp-copy"), folder.File(name));
        await WaitFor(async () => (await serve.GetJsonAsync("/api/info")).GetProperty("model").ValueKind == JsonValueKind.Object);
        Assert.Equal(name, (await serve.GetJsonAsync("/api/info")).GetProperty("model").GetProperty("file").GetString());
        var drawn = await serve.DrawAsync("{\"n\": 2, \"steps\": 3, \"class\": \"Bag\"}");
        Assert.Equal("done", drawn.GetProperty("state").GetString());
        Assert.Contains(name, drawn.GetProperty("model").GetString());
        // A newer checkpoint is drawn from next.
        File.Copy(run.Checkpoint, folder.File(RunFolder.CheckpointName(6)));
        var next = await serve.DrawAsync("{\"n\": 2, \"steps\": 3}");
        Assert.Contains(RunFolder.CheckpointName(6), next.GetProperty("model").GetString());
    }

    [Fact]
    public async Task AServerOfOneFileOffersNoOtherCheckpoint()
    {
        using var serve = new ServedTool("--checkpoint", run.Checkpoint);
        Assert.Empty((await serve.GetJsonAsync("/api/info")).GetProperty("checkpoints").EnumerateArray());
        using var r = await serve.PostJsonAsync("/api/sample", $"{{\"n\": 1, \"checkpoint\": \"{RunFolder.CheckpointName(2)}\"}}");
        Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
        Assert.Contains($"checkpoint: this server draws from {RunFolder.CheckpointName(4)} alone (serve --run DIR offers a run's checkpoints); leave checkpoint out.",
            JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.GetProperty("error").GetString());
        Assert.Equal(130, serve.Stop());
    }

    [Fact]
    public void APortInUseIsOneLineAndAWiderAddressIsWarnedOf()
    {
        using var wide = new ServedTool("--checkpoint", run.Checkpoint, "--host", "0.0.0.0");
        Assert.Contains("warning: serving on 0.0.0.0: anyone who can reach this machine can draw samples", wide.Err.ToString());
        var (code, _, err) = Run(["serve", "--checkpoint", run.Checkpoint, "--port", wide.Url.Port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--host", "0.0.0.0"]);
        Assert.Equal(1, code);
        Assert.Contains($"0.0.0.0:{wide.Url.Port} is in use (another serve?); give another --port (0 picks a free one).", err);
        Assert.Equal(130, wide.Stop());
        Assert.Single(wide.Err.ToString().Trim().Split('\n'));
    }

    private static async Task<JsonElement> WaitForState(ServedTool serve, string id, string state)
    {
        JsonElement status = default;
        await WaitFor(async () => (status = await serve.GetJsonAsync($"/api/jobs/{id}")).GetProperty("state").GetString() == state);
        return status;
    }

    private static async Task WaitFor(Func<Task<bool>> condition)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException("the server did not reach the state in 60 s");
            await Task.Delay(20);
        }
    }
}
