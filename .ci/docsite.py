"""Build the documentation site (settings.ini `doc_path`, `_docs/`) from nbdev's processed notebooks.

`make docs` runs this. The pipeline is nbdev_docs' own, with one step added in front (the notebooks are committed
without outputs, so they are executed first):

1. execute every notebook that `nbdev_test` runs under a real Jupyter kernel (`.ci/nbexec.py`: same cells skipped);
2. process each notebook with nbdev's own processors (`FilterDefaults`, what `nbdev_proc_nbs` applies: frontmatter from
   the `# Title` / `> summary` cell, `#| hide` / `#| export` cells removed, `show_doc` added and rendered for exported
   names, backticked names linked to their docs, `#| exports` folded) into `_proc/`, beside nbdev's Quarto
   config (`_quarto.yml`, `nbdev.yml`, `sidebar.yml`) as `nbdev_proc_nbs` lays it out;
3. render `_proc/` into `_docs/`: with `quarto render` when Quarto is installed (exactly what `nbdev_docs` does),
   otherwise with nbconvert, applying the Quarto cell options the processed notebooks carry (`echo`, `output`,
   `include`, `code-fold`, `warning`) and nbdev's sidebar as the navigation.

Usage: `python .ci/docsite.py [--no-quarto] [--n_workers 2]`. It exits non-zero when a notebook fails to execute
(after writing the site, so the failure can be looked at).
"""
from __future__ import annotations
import json, multiprocessing, os, re, shutil, subprocess, sys, posixpath, time, warnings
from concurrent.futures import ProcessPoolExecutor
from html import escape
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import yaml, nbformat
from execnb.nbio import dict2nb, write_nb
from fastcore.xtras import working_directory
from nbdev.config import get_config
from nbdev.doclinks import nbglob, _nbpath2html
from nbdev.process import NBProcessor
from nbdev.processors import FilterDefaults, exec_show_docs
from nbdev.quarto import refresh_quarto_yml, nbdev_sidebar

sys.path.insert(0, str(Path(__file__).parent))
import nbexec  # noqa: E402

# ---------------------------------------------------------------------------------------------------------------------
# Step 2: nbdev's processing

_SKIP_DIRS = r'(?:^[_.]|^www\$)'  # nbdev_sidebar's default


def site_notebooks(nbs: Path) -> list[Path]:
    "Every notebook the docs include: nbdev_sidebar's selection (no `_`/`.` files or folders)."
    return sorted(nbglob(nbs, as_path=True, skip_folder_re=_SKIP_DIRS))


def sidebar(nbs: Path) -> list:
    "nbdev's sidebar (writes nbs/sidebar.yml unless settings.ini has custom_sidebar) as its `contents` list."
    nbdev_sidebar.__wrapped__(path=nbs)
    yml = nbs/'sidebar.yml'
    if not yml.exists(): return [str(p.relative_to(nbs)) for p in site_notebooks(nbs)]
    return yaml.safe_load(yml.read_text())['website']['sidebar']['contents']


def _process(src: Path, nb_json: str, dst: Path, show_docs: bool = True):
    "nbdev's docs processors (`FilterDefaults`, as `nbdev_proc_nbs` applies them) on one notebook; write `dst`."
    enb = dict2nb(json.loads(nb_json))
    enb.path_ = str(src)
    procs = FilterDefaults().procs()
    if not show_docs: procs = [p for p in procs if p is not exec_show_docs]
    os.environ['IN_TEST'] = '1'  # as nbdev.serve_drv sets it while processing
    with working_directory(src.parent): NBProcessor(nb=enb, procs=procs).process()
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_nb(enb, dst)


def process_one(src: Path, nb_json: str, dst: Path) -> str | None:
    """Process one notebook in a worker process (as nbdev does: the cells nbdev's show_doc processor runs stay out of
    the builder). On failure, process it again without running show_doc, so the page still renders; return the error."""
    import warnings
    warnings.filterwarnings('ignore', message='Found cells containing imports and other code')
    try: _process(src, nb_json, dst)
    except Exception as e:
        cause = f'\n  {type(e.__cause__).__name__}: {e.__cause__}' if e.__cause__ else ''
        _process(src, nb_json, dst, show_docs=False)
        return (f"nbdev's docs processor failed on {src.name}: {e}{cause}\n  (nbdev runs cells that mix imports with "
                "other code without the rest of the notebook: keep imports in cells of their own)")
    return None


