"""Issue 20's Triton kernel (attention_transfer.kernel) = the explicit reference: under Triton's interpreter on the CPU,
compiled on CUDA where a GPU is (tests/gpu/kernel_check.py runs those)."""
import pytest, torch, timm, triton
import torch.nn.functional as F
from triton.runtime.jit import JITFunction
from triton.runtime.interpreter import InterpretedFunction
from attention_transfer.kernel import attention_ce, attention_copy, kernel_supported, _fwd, _bwd, _kernels
from attention_transfer.attention import attention_logits, safe_softmax, recording
from attention_transfer.distill import _logits_ce, _hide, real_rows

INF = float('-inf')

def explicit(q, k, v, tq, tk, scale, tscale, mask=None, tmask=None, is_causal=False, ce_heads=None):
    "The reference: (o, CE rows) from the full `b h n m` maps, in fp32; a row with no key is 0."
    rep = lambda x: x.float().repeat_interleave(q.shape[1] // x.shape[1], 1)
    s = attention_logits(q.float(), rep(k), scale, mask, is_causal)
    t = attention_logits(tq.float(), rep(tk), tscale, tmask, is_causal)
    dead = (s == INF).all(-1) | (t == INF).all(-1)
    lse = s.masked_fill(dead[..., None], 0.).logsumexp(-1)
    rows = (lse - (safe_softmax(t) * s.masked_fill(s == INF, 0.)).sum(-1)).masked_fill(dead, 0.)
    if ce_heads is not None:
        keep = torch.as_tensor(ce_heads)
        if keep.dtype != torch.bool: keep = torch.zeros(q.shape[1], dtype=torch.bool).index_fill_(0, keep, True)
        rows = rows * keep[:, None]
    return safe_softmax(s) @ rep(v), rows

def leaves(*xs): return [x.detach().clone().requires_grad_() for x in xs]

def assert_close(a, b, tol, what=''):
    "max |a − b| ≤ tol · max(1, max |b|): tol of the reference's size."
    a, b = a.float(), b.float()
    err, size = (a - b).abs().max().item(), max(1., b.abs().max().item())
    assert err <= tol * size, f"{what}: max error {err:.3g} > {tol} × {size:.3g}"

def check(q, k, v, tq, tk, scale=0.25, tscale=None, tol=1e-5, **kw):
    "attention_ce = explicit: o, rows, the row mean and the gradients to q, k, v of o·go + mean(rows); none to tq, tk."
    tscale = scale if tscale is None else tscale
    q, k, v = leaves(q, k, v)
    tq, tk = leaves(tq, tk)
    o, rows = attention_ce(q, k, v, tq, tk, scale, tscale, **kw)
    ro, rrows = explicit(q, k, v, tq, tk, scale, tscale, **kw)
    assert o.shape == ro.shape and o.dtype == q.dtype and rows.dtype == torch.float32
    for name, a, b in (('o', o, ro), ('rows', rows, rrows), ('loss', rows.mean(), rrows.mean())):
        assert_close(a, b, tol, name)
    go = torch.randn_like(ro)
    gs = torch.autograd.grad((o.float() * go).sum() + rows.mean(), (q, k, v))
    rgs = torch.autograd.grad((ro * go).sum() + rrows.mean(), (q, k, v))
    for name, g, rg in zip('qkv', gs, rgs): assert_close(g, rg, tol, f'd{name}')
    assert tq.grad is None and tk.grad is None
    return o, rows

def distill_loss_matches(rows, q, k, tq, tk, mask):
    "The rows' mean over the rows that count (distill.real_rows) = distill's masked loss."
    real = real_rows(mask, q.shape[2]).expand(rows.shape)
    ref = _logits_ce(_hide(attention_logits(tq, tk, 0.25, mask), mask), _hide(attention_logits(q, k, 0.25, mask), mask),
                     real)
    assert_close(rows.masked_fill(~real, 0).sum() / real.sum(), ref, 1e-5, 'masked loss vs distill._logits_ce')

def randn(*shape, dtype=torch.float32): return torch.randn(*shape).to(dtype)

@pytest.fixture(autouse=True)
def seed(): torch.manual_seed(0)

def test_cpu_tensors_run_interpreted_whatever_the_environment():   # TRITON_INTERPRET set or not, before import or not
    assert isinstance(_fwd, JITFunction) and isinstance(_bwd, JITFunction)   # the CUDA kernels stay compiled
    assert all(isinstance(f, InterpretedFunction) for f in _kernels(torch.device('cpu')))

def test_plain_and_the_loss_is_distills():
    q, k, v, tq, tk = (randn(2, 3, 40, 16) for _ in range(5))
    o, rows = check(q, k, v, tq, tk)
    s, t = attention_logits(q, k, 0.25), attention_logits(tq, tk, 0.25)
    assert_close(rows.mean(), _logits_ce(t, s), 1e-5, 'loss vs distill._logits_ce')

@pytest.mark.parametrize('n', [7, 16, 37])
def test_rows_not_a_multiple_of_the_tile(n): check(*(randn(1, 2, n, 8) for _ in range(5)), scale=8 ** -0.5)

def test_teacher_head_width_differs():
    check(randn(2, 2, 33, 16), randn(2, 2, 33, 16), randn(2, 2, 33, 12), randn(2, 2, 33, 8), randn(2, 2, 33, 8),
          scale=0.25, tscale=8 ** -0.5)

def test_grouped_kv_heads():   # 4 query heads over 2 k/v heads (and over 1 teacher key head)
    check(randn(2, 4, 24, 16), randn(2, 2, 24, 16), randn(2, 2, 24, 16), randn(2, 4, 24, 16), randn(2, 1, 24, 16))

def test_rotated_qk():   # EVA/RoPE: the kernel sees pre-rotated q and k
    q, k, tq, tk = (randn(2, 2, 20, 16) for _ in range(4))
    ang = torch.arange(20)[:, None] * torch.logspace(0, -2, 8)[None]
    c, sn = ang.cos(), ang.sin()
    rot = lambda x: torch.cat([x[..., :8] * c - x[..., 8:] * sn, x[..., :8] * sn + x[..., 8:] * c], -1)
    check(rot(q), rot(k), randn(2, 2, 20, 16), rot(tq), rot(tk))

def test_beit_bias():   # a float relative position bias `1 h n m`, the student's and the teacher's own
    check(*(randn(2, 2, 26, 16) for _ in range(5)), mask=randn(1, 2, 26, 26), tmask=randn(1, 2, 26, 26))

@pytest.mark.parametrize('fill', ['bool', -1e4, INF])
def test_padded_keys(fill):   # a `b 1 1 m` padding mask, bool or additive
    keep = torch.ones(2, 1, 1, 30, dtype=torch.bool); keep[1, ..., 21:] = False
    mask = keep if fill == 'bool' else torch.zeros(keep.shape).masked_fill(~keep, fill)
    q, k, v, tq, tk = leaves(*(randn(2, 2, 30, 16) for _ in range(5)))
    o, rows = check(q, k, v, tq, tk, mask=mask, tmask=mask)
    distill_loss_matches(rows, q, k, tq, tk, mask)

def test_padded_rows_have_no_key():   # a `b 1 n m` mask that hides every key from padding queries: rows 0, no gradient
    keep = torch.ones(2, 1, 30, 30, dtype=torch.bool); keep[1, :, 21:] = False; keep[1, :, :, 21:] = False
    q, k, v, tq, tk = leaves(*(randn(2, 2, 30, 16) for _ in range(5)))
    o, rows = check(q, k, v, tq, tk, mask=keep, tmask=keep)
    assert rows[1, :, 21:].abs().max() == 0 and o[1, :, 21:].abs().max() == 0
    distill_loss_matches(rows, q, k, tq, tk, keep)

def test_causal(): check(*(randn(2, 2, 35, 16) for _ in range(5)), is_causal=True)

@pytest.mark.parametrize('heads', [[0, 2], torch.tensor([False, True, False, False])])
def test_ce_heads(heads):
    o, rows = check(*(randn(1, 4, 20, 16) for _ in range(5)), ce_heads=heads)
    keep = torch.zeros(4, dtype=torch.bool); keep[torch.as_tensor(heads)] = True
    assert rows[:, ~keep].abs().max() == 0 and rows[:, keep].abs().min() > 0

@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_low_precision(dtype):   # fp32 accumulation; outputs and gradients in the input's dtype: 2e-2 of their size
    check(*(randn(2, 2, 37, 16, dtype=dtype) for _ in range(5)), tol=2e-2, mask=randn(1, 2, 37, 37), is_causal=True)

def test_no_map_is_saved():   # the backward keeps O(n) per row: nothing of `b h n m` size
    q, k, v, tq, tk = leaves(*(randn(2, 2, 40, 16) for _ in range(5)))
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: sizes.append(x.numel()) or x, lambda x: x):
        o, rows = attention_ce(q, k, v, tq, tk, 0.25, 0.25)
    assert max(sizes) < 2 * 2 * 40 * 40

