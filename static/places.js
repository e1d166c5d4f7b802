// City autocomplete for the "Studies you could join" fields. Without it the form still works: the server
// looks the typed name up. Searches are POSTed so what someone types never lands in a URL or an access log.
(function () {
  "use strict";
  var input = document.getElementById("city");
  var hidden = document.getElementById("city_id");
  var list = document.getElementById("city-options");
  if (!input || !hidden || !list) { return; }
  var found = {};
  var timer = null;
  function pick() {
    var id = found[input.value];
    hidden.value = id ? String(id) : "";
  }
  function search() {
    var q = input.value.trim();
    if (q.length < 2 || found[input.value]) { return; }
    fetch(input.getAttribute("data-places"), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ q: q }),
      credentials: "omit"
    }).then(function (r) { return r.ok ? r.json() : []; }).then(function (items) {
      found = {};
      list.textContent = "";
      items.forEach(function (item) {
        found[item.label] = item.id;
        var option = document.createElement("option");
        option.value = item.label;
        list.appendChild(option);
      });
      pick();
    }).catch(function () { /* the server resolves the typed name instead */ });
  }
  input.addEventListener("input", function () {
    pick();
    if (timer) { clearTimeout(timer); }
    timer = setTimeout(search, 200);
  });
  input.addEventListener("change", pick);
})();
