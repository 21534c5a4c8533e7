"""`attention_transfer.benchmark` on tiny models: the saved-activation count is exact, the table's ratios are right,
`python -m attention_transfer.benchmark` (what the GPU machine runs) writes its JSON without the notebook stack installed,
the GPU preset's code path runs on the CPU, and bad flags are refused in one line before any work."""
import json, os, subprocess, sys
from pathlib import Path
import pytest, torch, torch.nn as nn
from attention_transfer.benchmark import saved_activation_bytes, summarize, markdown_table, build_network, TrainStep, measure, main
from attention_transfer.methods import METHODS

ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore::UserWarning')
TINY = ['--model', 'vit_nano_patch4_32', '--img_size', '32', '--batch_time', '2', '--steps', '2', '--warmup', '1', '--end_layer', '-1']


def bench(*args, cwd=None, pre=''):
    "Run `python -m attention_transfer.benchmark ARGS` (after the Python statements `pre`); never raises."
    code = f"{pre}\nimport runpy, sys; sys.argv = ['at_bench'] + {list(map(str, args))!r}; runpy.run_module('attention_transfer.benchmark', run_name='__main__')"
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600)


def test_saved_bytes_toy_graph():
    "exp saves its result, sin saves the same tensor as input: one 4x8 fp32 storage; parameters and dead nodes are not counted."
    x = torch.randn(4, 8, requires_grad=True)
    assert saved_activation_bytes(lambda: x.exp().sin().sum()) == 128
    lin = nn.Linear(8, 1, bias=False)
    assert saved_activation_bytes(lambda: (x.exp() * lin.weight).sum(), exclude=lin) == 128
    assert saved_activation_bytes(lambda: (x.exp() * lin.weight).sum()) == 128 + 32
    def dead():
        unused = x.exp()
        return x.sin().sum()
    assert saved_activation_bytes(dead) == 128
    assert saved_activation_bytes(lambda: x.exp()[:2].sin().sum()) == 128  # a saved view counts its whole storage, once


@pytest.mark.parametrize('method', ['finetune', 'copy', 'distill', 'logit_kd'])
def test_saved_bytes_affine_in_batch(method):
    "Per-image activations plus a few fixed bytes (the loss's scalars): no parameter (the teacher's included) slipped into the count."
    net = build_network(method, 'vit_nano_patch4_32', end_layer=-1)
    b2, b4, b8 = (saved_activation_bytes(TrainStep(net, b).loss, exclude=net) for b in (2, 4, 8))
    assert b8 - b4 == 2 * (b4 - b2) and 0 <= 2 * b2 - b4 < 64 and b2 > 100_000


def test_every_table_method_trains_one_step():
    "Each method in the table builds, and one `TrainStep` (its task's own loss) moves exactly the trainable parameters."
    for method in METHODS:
        task = build_network(method, 'vit_nano_patch4_32', end_layer=-1)
        step = TrainStep(task, 2)
        params = [p for g in step.opt.param_groups for p in g['params']]
        before = [p.detach().clone() for p in params]
        frozen = [(p, p.detach().clone()) for p in task.parameters() if not p.requires_grad]
        assert torch.isfinite(step()), method
        assert params and all(not torch.equal(a, p) for a, p in zip(before, params) if p.numel() > 1), method
        assert all(torch.equal(a, p) for p, a in frozen), method   # the teacher never moves


def test_fp16_step_uses_a_grad_scaler():
    step = TrainStep(build_network('copy', 'vit_nano_patch4_32', end_layer=-1), 2, amp=torch.float16)
    assert step.scaler.is_enabled() and torch.isfinite(step()) and step.scaler.get_scale() > 0
    assert not TrainStep(build_network('finetune', 'vit_nano_patch4_32'), 2).scaler.is_enabled()


