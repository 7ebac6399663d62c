// Injected into a copy of report.html by test_browser.py: measures the page after load in
// headless Chromium and writes the result as JSON into a pre element with id "probe".
window.addEventListener('load', () => {
  const out = {};
  const W = document.documentElement.clientWidth;
  out.viewport = [window.innerWidth, window.innerHeight];
  out.width = W;
  out.images = document.images.length;
  out.broken = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).length;
  out.sections = [...document.querySelectorAll('main > section')].map(s => [
    s.id, s.getBoundingClientRect().height, s.querySelector('h2').innerText]);
  const details = [...document.querySelectorAll('details.table')];
  const shown = d => d.querySelector('table').checkVisibility();
  out.closed = details.map(d => [d.open, shown(d)]);
  details.forEach(d => d.querySelector('summary').click());
  out.opened = details.map(d => [d.open, shown(d),
                                 d.querySelectorAll('tbody tr').length]);
  const over = [];
  for (const el of document.querySelectorAll('body *')) {
    if (el.parentElement && el.parentElement.closest('.scroll')) continue;  // scrolls inside
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    if (r.right > W + 0.5 || r.left < -0.5) {
      over.push(`${el.tagName} in ${(el.closest('section') || {}).id} (right ${r.right})`);
    }
  }
  out.overflow = over.slice(0, 20);
  out.scroll_width = document.documentElement.scrollWidth;
  out.csv = [...document.querySelectorAll('a.csv')].map(a => [
    a.closest('section').id, a.getAttribute('download'),
    new TextDecoder().decode(Uint8Array.from(atob(a.href.split(',')[1]), c => c.charCodeAt(0)))]);
  out.text = document.body.innerText;
  out.scripts = document.querySelectorAll('script').length;
  out.markup = document.querySelectorAll('main i, main script').length;
  const pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
