// Live updates of caretally's pages over Server-Sent Events (GET /live).
// The worklist fetches its groups again when its month's billing changes; the alerts
// page adds new alerts at the top. Written here on purpose: EventSource and fetch are
// all it needs, and nothing is loaded from another site.
(function () {
  "use strict";
  var root = document.querySelector("[data-live]");
  if (!root || !window.EventSource) return;
  var status = document.getElementById("live-status");
  var announce = document.getElementById("announce");
  var source = new EventSource(root.getAttribute("data-live"));

  function say(text) { if (status) status.textContent = text; }
  source.addEventListener("open", function () { say("Live: updates as billing changes."); });
  source.addEventListener("error", function () { say("Live updates paused; reconnecting…"); });
  source.addEventListener("signed_out", function () {
    source.close();
    say("Signed out: sign in again for live updates.");
  });

  var fragment = root.getAttribute("data-fragment");
  if (fragment) {
    var month = root.getAttribute("data-month");
    var busy = false, again = false;
    var refresh = function () {
      if (busy) { again = true; return; }
      busy = true;
      var focused = document.activeElement && root.contains(document.activeElement)
        ? document.activeElement.getAttribute("href") : null;
      var params = new URLSearchParams(window.location.search);
      params.set("month", month);
      fetch(fragment + "?" + params.toString(), { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (html) {
          root.innerHTML = html;
          root.setAttribute("data-updated", String(Date.now()));
          if (focused) {
            var again_ = root.querySelector('a[href="' + focused.replace(/"/g, '\\"') + '"]');
            if (again_) again_.focus();
          }
          if (announce) announce.textContent = "Worklist updated.";
        })
        .catch(function () { say("Could not refresh the worklist; reload the page."); })
        .then(function () {
          busy = false;
          if (again) { again = false; refresh(); }
        });
    };
    source.addEventListener("billing", function (e) {
      var data = JSON.parse(e.data);
      if (data.month === month) refresh();
    });
  }

  var rows = document.getElementById("alert-rows");
  if (rows) {
    var only = root.getAttribute("data-alerts");
    var names = {};
    document.getElementById("alert-kinds").content.querySelectorAll("span").forEach(function (s) {
      names[s.getAttribute("data-kind")] = s.textContent;
    });
    source.addEventListener("alert", function (e) {
      var a = JSON.parse(e.data);
      if (only && a.kind !== only) return;
      var tr = document.createElement("tr");
      tr.setAttribute("data-kind", a.kind);
      var cell = function (text) { var td = document.createElement("td"); td.textContent = text; return td; };
      tr.appendChild(cell(names[a.kind] || a.kind));
      var who = document.createElement("td"), link = document.createElement("a");
      link.href = "/patients/" + encodeURIComponent(a.patient_id) + "/months/" + encodeURIComponent(a.month);
      link.textContent = a.patient_id;
      who.appendChild(link);
      tr.appendChild(who);
      tr.appendChild(cell(a.month));
      tr.appendChild(cell(a.code || ""));
      tr.appendChild(cell(a.detail));
      rows.insertBefore(tr, rows.firstChild);
      var none = document.getElementById("no-alerts");
      if (none) none.hidden = true;
      if (announce) announce.textContent = "New alert: " + (names[a.kind] || a.kind) + ".";
    });
  }
})();
