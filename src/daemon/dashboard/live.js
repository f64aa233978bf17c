// drover's dashboard, live: on every `changed` event from the daemon, fetch this page again
// and put its <main> in place of ours. Without this script the pages are whole; a reload
// shows what changed.
(function () {
  "use strict";
  var main = document.getElementById("main");
  if (!main || !window.EventSource || !window.fetch) { return; }
  var busy = false, again = false;
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(window.location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (answer) {
        if (answer.redirected || !answer.ok) { throw new Error("status " + answer.status); }
        return answer.text();
      })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("main");
        var focused = document.activeElement && document.activeElement.id;
        if (fresh && main.contains(document.activeElement) && document.activeElement.tagName === "INPUT") {
          return; // someone is typing in a form here; the next change updates the page
        }
        if (fresh) { main.innerHTML = fresh.innerHTML; }
        if (focused) { var f = document.getElementById(focused); if (f) { f.focus(); } }
      })
      .catch(function () {})
      .then(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }
  var events = new EventSource("/ui/events");
  events.addEventListener("changed", refresh);
})();
