// Library-level entry points: ABI version, status names, struct sizes, build / CPU info, device
// counts, context lifetimes (plans outlive their context), read bandwidth.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include "a4j_test.h"
#include "attn4j.h"

int main() {
    CHECK(attn4j_abi_version() == ATTN4J_ABI_VERSION);
    CHECK(!std::strcmp(attn4j_status_name(ATTN4J_OK), "ATTN4J_OK"));
    CHECK(!std::strcmp(attn4j_status_name(ATTN4J_ERR_INVALID_ARGUMENT), "ATTN4J_ERR_INVALID_ARGUMENT"));
    CHECK(!std::strcmp(attn4j_status_name(ATTN4J_ERR_UNSUPPORTED), "ATTN4J_ERR_UNSUPPORTED"));
    CHECK(!std::strcmp(attn4j_status_name(ATTN4J_ERR_OUT_OF_MEMORY), "ATTN4J_ERR_OUT_OF_MEMORY"));
    CHECK(!std::strcmp(attn4j_status_name(ATTN4J_ERR_DEVICE), "ATTN4J_ERR_DEVICE"));
    CHECK(!std::strcmp(attn4j_status_name(ATTN4J_ERR_INTERNAL), "ATTN4J_ERR_INTERNAL"));
    CHECK(!std::strcmp(attn4j_status_name(42), "ATTN4J_STATUS_UNKNOWN"));
    CHECK(!std::strcmp(attn4j_status_name(-1), "ATTN4J_STATUS_UNKNOWN"));

    CHECK(attn4j_struct_size("attn4j_tensor") == sizeof(attn4j_tensor));
    CHECK(attn4j_struct_size("attn4j_context_options") == sizeof(attn4j_context_options));
    CHECK(attn4j_struct_size("attn4j_paged_kv") == sizeof(attn4j_paged_kv));
    CHECK(attn4j_struct_size("attn4j_kv_quant") == sizeof(attn4j_kv_quant));
    CHECK(attn4j_struct_size("attn4j_page_table") == sizeof(attn4j_page_table));
    CHECK(attn4j_struct_size("attn4j_attention_desc") == sizeof(attn4j_attention_desc));
    CHECK(attn4j_struct_size("attn4j_nothing") == 0);
    CHECK(attn4j_struct_size(nullptr) == 0);
    // The layouts the Java bindings were generated against (x86-64 SysV).
    CHECK(sizeof(attn4j_tensor) == 96);
    CHECK(sizeof(attn4j_context_options) == 16);
    CHECK(sizeof(attn4j_paged_kv) == 112);
    CHECK(sizeof(attn4j_kv_quant) == 48);
    CHECK(sizeof(attn4j_page_table) == 296);
    CHECK(sizeof(attn4j_attention_desc) == 44);

    const std::string bi = attn4j_build_info();
    std::printf("build_info:\n%s\n", bi.c_str());
    for (const char* key : {"version=0.1.0", "compiler=", "isa_paths=", "onednn=", "cuda="})
        CHECK_MSG(bi.find(key) != std::string::npos, std::string("build_info lacks ") + key);
    const std::string ci = attn4j_cpu_info();
    std::printf("cpu_info: %s\n", ci.c_str());
    CHECK(ci.rfind("isa=", 0) == 0);
    CHECK(ci.find("decode=") != std::string::npos);

    int32_t n = -1;
    CHECK(attn4j_device_count(ATTN4J_DEVICE_CPU, &n) == ATTN4J_OK && n == 1);
    CHECK(attn4j_device_count(ATTN4J_DEVICE_CUDA, &n) == ATTN4J_OK && n >= 0);
    std::printf("cuda devices: %d\n", n);

    // A plan keeps its context alive.
    attn4j_context* ctx = a4j_test::make_context(ATTN4J_DEVICE_CPU, 0);  // num_threads 0 = one per core
    const attn4j_attention_desc d = a4j_test::attention_desc(4, 2, 64, ATTN4J_DTYPE_F32, ATTN4J_DTYPE_F32, 16, 2);
    attn4j_plan* plan = nullptr;
    CHECK(attn4j_decode_plan_create(ctx, &d, &plan) == ATTN4J_OK);
    CHECK(attn4j_context_destroy(ctx) == ATTN4J_OK);
    CHECK(attn4j_plan_destroy(plan) == ATTN4J_OK);

    ctx = a4j_test::make_context(ATTN4J_DEVICE_CPU, 2);
    double gbs = 0;
    CHECK(attn4j_measure_read_bandwidth(ctx, 64 << 20, 3, &gbs) == ATTN4J_OK);
    std::printf("read bandwidth (64 MiB, 2 threads): %.1f GB/s\n", gbs);
    CHECK(gbs > 0.1 && gbs < 10000);
    CHECK(attn4j_measure_read_bandwidth(ctx, 1000, 2, &gbs) == ATTN4J_OK);  // not a page multiple
    CHECK(attn4j_context_destroy(ctx) == ATTN4J_OK);
    return a4j_test::finish("test_library");
}