def process_all(jobs: list[tuple[Path, str, Path]], n_workers: int = 2) -> dict[Path, str]:
    "Process notebooks in `n_workers` spawned processes; {src: error} for those whose show_doc processing failed."
    ctx = multiprocessing.get_context('spawn')  # as nbdev's proc_nbs: workers of their own, reused across notebooks
    with ProcessPoolExecutor(max(1, min(n_workers, len(jobs))), mp_context=ctx) as ex:
        futs = {ex.submit(process_one, *j): j[0] for j in jobs}
        return {futs[f].resolve(): err for f in futs if (err := f.result())}


_fence = re.compile(r'(?ms)^(?P<f>```+|~~~+)[^\n]*\n.*?^(?P=f)[ \t]*$')
_code_link = re.compile(r'\[(`[^`\n]+`)\]\([^)\s]+\)')


def unlink_code_blocks(md: str) -> str:
    """nbdev's doc links turn a backticked name into a markdown link everywhere, also inside the fenced code block of a
    `show_doc` signature, where no renderer makes it a link: there it stays the backticked name it was in the source."""
    return _fence.sub(lambda m: _code_link.sub(r'\1', m.group(0)), md)


def code_links(md: str) -> int:
    "How many of nbdev's doc links sit inside fenced code blocks of `md` (what `unlink_code_blocks` undoes)."
    return sum(len(_code_link.findall(m.group(0))) for m in _fence.finditer(md))


def tidy_proc(path: Path) -> int:
    """Fix, in a processed notebook, what nbdev's processors leave that would show raw (see `unlink_code_blocks`); return
    how many links it undid. The notebooks are written so that this is 0 (a site built by `nbdev_docs` alone is clean)."""
    nb, n = nbformat.read(path, as_version=4), 0
    for c in nb.cells:
        if c.cell_type == 'markdown': n += code_links(c.source); c.source = unlink_code_blocks(c.source)
        for x in c.get('outputs', []):
            if 'text/markdown' in x.get('data', {}):
                n += code_links(x.data['text/markdown']); x.data['text/markdown'] = unlink_code_blocks(x.data['text/markdown'])
    nbformat.write(nb, path)
    return n


def copy_assets(src_root: Path, dst_root: Path, suffixes=None):
    "Copy what nbdev's proc_nbs copies beside the notebooks (everything not hidden, not a notebook)."
    for p in nbglob(src_root, func=Path, file_glob='', file_re='', skip_folder_re=_SKIP_DIRS):
        if p.suffix == '.ipynb' or (suffixes and p.suffix.lower() not in suffixes): continue
        d = dst_root/p.relative_to(src_root)
        d.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, d)

# ---------------------------------------------------------------------------------------------------------------------
# Step 3 without Quarto: nbconvert with Quarto's cell options


_opt_re = re.compile(r'^\s*#\|\s*([\w-]+)\s*:\s*(.*?)\s*$')


def cell_options(cell) -> dict:
    "Strip the leading `#| key: value` Quarto options from a code cell; return them (YAML values)."
    lines, opts = cell.source.splitlines(), {}
    while lines and (m := _opt_re.match(lines[0])):
        try: opts[m.group(1)] = yaml.safe_load(m.group(2)) if m.group(2) else True
        except yaml.YAMLError: opts[m.group(1)] = m.group(2)
        lines.pop(0)
    cell.source = '\n'.join(lines).strip('\n')
    return opts


_div_open = re.compile(r'^:::+\s*\{([^}]*)\}\s*$')
_div_close = re.compile(r'^:::+\s*$')


