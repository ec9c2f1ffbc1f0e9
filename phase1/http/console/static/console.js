// phase1 console: keep the page's live part (#live) current by asking the server for it
// again every 1.5 s. Nothing else: pages and actions work without this file.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.fetch) {
    return;
  }
  var busy = false;
  // Leave the part alone while the operator is working in it: focus on a control inside
  // it, or a box ticked for a bulk action.
  function interacting() {
    var active = document.activeElement;
    if (active && active !== live && live.contains(active)) {
      return true;
    }
    return live.querySelector("input[type=checkbox]:checked") !== null;
  }
  function refresh() {
    if (busy || document.hidden || interacting()) {
      return;
    }
    busy = true;
    fetch(window.location.href, {
      headers: { "X-Console-Fragment": "1" },
      credentials: "same-origin",
      cache: "no-store",
    })
      .then(function (answer) {
        if (answer.status === 401) {
          window.location.reload();
          return null;
        }
        return answer.ok ? answer.text() : null;
      })
      .then(function (html) {
        if (html !== null && !interacting()) {
          live.innerHTML = html;
          live.setAttribute("data-refreshed", String(Date.now()));
        }
      })
      .catch(function () {})
      .then(function () {
        busy = false;
      });
  }
  window.setInterval(refresh, 1500);
})();
