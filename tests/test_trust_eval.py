"""Issue 23's kinds that are not refusals, run as a user runs them (the refusals are in `test_bad_inputs_*.py`):

- item 1: a checkpoint without a trained classifier (an MAE encoder) has its attention compared, and no accuracy;
- item 8c: `at_eval --attention`'s table keeps its columns aligned when the numbers are small (a distilled student);
- item 9: a resume that gives a transfer flag's default explicitly is the same run; a finished run says so in place;
- item 10: `--attn_probe` and `at_eval --attention` compare a teacher of another depth and head count through the
  recorded layer and head maps (heads averaged in groups, as the distillation does); `--attention N` beyond the data says so;
- item 11: `model.json` records the maps; `--head_map`; `--preset copy|distill` with `--share_drop_path false`.

Each case runs the console script in a fork of this process (`_bad_inputs.run_forked`), one as the installed script."""
import json, re
import pytest, timm, torch
import attention_transfer.vit  # noqa: F401  (registers the small ViTs)
from attention_transfer.models import create_model, create_teacher, save_student, checkpoint_meta
from attention_transfer.transfer import AttentionCopy
from attention_transfer.distill import AttentionDistill
from _bad_inputs import run, run_forked, snapshot

NANO, PICO = 'vit_nano_patch4_32', 'vit_pico_patch4_32'   # 2 blocks x 2 heads; 6 blocks x 4 heads
TRAIN = ['--model', NANO, '--data', 'digits', '--epochs', 1, '--steps_per_epoch', 2, '--batch_size', 16, '--num_workers', 0,
         '--warmup_epochs', 0]


def ok(*args):
    "Run a console script in a fork; assert it succeeded with nothing on stderr; return its stdout."
    r = run_forked(*args)
    assert r.returncode == 0 and not r.stderr.strip(), f"exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def table(out:str, name) -> list:
    "The lines of the attention table that `at_eval` printed for checkpoint `name` (heading left out)."
    lines = out.splitlines()
    i = next(i for i, l in enumerate(lines) if l.startswith(f"{name}: attention vs the teacher's"))
    j = next(j for j in range(i + 1, len(lines)) if lines[j].split()[0] == 'mean')
    return lines[i + 1:j + 1]


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    "Teachers (a same-size nano, a deeper and wider pico), and two cross-size runs: distill and distill_relations."
    root = tmp_path_factory.mktemp('trust')
    torch.manual_seed(0)
    torch.save({'model': timm.create_model(PICO, num_classes=10).state_dict()}, root/'pico.pth')
    torch.save({'model': timm.create_model(NANO, num_classes=10).state_dict()}, root/'nano.pth')
    for name, mode in [('xd', 'distill'), ('xr', 'distill_relations')]:
        ok('at_train', *TRAIN, '--teacher', PICO, '--finetune', root/'pico.pth', '--mode', mode, '--output_dir', root/name)
    return root


@pytest.fixture(scope='module')
def head_run(root):
    "A cross-size distillation with --head_map (item 11)."
    ok('at_train', *TRAIN, '--teacher', PICO, '--finetune', root/'pico.pth', '--mode', 'distill', '--head_map', '0:0', '1:1,2,3',
       '--attn_probe', 0, '--output_dir', root/'xh')
    return root/'xh'


def test_encoder_attention_without_accuracy(root):
    "Item 1: with --attention an encoder's attention is compared; no accuracy is printed or written for it."
    torch.manual_seed(1)
    torch.save({'model': timm.create_model(NANO, num_classes=0).state_dict()}, root/'encoder.pth')  # as at_pretrain writes
    r = run('at_eval', root/'encoder.pth', '--model', NANO, '--data', 'digits', '--num_workers', 0, '--attention', 16,
            '--teacher', root/'nano.pth', '--output', root/'encoder.json')
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr[-3000:]
    assert f"{root/'encoder.pth'}: no trained classifier, attention only" in r.stdout and 'top1' not in r.stdout, r.stdout
    res = json.loads((root/'encoder.json').read_text())[str(root/'encoder.pth')]
    assert list(res) == ['attention'] and res['attention']['images'] == 16, res


def test_attention_table_keeps_its_columns(root):
    "Item 8c: a distilled student close to its teacher has small divergences (1e-07): every value column ends at one offset."
    torch.manual_seed(2)
    t = create_teacher(NANO, None, num_classes=10); (root/'close').mkdir(); torch.save({'model': t.state_dict()}, root/'close'/'t.pth')
    s = create_model(NANO, None, num_classes=10)
    s.load_state_dict(t.state_dict())
    with torch.no_grad():
        for p in s.parameters(): p.add_(1e-4 * torch.randn_like(p))
    save_student(AttentionDistill(t, s), root/'close'/'model.pth', root/'close'/'t.pth')
    name = root/'close'/'model.pth'
    rows = table(ok('at_eval', name, '--data', 'digits', '--num_workers', 0, '--attention', 8), name)
    cells = [[m.end() for m in re.finditer(r'\S+', l)][1:] for l in rows]   # the first column is the block and its mark
    assert len(rows) == 4 and all(c == cells[0] for c in cells), '\n'.join(rows)
    assert any(len(v) > 6 for l in rows[1:] for v in l.split()[1:]), '\n'.join(rows)   # the wide case is exercised


