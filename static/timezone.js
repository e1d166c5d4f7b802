// Fills the time-zone field of the sign-up form from the browser (Intl), when the page asks for it.
// Without JavaScript the field keeps its default, and the subscriber can choose.
(function () {
  "use strict";
  var select = document.getElementById("time_zone");
  if (!select || select.getAttribute("data-from-browser") !== "yes") return;
  var zone;
  try {
    zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  } catch (e) {
    return;
  }
  if (!zone) return;
  for (var i = 0; i < select.options.length; i++) {
    if (select.options[i].value === zone) {
      select.selectedIndex = i;
      return;
    }
  }
  // An old name for a place (Chrome reports Asia/Calcutta): not in the menu, still a zone the form accepts.
  select.add(new Option(zone, zone, true, true), 0);
})();
