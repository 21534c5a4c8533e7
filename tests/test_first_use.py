"""A new user's first runs (issue 23, items 3 and 5-8): a typo is refused, short runs need no extra flag, the help says
each default once with an example, a piped log shows progress, one word for the test images, no empty panels."""
import argparse, importlib, io, os, re, shlex, subprocess, sys, warnings
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import replace
from pathlib import Path
import pytest, torch
from _flags import console_scripts
from attention_transfer.command import parse_config

BIN = Path(sys.executable).parent
SCRIPTS = sorted(console_scripts())  # at_ablate at_bench at_demo at_eval at_pretrain at_train


def main_of(script:str):
    mod, fn = console_scripts()[script].split(':')
    return getattr(importlib.import_module(mod), fn)


def refused(script:str, argv:list) -> tuple:
    "(stderr, exit status) of `script`'s main on `argv`, run in this process (parsing fails before any work)."
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        try: main_of(script)(argv)
        except SystemExit as e: return err.getvalue(), e.code
    return err.getvalue(), 0


# Item 3: flags that do nothing are refused, whatever the command and however they come.
@pytest.mark.parametrize('script', SCRIPTS)
def test_a_prefix_is_refused(script, tmp_path):
    err, code = refused(script, ['--epoch', '3', 'x.pth'])
    assert code == 2 and err.count('\n') == 1 and '--epoch' in err and err.startswith(f'{script}: error: '), err
    (tmp_path/'typo.yaml').write_text('epoch: 3\n')  # the same typo in a --config file
    err, code = refused(script, ['--config', str(tmp_path/'typo.yaml'), 'x.pth'])
    assert (code, err) == (2, f"{script}: error: --config {tmp_path/'typo.yaml'}: epoch is not a flag (a typo?)\n")


def test_a_preset_prefix_is_refused():
    for argv, bad in ((['--pres', 'copy'], '--pres copy'), (['--preset=copy', '--epoch', '3'], '--epoch 3')):
        assert refused('at_train', argv) == (f'at_train: error: unrecognized arguments: {bad}\n', 2)


# Item 5: defaults that fit the machine and the run.
def test_default_workers_start_no_torch_warning():
    from attention_transfer.cli import TrainConfig
    from attention_transfer.evaluate import EvalConfig
    ds = torch.utils.data.TensorDataset(torch.zeros(4, 1))
    for n in (TrainConfig().num_workers, EvalConfig().num_workers):
        with warnings.catch_warnings():
            warnings.simplefilter('error')  # torch: "This DataLoader will create N worker processes in total..."
            list(torch.utils.data.DataLoader(ds, batch_size=2, num_workers=n))


def test_a_short_run_needs_no_warmup_flag(tmp_path):
    from attention_transfer.cli import TrainConfig, resolve
    from attention_transfer.pretrain import PretrainConfig, _check
    tiny = TrainConfig(model='vit_nano_patch4_32', data='digits', output_dir=str(tmp_path/'t'))
    assert resolve(replace(tiny, epochs=2)).warmup_epochs == 0
    assert resolve(tiny).warmup_epochs == 5  # 50 epochs, the default: as before
    assert _check(PretrainConfig(epochs=2, output_dir=str(tmp_path/'p'))).warmup_epochs == 0
    err, code = refused('at_train', ['--data', 'digits', '--epochs', '2', '--warmup_epochs', '3', '--output_dir', 'x'])
    assert code == 1 and '--warmup_epochs must be in [0, epochs] (--epochs is 2), not 3' in err  # explicit: checked


# Item 6: the help of every command says each default once and ends with a real command line.
def help_of(script:str) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        with pytest.raises(SystemExit): main_of(script)(['--help'])
    return out.getvalue()


class _Caught(BaseException): "Not an error the commands report: it carries the parser out of `main`."

def config_class(script:str) -> type:
    "The dataclass of `script`'s flags, from the parser it builds (caught as it parses)."
    caught, orig = {}, argparse.ArgumentParser.parse_known_args
    def catch(self, *a, **kw):
        if not self.add_help: return orig(self, *a, **kw)
        caught['p'] = self; raise _Caught
    argparse.ArgumentParser.parse_known_args = catch
    try: main_of(script)([])
    except _Caught: pass
    finally: argparse.ArgumentParser.parse_known_args = orig
    return caught['p']._wrappers[0].dataclass


