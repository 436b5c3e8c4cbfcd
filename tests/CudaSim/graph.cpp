// Stream capture and CUDA graphs of the CUDA simulator, by recording and replaying: while a stream captures, the
// work its entry points would queue (kernels with their arguments as packed at the call, copies, memsets, the
// simulated libraries' host work) is recorded into the capture instead; cuStreamEndCapture makes a graph of it,
// cuGraphInstantiateWithFlags an executable copy, and cuGraphLaunch queues one piece of work that runs every node
// in capture order under the same checks and schedules as eager work. Calls that a GPU refuses during capture
// (synchronising the capturing stream, cuMemFree or cuCtxSynchronize under a global or thread-local capture,
// copies from pageable memory) invalidate the capture and fail with CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
// later work on the stream gets CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, and so does cuStreamEndCapture.
#include <thread>

#include "sim_internal.h"

namespace sim
{
enum : int
{
    kModeGlobal = 0,
    kModeThreadLocal = 1,
    kModeRelaxed = 2,
};

struct Capture
{
    int mode = kModeGlobal;
    std::thread::id thread;
    bool invalidated = false;
    std::string why;
    std::vector<Work> nodes;
};

namespace
{
struct Graph
{
    std::vector<Work> nodes;
};

struct GraphExec
{
    std::shared_ptr<const std::vector<Work>> nodes;
    uint64_t kernels = 0;
};

std::unordered_set<Graph*> g_graphs;
std::unordered_set<GraphExec*> g_execs;

const char* modeName(int mode) { return mode == kModeGlobal ? "global" : mode == kModeThreadLocal ? "thread-local" : "relaxed"; }

void invalidate(Capture& c, const std::string& why)
{
    if (c.invalidated) return;
    c.invalidated = true;
    c.why = why;
    for (auto& w : c.nodes)
        if (w.drop) w.drop();
    c.nodes.clear();
}

// Empty when every range the node uses still lies in a live allocation, else what does not.
std::string staleUse(const Work& w)
{
    for (auto [p, bytes] : w.uses)
        if (!findAlloc(p, bytes))
            return format("0x%llx (%zu bytes) is %s", (unsigned long long)p, bytes, describeAddress(p).c_str());
    return "";
}
}  // namespace

bool capturing(const Stream* s) { return s->capture != nullptr; }

int captureStatus(Stream* s, const char* what)
{
    if (!s->capture || !s->capture->invalidated) return SUCCESS;
    return fail(STREAM_CAPTURE_INVALIDATED, format("%s: the stream's capture was invalidated earlier (%s)", what, s->capture->why.c_str()));
}

int refuseInCapture(Stream* s, const std::string& what, const std::string& why)
{
    std::string detail = what + " during stream capture: " + why + "; the capture is invalidated";
    invalidate(*s->capture, detail);
    return fail(STREAM_CAPTURE_UNSUPPORTED, detail);
}

int unsafeDuringCapture(const std::string& what)
{
    auto self = std::this_thread::get_id();
    for (Stream* s : g_streams)
    {
        Capture* c = s->capture;
        if (!c || c->invalidated) continue;
        if (c->mode == kModeGlobal || (c->mode == kModeThreadLocal && c->thread == self))
            return refuseInCapture(s, what,
                format("a potentially unsafe call while stream %p captures in %s mode (relaxed mode allows it)", (void*)s, modeName(c->mode)));
    }
    return SUCCESS;
}

void recordWork(Stream* s, Work w)
{
    if (s->capture->invalidated)
    {
        if (w.drop) w.drop();
        return;
    }
    s->capture->nodes.push_back(std::move(w));
}

void endCaptureOf(Stream* s)
{
    if (!s->capture) return;
    invalidate(*s->capture, "the stream was destroyed");
    delete s->capture;
    s->capture = nullptr;
}

void destroyGraphs()
{
    for (Graph* g : g_graphs) delete g;
    g_graphs.clear();
    for (GraphExec* e : g_execs) delete e;
    g_execs.clear();
}
}  // namespace sim

using namespace sim;

extern "C" {

API int cuStreamBeginCapture_v2(void* stream, int mode)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    Stream* s = lookupStream(stream);
    if (!s) return fail(INVALID_HANDLE, format("cuStreamBeginCapture: unknown stream %p", stream));
    if (s == &g_legacy) return fail(STREAM_CAPTURE_UNSUPPORTED, "cuStreamBeginCapture: the legacy stream cannot be captured");
    if (mode < kModeGlobal || mode > kModeRelaxed) return fail(INVALID_VALUE, format("cuStreamBeginCapture: unknown capture mode %d", mode));
    if (s->capture) return fail(ILLEGAL_STATE, format("cuStreamBeginCapture: stream %p is already capturing", stream));
    s->capture = new Capture();
    s->capture->mode = mode;
    s->capture->thread = std::this_thread::get_id();
    return SUCCESS;
}

