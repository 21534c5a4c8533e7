"""Padding does not count (issue 23, item 2). A batch of images of different token counts is padded to one length and
its attention mask hides the padding: bool, or additive with -inf, finfo.min, -1e4 or -1e9; hiding padding as keys
and queries (`b 1 n n`) or as keys only (`b 1 1 n`). The loss of one image, and its attention-agreement diagnostics,
must not depend on that padding: to 1e-6 (relative above 1), an image alone and in a padded batch give the same,
and a batch gives the mean over its images weighted by their real query rows. Padded tokens hold large random junk,
which must not matter."""
import pytest, torch
from _padded import FILLS, batch, make_mask, padded_vit, set_padding
from attention_transfer.attention import QK
from attention_transfer.distill import AttentionDistill, RelationDistill, probs_ce, relation_loss, transfer_loss
from attention_transfer.ensemble import attention_divergence, attention_kl_js

TOL = 1e-6


def close(a, b) -> bool:
    "Equal to 1e-6, relative for values above 1: what float32 sums of a different length and order can keep."
    a, b = a.detach(), b.detach()
    return bool((a - b).abs() <= TOL * max(1., float(b.abs())))
H, D, SC = 4, 8, 8 ** -0.5
NAMES = ('qt', 'kt', 'vt', 'qs', 'ks', 'vs')   # teacher's and student's q, k, v


def image(n:int, seed:int) -> dict:
    "q, k, v of teacher and student for one image of `n` tokens, `1 h n d`."
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(1, H, n, D, generator=g) * 2 for k in NAMES}


A, B = image(9, 0), image(13, 1)


def padded(images:list, extra:int, fill, key_only:bool) -> tuple:
    "The images stacked and padded to the longest plus `extra` tokens, and their mask."
    bs = {k: batch([im[k] for im in images], extra, seed=i)[0] for i, k in enumerate(NAMES)}
    valid = batch([im['qt'] for im in images], extra)[1]
    return bs, make_mask(valid, fill, key_only)


def losses(x:dict, mask=None) -> dict:
    "Every loss and diagnostic of one batch `x` (`b h n d` tensors, see NAMES) under `mask`."
    t, s = QK(x['qt'], x['kt'], SC, mask), QK(x['qs'], x['ks'], SC, mask)
    kl, js = attention_kl_js(t.probs(), s.probs(), mask)
    rel = lambda w: {k: x[k + w] for k in 'qkv'}
    return {'fused': transfer_loss(t, s), 'fused_heads': transfer_loss(t, s, heads=[1, 3]),
            'explicit': transfer_loss(t.logits(), s.logits(), mask=mask),
            'explicit_heads': transfer_loss(t.logits(), s.logits(), heads=[0, 2], mask=mask),
            'q': transfer_loss(x['qt'], x['qs'], 'q', mask=mask), 'v': transfer_loss(x['vt'], x['vs'], 'v', mask=mask),
            'probs': probs_ce(t.probs(), s.logits(), mask=mask), 'relations': relation_loss(rel('t'), rel('s'), 2, mask=mask),
            'kl': kl.nanmean(), 'js': js.nanmean()}


CASES = [(f, k) for f in FILLS for k in (False, True)]
IDS = [f"{f}-{'keys' if k else 'keys_and_queries'}" for f, k in CASES]


@pytest.mark.parametrize('fill, key_only', CASES, ids=IDS)
@pytest.mark.parametrize('extra', [1, 7])
def test_one_image_alone_or_padded(fill, key_only, extra):
    "The image alone (no mask) and the same image padded by `extra` junk tokens give every loss to 1e-6."
    alone = losses(A)
    x, m = padded([A], extra, FILLS[fill], key_only)
    for k, v in losses(x, m).items(): assert close(v, alone[k]), (k, v.item(), alone[k].item())


@pytest.mark.parametrize('fill, key_only', CASES, ids=IDS)
def test_batch_is_the_mean_over_real_rows(fill, key_only):
    "Images of 9 and 13 tokens padded to 16: each loss is the mean of the images' own, weighted by their tokens."
    la, lb = losses(A), losses(B)
    x, m = padded([A, B], 3, FILLS[fill], key_only)
    for k, v in losses(x, m).items():
        want = (9 * la[k] + 13 * lb[k]) / 22
        assert close(v, want), (k, v.item(), want.item())


@pytest.mark.parametrize('fill', list(FILLS))
@pytest.mark.parametrize('fused', [True, False])
def test_padding_gets_no_gradient(fill, fused):
    "The student's q and k get the same gradients alone and padded; the padding gets none, and nothing is NaN."
    def grads(qt, kt, qs, ks, m=None):
        qs, ks = qs.clone().requires_grad_(), ks.clone().requires_grad_()
        t, s = QK(qt, kt, SC, m), QK(qs, ks, SC, m)
        return torch.autograd.grad(transfer_loss(t, s) if fused else transfer_loss(t.logits(), s.logits(), mask=m), (qs, ks))
    g0 = grads(A['qt'], A['kt'], A['qs'], A['ks'])
    x, m = padded([A], 5, FILLS[fill], False)
    g1 = grads(x['qt'], x['kt'], x['qs'], x['ks'], m)
    for a, b in zip(g0, g1):
        assert b.isfinite().all() and (b[:, :, 9:] == 0).all()
        torch.testing.assert_close(b[:, :, :9], a, rtol=TOL, atol=TOL)


