"Every console script's flags, read from the parser it builds: spelling, default, and how many values each takes."
import argparse, configparser, importlib, json, math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT/'tests/data/flags.json'
IGNORED = {'-h', '--help', '--pdb', '--xtra'}  # argparse's help and fastcore's debugging extras

class _Caught(Exception): pass

def console_scripts() -> dict:
    "{script: 'module:function'} from settings.ini."
    cfg = configparser.ConfigParser(); cfg.read(ROOT/'settings.ini')
    return dict(s.split('=') for s in cfg['DEFAULT']['console_scripts'].split())

def _value(v):
    "A JSON-able form of a parser default."
    if isinstance(v, float) and math.isnan(v): return 'nan'
    if isinstance(v, (list, tuple)): return [_value(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)): return v
    return str(v)

def _takes(a) -> str:
    "'none' (a switch), 'optional' (a switch that may take one value), 'one', or 'many'."
    if a.nargs == 0: return 'none'
    if a.nargs == '?': return 'optional'
    if a.nargs in ('+', '*') or (isinstance(a.nargs, int) and a.nargs > 1): return 'many'
    return 'one'

def parser_flags(script:str) -> dict:
    "{flag: {default, takes, choices}} of `script`'s parser, caught when the command parses its arguments."
    mod, fn = console_scripts()[script].split(':')
    caught = {}
    orig = argparse.ArgumentParser.parse_known_args
    def catch(self, *args, **kw):
        if not self.add_help: return orig(self, *args, **kw)  # a helper parser (e.g. the kit's --preset lookahead)
        caught['p'] = self; raise _Caught
    argparse.ArgumentParser.parse_known_args = catch
    try: getattr(importlib.import_module(mod), fn)([])
    except _Caught: pass
    finally: argparse.ArgumentParser.parse_known_args = orig
    flags = {}
    for a in caught['p']._actions:
        for s in a.option_strings:
            if s in IGNORED: continue
            flags[s] = dict(default=_value(a.default), takes=_takes(a),
                            choices=None if a.choices is None else sorted(map(str, a.choices)))
    return flags

def snapshot() -> dict:
    "{script: parser_flags(script)} for every console script."
    return {s: parser_flags(s) for s in sorted(console_scripts())}

if __name__ == '__main__':  # python tests/_flags.py > tests/data/flags.json (on the commit whose flags are the contract)
    print(json.dumps(snapshot(), indent=1, sort_keys=True))
