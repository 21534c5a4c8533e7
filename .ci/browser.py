"""Headless Chromium driven over the DevTools protocol on a pipe (no port, no driver, no extra package).

`python .ci/browser.py PAGE.html SHOT.png` loads a page, prints what it rendered (title, heading, images with their
natural sizes) and saves a screenshot. `tests/test_docs.py` uses `Chromium` the same way on the docs site.
"""
from __future__ import annotations
import base64, fcntl, json, os, select, shutil, subprocess, tempfile, time
from pathlib import Path

FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync',
         '--disable-default-apps', '--disable-extensions', '--mute-audio', '--hide-scrollbars']

# What a page rendered: its title, the visible page heading, and every image with its natural size.
PROBE = """(async () => {
  await Promise.all([...document.images].map(i => i.complete ? null :
      new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); })));
  const h1 = document.querySelector('h1.title') || document.querySelector('h1');
  const r = h1 ? h1.getBoundingClientRect() : null;
  return JSON.stringify({
    title: document.title,
    h1: h1 ? h1.innerText.trim() : null,
    h1_visible: !!(r && r.width > 0 && r.height > 0 && getComputedStyle(h1).visibility !== 'hidden'),
    nav_links: document.querySelectorAll('nav.site-sidebar a').length,
    images: [...document.images].map(i => ({src: i.getAttribute('src'), complete: i.complete,
                                          width: i.naturalWidth, height: i.naturalHeight,
                                          shown_width: i.getBoundingClientRect().width})),
    body_text: document.body ? document.body.innerText.length : 0,
  });
})()"""


def find_chromium() -> str | None:
    for name in ('chromium', 'chromium-browser', 'google-chrome', 'chrome'):
        if p := shutil.which(name): return p
    return None


class CDPError(RuntimeError): pass


def _above_9(fd: int) -> int:
    "The same pipe end on a descriptor >= 10 (the original is closed)."
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class Chromium:
    "One headless Chromium with a fresh user-data-dir, spoken to over --remote-debugging-pipe."
    def __init__(self, exe: str | None = None, width: int = 1280, height: int = 1000, timeout: float = 60):
        exe = exe or find_chromium()
        if not exe: raise FileNotFoundError('chromium not found (Debian: apt-get install chromium)')
        self.width, self.height, self.timeout = width, height, timeout
        self.profile = tempfile.mkdtemp(prefix='at-chromium-')
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        to_chrome_r, from_chrome_w = _above_9(to_chrome_r), _above_9(from_chrome_w)  # so 3 and 4 are free to take
        args = [*FLAGS, f'--user-data-dir={self.profile}', f'--window-size={width},{height}',
                '--remote-debugging-pipe', 'about:blank']
        # the protocol pipe is fd 3 (chromium reads) and fd 4 (chromium writes); the shell does the dup2s
        self.log = open(Path(self.profile)/'chromium.log', 'wb')
        self.proc = subprocess.Popen(
            ['bash', '-c', f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w} {to_chrome_r}<&- {from_chrome_w}>&-',
             exe, *args], pass_fds=(to_chrome_r, from_chrome_w), stdin=subprocess.DEVNULL,
            stdout=self.log, stderr=self.log)
        os.close(to_chrome_r); os.close(from_chrome_w)
        self._buf, self._id, self._events = b'', 0, []
        self.session = None
        target = self.send('Target.createTarget', {'url': 'about:blank'})['targetId']
        self.session = self.send('Target.attachToTarget', {'targetId': target, 'flatten': True})['sessionId']
        self.send('Page.enable')
        self.send('Emulation.setDeviceMetricsOverride',
                  {'width': width, 'height': height, 'deviceScaleFactor': 1, 'mobile': False})

    def _read(self, deadline):
        while b'\0' not in self._buf:
            left = deadline - time.time()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise CDPError(f'chromium did not answer within {self.timeout}s (log: {self.log.name})')
            chunk = os.read(self._r, 1 << 20)
            if not chunk: raise CDPError(f'chromium exited (log: {self.log.name})')
            self._buf += chunk
        msg, self._buf = self._buf.split(b'\0', 1)
        return json.loads(msg)

    def send(self, method, params=None, timeout=None):
        "Send one command (to the page's session once attached); return its result."
        self._id += 1
        msg = {'id': self._id, 'method': method, 'params': params or {}}
        if self.session and not method.startswith(('Target.', 'Browser.')): msg['sessionId'] = self.session
        os.write(self._w, json.dumps(msg).encode() + b'\0')
        deadline = time.time() + (timeout or self.timeout)
        while True:
            m = self._read(deadline)
            if m.get('id') == self._id:
                if 'error' in m: raise CDPError(f"{method}: {m['error'].get('message')}")
                return m.get('result', {})
            self._events.append(m)

    def wait_event(self, name, timeout=None):
        deadline = time.time() + (timeout or self.timeout)
        while True:
            for i, m in enumerate(self._events):
                if m.get('method') == name: return self._events.pop(i)
            self._events.append(self._read(deadline))

    def goto(self, url: str):
        "Navigate and wait for the load event."
        self._events.clear()
        res = self.send('Page.navigate', {'url': url})
        if res.get('errorText'): raise CDPError(f"{url}: {res['errorText']}")
        self.wait_event('Page.loadEventFired')

    def evaluate(self, expr: str):
        res = self.send('Runtime.evaluate', {'expression': expr, 'awaitPromise': True, 'returnByValue': True})
        if 'exceptionDetails' in res: raise CDPError(f"script failed: {res['exceptionDetails'].get('text')}")
        return res['result'].get('value')

    def probe(self) -> dict:
        "What the current page rendered (see PROBE)."
        return json.loads(self.evaluate(PROBE))

    def screenshot(self, path, full_page: bool = False):
        params = {'format': 'png'}
        if full_page:
            h = self.evaluate('document.documentElement.scrollHeight')
            params.update(clip={'x': 0, 'y': 0, 'width': self.width, 'height': min(int(h), 8000), 'scale': 1},
                          captureBeyondViewport=True)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(base64.b64decode(self.send('Page.captureScreenshot', params)['data']))
        return Path(path)

    def close(self):
        try: self.send('Browser.close', timeout=5)
        except Exception: pass
        try: self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill(); self.proc.wait()
        for fd in (self._r, self._w):
            try: os.close(fd)
            except OSError: pass
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self): return self
    def __exit__(self, *a): self.close()


if __name__ == '__main__':
    import sys
    if len(sys.argv) != 3: sys.exit('usage: python .ci/browser.py PAGE.html SHOT.png')
    with Chromium() as c:
        c.goto(Path(sys.argv[1]).resolve().as_uri())
        print(json.dumps(c.probe(), indent=1))
        print('screenshot:', c.screenshot(sys.argv[2]))
