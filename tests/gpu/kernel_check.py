"""Issue 20's GPU check of the Triton kernel: its CUDA tests, then fwd+bwd ms of attention_ce / attention_copy against
the fused path of today (SDPA + distill's AttentionLSE and teacher term; copy: SDPA) and the explicit one.

    python tests/gpu/kernel_check.py            # on a GPU: CUDA tests, then ViT-B/16 and ViT-L/16 at 224 px, bf16
    python tests/gpu/kernel_check.py --tiny     # anywhere: a tiny shape (on the CPU the kernel is interpreted: slow)
"""
import argparse, sys, time
from pathlib import Path
import torch, torch.nn.functional as F
from attention_transfer import kernel
from attention_transfer.kernel import attention_ce, attention_copy
from attention_transfer.attention import QK, attention_logits
from attention_transfer.distill import _qk_ce, _logits_ce, TeacherAttention

def timed(fn, iters:int, warmup:int=2) -> float:
    "Median ms of `fn()` (forward and backward), after `warmup` calls (Triton compiles at the first)."
    cuda = torch.cuda.is_available()
    ts = []
    for i in range(warmup + iters):
        if cuda: torch.cuda.synchronize()
        t0 = time.perf_counter(); fn()
        if cuda: torch.cuda.synchronize()
        if i >= warmup: ts.append((time.perf_counter() - t0) * 1e3)
    return sorted(ts)[len(ts) // 2]

def paths(b, h, n, d, device, dtype):
    "{name: fn} of one layer's attention and loss, fwd+bwd, for each path."
    mk = lambda grad=False: torch.randn(b, h, n, d, device=device, dtype=dtype, requires_grad=grad)
    q, k, v, tq, tk = mk(True), mk(True), mk(True), mk(), mk()
    sc, go = d ** -0.5, torch.randn(b, h, n, d, device=device, dtype=dtype)
    def back(o, loss): torch.autograd.backward((o, loss), (go, torch.ones_like(loss)))
    def kernel():
        o, rows = attention_ce(q, k, v, tq, tk, sc, sc); back(o, rows.mean())
    def fused():   # today's fused core: the student's own SDPA, and _qk_ce (AttentionLSE + teacher term)
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            o = F.scaled_dot_product_attention(q, k, v, scale=sc)
        back(o, _qk_ce(QK(tq, tk, sc), QK(q, k, sc)))
    def explicit():
        s = attention_logits(q, k, sc); o = s.softmax(-1).to(v.dtype) @ v
        back(o, _logits_ce(attention_logits(tq, tk, sc).float(), s.float()))
    def attention_only():   # the floor: the student's attention alone
        o = F.scaled_dot_product_attention(q, k, v, scale=sc); o.backward(go)
    def copy_kernel(): attention_copy(tq, tk, v, sc).backward(go)
    def copy_today():
        o = (TeacherAttention.apply(tq, tk, v, sc) if device == 'cpu'
             else F.scaled_dot_product_attention(tq, tk, v, scale=sc))
        o.backward(go)
    return dict(attention_only=attention_only, kernel=kernel, fused=fused, explicit=explicit,
                copy_kernel=copy_kernel, copy_today=copy_today)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--tiny', action='store_true', help='b 2, h 2, n 40, d 16, fp32: a smoke run on any machine')
    ap.add_argument('--iters', type=int, default=20, help='timed calls per path')
    ap.add_argument('--skip_tests', action='store_true', help='only the benchmark')
    ap.add_argument('--sweep', action='store_true', help="also time kernel.TILES choices (the first shape's kernel)")
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    dev = 'cuda' if cuda else 'cpu'
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu (the kernel runs interpreted: ms mean nothing)'}")
    if not a.skip_tests:
        import pytest
        if cuda:
            rc = pytest.main(['-q', str(Path(__file__).parents[1]/'test_attention_kernel.py'), '-k', 'cuda'])
            if rc: sys.exit(f"CUDA tests failed (pytest exit {rc})")
        else: print("no CUDA: the CUDA tests skip (run tests/test_attention_kernel.py for the interpreter's)")
    shapes = ([('tiny', 2, 2, 40, 16, torch.float32)] if a.tiny or not cuda else
              [('ViT-B/16 224px', 128, 12, 197, 64, torch.bfloat16),
               ('ViT-L/16 224px', 64, 16, 197, 64, torch.bfloat16)])
    for name, b, h, n, d, dtype in shapes:
        fns = paths(b, h, n, d, dev, dtype)
        ms = {k: timed(f, 3 if not cuda else a.iters) for k, f in fns.items()}
        print(f"{name} (b {b}, h {h}, n {n}, d {d}, {str(dtype)[6:]}), one layer fwd+bwd, median ms:")
        for k, t in ms.items(): print(f"  {k:15s} {t:9.3f}  ({t / ms['attention_only']:.2f}x attention alone)")
        if a.sweep and name == shapes[0][0]:
            default = dict(kernel.TILES)
            for fwd, bwd in (((64, 64, 4), (64, 4)), ((128, 64, 8), (64, 4)), ((128, 64, 4), (64, 8)),
                             ((64, 32, 4), (32, 4)), ((128, 128, 8), (64, 8))):
                kernel.TILES.update(fwd=fwd, bwd=bwd)
                try: print(f"  TILES fwd {fwd} bwd {bwd}: kernel {timed(fns['kernel'], a.iters if cuda else 1):.3f} ms")
                except Exception as e: print(f"  TILES fwd {fwd} bwd {bwd}: {type(e).__name__} {str(e)[:100]}")
            kernel.TILES.update(default)
        if cuda: torch.cuda.empty_cache()

if __name__ == '__main__': main()