def fenced_divs(md: str) -> str:
    "Quarto/pandoc fenced divs (`::: {.callout-note}` ... `:::`) as HTML divs whose content stays markdown."
    out = []
    for line in md.splitlines():
        if m := _div_open.match(line):
            classes = ' '.join(c[1:] for c in m.group(1).split() if c.startswith('.'))
            if 'callout' in classes: classes += ' callout'
            out += [f'<div class="{escape(classes)}">', '']
        elif _div_close.match(line): out += ['', '</div>']
        else: out.append(line)
    return '\n'.join(out)


_attr_link = re.compile(r'\[([^\]\n]+)\]\(([^)\s]+)\)\{([^}\n]*)\}')
_attr = re.compile(r'([.#])([\w-]+)|([\w-]+)=("[^"]*"|\S+)')


def link_attrs(md: str) -> str:
    "Pandoc's link attributes (`[source](url){target=\"_blank\" .cls}`, as show_doc writes them) as HTML links."
    def html(m):
        attrs, classes = {}, []
        for dot, name, key, val in _attr.findall(m.group(3)):
            if dot == '.': classes.append(name)
            elif dot == '#': attrs['id'] = name
            else: attrs[key] = val.strip('"')
        if classes: attrs['class'] = ' '.join(classes)
        extra = ''.join(f' {k}="{escape(v)}"' for k, v in attrs.items())
        return f'<a href="{escape(m.group(2))}"{extra}>{m.group(1)}</a>'
    return _attr_link.sub(html, md)


def split_frontmatter(nb) -> dict:
    "Remove the raw YAML frontmatter cell nbdev's FrontmatterProc put first; return it."
    for i, c in enumerate(nb.cells):
        if c.cell_type == 'raw' and c.source.lstrip().startswith('---'):
            m = re.match(r'^\s*---\s*\n(.*?)\n---\s*$', c.source, flags=re.S)
            if m:
                del nb.cells[i]
                return yaml.safe_load(m.group(1)) or {}
    return {}


def apply_options(nb):
    "Turn Quarto cell options into what the nbconvert template and TagRemovePreprocessor act on."
    cells = []
    for c in nb.cells:
        if c.cell_type == 'markdown':
            c.source = link_attrs(fenced_divs(c.source))
            cells.append(c); continue
        if c.cell_type != 'code': cells.append(c); continue
        o = cell_options(c)
        if o.get('include') is False: continue
        for x in c.outputs:
            if 'text/markdown' in x.get('data', {}): x.data['text/markdown'] = link_attrs(x.data['text/markdown'])
        tags = list(c.metadata.get('tags', []))
        if o.get('warning') is False: c.outputs = [x for x in c.outputs if x.get('name') != 'stderr']
        if o.get('output') is False: c.outputs = []
        if o.get('output') == 'asis': tags.append('at-asis')
        if o.get('echo') is False or not c.source.strip(): tags.append('at-noinput')
        if o.get('eval') is False: tags.append('at-noeval')
        if fold := o.get('code-fold'):
            c.metadata['at_fold'] = 'show' if fold == 'show' else 'hide'
            c.metadata['at_summary'] = str(o.get('code-summary', 'Code'))
        if 'fig-cap' in o: c.metadata['at_figcap'] = str(o['fig-cap'])
        if 'at-noinput' in tags and not c.outputs: continue
        c.metadata['tags'] = tags
        cells.append(c)
    nb.cells = cells


