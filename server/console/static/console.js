// Follows a live page: re-fetches this page's fragment every data-interval ms and swaps it in.
// The header's badge shows the state the server gave the fragment (data-live: live, idle or
// final); polling stops once the fragment says nothing more will change (data-final="1") and
// pauses while the tab is hidden.
(function () {
  "use strict";
  const main = document.querySelector("main[data-poll]");
  const live = document.getElementById("live");
  if (!main || !main.dataset.poll) return;
  const every = Number(main.dataset.interval) || 2000;
  const final = () => main.querySelector('[data-final="1"]') !== null;
  function show() {
    const fragment = main.querySelector("[data-live]");
    if (fragment) {
      live.dataset.state = fragment.dataset.live;
      live.textContent = fragment.dataset.live;
    }
  }
  async function tick() {
    if (!document.hidden) {
      try {
        const response = await fetch(main.dataset.poll, { cache: "no-store", credentials: "same-origin" });
        if (response.ok) {
          main.innerHTML = await response.text();
          show();
          live.title = "updated " + new Date().toLocaleTimeString();
        } else {
          live.dataset.state = "error";
          live.title = "HTTP " + response.status;
        }
      } catch (err) {
        live.dataset.state = "error";
        live.title = String(err);
      }
    }
    if (final()) return;
    setTimeout(tick, every);
  }
  show();
  if (!final()) setTimeout(tick, every);
})();