def test_summarize_ratios():
    def row(method, t, saved, peak):
        return dict(model='m', method=method, img_size=224, tokens=197, batch=8, compile=False, amp='off', status='ok',
                    times=[t, t, 5 * t], first=2., saved_bytes=saved, peak_bytes=peak)
    rows = [row('finetune', 1., 100, 10), row('distill', 1.5, 150, 12), row('finetune', 2., 100, 10), row('distill', 2.6, 150, 12)]
    s = summarize(rows)
    assert [r['method'] for r in s] == ['finetune', 'distill']
    ft, d = s
    assert (ft['time_ratio'], ft['saved_ratio'], ft['peak_ratio'], ft['time_ratio_range']) == (1., 1., 1., [1., 1.])
    assert ft['step_s'] == 2. and ft['images_per_s'] == 4.   # median of 1 1 5 2 2 10
    assert d['time_ratio'] == pytest.approx(2.6 / 2) and d['time_ratio_range'] == pytest.approx([1.3, 1.5])
    assert d['saved_ratio'] == 1.5 and d['peak_ratio'] == pytest.approx(1.2) and d['rounds'] == 2
    assert markdown_table(s).splitlines()[3].split(' | ')[8:10] == ['1.30', '1.30–1.50']


def test_time_ratios_not_given_without_warmup_or_with_one_timed_step():
    "A cold first step or a single timed step is no ratio: `n/a` with the reason; step times and memory ratios stay."
    def row(method, t, first, times):
        return dict(model='m', method=method, img_size=224, tokens=197, batch=8, compile=False, amp='off', status='ok',
                    times=times, first=first, saved_bytes=100 if method == 'finetune' else 150)
    for first, times, why in ((None, [1., 1.], 'no warm-up step'), (1., [1.], 'one timed step')):
        s = summarize([row('finetune', 1., first, times), row('copy', 1., first, [2 * t for t in times])])
        assert [(r.get('time_ratio'), r.get('time_ratio_range'), r['time_note'][:len(why)]) for r in s] == [(None, None, why)] * 2
        assert s[1]['step_s'] == 2. and s[1]['saved_ratio'] == 1.5
        t = markdown_table(s).splitlines()
        assert t[3].split(' | ')[8:10] == ['n/a', 'n/a'] and t[-1].startswith('n/a: time ratios need a warm-up step') and why in t[-1]
    s = summarize([row('finetune', 1., 1., [1.]), row('finetune', 1., 1., [1.]), row('copy', 1., 1., [2.]), row('copy', 1., 1., [2.])])
    assert s[1]['time_ratio'] == 2. and 'time_note' not in s[1]   # two rounds of one timed step after a warm-up: compared


def test_measure_reports_a_failure_instead_of_raising():
    r = measure('copy', 'vit_nano_patch4_32', steps=1)   # end_layer -3 does not fit its 2 blocks
    assert r['status'].startswith('failed: ValueError: end_layer=-3 out of range') and 'Traceback' in r['error']


def test_cli_writes_json_without_the_notebook_stack(tmp_path):
    "`python -m attention_transfer.benchmark` with torch, timm, einops, numpy, safetensors, simple-parsing, fastcore only."
    out = tmp_path / 'b.json'
    block = "import sys\nfor m in ('fastprogress', 'matplotlib', 'mlxtend', 'sklearn', 'nbdev', 'fastcore.script'): sys.modules[m] = None"
    r = bench(*TINY, '--rounds', '2', '--output', out, pre=block)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert list(res) == ['environment', 'flags', 'summary', 'rows']
    assert [(s['method'], s['tokens'], s['rounds']) for s in res['summary']] == [('finetune', 65, 2), ('copy', 65, 2), ('distill', 65, 2)]
    ft = res['summary'][0]
    assert ft['time_ratio'] == 1. and ft['saved_ratio'] == 1. and all(s['saved_bytes'] > 0 for s in res['summary'])
    assert len(res['rows']) == 6 and all(len(r['times']) == 2 for r in res['rows'])
    assert '| vit_nano_patch4_32 | 32 | 65 | False | distill | explicit (auto) | 2 |' in r.stdout and 'torch threads' in r.stdout   # auto's core named


