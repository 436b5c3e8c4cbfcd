using System.Globalization;
using System.Text.Json;
using Ddpm.Diffusion.Imaging;
using Ddpm.Tests.Data;
using Ddpm.Tensors.IO;
using Xunit;
using static Ddpm.Tests.Tool.ToolTests;

namespace Ddpm.Tests.Serve;

/// <summary>
/// serve's page in headless Chromium, as a person uses it: the Sample view draws a grid whose pixels are those of
/// <c>sample</c> with the same options, and the Run view shows the numbers and the grid the run folder holds, and
/// follows the folder while it is written. Screenshots go to TestResults/serve/.
/// </summary>
[Collection(ServeRun.Collection)]
public sealed class ServeBrowserTests(ServeRun run)
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(90);

    /// <summary>JavaScript: the grey values (the red channel; every pixel must be grey and opaque) of a canvas or of an image drawn on one.</summary>
    private const string GreyPixels = """
        (async (id) => {
          const el = document.getElementById(id);
          let canvas = el;
          if (el.tagName === 'IMG') {
            await el.decode();
            canvas = new OffscreenCanvas(el.naturalWidth, el.naturalHeight);
            canvas.getContext('2d').drawImage(el, 0, 0);
          }
          const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
          let grey = '', coloured = 0;
          for (let i = 0; i < d.length; i += 4) {
            if (d[i] !== d[i + 1] || d[i] !== d[i + 2] || d[i + 3] !== 255) coloured++;
            grey += String.fromCharCode(d[i]);
          }
          return { width: canvas.width, height: canvas.height, coloured, grey: btoa(grey) };
        })
        """;

    [ChromiumFact]
    public async Task ThePageDrawsWhatSampleDrawsAndShowsTheRunAsItsFilesSay()
    {
        using var folder = run.Copy();
        // The final grid is the latest; the grid of step 2 older.
        File.SetLastWriteTimeUtc(folder.File("samples-0000002.png"), DateTime.UtcNow.AddMinutes(-5));
        File.SetLastWriteTimeUtc(folder.File("samples.png"), DateTime.UtcNow.AddMinutes(-1));
        using var serve = new ServedTool("--run", folder.Path);
        await using var chromium = await Chromium.LaunchAsync();
        var page = await chromium.OpenAsync(serve.Url + "#sample");
        string shots = Path.Combine(TestFiles.RepoRoot, "TestResults", "serve");
        Directory.CreateDirectory(shots);

        // Sample: the form filled in and Draw pressed, as a person does.
        await page.WaitForAsync("!document.getElementById('draw').disabled && document.getElementById('f-class').options.length === 12", Patience);
        await page.EvaluateAsync("""
            (() => {
              const set = (id, v) => { const e = document.getElementById(id); e.value = v; e.dispatchEvent(new Event('change')); };
              set('f-class', '7'); set('f-guidance', '2'); set('f-sampler', 'dpm++'); set('f-steps', '12'); set('f-seed', '11'); set('f-n', '6');
              document.getElementById('draw').click();
            })()
            """);
        await page.WaitForAsync("document.getElementById('sample-canvas').dataset.state === 'done'", Patience);
        Assert.Contains("6 images of class 7 (Sneaker), guidance 2, DPM-Solver++ (12 steps), seed 11: done", await page.TextAsync("sample-status"));
        // The denoising was shown as it went: at least the first step's predicted x0 was drawn before the grid.
        Assert.True(int.Parse((await page.EvaluateAsync("document.getElementById('sample-canvas').dataset.frames")).GetString()!, CultureInfo.InvariantCulture) >= 1);
        var drawn = await page.EvaluateAsync($"({GreyPixels})('sample-canvas')");
        using var dir = new TempDir();
        var (code, _, err) = Run("sample", "--checkpoint", folder.Path, "--class", "Sneaker", "--guidance", "2", "--sampler", "dpm++",
            "--steps", "12", "--seed", "11", "--n", "6", "--scale", "1", "--threads", "2", "--out", dir.File("sample.png"));
        Assert.True(code == 0, err);
        AssertSamePixels(ImageFile.Load(dir.File("sample.png"), 1), drawn);
        // The address now names the drawing, so a link draws it again.
        Assert.Equal("#sample?n=6&sampler=dpm%2B%2B&seed=11&steps=12&class=Sneaker&guidance=2", (await page.EvaluateAsync("location.hash")).GetString());
        File.WriteAllBytes(Path.Combine(shots, "sample.png"), await page.ScreenshotAsync());

        // An older checkpoint of the run, picked in the page, draws that checkpoint's images.
        string first = (await page.EvaluateAsync("document.getElementById('sample-canvas').dataset.job")).GetString()!;
        Assert.Equal(["", "checkpoint-0000004.safetensors", "checkpoint-0000002.safetensors", "best.safetensors", "model.safetensors"],
            (await page.EvaluateAsync("[...document.getElementById('f-checkpoint').options].map(o => o.value)")).EnumerateArray().Select(v => v.GetString()));
        await page.EvaluateAsync("""
            (() => {
              const set = (id, v) => { const e = document.getElementById(id); e.value = v; e.dispatchEvent(new Event('change')); };
              set('f-checkpoint', 'checkpoint-0000002.safetensors'); set('f-class', ''); set('f-sampler', 'ddim'); set('f-steps', '4'); set('f-n', '2');
              document.getElementById('draw').click();
            })()
            """);
        await page.WaitForAsync($"document.getElementById('sample-canvas').dataset.job !== '{first}' && document.getElementById('sample-canvas').dataset.state === 'done'", Patience);
        Assert.Contains("checkpoint-0000002.safetensors", await page.TextAsync("sample-model"));
        (code, _, err) = Run("sample", "--checkpoint", folder.File("checkpoint-0000002.safetensors"), "--steps", "4", "--seed", "11", "--n", "2",
            "--scale", "1", "--threads", "2", "--out", dir.File("older.png"));
        Assert.True(code == 0, err);
        AssertSamePixels(ImageFile.Load(dir.File("older.png"), 1), await page.EvaluateAsync($"({GreyPixels})('sample-canvas')"));

        // Run: the numbers of loss.csv and metrics.csv, a point per row, the latest grid's pixels.
        await page.EvaluateAsync("location.hash = '#run'");
        await page.WaitForAsync("document.getElementById('view-run').dataset.version", Patience);
        var loss = File.ReadAllLines(folder.File("loss.csv"));
        var last = loss[^1].Split(',');
        Assert.Equal((last[0], last[1], last[3], last[2]),
            (await page.TextAsync("run-step"), await page.TextAsync("run-loss"), await page.TextAsync("run-lr"), await page.TextAsync("run-grad")));
        Assert.Equal((loss.Length - 1).ToString(CultureInfo.InvariantCulture), (await page.EvaluateAsync("document.getElementById('chart-loss').dataset.points")).GetString());
        var metrics = File.ReadAllLines(folder.File("metrics.csv")).Skip(1).Select(l => l.Split(',')).ToArray();
        var table = await page.EvaluateAsync("[...document.querySelectorAll('#run-metrics tbody tr')].map(tr => [...tr.cells].map(td => td.textContent))");
        Assert.Equal(metrics, table.EnumerateArray().Select(r => r.EnumerateArray().Select(c => c.GetString()!).ToArray()).ToArray());
        Assert.Equal(metrics.Length.ToString(CultureInfo.InvariantCulture), (await page.EvaluateAsync("document.getElementById('chart-fid').dataset.points")).GetString());
        Assert.Equal(double.Parse(metrics[^1][1], CultureInfo.InvariantCulture).ToString("F2", CultureInfo.InvariantCulture), await page.TextAsync("run-fid"));
        await page.WaitForAsync("document.getElementById('run-grid').complete && document.getElementById('run-grid').naturalWidth > 0", Patience);
        Assert.Equal("samples.png", (await page.EvaluateAsync("document.getElementById('run-grid').dataset.name")).GetString());
        AssertSamePixels(ImageFile.Load(folder.File("samples.png"), 1), await page.EvaluateAsync($"({GreyPixels})('run-grid')"));
        File.WriteAllBytes(Path.Combine(shots, "run.png"), await page.ScreenshotAsync());

        // train writes on: half a row is not shown, the whole row is, and a grid replaced by rename is shown anew.
        File.AppendAllText(folder.File("loss.csv"), "5,0.31");
        await Task.Delay(2500); // more than one refresh of the page
        Assert.Equal(last[1], await page.TextAsync("run-loss"));
        File.AppendAllText(folder.File("loss.csv"), "25,0.5,0.0001,0.2\n");
        await page.WaitForAsync("document.getElementById('run-loss').textContent === '0.3125'", Patience);
        Assert.Equal("5", await page.TextAsync("run-step"));
        string shownBefore = (await page.EvaluateAsync("document.getElementById('run-grid').getAttribute('src')")).GetString()!;
        var step2 = File.ReadAllBytes(folder.File("samples-0000002.png"));
        AtomicFile.Write(folder.File("samples.png"), s => s.Write(step2));
        await page.WaitForAsync($"document.getElementById('run-grid').getAttribute('src') !== '{shownBefore}' && document.getElementById('run-grid').complete", Patience);
        Assert.Equal("samples.png", (await page.EvaluateAsync("document.getElementById('run-grid').dataset.name")).GetString());
        AssertSamePixels(ImageFile.Load(folder.File("samples-0000002.png"), 1), await page.EvaluateAsync($"({GreyPixels})('run-grid')"));
        Assert.Equal(130, serve.Stop());
    }

    private static void AssertSamePixels(DecodedImage expected, JsonElement shown)
    {
        Assert.Equal((expected.Width, expected.Height), (shown.GetProperty("width").GetInt32(), shown.GetProperty("height").GetInt32()));
        Assert.Equal(0, shown.GetProperty("coloured").GetInt32());
        var grey = Convert.FromBase64String(shown.GetProperty("grey").GetString()!).ToArray();
        int differ = Enumerable.Range(0, grey.Length).Count(i => grey[i] != expected.Pixels[i]);
        Assert.True(differ == 0, $"{differ} of {grey.Length} pixels differ from the file's");
    }
}
