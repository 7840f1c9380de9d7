// The CUDA half of streams and graphs (api/stream.cpp, api/graph.cpp): thin wrappers over the
// runtime that make `device` current for the call and turn CUDA errors into statuses. Handles
// cross as void* so that callers need no CUDA headers. Builds without CUDA: UNSUPPORTED (no CUDA
// context can exist there, so they are never reached).
#pragma once

#include <string>

namespace attn4j {

void* cuda_stream_create(int device);  // non-blocking
void cuda_stream_destroy(int device, void* stream);
// DEVICE when cuda_stream (of a caller) is not a stream of `device`.
void cuda_stream_check_device(int device, void* stream, const char* name);
void cuda_stream_synchronize(int device, void* stream, const char* what);
bool cuda_stream_is_capturing(int device, void* stream);

void cuda_capture_begin(int device, void* stream);
// Ends the capture and instantiates it (a cudaGraphExec_t). INVALID_ARGUMENT when CUDA
// invalidated the capture (a call that cannot be captured ran meanwhile).
void* cuda_capture_end(int device, void* stream);
// Ends the capture and discards it; never throws.
void cuda_capture_abort(int device, void* stream) noexcept;
void cuda_graph_launch(int device, void* graph_exec, void* stream);
void cuda_graph_destroy(int device, void* graph_exec) noexcept;

}  // namespace attn4j
