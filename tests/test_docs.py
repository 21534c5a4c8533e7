"""The docs site, built as `make docs` builds it without Quarto (.ci/docsite.py), from the notebooks executed under a
Jupyter kernel (shared with test_kernel.py): one page per notebook with its title, working links, every figure, API
docs from show_doc, code shown or hidden as the directives say; then the index and a tutorial in headless Chromium."""
import json, os, re, shutil, struct, subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from bs4 import BeautifulSoup
from execnb.nbio import read_nb
from fastcore.xtras import working_directory
from nbdev.config import get_config
from nbdev.process import extract_directives

from _kernel_runs import ROOT, runs
import docsite, browser  # noqa: E402  (.ci/, put on sys.path by _kernel_runs)

SHOTS = Path(os.environ.get('AT_SCREENSHOT_DIR', '/tmp/attention_transfer_docs'))
_IMG = ('image/png', 'image/jpeg', 'image/svg+xml')


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('site')
    with working_directory(ROOT):
        res = docsite.build(out=tmp/'_docs', proc=tmp/'_proc', executed=runs(), quarto=False, log=lambda *a: None)
        cfg = get_config()
    res['cfg'] = cfg
    res['html'] = {p['href']: BeautifulSoup((res['out']/p['href']).read_text(), 'html.parser') for p in res['pages']}
    return res


def _source_title(nb_path):
    "The notebook's own `# Title` (first markdown H1), read without nbdev."
    for c in json.loads(Path(nb_path).read_text())['cells']:
        if c['cell_type'] == 'markdown':
            m = re.search(r'^#\s+(\S.*?)\s*$', ''.join(c['source']), flags=re.M)
            if m: return m.group(1)
    return None


def test_one_page_per_notebook(site):
    with working_directory(ROOT): nbs = docsite.site_notebooks(get_config().nbs_path)
    assert sorted(p['src'] for p in site['pages']) == sorted(p.resolve() for p in nbs)
    assert (site['out']/'index.html').exists()
    index = next(p for p in site['pages'] if p['href'] == 'index.html')
    assert index['rel'].as_posix() == get_config().readme_nb
    for p in site['pages']:  # the navigation on every page links every page
        nav = site['html'][p['href']].select('nav.site-sidebar a')
        assert len(nav) == len(site['pages']), p['href']
        assert len(site['html'][p['href']].select('nav.site-sidebar a.active')) == 1


def test_every_notebook_processes_with_nbdev(site):
    "nbdev's docs processors (what nbdev_docs runs) accept every notebook: show_doc renders, nothing raises."
    assert not site['proc_failed'], '\n\n'.join(site['proc_failed'].values())


def test_every_page_has_its_title(site):
    for p in site['pages']:
        soup, want = site['html'][p['href']], _source_title(p['src'])
        assert want, f"{p['rel']} has no '# Title' markdown cell"
        assert soup.title and want in soup.title.get_text(), p['href']
        h1 = soup.select('h1.title')
        assert len(h1) == 1 and h1[0].get_text(strip=True) == want, p['href']


def test_unlink_code_blocks_and_inline_code():
    "The two text fixes the site build applies, on the cases that showed raw on the pages."
    sig = "```python\ndef f(\n    pad:int=0, # see [`translate`](https://x.io/demo.html#translate)\n):\n```"
    test = "*Uses [`translate`](https://x.io/demo.html#translate).*"
    assert docsite.unlink_code_blocks(sig) == sig.replace('[`translate`](https://x.io/demo.html#translate)', '`translate`')
    assert docsite.unlink_code_blocks(sig + '\n\n' + test) == docsite.unlink_code_blocks(sig) + '\n\n' + test  # prose keeps its links
    assert docsite.inline_code('the `at_train` & `at_eval` scripts') == \
        'the <code>at_train</code> &amp; <code>at_eval</code> scripts'
    assert docsite.inline_code('an odd ` backtick') == 'an odd ` backtick'


def test_no_raw_markdown_in_code(site):
    "No markdown link syntax shows inside code on any page (nbdev's doc links inside show_doc signatures are undone)."
    bad = [(href, pre.get_text()[:100]) for href, soup in site['html'].items() for pre in soup.find_all('pre')
           if re.search(r'\[`[^`]+`\]\(', pre.get_text())]
    assert not bad, bad


