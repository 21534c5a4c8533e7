"""Code a reader can scan: no exported line over 120 characters (issue 22).
nbdev writes `__all__` itself, wrapped at 120 after its `__all__ = ` prefix: that first line is not ours to wrap."""
from pathlib import Path

LIB = Path(__file__).resolve().parents[1]/'attention_transfer'

def test_no_library_line_over_120_characters():
    long = [f"{p.name}:{i}" for p in sorted(LIB.glob('*.py')) if p.name != '_modidx.py'
            for i, l in enumerate(p.read_text().splitlines(), 1) if len(l) > 120 and not l.startswith('__all__ = [')]
    assert not long, f"{len(long)} lines over 120 characters: {long[:20]}"
