using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.FileProviders;

namespace Ddpm.Tool.Serve;

/// <summary>
/// The page's web server: Kestrel on one address and port, the page (HTML, JavaScript and CSS embedded in the
/// tool, served by the static-file middleware) and a JSON API. Every answer to a bad request is a 4xx with <c>{"error": "one line"}</c>; an unexpected
/// exception is a 500 with the same shape and never ends the server. Bound to a loopback address, it answers only
/// requests addressed to this machine by name (127.0.0.1, localhost, [::1]), so that another site cannot reach it
/// through a DNS name of its own.
/// </summary>
public sealed class ServeHost : IDisposable
{
    private static readonly JsonSerializerOptions JsonOptions = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        // Messages keep their quotes and plus signs readable ("server's", "DPM-Solver++"); the JSON is only ever
        // served as application/json (nosniff) and shown by the page as text.
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    /// <summary>The page's files are the tool's resources under this name (index.html, app.js, app.css).</summary>
    private const string PageResources = "Ddpm.Tool.Serve.Page";

    private const string ContentSecurityPolicy =
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

    private readonly WebApplication _app;
    private readonly SampleQueue _samples;
    private readonly RunWatcher? _run;
    private readonly TextWriter _log;
    private readonly bool _loopback;
    private readonly CancellationTokenSource _stopping = new();

    private ServeHost(WebApplication app, SampleQueue samples, RunWatcher? run, TextWriter log, bool loopback)
    {
        _app = app;
        _samples = samples;
        _run = run;
        _log = log;
        _loopback = loopback;
    }

    /// <summary>The address the page is at (the port Kestrel chose when 0 was asked for).</summary>
    public Uri Url { get; private set; } = null!;