def test_subtitles_without_raw_backticks(site):
    """A page's description (the notebook's `> summary` line) has no backticks, so no renderer shows them raw: not this
    site's, not Quarto's (nbdev_docs), not the <meta> description or a search result."""
    assert any(p['description'] for p in site['pages']), 'no page has a description: the check was never exercised'
    for p in site['pages']:
        assert '`' not in p['description'], (p['href'], p['description'])
        d = site['html'][p['href']].select_one('header.page-header p.description')
        if d is not None: assert '`' not in d.get_text(), (p['href'], d.get_text())


def test_signatures_need_no_unlinking(site):
    """nbdev's own processing leaves no doc link inside a show_doc signature (no backticked names in the parameter
    comments), so the docs are clean without the site's fix-up: `nbdev_docs` and Quarto alone render them the same."""
    assert not site['unlinked'], {p.name: n for p, n in site['unlinked'].items()}


def _machine_strings() -> list:
    "Paths of the machine that built the site: they have no place in a page (the reader's machine has none of them)."
    import sys, tempfile
    return sorted({str(ROOT), sys.prefix, os.path.realpath(sys.prefix), tempfile.gettempdir().rstrip('/') + '/',
                   str(Path.home()).rstrip('/') + '/', 'site-packages', '/.venv/'} - {'/'})


_WARNING = re.compile(r'[\w/.-]+\.py:\d+: \w+|Traceback \(most recent call last\)')  # a Python warning's location line


def test_outputs_without_warnings_or_machine_paths(site):
    "No cell output on any page shows a Python warning (file:line: Category) or a path of the machine that built it."
    bad, n = [], 0
    for href, soup in site['html'].items():
        for o in soup.select('.jp-OutputArea-output'):
            t, n = o.get_text(), n + 1
            bad += [f'{href}: {s!r} in {t.strip()[:150]!r}' for s in _machine_strings() if s in t]
            bad += [f'{href}: warning {m.group(0)!r}' for m in _WARNING.finditer(t)]
    assert n > 0 and not bad, '\n'.join(bad)


def test_tutorial_figures_real_or_marked_toy(site):
    """The tutorial's figures in prose are the real run's, captioned with its command; the figures its cells draw at CI
    size carry a banner on the figure itself (the cells assert the banner is drawn unless AT_FULL=1)."""
    p = _tutorial(site['pages'])
    soup = site['html'][p['href']]
    imgs = soup.select('.jp-RenderedMarkdown img')
    assert imgs and all('real default run' in i.get('alt', '') for i in imgs), [i.get('alt') for i in imgs]
    assert 'at_demo --output_dir runs/demo' in soup.get_text(' ')
    r = {k.resolve(): v for k, v in site['executed'].items()}.get(p['src'])
    drawn = [c.source for c in (r.nb.cells if r else []) if c.cell_type == 'code'
             and any(m in o.get('data', {}) for o in c.get('outputs', []) for m in _IMG) and 'plot_' in ''.join(c.source)]
    assert drawn and all('banner=' in ''.join(s) for s in drawn), drawn


def _internal_refs(soup):
    for tag, attr in (('a', 'href'), ('img', 'src'), ('link', 'href'), ('script', 'src')):
        for el in soup.find_all(tag):
            ref = el.get(attr)
            if not ref: continue
            u = urlsplit(ref)
            if u.scheme or u.netloc: continue  # external (http, https, mailto, data)
            yield ref, u


def test_internal_links_resolve(site):
    "Every link, image, stylesheet and script within the site exists, and so does every #anchor it points to."
    out, bad, n = site['out'], [], 0
    no_api = {(out/p['href']).resolve() for p in site['pages'] if p['src'] in site['proc_failed']}
    ids = {}
    def page_ids(f):
        if f not in ids:
            s = BeautifulSoup(f.read_text(), 'html.parser')
            ids[f] = {e.get('id') for e in s.find_all(id=True)} | {e.get('name') for e in s.find_all(attrs={'name': True})}
        return ids[f]
    for f in sorted(out.rglob('*.html')):
        for ref, u in _internal_refs(BeautifulSoup(f.read_text(), 'html.parser')):
            n += 1
            target = (f.parent/unquote(u.path)).resolve() if u.path else f
            if not target.is_relative_to(out.resolve()) or not target.is_file():
                bad.append(f'{f.relative_to(out)}: {ref} (no such file)')
            elif u.fragment and target.suffix == '.html' and unquote(u.fragment) not in page_ids(target) \
                    and target not in no_api:  # a page without its show_doc sections fails the test above
                bad.append(f'{f.relative_to(out)}: {ref} (no such anchor)')
    assert n > 0 and not bad, '\n'.join(bad)


