// cordon console: keeps every countdown ticking. Each <time class="countdown" data-left-ms>
// counts down from when it arrived on the page (so the browser's clock does not matter); the
// live parts that htmx swaps in bring fresh ones. No other script runs on the console.
"use strict";
(function () {
  function left(ms) {
    if (ms <= 0) return "due";
    var total = Math.ceil(ms / 1000);
    var d = Math.floor(total / 86400), h = Math.floor(total / 3600) % 24,
        m = Math.floor(total / 60) % 60, s = total % 60;
    var two = function (n) { return (n < 10 ? "0" : "") + n; };
    if (d > 0) return d + "d " + two(h) + "h " + two(m) + "m";
    if (h > 0) return h + "h " + two(m) + "m " + two(s) + "s";
    if (m > 0) return m + "m " + two(s) + "s";
    return s + "s";
  }
  function tick() {
    var now = performance.now();
    var clocks = document.querySelectorAll("time.countdown[data-left-ms]");
    for (var i = 0; i < clocks.length; i++) {
      var clock = clocks[i];
      if (!clock.dataset.arrived) clock.dataset.arrived = String(now);
      var ms = Number(clock.dataset.leftMs) - (now - Number(clock.dataset.arrived));
      var text = left(ms);
      if (clock.textContent !== text) clock.textContent = text;
    }
  }
  document.addEventListener("DOMContentLoaded", tick);
  setInterval(tick, 1000);
})();
