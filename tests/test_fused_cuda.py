"""On a CUDA device: fused attention copy and distillation (the teacher's q, k on fused kernels, the LSE from the memory-efficient
kernel) give the explicit path's logits, loss and student gradients on every supported family; the masked loss is finite.
Skipped without CUDA (the CPU paths are tested in nbs/01-03)."""
import pytest, torch, torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from timm.models.deit import VisionTransformerDistilled
from attention_transfer.transfer import AttentionCopy
from attention_transfer.distill import AttentionDistill
from attention_transfer.distill import transfer_loss
from attention_transfer.attention import QK

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
FAMILIES = {'vit': {}, 'deit_distilled': dict(cls=VisionTransformerDistilled),
            'dinov2_reg': dict(reg_tokens=4, init_values=1e-1, qk_norm=True, no_embed_class=True),
            'clip': dict(pre_norm=True, global_pool='token'), 'siglip': dict(class_token=False, global_pool='avg')}

def vit(seed=0, cls=VisionTransformer, **kw):
    torch.manual_seed(seed)
    m = cls(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=4, num_classes=10, **kw)
    with torch.no_grad():   # peaked attention, as in the notebooks' tests
        for n, p in m.named_parameters():
            if p.ndim > 1: p.normal_(0, 0.3)
            elif n.endswith('bias'): p.normal_(0, 0.1)
    return m.cuda()

@pytest.fixture(autouse=True)
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old

def close(a, b, tol=1e-5):
    "max |a - b| <= tol * max(1, max |b|): fused kernels sum in another order, which moves the last bits of the value."
    torch.testing.assert_close(a, b, rtol=0, atol=tol * max(1., b.abs().max().item()))

def step(pair, x, y):
    pair.student.zero_grad()
    out = pair(x)
    logits, loss = out if isinstance(out, tuple) else (out, torch.zeros((), device=x.device))
    (F.cross_entropy(logits, y) + loss).backward()
    return logits.detach(), loss.detach(), [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in pair.student.parameters()]

@pytest.mark.parametrize('family', list(FAMILIES))
@pytest.mark.parametrize('cls', [AttentionCopy, AttentionDistill])
@pytest.mark.parametrize('heads', [None, [0, 3]])
def test_fused_equals_explicit(family, cls, heads):
    t, s = vit(0, **FAMILIES[family]), vit(1, **FAMILIES[family])
    x, y = torch.randn(4, 3, 32, 32, device='cuda'), torch.tensor([0, 3, 5, 9], device='cuda')
    (o1, l1, g1), (o0, l0, g0) = step(cls(t, s, heads=heads).train(), x, y), step(cls(t, s, heads=heads, fused=False).train(), x, y)
    close(o1, o0); close(l1, l0)
    for a, b in zip(g1, g0): close(a, b)

@pytest.mark.parametrize('masked', [False, True])
def test_fused_loss_cuda(masked):
    torch.manual_seed(0)
    qt, kt, qs, ks = (torch.randn(2, 4, 37, 64, device='cuda') * 2 for _ in range(4))
    mask = None
    if masked:
        mask = torch.rand(2, 1, 37, 37, device='cuda') > 0.3; mask[..., 0] = True; mask[0, :, 3] = False   # a fully masked row
    s, t = QK(qs.requires_grad_(), ks.requires_grad_(), 0.125, mask), QK(qt, kt, 0.125, mask)
    fused = transfer_loss(t, s); gf = torch.autograd.grad(fused, (s.q, s.k))
    expl = transfer_loss(t.logits(), s.logits()); ge = torch.autograd.grad(expl, (s.q, s.k))
    close(fused, expl)
    for a, b in zip(gf, ge): close(a, b); assert a.isfinite().all()
