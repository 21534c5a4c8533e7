"""README.md reads in five minutes (issue 22): at most 1,300 words, a median sentence of at most 15 words, no sentence over
40 words and no paragraph over 80 words.

How README.md is measured (`measure`):
- words: every whitespace-separated token with a letter or digit in it, over the whole file, code blocks and tables
  included (all a reader scrolls past);
- sentences and paragraphs: prose only. Fenced code blocks, table rows, headings and HTML comments (the generator's
  warning) are left out. A paragraph is a block between blank lines, and each list item is a paragraph of its own.
  Markdown is read as text: a link counts as its text, inline code as its words. A sentence ends at `.`, `!` or `?`
  followed by a space and anything but a lower-case letter.

`python tests/test_readme.py` prints the measurements.
"""
import re, statistics
from pathlib import Path

README = Path(__file__).resolve().parents[1]/'README.md'
MAX_WORDS, MAX_MEDIAN, MAX_SENTENCE, MAX_PARAGRAPH = 1300, 15, 40, 80

_fence = re.compile(r'^(```|~~~)')
_item = re.compile(r'^\s*(?:[-*+]|\d+\.)\s+')
_end = re.compile(r'(?<=[.!?])[*_)"\'\]]*\s+(?=[^a-z\s])')


def _words(text: str) -> list:
    return [w for w in text.split() if re.search(r'\w', w)]


def _plain(md: str) -> str:
    "Markdown inline syntax read as text: images dropped, links as their text, code and emphasis without their marks."
    md = re.sub(r'!\[[^\]]*\]\([^)]*\)', '', md)
    md = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', md)
    md = md.replace('`', '')
    return re.sub(r'(\*\*|\*|__)', '', md)


def paragraphs(md: str) -> list:
    "README's prose as paragraphs (plain text): no code blocks, tables, headings or HTML comments; list items apart."
    md = re.sub(r'<!--.*?-->', '', md, flags=re.S)
    paras, cur, fenced = [], [], False
    def close():
        if cur: paras.append(' '.join(cur))
        cur.clear()
    for line in md.splitlines():
        if _fence.match(line.strip()):
            fenced = not fenced; close(); continue
        s = line.strip()
        if fenced or not s or s.startswith(('|', '#')): close(); continue
        if _item.match(line): close(); s = _item.sub('', line, count=1).strip()
        if s.startswith('>'): s = s.lstrip('> ').strip()
        cur.append(s)
    close()
    return [p for p in (_plain(p).strip() for p in paras) if _words(p)]


def sentences(paragraph: str) -> list:
    return [s for s in _end.split(paragraph) if _words(s)]


def measure(md: str) -> dict:
    "{words, sentences, median_sentence, longest_sentence, longest_paragraph} of a README's text, and the worst cases."
    paras = paragraphs(md)
    sents = [s for p in paras for s in sentences(p)]
    lens = [len(_words(s)) for s in sents]
    return dict(words=len(_words(md)), paragraphs=len(paras), sentences=len(sents),
                median_sentence=statistics.median(lens), longest_sentence=max(lens),
                longest_paragraph=max(len(_words(p)) for p in paras),
                longest_sentence_text=max(sents, key=lambda s: len(_words(s))),
                longest_paragraph_text=max(paras, key=lambda p: len(_words(p))))


def test_measure_counts_prose_only():
    md = ("# Title\n\n> Summary in five words here.\n\n<!-- a long generated warning comment -->\n\n"
          "One two three. Four five `six seven` [eight](http://x.y/z.html).\n\n- An item, e.g. this.\n- Another item\n\n"
          "```sh\nmake demo   # not prose. Not counted\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    m = measure(md)
    assert paragraphs(md) == ['Summary in five words here.', 'One two three. Four five six seven eight.',
                              'An item, e.g. this.', 'Another item']
    assert sentences('One two three. Four five six? 8.3 points, e.g. more') == ['One two three.', 'Four five six?', '8.3 points, e.g. more']
    assert (m['sentences'], m['longest_sentence'], m['longest_paragraph']) == (5, 5, 8)
    assert m['words'] == 36  # every token with a letter or digit, the code block, table and comment included


def test_readme_reads_in_five_minutes():
    m = measure(README.read_text(encoding='utf-8'))
    assert m['words'] <= MAX_WORDS, m
    assert m['median_sentence'] <= MAX_MEDIAN, m
    assert m['longest_sentence'] <= MAX_SENTENCE, (m['longest_sentence'], m['longest_sentence_text'])
    assert m['longest_paragraph'] <= MAX_PARAGRAPH, (m['longest_paragraph'], m['longest_paragraph_text'])


if __name__ == '__main__':
    m = measure(README.read_text(encoding='utf-8'))
    for k in ('words', 'paragraphs', 'sentences', 'median_sentence', 'longest_sentence', 'longest_paragraph'): print(f'{k}: {m[k]}')
