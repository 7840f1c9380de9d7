import org.attn4j.*
import java.lang.foreign.Arena

fun main() {
    Arena.ofConfined().use { arena ->
        val q = Tensor.allocate(arena, DType.BF16, 4, 32, 128)
        val k = Tensor.allocate(arena, DType.BF16, 4, 8, 128)
        val v = Tensor.allocate(arena, DType.BF16, 4, 8, 128)
        val out = Tensor.allocate(arena, DType.BF16, 4, 32, 128)
        val qoIndptr = Tensor.ofInts(arena, 0, 4)
        val kvIndptr = Tensor.ofInts(arena, 0, 4)
        Attn4j.open(Device.cpu(), 2).use { lib ->
            PagedKvCache.builder(lib).layers(1).kvHeads(8).headDim(128).pageSize(16).numPages(1024)
                .dtype(DType.BF16).build().use { cache ->
                    Attention.prefill(lib).qoHeads(32).kvHeads(8).headDim(128).causal(true).build().use { plan ->
                        plan.run(q, qoIndptr, k, v, kvIndptr, out, null)
                    }
                }
        }
        println("kotlin ok")
    }
}