_template = r"""{%- extends 'lab/index.html.j2' -%}
{%- set site = resources.site -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}
<script>window.MathJax = {tex: {inlineMath: [['$', '$'], ['\\(', '\\)']], processEscapes: true}};</script>
<script async id="MathJax-script" src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>
{%- endblock html_head_js_mathjax -%}
{%- block notebook_css -%}
<link rel="stylesheet" href="{{ site.root }}assets/jupyterlab.css">
{%- endblock notebook_css -%}
{%- block html_head_css -%}
{%- if site.page.description %}<meta name="description" content="{{ site.page.description_text | e }}">{% endif %}
<link rel="stylesheet" href="{{ site.root }}assets/site.css">
{%- endblock html_head_css -%}
{%- block body_header -%}
<body data-jp-theme-light="true" data-jp-theme-name="JupyterLab Light">
<header class="site-navbar">
  <a class="site-title" href="{{ site.root }}index.html">{{ site.title | e }}</a>
  <span class="site-links"><a href="{{ site.git_url }}">Source</a></span>
</header>
<div class="site-layout">
<nav class="site-sidebar" aria-label="Pages">{{ site.nav }}</nav>
<main class="site-main jp-Notebook">
<header class="page-header">
  <h1 class="title">{{ site.page.title | e }}</h1>
  {%- if site.page.description %}<p class="description">{{ site.page.description_html }}</p>{% endif %}
  <p class="page-source"><a href="{{ site.page.source_url }}">{{ site.page.source }}</a></p>
</header>
{%- endblock body_header -%}
{% block body_footer %}
<nav class="page-nav">
  {%- if site.prev %}<a class="prev" href="{{ site.prev.href }}">&larr; {{ site.prev.title | e }}</a>{% endif -%}
  {%- if site.next %}<a class="next" href="{{ site.next.href }}">{{ site.next.title | e }} &rarr;</a>{% endif -%}
</nav>
</main>
<aside class="site-toc" aria-label="On this page"></aside>
</div>
</body>
{% endblock body_footer %}
{% block input_group -%}
{%- if cell.metadata.at_fold -%}
<details class="code-fold"{% if cell.metadata.at_fold == 'show' %} open{% endif %}><summary>{{ cell.metadata.at_summary | e }}</summary>
{{ super() }}
</details>
{%- else -%}
{{ super() }}
{%- endif -%}
{%- endblock input_group %}
{% block output_group %}
{{ super() }}
{%- if cell.metadata.at_figcap %}<p class="figure-caption">{{ cell.metadata.at_figcap | e }}</p>{% endif -%}
{% endblock output_group %}
"""

