import org.attn4j.*
import java.lang.foreign.Arena
import scala.util.Using

@main def example(): Unit =
  val arena = Arena.ofConfined()
  val q = Tensor.allocate(arena, DType.BF16, 4, 32, 128)
  val k = Tensor.allocate(arena, DType.BF16, 4, 8, 128)
  val v = Tensor.allocate(arena, DType.BF16, 4, 8, 128)
  val out = Tensor.allocate(arena, DType.BF16, 4, 32, 128)
  val lse = Tensor.allocate(arena, DType.F32, 4, 32)
  val qoIndptr = Tensor.ofInts(arena, 0, 4)
  val kvIndptr = Tensor.ofInts(arena, 0, 4)
  Using.Manager { use =>
    val lib  = use(Attn4j.open(Device.cpu(), 2))
    val plan = use(Attention.prefill(lib).qoHeads(32).kvHeads(8).headDim(128).causal(true).build())
    plan.run(q, qoIndptr, k, v, kvIndptr, out, lse)
  }.get
  arena.close()
  println("scala ok")
