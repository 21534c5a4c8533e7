"The attention families beyond timm's `Attention` (EVA-02, DINOv3, ROPE-ViT, Perception Encoder, BEiTv2): what the notebooks do not cover — pickling, gradient checkpointing, `torch.compile`, a train-mode distillation step with every target."
import copy, io, pytest, torch, timm, torch.nn.functional as F
from attention_transfer.attention import TAPPED, attention_layers, attention_maps, recording, taps
from attention_transfer.transfer import AttentionCopy
from attention_transfer.distill import AttentionDistill

ARCHS = {'dinov3': ('vit_small_patch16_dinov3', {}), 'eva02_sep': ('eva02_tiny_patch14_224', dict(qkv_fused=False)),
         'pe_core': ('vit_pe_core_tiny_patch16_384', {}), 'rope_gqa': ('vit_small_patch16_rope_224', dict(qkv_fused=False, num_kv_heads=2)),
         'beitv2': ('beitv2_base_patch16_224', {})}

def tiny(name, seed=0, **kw):
    "timm model `name` with random weights large enough that attention matters: img 32, patch 8, dim 32, depth 2, 4 heads."
    torch.manual_seed(seed)
    m = timm.create_model(name, pretrained=False, **{**dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=10), **kw})
    with torch.no_grad():
        for n, p in m.named_parameters():
            if 'gamma' in n: p.fill_(1.)
            elif n.endswith('bias_table'): p.normal_(0, 1.)
            elif p.ndim > 1: p.normal_(0, 0.3)
            elif n.endswith('bias'): p.normal_(0, 0.1)
    return m

@pytest.fixture(params=list(ARCHS))
def pair(request):
    arch, kw = ARCHS[request.param]
    return tiny(arch, **kw), tiny(arch, seed=1, **kw)

X, Y = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])

def test_tapped_model_pickles(pair):
    m = pair[0].eval(); taps(m)
    buf = io.BytesIO(); torch.save(m, buf); buf.seek(0)
    m2 = torch.load(buf, weights_only=False)
    assert type(m2.blocks[0].attn) in TAPPED.values()
    torch.testing.assert_close(attention_maps(m2, X)[1], attention_maps(m, X)[1], rtol=0, atol=0)

@pytest.mark.parametrize('impl', ['fused', 'explicit'])
def test_checkpointed_student_same_grads(pair, impl):
    t, s = pair
    res = []
    for ckpt in (False, True):
        st = copy.deepcopy(s); st.set_grad_checkpointing(ckpt)
        ad = AttentionDistill(t, st, heads=[0, 3], attn_impl=impl).train()
        out, loss = ad(X); (F.cross_entropy(out, Y) + loss).backward()
        res.append((out.detach(), loss.detach(), [p.grad for p in st.parameters()]))
    (o0, l0, g0), (o1, l1, g1) = res
    torch.testing.assert_close(o1, o0); torch.testing.assert_close(l1, l0)
    for a, b in zip(g0, g1): torch.testing.assert_close(a, b)

@pytest.mark.parametrize('target, impl', [('attn', 'explicit'), ('attn', 'fused'), ('q', 'auto'), ('k', 'auto'), ('v', 'auto')])
def test_distill_every_target_against_recorded(pair, target, impl):
    "The loss of each target is the mean squared error (q, k, v) or cross-entropy (attn) of what the taps record."
    t, s = pair
    ad = AttentionDistill(t, s, target=target, attn_impl=impl).train()
    _, loss = ad(X)
    with torch.no_grad(), recording(t, (target if target != 'attn' else 'attn',)) as rt: t(X)
    with torch.no_grad(), recording(s, (target if target != 'attn' else 'attn',)) as rs: s(X)
    if target == 'attn': ref = sum(-(rt[i]['attn'] * rs[i]['attn'].log()).sum(-1).mean() for i in rt)
    else: ref = sum(F.mse_loss(rs[i][target], rt[i][target]) for i in rt)
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-5, atol=1e-5)

def test_one_graph_under_dynamo(pair):
    "Copy and distillation trace into one graph, as for plain attention (03_distill), and the traced copy gives eager's logits."
    import torch._dynamo
    t, s = pair
    beit = type(s).__module__ == 'timm.models.beit'
    # BEiT's distillation loss takes the explicit path (float bias mask), whose NaN guard branches on data: not one graph
    for p in (AttentionCopy(t, s),) + (() if beit else (AttentionDistill(t, s, heads=[1]),)):
        ex = torch._dynamo.explain(p.train())(X)
        assert (ex.graph_count, ex.graph_break_count) == (1, 0), ex.break_reasons
    cp = AttentionCopy(t, s).eval()
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(cp, backend='eager')(X), cp(X))

def test_unsupported_refused_in_one_line():
    m = timm.create_model('vit_relpos_small_patch16_224', pretrained=False, img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=4)
    with pytest.raises(TypeError, match='RelPosAttention, which attention transfer cannot tap'): attention_layers(m)