def test_copy():   # copy: the teacher's map over the student's v (grouped), gradient to v only
    tq, tk, v = randn(2, 4, 37, 16), randn(2, 2, 37, 16), randn(2, 2, 37, 8)
    tq, tk, v = leaves(tq, tk, v)
    mask = torch.ones(2, 1, 1, 37, dtype=torch.bool); mask[0, ..., 30:] = False
    o = attention_copy(tq, tk, v, 0.25, mask, is_causal=True)
    ro = explicit(tq, tk, v, tq, tk, 0.25, 0.25, mask, mask, is_causal=True)[0]
    assert_close(o, ro, 1e-5, 'o')
    go = torch.randn_like(ro)
    assert_close(torch.autograd.grad((o * go).sum(), v)[0], torch.autograd.grad((ro * go).sum(), v)[0], 1e-5, 'dv')
    o = attention_copy(tq, tk, v, 0.25)
    o.sum().backward()
    assert tq.grad is None and tk.grad is None and v.grad is not None

def test_unsupported_is_one_line():
    q = randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match='float32, bfloat16 or float16'): attention_ce(q, q.double(), q, q, q, 1., 1.)
    with pytest.raises(ValueError, match='needs a gradient'):
        attention_ce(q, q, q, q, q, 1., 1., mask=torch.zeros(1, 2, 8, 8, requires_grad=True))
    assert kernel_supported(q, q, q, q, q) is None

