"""Same-process A/B of round thirteen's training-step change: old = the NA backward recomputing the
window logits; new = the forward keeping them for it. NAT-Tiny (new and old) and Swin-T (unchanged,
the reference), batch 8, fused AdamW; TOKENIZER=1 adds round thirteen's
channels-last float32 tokenizer, measured and not landed."""
import os, statistics, time, torch, timm
import nat.models, nat.models.nat as M, nat.ops.dispatch as D
from nat.bench.harness import pin_malloc
pin_malloc(); torch.set_num_threads(2); torch.manual_seed(0)
R = int(os.environ.get("R", "9"))
kept = D._BACKENDS["cpu"]; recomputed = kept._replace(forward_saving=None, saved_shape=None)
old_tokenizer = M.ConvTokenizer.forward
def new_tokenizer(self, x):  # float32 convolutions on channels-last input
    return self.norm(self.proj(x.contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1))
TOKENIZER = os.environ.get("TOKENIZER") == "1"  # A/B the tokenizer too
x = torch.randn(8, 3, 224, 224); y = torch.randint(0, 1000, (8,))
ms = {n: timm.create_model(n).train() for n in ("nat_tiny", "swin_tiny_patch4_window7_224")}
opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-6, fused=True) for n, m in ms.items()}
def step(n, v):
    D._BACKENDS["cpu"] = kept if v == "new" else recomputed
    M.ConvTokenizer.forward = new_tokenizer if v == "new" and TOKENIZER else old_tokenizer
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