    /// <summary>
    /// Starts the server on <paramref name="address"/>:<paramref name="port"/> (0: a free port). A port in use or an
    /// address not of this machine is a <see cref="UserError"/>.
    /// </summary>
    public static ServeHost Start(IPAddress address, int port, SampleQueue samples, RunWatcher? run, TextWriter log)
    {
        var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions { ApplicationName = "ddpm-tool", ContentRootPath = AppContext.BaseDirectory });
        builder.WebHost.UseKestrelCore().ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Limits.MaxRequestBodySize = SampleRequest.MaxBodyBytes;
            k.Limits.MaxConcurrentConnections = 100;
            k.Limits.MaxRequestHeadersTotalSize = 16 << 10;
            k.Listen(address, port);
        });
        builder.Services.AddRoutingCore();
        var app = builder.Build();
        var host = new ServeHost(app, samples, run, log, IPAddress.IsLoopback(address));
        host.Map();
        try
        {
            app.StartAsync().GetAwaiter().GetResult();
        }
        catch (Exception e) when (e is IOException or SocketException)
        {
            ((IDisposable)app).Dispose();
            string where = address.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{address}]:{port}" : $"{address}:{port}";
            throw new UserError(InUse(e)
                ? $"{where} is in use (another serve?); give another --port (0 picks a free one)."
                : $"cannot listen on {where}: {e.Message}", e);
        }
        string bound = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        int actual = new Uri(bound).Port;
        string shown = address.Equals(IPAddress.Any) ? "127.0.0.1" : address.Equals(IPAddress.IPv6Any) ? "[::1]"
            : address.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{address}]" : address.ToString();
        host.Url = new Uri($"http://{shown}:{actual}/");
        return host;
    }

    private static bool InUse(Exception? e)
    {
        for (; e is not null; e = e.InnerException)
            if (e is Microsoft.AspNetCore.Connections.AddressInUseException or SocketException { SocketErrorCode: SocketError.AddressAlreadyInUse })
                return true;
        return false;
    }

    private void Map()
    {
        _app.Use(Guard);
        var page = new EmbeddedFileProvider(typeof(ServeHost).Assembly, PageResources);
        _app.UseDefaultFiles(new DefaultFilesOptions { FileProvider = page });
        _app.UseStaticFiles(new StaticFileOptions { FileProvider = page, OnPrepareResponse = f => PageHeaders(f.Context, f.File.Name) });
        _app.MapGet("/api/info", new RequestDelegate(Info));
        _app.MapPost("/api/sample", new RequestDelegate(Submit));
        _app.MapGet("/api/jobs/{id}", new RequestDelegate(ctx => Json(ctx, StatusCodes.Status200OK, _samples.Status(JobOf(ctx)))));
        _app.MapDelete("/api/jobs/{id}", new RequestDelegate(Cancel));
        _app.MapGet("/api/jobs/{id}/events", new RequestDelegate(Events));
        _app.MapGet("/api/jobs/{id}/image.png", new RequestDelegate(Image));
        _app.MapGet("/api/run", new RequestDelegate(Run));
        _app.MapGet("/api/run/grids/{name}", new RequestDelegate(Grid));
    }

    /// <summary>
    /// Around every request: the Host check, the security headers, and one JSON line for every refusal (the
    /// endpoints' <see cref="ApiException"/>s, Kestrel's own 4xx, no such path or method) and for any exception.
    /// </summary>
    private async Task Guard(HttpContext ctx, RequestDelegate next)
    {
        var headers = ctx.Response.Headers;
        headers["X-Content-Type-Options"] = "nosniff";
        headers["Referrer-Policy"] = "no-referrer";
        headers["Cache-Control"] = "no-store";
        try
        {
            CheckHost(ctx);
            await next(ctx);
            if (!ctx.Response.HasStarted && ctx.Response.StatusCode is StatusCodes.Status404NotFound or StatusCodes.Status405MethodNotAllowed
                && ctx.Response.ContentType is null)
                await Error(ctx, ctx.Response.StatusCode, ctx.Response.StatusCode == StatusCodes.Status404NotFound
                    ? $"no such page: {Shown(ctx.Request.Path.Value)}"
                    : $"{Shown(ctx.Request.Method)} is not allowed on {Shown(ctx.Request.Path.Value)}");
        }
        catch (ApiException e) when (!ctx.Response.HasStarted)
        {
            await Error(ctx, e.Status, e.Message);
        }
        catch (BadHttpRequestException e) when (!ctx.Response.HasStarted)
        {
            await Error(ctx, e.StatusCode, e.StatusCode == StatusCodes.Status413PayloadTooLarge
                ? $"the body is larger than {SampleRequest.MaxBodyBytes} bytes; a request is a few short fields."
                : $"bad request: {e.Message}");
        }
        catch (OperationCanceledException) when (ctx.RequestAborted.IsCancellationRequested || _stopping.IsCancellationRequested)
        {
            // The page went away, or the server stops.
        }
        catch (Exception e)
        {
            lock (_log) _log.WriteLine($"ddpm-tool: serve: internal error in {ctx.Request.Method} {ctx.Request.Path}: {e}");
            if (!ctx.Response.HasStarted) await Error(ctx, StatusCodes.Status500InternalServerError, $"internal error: {e.GetType().Name}: {e.Message}");
            else ctx.Abort();
        }
    }

    private void CheckHost(HttpContext ctx)
    {
        if (!_loopback || !ctx.Request.Host.HasValue) return;
        string host = ctx.Request.Host.Host;
        if (host is "127.0.0.1" or "[::1]" or "::1" || string.Equals(host, "localhost", StringComparison.OrdinalIgnoreCase)) return;
        throw ApiException.BadRequest($"Host {Shown(ctx.Request.Host.Value)} is not this server: it serves this machine only, as 127.0.0.1, localhost or [::1] (serve --host widens it).");
    }

    /// <summary>The page itself may load only its own script, style and images, and may not be framed.</summary>
    private static void PageHeaders(HttpContext ctx, string file)
    {
        if (!file.EndsWith(".html", StringComparison.Ordinal)) return;
        ctx.Response.Headers.ContentSecurityPolicy = ContentSecurityPolicy;
        ctx.Response.Headers.XFrameOptions = "DENY";
    }

    private Task Info(HttpContext ctx)
    {
        var info = new Dictionary<string, object?>
        {
            ["model"] = _samples.Model,
            ["problem"] = _samples.Problem,
            ["checkpoints"] = _samples.Checkpoints,
            ["limits"] = _samples.Limits,
            ["defaults"] = _samples.Defaults,
            ["run"] = _run?.Folder,
            ["version"] = Program.Version,
        };
        return Json(ctx, StatusCodes.Status200OK, info);
    }

    private async Task Submit(HttpContext ctx)
    {
        if (!IsJson(ctx.Request.ContentType))
            throw new ApiException(StatusCodes.Status415UnsupportedMediaType, "send the drawing's fields as JSON (Content-Type: application/json).");
        // Kestrel refuses a body over SampleRequest.MaxBodyBytes as it is read (413, answered by Guard).
        using var body = new MemoryStream();
        await ctx.Request.Body.CopyToAsync(body, ctx.RequestAborted);
        var job = _samples.Submit(SampleRequest.Parse(body.ToArray(), _samples.Defaults));
        ctx.Response.Headers.Location = $"/api/jobs/{job.Id}";
        await Json(ctx, StatusCodes.Status202Accepted, _samples.Status(job));
    }

    private static bool IsJson(string? contentType) =>
        contentType is not null && contentType.Split(';')[0].Trim().Equals("application/json", StringComparison.OrdinalIgnoreCase);

    private SampleJob JobOf(HttpContext ctx)
    {
        string id = ctx.Request.RouteValues["id"] as string ?? "";
        return _samples.Find(id) ?? throw new ApiException(StatusCodes.Status404NotFound,
            $"no drawing '{Shown(id)}' (the server keeps the last {SampleQueue.Kept} finished ones).");
    }

    private Task Cancel(HttpContext ctx)
    {
        var job = JobOf(ctx);
        _samples.Cancel(job);
        return Json(ctx, StatusCodes.Status200OK, _samples.Status(job));
    }

    private Task Image(HttpContext ctx)
    {
        var job = JobOf(ctx);
        if (job.Image is not { } png)
        {
            var s = _samples.Status(job);
            throw new ApiException(StatusCodes.Status409Conflict, s.Error is null
                ? $"drawing {job.Id} is {s.State}; its image comes when it is done."
                : $"drawing {job.Id} has no image: {s.State} ({s.Error}).");
        }
        ctx.Response.ContentType = "image/png";
        return ctx.Response.Body.WriteAsync(png, ctx.RequestAborted).AsTask();
    }

    /// <summary>
    /// Server-sent events of one drawing: its status at every change, with the newest predicted-x0 frame (and at
    /// the end the grid) as a base64 PNG when it is new; the stream ends with the drawing.
    /// </summary>
    private Task Events(HttpContext ctx) => TypedResults.ServerSentEvents(Updates(JobOf(ctx))).ExecuteAsync(ctx);

    /// <summary>The events of <see cref="Events"/>, as JSON; ended by the page going away or the server stopping.</summary>
    private async IAsyncEnumerable<string> Updates(SampleJob job, [EnumeratorCancellation] CancellationToken aborted = default)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(aborted, _stopping.Token);
        int sentFrame = -1;
        while (true)
        {
            int seen = job.Version;
            var status = _samples.Status(job);
            var (png, frame) = job.LatestFrame();
            bool finished = status.State is "done" or "failed" or "cancelled";
            string? image = png is not null && (frame != sentFrame || finished && status.State == "done") ? Convert.ToBase64String(png) : null;
            if (image is not null) sentFrame = frame;
            yield return JsonSerializer.Serialize(status with { Png = image }, JsonOptions);
            if (finished) yield break;
            await job.ChangedAsync(seen).WaitAsync(cts.Token);
        }
    }

    private Task Run(HttpContext ctx)
    {
        var run = _run ?? throw new ApiException(StatusCodes.Status404NotFound, "no run folder is served; start serve with --run DIR.");
        var snapshot = run.Snapshot();
        string etag = $"\"{snapshot.Version}\"";
        ctx.Response.Headers.ETag = etag;
        ctx.Response.Headers.CacheControl = "no-cache";
        if (ctx.Request.Headers.IfNoneMatch.ToString() == etag)
        {
            ctx.Response.StatusCode = StatusCodes.Status304NotModified;
            return Task.CompletedTask;
        }
        return Json(ctx, StatusCodes.Status200OK, snapshot);
    }

    private Task Grid(HttpContext ctx)
    {
        var run = _run ?? throw new ApiException(StatusCodes.Status404NotFound, "no run folder is served; start serve with --run DIR.");
        string name = ctx.Request.RouteValues["name"] as string ?? "";
        var png = run.Grid(name) ?? throw new ApiException(StatusCodes.Status404NotFound,
            $"no sample grid '{Shown(name)}' in the run folder (/api/run lists them).");
        ctx.Response.ContentType = "image/png";
        ctx.Response.Headers.CacheControl = "no-cache";
        return ctx.Response.Body.WriteAsync(png, ctx.RequestAborted).AsTask();
    }

    private static Task Json(HttpContext ctx, int status, object value)
    {
        ctx.Response.StatusCode = status;
        ctx.Response.ContentType = "application/json; charset=utf-8";
        return ctx.Response.Body.WriteAsync(JsonSerializer.SerializeToUtf8Bytes(value, value.GetType(), JsonOptions), ctx.RequestAborted).AsTask();
    }

    private static Task Error(HttpContext ctx, int status, string message)
    {
        ctx.Response.Headers.Remove("ETag");
        return Json(ctx, status, new Dictionary<string, string> { ["error"] = ApiException.OneLine(message) });
    }

    private static string Shown(string? s) => ApiException.Shown(s, 80);

    /// <summary>Ends the event streams, stops the server (its open requests get a few seconds) and releases the port.</summary>
    public void Dispose()
    {
        _stopping.Cancel();
        try
        {
            _app.StopAsync(new CancellationTokenSource(TimeSpan.FromSeconds(5)).Token).GetAwaiter().GetResult();
        }
        finally
        {
            _app.DisposeAsync().AsTask().GetAwaiter().GetResult();
            _stopping.Dispose();
        }
    }
}