API int cuStreamEndCapture(void* stream, void** graph)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    Stream* s = lookupStream(stream);
    if (!s) return fail(INVALID_HANDLE, format("cuStreamEndCapture: unknown stream %p", stream));
    if (!graph) return fail(INVALID_VALUE, "cuStreamEndCapture: null graph pointer");
    Capture* c = s->capture;
    if (!c) return fail(ILLEGAL_STATE, format("cuStreamEndCapture: stream %p is not capturing", stream));
    if (c->mode != kModeRelaxed && c->thread != std::this_thread::get_id())
        return fail(STREAM_CAPTURE_WRONG_THREAD, format("cuStreamEndCapture: the %s capture of stream %p began on another thread", modeName(c->mode), stream));
    s->capture = nullptr;
    *graph = nullptr;
    if (c->invalidated)
    {
        std::string why = c->why;
        delete c;
        return fail(STREAM_CAPTURE_INVALIDATED, "cuStreamEndCapture: the capture was invalidated (" + why + ")");
    }
    Graph* g = new Graph{std::move(c->nodes)};
    delete c;
    g_graphs.insert(g);
    *graph = g;
    return SUCCESS;
}

// 0: not capturing, 1: capturing, 2: capturing but invalidated (CUstreamCaptureStatus).
API int cuStreamIsCapturing(void* stream, int* status)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    Stream* s = lookupStream(stream);
    if (!s) return fail(INVALID_HANDLE, format("cuStreamIsCapturing: unknown stream %p", stream));
    if (!status) return fail(INVALID_VALUE, "cuStreamIsCapturing: null status pointer");
    *status = !s->capture ? 0 : s->capture->invalidated ? 2 : 1;
    return SUCCESS;
}

API int cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long flags)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    Graph* g = static_cast<Graph*>(graph);
    if (!exec || !g_graphs.count(g)) return fail(INVALID_VALUE, format("cuGraphInstantiateWithFlags: unknown graph %p or null result pointer", graph));
    if (flags != 0) return fail(INVALID_VALUE, format("cuGraphInstantiateWithFlags: flags 0x%llx are not supported by the simulator", flags));
    auto* e = new GraphExec();
    e->nodes = std::make_shared<const std::vector<Work>>(g->nodes);
    for (const Work& w : g->nodes)
        if (w.what.compare(0, 7, "kernel ") == 0) e->kernels++;
    g_execs.insert(e);
    *exec = e;
    return SUCCESS;
}

API int cuGraphLaunch(void* exec, void* stream)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    GraphExec* e = static_cast<GraphExec*>(exec);
    if (!g_execs.count(e)) return fail(INVALID_VALUE, format("cuGraphLaunch: unknown executable graph %p", exec));
    Stream* s = lookupStream(stream);
    if (!s) return fail(INVALID_HANDLE, format("cuGraphLaunch: unknown stream %p", stream));
    if (int st = captureStatus(s, "cuGraphLaunch")) return st;
    if (capturing(s)) return refuseInCapture(s, "cuGraphLaunch", "child graph nodes are not modelled by the simulator");
    g_count.graphLaunches++;
    g_count.graphKernels += e->kernels;
    auto nodes = e->nodes;
    enqueue(s, format("graph launch (%zu nodes)", nodes->size()), [nodes] {
        size_t i = 0;
        for (const Work& w : *nodes)
        {
            if (g_sticky != SUCCESS) return;
            std::string stale = staleUse(w);
            if (!stale.empty())
            {
                setSticky(ILLEGAL_ADDRESS, format("graph replay, node %zu (%s): %s; the memory a captured node uses must live as long as "
                                                  "the graph",
                                               i, w.what.c_str(), stale.c_str()));
                return;
            }
            g_lastWork = format("graph node %zu: %s", i, w.what.c_str());
            w.run();
            i++;
        }
    });
    return SUCCESS;
}

API int cuGraphExecDestroy(void* exec)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    GraphExec* e = static_cast<GraphExec*>(exec);
    // Launches still queued hold the nodes themselves.
    if (!g_execs.erase(e)) return fail(INVALID_VALUE, format("cuGraphExecDestroy: unknown executable graph %p", exec));
    delete e;
    return SUCCESS;
}

API int cuGraphDestroy(void* graph)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    Graph* g = static_cast<Graph*>(graph);
    if (!g_graphs.erase(g)) return fail(INVALID_VALUE, format("cuGraphDestroy: unknown graph %p", graph));
    delete g;
    return SUCCESS;
}
}
