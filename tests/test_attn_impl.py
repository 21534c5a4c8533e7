"""The attention core is chosen for the user (issue 20, deliverable 2): `attn_impl` 'auto', 'kernel', 'fused' or
'explicit' on the pairs, the method table's tasks, `at_train`, `at_bench` and `at_demo`. Every core gives the same
logits, loss and gradients; 'auto' resolves from `transfer.AUTO_IMPL`; the older `fused=` switch still works; a run
may resume on another core; a core that cannot run, or a name that is none, is refused in one line. The explicit
distillation core computes the student's map once, for its output and its loss (`distill.AttentionCE`)."""
import math, pytest, timm, torch, torch.nn.functional as F
import attention_transfer.vit  # noqa: F401  (registers vit_nano_patch4_32)
from attention_transfer.benchmark import BenchConfig, at_bench
from attention_transfer.cli import TrainConfig, at_train, resume_keys
from attention_transfer.command import run_command
from attention_transfer.demo import DemoArgs, at_demo
from attention_transfer.distill import AttentionDistill
from attention_transfer.methods import build_task
from attention_transfer.transfer import AUTO_IMPL, AttentionCopy, auto_impl

def vit(seed=0, **kw):
    "A small ViT with weights drawn large enough that attention is peaked (img 32, patch 8: 17 tokens, 4 heads)."
    torch.manual_seed(seed)
    m = timm.create_model('vit_tiny_patch16_224', **{**dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4,
                                                          num_classes=10), **kw})
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim > 1: p.normal_(0, 0.3)
    return m

X, Y = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])

def step(pair):
    "Logits, transfer loss and the student's gradients after one step of label loss + transfer loss."
    pair.student.zero_grad()
    r = pair(X); out, loss = r if isinstance(r, tuple) else (r, torch.zeros(()))
    (F.cross_entropy(out, Y) + loss).backward()
    return out.detach(), loss.detach(), [p.grad.clone() for p in pair.student.parameters() if p.grad is not None]

CASES = {'plain': {}, 'heads': dict(heads=[0, 3]), 'end_layer': dict(end_layer=-1),
         'head_map': dict(head_map=[[0, 1], [2, 3]])}

@pytest.mark.parametrize('cls', [AttentionCopy, AttentionDistill])
@pytest.mark.parametrize('case', list(CASES))
def test_every_core_gives_the_same_step(cls, case):
    "Logits, loss and the student's gradients agree across cores (fp32, to 1e-5 relative)."
    kw = CASES[case]
    res = {}
    for impl in ('fused', 'explicit', 'auto'):
        s = vit(1, num_heads=2) if 'head_map' in kw else vit(1)
        res[impl] = step(cls(vit(), s, attn_impl=impl, **kw).train())
    (o0, l0, g0) = res['explicit']
    for impl in ('fused', 'auto'):
        o, l, g = res[impl]
        torch.testing.assert_close(o, o0, rtol=1e-5, atol=1e-5); torch.testing.assert_close(l, l0, rtol=1e-5, atol=1e-5)
        for a, b in zip(g, g0): torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))

def test_explicit_distill_keeps_two_maps_per_layer():
    "The student's map once, for its output and its loss: two `b h n n` tensors saved per layer (its map, the teacher's)."
    ad = AttentionDistill(vit(), vit(1), attn_impl='explicit').train()
    shapes = []
    def pack(t): shapes.append(t); return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t): ad(X)
    maps = {t.untyped_storage().data_ptr() for t in shapes if t.shape[-2:] == (17, 17) and t.numel() >= 4 * 4 * 17 * 17}
    assert len(maps) == 2 * len(ad.layers), len(maps)

def test_auto_reads_the_table():
    "'auto' is `AUTO_IMPL`'s pick for the input's device, dtype and token count; float64 takes the explicit core."
    for kind in ('copy', 'distill'):
        for dev in ('cpu', 'cuda'):
            assert auto_impl(kind, dev, torch.float32, 17) == AUTO_IMPL[dev, kind][0][1]
        assert auto_impl(kind, 'cpu', torch.float64, 17) == 'explicit'
    assert AttentionDistill(vit(), vit(1)).impl_for(X) == auto_impl('distill', 'cpu', torch.float32, 17)
    assert math.isinf(AUTO_IMPL['cpu', 'distill'][-1][0])   # every token count has an entry

def test_the_older_switch_and_the_tasks():
    "`fused=True/False` means 'fused'/'explicit'; a contradiction and an unknown core are one-line errors."
    assert AttentionCopy(vit(), vit(1), fused=False).attn_impl == 'explicit'
    assert AttentionDistill(vit(), vit(1), fused=True).attn_impl == 'fused'
    assert build_task('distill', vit(1), vit(), attn_impl='explicit').pair.attn_impl == 'explicit'
    with pytest.raises(ValueError, match='contradicts'): AttentionCopy(vit(), vit(1), fused=True, attn_impl='explicit')
    with pytest.raises(ValueError, match="attn_impl='flash'"): AttentionDistill(vit(), vit(1), attn_impl='flash')

