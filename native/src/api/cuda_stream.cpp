// The CUDA half of streams and graphs (see cuda_stream.h).
//
// Capture mode: cudaStreamCaptureModeThreadLocal. A call that cannot be captured (a synchronous
// copy, cudaMalloc, a synchronization) made by the capturing thread then fails and invalidates
// the capture instead of running at once outside the graph, as it would in relaxed mode (a
// silently wrong graph); and unlike global mode, other threads of the process (e.g. a framework's
// allocator) are not affected by our capture.
#include "api/guard.h"

#include "api/cuda_stream.h"

#ifdef ATTN4J_HAVE_CUDA
#include "api/cuda_util.h"
#endif

namespace attn4j {

#ifndef ATTN4J_HAVE_CUDA

namespace {
[[noreturn]] void no_cuda() { fail(ATTN4J_ERR_UNSUPPORTED, "stream: this library was built without CUDA"); }
}  // namespace

void* cuda_stream_create(int) { no_cuda(); }
void cuda_stream_destroy(int, void*) { no_cuda(); }
void cuda_stream_check_device(int, void*, const char*) { no_cuda(); }
void cuda_stream_synchronize(int, void*, const char*) { no_cuda(); }
bool cuda_stream_is_capturing(int, void*) { no_cuda(); }
void cuda_capture_begin(int, void*) { no_cuda(); }
void* cuda_capture_end(int, void*) { no_cuda(); }
void cuda_capture_abort(int, void*) noexcept {}
void cuda_graph_launch(int, void*, void*) { no_cuda(); }
void cuda_graph_destroy(int, void*) noexcept {}

#else

namespace {

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }
std::string on(int device) { return " on cuda:" + std::to_string(device); }

}  // namespace

void* cuda_stream_create(int device) {
    DeviceScope scope(device);
    cudaStream_t s = nullptr;
    const cudaError_t e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    if (e != cudaSuccess) cuda_fail(e, "attn4j_stream_create: cudaStreamCreateWithFlags" + on(device));
    return s;
}

void cuda_stream_destroy(int device, void* stream) {
    DeviceScope scope(device);
    const cudaError_t e = cudaStreamDestroy(as_stream(stream));
    if (e != cudaSuccess) cuda_fail(e, "attn4j_stream_destroy: cudaStreamDestroy" + on(device));
}

void cuda_stream_check_device(int device, void* stream, const char* name) {
#if CUDART_VERSION >= 12080
    if (!stream) return;  // the legacy default stream of the current device
    int d = -1;
    const cudaError_t e = cudaStreamGetDevice(as_stream(stream), &d);
    if (e != cudaSuccess) cuda_fail(e, std::string(name) + ": cudaStreamGetDevice");
    if (d != device)
        invalid(std::string(name) + ": is a stream of cuda:" + std::to_string(d) + " but the context runs" + on(device));
#else
    (void)device, (void)stream, (void)name;
#endif
}

void cuda_stream_synchronize(int device, void* stream, const char* what) {
    DeviceScope scope(device);
    const cudaError_t e = cudaStreamSynchronize(as_stream(stream));
    if (e != cudaSuccess)
        cuda_fail(e, std::string(what) + ": cudaStreamSynchronize" + on(device) +
                         " (reports errors of the stream's earlier asynchronous work too)");
}

bool cuda_stream_is_capturing(int device, void* stream) {
    if (!stream) return false;  // the legacy default stream cannot capture
    DeviceScope scope(device);
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    const cudaError_t e = cudaStreamIsCapturing(as_stream(stream), &st);
    if (e != cudaSuccess) cuda_fail(e, "cudaStreamIsCapturing" + on(device));
    return st != cudaStreamCaptureStatusNone;
}

void cuda_capture_begin(int device, void* stream) {
    DeviceScope scope(device);
    const cudaError_t e = cudaStreamBeginCapture(as_stream(stream), cudaStreamCaptureModeThreadLocal);
    if (e != cudaSuccess) cuda_fail(e, "attn4j_graph_capture_begin: cudaStreamBeginCapture" + on(device));
}

void* cuda_capture_end(int device, void* stream) {
    DeviceScope scope(device);
    cudaGraph_t graph = nullptr;
    cudaError_t e = cudaStreamEndCapture(as_stream(stream), &graph);
    if (e == cudaErrorStreamCaptureInvalidated || e == cudaErrorStreamCaptureUnsupported ||
        e == cudaErrorStreamCaptureImplicit) {
        (void)cudaGetLastError();
        if (graph) (void)cudaGraphDestroy(graph);
        invalid("stream: the capture was invalidated by a call that cannot be captured (CUDA: " + cuda_msg(e) +
                "); see attn4j_graph_capture_begin for what can be captured");
    }
    if (e != cudaSuccess) cuda_fail(e, "attn4j_graph_capture_end: cudaStreamEndCapture" + on(device));
    cudaGraphExec_t exec = nullptr;
    e = cudaGraphInstantiate(&exec, graph, 0);
    (void)cudaGraphDestroy(graph);
    if (e != cudaSuccess) cuda_fail(e, "attn4j_graph_capture_end: cudaGraphInstantiate" + on(device));
    return exec;
}

void cuda_capture_abort(int device, void* stream) noexcept {
    int prev = 0;
    if (cudaGetDevice(&prev) != cudaSuccess || cudaSetDevice(device) != cudaSuccess) return;
    cudaGraph_t graph = nullptr;
    if (cudaStreamEndCapture(as_stream(stream), &graph) == cudaSuccess && graph) (void)cudaGraphDestroy(graph);
    (void)cudaGetLastError();
    (void)cudaSetDevice(prev);
}

void cuda_graph_launch(int device, void* graph_exec, void* stream) {
    DeviceScope scope(device);
    const cudaError_t e = cudaGraphLaunch(static_cast<cudaGraphExec_t>(graph_exec), as_stream(stream));
    if (e != cudaSuccess) cuda_fail(e, "attn4j_graph_launch: cudaGraphLaunch" + on(device));
}

void cuda_graph_destroy(int device, void* graph_exec) noexcept {
    int prev = 0;
    if (cudaGetDevice(&prev) != cudaSuccess || cudaSetDevice(device) != cudaSuccess) return;
    (void)cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(graph_exec));
    (void)cudaSetDevice(prev);
}

#endif  // ATTN4J_HAVE_CUDA

}  // namespace attn4j
