// attn4j_graph_*: CUDA graphs captured from the context's current stream. CPU contexts have no
// graphs (UNSUPPORTED).
#include "api/guard.h"

#include <memory>
#include <string>

#include "api/cuda_stream.h"
#include "api/stream.h"
#include "core/validate.h"

using namespace attn4j;

struct attn4j_graph {
    std::shared_ptr<Context> ctx;  // its kernels report page-table errors into the context
    void* exec = nullptr;          // cudaGraphExec_t
};

namespace {

// The CUDA context of a stream handed to a graph call.
Context& cuda_context_of(attn4j_stream* stream, const char* what) {
    if (!stream || !stream->ctx) invalid("stream: is NULL");
    Context& c = *stream->ctx;
    if (c.device_type != ATTN4J_DEVICE_CUDA)
        fail(ATTN4J_ERR_UNSUPPORTED, std::string("stream: ") + what + " needs a CUDA context (CPU contexts have no graphs)");
    return c;
}

}  // namespace

extern "C" {

attn4j_status attn4j_graph_capture_begin(attn4j_stream* stream) {
    return api::guard("attn4j_graph_capture_begin", [&] {
        Context& c = cuda_context_of(stream, "graph capture");
        if (c.current_stream != stream)
            invalid("stream: is not the current stream of its context; call attn4j_context_set_stream(ctx, stream) "
                    "first (captured calls are the ones that enqueue on the current stream)");
        if (!stream->cuda_stream)
            invalid("stream: wraps the default stream, which CUDA cannot capture; use attn4j_stream_create");
        if (cuda_stream_is_capturing(c.device_id, stream->cuda_stream))
            invalid("stream: is capturing already; call attn4j_graph_capture_end first");
        stream->capture_aborted.clear();
        cuda_capture_begin(c.device_id, stream->cuda_stream);
        stream->capturing = true;
    });
}

attn4j_status attn4j_graph_capture_end(attn4j_stream* stream, attn4j_graph** out_graph) {
    return api::guard("attn4j_graph_capture_end", [&] {
        require_non_null(out_graph, "out_graph");
        *out_graph = nullptr;
        Context& c = cuda_context_of(stream, "graph capture");
        if (!stream->capturing) {
            const std::string why = std::move(stream->capture_aborted);
            stream->capture_aborted.clear();
            if (!why.empty()) invalid("stream: the capture was aborted: " + why);
            if (cuda_stream_is_capturing(c.device_id, stream->cuda_stream))
                invalid("stream: its capture was not begun by attn4j_graph_capture_begin; end it where it was begun");
            invalid("stream: is not capturing; call attn4j_graph_capture_begin first");
        }
        stream->capturing = false;
        auto graph = std::make_unique<attn4j_graph>();
        graph->ctx = stream->ctx;
        graph->exec = cuda_capture_end(c.device_id, stream->cuda_stream);
        *out_graph = graph.release();
    });
}

attn4j_status attn4j_graph_launch(attn4j_graph* graph, attn4j_stream* stream) {
    return api::guard("attn4j_graph_launch", [&] {
        if (!graph) invalid("graph: is NULL");
        Context& c = cuda_context_of(stream, "graph launch");
        if (&c != graph->ctx.get())
            invalid("stream: belongs to another context than the graph; launch it on a stream of its context");
        cuda_graph_launch(c.device_id, graph->exec, stream->cuda_stream);
    });
}

attn4j_status attn4j_graph_destroy(attn4j_graph* graph) {
    return api::guard("attn4j_graph_destroy", [&] {
        if (!graph) return;
        cuda_graph_destroy(graph->ctx->device_id, graph->exec);
        delete graph;
    });
}

}  // extern "C"