def test_kernel_where_it_cannot_run_is_one_line():
    "'kernel' where the kernel cannot run (a head map averages teacher maps; no Triton): one ValueError naming attn_impl."
    pair = AttentionDistill(vit(), vit(1, num_heads=2), attn_impl='kernel', head_map=[[0, 1], [2, 3]]).train()
    with pytest.raises(ValueError, match="attn_impl='kernel' cannot average teacher heads"): pair(X)
    from attention_transfer import transfer
    real = transfer.kernel_problem
    try:
        transfer.kernel_problem = lambda device, dtype: 'no Triton here'
        with pytest.raises(ValueError, match="attn_impl='kernel' cannot run on cpu .*no Triton here"):
            AttentionDistill(vit(), vit(1), attn_impl='kernel').train()(X)
    finally: transfer.kernel_problem = real

FLAGS = ['--model', 'vit_nano_patch4_32', '--data', 'digits', '--epochs', '2', '--steps_per_epoch', '2', '--batch_size', '8',
         '--num_workers', '0', '--warmup_epochs', '0', '--attn_probe', '0']

def train(*argv): return run_command(at_train, TrainConfig, 'at_train', FLAGS + [str(a) for a in argv])

def test_at_train_flag_logs_and_resumes_on_another_core(tmp_path, capsys):
    torch.manual_seed(0)
    teacher, out = tmp_path/'teacher.pth', tmp_path/'run'
    torch.save({'model': timm.create_model('vit_nano_patch4_32', num_classes=10).state_dict()}, teacher)
    args = ['--mode', 'distill', '--finetune', teacher, '--output_dir', out]
    train(*args, '--attn_impl', 'fused', '--stop_epoch', 1)
    assert 'attention core fused' in capsys.readouterr().out
    assert 'attn_impl' not in resume_keys(TrainConfig())                           # how, not what: may change
    train(*args, '--resume', 'allow')                                              # the same run, on the auto core
    log = capsys.readouterr().out
    assert 'from epoch 1' in log and f"attention core {auto_impl('distill', 'cpu', tokens=65)} (auto)" in log, log
    for bad, name in ((args[:4] + ['--attn_impl', 'flash'], "--attn_impl must be one of auto, kernel, fused, explicit, not 'flash'"),
                      (['--mode', 'finetune', '--finetune', teacher, '--attn_impl', 'explicit'],
                       '--attn_impl does not apply to --mode finetune')):
        with pytest.raises(SystemExit) as e: train(*bad, '--output_dir', tmp_path/'x')
        err = capsys.readouterr().err
        assert e.value.code == 1 and name in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path/'x').exists()

def test_at_bench_measures_each_core(tmp_path):
    res = at_bench(BenchConfig(model=['vit_nano_patch4_32'], img_size=[32], batch_time=[2], steps=1, warmup=1, rounds=1,
                               end_layer=-1, methods=['distill'], attn_impl=['fused', 'explicit', 'auto']))
    got = [(r['method'], r['core']) for r in res['summary']]
    assert got == [('finetune', None), ('distill', 'fused'), ('distill', 'explicit'),
                   ('distill', auto_impl('distill', 'cpu', tokens=65) + ' (auto)')], got
    with pytest.raises(Exception, match='--attn_impl: unknown flash'):
        at_bench(BenchConfig(model=['vit_nano_patch4_32'], img_size=[32], end_layer=-1, attn_impl=['flash']))

def test_at_demo_refuses_a_bad_core_before_work(tmp_path):
    with pytest.raises(Exception, match="--attn_impl must be one of auto, kernel, fused, explicit, not 'flash'"):
        at_demo(DemoArgs(attn_impl='flash', output_dir=str(tmp_path/'o')))
    assert not (tmp_path/'o').exists()

# ---- the Triton kernel, under its interpreter on the CPU (tiny shapes: the interpreter is slow)

def small(seed=0): return vit(seed, depth=2)

@pytest.mark.parametrize('cls', [AttentionCopy, AttentionDistill])
@pytest.mark.parametrize('heads', [None, [1, 2]])
def test_kernel_core_gives_the_explicit_step(cls, heads):
    "attn_impl='kernel' (one Triton pass, interpreted here) gives the explicit core's logits, loss and gradients."
    from attention_transfer.transfer import kernel_problem
    if kernel_problem('cpu', torch.float32): pytest.skip(kernel_problem('cpu', torch.float32))
    x, y = X[:2], Y[:2]
    def run(impl):
        pair = cls(small(), small(1), attn_impl=impl, heads=heads).train()
        r = pair(x); out, loss = r if isinstance(r, tuple) else (r, torch.zeros(()))
        (F.cross_entropy(out, y) + loss).backward()
        return out.detach(), loss.detach(), [p.grad.clone() for p in pair.student.parameters() if p.grad is not None]
    (o1, l1, g1), (o0, l0, g0) = run('kernel'), run('explicit')
    torch.testing.assert_close(o1, o0, rtol=1e-5, atol=1e-5); torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-5)
    for a, b in zip(g1, g0): torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * (1 + float(b.abs().max())))

def test_kernel_padding_does_not_count():
    "An image alone and padded by junk tokens behind a mask: the kernel core's loss is the same (real rows only)."
    from _padded import padded_vit, set_padding
    from attention_transfer.transfer import kernel_problem
    if kernel_problem('cpu', torch.float32): pytest.skip(kernel_problem('cpu', torch.float32))
    t, s = padded_vit(0), padded_vit(1)
    ad = AttentionDistill(t, s, attn_impl='kernel').train()
    set_padding((t, s)); l0 = ad(X[:1])[1]
    set_padding((t, s), extra=5, fill='-inf'); l1 = ad(X[:1])[1]
    torch.testing.assert_close(l1, l0, rtol=1e-6, atol=1e-6)
