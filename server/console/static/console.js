// Follows a live run: re-fetches this page's fragment every data-interval ms and swaps it in.
// Stops once the fragment says the run is final (data-final="1"); pauses while the tab is hidden.
(function () {
  "use strict";
  const main = document.querySelector("main[data-poll]");
  const live = document.getElementById("live");
  if (!main || !main.dataset.poll) return;
  const every = Number(main.dataset.interval) || 2000;
  const final = () => main.querySelector('[data-final="1"]') !== null;
  async function tick() {
    if (!document.hidden) {
      try {
        const response = await fetch(main.dataset.poll, { cache: "no-store", credentials: "same-origin" });
        if (response.ok) {
          main.innerHTML = await response.text();
          live.dataset.state = "ok";
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
    if (final()) {
      live.dataset.state = "final";
      live.textContent = "final";
      return;
    }
    setTimeout(tick, every);
  }
  if (final()) {
    live.dataset.state = "final";
    live.textContent = "final";
  } else {
    setTimeout(tick, every);
  }
})();
