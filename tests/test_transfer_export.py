"""A distilled student saved by `models.save_student` loads with plain timm in a process that never imports attention_transfer;
the pairs' modules (`transfer`, `distill`) do not depend on `models`, nor `transfer` on `distill`."""
import subprocess, sys, textwrap
import pytest, torch, torch.nn.functional as F, timm
from attention_transfer.distill import AttentionDistill
from attention_transfer.models import save_student

KW = dict(img_size=32, patch_size=8, depth=2, num_classes=10)

def run(code):
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True, text=True, timeout=300)

@pytest.mark.parametrize('ext', ['pth', 'safetensors'])
def test_student_loads_in_plain_timm(tmp_path, ext):
    torch.manual_seed(0)
    t, s = timm.create_model('vit_tiny_patch16_224', **KW), timm.create_model('vit_tiny_patch16_224', **KW)
    ad = AttentionDistill(t, s, end_layer=-1).train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([1, 2, 3, 4])
    opt = torch.optim.AdamW(ad.parameters(), lr=1e-3)
    for _ in range(2):
        out, atd = ad(x); (F.cross_entropy(out, y) + 3.0 * atd).backward(); opt.step(); opt.zero_grad()
    ckpt = tmp_path / f'student.{ext}'
    save_student(ad, ckpt)
    assert [p.name for p in tmp_path.iterdir()] == [ckpt.name]          # no temporary file left behind
    with torch.no_grad(): torch.save({'x': x, 'logits': ad.eval()(x)}, tmp_path / 'ref.pt')
    r = run(f"""
        import sys, torch, timm
        m = timm.create_model('vit_tiny_patch16_224', checkpoint_path={str(ckpt)!r}, **{KW!r}).eval()
        ref = torch.load({str(tmp_path / 'ref.pt')!r}, weights_only=True)
        with torch.no_grad(): out = m(ref['x'])
        assert not any(k.startswith('attention_transfer') for k in sys.modules), 'attention_transfer was imported'
        print('maxdiff', (out - ref['logits']).abs().max().item())
        assert torch.equal(out, ref['logits'])
    """)
    assert r.returncode == 0, r.stderr
    assert 'maxdiff 0.0' in r.stdout

def test_save_student_failure_leaves_nothing(tmp_path):
    t, s = timm.create_model('vit_tiny_patch16_224', **KW), timm.create_model('vit_tiny_patch16_224', **KW)
    blocker = tmp_path / 'blocker'; blocker.write_text('a file where the folder should be')
    with pytest.raises(Exception): save_student(AttentionDistill(t, s), blocker / 'student.pth')
    assert list(tmp_path.iterdir()) == [blocker]

@pytest.mark.parametrize('mod,later', [('transfer', ['distill', 'models']), ('distill', ['models'])])
def test_lessons_depend_only_on_earlier_ones(mod, later):
    "Lesson 02 (`transfer`) and 03 (`distill`) import nothing from the lessons after them."
    r = run(f"""
        import sys, attention_transfer.{mod}
        print(sorted(m for m in sys.modules if m.startswith('attention_transfer.')))
        assert not [m for m in {later!r} if 'attention_transfer.' + m in sys.modules]
    """)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize('ext', ['pth', 'safetensors'])
def test_save_student_says_what_it_is(tmp_path, ext):
    "A copy student records its method, transfer and teacher (path relative to the file, SHA-256) in the file itself."
    import hashlib
    from attention_transfer.models import create_model, save_timm_checkpoint, checkpoint_meta
    from attention_transfer.transfer import AttentionCopy
    t = create_model('vit_tiny_patch16_224', None, **KW); s = create_model('vit_tiny_patch16_224', None, **KW)
    save_timm_checkpoint(t, tmp_path/'teacher'/'t.pth')
    save_student(AttentionCopy(t, s, end_layer=-1, heads=[1, 0]), tmp_path/'run'/f'student.{ext}', teacher_path=tmp_path/'teacher'/'t.pth',
                 classes=list('abcdefghij'))
    m = checkpoint_meta(tmp_path/'run'/f'student.{ext}')
    assert (m['method'], m['transfer'], m['model'], m['model_args']) == ('copy', dict(target='attn', layers=[0], heads=[0, 1], layer_map=[[0, 0]], head_map=None),
                                                                         'vit_tiny_patch16_224', dict(num_classes=10, img_size=32, patch_size=8, depth=2))
    assert m['teacher']['path'] == '../teacher/t.pth' and m['classes'] == list('abcdefghij')
    assert m['teacher']['sha256'] == hashlib.sha256((tmp_path/'teacher'/'t.pth').read_bytes()).hexdigest()
    assert checkpoint_meta(save_student(AttentionDistill(t, s), tmp_path/f'd.{ext}'))['method'] == 'distill'
