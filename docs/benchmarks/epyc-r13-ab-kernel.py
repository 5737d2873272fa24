"""Round thirteen's kernel A/B: the cpu backend's packed call (forward, then backward) at NAT-Tiny's
four level shapes, batch 8, with the forward keeping the window logits for the backward ("kept")
and without ("recomputed"), alternating in one process. Usage: python this.py [float32|bfloat16]."""
import statistics, sys, time, torch
from nat.bench.harness import pin_malloc
from nat.ops import dispatch
from nat.ops.dispatch import na_packed_op
from nat.ops.spec import NAParams
pin_malloc(); torch.set_num_threads(2)
kept = dispatch._BACKENDS["cpu"]; recomputed = kept._replace(forward_saving=None, saved_shape=None)
dtype = getattr(torch, sys.argv[1]) if len(sys.argv) > 1 else torch.float32
levels = {1: (56, 2), 2: (28, 4), 3: (14, 8), 4: (7, 16)}
for level, (size, heads) in levels.items():
    p = NAParams((7, 7), (1, 1), (1, 1), (False, False), 32 ** -0.5)
    qkv = torch.randn(8, size, size, 3, heads, 32).to(dtype).requires_grad_()
    rpb = torch.randn(heads, 13, 13).to(dtype).requires_grad_()
    g = torch.randn(8, size, size, heads, 32).to(dtype)
    ts = {"recomputed": ([], []), "kept": ([], [])}; grads = {}
    for r in range(16):
        for name in (("kept", "recomputed") if r % 2 == 0 else ("recomputed", "kept")):
            dispatch._BACKENDS["cpu"] = kept if name == "kept" else recomputed
            t0 = time.perf_counter(); out = na_packed_op(qkv, rpb, p, "cpu"); t1 = time.perf_counter()
            grads[name] = torch.autograd.grad(out, (qkv, rpb), g); t2 = time.perf_counter()
            if r: ts[name][0].append((t1 - t0) * 1e3); ts[name][1].append((t2 - t1) * 1e3)
    same = all(torch.equal(a, b) for a, b in zip(grads["kept"], grads["recomputed"]))
    print(f"level {level} {str(dtype)[6:]}", " | ".join(
        f"{n}: fwd {statistics.median(f):.2f} bwd {statistics.median(b):.2f} ms" for n, (f, b) in ts.items()),
        "bit-identical" if same else "DIFFERENT", flush=True)