@pytest.mark.parametrize('heads', [2, 4])
def test_attention_through_the_recorded_maps(root, heads):
    """Item 10: a copy student of 2 blocks from a 3-block teacher (2 or 4 heads), layer map {0: 0, 1: 2}: compared through
    the maps, so its copied blocks read 0; with 4 teacher heads each student head faces the mean of two."""
    torch.manual_seed(3)
    t, d = create_teacher(NANO, None, num_classes=10, depth=3, num_heads=heads), root/f'xcopy{heads}'
    d.mkdir(); torch.save({'model': t.state_dict()}, d/'teacher.pth')
    p = save_student(AttentionCopy(t, create_model(NANO, None, num_classes=10), layer_map={0: 0, 1: 2}), d/'model.pth', d/'teacher.pth')
    out = ok('at_eval', p, '--data', 'digits', '--num_workers', 0, '--attention', 8, '--output', root/f'xcopy{heads}.json')
    a = json.loads((root/f'xcopy{heads}.json').read_text())[str(p)]['attention']
    assert a['teacher_layers'] == [0, 2] and a['head_groups'] == ([[0, 1], [2, 3]] if heads == 4 else None), a
    assert max(a['kl'] + a['js']) < 1e-6, a
    assert 'teacher blocks 0<-0 1<-2' in out, out


def test_probe_and_eval_of_a_student_of_another_size(root):
    """Item 10: the training probe of a 2-block student distilled from a 6-block, 4-head teacher is measured (not skipped),
    through the run's maps; at_eval --attention on the same first 64 images gives the same mean JS."""
    rec = [json.loads(l) for l in (root/'xd'/'log.jsonl').read_text().splitlines()][-1]
    assert {'attn_kl', 'attn_js', 'attn_js_0', 'attn_js_1'} <= set(rec), rec
    ok('at_eval', root/'xd'/'model.pth', '--num_workers', 0, '--attention', 64, '--output', root/'xd.json')
    a = json.loads((root/'xd.json').read_text())[str(root/'xd'/'model.pth')]['attention']
    assert a['teacher_layers'] == [2, 5] and a['head_groups'] == [[0, 1], [2, 3]], a
    assert sum(a['js']) / 2 == pytest.approx(rec['attn_js'], rel=1e-4), (a['js'], rec['attn_js'])


def test_attention_beyond_the_data_says_so(root):
    "Item 10: --attention N larger than the evaluation data: one note line, and all its images compared."
    out = ok('at_eval', root/'xd'/'model.pth', '--num_workers', 0, '--attention', 100000, '--output', root/'many.json')
    assert 'at_eval: note: --attention 100000 asks for more than the 540 evaluation images: all 540 are compared' in out, out
    assert json.loads((root/'many.json').read_text())[str(root/'xd'/'model.pth')]['attention']['images'] == 540


def test_model_json_records_the_maps(root, head_run):
    "Item 11: model.json has the layer map, head map and relation heads the checkpoint records (defaults resolved)."
    for run_, want in [('xd', ([[0, 2], [1, 5]], [[0, 1], [2, 3]], None)), ('xr', ([[0, 2], [1, 5]], None, 2)),
                       ('xh', ([[0, 2], [1, 5]], [[0], [1, 2, 3]], None))]:
        spec, tr = json.loads((root/run_/'model.json').read_text()), checkpoint_meta(root/run_/'model.pth')['transfer']
        assert (spec['layer_map'], spec['head_map'], spec['relation_heads']) == want, (run_, spec)
        assert [tr.get(k) for k in ('layer_map', 'head_map', 'relation_heads')] == list(want), (run_, tr)


@pytest.mark.parametrize('run_,args', [('xd', ['--mode', 'distill', '--layer_map', '0:2', '1:5']),
                                       ('xd', ['--mode', 'distill', '--head_map', '0:0,1', '1:2,3']),
                                       ('xr', ['--mode', 'distill_relations', '--relation_heads', 2]),
                                       ('xh', ['--mode', 'distill', '--head_map', '1:1,2,3', '0:0', '--attn_probe', 0])])
def test_resume_with_the_defaults_given(root, run_, args, request):
    """Item 9: the finished run resumed in place with its resolved values given explicitly is the same run: exit 0, one note
    that it is finished, its files untouched."""
    if run_ == 'xh': request.getfixturevalue('head_run')
    before = snapshot(root/run_)
    out = ok('at_train', *TRAIN, '--teacher', PICO, '--finetune', root/'pico.pth', *args, '--resume', 'allow',
             '--output_dir', root/run_)
    assert f"at_train: note: {root/run_/'checkpoint.pth'} already finished: 1 epochs trained, --epochs 1: nothing to train" in out, out
    assert snapshot(root/run_) == before


def test_resume_with_another_value_is_refused(root):
    "Item 9: what the run did not use is still another run, named as given."
    r = run_forked('at_train', *TRAIN, '--teacher', PICO, '--finetune', root/'pico.pth', '--mode', 'distill_relations',
                   '--relation_heads', 1, '--resume', 'allow', '--output_dir', root/'xr')
    assert r.returncode == 1 and 'it has no --relation_heads; this run asks for --relation_heads 1' in r.stderr, r.stderr


@pytest.mark.parametrize('preset', ['copy', 'distill'])
def test_preset_without_shared_drop_path(root, preset, tmp_path):
    "Item 11: `--share_drop_path false` after a preset trains with a deeper teacher (the refusal names it: test_bad_inputs_train)."
    ok('at_train', '--preset', preset, *TRAIN, '--end_layer', 0, '--teacher', PICO, '--finetune', root/'pico.pth',
       '--share_drop_path', 'false', '--attn_probe', 0, '--output_dir', tmp_path/'run')
    args = torch.load(tmp_path/'run'/'checkpoint.pth', weights_only=True)['args']
    assert (args['share_drop_path'], args['mode'], args['layer_map']) == (False, preset, None), args
