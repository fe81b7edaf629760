// MathJax for pymdownx.arithmatex (generic mode): \( ... \) inline, \[ ... \] display.
// The MathJax bundle is vendored (javascripts/vendor/mathjax/tex-svg-full.js, MathJax 3.2.2,
// Apache-2.0): every TeX extension is in it and SVG output needs no web fonts, so formulas
// render offline and nothing is fetched from a CDN. The context menu is off because its
// accessibility explorer would download speech rules from a CDN when switched on.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  svg: {
    fontCache: "global",
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
    enableMenu: false,
  },
};

document$.subscribe(() => {
  if (!window.MathJax.startup || !window.MathJax.startup.output) {
    return; // the bundle has not loaded yet: its own startup typesets the page
  }
  MathJax.startup.output.clearCache();
  MathJax.typesetClear();
  MathJax.texReset();
  MathJax.typesetPromise();
});
