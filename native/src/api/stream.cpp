// attn4j_stream_* and attn4j_context_set_stream. On a CPU context streams hold no queue (work
// runs inside each call), so they only track which stream is current.
#include "api/guard.h"

#include "api/stream.h"

#include <string>

#include "api/cuda_stream.h"
#include "api/cuda_table_errors.h"
#include "core/validate.h"

using namespace attn4j;

namespace attn4j::api {

void reject_if_capturing(attn4j_stream* stream, const char* what) {
    if (!stream) return;
    const Context& c = *stream->ctx;
    if (c.device_type != ATTN4J_DEVICE_CUDA || !cuda_stream_is_capturing(c.device_id, stream->cuda_stream)) return;
    const std::string why = std::string(what) + " cannot be captured in a CUDA graph (it allocates or synchronizes)";
    if (!stream->capturing)
        invalid(why + "; the stream is being captured outside attn4j, and that capture was left as it is");
    cuda_capture_abort(c.device_id, stream->cuda_stream);
    stream->capturing = false;
    stream->capture_aborted = why;
    invalid(why + "; the capture in progress on the stream was aborted");
}

}  // namespace attn4j::api

namespace {

attn4j_stream& stream_of(attn4j_stream* stream) {
    if (!stream || !stream->ctx) invalid("stream: is NULL");
    return *stream;
}

attn4j_stream* new_stream(attn4j_context* ctx, void* cuda_stream, bool owned) {
    return new attn4j_stream{ctx->state, cuda_stream, owned, false, {}};
}

}  // namespace

extern "C" {

attn4j_status attn4j_stream_create(attn4j_context* ctx, attn4j_stream** out_stream) {
    return api::guard("attn4j_stream_create", [&] {
        require_non_null(out_stream, "out_stream");
        *out_stream = nullptr;
        Context& c = api::context_of(ctx);
        if (c.device_type != ATTN4J_DEVICE_CUDA) {
            *out_stream = new_stream(ctx, nullptr, true);
            return;
        }
        void* s = cuda_stream_create(c.device_id);
        try {
            *out_stream = new_stream(ctx, s, true);
        } catch (...) {
            cuda_stream_destroy(c.device_id, s);
            throw;
        }
    });
}

attn4j_status attn4j_stream_wrap(attn4j_context* ctx, void* cuda_stream, attn4j_stream** out_stream) {
    return api::guard("attn4j_stream_wrap", [&] {
        require_non_null(out_stream, "out_stream");
        *out_stream = nullptr;
        Context& c = api::context_of(ctx);
        if (c.device_type != ATTN4J_DEVICE_CUDA && cuda_stream)
            invalid("cuda_stream: a cudaStream_t given to a CPU context; pass NULL (or use attn4j_stream_create)");
        if (c.device_type == ATTN4J_DEVICE_CUDA) cuda_stream_check_device(c.device_id, cuda_stream, "cuda_stream");
        *out_stream = new_stream(ctx, cuda_stream, false);
    });
}

attn4j_status attn4j_stream_native_handle(attn4j_stream* stream, void** out_handle) {
    return api::guard("attn4j_stream_native_handle", [&] {
        require_non_null(out_handle, "out_handle");
        *out_handle = stream_of(stream).cuda_stream;
    });
}

attn4j_status attn4j_stream_synchronize(attn4j_stream* stream) {
    return api::guard("attn4j_stream_synchronize", [&] {
        attn4j_stream& s = stream_of(stream);
        Context& c = *s.ctx;
        if (c.device_type != ATTN4J_DEVICE_CUDA) return;
        api::reject_if_capturing(&s, "attn4j_stream_synchronize");
        cuda_stream_synchronize(c.device_id, s.cuda_stream, "attn4j_stream_synchronize");
        if (c.cuda_table_errors) c.cuda_table_errors->throw_and_clear();
    });
}

attn4j_status attn4j_stream_destroy(attn4j_stream* stream) {
    return api::guard("attn4j_stream_destroy", [&] {
        if (!stream) return;
        Context& c = *stream->ctx;
        if (c.current_stream == stream) {
            // Nothing else can enqueue on it once the stream holds the last reference.
            if (stream->ctx.use_count() > 1)
                invalid("stream: is the current stream of its context; call attn4j_context_set_stream(ctx, NULL) "
                        "before destroying it");
            c.current_stream = nullptr;
            c.cuda_stream = nullptr;
        }
        if (c.device_type == ATTN4J_DEVICE_CUDA) {
            if (stream->capturing) {
                cuda_capture_abort(c.device_id, stream->cuda_stream);
                stream->capturing = false;
            }
            // A stream captured by its owner (borrowed streams only) cannot be synchronized.
            if (!cuda_stream_is_capturing(c.device_id, stream->cuda_stream))
                cuda_stream_synchronize(c.device_id, stream->cuda_stream, "attn4j_stream_destroy");
            if (stream->owned) cuda_stream_destroy(c.device_id, stream->cuda_stream);
        }
        delete stream;
    });
}

attn4j_status attn4j_context_set_stream(attn4j_context* ctx, attn4j_stream* stream) {
    return api::guard("attn4j_context_set_stream", [&] {
        Context& c = api::context_of(ctx);
        if (stream && stream->ctx.get() != &c)
            invalid("stream: belongs to another context (a stream is used only with the context it was made from)");
        if (c.current_stream && c.current_stream != stream && c.current_stream->capturing)
            invalid("stream: the context's current stream is capturing a CUDA graph; call attn4j_graph_capture_end "
                    "before changing the current stream");
        void* handle = stream ? stream->cuda_stream : nullptr;
        if (handle && !c.cuda_table_errors) c.cuda_table_errors.reset(new CudaTableErrors(c.device_id));
        c.current_stream = stream;
        c.cuda_stream = handle;
    });
}

}  // extern "C"
