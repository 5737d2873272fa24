"""One short device run: the flex backend's gradients and recompiles after the routing fix."""
import json, os, sys, time, warnings
import torch
import nat
from nat.bench import gpu_check

t0 = time.time()
out_dir = os.environ.get("OUT", "/tmp")
res = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name()}
print(res, flush=True)
names = ["2d-nat-level", "1d-causal-stride-even", "2d-gqa-dv", "3d-rpb", "2d-dilated-rpb"]
problems = tuple(p for p in gpu_check.PROBLEMS if p.name in names)
rows = []
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for dtype in (torch.bfloat16, torch.float32, torch.float16):
        for p in problems:
            a = time.time()
            row = gpu_check.check_correctness("cuda", ["flex"], (dtype,), (p,))[0]
            row["seconds"] = round(time.time() - a, 1)
            rows.append(row)
            print(row, flush=True)
            if time.time() - t0 > 110:
                break
        if time.time() - t0 > 110:
            break
    res["flex_rows"] = rows
    # A module with flex, eager and compiled, against triton (bf16 training step).
    try:
        torch.manual_seed(0)
        m = nat.NeighborhoodAttention2D(64, 2, 7, dilation=2).cuda().bfloat16()
        x = torch.randn(2, 30, 27, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        grads = {}
        for name, fn in (("triton", m), ("flex", m), ("flex-compiled", torch.compile(m))):
            m.backend = "triton" if name == "triton" else "flex"
            m.zero_grad(); x.grad = None
            fn(x).float().square().sum().backward()
            grads[name] = [x.grad.clone(), m.qkv.weight.grad.clone(), m.rpb.grad.clone()]
        res["module"] = {
            n: max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(grads[n], grads["triton"]))
            for n in ("flex", "flex-compiled")
        }
    except Exception as e:  # noqa: BLE001
        res["module"] = f"ERROR {type(e).__name__}: {str(e)[:300]}"
    print("module", res["module"], flush=True)
    # Recompiles: 12 geometries in one process must all stay compiled (no unfused fallback).
    a = time.time()
    try:
        for i in range(12):
            if time.time() - t0 > 175:
                res["geometries_done"] = i
                break
            s = 20 + i
            q = torch.randn(1, s, s, 2, 32, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            nat.na2d(q, q, q, 5, backend="flex").sum().backward()
        else:
            res["geometries_done"] = 12
    except Exception as e:  # noqa: BLE001
        res["geometries_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    res["geometries_seconds"] = round(time.time() - a, 1)
res["warnings"] = sorted({str(w.message)[:160] for w in caught})
res["seconds"] = round(time.time() - t0, 1)
print(json.dumps({k: v for k, v in res.items() if k != "flex_rows"}, indent=1), flush=True)
json.dump(res, open(os.path.join(out_dir, "flex-check.json"), "w"), indent=1)
