// bnsweep's pages: sortable and filterable tables, and (on the live dashboard) sections marked
// data-refresh fetched again every few seconds, so a running sweep moves without a reload.
// Written for bnsweep (MIT, like the package); no dependencies, no build step, no network
// access beyond the page's own server.
(function () {
  "use strict";

  function refresh(section) {
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", section.id);
    fetch(url.toString(), { credentials: "same-origin", cache: "no-store" })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (text) {
        if (text !== null && text !== section.dataset.last) {
          section.dataset.last = text;
          section.innerHTML = text;
          section.querySelectorAll("table.sortable").forEach(sortable);
        }
      })
      .catch(function () { /* the server is restarting: try again at the next tick */ });
  }

  function cellValue(row, index) {
    var cell = row.children[index];
    var text = cell ? cell.textContent.trim() : "";
    var number = parseFloat(text.replace(/[±–]/g, " "));
    return { text: text, number: isNaN(number) ? null : number };
  }

  function sortable(table) {
    if (table.dataset.sortable === "on") { return; }
    table.dataset.sortable = "on";
    var heads = table.querySelectorAll("thead th");
    heads.forEach(function (head, index) {
      head.classList.add("sort");
      head.title = "sort by " + head.textContent;
      head.addEventListener("click", function () {
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var descending = head.dataset.order === "asc";
        heads.forEach(function (h) { delete h.dataset.order; });
        head.dataset.order = descending ? "desc" : "asc";
        rows.sort(function (a, b) {
          var x = cellValue(a, index), y = cellValue(b, index);
          var order = (x.number !== null && y.number !== null)
            ? x.number - y.number
            : x.text.localeCompare(y.text);
          return descending ? -order : order;
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  }

  function filterer(input) {
    var table = document.getElementById(input.dataset.filter);
    if (!table) { return; }
    input.addEventListener("input", function () {
      var words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
      Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
        var text = row.textContent.toLowerCase();
        row.hidden = !words.every(function (w) { return text.indexOf(w) >= 0; });
      });
    });
  }

  function start() {
    document.querySelectorAll("table.sortable").forEach(sortable);
    document.querySelectorAll("input[data-filter]").forEach(filterer);
    var seconds = Number(document.body.dataset.refreshSeconds || 0);
    var live = document.querySelectorAll("[data-refresh]");
    if (seconds > 0 && live.length) {
      window.setInterval(function () { live.forEach(refresh); }, seconds * 1000);
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
