"""Same-process A/B of round thirteen's training-step changes: old = the float32 tokenizer on NCHW
input and the backward recomputing the window logits; new = channels-last tokenizer and kept logits.
NAT-Tiny (new and old) and Swin-T (unchanged, the reference), batch 8, fused AdamW."""
import os, statistics, time, torch, timm
import nat.models, nat.models.nat as M, nat.ops.dispatch as D
from nat.bench.harness import pin_malloc
pin_malloc(); torch.set_num_threads(2); torch.manual_seed(0)
R = int(os.environ.get("R", "9"))
kept = D._BACKENDS["cpu"]; recomputed = kept._replace(forward_saving=None, saved_shape=None)
new_tokenizer = M.ConvTokenizer.forward
def old_tokenizer(self, x):
    return self.norm(self.proj(x).permute(0, 2, 3, 1))
x = torch.randn(8, 3, 224, 224); y = torch.randint(0, 1000, (8,))
ms = {n: timm.create_model(n).train() for n in ("nat_tiny", "swin_tiny_patch4_window7_224")}
opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-6, fused=True) for n, m in ms.items()}
def step(n, v):
    D._BACKENDS["cpu"] = kept if v == "new" else recomputed
    M.ConvTokenizer.forward = new_tokenizer if v == "new" else old_tokenizer
    m = ms[n]; o = opts[n]; o.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(m(x), y).backward(); o.step()
vs = [("nat_tiny", "old"), ("nat_tiny", "new"), ("swin_tiny_patch4_window7_224", "new")]
for v in vs: step(*v)
ts = {v: [] for v in vs}
for r in range(R):
    for v in (vs if r % 2 == 0 else vs[::-1]):
        t = time.perf_counter(); step(*v); ts[v].append((time.perf_counter() - t) * 1e3)
med = {v: statistics.median(t) for v, t in ts.items()}
for v in vs: print(v, round(med[v]), sorted(round(t) for t in ts[v]))
swin = med[("swin_tiny_patch4_window7_224", "new")]
print("NAT-Tiny new/old time", round(med[("nat_tiny", "new")] / med[("nat_tiny", "old")], 3),
      "| NAT/Swin speed old", round(swin / med[("nat_tiny", "old")], 3), "new", round(swin / med[("nat_tiny", "new")], 3))