def _hidden(directives):
    d = directives
    return bool({'hide', 'export', 'exporti', 'default_exp'} & d.keys()) or d.get('include:') == ['false']


def _png_size(data: bytes):
    assert data[:8] == b'\x89PNG\r\n\x1a\n', 'not a PNG'
    return struct.unpack('>II', data[16:24])


def test_every_figure_is_on_its_page(site):
    "Each image output of a shown cell (not hidden, not `output: false`) is an <img> whose file is a real picture."
    total, executed = 0, {k.resolve(): v for k, v in site['executed'].items()}
    for p in site['pages']:
        r = executed.get(p['src'])
        soup = site['html'][p['href']]
        imgs = soup.select('.jp-OutputArea-output img')
        expected = 0
        if r is not None and r.ran:
            for c in r.nb.cells:
                if c.cell_type != 'code': continue
                d = extract_directives(read_nb_cell(c), remove=False)
                if _hidden(d) or d.get('output:') == ['false']: continue
                expected += sum(any(m in o.get('data', {}) for m in _IMG) for o in c.get('outputs', []))
        assert len(imgs) == expected, f"{p['href']}: {len(imgs)} figures on the page, {expected} in the notebook"
        for img in imgs:
            f = (site['out']/p['href']).parent/img['src']
            assert f.is_file(), f
            if f.suffix == '.png':
                w, h = _png_size(f.read_bytes())
                assert w > 0 and h > 0, f
        total += expected
    assert total > 0, 'no notebook made a figure'


def read_nb_cell(c):
    "An nbformat cell as the execnb cell nbdev's directive parser takes."
    from execnb.nbio import dict2nb
    return dict2nb({'cells': [dict(c, source=''.join(c.source) if isinstance(c.source, list) else c.source)]}).cells[0]


def _inputs(soup):
    return [re.sub(r'\s+', ' ', e.get_text()).strip() for e in soup.select('.jp-InputArea-editor')]


def _code(src):
    return re.sub(r'\s+', ' ', ''.join(l for l in src.splitlines(True) if not re.match(r'\s*#\|', l))).strip()


def test_code_shown_or_hidden_as_directives_say(site):
    checked, executed = 0, {k.resolve(): v for k, v in site['executed'].items()}
    for p in site['pages']:
        shown = _inputs(site['html'][p['href']])
        r = executed.get(p['src'])  # the very cells the page was made from
        for c in ([read_nb_cell(c) for c in r.nb.cells] if r else read_nb(p['src']).cells):
            if c.cell_type != 'code' or re.search(r'^\s*%|#\|\s*hide_line', c.source, flags=re.M): continue
            d = extract_directives(c, remove=False)
            code = _code(c.source)
            if not code or code.startswith('show_doc('): continue
            hidden = _hidden(d) or d.get('echo:') == ['false']
            found = any(code == s for s in shown)
            assert found != hidden, f"{p['href']}: cell {'shown' if found else 'missing'} but directives {d}:\n{code}"
            if 'exports' in d:  # nbdev folds the exported source under "Exported source"
                folds = site['html'][p['href']].select('details.code-fold .jp-InputArea-editor')
                assert code in [re.sub(r'\s+', ' ', f.get_text()).strip() for f in folds]
            checked += 1
    assert checked > 0
    assert not any('#|' in s for h in site['html'].values() for s in _inputs(h)), 'a #| directive leaked into a page'