def test_no_mask_and_a_bias_are_not_padding():
    "A mask that hides nothing (all True, all 0, or a position bias) changes nothing: every row counts, as without one."
    x = {k: torch.cat([A[k], A[k].flip(-2)]) for k in NAMES}
    plain = losses(x)
    for m in (torch.ones(2, 1, 9, 9, dtype=torch.bool), torch.zeros(2, 1, 9, 9)):
        for k, v in losses(x, m).items(): assert close(v, plain[k]), (k, v.item(), plain[k].item())
    bias = torch.randn(1, H, 9, 9) * 3                               # BEiT's relative position bias: no padding
    t, s = QK(x['qt'], x['kt'], SC, bias), QK(x['qs'], x['ks'], SC, bias)
    lt, ls = t.logits(), s.logits()
    want = -(lt.softmax(-1) * ls.log_softmax(-1)).sum(-1).mean()
    for v in (transfer_loss(t, s), transfer_loss(lt, ls, mask=bias), probs_ce(t.probs(), ls, mask=bias)):
        assert close(v, want), (v.item(), want.item())


# ---- whole models: a timm ViT that pads its own batch, as NaFlex does

X = torch.randn(2, 3, 32, 32)
PAIRS = {'fused': dict(attn_impl='fused'), 'explicit': dict(attn_impl='explicit'), 'q': dict(target='q'),
         'heads': dict(heads=[0, 3], attn_impl='fused'), 'heads_explicit': dict(heads=[0, 3], attn_impl='explicit'),
         'head_map': dict(head_map='average'), 'relations': None}


def pair(kind):
    if kind == 'head_map':
        t, s = padded_vit(0), padded_vit(1, num_heads=2)
        return t, s, AttentionDistill(t, s, head_map={0: [0, 1], 1: [2, 3]}).train()
    t, s = padded_vit(0), padded_vit(1)
    return t, s, (RelationDistill(t, s) if PAIRS[kind] is None else AttentionDistill(t, s, **PAIRS[kind])).train()


@pytest.mark.parametrize('kind', list(PAIRS))
@pytest.mark.parametrize('fill, key_only', CASES, ids=IDS)
def test_distill_pair_alone_or_padded(kind, fill, key_only):
    "An image's distillation loss through the whole pair, unpadded and in a batch padded by 6 junk tokens."
    t, s, ad = pair(kind)
    set_padding((t, s)); l0 = ad(X[:1])[1]
    set_padding((t, s), extra=6, fill=fill, key_only=key_only); l1 = ad(X[:1])[1]
    assert close(l1, l0), (l0.item(), l1.item())


@pytest.mark.parametrize('kind', list(PAIRS))
def test_distill_pair_batch_of_two_sizes(kind):
    "Images keeping 12 and 17 of their tokens, batched (padded to 20): the mean of their own losses, by real tokens."
    t, s, ad = pair(kind)
    alone = []
    for i, n in enumerate((12, 17)):
        set_padding((t, s), keep=[n]); alone.append(ad(X[i:i + 1])[1])
    set_padding((t, s), keep=[12, 17], extra=3); both = ad(X)[1]
    want = (12 * alone[0] + 17 * alone[1]) / 29
    assert close(both, want), (both.item(), want.item())


@pytest.mark.parametrize('fill, key_only', CASES, ids=IDS)
def test_attention_divergence_alone_or_padded(fill, key_only):
    "Per layer and head, KL and JS of an image's maps, unpadded and in a batch padded by 6 junk tokens."
    t, s = padded_vit(0), padded_vit(1)
    set_padding((t, s)); d0 = attention_divergence(t, s, X[:1])
    set_padding((t, s), extra=6, fill=fill, key_only=key_only); d1 = attention_divergence(t, s, X[:1])
    for k in ('kl', 'js'): torch.testing.assert_close(d1[k], d0[k], rtol=TOL, atol=TOL)


def test_attention_divergence_batch_of_two_sizes():
    t, s = padded_vit(0), padded_vit(1)
    alone = []
    for i, n in enumerate((12, 17)):
        set_padding((t, s), keep=[n]); alone.append(attention_divergence(t, s, X[i:i + 1]))
    set_padding((t, s), keep=[12, 17], extra=3); both = attention_divergence(t, s, X)
    for k in ('kl', 'js'):
        torch.testing.assert_close(both[k], (12 * alone[0][k] + 17 * alone[1][k]) / 29, rtol=TOL, atol=TOL)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('fill, key_only', CASES, ids=IDS)
def test_padding_on_cuda(fill, key_only):
    "On a CUDA device (other kernels): an image's fused and explicit loss and the student's gradients, alone and padded."
    torch.backends.cuda.matmul.allow_tf32 = False
    def run(x, m=None):
        x = {k: v.cuda().requires_grad_(k in ('qs', 'ks')) for k, v in x.items()}
        t, s = QK(x['qt'], x['kt'], SC, m), QK(x['qs'], x['ks'], SC, m)
        out = [transfer_loss(t, s), transfer_loss(t.logits(), s.logits(), mask=m)]
        return out + [g[:, :, :9] for l in out for g in torch.autograd.grad(l, (x['qs'], x['ks']))]
    x, m = padded([A], 5, FILLS[fill], key_only)
    for a, b in zip(run(A), run(x, m.cuda())):
        assert b.isfinite().all()
        torch.testing.assert_close(b, a, rtol=TOL, atol=TOL)
