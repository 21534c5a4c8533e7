"""Every pooling a timm ViT has (class token, average, MAP attention pool, none) loads as a teacher with its own head
parts, from Python and from the command line, and its attention maps and outputs equal the source model's (issue 21).
Flags that ask for another pooling still win, with a note. Tiny models (vit_pico_patch4_32), a step per run."""
import json, os, subprocess, sys, warnings
from pathlib import Path
import pytest, safetensors.torch, timm, torch
import attention_transfer.vit  # noqa: F401  (registers vit_pico_patch4_32)
from attention_transfer.attention import attention_maps
from attention_transfer.models import (CheckpointNote, checkpoint_meta, checkpoint_pooling, create_student,
                                       create_teacher, model_meta, save_timm_checkpoint)

MODEL = 'vit_pico_patch4_32'
BIN = Path(sys.executable).parent
ENV = dict(os.environ, OMP_NUM_THREADS='1', MPLBACKEND='Agg')
RUN = ['--model', MODEL, '--data', 'digits', '--input_size', 32, '--epochs', 1, '--steps_per_epoch', 1,
       '--batch_size', 8, '--num_workers', 0, '--warmup_epochs', 0, '--attn_probe', 8]


def source(pool:str, num_classes:int, seed:int=0) -> torch.nn.Module:
    "A timm ViT with `global_pool=pool`, every parameter (norms and attention pool too) moved away from its init."
    torch.manual_seed(seed)
    m = timm.create_model(MODEL, global_pool=pool, num_classes=num_classes).eval()
    with torch.no_grad():
        for p in m.parameters(): p.add_(torch.randn_like(p) * 0.1)
    return m


def save(m, path:Path, how:str) -> Path:
    "`m` as a bare state dict (torch), safetensors, or a file that describes itself (`save_timm_checkpoint` + meta)."
    if how == 'pth': torch.save(m.state_dict(), path)
    elif how == 'safetensors': safetensors.torch.save_file(m.state_dict(), path)
    else: save_timm_checkpoint(m, path, model_meta(m))
    return path


# (pooling, classes, file): keys tell token (with a classifier), avg and map; a headless class-token or pool-free
# ('') file looks like an MAE encoder, so only its description tells
CASES = [('token', 10, 'pth'), ('token', 10, 'safetensors'), ('avg', 10, 'pth'), ('avg', 0, 'safetensors'),
         ('map', 10, 'pth'), ('map', 0, 'pth'), ('map', 0, 'safetensors'), ('token', 0, 'described.pth'),
         ('', 0, 'described.safetensors'), ('map', 0, 'described.pth')]


@pytest.mark.parametrize('pool,classes,how', CASES, ids=[f"{p or 'none'}-{n}-{h}" for p, n, h in CASES])
def test_teacher_is_the_source_model(tmp_path, pool, classes, how):
    "Loaded with no pooling asked: its own pooling and head parts, every weight, attention map and output equal."
    src = source(pool, classes)
    f = save(src, tmp_path/f'teacher.{how.split(".")[-1]}', how.split('.')[0])
    assert checkpoint_pooling(f) == pool
    with warnings.catch_warnings():
        warnings.simplefilter('error', CheckpointNote)  # nothing changed on purpose: no note
        t = create_teacher(MODEL, f)
    assert (t.global_pool, t.at_checkpoint['fresh'], t.at_checkpoint['notes']) == (pool, [], [])
    ts, ss = t.state_dict(), src.state_dict()
    assert list(ts) == list(ss) and all(torch.equal(ts[k], ss[k]) for k in ss)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(attention_maps(t, x), attention_maps(src, x), strict=True): torch.testing.assert_close(a, b)
        torch.testing.assert_close(t(x), src(x))                              # logits, or the pooled features
        torch.testing.assert_close(t.forward_features(x), src.forward_features(x))


@pytest.mark.parametrize('pool', ['token', 'avg', 'map', ''])
def test_student_gets_the_teachers_parts(tmp_path, pool):
    "create_student: the teacher's pooling and head parts (an attention pool for a MAP teacher), randomly initialised."
    t = create_teacher(MODEL, save(source(pool, 0), tmp_path/'t.pth', 'described'))
    s = create_student(t, num_classes=5)
    assert (s.global_pool, s.num_classes, s.training) == (pool, 5, True)
    ts, ss = t.state_dict(), s.state_dict()
    assert {k: v.shape for k, v in ss.items() if not k.startswith('head')} == {k: v.shape for k, v in ts.items()}
    assert any(k.startswith('attn_pool.') for k in ss) == (pool == 'map')
    assert not torch.equal(ss['blocks.0.attn.qkv.weight'], ts['blocks.0.attn.qkv.weight'])  # random, not copied


