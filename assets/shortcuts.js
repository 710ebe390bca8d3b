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

// Step and Back presses take turns on the page: a press's request is sent once the previous press's screen has
// arrived (the hidden #step-go and #back-go buttons send them; their events call pdeNextPress when done). With two
// requests in flight, the older answer could reach the page last and it showed iteration 14 after 15.
const pdePresses = [];
let pdePressing = false;
function pdePress(sender) {
  pdePresses.push(sender);
  if (!pdePressing) pdeNextPress();
}
function pdeNextPress() {
  while (pdePresses.length) {
    const el = document.getElementById(pdePresses.shift());
    if (el) { pdePressing = true; el.click(); return; }
  }
  pdePressing = false;
}
window.pdePress = pdePress;
window.pdeNextPress = pdeNextPress;
