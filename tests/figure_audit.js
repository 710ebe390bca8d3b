// What tests/test_browser_figures.py reads of one drawn Plotly figure (the div #plot): every piece of text as
// an oriented box (its glyph box turned by its own rotation), the box that clips it (its clip-path, the
// figure's page), each legend entry with how many points its trace holds, and the fill of each text.
// Boxes are in page pixels; the checks themselves (overlap, clipping, contrast) are made in Python.
(gd) => {
  const corners = (el, b) => {
    const m = el.getScreenCTM();
    return [[b.x, b.y], [b.x + b.width, b.y], [b.x + b.width, b.y + b.height], [b.x, b.y + b.height]].map(
      ([x, y]) => [m.a * x + m.c * y + m.e, m.b * x + m.d * y + m.f]);
  };
  const visible = el => {
    for (let e = el; e && e !== gd; e = e.parentElement) {
      const s = getComputedStyle(e);
      if (s.display === 'none' || s.visibility === 'hidden' || Number(s.opacity) === 0) return false;
    }
    return true;
  };
  // the rectangle (page pixels) of the nearest clip-path around el, or null
  const clipOf = el => {
    for (let e = el; e && e !== gd; e = e.parentElement) {
      const ref = e.getAttribute && (e.getAttribute('clip-path') || '');
      const id = (/url\(["']?#([^"')]+)/.exec(ref) || [])[1];
      if (!id) continue;
      const path = document.getElementById(id);
      const rect = path && path.querySelector('rect');
      if (!rect) continue;
      const b = {x: +rect.getAttribute('x') || 0, y: +rect.getAttribute('y') || 0,
                 width: +rect.getAttribute('width') || 0, height: +rect.getAttribute('height') || 0};
      const c = corners(e, b);
      const xs = c.map(p => p[0]), ys = c.map(p => p[1]);
      return {owner: e.getAttribute('class') || e.tagName, box: [Math.min(...xs), Math.min(...ys),
                                                                  Math.max(...xs), Math.max(...ys)]};
    }
    return null;
  };
  const page = gd.querySelector('.main-svg').getBoundingClientRect();
  const texts = [];
  for (const el of gd.querySelectorAll('svg text')) {
    const content = el.textContent.replace(/\s+/g, ' ').trim();
    if (!content || !visible(el)) continue;
    let b;
    try { b = el.getBBox(); } catch (e) { continue; }
    if (b.width === 0 || b.height === 0) continue;
    const where = el.closest('.legend') ? 'legend' : el.closest('.infolayer') ? 'info' :
                  el.closest('.table') ? 'table' : el.closest('.xtick, .ytick') ? 'tick' : 'data';
    const s = getComputedStyle(el);
    // a text of several lines (Plotly's tspan.line) is one box per line: their union would claim the corner
    // beside a short first line
    const lines = [...el.querySelectorAll('tspan.line')].filter(t => t.textContent.trim());
    const boxes = lines.length > 1 ? lines.map(t => corners(t, t.getBBox())) : [corners(el, b)];
    el.setAttribute('data-audit', String(texts.length));
    const id = texts.length;
    for (const box of boxes)
      texts.push({id, text: content, where, corners: box, clip: clipOf(el), fill: s.fill,
                  opacity: Number(s.fillOpacity) * Number(s.opacity), size: parseFloat(s.fontSize)});
  }
  const legend = [];
  for (const item of gd.querySelectorAll('.legend .traces')) {
    const d = item.__data__ && item.__data__[0];
    const t = d && d.trace;
    if (!t) continue;
    const values = [t.y, t.z, t.x, t.values, t.r].find(v => v && v.length) || [];
    const points = [].concat(...values.map(v => Array.isArray(v) ? v : [v])).filter(
      v => v !== null && v !== undefined && v !== '').length;
    // a key with no points of its own ([null]) names a colour of a heatmap's cells or a table's rows
    const key = values.length > 0 && points === 0 &&
                gd._fullData.some(o => (o.type === 'heatmap' || o.type === 'table') && o.visible === true);
    legend.push({name: t.name || '', points, visible: t.visible, key});
  }
  const bar = gd.querySelector('.modebar');
  const modebar = bar && bar.getBoundingClientRect();
  return {page: [page.left, page.top, page.right, page.bottom], texts, legend,
          modebar: modebar && modebar.width ? [modebar.left, modebar.top, modebar.right, modebar.bottom] : null};
}