_css = """
:root { --site-accent: #2780e3; --site-border: #dee2e6; --site-muted: #6c757d; }
html { scroll-padding-top: 4rem; }
body { margin: 0; font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #212529; background: #fff; }
a { color: var(--site-accent); }
.site-navbar { position: sticky; top: 0; z-index: 10; display: flex; align-items: center; gap: 1rem;
               padding: .6rem 1.5rem; background: var(--site-accent); }
.site-navbar a { color: #fff; text-decoration: none; }
.site-title { font-size: 1.25rem; font-weight: 600; }
.site-links { margin-left: auto; }
.site-layout { display: grid; grid-template-columns: 15rem minmax(0, 1fr) 14rem; gap: 2rem;
               max-width: 84rem; margin: 0 auto; padding: 0 1.5rem; }
.site-sidebar, .site-toc { position: sticky; top: 3.5rem; align-self: start; max-height: calc(100vh - 4rem);
                           overflow-y: auto; padding-top: 1.5rem; font-size: .9rem; }
.site-sidebar ul, .site-toc ul { list-style: none; padding-left: 0; margin: 0; }
.site-sidebar ul ul, .site-toc ul ul { padding-left: .9rem; }
.site-sidebar li, .site-toc li { margin: .25rem 0; }
.site-sidebar a, .site-toc a { color: #343a40; text-decoration: none; }
.site-sidebar a:hover, .site-toc a:hover { color: var(--site-accent); }
.site-sidebar a.active { color: var(--site-accent); font-weight: 600; }
.site-sidebar .section { margin-top: .75rem; font-weight: 600; color: var(--site-muted); }
.site-toc h2 { font-size: .8rem; text-transform: uppercase; letter-spacing: .05em; color: var(--site-muted);
               margin: 0 0 .5rem 0; }
.site-main { min-width: 0; padding: 1.5rem 0 3rem 0 !important; }
.page-header { margin-bottom: 1.5rem; border-bottom: 1px solid var(--site-border); }
.page-header h1.title { font-size: 2.2rem; margin: .5rem 0; }
.page-header .description { font-size: 1.15rem; color: var(--site-muted); margin: .25rem 0 .5rem 0; }
.page-header .page-source { font-size: .8rem; margin: 0 0 .75rem 0; }
.page-nav { display: flex; justify-content: space-between; margin-top: 3rem; padding-top: 1rem;
            border-top: 1px solid var(--site-border); }
.page-nav .next { margin-left: auto; }
.jp-InputPrompt, .jp-OutputPrompt { display: none !important; }
.jp-Cell .jp-RenderedHTMLCommon { padding-left: 0 !important; padding-right: 0 !important; }
a.anchor-link { visibility: hidden; margin-left: .35rem; text-decoration: none; color: var(--site-muted); }
h1:hover > a.anchor-link, h2:hover > a.anchor-link, h3:hover > a.anchor-link, h4:hover > a.anchor-link
  { visibility: visible; }
.jp-Notebook-cell { padding: 0 !important; margin: .6rem 0; }
.site-main .jp-InputArea { overflow: visible; }
.site-main .jp-InputArea-editor { overflow-x: auto !important; }
.jp-InputArea-editor { background: #f7f7f9 !important; border: 1px solid var(--site-border) !important;
                       border-radius: 4px; }
.jp-OutputArea-output pre { font-size: .85rem; overflow-x: auto; }
.jp-RenderedMarkdown pre { background: #f7f7f9 !important; border: 1px solid var(--site-border);
                           border-radius: 4px; padding: .6rem .8rem !important; overflow-x: auto; }
.jp-RenderedMarkdown pre code { background: transparent !important; padding: 0 !important; white-space: pre; }
.jp-RenderedHTMLCommon pre, .jp-OutputArea-output { max-width: 100%; }
.jp-RenderedImage img { max-width: 100%; height: auto; }
.celltag_at-asis .jp-OutputArea-output { padding: 0; }
.celltag_at-asis .jp-RenderedMarkdown hr { border: 0; border-top: 1px solid var(--site-border); margin: 1.5rem 0 .5rem; }
.celltag_at-asis .jp-RenderedMarkdown blockquote { border-left: 3px solid var(--site-accent); margin: .5rem 0;
                                                   padding: .1rem .75rem; background: #f7f9fc; }
.celltag_at-asis .jp-RenderedMarkdown blockquote pre { background: transparent; border: 0; margin: 0; }
details.code-fold > summary { cursor: pointer; color: var(--site-muted); font-size: .85rem; margin: .25rem 0; }
.callout { border-left: 4px solid var(--site-accent); background: #f3f8fe; padding: .5rem 1rem; margin: 1rem 0;
           border-radius: 4px; }
.callout-warning, .callout-caution, .callout-important { border-left-color: #ff7518; background: #fff6ef; }
.callout-tip { border-left-color: #3fb618; background: #f2fbef; }
.figure-caption { font-size: .9rem; color: var(--site-muted); text-align: center; margin: .25rem 0 1rem 0; }
.jp-RenderedHTMLCommon table { font-size: .9rem; }
.jp-RenderedHTMLCommon a code { color: var(--site-accent); }
@media (max-width: 75rem) { .site-layout { grid-template-columns: 13rem minmax(0, 1fr); } .site-toc { display: none; } }
@media (max-width: 50rem) { .site-layout { display: block; } .site-sidebar { position: static; max-height: none; } }
"""


def inline_code(text: str) -> str:
    "Escaped `text` with its `backticked` spans as <code> (what Quarto does to a page's description)."
    parts = str(text).split('`')
    if len(parts) % 2 == 0: return escape(str(text))  # unbalanced backticks: leave the text as it is
    return ''.join(f'<code>{escape(t)}</code>' if i % 2 else escape(t) for i, t in enumerate(parts))


def pandoc_id(text: str) -> str:
    "Pandoc's auto identifier (what Quarto gives a heading, and what nbdev's doc links point at)."
    s = re.sub(r'[^\w\s.-]', '', text.strip().lower(), flags=re.UNICODE).replace('_', '\0')
    s = re.sub(r'\s+', '-', s).replace('\0', '_')
    s = re.sub(r'^[^a-z]+', '', s)
    return s or 'section'


