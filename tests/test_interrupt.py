"Ctrl-C in a command: one line, exit status 130, no traceback; what was written is whole and a training run resumes."
import json, os, signal, subprocess, sys
from pathlib import Path

# A console script started from a non-interactive shell inherits SIGINT ignored: restore Python's handler, as a terminal has.
RUN = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); from attention_transfer.cli import main; main()"

def test_ctrl_c_during_training_is_one_line_and_resumable(tmp_path):
    out = tmp_path/'run'
    args = ['--model', 'vit_nano_patch4_32', '--data', 'digits', '--epochs', '30', '--num_workers', '0', '--output_dir', out]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    p = subprocess.Popen([sys.executable, '-c', RUN, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env, cwd=tmp_path)
    for line in p.stdout:
        if line.startswith('epoch 0:'): break  # one epoch is on disk
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 130, err
    assert err.splitlines() == ['at_train: error: interrupted: the files written so far are whole '
                                '(training continues with --resume allow)'], err
    done = [json.loads(l)['epoch'] for l in (out/'log.jsonl').read_text().splitlines()]
    assert done == list(range(len(done))) and done, done
    r = subprocess.run([sys.executable, '-c', RUN, *map(str, args), '--resume', 'allow', '--stop_epoch', str(len(done) + 1)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f'from epoch {len(done)}' in r.stdout, r.stdout
