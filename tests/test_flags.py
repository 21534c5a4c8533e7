"Every flag of every command keeps its spelling, its default and the values it takes (issue 22: no behaviour change)."
import json, pytest
from _flags import SNAPSHOT, snapshot
from attention_transfer.command import loader_workers

OLD = json.loads(SNAPSHOT.read_text())  # the flags of main at 06192b2, before the commands moved to dataclass parsers
NEW = snapshot()
# What a generated parser may add: a YAML/JSON file of flag values (timm's train.py --config), and the negative
# spelling of a switch (--noX, argparse's BooleanOptionalAction).
ADDED = {'--config', '--recipe'}  # --recipe: at_demo runs any method of the table (issue 22, item 3)
ADDED |= {'--head_map'}  # at_train: the head map the method table always took had no flag (issue 23, item 11)
# at_train: TensorBoard and Weights & Biases get each epoch's log.jsonl numbers (issue 21, item 4); --nolog_wandb is
# the generated negative of the new switch
ADDED |= {'--log_tensorboard', '--log_wandb', '--nolog_wandb'}
# Flags whose old parser default was None, "filled in later from the command's config": their value is read there.
FILLED = {'at_demo': json.loads((SNAPSHOT.parent/'demo_effective.json').read_text())}
# A switch still works bare; a value flag takes the same number of values.
COMPATIBLE = {'none': {'none', 'optional'}, 'optional': {'optional'}, 'one': {'one'}, 'many': {'many'}}
# Defaults changed on purpose, each with its reason (issue 23, item 5): {script: {flag: new default}}.
CHANGED = {
    # DataLoader workers: what the machine has room for, min(old default, cores per process - 1), so torch never warns
    # that a process starts more workers than the machine has (the README's commands warned twice on 2 cores)
    'at_train': {'--num_workers': loader_workers(10),
                 # None: a tenth of --epochs, at most 5 (50+ epochs keep 5), so `--epochs 2` alone is a legal run
                 '--warmup_epochs': None,
                 '--output_dir': 'runs/train'},  # one scheme for the default folders: runs/<command> (was ./output_dir)
    'at_eval': {'--num_workers': loader_workers(4)},
    'at_pretrain': {'--warmup_epochs': None, '--output_dir': 'runs/pretrain'},  # was ./output_dir, at_train's too
    'at_demo': {'--output_dir': 'runs/demo'},  # was demo_output; `make demo` already wrote runs/demo
    'at_ablate': {'--output_dir': 'runs/ablate'},  # was ablate_output
}

@pytest.mark.parametrize('script', sorted(OLD))
def test_every_flag_keeps_its_spelling_default_and_arity(script):
    old, new = OLD[script], NEW[script]
    missing = sorted(set(old) - set(new))
    assert not missing, f"{script} lost {missing}"
    for f, o in old.items():
        n = new[f]
        assert n['takes'] in COMPATIBLE[o['takes']], f"{script} {f} takes {n['takes']}, was {o['takes']}"
        if f in CHANGED.get(script, {}):
            want = CHANGED[script][f]
            assert n['default'] == want, f"{script} {f} default {n['default']!r}, not {want!r}"
            continue
        if o['default'] is None and n['default'] is not None:
            assert script in FILLED, f"{script} {f} default {n['default']!r}, was None"
            continue  # checked below against the old effective value
        assert n['default'] == o['default'], f"{script} {f} default {n['default']!r}, was {o['default']!r}"
    extra = sorted(f for f in set(new) - set(old) if f not in ADDED and not (f.startswith('--no') and '--' + f[4:] in old))
    assert not extra, f"{script} gained {extra}"

def _effective(eff:dict, flag:str):
    "The value today's at_demo used for `flag` when it was not given."
    k = flag[2:]
    for key in ('lr', 'layer_decay', 'end_layer'):
        m = k[len(key) + 1:]
        if k.startswith(key + '_') and m in eff['recipes']: return eff['recipes'][m][key]
    return eff[k]

def test_filled_defaults_are_the_values_used_before():
    for script, eff in FILLED.items():
        for f, o in OLD[script].items():
            n = NEW[script][f]['default']
            if o['default'] is None and n is not None: assert n == _effective(eff, f), f"{script} {f}: {n!r}"

def test_changed_defaults_name_real_flags():
    for script, flags in CHANGED.items():
        assert set(flags) <= set(OLD[script]) & set(NEW[script]), f"{script}: {sorted(set(flags) - set(OLD[script]))}"
