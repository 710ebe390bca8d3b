// Keyboard shortcuts: n = step, b = back, r = run to end. Ignored while typing in a field.
document.addEventListener("keydown", (event) => {
  const t = event.target;
  const typing = t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName));
  if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
  const button = { n: "step-btn", b: "back-btn", r: "run-btn" }[event.key];
  if (!button) return;
  const el = document.getElementById(button);
  if (el) { event.preventDefault(); el.click(); }
});
