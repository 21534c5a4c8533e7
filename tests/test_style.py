"Code a reader can scan: no exported line over 120 characters (issue 22)."
from pathlib import Path

LIB = Path(__file__).resolve().parents[1]/'attention_transfer'

def test_no_library_line_over_120_characters():
    long = [f"{p.name}:{i}" for p in sorted(LIB.glob('*.py')) if p.name != '_modidx.py'
            for i, l in enumerate(p.read_text().splitlines(), 1) if len(l) > 120]
    assert not long, f"{len(long)} lines over 120 characters: {long[:20]}"