def test_mae_encoder_keeps_average_pooling(tmp_path):
    "An MAE encoder (no classifier, a final norm) is still average-pooled with a fresh fc_norm, as MAE fine-tunes it."
    torch.manual_seed(0)
    f = tmp_path/'mae.pth'; torch.save({'model': timm.create_model(MODEL, num_classes=0).state_dict()}, f)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        t = create_teacher(MODEL, f, num_classes=10)
    assert (checkpoint_pooling(f), t.global_pool, t.at_checkpoint['format']) == (None, 'avg', 'mae')
    assert t.at_checkpoint['fresh'] == ['fc_norm.bias', 'fc_norm.weight', 'head.bias', 'head.weight']
    notes = [str(x.message).split(': ', 1)[1] for x in w]
    assert notes == ['global average pooling with a fresh fc_norm (the final norm is not used)']


@pytest.mark.parametrize('pool,asked,fresh', [('map', 'avg', ['fc_norm']), ('map', 'token', []),
                                              ('avg', 'token', ['norm']), ('token', 'map', ['attn_pool'])])
def test_asked_pooling_wins_with_a_note(tmp_path, pool, asked, fresh):
    "A global_pool other than the file's: the model is built as asked, the parts it lacks fresh, and a note says so."
    src = source(pool, 10)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        t = create_teacher(MODEL, save(src, tmp_path/'t.safetensors', 'safetensors'), global_pool=asked)
    notes = [str(x.message) for x in w if issubclass(x.category, CheckpointNote)]
    assert t.global_pool == asked and f"global_pool={asked!r} asked; the checkpoint has {pool!r} pooling" in notes[0]
    assert sorted({k.split('.')[0] for k in t.at_checkpoint['fresh']}) == fresh and len(notes) == 2
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # the blocks are the file's: their attention is the source model's
        for a, b in zip(attention_maps(t, x), attention_maps(src, x), strict=True): torch.testing.assert_close(a, b)


def at(tool:str, *args) -> subprocess.CompletedProcess:
    r = subprocess.run([str(BIN/tool), *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def test_cli_map_teacher_distill_and_eval(tmp_path):
    "at_train --mode distill from a SigLIP-style (MAP, headless) safetensors file, then at_eval --teacher --attention."
    src = source('map', 0)
    f = save(src, tmp_path/'siglip.safetensors', 'safetensors')
    r = at('at_train', *RUN, '--mode', 'distill', '--finetune', f, '--output_dir', tmp_path/'run')
    assert "has 'map' pooling" in r.stdout
    meta = checkpoint_meta(tmp_path/'run'/'model.pth')
    assert (meta['model_args']['global_pool'], meta['teacher']['model_args']['global_pool']) == ('map', 'map')
    student = torch.load(tmp_path/'run'/'model.pth', weights_only=True)['model']
    assert {k for k in student if not k.startswith('head')} == set(safetensors.torch.load_file(f))  # attn_pool too
    at('at_eval', tmp_path/'run'/'model.pth', '--teacher', f, '--attention', 4, '--num_workers', 0,
       '--output', tmp_path/'e.json')
    res = json.loads((tmp_path/'e.json').read_text())[str(tmp_path/'run'/'model.pth')]
    assert len(res['attention']['js']) == len(src.blocks)


def test_cli_token_teacher_copy_keeps_its_norm(tmp_path):
    "A DeiT-style file (class token, norm, classifier): copy keeps its token pooling and norm (no fresh fc_norm)."
    src = source('token', 10)
    f = save(src, tmp_path/'deit.pth', 'pth')
    r = at('at_train', *RUN, '--mode', 'copy', '--finetune', f, '--output_dir', tmp_path/'run')
    assert 'fc_norm' not in r.stdout + r.stderr
    meta = checkpoint_meta(tmp_path/'run'/'model.pth')
    assert (meta['model_args']['global_pool'], meta['teacher']['model_args']['global_pool']) == ('token', 'token')
    rec, = [json.loads(l) for l in (tmp_path/'run'/'log.jsonl').read_text().splitlines()]
    assert rec['attn_js'] == pytest.approx(0, abs=1e-6)  # every block copies the file's attention
    # the flag still wins, and a run made with it resumes with it (an older run recorded 'avg' the same way)
    r = at('at_train', *RUN, '--mode', 'copy', '--finetune', f, '--global_pool', '--output_dir', tmp_path/'avg')
    assert "global_pool='avg' asked; the checkpoint has 'token' pooling" in r.stdout
    at('at_train', *RUN, '--mode', 'copy', '--finetune', f, '--epochs', 2, '--resume', 'allow',
       '--output_dir', tmp_path/'avg')
    assert checkpoint_meta(tmp_path/'avg'/'model.pth')['model_args']['global_pool'] == 'avg'