@pytest.mark.parametrize('script', SCRIPTS)
def test_help_shows_each_default_once_and_an_example(script):
    h = help_of(script)
    flags = h[h.index('\nflags:\n'):h.index('\nexample:\n')]
    entries = re.split(r'\n  (?=-)', flags)[1:]  # one per flag: '--name METAVAR  its help'
    assert len(entries) > 5
    for e in entries:
        text = ' '.join(e.split())
        assert len(re.findall(r'\bdefault\b', text)) == 1, f"{script}: {text}"
        assert not re.search(r'\(default: (None|\)|\[)', text), f"{script}: {text}"
    example = h[h.index('\nexample:\n'):].split('\n')[2].strip()
    argv = shlex.split(example)
    assert argv[0] == script and len(argv) > 1, example
    with redirect_stderr(io.StringIO()) as err:
        try: parse_config(config_class(script), argv[1:], script)  # the example is a command line the command takes
        except SystemExit: pytest.fail(f"{script} refuses its own example: {err.getvalue()}")


# Item 7: piped into a log, long work prints as it goes; item 8: one word, 'test', for the held-out images.
ENV = {k: v for k, v in os.environ.items() if k != 'PYTHONUNBUFFERED'}  # as on a cluster: Python buffers a pipe
ENV.update(OMP_NUM_THREADS='1', MPLBACKEND='Agg', AT_PROGRESS_SECONDS='0')  # a progress line whenever there is news


def piped(*argv) -> tuple:
    "Run a console script with stdout a pipe: (its lines, whether the first came while it still ran, exit status)."
    p = subprocess.Popen([str(BIN/argv[0]), *map(str, argv[1:])], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=ENV)
    first = p.stdout.readline()
    early = p.poll() is None  # block-buffered output would arrive only when the process ends
    rest, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-2000:]
    return [first, *rest.splitlines()], early


def test_at_train_piped(tmp_path):
    lines, early = piped('at_train', '--model', 'vit_nano_patch4_32', '--data', 'digits', '--epochs', '2',
                         '--steps_per_epoch', '3', '--batch_size', '16', '--num_workers', '0', '--attn_probe', '0',
                         '--output_dir', tmp_path)
    assert early and lines[0].startswith('at_train: ') and ' train / 540 test images' in lines[0], lines[0]
    assert [l.split(',')[0] for l in lines if l.startswith('epoch 1: ') and 'batches' in l] == [
        'epoch 1: 1 of 3 batches (33 %)', 'epoch 1: 2 of 3 batches (67 %)', 'epoch 1: 3 of 3 batches (100 %)']
    assert any(l.startswith('epoch 1: loss ') and '  test top1 ' in l for l in lines), lines
    assert not any(re.search(r'\bval\b', l) for l in lines), lines


def test_at_pretrain_piped_and_its_curves(tmp_path):
    from PIL import Image
    from attention_transfer.callbacks import plot_log
    lines, early = piped('at_pretrain', '--model', 'vit_nano_patch4_32', '--data', 'digits', '--epochs', '1',
                         '--batch_size', '16', '--steps_per_epoch', '2', '--decoder_dim', '32',
                         '--output_dir', tmp_path)
    assert early and any(l.startswith('epoch 0: 2 of 2 batches (100 %)') for l in lines), lines
    fig = plot_log(tmp_path)  # what curves.png draws: no empty accuracy panel for a run without accuracies
    assert [a.get_title() for a in fig.axes] == ['loss', 'learning rate']
    assert Image.open(tmp_path/'curves.png').size[0] < 1000  # two panels of 4 inches at 100 dpi, not three


def test_at_demo_piped(tmp_path):
    lines, early = piped('at_demo', '--data', 'digits', '--seeds', '0', '--methods', 'scratch', 'distill',
                         '--epochs', '1', '--pretrain_epochs', '1', '--n_labelled', '100', '--depth', '4',
                         '--batch_size', '50', '--workers', '0', '--output_dir', tmp_path/'demo')
    assert early and lines[0].startswith('at_demo: '), lines[0]
    prog = [l for l in lines if l.startswith('jobs: ')]
    want = [f'jobs: {i} of 3 epochs ({p} %)' for i, p in ((1, 33), (2, 67), (3, 100))]
    assert [l.split(',')[0] for l in prog] == want, prog
    assert ', 1 of 3 jobs done, ' in prog[1], prog
    assert any(l.startswith('seed 0 distill: ') for l in lines) and any('test images' in l for l in lines), lines