def tiny(name, seed, **kw):
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=4,
                             num_classes=10, **kw)

@pytest.mark.parametrize('arch,kw', [('eva02_tiny_patch14_224', {}), ('beitv2_base_patch16_224', {}),
                                     ('vit_small_patch16_rope_224', dict(qkv_fused=False, num_kv_heads=2))])
def test_timm_layers(arch, kw):   # a real layer's recorded q, k, v (rotated, biased, grouped): the kernel = explicit
    x = torch.randn(2, 3, 32, 32)
    def record(m):
        with torch.no_grad(), recording(m, ('qk', 'v'), [0]) as r: m(x)
        return r[0]['qk'], r[0]['v']
    (s, v), (t, _) = record(tiny(arch, 1, **kw)), record(tiny(arch, 0, **kw))
    mask = lambda a: None if a.attn_mask is None else a.attn_mask.detach()
    check(s.q, s.k, v, t.q, t.k, s.scale, t.scale, mask=mask(s), tmask=mask(t), is_causal=s.is_causal)

def test_compiles_for_cuda():   # the compiled path, without a GPU: Triton lowers both kernels to sm90 code (bf16)
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    ints = ('H', 'N', 'NK', 'D', 'E', 'DT', 'G', 'GT')
    ptr = dict(MS='*u8', MT='*bf16', CE='*i32', ROWS='*fp32', LSE='*fp32', TLSE='*fp32', DELTA='*fp32', GR='*fp32')
    def sig(fn, consts):
        return {a: 'constexpr' if a in consts else ptr.get(a, '*bf16') if a.isupper() and a not in ints
                else 'fp32' if 'scale' in a else 'i32' for a in fn.arg_names}
    common = dict(BD=64, BE=64, BDT=64, MASK=1, TMASK=2, CAUSAL=True, LOSS=True, F32=False, PREC=None)
    for fn, consts in ((_fwd, dict(BM=64, BN=64, **common)), (_bwd, dict(B=64, QK=True, **common))):
        try: k = triton.compile(ASTSource(fn, sig(fn, consts), consts), target=GPUTarget('cuda', 90, 32))
        except (FileNotFoundError, RuntimeError) as e:
            if 'ptxas' in str(e): pytest.skip(f"no ptxas: {e}")
            raise
        assert k.asm['cubin']

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')

