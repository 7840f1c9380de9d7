// Streams behind the opaque attn4j_stream handle, and the guard every call that cannot be
// captured in a CUDA graph runs first.
#pragma once

#include <memory>
#include <string>

#include "attn4j.h"
#include "core/context.h"

struct attn4j_stream {
    std::shared_ptr<attn4j::Context> ctx;  // the stream belongs to it and keeps it alive
    void* cuda_stream = nullptr;  // cudaStream_t; nullptr on a CPU context or for the default stream
    bool owned = false;           // made by attn4j_stream_create (destroyed with the handle)
    bool capturing = false;       // a capture begun by attn4j_graph_capture_begin is in progress
    std::string capture_aborted;  // why a call aborted that capture ("" if none)
};

namespace attn4j::api {

// For calls that cannot be captured (they allocate or synchronize), with the stream they would
// use (nullptr: the default stream, never capturing): throws INVALID_ARGUMENT naming `what` when
// the stream is capturing. A capture begun by attn4j_graph_capture_begin is aborted
// (attn4j_graph_capture_end then says why); one begun by the caller (e.g. a framework capturing a
// wrapped stream) is left as it is, still valid since the call did nothing.
void reject_if_capturing(attn4j_stream* stream, const char* what);

}  // namespace attn4j::api