def test_api_docs_from_show_doc(site):
    "Every exported top-level function/class has a show_doc section at the anchor nbdev's doc links point to."
    from importlib import import_module
    idx = import_module(f"{site['cfg'].lib_name}._modidx").d['syms']
    pages = {p['href']: p for p in site['pages']}
    missing, n = [], 0
    for mod, syms in idx.items():
        for sym, (loc, _) in syms.items():
            name = sym[len(mod) + 1:]
            if '.' in name or name.startswith('_'): continue  # private
            page, _, anchor = loc.partition('#')
            if page not in pages: missing.append(f'{sym}: no page {page}'); continue
            if pages[page]['src'] in site['proc_failed']: continue  # reported by test_every_notebook_processes_with_nbdev
            if not site['html'][page].find(id=anchor): missing.append(f'{sym}: no #{anchor} on {page}')
            n += 1
    assert not missing, '\n'.join(missing)
    if n == 0: pytest.skip('the library exports nothing yet')


def test_proc_is_nbdev_processed_and_quarto_ready(site):
    "_proc/ is what nbdev_proc_nbs lays out (Quarto config beside processed notebooks), so `quarto render` works there."
    proc = site['proc']
    for f in ('_quarto.yml', 'nbdev.yml', 'sidebar.yml'): assert (proc/f).is_file(), f
    for p in site['pages']:
        nb = json.loads((proc/p['rel']).read_text())
        assert nb['cells'][0]['cell_type'] == 'raw' and 'title:' in ''.join(nb['cells'][0]['source'])
        assert not any(re.search(r'^#\|\s*(export|hide|default_exp)\b', ''.join(c['source']), flags=re.M)
                       for c in nb['cells'] if c['cell_type'] == 'code'), p['rel']


def test_quarto_renders_proc_where_installed(site, tmp_path, monkeypatch):
    "With Quarto on PATH, the same _proc/ goes to `quarto render` (a stand-in here records what it was given)."
    proc = tmp_path/'_proc'
    shutil.copytree(site['proc'], proc)
    stub = tmp_path/'bin'/'quarto'
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\necho "$@" > args.txt\nls -R > seen.txt\nmkdir -p _docs && echo ok > _docs/index.html\n')
    stub.chmod(0o755)
    monkeypatch.setenv('PATH', f"{stub.parent}:{os.environ['PATH']}")
    assert shutil.which('quarto') == str(stub)
    docsite.render_quarto(proc, tmp_path/'site', site['cfg'])
    assert (proc/'args.txt').read_text().split() == ['render', '--no-cache']
    seen = (proc/'seen.txt').read_text().split()
    assert {'_quarto.yml', 'nbdev.yml', 'sidebar.yml'} <= set(seen)
    assert all(p['rel'].name in seen for p in site['pages'])
    assert (tmp_path/'site'/'index.html').read_text().strip() == 'ok'


def test_nbdev_yml_in_step():
    "nbs/nbdev.yml is what nbdev's refresh_quarto_yml makes from settings.ini (docsite and nbdev_docs rewrite it)."
    tracked = subprocess.run(['git', 'ls-files', '--error-unmatch', 'nbs/nbdev.yml'], cwd=ROOT, capture_output=True)
    if tracked.returncode: pytest.skip('nbs/nbdev.yml not tracked in git')
    old = subprocess.run(['git', 'show', 'HEAD:nbs/nbdev.yml'], cwd=ROOT, capture_output=True, text=True).stdout
    from nbdev.quarto import refresh_quarto_yml
    with working_directory(ROOT):
        refresh_quarto_yml()
        assert (ROOT/'nbs'/'nbdev.yml').read_text() == old, 'nbs/nbdev.yml out of step with settings.ini: run make docs'


# --- a real browser -------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def chromium():
    exe = browser.find_chromium()
    if not exe:
        if os.environ.get('CI'): pytest.fail('chromium is not installed (.ci/run installs Debian\'s chromium)')
        pytest.skip('chromium not installed (apt-get install chromium)')
    with browser.Chromium(exe, width=1280, height=1000) as c: yield c


def _tutorial(pages):
    "A tutorial page; where none exists yet, the notebook page with the most figures."
    tut = [p for p in pages if p['rel'].parts[0] == 'tutorials']
    return tut[0] if tut else max((p for p in pages if p['href'] != 'index.html'), key=lambda p: len(p['figures']))


