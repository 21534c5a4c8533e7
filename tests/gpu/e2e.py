"""A training run end to end on one GPU (issue 21, item 5), as a user runs it: `at_pretrain` makes a teacher, then
`at_train` trains scratch, finetune, copy and distill students on a built-in data set under
`torchrun --nproc_per_node 1`, in bf16 autocast, eager and with `--compile`. For each run it checks:

- the first step's loss equals the CPU's in fp32 (the same first step, run here on the CPU) within bf16's tolerance;
- the loss falls (last epoch's mean below the first's);
- `at_eval` on the saved model reproduces the final accuracy exactly (top-1 and top-5);
- TensorBoard (`--log_tensorboard`, when the `log` extra is installed) holds log.jsonl's numbers exactly;

and prints the throughput (training images/s of the last epoch). It writes OUT/e2e.md (a markdown table) and
OUT/e2e.json, and exits 1 if a check fails.

    python tests/gpu/e2e.py                  # one GPU: vit_pico_patch4_32 on digits (aim: under 8 minutes on an H100)
    python tests/gpu/e2e.py --cpu            # dry run: the same path on the CPU, tiny, --amp off, no --compile

Not part of CI (tests/ collects test_*.py only). Run from the repository root; the package is imported from it."""
import argparse, json, math, os, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODES = ('scratch', 'finetune', 'copy', 'distill')
TIMINGS = ('train_seconds', 'images_per_s', 'seconds')


def settings(cpu:bool) -> dict:
    "The run's size: a small ViT and a few epochs on a GPU; on the CPU, the tiniest model and a few steps."
    if cpu: return dict(model='vit_nano_patch4_32', batch=32, epochs=2, steps=6, workers=0, device='cpu', amp='off',
                        pre_epochs=1, pre_steps=4, rtol=1e-5)
    return dict(model='vit_pico_patch4_32', batch=64, epochs=5, steps=None, workers=4, device='cuda', amp='bf16',
                pre_epochs=5, pre_steps=None, rtol=2e-2)  # bf16: 8 bits of mantissa, so ~0.4 % an operation


def py(module:str) -> list:
    "A command that runs console script `module.main` with the arguments that follow it."
    return [sys.executable, '-c', f"from attention_transfer.{module} import main; main()"]


def run(cmd:list, env:dict, timeout:float) -> tuple: # (ok, seconds, last line of stderr or '')
    t0 = time.perf_counter()
    try: r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired: return False, time.perf_counter() - t0, f"timed out after {timeout:.0f} s"
    last = ([l for l in r.stderr.splitlines() if l.strip()] or [''])[-1][:200]
    return r.returncode == 0, time.perf_counter() - t0, last if r.returncode else ''


def train_flags(s:dict, mode:str, teacher:Path, out:Path, device:str, amp:str) -> list:
    "at_train's flags: nothing random on the device (no drop path, Mixup, erasing): CPU and GPU take one first step."
    f = ['--model', s['model'], '--data', 'digits', '--mode', mode, '--batch_size', s['batch'], '--epochs', s['epochs'],
         '--lr', 2e-3, '--warmup_epochs', 0, '--layer_decay', 1, '--drop_path', 0, '--reprob', 0, '--aa', 'none',
         '--num_workers', s['workers'], '--seed', 0, '--device', device, '--amp', amp, '--attn_probe', 16,
         '--output_dir', out]
    if mode != 'scratch': f += ['--finetune', teacher]
    if s['steps']: f += ['--steps_per_epoch', s['steps']]
    return f


def log(d:Path) -> list: return [json.loads(l) for l in (d/'log.jsonl').read_text().splitlines()]


