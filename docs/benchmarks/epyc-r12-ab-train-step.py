"""Same-process A/B of round twelve's training-step changes: old = unpacked float32 qkv gradient
and the for-loop AdamW; new = packed gradient and fused AdamW. NAT-Tiny and Swin-T, batch 8."""
import os, statistics, time, torch, timm
import nat.models, nat.ops.dispatch as D
torch.set_num_threads(2); torch.manual_seed(0)
R = int(os.environ.get("R", "9"))
new_rule = D._packed_backward_wins
old_rule = lambda qkv: qkv.dtype in (torch.bfloat16, torch.float16)
x = torch.randn(8, 3, 224, 224); y = torch.randint(0, 1000, (8,))
ms = {n: timm.create_model(n) for n in ("nat_tiny", "swin_tiny_patch4_window7_224")}
opts = {(n, v): torch.optim.AdamW(m.parameters(), lr=1e-6, **({"fused": True} if v == "new" else {}))
        for n, m in ms.items() for v in ("old", "new")}
def step(n, v):
    D._packed_backward_wins = new_rule if v == "new" else old_rule
    m = ms[n]; m.train(); o = opts[(n, v)]; o.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(m(x), y).backward(); o.step()
vs = [(n, v) for n in ms for v in ("old", "new")]
for v in vs: step(*v)
ts = {v: [] for v in vs}
for r in range(R):
    for v in (vs if r % 2 == 0 else vs[::-1]):
        t = time.perf_counter(); step(*v); ts[v].append((time.perf_counter() - t) * 1e3)
med = {v: statistics.median(t) for v, t in ts.items()}
for v in vs: print(v, round(med[v]), sorted(round(t) for t in ts[v]))
for n in ms: print(n, "new/old time", round(med[(n, "new")] / med[(n, "old")], 3))
print("NAT/Swin speed ratio old", round(med[("swin_tiny_patch4_window7_224", "old")] / med[("nat_tiny", "old")], 3),
      "new", round(med[("swin_tiny_patch4_window7_224", "new")] / med[("nat_tiny", "new")], 3))