_CODE_STYLES = """(() => {
  const cs = e => getComputedStyle(e), pres = [...document.querySelectorAll('.jp-RenderedMarkdown pre')];
  const unstyled = pres.filter(p => cs(p).backgroundColor === 'rgba(0, 0, 0, 0)').map(p => p.innerText.slice(0, 60));
  const boxes = [...document.querySelectorAll('main pre, main .jp-InputArea-editor')];
  const scrolls = e => { for (let x = e; x && x !== document.body; x = x.parentElement)
                           if (['auto', 'scroll'].includes(cs(x).overflowX)) return true; return false; };
  const cut = boxes.filter(e => e.scrollWidth > e.clientWidth + 1 && !scrolls(e)).map(e => e.innerText.slice(0, 60));
  return {prose_pre: pres.length, unstyled, cut};
})()"""


def test_index_and_tutorial_render_in_chromium(site, chromium):
    SHOTS.mkdir(parents=True, exist_ok=True)
    pages = site['pages']
    for name, p in (('index', next(p for p in pages if p['href'] == 'index.html')), ('tutorial', _tutorial(pages))):
        chromium.goto((site['out']/p['href']).as_uri())
        r = chromium.probe()
        want = _source_title(p['src'])
        assert want in r['title'] and r['h1'] == want and r['h1_visible'], (name, r)
        assert r['nav_links'] == len(pages) and r['body_text'] > 200, (name, r)
        bad = [i for i in r['images'] if not (i['complete'] and i['width'] > 0 and i['height'] > 0)]
        assert not bad, (name, bad)
        assert len(r['images']) == len(site['html'][p['href']].find_all('img')), name
        styles = chromium.evaluate(_CODE_STYLES)
        assert styles['prose_pre'] > 0 or name != 'index', (name, styles)
        assert not styles['unstyled'], (name, 'fenced blocks in prose without a code background', styles['unstyled'])
        assert not styles['cut'], (name, 'code wider than its box that does not scroll', styles['cut'])
        shot = chromium.screenshot(SHOTS/f'{name}.png')
        chromium.screenshot(SHOTS/f'{name}_full.png', full_page=True)
        w, h = _png_size(shot.read_bytes())
        assert (w, h) == (1280, 1000), (name, w, h)
        (SHOTS/f'{name}.json').write_text(json.dumps(dict(page=p['href'], **r), indent=1))


_QUARTO_LIKE = """<!doctype html><html><head><meta charset="utf-8"><link rel="stylesheet" href="{css}"></head>
<body><main style="width: 500px">
<pre id="shell"><code>at_demo --data path/to/imagefolder --model vit_pico_patch4_32 --output_dir runs/a_folder_name_longer_than_the_box</code></pre>
<div class="sourceCode"><pre id="bash" class="sourceCode bash"><code class="sourceCode bash">torchrun --nproc_per_node=8 --no-python at_train --preset distill --finetune mae_pretrain_vit_large.pth</code></pre></div>
<div class="cell-output cell-output-stdout"><pre id="out"><code>epoch 0: loss 27.36  transfer 8.349  top1 10.19</code></pre></div>
</main></body></html>"""


def test_quarto_stylesheet_styles_shell_blocks(chromium, tmp_path):
    """nbs/styles.css (Quarto's stylesheet for nbdev_docs) on Quarto's markup: a fenced block without a language (the
    shell commands in prose) has a code block's background, long lines scroll in every code block, outputs stay plain."""
    cfg = get_config()
    css = cfg.nbs_path/'styles.css'
    assert 'styles.css' in (cfg.nbs_path/'_quarto.yml').read_text()
    page = tmp_path/'quarto_like.html'
    page.write_text(_QUARTO_LIKE.format(css=css.as_uri()))
    chromium.goto(page.as_uri())
    got = chromium.evaluate("""(() => { const s = id => { const e = document.getElementById(id), c = getComputedStyle(e);
        return {bg: c.backgroundColor, overflow: c.overflowX, wider: e.scrollWidth > e.clientWidth}; };
        return {shell: s('shell'), bash: s('bash'), out: s('out')}; })()""")
    assert got['shell']['bg'] not in ('rgba(0, 0, 0, 0)', 'transparent'), got
    for k in ('shell', 'bash'): assert got[k]['wider'] and got[k]['overflow'] in ('auto', 'scroll'), (k, got)
    assert got['out']['bg'] in ('rgba(0, 0, 0, 0)', 'transparent'), got
