// cordon console: keeps every countdown ticking. Each <time class="countdown" data-left-ms>
// counts down from when it arrived on the page (so the browser's clock does not matter); the
// live parts that htmx swaps in bring fresh ones; and counts Content-Security-Policy violations
// on <body data-csp-violations> (the browser tests read it). No other script of cordon's runs.
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
  // A blocked script, style or request would mean the page is not what the policy allows:
  // counted where the browser tests look.
  document.addEventListener("securitypolicyviolation", function (event) {
    var body = document.body;
    body.dataset.cspViolations = String(Number(body.dataset.cspViolations || 0) + 1);
    body.dataset.lastCspViolation = event.violatedDirective + " " + event.blockedURI;
  });
  document.addEventListener("DOMContentLoaded", tick);
  setInterval(tick, 1000);
})();