def _nav_html(entries, nbs: Path, pages: dict, current: Path, root: str) -> str:
    def item(e):
        if isinstance(e, str): e = {'href': e}
        if 'section' in e:
            head = f'<div class="section">{escape(str(e["section"]).replace("_", " ").capitalize())}</div>'
            return f'<li>{head}<ul>{"".join(item(x) for x in e.get("contents", []))}</ul></li>'
        src = (nbs/e['href']).resolve()
        page = pages.get(src)
        if page is None: return ''
        cls = ' class="active" aria-current="page"' if src == current else ''
        return f'<li><a href="{root}{page["href"]}"{cls}>{escape(e.get("text") or page["title"])}</a></li>'
    return f'<ul>{"".join(item(e) for e in entries)}</ul>'


def _flat(entries):
    for e in entries:
        if isinstance(e, dict) and 'section' in e: yield from _flat(e.get('contents', []))
        else: yield e if isinstance(e, str) else e.get('href')


def postprocess(html: str, page: dict, pages_by_src: dict, cfg, nbs: Path) -> str:
    "Heading ids as Quarto makes them, a table of contents, and links fixed for a local site."
    from bs4 import BeautifulSoup
    soup = BeautifulSoup(html, 'html.parser')
    main = soup.find('main')
    seen, toc = set(), []
    for h in main.find_all(re.compile(r'^h[1-6]$')):
        if 'title' in (h.get('class') or []): continue
        for a in h.find_all('a', class_='anchor-link'): a.decompose()
        base = pandoc_id(h.get_text(' ', strip=True))
        hid, n = base, 0
        while hid in seen: n += 1; hid = f'{base}-{n}'
        seen.add(hid)
        h['id'] = hid
        anchor = soup.new_tag('a', attrs={'class': 'anchor-link', 'href': f'#{hid}'}); anchor.string = '¶'
        h.append(anchor)
        if h.name in ('h2', 'h3'): toc.append((int(h.name[1]), hid, h.get_text(' ', strip=True).rstrip('¶').strip()))
    if toc:
        aside = soup.find('aside', class_='site-toc')
        items, cur2 = [], None
        for lvl, hid, text in toc:
            li = f'<li><a href="#{hid}">{escape(text)}</a>'
            if lvl == 2:
                if cur2 is not None: items.append(cur2 + '</ul></li>')
                cur2 = li + '<ul>'
            elif cur2 is not None: cur2 += li + '</li>'
            else: items.append(li + '</li>')
        if cur2 is not None: items.append(cur2 + '</ul></li>')
        aside.append(BeautifulSoup(f'<h2>On this page</h2><ul>{"".join(items)}</ul>'.replace('<ul></ul>', ''),
                                   'html.parser'))
    page_dir = PurePosixPath(page['href']).parent
    doc_url = (cfg.doc_host + cfg.doc_baseurl).rstrip('/') + '/'
    for a in soup.find_all('a', href=True):
        href = a['href']
        if href.startswith(doc_url):  # nbdev's links to this project's docs: make them local
            a['href'] = posixpath.relpath(href[len(doc_url):].split('#')[0] or 'index.html', page_dir or '.') + \
                        (('#' + href.split('#', 1)[1]) if '#' in href else '')
            continue
        u = urlsplit(href)
        if u.scheme or u.netloc or not u.path.endswith('.ipynb'): continue
        target = (page['src'].parent/u.path).resolve()  # a link to a notebook: to its page
        tp = pages_by_src.get(target)
        if tp: a['href'] = posixpath.relpath(tp['href'], page_dir or '.') + (f'#{u.fragment}' if u.fragment else '')
    return str(soup)


def _lab_css(exporter) -> str:
    for d in exporter.template_paths:
        f = Path(d)/'lab'/'static'
        if (f/'index.css').exists():
            return (f/'index.css').read_text() + '\n' + (f/'theme-light.css').read_text()
    raise FileNotFoundError("nbconvert's lab template CSS (lab/static/index.css) not found")


