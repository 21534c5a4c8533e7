"The library's modules form layers: each imports only from modules before it, and nothing imports a command (issue 22)."
import ast, configparser
from pathlib import Path

LIB = Path(__file__).resolve().parents[1]/'attention_transfer'
# Reading order, layer by layer; within a layer a module may use the ones listed before it.
LAYERS = {
    'core': ['vit', 'kernel', 'attention', 'transfer', 'distill', 'ensemble'],
    'I/O': ['data', 'timm_data', 'checkpoints', 'hub', 'models'],
    'methods': ['methods'],
    'engine': ['callbacks', 'train', 'mae'],
    'command kit': ['command', 'train_config'],
    'commands': ['cli', 'evaluate', 'pretrain', 'experiment', 'demo', 'benchmark', 'cross_size', 'ablations'],
}
ORDER = [m for ms in LAYERS.values() for m in ms]
MAX_LINES = 450

def _modules() -> list: return sorted(p.stem for p in LIB.glob('*.py') if not p.stem.startswith('_'))

def imports(mod:str) -> set:
    "The package's modules that `mod` imports anywhere (top level, functions, `from . import x`)."
    out = set()
    for node in ast.walk(ast.parse((LIB/f'{mod}.py').read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module: out.add(node.module.split('.')[0])
            elif node.level == 1: out.update(a.name for a in node.names)
            elif node.module and node.module.startswith('attention_transfer.'): out.add(node.module.split('.')[1])
            elif node.module == 'attention_transfer': out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split('.')[1] for a in node.names if a.name.startswith('attention_transfer.'))
    return out - {'_modidx', '__init__'}

def commands() -> set:
    "Modules that hold a console script (settings.ini)."
    cfg = configparser.ConfigParser(); cfg.read(LIB.parent/'settings.ini')
    return {s.split('=')[1].split(':')[0].split('.')[1] for s in cfg['DEFAULT']['console_scripts'].split()}

def test_every_module_has_a_layer():
    assert sorted(ORDER) == _modules()

def test_each_module_imports_only_modules_before_it():
    bad = [f"{m} imports {d}" for m in _modules() for d in sorted(imports(m))
           if d not in ORDER or m not in ORDER or ORDER.index(d) >= ORDER.index(m)]
    assert not bad, bad

def test_nothing_imports_a_command():
    bad = [f"{m} imports {d}" for m in _modules() for d in imports(m) & commands()]
    assert not bad, bad

def test_the_graph_is_acyclic():
    graph = {m: imports(m) for m in _modules()}
    done, path = set(), []
    def visit(m):
        assert m not in path, ' -> '.join(path[path.index(m):] + [m])
        if m in done: return
        path.append(m); [visit(d) for d in graph.get(m, ())]; path.pop(); done.add(m)
    for m in graph: visit(m)

def test_no_module_over_450_lines():
    long = {m: n for m in _modules() if (n := len((LIB/f'{m}.py').read_text().splitlines())) > MAX_LINES}
    assert not long, long