def test_gpu_preset_code_path_on_cpu(tmp_path):
    "--gpu's path (two models with their own batches, eager then compiled, autocast, a budget) on the CPU, Dynamo-traced."
    out = tmp_path / 'g.json'
    main(['--gpu', '--device', 'cpu', '--model', 'vit_nano_patch4_32', 'vit_pico_patch4_32', '--img_size', '32',
          '--batch_time', '2', '1', '--steps', '1', '--warmup', '1', '--end_layer', '-1', '--amp', 'bf16',
          '--backend', 'eager', '--output', str(out)])
    res = json.loads(out.read_text())
    assert res['flags']['compile'] == 'both' and res['flags']['budget'] == 240. and res['flags']['rounds'] == 1
    got = [(s['model'], s['compile'], s['method'], s['batch'], s['amp'], s['status']) for s in res['summary']]
    assert got == [(m, c, meth, b, 'bfloat16', 'ok') for c in (False, True) for m, b in (('vit_nano_patch4_32', 2), ('vit_pico_patch4_32', 1))
                   for meth in ('finetune', 'copy', 'distill')]
    assert all('saved_bytes' not in r_ for r_ in res['rows'])   # --gpu measures peak memory, not saved bytes


@pytest.mark.parametrize('args,code,names', [
    (['--methods', 'no_such_method'], 1, ['--methods', 'no_such_method', 'logit_kd']),
    (['--img_size', '30'], 1, ['--img_size 30', 'patch size 4']),
    (['--end_layer', '-5'], 1, ['--end_layer', '-5']),
    (['--model', 'no_such_vit'], 1, ['--model', 'no_such_vit']),
    (['--device', 'cuda'], 1, ['--device', 'no CUDA']),
    (['--steps', '0'], 1, ['--steps']),
    (['--batch_time', '2', '3'], 1, ['--batch_time']),
    (['--compile', 'maybe'], 1, ['--compile']),
    (['--steps', 'ten'], 2, ['--steps']),
    (['--bogus'], 2, ['--bogus']),
])
def test_bad_flags_refused_in_one_line(args, code, names, tmp_path, capsys):
    "`main` as the console script runs it: exit code, one `at_bench: error:` line naming the flag, no work, no file."
    if '--device' in args and torch.cuda.is_available(): pytest.skip('a GPU is present')
    out = tmp_path / 'never.json'
    with pytest.raises(SystemExit) as e: main([*TINY, *args, '--output', str(out)])
    err = capsys.readouterr()
    lines = [l for l in err.err.splitlines() if l.strip()]
    assert e.value.code == code and len(lines) == 1 and lines[0].startswith('at_bench: error: '), err.err[-2000:]
    assert all(n in lines[0] for n in names) and not out.exists() and err.out == ''   # refused before any work


def test_cli_measures_table_methods_and_fp16(tmp_path, capsys):
    "--methods takes names from the method table beyond the default three; --amp fp16 runs; one timed step: ratios n/a."
    out = tmp_path / 't.json'
    main([*TINY, '--steps', '1', '--rounds', '1', '--batch_memory', '0', '--methods', 'scratch', 'logit_kd', '--amp', 'fp16', '--output', str(out)])
    res = json.loads(out.read_text())
    assert [(s['method'], s['amp'], s['status'], s.get('time_ratio')) for s in res['summary']] == [
        (m, 'float16', 'ok', None) for m in ('finetune', 'scratch', 'logit_kd')]
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith('n/a: time ratios need') and '| logit_kd | 2 |' in '\n'.join(lines)


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit): main(['--help'])
    h = ' '.join(capsys.readouterr().out.split())
    for d in ('(default: -3)', '(default: 3.0)', '(default: finetune copy distill)', '(default: inductor)', '(default: False)', 'fp16'):
        assert d in h, d


def test_existing_output_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / 'old.json'; out.write_text('{"earlier": 1}')
    with pytest.raises(SystemExit) as e: main([*TINY, '--output', str(out)])
    assert e.value.code == 1 and 'never overwritten' in capsys.readouterr().err and out.read_text() == '{"earlier": 1}'


def test_console_script_exits_zero(tmp_path):
    "The installed `at_bench` (`sys.exit(main())`) ends with status 0 and prints the table, not the result dict, on success."
    out = tmp_path/'c.json'
    r = subprocess.run([str(Path(sys.executable).parent/'at_bench'), *TINY, '--rounds', '1', '--output', str(out)],
                       capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0 and out.is_file(), r.stderr[-3000:]
    assert r.stderr.strip() == '' and "'summary'" not in r.stdout, r.stderr[-2000:]