def render(proc: Path, nbs: Path, out: Path, cfg, entries) -> list[dict]:
    "Render the processed notebooks in `proc` into `out` with nbconvert; return the pages."
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import ExtractOutputPreprocessor, TagRemovePreprocessor
    pages = []
    for src in site_notebooks(nbs):
        rel = src.relative_to(nbs)
        nb = nbformat.read(proc/rel, as_version=4)
        fm = split_frontmatter(nb)
        href = (rel.parent/fm.get('output-file', _nbpath2html(rel).name)).as_posix()
        pages.append(dict(src=src.resolve(), rel=rel, nb=nb, fm=fm, href=href, title=fm.get('title', rel.stem),
                          description=fm.get('description', '')))
    by_src = {p['src']: p for p in pages}
    order = [by_src[s] for s in ((nbs/h).resolve() for h in _flat(entries) if h) if s in by_src]
    order += [p for p in pages if p not in order]
    exporter = HTMLExporter(template_name='lab', template_file='site.html.j2',
                            extra_loaders=[DictLoader({'site.html.j2': _template})])
    exporter.exclude_input_prompt = exporter.exclude_output_prompt = True
    exporter.register_preprocessor(TagRemovePreprocessor(remove_input_tags={'at-noinput'}), enabled=True)
    exporter.register_preprocessor(ExtractOutputPreprocessor(), enabled=True)
    (out/'assets').mkdir(parents=True, exist_ok=True)
    (out/'assets'/'jupyterlab.css').write_text(_lab_css(exporter))
    (out/'assets'/'site.css').write_text(_css)
    (out/'.nojekyll').touch()
    for i, p in enumerate(order):
        depth = len(PurePosixPath(p['href']).parts) - 1
        root = '../' * depth
        rel_to = lambda q: posixpath.relpath(q['href'], str(PurePosixPath(p['href']).parent) or '.')
        nb = p['nb']
        apply_options(nb)
        nb.metadata['title'] = f"{p['title']} – {cfg.title}" if p['title'] != cfg.title else p['title']
        stem = PurePosixPath(p['href']).stem
        site = dict(title=cfg.title, root=root, git_url=cfg.git_url,
                    nav=_nav_html(entries, nbs, by_src, p['src'], root),
                    page=dict(title=p['title'], description=p['description'],
                              description_html=inline_code(p['description']),
                              description_text=p['description'].replace('`', ''),
                              source=f"{cfg.nbs_path.name}/{p['rel'].as_posix()}",
                              source_url=f"{cfg.git_url}/blob/{cfg.branch}/{cfg.nbs_path.name}/{p['rel'].as_posix()}"),
                    prev=dict(href=rel_to(order[i-1]), title=order[i-1]['title']) if i > 0 else None,
                    next=dict(href=rel_to(order[i+1]), title=order[i+1]['title']) if i+1 < len(order) else None)
        body, res = exporter.from_notebook_node(nb, resources={'output_files_dir': f'{stem}_files', 'site': site,
                                                               'metadata': {'name': p['title']}})
        dst = out/p['href']
        dst.parent.mkdir(parents=True, exist_ok=True)
        for fname, data in (res.get('outputs') or {}).items():
            f = dst.parent/fname
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(data if isinstance(data, bytes) else data.encode())
        dst.write_text(postprocess(body, p, by_src, cfg, nbs), encoding='utf-8')
        p['figures'] = sorted(k for k in (res.get('outputs') or {}))
    return [{k: v for k, v in p.items() if k != 'nb'} for p in order]

# ---------------------------------------------------------------------------------------------------------------------


def render_quarto(proc: Path, out: Path, cfg):
    "What nbdev_docs does once the notebooks are processed: `quarto render` in _proc, then its output becomes `out`."
    subprocess.run(['quarto', 'render', '--no-cache'], cwd=proc, check=True)
    shutil.rmtree(out, ignore_errors=True)
    shutil.move(str(proc/cfg.doc_path.name), str(out))