@cuda
@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_cuda_vit_b(dtype, tol):   # ViT-B/16 at 224 px: b 2, h 12, n 197, d 64
    kw = dict(device='cuda', dtype=dtype)
    q, k, v, tq, tk = (torch.randn(2, 12, 197, 64, **kw) for _ in range(5))
    check(q, k, v, tq, tk, scale=0.125, tol=tol)
    check(q, k, v, tq, tk, scale=0.125, tol=tol, mask=torch.randn(1, 12, 197, 197, **kw), ce_heads=[0, 5, 11])

@cuda
def test_cuda_copy_vit_b():
    tq, tk, v = (torch.randn(2, 12, 197, 64, device='cuda', dtype=torch.bfloat16) for _ in range(3))
    v.requires_grad_()
    o = attention_copy(tq, tk, v, 0.125)
    ro = F.scaled_dot_product_attention(tq.float(), tk.float(), v.float(), scale=0.125)
    assert_close(o, ro, 2e-2, 'copy o')

def compiled_matches(device, backend):
    "attention_ce and attention_copy under torch.compile(fullgraph=True): one graph, the eager values and gradients."
    q, k, v, tq, tk = (torch.randn(2, 2, 24, 16, device=device, requires_grad=i < 3) for i in range(5))
    def f(q, k, v):
        o, rows = attention_ce(q, k, v, tq, tk, 0.25, 0.25)
        return o.square().sum() + rows.mean() + attention_copy(tq, tk, v, 0.25).square().sum()
    eager = f(q, k, v), *torch.autograd.grad(f(q, k, v), (q, k, v))
    torch._dynamo.reset()
    g = torch.compile(f, fullgraph=True, backend=backend)
    comp = g(q, k, v), *torch.autograd.grad(g(q, k, v), (q, k, v))
    for a, b in zip(comp, eager): assert_close(a, b, 1e-5)

def test_compile_one_graph(): compiled_matches('cpu', 'aot_eager')   # the kernels are custom operators to Dynamo

@cuda
def test_cuda_compile(): compiled_matches('cuda', 'inductor')

def test_keys_not_queries():   # m ≠ n keys (cross-attention shapes), and a single query row
    check(randn(2, 2, 20, 16), randn(2, 2, 33, 16), randn(2, 2, 33, 16), randn(2, 2, 20, 8), randn(2, 2, 33, 8))
    check(randn(1, 2, 1, 16), randn(1, 2, 5, 16), randn(1, 2, 5, 16), randn(1, 2, 1, 16), randn(1, 2, 5, 16))

def test_rows_the_teacher_hides():   # rows with no key for the teacher only: their CE is 0, the attention still counts
    tmask = torch.zeros(2, 1, 24, 24); tmask[0, :, 5:9] = INF
    o, rows = check(*(randn(2, 2, 24, 16) for _ in range(5)), tmask=tmask)
    assert rows[0, :, 5:9].abs().max() == 0 and o[0, :, 5:9].abs().min() > 0