def tensorboard_equal(tb:Path, recs:list) -> bool|None:
    "Whether TensorBoard's folder holds log.jsonl's numbers exactly; None without the `log` extra."
    try: from attention_transfer.callbacks import read_tensorboard, scalars
    except ImportError: return None
    try: return read_tensorboard(tb) == [scalars(r) for r in recs]
    except (ImportError, ValueError): return False


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--cpu', action='store_true', help='dry run on the CPU: tiny model, --amp off, no --compile')
    p.add_argument('--out', default='runs/gpu_e2e', help='a new folder for the runs, e2e.md and e2e.json')
    p.add_argument('--compile', action=argparse.BooleanOptionalAction, default=None,
                   help='also the --compile runs (default: on a GPU, yes; with --cpu, no)')
    p.add_argument('--budget', type=float, default=None, help='no run starts after this many seconds (GPU: 360)')
    a = p.parse_args(argv)
    s, out, t_start = settings(a.cpu), Path(a.out).resolve(), time.perf_counter()
    budget = a.budget if a.budget is not None else math.inf if a.cpu else 360
    if out.exists(): sys.exit(f"e2e: --out {out} exists: choose a new folder")
    import torch
    if not a.cpu and not torch.cuda.is_available(): sys.exit("e2e: no CUDA device: run with --cpu for the dry run")
    compiled = (not a.cpu) if a.compile is None else a.compile
    out.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]),
               MPLBACKEND='Agg', OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1'))
    ok, _, err = run([sys.executable, '-c', 'import attention_transfer.cli, attention_transfer.evaluate, '
                      'attention_transfer.pretrain, sklearn'], env, 300)  # the three commands and the digits
    if not ok: sys.exit(f"e2e: the package or its requirements do not import here: {err} (pip install -e .)")
    launcher = out/'at_train_main.py'  # torchrun runs a file: at_train's main, from the repository
    launcher.write_text("from attention_transfer.cli import main\nmain()\n")
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '1', launcher]
    try:
        import tensorboard  # noqa: F401  (the `log` extra: then each run also writes TensorBoard)
        tb = True
    except ImportError: tb = False

    # the teacher: an MAE encoder pre-trained here (on the GPU, or a few steps on the CPU)
    pre = ['--model', s['model'], '--data', 'digits', '--input_size', 32, '--epochs', s['pre_epochs'],
           '--warmup_epochs', 0, '--num_workers', s['workers'], '--device', s['device'], '--amp', s['amp'],
           '--output_dir', out/'teacher'] + (['--steps_per_epoch', s['pre_steps']] if s['pre_steps'] else [])
    ok, secs, err = run(py('pretrain') + pre, env, 600)
    print(f"e2e: teacher (at_pretrain, {secs:.0f} s): {'ok' if ok else err}", flush=True)
    if not ok: sys.exit(1)
    teacher = out/'teacher'/'encoder.pth'

    # the CPU's fp32 first step of each mode, before the device runs (so they measure throughput alone)
    def reference(mode):
        d = out/'cpu_fp32'/mode
        f = train_flags(s, mode, teacher, d, 'cpu', 'off') + ['--epochs', 1, '--steps_per_epoch', 1, '--attn_probe', 0]
        ok, _, err = run(py('cli') + f, env, 900)
        return log(d)[0]['first_loss'] if ok else err
    with ThreadPoolExecutor(4 if not a.cpu else 1) as pool: refs = dict(zip(MODES, pool.map(reference, MODES)))
    print(f"e2e: CPU fp32 first steps: {refs}", flush=True)

    rows = []
    for comp in ([False, True] if compiled else [False]):
        for mode in MODES:
            name = f"{mode}{'_compile' if comp else ''}"
            row = dict(run=name, mode=mode, compile=comp)
            rows.append(row)
            if time.perf_counter() - t_start > budget: row['status'] = 'skipped (budget)'; continue
            d = out/name
            f = train_flags(s, mode, teacher, d, s['device'], s['amp']) + (['--compile'] if comp else [])
            if tb: f += ['--log_tensorboard', out/'tensorboard'/name]
            ok, row['seconds'], err = run(torchrun + f, env, 600)
            if not ok: row['status'] = f'failed: {err}'; print(f"e2e: {name}: {row['status']}", flush=True); continue
            recs = log(d)
            row.update(first_loss=recs[0]['first_loss'], loss_first_epoch=recs[0]['train_loss'],
                       loss_last_epoch=recs[-1]['train_loss'], top1=recs[-1]['test_top1'], top5=recs[-1]['test_top5'],
                       images_per_s=recs[-1]['images_per_s'], images_per_s_first_epoch=recs[0]['images_per_s'])
            row['falling'] = row['loss_last_epoch'] < row['loss_first_epoch']
            if tb: row['tensorboard_equal'] = tensorboard_equal(out/'tensorboard'/name, recs)
            print(f"e2e: {name}: {row['seconds']:.0f} s, first loss {row['first_loss']:.5g}, loss "
                  f"{row['loss_first_epoch']:.4g} -> {row['loss_last_epoch']:.4g}, top1 {row['top1']:.2f}, "
                  f"{row['images_per_s']:.0f} img/s", flush=True)

    # at_eval on each saved model, with the run's batch size and autocast: the same accuracy, exactly
    def score(row):
        d = out/row['run']
        ev = ['--batch_size', s['batch'], '--num_workers', s['workers'], '--device', s['device'], '--amp', s['amp'],
              '--output', d/'eval.json']
        ok, _, err = run(py('evaluate') + [d/'model.pth'] + ev, env, 600)
        if not ok: return f'at_eval failed: {err}'
        (res,) = json.loads((d/'eval.json').read_text()).values()
        return res
    trained = [r for r in rows if 'top1' in r]
    for r, res in zip(trained, ThreadPoolExecutor(4 if not a.cpu else 1).map(score, trained)):
        if isinstance(res, str): r['status'] = res; continue
        r['eval_top1'], r['eval_top5'] = res['top1'], res['top5']
        r['eval_equal'] = (res['top1'], res['top5']) == (r['top1'], r['top5'])
    for r in rows:
        ref = refs[r['mode']]
        if isinstance(ref, str): r.setdefault('status', f'CPU reference failed: {ref}'); continue
        r['cpu_first_loss'] = ref
        if 'first_loss' in r:
            r['rel_diff'] = abs(r['first_loss'] - ref) / max(abs(ref), 1e-12)
            r['first_equal'] = r['rel_diff'] <= s['rtol']
    for r in rows:
        checks = [r.get(k) for k in ('first_equal', 'falling', 'eval_equal')] + \
                 ([r['tensorboard_equal']] if r.get('tensorboard_equal') is not None else [])
        r.setdefault('status', 'ok' if all(c is True for c in checks) else 'CHECK FAILED')

    import platform, timm
    dev = torch.cuda.get_device_name(0) if not a.cpu else (platform.processor() or platform.machine())
    steps = f" of {s['steps']} steps" if s['steps'] else ''
    head = (f"{'CPU dry run' if a.cpu else 'GPU run'}: {dev}; torch {torch.__version__}, timm {timm.__version__}; "
            f"{s['model']} on digits, batch {s['batch']}, {s['epochs']} epochs{steps}, --amp {s['amp']}, "
            f"torchrun --nproc_per_node 1; {time.perf_counter() - t_start:.0f} s in all")
    fmt = lambda v, f: '' if v is None else (('yes' if v else 'NO') if isinstance(v, bool) else format(v, f))
    lines = [head, '',
             '| run | first loss | CPU fp32 first loss | rel. diff | loss, first → last epoch | falls | top-1 (run) '
             '| top-1 (at_eval) | at_eval equal | TensorBoard = log | img/s (last epoch) | s | status |',
             '|' + '---|' * 13]
    for r in rows:
        loss = (f"{r['loss_first_epoch']:.4f} → {r['loss_last_epoch']:.4f}" if 'loss_last_epoch' in r else '')
        lines.append(f"| {r['run']} | {fmt(r.get('first_loss'), '.5f')} | {fmt(r.get('cpu_first_loss'), '.5f')} "
                     f"| {fmt(r.get('rel_diff'), '.1e')} | {loss} | {fmt(r.get('falling'), '')} "
                     f"| {fmt(r.get('top1'), '.2f')} | {fmt(r.get('eval_top1'), '.2f')} "
                     f"| {fmt(r.get('eval_equal'), '')} "
                     f"| {fmt(r.get('tensorboard_equal'), '')} | {fmt(r.get('images_per_s'), '.0f')} "
                     f"| {fmt(r.get('seconds'), '.0f')} | {r['status']} |")
    table = '\n'.join(lines) + '\n'
    (out/'e2e.md').write_text(table)
    (out/'e2e.json').write_text(json.dumps(dict(settings=s, head=head, rows=rows), indent=1) + '\n')
    print('\n' + table)
    bad = [r['run'] for r in rows if r['status'] != 'ok']
    if bad: print(f"e2e: not ok: {', '.join(bad)}"); sys.exit(1)


if __name__ == '__main__': main()