def build(out=None, executed: dict | None = None, n_workers: int = 2, quarto: bool | None = None, proc=None,
          execute: bool = True, log=print) -> dict:
    """Build the site into `out` (default settings.ini doc_path) from processed notebooks in `proc` (default `_proc/`).
    `executed`: {notebook path: nbexec.Executed} already run (the others CI runs are run here).
    Returns {'pages': [...], 'exec_failed': {path: error}, 'proc_failed': {path: error}, 'unlinked': {path: links undone},
    'renderer', 'out', ...}."""
    cfg = get_config()
    nbs, root = cfg.nbs_path, cfg.config_path
    out = Path(out) if out else cfg.doc_path
    proc = Path(proc) if proc else root/'_proc'
    refresh_quarto_yml()  # nbs/nbdev.yml from settings.ini, as nbdev_docs does
    entries = sidebar(nbs)
    notebooks = site_notebooks(nbs)
    ci = set(nbexec.ci_notebooks())
    executed = dict(executed or {})
    todo = [p for p in notebooks if execute and p.absolute() in ci and p.absolute() not in executed]
    t0 = time.time()
    if todo:
        log(f'executing {len(todo)} notebooks under a Jupyter kernel ({n_workers} at a time)')
        executed.update(nbexec.execute_all(todo, n_workers=n_workers))
        log(f'  {time.time() - t0:.0f}s')
    exec_failed = {p: r.error for p, r in executed.items() if r.error}
    shutil.rmtree(proc, ignore_errors=True)
    proc.mkdir(parents=True)
    for f in ('_quarto.yml', '_brand.yml'):
        if (nbs/f).exists(): shutil.copy2(nbs/f, proc/f)
    copy_assets(nbs, proc)
    jobs = []
    for src in notebooks:
        r = executed.get(src.absolute())
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            nb = r.nb if r is not None else nbformat.read(src, as_version=4)
        jobs.append((src, nbformat.writes(nb), proc/src.relative_to(nbs)))
    log(f'processing {len(jobs)} notebooks with nbdev (FilterDefaults) into {proc}')
    t0 = time.time()
    proc_failed = process_all(jobs, n_workers)
    unlinked = {src.resolve(): n for src, _, dst in jobs if (n := tidy_proc(dst))}
    log(f'  {time.time() - t0:.0f}s')
    use_quarto = shutil.which('quarto') is not None if quarto is None else quarto
    shutil.rmtree(out, ignore_errors=True)
    if use_quarto:
        render_quarto(proc, out, cfg)
        pages, renderer = [], 'quarto'
    else:
        out.mkdir(parents=True)
        copy_assets(nbs, out, suffixes={'.png', '.jpg', '.jpeg', '.gif', '.svg', '.webp', '.pdf', '.mp4', '.csv'})
        t0 = time.time()
        pages, renderer = render(proc, nbs, out, cfg, entries), 'nbconvert'
        log(f'rendered {len(pages)} pages with nbconvert into {out} in {time.time() - t0:.0f}s')
    return dict(pages=pages, exec_failed=exec_failed, proc_failed=proc_failed, renderer=renderer, out=out, proc=proc,
                executed=executed, unlinked=unlinked)


def main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--no-quarto', action='store_true', help='render with nbconvert even where Quarto is installed')
    ap.add_argument('--no-exec', action='store_true', help="don't execute the notebooks (pages show no outputs)")
    ap.add_argument('--out', help="where the site goes (default: settings.ini doc_path)")
    ap.add_argument('--n_workers', type=int, default=2, help='notebooks executed or processed at once')
    a = ap.parse_args()
    t = time.time()
    res = build(out=a.out, n_workers=a.n_workers, quarto=False if a.no_quarto else None, execute=not a.no_exec)
    out = res['out'].relative_to(Path.cwd()) if res['out'].is_relative_to(Path.cwd()) else res['out']
    print(f"{out}/: {len(res['pages']) or 'all'} pages rendered with {res['renderer']} in {time.time() - t:.0f}s")
    for p, e in res['exec_failed'].items(): print(f'FAILED under a Jupyter kernel: {p}\n{e}', file=sys.stderr)
    for p, e in res['proc_failed'].items(): print(f'FAILED {e}', file=sys.stderr)
    sys.exit(1 if res['exec_failed'] or res['proc_failed'] else 0)


if __name__ == '__main__':
    import docsite  # run as the importable module, so worker processes can unpickle its functions
    docsite.main()
